"""Audit log: every kind of tampering is caught at the right entry; appends are safe and durable."""

from __future__ import annotations

import json
import os
import threading

import pytest

from crypto.audit import AuditLog, keyed_hash, sign_head, verify
from crypto.errors import AuditLogBroken, BadSignature, MalformedData
from crypto.identity import IdentityKey

N = 8


@pytest.fixture(scope="module")
def node() -> IdentityKey:
    return IdentityKey.generate()


@pytest.fixture()
def log_path(tmp_path, node):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, node) as log:
        for i in range(N):
            log.append({"event": "score", "i": i, "who": keyed_hash(b"k" * 32, f"id-{i}")})
    return path


def lines(path):
    return path.read_bytes().splitlines(keepends=True)


def write(path, ls):
    path.write_bytes(b"".join(ls))


def broken(path, node, **kw) -> AuditLogBroken:
    with pytest.raises(AuditLogBroken) as info:
        verify(path, node.public_key, **kw)
    return info.value


def test_intact_log_verifies(log_path, node):
    assert verify(log_path, node.public_key) == N
    first = json.loads(lines(log_path)[0])
    assert first["seq"] == 0 and first["event"]["i"] == 0


def test_edited_entry_is_caught(log_path, node):
    ls = lines(log_path)
    entry = json.loads(ls[3])
    entry["event"]["i"] = 99
    ls[3] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    write(log_path, ls)
    err = broken(log_path, node)
    assert err.index == 3 and "edited" in err.reason


def test_removed_entry_is_caught(log_path, node):
    ls = lines(log_path)
    del ls[4]
    write(log_path, ls)
    err = broken(log_path, node)
    assert err.index == 4 and "removed" in err.reason


def test_reordered_entries_are_caught(log_path, node):
    ls = lines(log_path)
    ls[2], ls[5] = ls[5], ls[2]
    write(log_path, ls)
    err = broken(log_path, node)
    assert err.index == 2 and "reordered" in err.reason


def test_inserted_copy_is_caught(log_path, node):
    ls = lines(log_path)
    ls.insert(5, ls[1])
    write(log_path, ls)
    err = broken(log_path, node)
    assert err.index == 5 and "inserted" in err.reason


