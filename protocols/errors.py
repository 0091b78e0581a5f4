"""Errors raised by schemas and protocol state machines.

One small hierarchy: catch :class:`ProtocolError` broadly at a boundary (CLI, RPC handler),
recover narrowly from the specific subclasses.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class for every error raised by :mod:`protocols`."""


class InvalidUSCC(ProtocolError, ValueError):
    """A unified social credit code failed one of the GB 32100-2015 rules."""

    def __init__(self, code: str, rule: str) -> None:
        self.code = code
        self.rule = rule
        super().__init__(f"invalid USCC {code!r}: {rule}")


class ConfigError(ProtocolError, ValueError):
    """A consortium or feature configuration is malformed; the message names file, key and problem."""


class ProtocolViolation(ProtocolError):
    """A peer sent a message that the protocol state machine does not accept in its current state."""
