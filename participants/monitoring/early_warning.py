"""Early-warning quality at a fixed alert budget (pure logic, no I/O).

Each month the lender can review a fixed share of its watchlist: it flags the ``rate`` highest-PD
enterprises among those not yet in default. A later default counts as *warned early* when the
enterprise was flagged in some month at least ``lead`` months before its default month. Only
defaults that could have been warned within the monitoring window count (default month between
``first + lead`` and ``last + lead``), so a short window does not penalise either model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import roc_auc_score

from participants.monitoring.errors import MonitoringError

NEVER = np.iinfo(np.int64).max


class ModelOutcome(BaseModel):
    """How one model did over the window."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    targets: int = Field(description="defaults that could be warned >= lead months ahead in the window")
    warned_early: int
    share: float
    median_lead: float | None = Field(description="months between the first early flag and the default")
    mean_auc: float = Field(description="mean monthly AUC for default within 12 months, active firms")
    flags_per_month: float


def flag_top(pds: np.ndarray, active: np.ndarray, rate: float) -> np.ndarray:
    """Boolean mask: the ``ceil(rate · active)`` highest PDs among active enterprises
    (ties broken by position, so the budget is exact)."""
    if not 0 < rate <= 1:
        raise MonitoringError(f"alert rate must be in (0, 1], got {rate}")
    pds = np.asarray(pds, dtype=np.float64)
    active = np.asarray(active, dtype=bool)
    if pds.shape != active.shape:
        raise MonitoringError(f"{pds.shape[0]} PDs for {active.shape[0]} enterprises")
    k = math.ceil(rate * int(active.sum()))
    order = np.argsort(-np.where(active, pds, -np.inf), kind="stable")
    out = np.zeros(pds.shape, dtype=bool)
    out[order[:k]] = True
    return out & active


def evaluate_model(name: str, pd_by_month: Mapping[int, np.ndarray], default_month: np.ndarray, *,
                   rate: float = 0.10, lead: int = 3, horizon: int = 12) -> ModelOutcome:
    """``pd_by_month[m]``: PDs of the whole watchlist at month index ``m`` (same order as
    ``default_month``, which holds each enterprise's default month index or :data:`NEVER`)."""
    months: Sequence[int] = sorted(pd_by_month)
    if not months:
        raise MonitoringError("no monitoring month to evaluate")
    default_month = np.asarray(default_month, dtype=np.int64)
    early_flag = np.full(default_month.shape, NEVER, dtype=np.int64)
    aucs, flags = [], []
    for m in months:
        active = default_month > m
        flagged = flag_top(pd_by_month[m], active, rate)
        flags.append(int(flagged.sum()))
        early = flagged & (default_month - m >= lead) & (early_flag == NEVER)
        early_flag = np.where(early, m, early_flag)
        y = (default_month[active] <= m + horizon).astype(int)
        if 0 < y.sum() < y.size:
            aucs.append(float(roc_auc_score(y, np.asarray(pd_by_month[m])[active])))
    target = (default_month >= months[0] + lead) & (default_month <= months[-1] + lead)
    warned = target & (early_flag != NEVER)
    leads = (default_month - early_flag)[warned]
    n_target = int(target.sum())
    return ModelOutcome(
        model=name, targets=n_target, warned_early=int(warned.sum()),
        share=float(warned.sum() / n_target) if n_target else 0.0,
        median_lead=float(np.median(leads)) if leads.size else None,
        mean_auc=float(np.mean(aucs)) if aucs else float("nan"),
        flags_per_month=float(np.mean(flags)),
    )
