"""Synthetic SME consortium: a simulated world observed by a bank, the tax authority, an
e-commerce platform and a utility, written as one data directory per holder."""

from participants.synth.writer import SynthSummary, advance, consortium_for, generate

__all__ = ["SynthSummary", "advance", "consortium_for", "generate"]
