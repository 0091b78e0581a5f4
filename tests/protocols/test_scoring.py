"""Scoring protocol rules: replay window, score scale and grades, batch validation, the homomorphic
top (linear, square, poly) against the plaintext model, share masking, and the shared world fixture."""

from __future__ import annotations

import fcntl
import math
import os

import numpy as np
import pytest

from crypto.ckks_keys import LenderKeyPair, PublicContext, encrypt_columns, encrypt_vector
from crypto.errors import MissingSecretKey
from models.split import TopModel, evaluate_top as plain_top
from protocols.scoring import (
    GRADE_BANDS,
    InvalidRequest,
    KeyNotUsable,
    MonthNotAvailable,
    NotAuthorized,
    ReplayGuard,
    ReplayedRequest,
    RequestTooLarge,
    RequiredSourceUnavailable,
    ScoreScale,
    ScoringLimits,
    StaleRequest,
    UnknownKey,
    UnknownModel,
    combine_shares,
    error_from_status,
    evaluate_top,
    feature_month,
    grade_for,
    layout_for,
    scoring_purpose,
    sigmoid,
    validate_subjects,
)
from protocols.uscc import make_uscc

# ---------------------------------------------------------------------------------------------
# Shared fixture helper: one synthetic consortium + in-process trained split model per test run
# ---------------------------------------------------------------------------------------------


