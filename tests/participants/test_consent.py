"""Consent enforcement at a holder: every rule refuses with its reason, revocation reaches the holder
within the freshness bound, use counts hold under races, and every check leaves an audit entry."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from crypto.audit import AuditLog, keyed_hash, verify
from crypto.identity import IdentityKey
from participants.consent import ConsentGuard, FileRevocationSource
from participants.consent_store import HolderStore
from protocols.consent import (
    Grant,
    RefusalReason,
    SignedRevocationList,
    new_grant_id,
)
from protocols.uscc import make_uscc
from tests.consent_fixtures import AUTHORITY, ENTERPRISE, OTHER, T0, Clock, grant_terms, sign_grant

NODE = IdentityKey.generate()
HASH_KEY = b"k" * 32
ROOT = Path(__file__).resolve().parents[2]


def make_grant(**overrides: object) -> Grant:
    return sign_grant(grant_terms(**{"holders": ("tax", "utility"), **overrides}))


class ListPublisher:
    """Plays the authority's publication side: signs lists into the file the holder reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sequence = 0
        self.revoked: list[Grant] = []

    def publish(self, now: datetime, key: IdentityKey = AUTHORITY, sequence: int | None = None) -> None:
        from protocols.consent import Revocation

        self.sequence += 1
        signed = SignedRevocationList(
            authority=AUTHORITY.fingerprint, sequence=sequence or self.sequence, issued_at=now,
            next_update=now + timedelta(seconds=30),
            revoked=tuple(Revocation(grant_id=g.grant_id, revoked_at=now, grant_valid_until=g.terms.valid_until) for g in self.revoked),
        ).signed_with(key)
        self.path.write_text(signed.model_dump_json())


@pytest.fixture
def env(tmp_path: Path):
    clock = Clock(T0 + timedelta(days=1))
    publisher = ListPublisher(tmp_path / "revocations.json")
    publisher.publish(clock.now)
    audit = AuditLog(tmp_path / "audit.log", NODE)
    guard = ConsentGuard(
        node="tax", authority_key=AUTHORITY.public_key, store=HolderStore(tmp_path / "consent.db"),
        source=FileRevocationSource(publisher.path), audit=audit, hash_key=HASH_KEY,
        refresh_interval=timedelta(seconds=5), clock=clock,
    )
    guard.refresh()
    return guard, clock, publisher, tmp_path / "audit.log"


def check(guard: ConsentGuard, grant: Grant | str, **overrides: object):
    request: dict[str, object] = dict(enterprise=ENTERPRISE, lender="bank-a", purpose="scoring", holder="tax")
    request.update(overrides)
    return guard.check(grant, **request)  # type: ignore[arg-type]


def audit_events(path: Path) -> list[dict]:
    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


def test_valid_grant_is_honoured_and_counted(env) -> None:
    guard, *_ = env
    grant = make_grant()
    first, second = check(guard, grant), check(guard, grant)
    assert first.allowed and second.allowed
    assert (first.uses, second.uses) == (1, 2)
    assert check(guard, grant, holder="utility").uses == 1  # counted per holder


@pytest.mark.parametrize(
    "grant_overrides, request_overrides, expected",
    [
        (dict(valid_until=T0 + timedelta(hours=1)), {}, RefusalReason.EXPIRED),
        (dict(valid_from=T0 + timedelta(days=2)), {}, RefusalReason.NOT_YET_VALID),
        ({}, dict(lender="bank-b"), RefusalReason.WRONG_LENDER),
        ({}, dict(purpose="monitoring"), RefusalReason.WRONG_PURPOSE),
        ({}, dict(holder="ecommerce"), RefusalReason.HOLDER_NOT_COVERED),
        ({}, dict(enterprise=OTHER), RefusalReason.ENTERPRISE_MISMATCH),
    ],
)
def test_refusals_name_the_rule(env, grant_overrides, request_overrides, expected) -> None:
    guard, *_ = env
    decision = check(guard, make_grant(**grant_overrides), **request_overrides)
    assert not decision.allowed and decision.reason is expected


def test_tampered_or_garbage_grant_is_bad_signature(env) -> None:
    guard, *_ = env
    data = make_grant(max_uses=1).model_dump(mode="json")
    data["terms"]["max_uses"] = 10**6
    assert check(guard, json.dumps(data)).reason is RefusalReason.BAD_SIGNATURE
    assert check(guard, "not a grant").reason is RefusalReason.BAD_SIGNATURE
    forged = make_grant().model_copy(update={"signature": "AAAA"})
    assert check(guard, forged).reason is RefusalReason.BAD_SIGNATURE


