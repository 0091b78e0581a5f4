"""Vectorised window statistics over a :class:`MonthGrid` (one function per statistic name).

Every statistic returns a finite value for every firm: when the window holds too little history
the value is 0 and the missing-history features (``missing_recent``, ``short_history``,
``active_months12``) tell the model why.
"""

from __future__ import annotations

import warnings

import numpy as np

from participants.features.grid import MonthGrid
from protocols.feature_schemas import FeatureSpec

GRID_WIDTH = 15
"""Months of history a feature may look at: ``yoy3`` compares T-2..T with T-14..T-12."""


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """log(1+|x|) with the sign kept: money can be negative (e.g. overdrawn balances)."""
    return np.sign(x) * np.log1p(np.abs(x))


def _window(matrix: np.ndarray, start_back: int, stop_back: int) -> np.ndarray:
    """Columns for months T-start_back .. T-stop_back (inclusive)."""
    width = matrix.shape[1]
    return matrix[:, width - 1 - start_back: width - stop_back]


def _nanmean(block: np.ndarray) -> np.ndarray:
    """Row means over the reported months; NaN for a row with none. Computed without
    ``np.nanmean``, whose empty-row warning cannot be silenced safely when holders build features
    in several threads at once (``warnings.catch_warnings`` is not thread-safe)."""
    mask = ~np.isnan(block)
    count = mask.sum(axis=1)
    total = np.where(mask, block, 0.0).sum(axis=1)
    return np.divide(total, count, out=np.full(count.shape, np.nan), where=count > 0)


def _nanstd(block: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Population standard deviation over the reported months (as ``np.nanstd``), NaN for none;
    ``mean`` is :func:`_nanmean` of the same block."""
    mask = ~np.isnan(block)
    count = mask.sum(axis=1)
    sq = np.where(mask, (block - mean[:, None]) ** 2, 0.0).sum(axis=1)
    return np.sqrt(np.divide(sq, count, out=np.full(count.shape, np.nan), where=count > 0))


def _slope(block: np.ndarray, min_points: int = 3) -> np.ndarray:
    """Least-squares slope per month, ignoring missing months; 0 when fewer than 3 points."""
    mask = ~np.isnan(block)
    x = np.arange(block.shape[1], dtype=float)[None, :]
    count = mask.sum(axis=1)
    safe = np.where(mask, block, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        x_mean = (mask * x).sum(axis=1) / count
        y_mean = safe.sum(axis=1) / count
        dx = np.where(mask, x - x_mean[:, None], 0.0)
        num = (dx * (safe - y_mean[:, None])).sum(axis=1)
        den = (dx * dx).sum(axis=1)
        slope = num / den
    return np.where((count >= min_points) & (den > 0), slope, 0.0)


def _last_observed(block: np.ndarray) -> np.ndarray:
    mask = ~np.isnan(block)
    idx = block.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
    out = block[np.arange(block.shape[0]), idx]
    return np.where(mask.any(axis=1), out, np.nan)


def compute(spec: FeatureSpec, grid: MonthGrid, as_of_index: int) -> np.ndarray:
    """Value of one feature for every firm of the grid."""
    stat = spec.stat
    if stat == "tenure":
        return (as_of_index - grid.first_month + 1).astype(float)
    if stat == "since_last":
        return (as_of_index - grid.last_month).astype(float)
    if stat == "missing_recent":
        return (as_of_index - grid.last_month >= 3).astype(float)
    if stat == "short_history":
        return (as_of_index - grid.first_month + 1 < 12).astype(float)
    if stat == "active12":
        return _window(grid.present, 11, 0).sum(axis=1).astype(float)

    raw = grid.values[spec.field]  # type: ignore[index]
    x = signed_log1p(raw) if spec.transform == "log1p" else raw
    with np.errstate(invalid="ignore", divide="ignore"):
        if stat == "mean3":
            out = _nanmean(_window(x, 2, 0))
        elif stat == "mean6":
            out = _nanmean(_window(x, 5, 0))
        elif stat == "slope12":
            out = _slope(_window(x, 11, 0))
        elif stat == "cv12":
            block = _window(raw, 11, 0)
            count = (~np.isnan(block)).sum(axis=1)
            mean = _nanmean(block)
            std = _nanstd(block, mean)
            out = np.where((count >= 2) & (mean > 0), std / mean, 0.0)
        elif stat == "drop3v6":
            out = _nanmean(_window(x, 8, 3)) - _nanmean(_window(x, 2, 0))
        elif stat == "yoy3":
            out = _nanmean(_window(x, 2, 0)) - _nanmean(_window(x, 14, 12))
        elif stat == "max12":
            block = _window(x, 11, 0)
            out = np.where(np.isnan(block).all(axis=1), np.nan,
                           np.nanmax(np.where(np.isnan(block), -np.inf, block), axis=1))
        elif stat == "last":
            out = _last_observed(x)
        elif stat == "posfrac12":
            block = _window(x, 11, 0)
            count = (~np.isnan(block)).sum(axis=1)
            out = np.where(count > 0, (block > 0).sum(axis=1) / np.maximum(count, 1), 0.0)
        elif stat == "ratio6":
            num = np.nansum(_window(x, 5, 0), axis=1)
            den_raw = grid.values[spec.other]  # type: ignore[index]
            den = np.nansum(_window(den_raw, 5, 0), axis=1)
            out = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
        else:  # pragma: no cover - the Statistic literal is exhaustive
            raise AssertionError(stat)
    return np.where(np.isfinite(out), out, 0.0)
