"""Credit-scoring metrics: discrimination (AUC, KS, Gini) and calibration (Brier, ECE).

Everything rests on scikit-learn's definitions (``roc_auc_score``, ``roc_curve``,
``brier_score_loss``) so that figures reported by fedscore mean exactly what a risk analyst
expects. KS is the maximum vertical gap between the cumulative score distributions of bads and
goods, i.e. ``max(TPR - FPR)`` over the ROC curve; Gini is ``2 * AUC - 1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import brier_score_loss, roc_auc_score, roc_curve

from models._checks import as_labels, as_probabilities, as_scores


class Metrics(BaseModel):
    """Summary of one set of predictions against labels (JSON-ready)."""

    model_config = ConfigDict(frozen=True)

    n: int = Field(description="number of scored rows")
    positives: int = Field(description="rows with label 1 (default / bankrupt)")
    auc: float = Field(ge=0.0, le=1.0)
    ks: float = Field(ge=0.0, le=1.0)
    gini: float = Field(ge=-1.0, le=1.0)
    brier: float | None = Field(default=None, description="None when scores are not probabilities")
    ece: float | None = Field(default=None, description="expected calibration error, equal-width bins")


class KSCurve(BaseModel):
    """Cumulative bad/good rates by descending score threshold, for a KS plot."""

    thresholds: list[float]
    bad_rate: list[float] = Field(description="cumulative share of positives scored >= threshold (TPR)")
    good_rate: list[float] = Field(description="cumulative share of negatives scored >= threshold (FPR)")
    ks: float
    ks_threshold: float


class ROCPoints(BaseModel):
    fpr: list[float]
    tpr: list[float]
    thresholds: list[float]
    auc: float


def auc(y: Any, scores: Any) -> float:
    """Area under the ROC curve."""
    labels = as_labels(y)
    return float(roc_auc_score(labels, as_scores(scores, labels.size)))


def gini(y: Any, scores: Any) -> float:
    """Accuracy ratio, ``2 * AUC - 1``."""
    return 2.0 * auc(y, scores) - 1.0


def ks(y: Any, scores: Any) -> float:
    """Kolmogorov-Smirnov statistic between score distributions of positives and negatives."""
    labels = as_labels(y)
    fpr, tpr, _ = roc_curve(labels, as_scores(scores, labels.size))
    return float(np.clip(np.max(tpr - fpr), 0.0, 1.0))


def brier(y: Any, probabilities: Any) -> float:
    labels = as_labels(y, both_classes=False)
    return float(brier_score_loss(labels, as_probabilities(probabilities, labels.size)))


def expected_calibration_error(y: Any, probabilities: Any, n_bins: int = 10) -> float:
    """Weighted mean |observed rate - mean predicted| over equal-width probability bins."""
    labels = as_labels(y, both_classes=False)
    p = as_probabilities(probabilities, labels.size)
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    pred_sum = np.bincount(bins, weights=p, minlength=n_bins)
    obs_sum = np.bincount(bins, weights=labels.astype(np.float64), minlength=n_bins)
    occupied = counts > 0
    gaps = np.abs(obs_sum[occupied] - pred_sum[occupied]) / counts[occupied]
    return float(np.sum(gaps * counts[occupied]) / labels.size)


def roc_points(y: Any, scores: Any) -> ROCPoints:
    labels = as_labels(y)
    s = as_scores(scores, labels.size)
    fpr, tpr, thr = roc_curve(labels, s)
    thr = np.where(np.isfinite(thr), thr, np.max(s))  # sklearn's first threshold is +inf
    return ROCPoints(fpr=fpr.tolist(), tpr=tpr.tolist(), thresholds=thr.tolist(), auc=float(roc_auc_score(labels, s)))


def ks_curve(y: Any, scores: Any) -> KSCurve:
    roc = roc_points(y, scores)
    diff = np.asarray(roc.tpr) - np.asarray(roc.fpr)
    best = int(np.argmax(diff))
    return KSCurve(
        thresholds=roc.thresholds,
        bad_rate=roc.tpr,
        good_rate=roc.fpr,
        ks=float(np.clip(diff[best], 0.0, 1.0)),
        ks_threshold=roc.thresholds[best],
    )


def evaluate(y: Any, scores: Any, *, probabilities: bool = True, n_bins: int = 10) -> Metrics:
    """All metrics at once; pass ``probabilities=False`` for raw scores/logits (no calibration)."""
    labels = as_labels(y)
    s = as_scores(scores, labels.size)
    fpr, tpr, _ = roc_curve(labels, s)
    area = float(roc_auc_score(labels, s))
    return Metrics(
        n=int(labels.size),
        positives=int(labels.sum()),
        auc=area,
        ks=float(np.clip(np.max(tpr - fpr), 0.0, 1.0)),
        gini=2.0 * area - 1.0,
        brier=brier(labels, s) if probabilities else None,
        ece=expected_calibration_error(labels, s, n_bins) if probabilities else None,
    )
