"""Feature preprocessing fitted on the training split only and stored as plain numbers.

Each participant fits these on its own training rows and keeps them with its bottom model; they
serialise to JSON (``model_dump_json``), never pickle, so a model store can be inspected and
loaded without executing code. Order of application: impute → winsorise → standardise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.errors import InvalidInput, ShapeMismatch


def _as_float_matrix(X: Any, name: str, allow_nan: bool) -> np.ndarray:
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{name}: cannot convert to a float array ({exc})") from None
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise InvalidInput(f"{name}: expected a non-empty 2-D array, got shape {arr.shape}")
    if np.isinf(arr).any():
        raise InvalidInput(f"{name}: contains inf")
    if not allow_nan and np.isnan(arr).any():
        raise InvalidInput(f"{name}: contains NaN; impute first")
    return arr


class _Fitted(BaseModel):
    model_config = ConfigDict(frozen=True)

    def _check_width(self, arr: np.ndarray, width: int) -> None:
        if arr.shape[1] != width:
            raise ShapeMismatch(f"{type(self).__name__} fitted on {width} features, got {arr.shape[1]}")


class MedianImputer(_Fitted):
    """Replace NaN by the training median of the column (0 when the column was all missing)."""

    medians: list[float]

    @classmethod
    def fit(cls, X: Any) -> MedianImputer:
        arr = _as_float_matrix(X, "imputer input", allow_nan=True)
        all_nan = np.isnan(arr).all(axis=0)
        filled = arr.copy()
        filled[:, all_nan] = 0.0  # nanmedian warns on all-NaN columns; their median is defined as 0
        med = np.nanmedian(filled, axis=0)
        return cls(medians=np.asarray(med, dtype=np.float64).reshape(-1).tolist())

    def transform(self, X: Any) -> np.ndarray:
        arr = _as_float_matrix(X, "imputer input", allow_nan=True).copy()
        self._check_width(arr, len(self.medians))
        rows, cols = np.nonzero(np.isnan(arr))
        arr[rows, cols] = np.asarray(self.medians)[cols]
        return arr


class Winsoriser(_Fitted):
    """Clip each column to training quantiles: financial ratios have denominators near zero and
    produce values 1e5 times the median that would otherwise dominate a linear model."""

    lower: list[float]
    upper: list[float]

    @classmethod
    def fit(cls, X: Any, quantiles: tuple[float, float] = (0.01, 0.99)) -> Winsoriser:
        lo_q, hi_q = quantiles
        if not 0.0 <= lo_q < hi_q <= 1.0:
            raise InvalidInput(f"winsor quantiles must satisfy 0 <= low < high <= 1, got {quantiles}")
        arr = _as_float_matrix(X, "winsoriser input", allow_nan=False)
        return cls(
            lower=np.quantile(arr, lo_q, axis=0).tolist(),
            upper=np.quantile(arr, hi_q, axis=0).tolist(),
        )

    def transform(self, X: Any) -> np.ndarray:
        arr = _as_float_matrix(X, "winsoriser input", allow_nan=False)
        self._check_width(arr, len(self.lower))
        return np.clip(arr, np.asarray(self.lower), np.asarray(self.upper))


class Standardiser(_Fitted):
    """``(x - mean) / scale``; constant columns get scale 1 so they map to 0 instead of NaN."""

    mean: list[float]
    scale: list[float]

    @classmethod
    def fit(cls, X: Any) -> Standardiser:
        arr = _as_float_matrix(X, "standardiser input", allow_nan=False)
        std = arr.std(axis=0)
        return cls(mean=arr.mean(axis=0).tolist(), scale=np.where(std > 1e-12, std, 1.0).tolist())

    def transform(self, X: Any) -> np.ndarray:
        arr = _as_float_matrix(X, "standardiser input", allow_nan=False)
        self._check_width(arr, len(self.mean))
        return (arr - np.asarray(self.mean)) / np.asarray(self.scale)

    def inverse_transform(self, Z: Any) -> np.ndarray:
        arr = _as_float_matrix(Z, "standardiser input", allow_nan=False)
        self._check_width(arr, len(self.mean))
        return arr * np.asarray(self.scale) + np.asarray(self.mean)


class Preprocessor(_Fitted):
    """Impute (optional) → winsorise (optional) → standardise, fitted together on training rows."""

    features: list[str] = Field(default_factory=list, description="column names, for error messages and audit")
    imputer: MedianImputer | None = None
    winsoriser: Winsoriser | None = None
    standardiser: Standardiser

    @classmethod
    def fit(
        cls,
        X: Any,
        features: list[str] | None = None,
        *,
        impute: bool = True,
        winsorise: tuple[float, float] | None = None,
    ) -> Preprocessor:
        arr = _as_float_matrix(X, "preprocessor input", allow_nan=impute)
        imputer = MedianImputer.fit(arr) if impute else None
        if imputer is not None:
            arr = imputer.transform(arr)
        winsoriser = Winsoriser.fit(arr, winsorise) if winsorise is not None else None
        if winsoriser is not None:
            arr = winsoriser.transform(arr)
        names = list(features) if features is not None else []
        if names and len(names) != arr.shape[1]:
            raise InvalidInput(f"{len(names)} feature names for {arr.shape[1]} columns")
        return cls(features=names, imputer=imputer, winsoriser=winsoriser, standardiser=Standardiser.fit(arr))

    def transform(self, X: Any) -> np.ndarray:
        arr = _as_float_matrix(X, "preprocessor input", allow_nan=self.imputer is not None)
        if self.imputer is not None:
            arr = self.imputer.transform(arr)
        if self.winsoriser is not None:
            arr = self.winsoriser.transform(arr)
        return self.standardiser.transform(arr)
