"""Enterprise authorisation (consent): the messages and the pure decision rule.

An SME authorises each use of its data separately: one recipient (lender), one purpose, named data
holders, a time window and optionally a number of uses (PIPL: purpose limitation, separate consent
per recipient, easy withdrawal). The consent authority at the coordinator signs grants after
authenticating the enterprise; every data holder checks a grant itself before touching the data,
against a signed revocation list it pulls regularly.

Everything that is signed is a frozen pydantic model with an inline ``signature`` field. The signed
bytes are the canonical JSON of every other field under a per-type domain (see
:mod:`crypto.identity`), so a grant signature can never be replayed as a revocation list and any
edited field (or added one: ``extra="forbid"``) breaks it.

Counting uses: a *use* is one request served under a grant. Each holder counts the requests it
serves and refuses beyond ``max_uses``, so no holder contributes more than ``max_uses`` times; a
global count would need the holders to coordinate online on the scoring hot path.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Literal, Protocol, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from crypto._files import write_secret
from crypto.errors import BadSignature, MalformedData
from crypto.identity import IdentityKey, IdentityPublicKey
from protocols.errors import ConfigError
from protocols.uscc import USCC

Clock = Callable[[], datetime]
"""Returns the current time as an aware datetime; injectable so tests can move time."""

MAX_GRANT_DURATION = timedelta(days=366)
"""Consent is never open-ended: a grant lasts at most a year and must then be renewed."""

DEFAULT_MAX_LIST_AGE = timedelta(seconds=60)
"""Freshness bound: a holder refuses every grant while its latest revocation list is older than
this, so a revocation it has not heard of can be ignored for at most this long."""

DEFAULT_REQUEST_MAX_AGE = timedelta(minutes=5)
"""An enterprise request older (or further in the future) than this is refused as a possible replay."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _to_utc(value: datetime) -> datetime:
    # One spelling per instant, so the canonical (signed) encoding survives a JSON round trip.
    return value.astimezone(timezone.utc)


UTCDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
NodeName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
"""A lender or data-holder name as configured in the consortium (letters, digits, ``_ . -``)."""
FieldName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
Nonce = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{16,128}$")]
GrantId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{22,128}$")]
ALL: Literal["all"] = "all"


PSEUDONYM_KEY_BYTES = 32
_PSEUDONYM_HEADER = "fedscore-pseudonym-key-v1"


def create_pseudonym_key(path: str | os.PathLike[str]) -> bytes:
    """Create the secret key a node hashes enterprise ids with in its audit log (0600, never
    overwritten: replacing it would make every earlier entry unsearchable)."""
    key = secrets.token_bytes(PSEUDONYM_KEY_BYTES)
    write_secret(path, f"{_PSEUDONYM_HEADER}\n{key.hex()}\n".encode(), exclusive=True)
    return key


def load_pseudonym_key(path: str | os.PathLike[str]) -> bytes:
    """Read a key written by :func:`create_pseudonym_key`; a malformed file is a ConfigError."""
    try:
        header, value = Path(path).read_text().split()
        key = bytes.fromhex(value)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable pseudonym key file ({exc.__class__.__name__})") from None
    if header != _PSEUDONYM_HEADER or len(key) != PSEUDONYM_KEY_BYTES:
        raise ConfigError(f"{path}: not a fedscore pseudonym key file")
    return key


