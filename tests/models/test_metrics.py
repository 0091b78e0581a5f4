"""Metrics match their scikit-learn / textbook definitions on random data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from models import metrics
from models.errors import InvalidInput


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000)
    p = 1 / (1 + np.exp(-(y * 1.2 + rng.normal(size=2000))))
    return y, p


def test_auc_and_gini_follow_sklearn(data):
    y, p = data
    assert metrics.auc(y, p) == pytest.approx(roc_auc_score(y, p))
    assert metrics.gini(y, p) == pytest.approx(2 * roc_auc_score(y, p) - 1)


def test_ks_is_max_gap_between_empirical_cdfs(data):
    y, p = data
    thresholds = np.unique(p)
    cdf_bad = np.searchsorted(np.sort(p[y == 1]), thresholds, side="right") / (y == 1).sum()
    cdf_good = np.searchsorted(np.sort(p[y == 0]), thresholds, side="right") / (y == 0).sum()
    assert metrics.ks(y, p) == pytest.approx(np.max(np.abs(cdf_bad - cdf_good)))
    assert 0.0 <= metrics.ks(y, p) <= 1.0


def test_ks_bounds_on_extremes():
    y = np.array([0, 0, 1, 1])
    assert metrics.ks(y, [0.1, 0.2, 0.8, 0.9]) == pytest.approx(1.0)
    assert 0.0 <= metrics.ks(y, [0.9, 0.8, 0.2, 0.1]) <= 1.0
    assert metrics.auc(y, [0.9, 0.8, 0.2, 0.1]) == pytest.approx(0.0)


def test_calibration(data):
    y, p = data
    assert metrics.brier(y, p) == pytest.approx(brier_score_loss(y, p))
    ece = metrics.expected_calibration_error(y, p)
    assert 0.0 <= ece <= 1.0
    # perfectly calibrated by construction: outcome drawn with the predicted probability
    rng = np.random.default_rng(2)
    q = rng.uniform(size=50_000)
    assert metrics.expected_calibration_error(rng.uniform(size=q.size) < q, q) < 0.02
    # systematically over-confident predictions are detected
    assert metrics.expected_calibration_error(rng.uniform(size=q.size) < q, np.clip(q * 1.5, 0, 1)) > 0.1


def test_evaluate_and_curves_agree(data):
    y, p = data
    m = metrics.evaluate(y, p)
    assert m.n == y.size and m.positives == int(y.sum())
    assert m.auc == pytest.approx(metrics.auc(y, p)) and m.ks == pytest.approx(metrics.ks(y, p))
    curve = metrics.ks_curve(y, p)
    assert curve.ks == pytest.approx(m.ks)
    assert np.all(np.diff(curve.bad_rate) >= 0) and np.all(np.diff(curve.good_rate) >= 0)
    roc = metrics.roc_points(y, p)
    assert np.trapezoid(roc.tpr, roc.fpr) == pytest.approx(m.auc)
    assert all(np.isfinite(roc.thresholds))
    assert metrics.evaluate(y, np.log(p / (1 - p)), probabilities=False).brier is None


@pytest.mark.parametrize(
    ("y", "p", "needle"),
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], "0/1"),
        ([1, 1, 1], [0.1, 0.2, 0.3], "only class"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "NaN"),
        ([0, 1, 1], [0.1, 0.3], "2 values for 3"),
    ],
)
def test_bad_input_raises_clear_error(y, p, needle):
    with pytest.raises(InvalidInput, match=needle):
        metrics.evaluate(y, p)


def test_calibration_rejects_non_probabilities():
    with pytest.raises(InvalidInput, match=r"\[0, 1\]"):
        metrics.brier([0, 1], [-1.0, 2.0])