def test_max_uses_then_exhausted(env) -> None:
    guard, *_ = env
    grant = make_grant(max_uses=2)
    outcomes = [check(guard, grant) for _ in range(4)]
    assert [d.allowed for d in outcomes] == [True, True, False, False]
    assert outcomes[-1].reason is RefusalReason.USES_EXHAUSTED


def test_revocation_takes_effect_at_next_check_after_pull(env) -> None:
    guard, clock, publisher, _ = env
    grant, other = make_grant(), make_grant()
    assert check(guard, grant).allowed
    publisher.revoked.append(grant)
    clock.advance(seconds=1)
    publisher.publish(clock.now)
    guard.refresh()
    assert check(guard, grant).reason is RefusalReason.REVOKED
    assert check(guard, other).allowed


def test_holder_that_misses_revocations_refuses_after_the_freshness_bound(env) -> None:
    guard, clock, publisher, _ = env
    grant = make_grant()
    publisher.path.unlink()  # the authority becomes unreachable; the holder keeps its last list
    clock.advance(seconds=59)
    assert check(guard, grant).allowed
    clock.advance(seconds=2)
    assert check(guard, grant).reason is RefusalReason.REVOCATION_LIST_STALE
    publisher.publish(clock.now)
    clock.advance(seconds=5)  # the guard pulls again on its own after refresh_interval
    assert check(guard, grant).allowed


def test_replayed_old_list_cannot_hide_a_revocation(env) -> None:
    guard, clock, publisher, _ = env
    grant = make_grant()
    old_list = publisher.path.read_text()
    publisher.revoked.append(grant)
    clock.advance(seconds=1)
    publisher.publish(clock.now)
    guard.refresh()
    publisher.path.write_text(old_list)  # attacker replays the list from before the revocation
    guard.refresh()
    assert check(guard, grant).reason is RefusalReason.REVOKED


def test_list_not_signed_by_the_authority_is_rejected(env) -> None:
    guard, clock, publisher, _ = env
    from crypto.errors import BadSignature

    clock.advance(seconds=1)
    publisher.publish(clock.now, key=IdentityKey.generate())
    with pytest.raises(BadSignature):
        guard.refresh()
    clock.advance(seconds=70)  # only the forged list is "fresh": the holder must still refuse
    assert check(guard, make_grant()).reason is RefusalReason.REVOCATION_LIST_STALE


def test_no_list_at_all_means_refusal(tmp_path: Path) -> None:
    guard = ConsentGuard(
        node="tax", authority_key=AUTHORITY.public_key, store=HolderStore(tmp_path / "c.db"),
        source=FileRevocationSource(tmp_path / "missing.json"), audit=AuditLog(tmp_path / "a.log", NODE),
        hash_key=HASH_KEY, clock=Clock(T0 + timedelta(days=1)),
    )
    assert check(guard, make_grant()).reason is RefusalReason.REVOCATION_LIST_STALE


def test_state_survives_restart(env, tmp_path: Path) -> None:
    guard, clock, publisher, _ = env
    grant = make_grant(max_uses=2)
    assert check(guard, grant).allowed
    reopened = ConsentGuard(
        node="tax", authority_key=AUTHORITY.public_key, store=HolderStore(tmp_path / "consent.db"),
        source=FileRevocationSource(tmp_path / "nowhere.json"), audit=AuditLog(tmp_path / "audit.log", NODE),
        hash_key=HASH_KEY, clock=clock,
    )
    assert check(reopened, grant).uses == 2  # counter and the last list both came back from disk
    assert check(reopened, grant).reason is RefusalReason.USES_EXHAUSTED


def test_every_check_is_audited_without_raw_uscc(env) -> None:
    guard, _, _, log_path = env
    grant = make_grant(max_uses=1)
    decisions = [
        check(guard, grant),
        check(guard, grant),
        check(guard, grant, lender="bank-b"),
        check(guard, "forged"),
        check(guard, make_grant(enterprise=OTHER), enterprise=OTHER, purpose="training"),
    ]
    assert verify(log_path, NODE.public_key) == len(decisions)
    events = audit_events(log_path)
    assert [e["outcome"] == "allowed" for e in events] == [d.allowed for d in decisions]
    assert [e.get("reason") for e in events] == [None if d.reason is None else d.reason.value for d in decisions]
    assert [e["lender"] for e in events] == ["bank-a", "bank-a", "bank-b", "bank-a", "bank-a"]
    assert [e.get("grant_id") for e in events[:3]] == [grant.grant_id] * 3
    assert "grant_id" not in events[3]  # an unverified grant's id is attacker-chosen: not recorded
    assert {e["enterprise"] for e in events[:4]} == {keyed_hash(HASH_KEY, ENTERPRISE)}
    assert events[4]["enterprise"] == keyed_hash(HASH_KEY, OTHER) != events[0]["enterprise"]
    text = log_path.read_text()
    assert ENTERPRISE not in text and OTHER not in text


