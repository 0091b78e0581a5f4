"""Consent enforcement at a data holder: no use of an enterprise's data without a valid grant.

Every scoring, monitoring or training use goes through :meth:`ConsentGuard.check` (or, for a batch,
:meth:`ConsentGuard.check_many`) first. The guard
checks the authority's signature, the enterprise, lender, purpose, its own inclusion, the requested
fields, the time window, the revocation list (which must be fresh) and finally counts the use
atomically. Every check, allowed or refused, is appended to the node's signed audit log with the
enterprise as a keyed hash.

Revocation reaches the holder as a signed list it pulls from a :class:`RevocationSource`. If the
holder cannot get a list younger than ``max_list_age`` it refuses everything
(``revocation_list_stale``): an unreachable authority makes the node fail closed, and a revoked grant
can be used for at most ``max_list_age`` after the revocation was published.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from pydantic import ValidationError

from crypto.audit import keyed_hash
from crypto.errors import BadSignature, MalformedData
from crypto.identity import IdentityKey, IdentityPublicKey
from participants.consent_store import HolderStore
from protocols.consent import (
    DEFAULT_MAX_LIST_AGE,
    AuditSink,
    Clock,
    ConsentDecision,
    Grant,
    Purpose,
    RefusalReason,
    RevocationSource,
    SignedRevocationList,
    UseRecord,
    UseReport,
    refusal_reason,
    utc_now,
)
from protocols.errors import ProtocolViolation
from protocols.uscc import validate_uscc

__all__ = ["ConsentGuard", "ConsentRequest", "FileRevocationSource"]

log = logging.getLogger(__name__)

class ConsentRequest(NamedTuple):
    """One enterprise in a :meth:`ConsentGuard.check_many` batch (a plain tuple works too)."""

    grant: Grant | str | bytes
    enterprise: str
    fields: tuple[str, ...] | list[str] | None = None


class _AlreadyVerified:
    """Stands in for the authority key in :func:`refusal_reason` for a grant the guard has just
    verified itself, so a batch verifies each distinct grant once and the rule order stays there."""

    @staticmethod
    def verify(domain: str, message: object, signature: bytes) -> None:
        return None


_ALREADY_VERIFIED = _AlreadyVerified()

DEFAULT_REFRESH_INTERVAL = timedelta(seconds=10)
"""How often :meth:`ConsentGuard.check` pulls a new list on its own; well under the freshness bound
so one failed pull does not make the node refuse."""


class FileRevocationSource:
    """Reads the list the authority publishes to a file (shared directory, or a copy pushed by any
    transport). The file needs no protection: the guard verifies signature and sequence."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def fetch(self) -> SignedRevocationList | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return SignedRevocationList.model_validate_json(data)
        except ValidationError as exc:
            raise MalformedData(f"{self.path}: not a signed revocation list ({exc.error_count()} errors)") from None


