"""What the consent tests share: a fixed instant, two enterprises, the authority's key, a settable
clock, and grant terms / signed grants whose defaults each test module picks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from crypto.identity import IdentityKey
from protocols.consent import Grant, GrantTerms, new_grant_id
from protocols.uscc import make_uscc

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=timezone.utc)
ENTERPRISE = make_uscc("91350100M000100Y4")
OTHER = make_uscc("91440300708461136")
AUTHORITY = IdentityKey.generate()


class Clock:
    """A clock the test moves by hand; call it for the current time."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def grant_terms(**fields: object) -> GrantTerms:
    """Terms for ``ENTERPRISE``, lender ``bank-a``, purpose ``scoring``, valid 30 days from ``T0``;
    ``fields`` add to or replace these (holders, max_uses, ...)."""
    base: dict[str, object] = dict(
        enterprise=ENTERPRISE, lender="bank-a", purpose="scoring", valid_from=T0, valid_until=T0 + timedelta(days=30),
    )
    base.update(fields)
    return GrantTerms(**base)  # type: ignore[arg-type]


def sign_grant(terms: GrantTerms, key: IdentityKey = AUTHORITY) -> Grant:
    """A fresh grant over ``terms``, issued at ``T0`` and signed by ``key``."""
    return Grant(grant_id=new_grant_id(), terms=terms, issued_at=T0, authority=key.fingerprint).signed_with(key)
