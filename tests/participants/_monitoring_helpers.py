"""Shared helpers for the monitoring tests: signed grants, fake scorers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone

from crypto.identity import IdentityKey
from participants.monitoring.watchlist import ScoreRecord
from protocols.consent import Grant, GrantTerms, new_grant_id
from protocols.scoring import grade_for

NOW = datetime(2025, 3, 1, tzinfo=timezone.utc)
USCC_A = "91350100M000100Y43"


def grant(authority: IdentityKey, uscc: str, *, lender: str = "lender", purpose: str = "monitoring",
          days: int = 180, start: datetime = NOW) -> Grant:
    terms = GrantTerms(enterprise=uscc, lender=lender, purpose=purpose, holders="all",
                       valid_from=start - timedelta(days=1), valid_until=start + timedelta(days=days))
    return Grant(grant_id=new_grant_id(), terms=terms, issued_at=start - timedelta(days=1),
                 authority=authority.fingerprint).signed_with(authority)


def record(uscc: str, as_of: str, pd_: float, contributions: Mapping[str, float] | None = None) -> ScoreRecord:
    return ScoreRecord(uscc=uscc, as_of=as_of, scored=True, pd=pd_, grade=grade_for(pd_), model_ref="m:v1",
                       sources=("bank", "tax"), contributions=dict(contributions) if contributions else None)


class TableScorer:
    """Returns PDs from a {month: {uscc: pd}} table (stands in for the SDK in unit tests)."""

    def __init__(self, table: Mapping[str, Mapping[str, float]]) -> None:
        self.table = table
        self.calls: list[list[str]] = []

    def score(self, subjects: Sequence[tuple[str, str]], as_of: str) -> list[ScoreRecord]:
        self.calls.append([u for u, _ in subjects])
        return [record(u, as_of, self.table[as_of][u]) for u, _ in subjects]