def test_refusal_reveals_nothing_about_whether_the_holder_knows_the_enterprise(env) -> None:
    guard, *_ = env
    # The guard never consults the holder's data: two enterprises, same refusal, same wire message.
    a = check(guard, make_grant(), lender="bank-b")
    b = check(guard, make_grant(enterprise=OTHER), enterprise=OTHER, lender="bank-b")
    assert a.for_requester() == b.for_requester() == {"allowed": False, "reason": "wrong_lender"}


# concurrency ----------------------------------------------------------------------------------


def race(threads: int, attempt) -> Counter:
    """Start ``threads`` threads at once, each calling ``attempt()`` (a list of outcomes) 3 times."""
    results: list[bool] = []
    barrier = threading.Barrier(threads)

    def worker() -> None:
        barrier.wait()
        for _ in range(3):
            results.extend(attempt())

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return Counter(results)


def test_threads_racing_on_a_grant_get_exactly_max_uses(env) -> None:
    guard, *_ = env
    grant = make_grant(max_uses=5)
    assert race(16, lambda: [check(guard, grant).allowed]) == Counter({True: 5, False: 43})


_RACE = """
import sys
from participants.consent_store import HolderStore
path, grant_id, max_uses, attempts, batch, go = sys.argv[1:]
store = HolderStore(path)
while not __import__("os").path.exists(go):
    pass
if batch == "1":
    print(sum(store.try_use(grant_id, "tax", int(max_uses)) is not None for _ in range(int(attempts))))
else:  # the same attempts, counted in batches of ``batch`` uses per transaction
    got = [store.try_use_many("tax", [(grant_id, int(max_uses))] * int(batch)) for _ in range(int(attempts))]
    print(sum(u is not None for uses in got for u in uses))
"""


@pytest.mark.parametrize("batch", [1, 5])
def test_two_processes_racing_on_the_store_get_exactly_max_uses(tmp_path: Path, batch: int) -> None:
    path, go = tmp_path / "shared.db", tmp_path / "go"
    HolderStore(path)
    grant_id = new_grant_id()
    args = [sys.executable, "-c", _RACE, str(path), grant_id, "7", "25", str(batch), str(go)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(2)]
    go.touch()
    successes = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(successes) == 7
    assert HolderStore(path).uses(grant_id, "tax") == 7


def test_two_connections_interleaved_respect_the_bound(tmp_path: Path) -> None:
    a, b = HolderStore(tmp_path / "s.db"), HolderStore(tmp_path / "s.db")
    grant_id = new_grant_id()
    got = [s.try_use(grant_id, "tax", 3) for s in (a, b, a, b, a, b)]
    assert got == [1, 2, 3, None, None, None]


# batches --------------------------------------------------------------------------------------


def _guard(tmp_path: Path, name: str, clock: Clock, publisher: ListPublisher) -> tuple[ConsentGuard, Path]:
    audit_path = tmp_path / name / "audit.log"
    guard = ConsentGuard(
        node="tax", authority_key=AUTHORITY.public_key, store=HolderStore(tmp_path / name / "consent.db"),
        source=FileRevocationSource(publisher.path), audit=AuditLog(audit_path, NODE), hash_key=HASH_KEY,
        refresh_interval=timedelta(seconds=5), clock=clock,
    )
    guard.refresh()
    return guard, audit_path


def _mixed_batch(publisher: ListPublisher) -> list[tuple[object, str, tuple[str, ...] | None]]:
    """Every outcome at once: valid, expired, revoked, wrong lender, exhausted, forged, repeated."""
    codes = [make_uscc(f"9135010{i:010d}") for i in range(8)]
    valid = make_grant(enterprise=codes[0], max_uses=3)
    expired = make_grant(enterprise=codes[1], valid_until=T0 + timedelta(hours=1))
    revoked = make_grant(enterprise=codes[2])
    publisher.revoked.append(revoked)
    other_lender = make_grant(enterprise=codes[3], lender="bank-b")
    once = make_grant(enterprise=codes[4], max_uses=1)
    fields = make_grant(enterprise=codes[5], fields=("revenue",))
    tampered = make_grant(enterprise=codes[6]).model_dump(mode="json")
    tampered["terms"]["lender"] = "bank-b"
    return [
        (valid, codes[0], None), (expired, codes[1], None), (revoked, codes[2], None),
        (other_lender.model_dump_json(), codes[3], None), (once, codes[4], None), (once, codes[4], None),
        (fields, codes[5], ("revenue",)), (fields, codes[5], ("revenue", "vat")),
        (json.dumps(tampered), codes[6], None), ("not a grant", codes[7], None),
        (valid.model_dump_json(), codes[0], None), (valid, codes[0], None), (valid, codes[0], None),
        (valid, OTHER, None),
    ]