class ConsentGuard:
    """Enforces grants at one node; safe to share between threads (and, through the store, processes)."""

    def __init__(
        self,
        *,
        node: str,
        authority_key: IdentityPublicKey,
        store: HolderStore,
        source: RevocationSource,
        audit: AuditSink,
        hash_key: bytes,
        max_list_age: timedelta = DEFAULT_MAX_LIST_AGE,
        refresh_interval: timedelta = DEFAULT_REFRESH_INTERVAL,
        clock: Clock = utc_now,
    ) -> None:
        if max_list_age <= timedelta(0):
            raise ValueError("max_list_age must be positive")
        self.node = node
        self._authority = authority_key
        self._store = store
        self._source = source
        self._audit = audit
        self._hash_key = hash_key
        self._max_list_age = max_list_age
        self._refresh_interval = refresh_interval
        self._clock = clock
        self._pull_lock = threading.Lock()
        self._last_pull: datetime | None = None

    # revocation lists --------------------------------------------------------------------------

    def refresh(self, now: datetime | None = None) -> bool:
        """Pull the latest list from the source; True if a newer verified list was stored.

        Raises :class:`BadSignature` for a list not signed by the authority and
        :class:`ProtocolViolation` for one issued in the future (which would stay "fresh" too long).
        """
        now = now or self._clock()
        with self._pull_lock:
            self._last_pull = now
            pulled = self._source.fetch()
            if pulled is None:
                return False
            if pulled.authority != self._authority.fingerprint:
                raise BadSignature("revocation list names another authority")
            pulled.verify(self._authority)
            if pulled.issued_at - now > self._max_list_age:
                raise ProtocolViolation("revocation list issued in the future; check the clocks")
            return self._store.save_revocation_list(pulled)

    def _maybe_refresh(self, now: datetime) -> None:
        last = self._last_pull
        if last is not None and timedelta(0) <= now - last < self._refresh_interval:
            return
        try:
            self.refresh(now)
        except (OSError, BadSignature, MalformedData, ProtocolViolation) as exc:
            # Keep the list we have; the freshness bound decides whether it is still usable.
            log.warning("revocation list pull failed: %s", exc)

    # checks ------------------------------------------------------------------------------------

    def check(
        self,
        grant: Grant | str | bytes,
        *,
        enterprise: str,
        lender: str,
        purpose: Purpose | str,
        holder: str,
        now: datetime | None = None,
        fields: tuple[str, ...] | list[str] | None = None,
    ) -> ConsentDecision:
        """Decide whether ``holder`` may use ``enterprise``'s data for ``lender`` and ``purpose`` now,
        and count the use if so. ``grant`` may be the JSON a requester sent: anything that does not
        parse as a grant is refused as ``bad_signature``. The decision depends only on the grant and
        the request, never on whether this holder has data on the enterprise.

        Raises :class:`protocols.errors.InvalidUSCC` for a malformed ``enterprise``.
        """
        [decision] = self.check_many(
            [ConsentRequest(grant, enterprise, fields)], lender=lender, purpose=purpose, holder=holder, now=now
        )
        return decision

    def check_many(
        self,
        requests: Iterable[ConsentRequest | tuple],
        *,
        lender: str,
        purpose: Purpose | str,
        holder: str,
        now: datetime | None = None,
    ) -> list[ConsentDecision]:
        """:meth:`check` for a batch of ``(grant, enterprise[, fields])`` requests; decisions in input
        order, each the one :meth:`check` would give called one by one at ``now``.

        What makes a batch cheap: one revocation-list freshness check, each distinct grant verified
        once, one SQLite transaction counting every allowed use (same conditional upsert, so
        ``max_uses`` holds against concurrent requests) and one audit append (one fsync). Every
        enterprise is validated first: :class:`protocols.errors.InvalidUSCC` is raised before
        anything is counted or audited.
        """
        batch = [r if isinstance(r, ConsentRequest) else ConsentRequest(*r) for r in requests]
        enterprises = [validate_uscc(r.enterprise) for r in batch]
        if not batch:
            return []
        now = now or self._clock()
        self._maybe_refresh(now)
        revocations = self._store.revocation_list()
        parsed_by_text: dict[str | bytes, Grant | None] = {}
        verified: dict[tuple[str, str], Grant] = {}
        grants: list[Grant | None] = []
        reasons: list[RefusalReason | None] = []
        for request, enterprise in zip(batch, enterprises):
            parsed = self._parse_cached(request.grant, parsed_by_text)
            grants.append(parsed)
            if parsed is None or not self._verify_cached(parsed, verified):
                reasons.append(RefusalReason.BAD_SIGNATURE)
                continue
            reasons.append(refusal_reason(
                parsed,
                authority_key=_ALREADY_VERIFIED,  # type: ignore[arg-type]
                enterprise=enterprise,
                lender=lender,
                purpose=purpose,
                holder=holder,
                now=now,
                revocations=revocations,
                max_list_age=self._max_list_age,
                fields=request.fields,
            ))
        uses: list[int | None] = [None] * len(batch)
        counted = [i for i, reason in enumerate(reasons) if reason is None]
        counts = self._store.try_use_many(
            holder, [(grants[i].grant_id, grants[i].terms.max_uses) for i in counted]  # type: ignore[union-attr]
        )
        for i, count in zip(counted, counts):
            uses[i] = count
            if count is None:
                reasons[i] = RefusalReason.USES_EXHAUSTED
        decisions: list[ConsentDecision] = []
        records: list[UseRecord] = []
        for parsed, reason, count, enterprise in zip(grants, reasons, uses, enterprises):
            # Only a verified grant's id is worth recording; a forged one is attacker-chosen text.
            trusted = parsed is not None and reason is not RefusalReason.BAD_SIGNATURE
            decision = ConsentDecision(
                allowed=reason is None,
                reason=reason,
                grant_id=parsed.grant_id if trusted else None,
                uses=count,
                fields=parsed.terms.fields if reason is None and parsed is not None else None,
            )
            decisions.append(decision)
            records.append(
                UseRecord(
                    action="use",
                    node=self.node,
                    outcome="allowed" if decision.allowed else "refused",
                    at=now,
                    reason=None if reason is None else reason.value,
                    enterprise=keyed_hash(self._hash_key, enterprise),
                    lender=lender,
                    grant_id=decision.grant_id,
                    purpose=str(purpose),
                    holder=holder,
                    uses=count,
                )
            )
        self._record(records)
        return decisions

    @staticmethod
    def _parse_cached(grant: Grant | str | bytes, cache: dict[str | bytes, Grant | None]) -> Grant | None:
        if isinstance(grant, Grant):
            return grant
        if grant not in cache:
            cache[grant] = _parse_grant(grant)
        return cache[grant]

    def _verify_cached(self, grant: Grant, cache: dict[tuple[str, str], Grant]) -> bool:
        """Whether the authority signed ``grant``; a grant equal in every field to one verified
        earlier in the batch (same id and signature) is not verified again."""
        key = (grant.grant_id, grant.signature)
        if cache.get(key) == grant:
            return True
        try:
            grant.verify(self._authority)
        except (BadSignature, MalformedData):
            return False
        cache[key] = grant
        return True

    def _record(self, records: list[UseRecord]) -> None:
        # Fail closed: if the audit entries cannot be written, the exception stops the use.
        events = [r.model_dump(mode="json", exclude_none=True) for r in records]
        append_many = getattr(self._audit, "append_many", None)
        if append_many is not None:
            append_many(events)
            return
        for event in events:
            self._audit.append(event)

    def use_reports(self, node_key: IdentityKey, now: datetime | None = None) -> list[UseReport]:
        """Signed counts of every grant this node has served, for the authority's status view."""
        now = now or self._clock()
        return [
            UseReport(grant_id=grant_id, holder=holder, uses=uses, reported_at=now).signed_with(node_key)
            for (grant_id, holder), uses in self._store.all_uses().items()
        ]


def _parse_grant(grant: Grant | str | bytes) -> Grant | None:
    if isinstance(grant, Grant):
        return grant
    try:
        return Grant.model_validate_json(grant)
    except (ValidationError, ValueError, TypeError):
        return None
