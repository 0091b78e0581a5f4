"""The consent authority at the coordinator: authenticates enterprises, issues and revokes grants,
publishes signed revocation lists, and answers an enterprise's status queries.

Trust: an enterprise enrols one Ed25519 public key for its USCC (after the operator has verified it
out of band, e.g. against the business licence); from then on every grant, revocation and status
query must be signed by that key, carry a timestamp within ``request_max_age`` and a nonce never
seen before. Every failure gets the same :class:`NotAuthenticated` answer, so probing cannot reveal
which enterprises are enrolled. Every action and every refused request is audited.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from crypto.audit import AuditLog, keyed_hash
from crypto.errors import BadSignature, MalformedData
from crypto.identity import IdentityKey, IdentityPublicKey
from coordinator.consent_store import AuthorityStore
from protocols._sqlite import require_existing
from protocols.consent import (
    DEFAULT_REQUEST_MAX_AGE,
    AuditSink,
    Clock,
    Grant,
    GrantRequest,
    GrantStatus,
    Revocation,
    RevocationRequest,
    SignedRevocationList,
    StatusQuery,
    UseRecord,
    UseReport,
    audit_keys,
    grant_state,
    new_grant_id,
    utc_now,
)
from protocols.errors import ConsentError, NotAuthenticated, UnknownGrant
from protocols.uscc import validate_uscc

__all__ = ["ConsentAuthority", "StateFiles", "publish_revocation_list"]

DEFAULT_LIST_VALIDITY = timedelta(seconds=30)
"""``next_update`` of a published list: half the holders' default freshness bound, so one missed
publication does not make holders refuse."""

_SEQUENCE = "revocation_list"


@dataclass(frozen=True)
class StateFiles:
    """Where the authority keeps its state; ``revocations`` is what holders pull (or what a
    transport copies to them) and ``public_key`` is what they verify it with."""

    root: Path

    key = property(lambda self: self.root / "authority.key")
    public_key = property(lambda self: self.root / "authority.pub")
    pseudonym_key = property(lambda self: self.root / "pseudonym.key")
    db = property(lambda self: self.root / "consent.db")
    audit_log = property(lambda self: self.root / "audit.jsonl")
    revocations = property(lambda self: self.root / "revocations.json")


class ConsentAuthority:
    """Issues and revokes grants. Thread-safe; state lives in an :class:`AuthorityStore`."""

    def __init__(
        self,
        *,
        store: AuthorityStore,
        key: IdentityKey,
        audit: AuditSink,
        hash_key: bytes,
        node: str = "consent-authority",
        clock: Clock = utc_now,
        request_max_age: timedelta = DEFAULT_REQUEST_MAX_AGE,
        list_validity: timedelta = DEFAULT_LIST_VALIDITY,
    ) -> None:
        self._store = store
        self._key = key
        self._audit = audit
        self._hash_key = hash_key
        self.node = node
        self._clock = clock
        self._request_max_age = request_max_age
        self._list_validity = list_validity

    @classmethod
    def open(cls, state_dir: str | Path, *, clock: Clock = utc_now, create: bool = True) -> "ConsentAuthority":
        """The authority kept in ``state_dir`` (see :class:`StateFiles`), created on first use unless
        ``create=False``: then a missing folder or database is a :class:`ConfigError` naming the folder."""
        files = StateFiles(Path(state_dir))
        if not create:
            require_existing(files.root, files.db, "consent authority database", "fedscore consent enrol")
        files.root.mkdir(parents=True, exist_ok=True)
        key, hash_key = audit_keys(files.key, files.pseudonym_key, state=(files.db, files.audit_log),
                                   owner="consent authority")
        if not files.public_key.exists():
            key.public_key.save(files.public_key)
        return cls(
            store=AuthorityStore(files.db), key=key, audit=AuditLog(files.audit_log, key),
            hash_key=hash_key, clock=clock,
        )

    @property
    def public_key(self) -> IdentityPublicKey:
        return self._key.public_key

    # audit -------------------------------------------------------------------------------------

    def _record(self, action: str, outcome: str, now: datetime, *, enterprise: str | None = None, **fields: Any) -> None:
        record = UseRecord(
            action=action,  # type: ignore[arg-type]
            node=self.node,
            outcome=outcome,  # type: ignore[arg-type]
            at=now,
            enterprise=None if enterprise is None else keyed_hash(self._hash_key, enterprise),
            **fields,
        )
        self._audit.append(record.model_dump(mode="json", exclude_none=True))

    def _authenticate(self, request: GrantRequest | RevocationRequest | StatusQuery, action: str, now: datetime) -> None:
        """Signature by the enrolled key, fresh timestamp, unseen nonce; else audit and refuse."""
        enterprise = request.enterprise
        raw_key = self._store.enterprise_key(enterprise)
        failure: str | None = None
        if raw_key is None:
            failure = "not_enrolled"
        elif abs(now - request.issued_at) > self._request_max_age:
            failure = "stale_request"
        else:
            try:
                request.verify(IdentityPublicKey.from_bytes(raw_key))
            except (BadSignature, MalformedData):
                failure = "bad_signature"
        # The nonce is consumed only for authentic requests: a forger cannot burn a real one.
        if failure is None and not self._store.consume_nonce(
            enterprise, request.nonce, expires_at=request.issued_at + self._request_max_age, now=now
        ):
            failure = "replayed_request"
        if failure is not None:
            self._record("request_refused", "refused", now, enterprise=enterprise, reason=f"{action}:{failure}")
            raise NotAuthenticated()

    # enrolment ---------------------------------------------------------------------------------

    def enrol(self, enterprise: str, public_key: IdentityPublicKey, *, replace: bool = False) -> None:
        """Bind an enterprise's public key to its USCC. An operator action, done once the enterprise's
        identity was checked out of band; ``replace`` rotates a lost or compromised key."""
        enterprise = validate_uscc(enterprise)
        now = self._clock()
        if not self._store.enrol(enterprise, public_key.to_bytes(), now, replace=replace):
            self._record("enrol", "refused", now, enterprise=enterprise, reason="already_enrolled")
            raise ConsentError("enterprise already enrolled; rotating its key needs replace=True (--replace)")
        self._record("enrol", "allowed", now, enterprise=enterprise)

    # grants ------------------------------------------------------------------------------------

    def grant(self, request: GrantRequest) -> Grant:
        """Issue a grant for an authenticated request; the grant id is fresh and unguessable."""
        now = self._clock()
        self._authenticate(request, "grant", now)
        terms = request.terms
        if terms.valid_until <= now:
            self._record("grant", "refused", now, enterprise=terms.enterprise, reason="already_expired")
            raise ConsentError("the requested grant would already be expired (valid_until is in the past)")
        grant = Grant(
            grant_id=new_grant_id(), terms=terms, issued_at=now, authority=self._key.fingerprint
        ).signed_with(self._key)
        self._store.add_grant(grant)
        self._record(
            "grant", "allowed", now,
            enterprise=terms.enterprise, lender=terms.lender, grant_id=grant.grant_id, purpose=terms.purpose.value,
        )
        return grant

    def revoke(self, request: RevocationRequest) -> Revocation:
        """Revoke a grant at once: it leaves the authority's active set now and enters the next
        published revocation list. Revoking twice is harmless and keeps the first time."""
        now = self._clock()
        self._authenticate(request, "revoke", now)
        stored = self._store.grant(request.grant_id)
        if stored is None or stored[0].terms.enterprise != request.enterprise:
            self._record("revoke", "refused", now, enterprise=request.enterprise, reason="unknown_grant")
            raise UnknownGrant("no such grant for this enterprise")
        grant = stored[0]
        revoked_at = self._store.revoke(grant.grant_id, now)
        assert revoked_at is not None  # the row exists: we just read it
        self._record(
            "revoke", "allowed", now,
            enterprise=request.enterprise, lender=grant.terms.lender, grant_id=grant.grant_id,
            purpose=grant.terms.purpose.value,
        )
        return Revocation(grant_id=grant.grant_id, revoked_at=revoked_at, grant_valid_until=grant.terms.valid_until)

    def status(self, query: StatusQuery) -> list[GrantStatus]:
        """Every grant of the querying enterprise with its state now and the use counts last reported."""
        now = self._clock()
        self._authenticate(query, "status", now)
        self._record("status", "allowed", now, enterprise=query.enterprise)
        result = []
        for grant, revoked_at in self._store.grants_of(query.enterprise):
            uses = self._store.uses_by_holder(grant.grant_id)
            state = grant_state(grant, now=now, revoked_at=revoked_at, uses=max(uses.values(), default=0))
            result.append(GrantStatus(grant=grant, state=state, revoked_at=revoked_at, uses_by_holder=uses))
        return result

    # revocation lists --------------------------------------------------------------------------

    def revocation_list(self) -> SignedRevocationList:
        """A freshly signed list of every revoked, unexpired grant, with the next sequence number."""
        now = self._clock()
        return SignedRevocationList(
            authority=self._key.fingerprint,
            sequence=self._store.next_sequence(_SEQUENCE),
            issued_at=now,
            next_update=now + self._list_validity,
            revoked=tuple(self._store.revocations(now)),
        ).signed_with(self._key)

    def publish(self, path: str | Path) -> SignedRevocationList:
        """Sign a new list and write it to ``path`` (what :class:`FileRevocationSource` reads)."""
        revocations = self.revocation_list()
        publish_revocation_list(revocations, path)
        return revocations

    # use reports -------------------------------------------------------------------------------

    def register_holder(self, holder: str, public_key: IdentityPublicKey) -> None:
        self._store.register_holder(holder, public_key.to_bytes())

    def record_use_report(self, report: UseReport) -> None:
        """Accept a holder's signed use count (verified against the holder's registered key)."""
        raw_key = self._store.holder_key(report.holder)
        if raw_key is None:
            raise ConsentError(f"holder {report.holder!r} is not registered with the consent authority")
        report.verify(IdentityPublicKey.from_bytes(raw_key))
        if self._store.grant(report.grant_id) is None:
            raise UnknownGrant("use report for a grant this authority never issued")
        self._store.record_uses(report.grant_id, report.holder, report.uses, report.reported_at)


def publish_revocation_list(revocations: SignedRevocationList, path: str | Path) -> None:
    """Write atomically: a holder reading concurrently sees the old list or the new one, never half."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(revocations.model_dump_json(indent=1))
    os.replace(tmp, target)