def test_check_many_decides_exactly_like_check_one_by_one(tmp_path: Path) -> None:
    clock = Clock(T0 + timedelta(days=1))
    publisher = ListPublisher(tmp_path / "revocations.json")
    batch = _mixed_batch(publisher)
    publisher.publish(clock.now)
    one, one_log = _guard(tmp_path, "one", clock, publisher)
    many, many_log = _guard(tmp_path, "many", clock, publisher)
    kw = dict(lender="bank-a", purpose="scoring", holder="tax")

    expected = [one.check(g, enterprise=e, fields=f, **kw) for g, e, f in batch]  # type: ignore[arg-type]
    got = many.check_many(batch, **kw)  # type: ignore[arg-type]

    assert got == expected
    reasons = [d.reason for d in got]
    for reason in (None, RefusalReason.EXPIRED, RefusalReason.REVOKED, RefusalReason.WRONG_LENDER,
                   RefusalReason.USES_EXHAUSTED, RefusalReason.FIELD_NOT_COVERED, RefusalReason.BAD_SIGNATURE,
                   RefusalReason.ENTERPRISE_MISMATCH):
        assert reason in reasons
    assert [d.uses for d in got if d.grant_id == batch[0][0].grant_id and d.allowed] == [1, 2, 3]  # type: ignore[union-attr]
    # the same audit trail, one entry per request, in order
    assert verify(many_log, NODE.public_key) == len(batch)
    assert audit_events(many_log) == audit_events(one_log)
    assert many.use_reports(NODE) and [(r.grant_id, r.uses) for r in many.use_reports(NODE)] == [
        (r.grant_id, r.uses) for r in one.use_reports(NODE)]


def test_check_many_pulls_the_list_once_and_writes_once(env, monkeypatch) -> None:
    guard, clock, publisher, log_path = env
    clock.advance(seconds=10)  # past the refresh interval
    fetched: list[int] = []
    fetch = guard._source.fetch
    monkeypatch.setattr(guard._source, "fetch", lambda: (fetched.append(1), fetch())[1])
    transactions: list[int] = []
    tx = guard._store._tx
    monkeypatch.setattr(guard._store, "_tx", lambda: (transactions.append(1), tx())[1])
    codes = [make_uscc(f"9144030{i:010d}") for i in range(20)]
    decisions = guard.check_many([(make_grant(enterprise=c), c) for c in codes], lender="bank-a",
                                 purpose="scoring", holder="tax")
    assert all(d.allowed and d.uses == 1 for d in decisions)
    assert len(fetched) == 1
    assert len(transactions) == 2  # the pulled list saved, then all 20 uses counted together
    assert verify(log_path, NODE.public_key) == 20


def test_check_many_refuses_a_malformed_uscc_before_counting_anything(env) -> None:
    from protocols.errors import InvalidUSCC

    guard, _, _, log_path = env
    grant = make_grant(max_uses=1)
    with pytest.raises(InvalidUSCC):
        guard.check_many([(grant, ENTERPRISE), (grant, "123")], lender="bank-a", purpose="scoring", holder="tax")
    assert guard._store.uses(grant.grant_id, "tax") == 0
    assert not log_path.exists() or log_path.read_text() == ""
    assert guard.check_many([], lender="bank-a", purpose="scoring", holder="tax") == []


def test_a_forged_copy_of_a_verified_grant_is_not_trusted_within_a_batch(env) -> None:
    guard, *_ = env
    grant = make_grant()
    forged = grant.model_copy(update={"terms": grant.terms.model_copy(update={"enterprise": OTHER})})
    first, second = guard.check_many([(grant, ENTERPRISE), (forged, OTHER)], lender="bank-a", purpose="scoring",
                                     holder="tax")
    assert first.allowed and second.reason is RefusalReason.BAD_SIGNATURE


def test_threads_racing_with_batches_get_exactly_max_uses(env) -> None:
    guard, *_ = env
    grant = make_grant(max_uses=5)

    def attempt() -> list[bool]:
        decisions = guard.check_many([(grant, ENTERPRISE)] * 2, lender="bank-a", purpose="scoring", holder="tax")
        return [d.allowed for d in decisions]

    assert race(8, attempt) == Counter({True: 5, False: 43})