def cached_world(tmp_path_factory, kind: str = "linear"):
    """Build (once per test run, shared by xdist workers through a file lock) or reopen a world."""
    from bench.bench_scoring import build_world, load_world

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_TESTRUNUID") else base
    root = shared / f"scoring-world-{kind}"
    with open(shared / f"scoring-world-{kind}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "world.json").exists():
            return load_world(root)
        return build_world(root, top_kind=kind, enterprises=1200, epochs=2.0)


@pytest.fixture(scope="module")
def keys() -> LenderKeyPair:
    return LenderKeyPair.generate()


@pytest.fixture(scope="module")
def public(keys) -> PublicContext:
    return PublicContext.from_bytes(keys.public_context_bytes())


# ---------------------------------------------------------------------------------------------
# Replay protection
# ---------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


RID = "0123456789abcdef0123456789abcdef"


def test_replay_guard_refuses_a_second_use_of_an_id() -> None:
    clock = FakeClock()
    guard = ReplayGuard(60, clock=clock)
    guard.check("lender", RID, int(clock.t * 1000))
    with pytest.raises(ReplayedRequest, match=RID):
        guard.check("lender", RID, int(clock.t * 1000) + 5)
    guard.check("other-lender", RID, int(clock.t * 1000))  # ids are per caller


@pytest.mark.parametrize("offset_s", [-61, 61, -3600])
def test_replay_guard_refuses_stale_or_future_timestamps(offset_s: int) -> None:
    clock = FakeClock()
    with pytest.raises(StaleRequest, match="stale"):
        ReplayGuard(60, clock=clock).check("lender", RID, int((clock.t + offset_s) * 1000))


def test_replay_guard_forgets_ids_only_once_their_timestamps_are_refused() -> None:
    clock = FakeClock()
    guard = ReplayGuard(60, clock=clock)
    issued = int(clock.t * 1000)
    guard.check("lender", RID, issued)
    clock.t += 59
    with pytest.raises(ReplayedRequest):
        guard.check("lender", RID, issued)
    clock.t += 200  # id forgotten, but the old stamp is now stale
    with pytest.raises(StaleRequest):
        guard.check("lender", RID, issued)
    guard.check("lender", "f" * 32, int(clock.t * 1000))
    assert len(guard._seen) == 1


@pytest.mark.parametrize("rid", ["", "xyz", "0123456789ABCDEF0123456789ABCDEF", "0" * 31])
def test_replay_guard_requires_128_bit_hex_ids(rid: str) -> None:
    with pytest.raises(InvalidRequest, match="32 lowercase hex"):
        ReplayGuard(60).check("lender", rid, 0)


# ---------------------------------------------------------------------------------------------
# Scale and grades
# ---------------------------------------------------------------------------------------------


def test_score_scale_points_to_double_odds() -> None:
    scale = ScoreScale()
    assert scale.score(1 / 51) == 600  # odds 50:1
    odds_100 = 1 / 101
    assert scale.score(odds_100) == 640  # doubling the odds adds 40 points
    pds = np.linspace(0.0005, 0.9995, 400)
    scores = [scale.score(p) for p in pds]
    assert all(a >= b for a, b in zip(scores, scores[1:]))  # higher PD, lower score
    assert min(scores) == 300 and max(scores) <= 900
    assert scale.score(1e-9) == 900 and scale.score(1 - 1e-9) == 300


def test_grades_follow_the_documented_pd_bands() -> None:
    assert [grade_for(p) for p in (0.0, 0.0099, 0.01, 0.0299, 0.03, 0.069, 0.07, 0.149, 0.15, 1.0)] == list(
        "AABBCCDDEE"
    )
    assert [g for g, _ in GRADE_BANDS] == list("ABCDE")


# ---------------------------------------------------------------------------------------------
# Batch validation and error mapping
# ---------------------------------------------------------------------------------------------

GOOD = make_uscc("91350100M000100Y4")


def test_validate_subjects_names_index_and_rule() -> None:
    bad = GOOD[:-1] + ("0" if GOOD[-1] != "0" else "1")
    with pytest.raises(InvalidRequest, match=r"subject 1: invalid USCC: check digit"):
        validate_subjects([GOOD, bad], ["g", "g"], ScoringLimits())
    with pytest.raises(InvalidRequest, match="subject 1: repeats subject 0"):
        validate_subjects([GOOD, GOOD.lower()], ["g", "g"], ScoringLimits())
    with pytest.raises(InvalidRequest, match="no grant"):
        validate_subjects([GOOD], [""], ScoringLimits())
    with pytest.raises(RequestTooLarge, match="at most 1"):
        validate_subjects([GOOD, make_uscc("91440300708461136")], ["g", "g"], ScoringLimits(max_subjects=1))
    with pytest.raises(InvalidRequest, match="no enterprise"):
        validate_subjects([], [], ScoringLimits())


def test_purpose_defaults_to_scoring_and_allows_monitoring_only() -> None:
    assert scoring_purpose("") == scoring_purpose(None) == scoring_purpose("scoring") == "scoring"
    assert scoring_purpose("monitoring") == "monitoring"
    for other in ("training", "Scoring", "anything"):
        with pytest.raises(InvalidRequest, match="is not one of scoring, monitoring"):
            scoring_purpose(other)


def test_feature_month_is_yyyy_mm_or_nothing() -> None:
    assert feature_month("") == feature_month(None) == ""
    assert feature_month("2024-12") == "2024-12"
    for bad in ("2024-13", "2024-1", "24-12", "2024-12\n", "2024/12", "december"):
        with pytest.raises(MonthNotAvailable, match="is not YYYY-MM"):
            feature_month(bad)


def test_invalid_uscc_message_does_not_echo_the_code() -> None:
    bad = "91350100M000100Y4Z"
    with pytest.raises(InvalidRequest) as info:
        validate_subjects([bad], ["g"], ScoringLimits())
    assert bad not in str(info.value)


@pytest.mark.parametrize(
    "status, message, cls",
    [
        ("INVALID_ARGUMENT", "x", InvalidRequest),
        ("INVALID_ARGUMENT", "month 2025-01 is beyond tax's data, which ends at 2024-12", MonthNotAvailable),
        ("NOT_FOUND", "key 12 is not registered", UnknownKey),
        ("NOT_FOUND", "model 'm:v1' is not served", UnknownModel),
        ("RESOURCE_EXHAUSTED", "x", RequestTooLarge),
        ("ALREADY_EXISTS", "x", ReplayedRequest),
        ("PERMISSION_DENIED", "revoked", NotAuthorized),
        ("FAILED_PRECONDITION", "stale request", StaleRequest),
        ("FAILED_PRECONDITION", "depth", KeyNotUsable),
        ("UNAVAILABLE", "required holder bank is timeout", RequiredSourceUnavailable),
    ],
)
def test_statuses_map_to_typed_errors(status: str, message: str, cls: type) -> None:
    err = error_from_status(status, message)
    assert type(err) is cls and err.status == status and str(err) == message


# ---------------------------------------------------------------------------------------------
# Homomorphic top evaluation
# ---------------------------------------------------------------------------------------------


def _contributions(public, spec, parts, layout=None):
    if (layout or layout_for(spec, len(parts[0]), public.slot_count)) == "packed":
        return [[encrypt_vector(public, p.T.ravel())] for p in parts]
    return [encrypt_columns(public, p) for p in parts]


@pytest.mark.parametrize("kind, layout", [("linear", "packed"), ("linear", "columns"), ("square", None), ("poly", None)])
def test_encrypted_top_matches_plaintext_model(keys, public, kind: str, layout: str | None) -> None:
    import torch

    torch.manual_seed(3)
    spec = TopModel(4, kind, hidden=5).he_spec()
    rng = np.random.default_rng(1)
    n = 300
    parts = [rng.normal(size=(n, 4)) for _ in range(3)]
    shares = evaluate_top(spec, _contributions(public, spec, parts, layout), n)  # gateway: public context only
    if kind == "linear":  # packed: the lender adds 4 masked blocks; columns: one logit vector
        assert [s.blocks for s in shares] == ([4] if layout == "packed" else [1])
    wire = [(s.vector.to_bytes(), s.blocks, s.sign) for s in shares]
    logits = combine_shares(keys, wire, n)
    expected = plain_top(spec, parts[0] + parts[1] + parts[2])
    assert np.max(np.abs(sigmoid(logits) - sigmoid(expected))) < 1e-4
    assert np.max(np.abs(logits - expected)) < 1e-3
    with pytest.raises(MissingSecretKey):
        combine_shares(public, wire, n)


def test_layout_packs_small_batches_only() -> None:
    import torch

    torch.manual_seed(0)
    linear, poly = TopModel(4, "linear").he_spec(), TopModel(4, "poly").he_spec()
    assert layout_for(linear, 1, 4096) == "packed" and layout_for(linear, 1024, 4096) == "packed"
    assert layout_for(linear, 1025, 4096) == "columns" and layout_for(poly, 1, 4096) == "columns"


def test_poly_top_with_negative_units_uses_two_shares(keys, public) -> None:
    import torch

    torch.manual_seed(0)
    spec = TopModel(4, "square", hidden=6).he_spec()
    spec.w2[:] = np.array([0.7, -0.4, 0.2, -0.9, 0.5, -0.1])
    rng = np.random.default_rng(2)
    parts = [rng.normal(size=(50, 4)) for _ in range(2)]
    shares = evaluate_top(spec, _contributions(public, spec, parts), 50)
    assert sorted(s.sign for s in shares) == [-1.0, 1.0]
    logits = combine_shares(keys, [(s.vector.to_bytes(), s.blocks, s.sign) for s in shares], 50)
    assert np.max(np.abs(logits - plain_top(spec, parts[0] + parts[1]))) < 1e-3


def test_linear_share_blocks_are_masked(keys, public) -> None:
    """Each block alone is noise; only the sum of the blocks is the logit."""
    import torch

    torch.manual_seed(5)
    spec = TopModel(4, "linear").he_spec()
    rng = np.random.default_rng(3)
    z = rng.normal(size=(200, 4))
    [share] = evaluate_top(spec, [[encrypt_vector(public, z.T.ravel())]], 200)
    from crypto.ckks_keys import EncryptedVector, decrypt

    blocks = decrypt(keys, EncryptedVector.from_bytes(share.vector.to_bytes(), keys)).reshape(4, 200)
    partials = (z * spec.w2).T
    assert np.median(np.abs(blocks - partials)) > 1000  # masks dominate every block
    assert np.allclose(blocks.sum(axis=0), z @ spec.w2 + spec.b2, atol=1e-4)


def test_ciphertexts_under_another_key_are_refused(public) -> None:
    import torch

    torch.manual_seed(1)
    spec = TopModel(2, "linear").he_spec()
    other = PublicContext.from_bytes(LenderKeyPair.generate().public_context_bytes())
    contributions = [[encrypt_vector(public, np.ones(4))], [encrypt_vector(other, np.ones(4))]]
    with pytest.raises(KeyNotUsable, match="key"):
        evaluate_top(spec, contributions, 2)


def test_world_builder_trains_a_useful_model(tmp_path_factory) -> None:
    world = cached_world(tmp_path_factory)
    universe = world.universe()
    assert len(universe) > 1000 and world.label_holder == "bank" and len(world.holders) == 3
    pd_ = world.plaintext_pd(universe)
    assert np.all((pd_ > 0) & (pd_ < 1)) and 0.01 < float(np.mean(pd_)) < 0.6
    assert not math.isclose(float(np.std(pd_)), 0.0)
