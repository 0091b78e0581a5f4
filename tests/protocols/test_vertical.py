"""Vertical split-training step logic: schedule, pipelining, masking-compatibility, label DP."""

from __future__ import annotations

import numpy as np
import pytest

from crypto.identity import IdentityKey
from crypto.masking import MaskingKey, MaskingSession, sum_masked
from models.metrics import auc
from protocols.errors import ProtocolViolation
from protocols.vertical import (
    BottomParty,
    Schedule,
    TopParty,
    VerticalPlan,
    coverage_metrics,
    label_dp_epsilon,
    run_in_process,
)


def two_party_problem(n: int = 3000, seed: int = 0):
    """Each party holds half of the signal, so neither alone matches both together."""
    rng = np.random.default_rng(seed)
    xa = rng.normal(size=(n, 3))
    xb = rng.normal(size=(n, 3))
    logit = 1.2 * xa[:, 0] - 0.8 * xa[:, 1] + 1.2 * xb[:, 0] + 0.8 * xb[:, 2] - 1.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    return xa, xb, y


def train(plan: VerticalPlan, xa, xb, y, present_b=None, sum_outputs=None):
    n = y.size
    present_b = np.ones(n, bool) if present_b is None else present_b
    parties = {
        "bank": BottomParty("bank", xa, np.ones(n, bool), plan, is_label_holder=True),
        "tax": BottomParty("tax", xb, present_b, plan),
    }
    top = TopParty(y, plan)
    rounds = run_in_process(parties, top, "bank", sum_outputs=sum_outputs)
    return parties, top, rounds


def val_auc(parties, top, y, only: tuple[str, ...] | None = None) -> float:
    rows = top.schedule.val
    z = sum(p.embed(rows) for name, p in parties.items() if only is None or name in only)
    return auc(y[rows], top.logits(z))


def test_schedule_is_deterministic_and_partitions_rows() -> None:
    plan = VerticalPlan(batch_size=64, batches_per_round=3, epochs=2, seed=5)
    s1, s2 = Schedule.build(plan, 1000), Schedule.build(plan, 1000)
    assert np.array_equal(s1.train, s2.train) and np.array_equal(s1.val, s2.val)
    assert np.intersect1d(s1.train, s1.val).size == 0
    assert np.union1d(s1.train, s1.val).size == 1000
    first_epoch = np.concatenate([b for r in range(s1.rounds) for b in s1.batches(r)])[: s1.train.size]
    assert np.array_equal(np.sort(first_epoch), s1.train)  # every training row once per epoch
    assert Schedule.build(plan.model_copy(update={"seed": 6}), 1000).val.tolist() != s1.val.tolist()


def test_federated_beats_each_party_alone() -> None:
    xa, xb, y = two_party_problem()
    plan = VerticalPlan(batch_size=256, epochs=6, lr=0.05, source_dropout=0.0)
    parties, top, rounds = train(plan, xa, xb, y)
    assert rounds == top.schedule.rounds + 2
    both = val_auc(parties, top, y)
    bank_only = auc(y[top.schedule.val], xa[top.schedule.val] @ np.array([1.2, -0.8, 0.0]))
    assert both > bank_only + 0.05, (both, bank_only)
    assert both > 0.8


def test_masked_aggregation_gives_the_same_model_as_plain_sums() -> None:
    xa, xb, y = two_party_problem(n=1500)
    plan = VerticalPlan(batch_size=256, epochs=2, source_dropout=0.0)
    ids = {"bank": IdentityKey.generate(), "tax": IdentityKey.generate()}
    keys = {name: MaskingKey.generate() for name in ids}
    anns = {n: keys[n].announce(ids[n], participant_id=n, session_id="s1") for n in ids}
    directory = {n: ids[n].public_key for n in ids}
    sessions = {n: MaskingSession(session_id="s1", me=n, mask_key=keys[n], announcements=anns, identities=directory) for n in ids}
    counter = iter(range(10**6))

    def masked_sum(outs):
        tag = f"fwd/{next(counter)}"
        return sum_masked([sessions[n].mask(o, round_tag=tag) for n, o in zip(("bank", "tax"), outs)])

    plain_parties, plain_top, _ = train(plan, xa, xb, y)
    masked_parties, masked_top, _ = train(plan, xa, xb, y, sum_outputs=masked_sum)
    rows = plain_top.schedule.val
    z_plain = sum(p.embed(rows) for p in plain_parties.values())
    z_masked = sum(p.embed(rows) for p in masked_parties.values())
    assert np.max(np.abs(plain_top.logits(z_plain) - masked_top.logits(z_masked))) < 1e-3


def test_absent_sources_are_zero_and_scored() -> None:
    xa, xb, y = two_party_problem()
    present = np.random.default_rng(1).random(y.size) < 0.6
    plan = VerticalPlan(batch_size=256, epochs=4, lr=0.05, source_dropout=0.2)
    parties, top, _ = train(plan, xa, xb, y, present_b=present)
    rows = np.flatnonzero(~present)[:50]
    assert np.all(parties["tax"].embed(rows) == 0.0)
    rows = top.schedule.val
    z = sum(p.embed(rows) for p in parties.values())
    report = coverage_metrics(y[rows], top.logits(z), {"tax": present[rows]})
    assert report["partial_coverage"]["auc"] > 0.6
    assert report["full_coverage"]["auc"] > report["partial_coverage"]["auc"]


def test_out_of_order_messages_are_refused() -> None:
    xa, xb, y = two_party_problem(n=500)
    plan = VerticalPlan(batch_size=64)
    party = BottomParty("tax", xb, np.ones(y.size, bool), plan)
    with pytest.raises(ProtocolViolation, match="never forwarded"):
        party.backward(0, np.zeros((256, plan.out_dim)))
    out = party.forward(0)
    with pytest.raises(ProtocolViolation, match="forwarded twice"):
        party.forward(0)
    with pytest.raises(ProtocolViolation, match="gradient shape"):
        party.backward(0, np.zeros((out.shape[0] + 1, plan.out_dim)))
    with pytest.raises(ProtocolViolation, match="outside"):
        party.schedule.batches(10**6)


def test_label_dp_noise_changes_gradients_and_reports_epsilon() -> None:
    xa, xb, y = two_party_problem(n=800)
    quiet = TopParty(y, VerticalPlan(batch_size=128))
    noisy = TopParty(y, VerticalPlan(batch_size=128, label_dp_sigma=1.0))
    z = np.zeros((quiet.schedule.batches(0)[0].size * 4, 4))
    assert not np.allclose(quiet.step(0, z), noisy.step(0, z))
    eps = [label_dp_epsilon(VerticalPlan(label_dp_sigma=s), 1000, 20) for s in (0.5, 1.0, 4.0)]
    assert eps[0] > eps[1] > eps[2] > 0
    assert label_dp_epsilon(VerticalPlan(), 1000, 20) is None
