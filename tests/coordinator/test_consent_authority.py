"""The consent authority: only the enrolled enterprise key, fresh and once, can grant, revoke or look;
grants verify at holders; revocations reach the published list; everything is audited."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from coordinator.consent_authority import ConsentAuthority, StateFiles
from crypto.audit import keyed_hash, verify
from crypto.errors import BadSignature
from crypto.identity import IdentityKey, IdentityPublicKey
from protocols.consent import (
    GrantRequest,
    GrantState,
    GrantTerms,
    RevocationRequest,
    StatusQuery,
    UseReport,
    load_pseudonym_key,
    refusal_reason,
)
from protocols.errors import ConfigError, ConsentError, NotAuthenticated, UnknownGrant
from protocols.uscc import make_uscc
from tests.consent_fixtures import ENTERPRISE, OTHER, T0, Clock, grant_terms


@pytest.fixture
def world(tmp_path: Path):
    clock = Clock(T0)
    authority = ConsentAuthority.open(tmp_path, clock=clock)
    key, other_key = IdentityKey.generate(), IdentityKey.generate()
    authority.enrol(ENTERPRISE, key.public_key)
    authority.enrol(OTHER, other_key.public_key)
    return authority, key, other_key, clock, tmp_path


def terms(enterprise: str = ENTERPRISE, **overrides: object) -> GrantTerms:
    return grant_terms(**{"enterprise": enterprise, "holders": ("tax",), "max_uses": 2, **overrides})


def events(path: Path) -> list[dict]:
    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


def test_grant_is_signed_by_the_authority_and_honoured(world) -> None:
    authority, key, _, clock, root = world
    grant = authority.grant(GrantRequest.create(terms(), key, now=clock.now))
    pub = IdentityPublicKey.load(StateFiles(root).public_key)
    assert grant.authority == pub.fingerprint
    lst = authority.revocation_list()
    lst.verify(pub)
    assert refusal_reason(
        grant, authority_key=pub, enterprise=ENTERPRISE, lender="bank-a", purpose="scoring", holder="tax",
        now=clock.now, revocations=lst,
    ) is None


def test_grant_ids_are_unique_and_unguessable(world) -> None:
    authority, key, _, clock, _ = world
    ids = {authority.grant(GrantRequest.create(terms(), key, now=clock.now)).grant_id for _ in range(20)}
    assert len(ids) == 20 and all(len(i) >= 32 for i in ids)


@pytest.mark.parametrize("attack", ["wrong_key", "not_enrolled", "stale", "future", "replay", "tampered"])
def test_unauthenticated_requests_are_refused_alike_and_audited(world, attack: str) -> None:
    authority, key, other_key, clock, root = world
    now = clock.now
    stranger = make_uscc("91110000100000000")
    request = {
        "wrong_key": lambda: GrantRequest.create(terms(), other_key, now=now),
        "not_enrolled": lambda: GrantRequest.create(terms(stranger), key, now=now),
        "stale": lambda: GrantRequest.create(terms(), key, now=now - timedelta(minutes=6)),
        "future": lambda: GrantRequest.create(terms(), key, now=now + timedelta(minutes=6)),
        "replay": lambda: GrantRequest.create(terms(), key, now=now),
        "tampered": lambda: GrantRequest.create(terms(), key, now=now).model_copy(
            update={"terms": terms(lender="bank-evil")}
        ),
    }[attack]()
    if attack == "replay":
        authority.grant(request)
    with pytest.raises(NotAuthenticated) as info:
        authority.grant(request)
    assert str(info.value) == str(NotAuthenticated())  # the same answer whatever went wrong
    last = events(StateFiles(root).audit_log)[-1]
    assert last["action"] == "request_refused" and last["outcome"] == "refused"
    assert ENTERPRISE not in StateFiles(root).audit_log.read_text()


def test_enrolment_binds_once(world) -> None:
    authority, _, _, clock, _ = world
    new_key = IdentityKey.generate()
    with pytest.raises(ConsentError):
        authority.enrol(ENTERPRISE, new_key.public_key)
    authority.enrol(ENTERPRISE, new_key.public_key, replace=True)
    authority.grant(GrantRequest.create(terms(), new_key, now=clock.now))


def test_revocation_enters_the_next_list_and_only_the_owner_can_revoke(world) -> None:
    authority, key, other_key, clock, root = world
    grant = authority.grant(GrantRequest.create(terms(), key, now=clock.now))
    before = authority.publish(StateFiles(root).revocations)
    with pytest.raises(UnknownGrant):  # another enterprise cannot revoke (or learn about) this grant
        authority.revoke(RevocationRequest.create(OTHER, grant.grant_id, other_key, now=clock.now))
    clock.now += timedelta(seconds=1)
    revocation = authority.revoke(RevocationRequest.create(ENTERPRISE, grant.grant_id, key, now=clock.now))
    after = authority.publish(StateFiles(root).revocations)
    assert grant.grant_id not in before.revoked_ids()
    assert after.sequence > before.sequence
    assert after.revoked_ids() == {grant.grant_id}
    assert revocation.revoked_at == clock.now
    # revoking again is harmless and keeps the original time
    again = authority.revoke(RevocationRequest.create(ENTERPRISE, grant.grant_id, key, now=clock.now + timedelta(seconds=5)))
    assert again.revoked_at == revocation.revoked_at


def test_expired_revocations_leave_the_list(world) -> None:
    authority, key, _, clock, _ = world
    grant = authority.grant(GrantRequest.create(terms(valid_until=T0 + timedelta(hours=1)), key, now=clock.now))
    authority.revoke(RevocationRequest.create(ENTERPRISE, grant.grant_id, key, now=clock.now))
    assert grant.grant_id in authority.revocation_list().revoked_ids()
    clock.now += timedelta(hours=2)
    assert grant.grant_id not in authority.revocation_list().revoked_ids()


def test_status_shows_states_and_reported_uses(world) -> None:
    authority, key, other_key, clock, _ = world
    holder_key = IdentityKey.generate()
    authority.register_holder("tax", holder_key.public_key)
    make = lambda **o: authority.grant(GrantRequest.create(terms(**o), key, now=clock.now))  # noqa: E731
    active, revoked, exhausted, short = make(), make(), make(), make(valid_until=T0 + timedelta(hours=1))
    authority.grant(GrantRequest.create(terms(OTHER), other_key, now=clock.now))
    authority.revoke(RevocationRequest.create(ENTERPRISE, revoked.grant_id, key, now=clock.now))
    for grant, uses in ((active, 1), (exhausted, 2)):
        authority.record_use_report(
            UseReport(grant_id=grant.grant_id, holder="tax", uses=uses, reported_at=clock.now).signed_with(holder_key)
        )
    # a stale (lower) report cannot lower a count; a forged one is refused
    authority.record_use_report(
        UseReport(grant_id=exhausted.grant_id, holder="tax", uses=0, reported_at=clock.now).signed_with(holder_key)
    )
    with pytest.raises(BadSignature):
        authority.record_use_report(
            UseReport(grant_id=active.grant_id, holder="tax", uses=9, reported_at=clock.now).signed_with(other_key)
        )
    clock.now += timedelta(hours=2)
    statuses = {s.grant.grant_id: s for s in authority.status(StatusQuery.create(ENTERPRISE, key, now=clock.now))}
    assert {g: s.state for g, s in statuses.items()} == {
        active.grant_id: GrantState.ACTIVE,
        revoked.grant_id: GrantState.REVOKED,
        exhausted.grant_id: GrantState.EXHAUSTED,
        short.grant_id: GrantState.EXPIRED,
    }
    assert statuses[active.grant_id].uses == 1 and statuses[exhausted.grant_id].uses == 2
    with pytest.raises(NotAuthenticated):  # another enterprise's key cannot look
        authority.status(StatusQuery.create(ENTERPRISE, other_key, now=clock.now))


def test_state_survives_restart(world) -> None:
    authority, key, _, clock, root = world
    grant = authority.grant(GrantRequest.create(terms(), key, now=clock.now))
    authority.revoke(RevocationRequest.create(ENTERPRISE, grant.grant_id, key, now=clock.now))
    seq = authority.revocation_list().sequence
    reopened = ConsentAuthority.open(root, clock=clock)
    assert reopened.public_key == authority.public_key
    lst = reopened.revocation_list()
    assert lst.sequence > seq and grant.grant_id in lst.revoked_ids()


@pytest.mark.parametrize("lost", ["key", "pseudonym_key"])
@pytest.mark.parametrize("create", [True, False])
def test_a_lost_authority_key_is_never_regenerated_beside_its_database(world, lost: str, create: bool) -> None:
    _, _, _, clock, root = world
    files = StateFiles(root)
    assert files.db.exists()
    getattr(files, lost).unlink()
    with pytest.raises(ConfigError, match="restore it from a backup") as info:
        ConsentAuthority.open(root, clock=clock, create=create)
    assert str(getattr(files, lost)) in str(info.value)
    assert not getattr(files, lost).exists()


def test_audit_log_verifies_and_holds_only_keyed_hashes(world) -> None:
    authority, key, _, clock, root = world
    grant = authority.grant(GrantRequest.create(terms(), key, now=clock.now))
    authority.revoke(RevocationRequest.create(ENTERPRISE, grant.grant_id, key, now=clock.now))
    files = StateFiles(root)
    assert verify(files.audit_log, authority.public_key) == len(events(files.audit_log))
    logged = events(files.audit_log)
    assert [e["action"] for e in logged] == ["enrol", "enrol", "grant", "revoke"]
    pseudonym = keyed_hash(load_pseudonym_key(files.pseudonym_key), ENTERPRISE)
    assert [e["enterprise"] for e in logged[2:]] == [pseudonym, pseudonym]
    assert ENTERPRISE not in files.audit_log.read_text() and OTHER not in files.audit_log.read_text()


def test_cli_lifecycle(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from coordinator.consent_cli import app
    from protocols.consent import Grant, SignedRevocationList

    runner = CliRunner()
    state, key = tmp_path / "state", tmp_path / "sme.key"

    def run(*args: str):
        result = runner.invoke(app, ["consent", *map(str, args), "--state-dir", str(state)])
        assert result.exit_code == 0, result.output
        return result.output

    run("enrol", ENTERPRISE, "--key-file", key)
    run("grant", ENTERPRISE, "--key-file", key, "--lender", "bank-a", "--purpose", "scoring",
        "--holder", "tax", "--holder", "utility", "--max-uses", "3", "--out", tmp_path / "g.json")
    grant = Grant.model_validate_json((tmp_path / "g.json").read_text())
    grant.verify(IdentityPublicKey.load(StateFiles(state).public_key))
    assert grant.terms.holders == ("tax", "utility") and grant.terms.max_uses == 3
    states = [json.loads(line) for line in run("status", ENTERPRISE, "--key-file", key, "--json").splitlines()]
    assert [(s["grant_id"], s["state"]) for s in states] == [(grant.grant_id, "active")]
    run("revoke", ENTERPRISE, grant.grant_id, "--key-file", key)
    states = [json.loads(line) for line in run("status", ENTERPRISE, "--key-file", key, "--json").splitlines()]
    assert [s["state"] for s in states] == ["revoked"]
    published = SignedRevocationList.model_validate_json(StateFiles(state).revocations.read_text())
    assert grant.grant_id in published.revoked_ids()
    listed = [Grant.model_validate_json(line) for line in run("list", ENTERPRISE, "--key-file", key, "--json").splitlines()]
    assert listed == [grant]
    assert ENTERPRISE not in StateFiles(state).audit_log.read_text()


def test_cli_grant_with_bad_terms_is_one_line_naming_the_field(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from coordinator.consent_cli import app

    runner = CliRunner()
    key, state = tmp_path / "sme.key", tmp_path / "state"
    where = ["--key-file", str(key), "--state-dir", str(state)]
    assert runner.invoke(app, ["consent", "enrol", ENTERPRISE, *where]).exit_code == 0
    result = runner.invoke(app, ["consent", "grant", ENTERPRISE, *where, "--lender", "bank-a", "--purpose", "scoring",
                                 "--from", "2025-01-01", "--until", "2024-01-01"])
    assert result.exit_code != 0 and isinstance(result.exception, ConfigError)
    message = str(result.exception)
    assert message == "grant terms rejected: <root>: valid_until must be after valid_from"
    assert "\n" not in message and "pydantic" not in message


def test_cli_grant_to_an_unwritable_out_records_nothing(capsys, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from coordinator.consent_cli import app
    from tests.test_cli import run_here

    runner = CliRunner()
    key, state = tmp_path / "sme.key", tmp_path / "state"
    where = ["--key-file", str(key), "--state-dir", str(state)]
    assert runner.invoke(app, ["consent", "enrol", ENTERPRISE, *where]).exit_code == 0
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("")
    for out, problem in ((tmp_path / "adir", "is a directory"),
                         (tmp_path / "nowhere" / "g.json", f"no such folder {tmp_path / 'nowhere'}"),
                         (tmp_path / "afile" / "g.json", f"no such folder {tmp_path / 'afile'}")):
        result = run_here(capsys, "consent", "grant", ENTERPRISE, *where, "--lender", "bank-a", "--purpose",
                          "scoring", "--out", str(out))
        assert result.returncode != 0
        assert result.stderr.strip() == f"error: --out {out}: {problem}"
        assert "Traceback" not in result.stdout + result.stderr
    status = runner.invoke(app, ["consent", "status", ENTERPRISE, *where, "--json"])
    assert status.exit_code == 0 and status.output.strip() == ""  # no grant was recorded
    assert '"grant"' not in StateFiles(state).audit_log.read_text()


@pytest.mark.parametrize("args, named", [
    (["revoke", ENTERPRISE, "g-1"], "revocation rejected: grant_id: "),
    (["status", "913501"], "status query rejected: enterprise: invalid USCC '913501'"),
    (["list", "913501"], "status query rejected: enterprise: invalid USCC '913501'"),
])
def test_cli_malformed_uscc_or_grant_id_is_one_line_naming_it(tmp_path: Path, capsys, args, named) -> None:
    from tests.test_cli import run_in_process

    key, state = tmp_path / "sme.key", tmp_path / "state"
    where = ["--key-file", str(key), "--state-dir", str(state)]
    assert run_in_process(capsys, "consent", "enrol", ENTERPRISE, *where)[0] == 0
    code, output = run_in_process(capsys, "consent", *args, *where)
    assert code != 0 and "Traceback" not in output
    assert output.strip().startswith(f"error: {named}") and len(output.strip().splitlines()) == 1