def audit_keys(key_path: Path, pseudonym_path: Path, *, state: Sequence[Path], owner: str) -> tuple[IdentityKey, bytes]:
    """A node's audit identity key and pseudonym key: created together on first use, loaded after.

    Once the node has ``state`` (its database, its audit log), a missing key is a ConfigError, never
    regenerated: a new identity would not match what peers pin and what signed the log, a new
    pseudonym key would unlink every enterprise hash already in the log."""
    existing = [p for p in state if p.exists()]
    if existing:
        for path, what in ((key_path, "identity key"), (pseudonym_path, "pseudonym key")):
            if not path.is_file():
                raise ConfigError(f"{path}: the {owner}'s {what} is missing beside its state {existing[0]}; restore "
                                  "it from a backup (a new one would not match what peers and the audit log already use)")
    if not key_path.exists():
        key_path.parent.mkdir(parents=True, exist_ok=True)
        IdentityKey.generate().save(key_path)
    key = IdentityKey.load(key_path)
    hash_key = load_pseudonym_key(pseudonym_path) if pseudonym_path.exists() else create_pseudonym_key(pseudonym_path)
    return key, hash_key


def new_grant_id() -> str:
    """An unguessable grant id (192 random bits): knowing one grant tells nothing about another."""
    return secrets.token_urlsafe(24)


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


class Purpose(StrEnum):
    SCORING = "scoring"
    MONITORING = "monitoring"
    TRAINING = "training"


class RefusalReason(StrEnum):
    """Why a holder refused a use. Sent back to the requester as is: it depends only on the grant and
    the request, never on whether the holder knows the enterprise."""

    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    REVOKED = "revoked"
    WRONG_LENDER = "wrong_lender"
    WRONG_PURPOSE = "wrong_purpose"
    HOLDER_NOT_COVERED = "holder_not_covered"
    FIELD_NOT_COVERED = "field_not_covered"
    USES_EXHAUSTED = "uses_exhausted"
    BAD_SIGNATURE = "bad_signature"
    REVOCATION_LIST_STALE = "revocation_list_stale"
    ENTERPRISE_MISMATCH = "enterprise_mismatch"


class GrantState(StrEnum):
    PENDING = "pending"  # valid_from still in the future
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"
    EXHAUSTED = "exhausted"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GrantTerms(_Frozen):
    """What the enterprise authorises: one lender, one purpose, which holders and fields, for how long."""

    enterprise: USCC
    lender: NodeName
    purpose: Purpose
    holders: tuple[NodeName, ...] | Literal["all"]
    fields: tuple[FieldName, ...] | Literal["all"] = ALL
    valid_from: UTCDatetime
    valid_until: UTCDatetime
    max_uses: PositiveInt | None = None

    @field_validator("holders", "fields")
    @classmethod
    def _sorted_unique(cls, values: tuple[str, ...] | str, info: ValidationInfo) -> tuple[str, ...] | str:
        # One spelling per set, so equal terms sign identically.
        if isinstance(values, str):
            return values
        if not values:
            raise ValueError(f"{info.field_name} must name at least one entry, or be 'all'")
        if len(set(values)) != len(values):
            raise ValueError(f"{info.field_name} lists a duplicate entry")
        return tuple(sorted(values))

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        if self.valid_until - self.valid_from > MAX_GRANT_DURATION:
            raise ValueError(f"a grant may last at most {MAX_GRANT_DURATION.days} days")
        return self

    def covers_holder(self, holder: str) -> bool:
        return self.holders == ALL or holder in self.holders

    def covers_fields(self, fields: tuple[str, ...] | list[str]) -> bool:
        return self.fields == ALL or set(fields) <= set(self.fields)


class _Signed(_Frozen):
    """A message signed as a whole: every field but ``signature`` goes into the signed bytes."""

    DOMAIN: ClassVar[str]
    signature: str = ""

    def signed_payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"signature"})

    def signed_with(self, key: IdentityKey) -> Self:
        sig = key.sign(self.DOMAIN, self.signed_payload())
        return self.model_copy(update={"signature": base64.b64encode(sig).decode()})

    def verify(self, public_key: IdentityPublicKey) -> None:
        """Return silently if signed by ``public_key``; else :class:`crypto.errors.BadSignature`."""
        try:
            raw = base64.b64decode(self.signature, validate=True)
        except (binascii.Error, ValueError):
            raise BadSignature(f"{type(self).__name__}: signature is not base64") from None
        public_key.verify(self.DOMAIN, self.signed_payload(), raw)


