"""Lending value: bad rate at an approval rate, approvals within a bad rate, and the comparison."""

from __future__ import annotations

import numpy as np
import pytest

from models.errors import InvalidInput, ShapeMismatch
from models.lending import approvals_within, bad_rate_at, compare, policy_approval_rate

# ten enterprises, three defaults; PDs listed in the same order
Y = np.array([0, 0, 1, 0, 0, 1, 0, 0, 0, 1])
PERFECT = np.array([0.1, 0.2, 0.9, 0.3, 0.1, 0.8, 0.2, 0.3, 0.1, 0.95])
NOISY = np.array([0.1, 0.5, 0.3, 0.2, 0.1, 0.6, 0.7, 0.2, 0.4, 0.9])


def test_bad_rate_counts_defaults_among_the_lowest_pds() -> None:
    assert bad_rate_at(Y, PERFECT, 0.7) == 0.0
    assert bad_rate_at(Y, PERFECT, 1.0) == pytest.approx(0.3)
    # NOISY's five lowest PDs: indices 0, 4, 3, 7, 2 -> one default
    assert bad_rate_at(Y, NOISY, 0.5) == pytest.approx(0.2)


def test_approvals_within_a_bad_rate_is_the_largest_safe_prefix() -> None:
    assert approvals_within(Y, PERFECT, 0.0) == 7
    assert approvals_within(Y, NOISY, 0.0) == 4
    assert approvals_within(Y, NOISY, 0.2) == 7  # one default among the first seven; the eighth is the second
    assert approvals_within(Y, NOISY, 1.0) == 10


def test_a_better_ranking_approves_more_at_the_same_risk() -> None:
    c = compare(Y, NOISY, PERFECT, 0.4)
    assert (c.approved, c.bad_rate_reference, c.bad_rate_candidate) == (4, 0.0, 0.0)
    assert c.approved_candidate_same_risk == 7
    assert c.extra_approvals == pytest.approx(0.75)
    assert compare(Y, NOISY, NOISY, 0.4).extra_approvals == 0.0
    assert c.as_dict()["extra_approvals"] == pytest.approx(0.75)


def test_on_random_data_the_better_model_never_has_a_higher_bad_rate() -> None:
    rng = np.random.default_rng(0)
    risk = rng.normal(size=20_000)
    y = (rng.random(20_000) < 1 / (1 + np.exp(-(risk * 2 - 3)))).astype(int)
    strong, weak = risk + rng.normal(0, 0.3, risk.size), risk + rng.normal(0, 1.5, risk.size)
    for rate in (0.5, 0.7, 0.9):
        c = compare(y, weak, strong, rate)
        assert c.bad_rate_candidate < c.bad_rate_reference
        assert c.approved_candidate_same_risk > c.approved


def test_policy_rate_and_bad_input() -> None:
    assert policy_approval_rate(NOISY, 0.35) == pytest.approx(0.5)
    with pytest.raises(InvalidInput, match="approves nobody"):
        policy_approval_rate(NOISY, 0.01)
    with pytest.raises(ShapeMismatch, match="3 PDs for 10 labels"):
        bad_rate_at(Y, NOISY[:3], 0.5)
    with pytest.raises(InvalidInput, match="0/1"):
        bad_rate_at(Y * 2, NOISY, 0.5)
    with pytest.raises(InvalidInput, match="approval rate"):
        bad_rate_at(Y, NOISY, 0.0)
    with pytest.raises(InvalidInput, match="finite"):
        compare(Y, NOISY, np.full(10, np.nan), 0.5)
