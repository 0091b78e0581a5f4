"""Input checks shared by metrics, training and preprocessing (private: one place for the messages)."""

from __future__ import annotations

from typing import Any

import numpy as np

from models.errors import InvalidInput


def as_matrix(X: Any, name: str = "X") -> np.ndarray:
    """2-D finite float array, or :class:`InvalidInput` naming the problem."""
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{name}: cannot convert to a float array ({exc})") from None
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise InvalidInput(f"{name}: expected a 2-D array (rows x features), got {arr.ndim} dimensions")
    if arr.shape[0] == 0:
        raise InvalidInput(f"{name}: no rows")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise InvalidInput(f"{name}: {bad} non-finite values (NaN/inf); impute before use")
    return arr


def as_labels(y: Any, name: str = "y", *, both_classes: bool = True) -> np.ndarray:
    """1-D int array of 0/1 labels; with ``both_classes`` at least one of each."""
    try:
        arr = np.asarray(y, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{name}: cannot convert labels to numbers ({exc})") from None
    if arr.size == 0:
        raise InvalidInput(f"{name}: no labels")
    if not np.isin(arr, (0.0, 1.0)).all():
        bad = np.unique(arr[~np.isin(arr, (0.0, 1.0))])[:5]
        raise InvalidInput(f"{name}: labels must be 0/1, found {bad.tolist()}")
    labels = arr.astype(np.int64)
    if both_classes and labels.min() == labels.max():
        raise InvalidInput(f"{name}: only class {int(labels[0])} present; need both 0 and 1")
    return labels


def as_scores(p: Any, n: int, name: str = "scores") -> np.ndarray:
    """1-D finite float array of length ``n``."""
    try:
        arr = np.asarray(p, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{name}: cannot convert to a float array ({exc})") from None
    if arr.size != n:
        raise InvalidInput(f"{name}: {arr.size} values for {n} labels")
    if not np.isfinite(arr).all():
        raise InvalidInput(f"{name}: contains NaN or inf")
    return arr


def as_probabilities(p: Any, n: int, name: str = "probabilities") -> np.ndarray:
    """Scores that must lie in [0, 1] (calibration metrics are meaningless otherwise)."""
    arr = as_scores(p, n, name)
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise InvalidInput(f"{name}: must lie in [0, 1], got range [{arr.min():.4g}, {arr.max():.4g}]")
    return arr