def test_inserted_forgery_is_caught(log_path, node, tmp_path):
    other = AuditLog(tmp_path / "other.jsonl", IdentityKey.generate())
    forged = json.loads(lines(log_path)[2])
    forged["event"] = {"event": "nothing happened"}
    ls = lines(log_path)
    ls.insert(2, json.dumps(forged, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    write(log_path, ls)
    err = broken(log_path, node)
    assert err.index == 2 and "signature" in err.reason
    other.append({"x": 1})
    ls = lines(log_path)
    ls[2] = lines(tmp_path / "other.jsonl")[0]  # a valid entry, but someone else's
    write(log_path, ls)
    assert broken(log_path, node).index == 2


def test_spliced_entry_from_another_log_of_the_same_node(log_path, node, tmp_path):
    second = tmp_path / "second.jsonl"
    with AuditLog(second, node) as log:
        for i in range(N):
            log.append({"event": "other", "i": i})
    ls = lines(log_path)
    ls[6] = lines(second)[6]
    write(log_path, ls)
    err = broken(log_path, node)
    assert err.index == 6 and "chain" in err.reason


def test_tail_truncation_needs_the_signed_head(log_path, node):
    with AuditLog(log_path, node) as log:
        head = log.head()
    write(log_path, lines(log_path)[:-2])
    assert verify(log_path, node.public_key) == N - 2  # undetectable without a head
    err = broken(log_path, node, head=head)
    assert err.index == N - 2 and "truncated" in err.reason
    forged_head = IdentityKey.generate().seal("audit.head/v1", {**head["payload"], "count": N - 2})
    with pytest.raises(BadSignature):
        verify(log_path, node.public_key, head=forged_head)


def test_sign_head_is_the_appenders_head_read_only(log_path, node, tmp_path):
    with AuditLog(log_path, node) as log:
        expected = log.head()["payload"]
    before = log_path.read_bytes()
    head = sign_head(log_path, node)
    assert node.public_key.open(head, "audit.head/v1") == expected and log_path.read_bytes() == before
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert node.public_key.open(sign_head(empty, node), "audit.head/v1")["count"] == 0
    with pytest.raises(FileNotFoundError):
        sign_head(tmp_path / "missing.jsonl", node)
    assert not (tmp_path / "missing.jsonl").exists()   # an appender would have created it


def test_sign_head_refuses_a_broken_log(log_path, node):
    ls = lines(log_path)
    write(log_path, [ls[1], ls[0], *ls[2:]])
    with pytest.raises(AuditLogBroken):
        sign_head(log_path, node)


def test_rewritten_log_fails_the_head(log_path, node, tmp_path):
    with AuditLog(log_path, node) as log:
        head = log.head()
    replacement = tmp_path / "replacement.jsonl"
    with AuditLog(replacement, node) as log:
        for i in range(N):
            log.append({"event": "innocent", "i": i})
    assert verify(replacement, node.public_key) == N
    err = broken(replacement, node, head=head)
    assert err.index == N - 1


def test_reopen_continues_the_chain(log_path, node):
    with AuditLog(log_path, node) as log:
        entry = log.append({"event": "later"})
    assert entry["seq"] == N
    assert verify(log_path, node.public_key) == N + 1


def test_concurrent_appends_from_threads_keep_the_chain(tmp_path, node):
    path = tmp_path / "threads.jsonl"
    log = AuditLog(path, node)

    def work(t: int) -> None:
        for i in range(10):
            log.append({"thread": t, "i": i})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert verify(path, node.public_key) == 40


def test_two_appenders_on_one_file_interleave_safely(tmp_path, node):
    path = tmp_path / "two.jsonl"
    a, b = AuditLog(path, node), AuditLog(path, node)
    for i in range(5):
        a.append({"from": "a", "i": i})
        b.append({"from": "b", "i": i})
    a.close(), b.close()
    assert verify(path, node.public_key) == 10


def test_file_is_private_and_events_must_be_json(tmp_path, node):
    path = tmp_path / "p.jsonl"
    with AuditLog(path, node) as log:
        with pytest.raises(MalformedData):
            log.append({"raw": b"bytes"})
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)


def test_keyed_hash_is_keyed_and_stable():
    k1, k2 = b"1" * 32, b"2" * 32
    assert keyed_hash(k1, "91350100M000100Y43") == keyed_hash(k1, b"91350100M000100Y43")
    assert keyed_hash(k1, "91350100M000100Y43") != keyed_hash(k2, "91350100M000100Y43")
    assert "91350100M000100Y43" not in keyed_hash(k1, "91350100M000100Y43")
    with pytest.raises(MalformedData):
        keyed_hash(b"short", "x")


def test_incomplete_last_line_is_reported(log_path, node):
    with open(log_path, "ab") as fh:
        fh.write(b'{"partial":')
    err = broken(log_path, node)
    assert err.index == N and "incomplete" in err.reason
    with pytest.raises(AuditLogBroken) as info:
        AuditLog(log_path, node)  # never extend a log whose tail is broken
    assert info.value.index == N


def test_log_of_another_identity_is_not_extended(log_path):
    with pytest.raises(AuditLogBroken):
        AuditLog(log_path, IdentityKey.generate())


# --- batches --------------------------------------------------------------------------------------


def test_append_many_continues_the_chain_and_verifies(log_path, node):
    with AuditLog(log_path, node) as log:
        entries = log.append_many([{"batch": i} for i in range(5)])
        after = log.append({"single": True})
    assert [e["seq"] for e in entries] == list(range(N, N + 5)) and after["seq"] == N + 5
    assert verify(log_path, node.public_key) == N + 6
    assert [json.loads(line)["event"] for line in lines(log_path)[N:N + 5]] == [{"batch": i} for i in range(5)]


def test_append_many_of_nothing_writes_nothing(log_path, node):
    before = log_path.read_bytes()
    with AuditLog(log_path, node) as log:
        assert log.append_many([]) == []
    assert log_path.read_bytes() == before


def test_append_many_refuses_a_bad_event_before_writing_any(log_path, node):
    before = log_path.read_bytes()
    with AuditLog(log_path, node) as log:
        with pytest.raises(MalformedData):
            log.append_many([{"ok": 1}, {"raw": b"bytes"}])
        with pytest.raises(MalformedData):
            log.append_many([{"ok": 1}, "not a dict"])  # type: ignore[list-item]
    assert log_path.read_bytes() == before


def test_append_many_fsyncs_once(log_path, node, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    with AuditLog(log_path, node) as log:
        log.append_many([{"i": i} for i in range(50)])
    assert len(calls) == 1


@pytest.mark.parametrize("tamper, reason", [
    (lambda ls: ls.__setitem__(N + 2, ls[N + 2].replace(b'"batch":2', b'"batch":7')), "edited"),
    (lambda ls: ls.pop(N + 1), "removed"),
    (lambda ls: ls.insert(N + 1, ls.pop(N + 2)), "reordered"),
])
def test_tampering_inside_a_batch_is_caught(log_path, node, tamper, reason):
    with AuditLog(log_path, node) as log:
        log.append_many([{"batch": i} for i in range(4)])
    ls = lines(log_path)
    tamper(ls)
    write(log_path, ls)
    err = broken(log_path, node)
    assert reason in err.reason and N <= err.index <= N + 2


def test_batches_from_two_appenders_interleave_safely(tmp_path, node):
    path = tmp_path / "two-batches.jsonl"
    a, b = AuditLog(path, node), AuditLog(path, node)
    for i in range(3):
        a.append_many([{"from": "a", "i": i, "j": j} for j in range(4)])
        b.append_many([{"from": "b", "i": i, "j": j} for j in range(4)])
    a.close(), b.close()
    assert verify(path, node.public_key) == 24
