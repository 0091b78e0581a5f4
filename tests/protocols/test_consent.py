"""Consent messages and the pure refusal rule: signatures cover every field, each rule has its reason."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from crypto.errors import BadSignature
from crypto.identity import IdentityKey
from protocols.consent import (
    ALL,
    ConsentDecision,
    Grant,
    GrantRequest,
    GrantState,
    GrantTerms,
    RefusalReason,
    RevocationRequest,
    Revocation,
    SignedRevocationList,
    grant_state,
    new_grant_id,
    refusal_reason,
)
from tests.consent_fixtures import AUTHORITY, ENTERPRISE, OTHER, T0, grant_terms, sign_grant


def terms(**overrides: object) -> GrantTerms:
    return grant_terms(**{"holders": ("tax", "utility"), "max_uses": 3, **overrides})


def signed_grant(key: IdentityKey = AUTHORITY, **overrides: object) -> Grant:
    return sign_grant(terms(**overrides), key)


def rev_list(*revoked: str, issued_at: datetime = T0, sequence: int = 1) -> SignedRevocationList:
    entries = tuple(Revocation(grant_id=g, revoked_at=issued_at, grant_valid_until=T0 + timedelta(days=30)) for g in revoked)
    return SignedRevocationList(
        authority=AUTHORITY.fingerprint, sequence=sequence, issued_at=issued_at,
        next_update=issued_at + timedelta(seconds=30), revoked=entries,
    ).signed_with(AUTHORITY)


def reason(grant: Grant, **overrides: object) -> RefusalReason | None:
    request: dict[str, object] = dict(
        authority_key=AUTHORITY.public_key, enterprise=ENTERPRISE, lender="bank-a", purpose="scoring",
        holder="tax", now=T0 + timedelta(days=1), revocations=rev_list(issued_at=T0 + timedelta(days=1)),
    )
    request.update(overrides)
    return refusal_reason(grant, **request)  # type: ignore[arg-type]


def test_terms_normalise_sets_and_times() -> None:
    a = terms(holders=("utility", "tax"), valid_from=T0.astimezone(timezone(timedelta(hours=8))))
    b = terms(holders=("tax", "utility"))
    assert a == b
    assert a.valid_from.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (dict(valid_until=T0), "valid_until must be after valid_from"),
        (dict(valid_until=T0 + timedelta(days=400)), "at most"),
        (dict(holders=()), "holders must name at least one"),
        (dict(holders=("tax", "tax")), "duplicate"),
        (dict(purpose="marketing"), "purpose"),
        (dict(max_uses=0), "max_uses"),
        (dict(enterprise="91350100M000100Y44"), "check digit"),
        (dict(valid_from=datetime(2025, 3, 1)), "timezone"),
        (dict(lender="bank a; drop"), "lender"),
    ],
)
def test_bad_terms_name_the_problem(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        terms(**overrides)
    assert fragment in str(info.value)


def test_grant_survives_json_round_trip_and_verifies() -> None:
    grant = signed_grant(holders=ALL, fields=("vat.invoices", "tax.grade"))
    again = Grant.model_validate_json(grant.model_dump_json())
    again.verify(AUTHORITY.public_key)
    assert again == grant


@pytest.mark.parametrize(
    "path, value",
    [
        (("terms", "lender"), "bank-b"),
        (("terms", "max_uses"), 1000),
        (("terms", "holders"), "all"),
        (("grant_id",), new_grant_id()),
    ],
    ids=["lender", "max_uses", "holders", "grant_id"],  # stable ids: the grant id value is random
)
def test_any_edited_field_breaks_the_signature(path: tuple[str, ...], value: object) -> None:
    data = signed_grant().model_dump(mode="json")
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    edited = Grant.model_validate(data)
    with pytest.raises(BadSignature):
        edited.verify(AUTHORITY.public_key)
    assert reason(edited) is RefusalReason.BAD_SIGNATURE


def test_extra_fields_are_refused_not_ignored() -> None:
    data = signed_grant().model_dump(mode="json")
    data["terms"]["note"] = "unlimited"
    with pytest.raises(ValidationError):
        Grant.model_validate(data)


def test_signature_is_bound_to_the_message_type() -> None:
    # A request signed by the enterprise is not a grant even if the fields were copied across.
    enterprise_key = IdentityKey.generate()
    request = GrantRequest.create(terms(), enterprise_key, now=T0)
    forged = Grant(
        grant_id=new_grant_id(), terms=request.terms, issued_at=T0, authority=AUTHORITY.fingerprint,
        signature=request.signature,
    )
    assert reason(forged) is RefusalReason.BAD_SIGNATURE
    request.verify(enterprise_key.public_key)


def test_grant_signed_by_another_key_is_refused() -> None:
    assert reason(signed_grant(key=IdentityKey.generate())) is RefusalReason.BAD_SIGNATURE


def test_valid_grant_passes() -> None:
    assert reason(signed_grant()) is None
    assert reason(signed_grant(holders=ALL), holder="any-holder") is None


@pytest.mark.parametrize(
    "request_overrides, expected",
    [
        (dict(enterprise=OTHER), RefusalReason.ENTERPRISE_MISMATCH),
        (dict(lender="bank-b"), RefusalReason.WRONG_LENDER),
        (dict(purpose="training"), RefusalReason.WRONG_PURPOSE),
        (dict(purpose="marketing"), RefusalReason.WRONG_PURPOSE),
        (dict(holder="ecommerce"), RefusalReason.HOLDER_NOT_COVERED),
        (dict(fields=("payroll",)), RefusalReason.FIELD_NOT_COVERED),
        (dict(now=T0 - timedelta(seconds=1)), RefusalReason.NOT_YET_VALID),
        (dict(now=T0 + timedelta(days=30)), RefusalReason.EXPIRED),
        (dict(revocations=None), RefusalReason.REVOCATION_LIST_STALE),
        (dict(revocations=rev_list(issued_at=T0 + timedelta(days=1) - timedelta(seconds=61))), RefusalReason.REVOCATION_LIST_STALE),
    ],
)
def test_each_rule_has_its_reason(request_overrides: dict[str, object], expected: RefusalReason) -> None:
    grant = signed_grant(fields=("tax.grade",))
    assert reason(grant, **request_overrides) is expected


def test_revoked_grant_is_refused_and_others_are_not() -> None:
    revoked, kept = signed_grant(), signed_grant()
    now = T0 + timedelta(days=1)
    listed = rev_list(revoked.grant_id, issued_at=now)
    assert reason(revoked, revocations=listed) is RefusalReason.REVOKED
    assert reason(kept, revocations=listed) is None


def test_freshness_bound_is_configurable() -> None:
    now = T0 + timedelta(days=1)
    old = rev_list(issued_at=now - timedelta(seconds=90))
    assert reason(signed_grant(), revocations=old) is RefusalReason.REVOCATION_LIST_STALE
    assert reason(signed_grant(), revocations=old, max_list_age=timedelta(seconds=120)) is None


def test_grant_state_lifecycle() -> None:
    grant = signed_grant()
    day = timedelta(days=1)
    assert grant_state(grant, now=T0 - day, revoked_at=None, uses=0) is GrantState.PENDING
    assert grant_state(grant, now=T0 + day, revoked_at=None, uses=2) is GrantState.ACTIVE
    assert grant_state(grant, now=T0 + day, revoked_at=None, uses=3) is GrantState.EXHAUSTED
    assert grant_state(grant, now=T0 + 40 * day, revoked_at=None, uses=0) is GrantState.EXPIRED
    assert grant_state(grant, now=T0 + 2 * day, revoked_at=T0 + day, uses=3) is GrantState.REVOKED


def test_decision_is_consistent_and_tells_requester_only_outcome() -> None:
    with pytest.raises(ValidationError):
        ConsentDecision(allowed=True, reason=RefusalReason.EXPIRED)
    with pytest.raises(ValidationError):
        ConsentDecision(allowed=False)
    refused = ConsentDecision(allowed=False, reason=RefusalReason.REVOKED, grant_id="x" * 22)
    assert refused.for_requester() == {"allowed": False, "reason": "revoked"}


def test_requests_carry_fresh_nonces() -> None:
    key = IdentityKey.generate()
    grant_id = new_grant_id()
    a = RevocationRequest.create(ENTERPRISE, grant_id, key, now=T0)
    b = RevocationRequest.create(ENTERPRISE, grant_id, key, now=T0)
    assert a.nonce != b.nonce
    a.verify(key.public_key)
    assert new_grant_id() != new_grant_id() and len(new_grant_id()) >= 32


def test_audit_keys_are_created_once_and_never_regenerated_once_the_node_has_state(tmp_path) -> None:
    from protocols.consent import audit_keys
    from protocols.errors import ConfigError

    key_path, pseudonym, db = tmp_path / "keys" / "node.key", tmp_path / "keys" / "pseudonym.key", tmp_path / "x.db"
    key, hash_key = audit_keys(key_path, pseudonym, state=(db,), owner="tax responder")
    again, hash_again = audit_keys(key_path, pseudonym, state=(db,), owner="tax responder")
    assert (again.fingerprint, hash_again) == (key.fingerprint, hash_key)

    db.write_bytes(b"")   # the node now has state: its keys are part of it
    for lost in (key_path, pseudonym):
        saved = lost.read_bytes()
        lost.unlink()
        with pytest.raises(ConfigError, match="tax responder's .* is missing beside its state"):
            audit_keys(key_path, pseudonym, state=(db,), owner="tax responder")
        assert not lost.exists()
        lost.write_bytes(saved)
        lost.chmod(0o600)   # restored from a backup, private again
    assert audit_keys(key_path, pseudonym, state=(db,), owner="tax responder")[1] == hash_key


def test_a_pseudonym_key_is_private_never_replaced_and_leaves_no_temporary_file(tmp_path) -> None:
    import stat

    from protocols.consent import create_pseudonym_key, load_pseudonym_key

    path = tmp_path / "pseudonym.key"
    key = create_pseudonym_key(path)
    assert load_pseudonym_key(path) == key and stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        create_pseudonym_key(path)
    assert load_pseudonym_key(path) == key and [p.name for p in tmp_path.iterdir()] == ["pseudonym.key"]
