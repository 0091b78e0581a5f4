"""Lending value of a better model: what a lender gains at the same approval rate or the same risk.

AUC says how well a model ranks; a credit committee asks two concrete questions instead:

* at the approval rate the current model runs at, how many of the approved go bad under each
  model (:func:`bad_rate_at`)?
* keeping the current model's bad rate, how many more enterprises could the new model approve
  (:func:`approvals_within`)?

Both approve the enterprises with the lowest PD first (ties broken by position, so the answer is
deterministic). Pure numpy on labels and PDs; the caller decides which rows are held out.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.errors import InvalidInput, ShapeMismatch


def _check(y: np.ndarray, pd_: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(pd_, dtype=np.float64).ravel()
    if y.size == 0:
        raise InvalidInput("lending value needs at least one labelled enterprise")
    if p.shape != y.shape:
        raise ShapeMismatch(f"{name}: {p.size} PDs for {y.size} labels")
    if not np.isin(y, (0.0, 1.0)).all():
        raise InvalidInput("labels must be 0/1")
    if not np.isfinite(p).all():
        raise InvalidInput(f"{name}: PDs must be finite")
    return y, p


def _cumulative_bad_rate(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Bad rate among the k lowest-PD enterprises, for k = 1..n."""
    bads = np.cumsum(y[np.argsort(p, kind="stable")])
    return bads / np.arange(1, y.size + 1)


def approved_count(n: int, approval_rate: float) -> int:
    if not 0.0 < approval_rate <= 1.0:
        raise InvalidInput(f"approval rate must be in (0, 1], got {approval_rate}")
    return max(1, int(round(approval_rate * n)))


def bad_rate_at(y: np.ndarray, pd_: np.ndarray, approval_rate: float) -> float:
    """Share of defaults among the ``approval_rate`` lowest-PD enterprises."""
    y, p = _check(y, pd_, "PD")
    return float(_cumulative_bad_rate(y, p)[approved_count(y.size, approval_rate) - 1])


def approvals_within(y: np.ndarray, pd_: np.ndarray, max_bad_rate: float) -> int:
    """The most enterprises the model approves (lowest PD first) with a bad rate ≤ ``max_bad_rate``."""
    y, p = _check(y, pd_, "PD")
    ok = np.flatnonzero(_cumulative_bad_rate(y, p) <= max_bad_rate + 1e-12)
    return int(ok[-1] + 1) if ok.size else 0


class LendingComparison(BaseModel):
    """A candidate model against the reference (e.g. federated against bank-only) on the same rows."""

    model_config = ConfigDict(frozen=True)

    n: int
    defaults: int
    approval_rate: float = Field(description="the reference model's approval rate")
    approved: int = Field(description="enterprises the reference approves at that rate")
    bad_rate_reference: float
    bad_rate_candidate: float = Field(description="candidate's bad rate at the same approval rate")
    approved_candidate_same_risk: int = Field(description="candidate's approvals within the reference's bad rate")

    @property
    def extra_approvals(self) -> float:
        """Relative gain in approvals at the reference's bad rate (0.15 = 15% more SMEs approved)."""
        return self.approved_candidate_same_risk / self.approved - 1.0

    def as_dict(self) -> dict[str, float | int]:
        return {**self.model_dump(), "extra_approvals": self.extra_approvals}


def compare(y: np.ndarray, pd_reference: np.ndarray, pd_candidate: np.ndarray, approval_rate: float
            ) -> LendingComparison:
    """Both questions at the reference's ``approval_rate``."""
    y, ref = _check(y, pd_reference, "reference PD")
    _, cand = _check(y, pd_candidate, "candidate PD")
    k = approved_count(y.size, approval_rate)
    ref_bad = bad_rate_at(y, ref, approval_rate)
    return LendingComparison(
        n=int(y.size), defaults=int(y.sum()), approval_rate=approval_rate, approved=k,
        bad_rate_reference=ref_bad, bad_rate_candidate=bad_rate_at(y, cand, approval_rate),
        approved_candidate_same_risk=approvals_within(y, cand, ref_bad),
    )


def policy_approval_rate(pd_reference: np.ndarray, max_pd: float) -> float:
    """The approval rate a PD cut-off policy gives the reference model (approve when PD < ``max_pd``)."""
    p = np.asarray(pd_reference, dtype=np.float64).ravel()
    if p.size == 0:
        raise InvalidInput("no PDs")
    rate = float(np.mean(p < max_pd))
    if rate == 0.0:
        raise InvalidInput(f"the reference model approves nobody at PD < {max_pd}")
    return rate


__all__ = ["LendingComparison", "approvals_within", "approved_count", "bad_rate_at", "compare",
           "policy_approval_rate"]