class _EnterpriseRequest(_Signed):
    """Signed by the enterprise's enrolled key; fresh timestamp and single-use nonce against replay."""

    issued_at: UTCDatetime
    nonce: Nonce


class GrantRequest(_EnterpriseRequest):
    DOMAIN: ClassVar[str] = "consent.grant-request/v1"
    terms: GrantTerms

    @classmethod
    def create(cls, terms: GrantTerms, key: IdentityKey, *, now: datetime | None = None) -> Self:
        return cls(terms=terms, issued_at=now or utc_now(), nonce=new_nonce()).signed_with(key)

    @property
    def enterprise(self) -> str:
        return self.terms.enterprise


class RevocationRequest(_EnterpriseRequest):
    DOMAIN: ClassVar[str] = "consent.revoke-request/v1"
    enterprise: USCC
    grant_id: GrantId

    @classmethod
    def create(cls, enterprise: str, grant_id: str, key: IdentityKey, *, now: datetime | None = None) -> Self:
        return cls(
            enterprise=enterprise, grant_id=grant_id, issued_at=now or utc_now(), nonce=new_nonce()
        ).signed_with(key)


class StatusQuery(_EnterpriseRequest):
    """Only the enterprise may see which lenders it authorised: status queries are signed too."""

    DOMAIN: ClassVar[str] = "consent.status-query/v1"
    enterprise: USCC

    @classmethod
    def create(cls, enterprise: str, key: IdentityKey, *, now: datetime | None = None) -> Self:
        return cls(enterprise=enterprise, issued_at=now or utc_now(), nonce=new_nonce()).signed_with(key)


class Grant(_Signed):
    """An authorisation signed by the consent authority; the lender presents it with each request."""

    DOMAIN: ClassVar[str] = "consent.grant/v1"
    grant_id: GrantId
    terms: GrantTerms
    issued_at: UTCDatetime
    authority: str = Field(pattern=r"^[0-9a-f]{64}$", description="fingerprint of the signing authority")


class Revocation(_Frozen):
    grant_id: GrantId
    revoked_at: UTCDatetime
    grant_valid_until: UTCDatetime  # after this the entry can leave the list: expiry refuses anyway


class SignedRevocationList(_Signed):
    """Every revoked, not yet expired grant; re-issued with a higher sequence at least every
    ``next_update - issued_at``. Holders keep only lists with a higher sequence (no rollback)."""

    DOMAIN: ClassVar[str] = "consent.revocation-list/v1"
    authority: str = Field(pattern=r"^[0-9a-f]{64}$")
    sequence: PositiveInt
    issued_at: UTCDatetime
    next_update: UTCDatetime
    revoked: tuple[Revocation, ...] = ()

    def revoked_ids(self) -> frozenset[str]:
        return frozenset(r.grant_id for r in self.revoked)

    def age(self, now: datetime) -> timedelta:
        return now - self.issued_at


class RevocationSource(Protocol):
    """Where a holder pulls the latest signed revocation list from (a file now, gRPC later).

    Implementations only transport bytes: the holder verifies the signature and the sequence, so a
    source needs no trust. Return ``None`` when nothing has been published yet."""

    def fetch(self) -> SignedRevocationList | None: ...


class AuditSink(Protocol):
    """What consent code needs of a node's audit log (:class:`crypto.audit` provides it): append one
    JSON-able entry to the signed hash chain."""

    def append(self, entry: Mapping[str, Any]) -> Any: ...


class UseReport(_Signed):
    """A holder's signed count of the uses it served under a grant, reported to the authority."""

    DOMAIN: ClassVar[str] = "consent.use-report/v1"
    grant_id: GrantId
    holder: NodeName
    uses: int = Field(ge=0)
    reported_at: UTCDatetime


