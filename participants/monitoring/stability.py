"""Population stability index (PSI): has the population moved since the model was fitted?

``PSI = Σ (a_k − e_k) · ln(a_k / e_k)`` over bins fixed on the reference sample (deciles by
default), ``e_k``/``a_k`` the reference/current share in bin ``k``. The usual reading, used here:
below 0.1 stable, 0.1–0.25 watch, above 0.25 the model needs retraining.

Two scopes, two places:

* the score distribution, month over month, at the lender (it alone sees decrypted scores);
* each holder's features, computed at the holder on its own data (:func:`holder_feature_stability`)
  — only the indices (one number per feature) leave the node, never a feature value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from participants.datastore import LocalDataStore
from participants.monitoring.errors import MonitoringError
from protocols.feature_schemas import STANDARD_KINDS, standard_schema

WATCH_AT = 0.10
RETRAIN_AT = 0.25
_EPS = 1e-4
"""Floor on a bin share: an empty bin would make the log infinite."""


class Drift(StrEnum):
    STABLE = "stable"
    WATCH = "watch"
    RETRAIN = "retrain"


def classify(value: float) -> Drift:
    """stable < 0.1 ≤ watch ≤ 0.25 < retrain."""
    if value > RETRAIN_AT:
        return Drift.RETRAIN
    if value >= WATCH_AT:
        return Drift.WATCH
    return Drift.STABLE


def _clean(values: object, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        raise MonitoringError(f"PSI: the {name} sample is empty")
    if np.isinf(arr).any():
        raise MonitoringError(f"PSI: the {name} sample contains inf")
    return arr


def psi(reference: object, current: object, *, bins: int = 10) -> float:
    """PSI of ``current`` against ``reference`` over ``bins`` reference quantile bins.

    Ties (counts, flags) collapse quantile edges; the distinct edges are kept, so a binary feature
    gets two bins rather than ten empty ones. NaN values are ignored.
    """
    if bins < 2:
        raise MonitoringError(f"PSI needs at least 2 bins, got {bins}")
    ref = _clean(reference, "reference")
    cur = _clean(current, "current")
    inner = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    # Right-closed bins so that a value equal to an edge (ties, binaries) falls with its quantile.
    e = np.bincount(np.searchsorted(inner, ref, side="left"), minlength=inner.size + 1)
    a = np.bincount(np.searchsorted(inner, cur, side="left"), minlength=inner.size + 1)
    e_share = np.maximum(e / ref.size, _EPS)
    a_share = np.maximum(a / cur.size, _EPS)
    return float(np.sum((a_share - e_share) * np.log(a_share / e_share)))


class StabilityReport(BaseModel):
    """PSI per variable between two months. ``scope`` is ``score`` or the holder's name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scope: str
    reference: str
    current: str
    n_reference: int
    n_current: int
    psi: dict[str, float] = Field(description="variable -> PSI")
    worst: str
    status: Drift

    @property
    def worst_psi(self) -> float:
        return self.psi[self.worst]


def _report(scope: str, reference: str, current: str, n_ref: int, n_cur: int,
            values: Mapping[str, float]) -> StabilityReport:
    if not values:
        raise MonitoringError(f"{scope}: no variable to compare")
    worst = max(values, key=lambda k: values[k])
    return StabilityReport(scope=scope, reference=reference, current=current, n_reference=n_ref,
                           n_current=n_cur, psi={k: round(v, 6) for k, v in values.items()},
                           worst=worst, status=classify(values[worst]))


def score_stability(reference_pds: object, current_pds: object, *, reference: str,
                    current: str, bins: int = 10) -> StabilityReport:
    """Lender side: PSI of the PD distribution between two monitoring months."""
    ref = _clean(reference_pds, "reference")
    cur = _clean(current_pds, "current")
    return _report("score", reference, current, ref.size, cur.size, {"pd": psi(ref, cur, bins=bins)})


def feature_stability(holder: str, reference: pd.DataFrame, current: pd.DataFrame, *,
                      reference_month: str, current_month: str, bins: int = 10,
                      skip: Sequence[str] = ()) -> StabilityReport:
    """Holder side: PSI of every feature column present in both frames (values stay here), except
    ``skip`` (clock features such as tenure, which shift by construction and would always say
    "retrain")."""
    columns = [c for c in reference.columns if c in current.columns and c not in skip]
    missing = [c for c in reference.columns if c not in current.columns]
    if missing:
        raise MonitoringError(f"{holder}: current features lack column(s) {missing[:5]}")
    if reference.empty or current.empty:
        raise MonitoringError(f"{holder}: no enterprises to compare")
    values = {c: psi(reference[c].to_numpy(), current[c].to_numpy(), bins=bins) for c in columns}
    return _report(holder, reference_month, current_month, len(reference), len(current), values)


def holder_feature_stability(store: LocalDataStore, reference_month: str, current_month: str,
                             *, bins: int = 10) -> StabilityReport:
    """Run at a data holder over its own :class:`~participants.datastore.LocalDataStore`."""
    return feature_stability(store.name, store.features(reference_month), store.features(current_month),
                             reference_month=reference_month, current_month=current_month, bins=bins,
                             skip=clock_features(store.schema.kind))


def clock_features(kind: str) -> tuple[str, ...]:
    """A holder kind's calendar-driven features (none for custom schemas, which declare no statistics)."""
    return standard_schema(kind).clock_feature_names if kind in STANDARD_KINDS else ()