class ConsentDecision(_Frozen):
    """The outcome of one check at a holder. ``uses`` is the count after this use (when allowed)."""

    allowed: bool
    reason: RefusalReason | None = None
    grant_id: str | None = None
    uses: int | None = None
    fields: tuple[str, ...] | Literal["all"] | None = None  # what the holder may release when allowed

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.allowed == (self.reason is not None):
            raise ValueError("an allowed decision has no reason; a refusal must have one")
        return self

    def for_requester(self) -> dict[str, Any]:
        """What goes back over the wire: the outcome and reason, nothing about the enterprise."""
        return {"allowed": self.allowed, "reason": None if self.reason is None else self.reason.value}


Decision = ConsentDecision


class UseRecord(_Frozen):
    """One audit entry at a holder or at the authority. ``enterprise`` is a keyed hash, never a USCC."""

    action: Literal["use", "grant", "revoke", "enrol", "status", "request_refused"]
    node: str
    outcome: Literal["allowed", "refused"]
    at: UTCDatetime
    reason: str | None = None
    enterprise: str | None = Field(default=None, pattern=r"^[0-9a-f]{16,128}$")
    lender: str | None = None
    grant_id: str | None = None
    purpose: str | None = None
    holder: str | None = None
    uses: int | None = None


class GrantStatus(_Frozen):
    """A grant as the enterprise sees it: its state now and the use counts holders last reported."""

    grant: Grant
    state: GrantState
    revoked_at: UTCDatetime | None = None
    uses_by_holder: dict[str, int] = {}

    @property
    def uses(self) -> int:
        """Requests served under the grant as seen by the busiest holder (see module docstring)."""
        return max(self.uses_by_holder.values(), default=0)


def grant_state(grant: Grant, *, now: datetime, revoked_at: datetime | None, uses: int) -> GrantState:
    """The lifecycle state of a grant at ``now`` (revocation wins over every other state)."""
    terms = grant.terms
    if revoked_at is not None and revoked_at <= now:
        return GrantState.REVOKED
    if now >= terms.valid_until:
        return GrantState.EXPIRED
    if terms.max_uses is not None and uses >= terms.max_uses:
        return GrantState.EXHAUSTED
    if now < terms.valid_from:
        return GrantState.PENDING
    return GrantState.ACTIVE


def refusal_reason(
    grant: Grant,
    *,
    authority_key: IdentityPublicKey,
    enterprise: str,
    lender: str,
    purpose: Purpose | str,
    holder: str,
    now: datetime,
    revocations: SignedRevocationList | None,
    max_list_age: timedelta = DEFAULT_MAX_LIST_AGE,
    fields: tuple[str, ...] | list[str] | None = None,
) -> RefusalReason | None:
    """Every stateless check a holder makes before a use, in order; ``None`` means go ahead
    (the use count is the one stateful check left to the caller).

    ``revocations`` must already be verified as signed by ``authority_key``. The signature comes
    first: nothing in an unsigned grant is trusted, not even its reason to be refused.
    """
    try:
        grant.verify(authority_key)
    except (BadSignature, MalformedData):
        return RefusalReason.BAD_SIGNATURE
    terms = grant.terms
    if terms.enterprise != enterprise:
        return RefusalReason.ENTERPRISE_MISMATCH
    if terms.lender != lender:
        return RefusalReason.WRONG_LENDER
    if terms.purpose.value != str(purpose):
        return RefusalReason.WRONG_PURPOSE
    if not terms.covers_holder(holder):
        return RefusalReason.HOLDER_NOT_COVERED
    if fields is not None and not terms.covers_fields(fields):
        return RefusalReason.FIELD_NOT_COVERED
    if now < terms.valid_from:
        return RefusalReason.NOT_YET_VALID
    if now >= terms.valid_until:
        return RefusalReason.EXPIRED
    if revocations is None or revocations.age(now) > max_list_age:
        return RefusalReason.REVOCATION_LIST_STALE
    if grant.grant_id in revocations.revoked_ids():
        return RefusalReason.REVOKED
    return None
