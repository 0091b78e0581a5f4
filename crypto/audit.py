"""Append-only, hash-chained, signed audit log (JSON lines).

Every use of a node's data (PSI run, training round, scoring request, consent decision) is appended
here so the enterprise and auditors can check it afterwards. Recipes::

    log = AuditLog("audit.jsonl", identity)
    log.append({"event": "score", "lender": "L1", "enterprise": keyed_hash(k, uscc)})
    head = log.head()                      # signed {count, last_hash}; publish it elsewhere
    verify("audit.jsonl", identity.public_key, head=head)   # -> entry count, or AuditLogBroken

Entry format (one canonical JSON object per line)::

    {"event": {...}, "prev": <hex sha256 of previous line>, "seq": n, "signer": <fingerprint>,
     "sig": <base64 Ed25519 over the other fields>, "ts": "<UTC ISO-8601>"}

Entry 0 links to a genesis hash derived from the signer's fingerprint. :func:`verify` reports the
first broken entry in :class:`AuditLogBroken` (``index`` is the 0-based line, ``reason`` says what):

* edited entry → its signature fails ("signature does not verify: entry edited or forged");
* removed entry → a sequence gap at the position of the removed one ("entry removed");
* reordered entries → a sequence number that appears later ("entries reordered");
* inserted copy of a valid entry → a repeated sequence number ("entry inserted"); a forged new
  entry fails its signature;
* a line from another log of the same node → "chain link broken".

Tail truncation: dropping the last *k* entries leaves a valid, shorter log, and so does replacing
the whole file by an older copy. The log alone cannot reveal that. :meth:`AuditLog.head` returns a
signed ``{count, last_hash}``; whoever keeps the latest head (the coordinator, the enterprise, a
second disk) detects truncation below it with ``verify(..., head=...)``. Entries appended after the
last published head can still be cut without trace — publish heads as often as that matters.

Durability and concurrency: each append is one ``write`` on an ``O_APPEND`` descriptor followed by
``fsync`` (:meth:`AuditLog.append_many` writes a batch of chained entries the same way, one ``write``
and one ``fsync`` for all), under a per-object thread lock and an exclusive ``flock`` (other processes appending to
the same file are serialized; the chain tail is re-read when the file changed underneath).

Never put raw identifiers (USCCs) or features into events: use :func:`keyed_hash`.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import hmac
import json
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from crypto._canonical import canonical_bytes
from crypto.errors import AuditLogBroken, BadSignature, MalformedData
from crypto.identity import IdentityKey, IdentityPublicKey

__all__ = ["AuditLog", "verify", "keyed_hash", "genesis_hash"]

_ENTRY_DOMAIN = "audit.entry/v1"
_HEAD_DOMAIN = "audit.head/v1"
_FIELDS = {"event", "prev", "seq", "signer", "sig", "ts"}


def keyed_hash(key: bytes, value: str | bytes) -> str:
    """HMAC-SHA256 of ``value`` under ``key`` (hex): a stable pseudonym that, unlike a plain hash,
    cannot be reversed by enumerating the (small) space of valid identifiers without the key."""
    if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
        raise MalformedData("keyed_hash key must be at least 16 random bytes")
    data = value.encode() if isinstance(value, str) else bytes(value)
    return hmac.new(bytes(key), data, hashlib.sha256).hexdigest()


def genesis_hash(signer_fingerprint: str) -> str:
    """The ``prev`` of entry 0: binds the chain to its signer."""
    return hashlib.sha256(b"fedscore/audit-genesis/v1\x00" + signer_fingerprint.encode()).hexdigest()


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _signed_part(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: entry[k] for k in ("event", "prev", "seq", "signer", "ts")}


def _utc_now(clock: Callable[[], float]) -> str:
    return datetime.fromtimestamp(clock(), tz=timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _read_last_line(fd: int) -> bytes | None:
    """The last complete line of an open file (without newline), or None if the file is empty."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    if os.pread(fd, 1, size - 1) != b"\n":
        complete = os.pread(fd, size, 0).count(b"\n")
        raise AuditLogBroken(complete, "last entry is incomplete (interrupted append?); repair before appending")
    block = 65536
    end = size - 1
    buf = b""
    pos = end
    while pos > 0:
        start = max(0, pos - block)
        buf = os.pread(fd, pos - start, start) + buf
        pos = start
        nl = buf.rfind(b"\n")
        if nl != -1:
            return buf[nl + 1:]
    return buf


class AuditLog:
    """Appender for one node's audit log. Thread-safe; one instance per file per process is enough."""

    def __init__(
        self, path: str | os.PathLike[str], identity: IdentityKey, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._path = Path(path)
        self._identity = identity
        self._clock = clock
        self._lock = threading.Lock()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self._path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        self._known_size = -1
        self._next_seq = 0
        self._last_hash = genesis_hash(identity.fingerprint)
        with self._lock:
            self._refresh()

    @property
    def path(self) -> Path:
        return self._path

    def _refresh(self) -> None:
        size = os.fstat(self._fd).st_size
        if size == self._known_size:
            return
        line = _read_last_line(self._fd)
        if line is None:
            self._next_seq, self._last_hash = 0, genesis_hash(self._identity.fingerprint)
        else:
            try:
                entry = json.loads(line)
                seq = int(entry["seq"])
            except (ValueError, KeyError, TypeError):
                index = os.pread(self._fd, size, 0).count(b"\n") - 1
                raise AuditLogBroken(index, "last entry is not a valid audit entry; refusing to extend") from None
            if entry.get("signer") != self._identity.fingerprint:
                raise AuditLogBroken(seq, "log belongs to a different identity; refusing to extend")
            self._next_seq, self._last_hash = seq + 1, _line_hash(line)
        self._known_size = size

    def append(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Append ``event`` (JSON-able dict), durably; returns the full entry written."""
        return self.append_many([event])[0]

    def append_many(self, events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Append ``events`` in order as consecutive chained entries, durably, with one ``write`` and
        one ``fsync``; returns the entries written. All or nothing as far as this process can tell:
        every event is checked before anything is written (a crash mid-write leaves an incomplete
        last line, which :func:`verify` and the next append report)."""
        checked = []
        for event in events:
            if not isinstance(event, Mapping):
                raise MalformedData("an audit event must be a dict of JSON-able fields")
            event = dict(event)
            canonical_bytes(event)  # refuse non-JSON early, before taking locks
            checked.append(event)
        if not checked:
            return []
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                self._refresh()
                seq, last_hash = self._next_seq, self._last_hash
                entries: list[dict[str, Any]] = []
                lines: list[bytes] = []
                for event in checked:
                    entry: dict[str, Any] = {
                        "event": event,
                        "prev": last_hash,
                        "seq": seq,
                        "signer": self._identity.fingerprint,
                        "ts": _utc_now(self._clock),
                    }
                    entry["sig"] = base64.b64encode(self._identity.sign(_ENTRY_DOMAIN, entry)).decode()
                    line = canonical_bytes(entry)
                    entries.append(entry)
                    lines.append(line)
                    seq, last_hash = seq + 1, _line_hash(line)
                view = memoryview(b"".join(line + b"\n" for line in lines))
                while view:
                    view = view[os.write(self._fd, view):]
                os.fsync(self._fd)
                self._known_size = os.fstat(self._fd).st_size
                self._next_seq, self._last_hash = seq, last_hash
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        return entries

    def head(self) -> dict[str, Any]:
        """Signed ``{count, last_hash}`` of the log as it is now (publish it to detect truncation)."""
        with self._lock:
            self._refresh()
            count, last_hash = self._next_seq, self._last_hash
        return _seal_head(self._identity, count, last_hash)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __del__(self) -> None:
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _broken_order(index: int, seq: int, later_seqs: set[int]) -> AuditLogBroken:
    if seq < index:
        return AuditLogBroken(index, f"entry inserted: seq {seq} repeats an earlier entry at position {index}")
    if index in later_seqs:
        return AuditLogBroken(index, f"entries reordered: found seq {seq} where seq {index} belongs")
    return AuditLogBroken(index, f"entry removed: expected seq {index}, found seq {seq}")


def verify(
    path: str | os.PathLike[str], public_key: IdentityPublicKey, *, head: Mapping[str, Any] | None = None
) -> int:
    """Check the whole chain; return the number of entries or raise :class:`AuditLogBroken`.

    With ``head`` (from :meth:`AuditLog.head` or :func:`sign_head`), also detect truncation below that
    head; a head not signed by ``public_key`` raises :class:`BadSignature`.
    """
    return len(_verified_lines(Path(path).read_bytes(), public_key, head))


def sign_head(path: str | os.PathLike[str], identity: IdentityKey) -> dict[str, Any]:
    """Verify a log and sign its head (as :meth:`AuditLog.head`) from the same bytes, read-only: an
    entry appended meanwhile is neither signed unchecked nor written, and a missing log is not created."""
    lines = _verified_lines(Path(path).read_bytes(), identity.public_key, None)
    last_hash = _line_hash(lines[-1]) if lines else genesis_hash(identity.fingerprint)
    return _seal_head(identity, len(lines), last_hash)


def _seal_head(identity: IdentityKey, count: int, last_hash: str) -> dict[str, Any]:
    return identity.seal(_HEAD_DOMAIN, {"count": count, "last_hash": last_hash, "signer": identity.fingerprint})


def _verified_lines(raw: bytes, public_key: IdentityPublicKey, head: Mapping[str, Any] | None) -> list[bytes]:
    """The log's entry lines after every check of :func:`verify`."""
    if raw and not raw.endswith(b"\n"):
        # a final line without newline is an interrupted append or an edit; report it by index
        lines = raw.split(b"\n")
        raise AuditLogBroken(len(lines) - 1, "last entry is incomplete (no trailing newline)")
    lines = raw.split(b"\n")[:-1] if raw else []
    entries: list[dict[str, Any] | None] = []
    for line in lines:
        try:
            obj = json.loads(line)
            entries.append(obj if isinstance(obj, dict) else None)
        except ValueError:
            entries.append(None)
    seqs_after: list[set[int]] = [set() for _ in entries]
    acc: set[int] = set()
    for i in range(len(entries) - 1, -1, -1):
        seqs_after[i] = set(acc)
        e = entries[i]
        if e is not None and isinstance(e.get("seq"), int):
            acc.add(e["seq"])

    fp = public_key.fingerprint
    prev = genesis_hash(fp)
    for i, (line, entry) in enumerate(zip(lines, entries)):
        if entry is None:
            raise AuditLogBroken(i, "not a JSON object: entry edited or corrupted")
        if set(entry) != _FIELDS or not isinstance(entry.get("seq"), int) or not isinstance(entry.get("event"), dict):
            raise AuditLogBroken(i, "fields missing, extra or of the wrong type: entry edited")
        try:
            canonical = canonical_bytes(entry)
        except MalformedData:
            raise AuditLogBroken(i, "entry is not canonical JSON: entry edited") from None
        if canonical != line:
            raise AuditLogBroken(i, "entry is not in canonical form: entry edited")
        if entry["signer"] != fp:
            raise AuditLogBroken(i, "entry signed by a different identity")
        try:
            sig = base64.b64decode(entry["sig"], validate=True)
            public_key.verify(_ENTRY_DOMAIN, _signed_part(entry), sig)
        except (BadSignature, binascii.Error, TypeError, ValueError):
            raise AuditLogBroken(i, "signature does not verify: entry edited or forged") from None
        if entry["seq"] != i:
            raise _broken_order(i, entry["seq"], seqs_after[i])
        if entry["prev"] != prev:
            raise AuditLogBroken(i, "chain link broken: prev does not match the preceding entry")
        prev = _line_hash(line)

    if head is not None:
        payload = public_key.open(head, _HEAD_DOMAIN)
        try:
            count, last_hash = int(payload["count"]), str(payload["last_hash"])
        except (KeyError, TypeError, ValueError):
            raise MalformedData("signed head lacks count/last_hash") from None
        if len(lines) < count:
            raise AuditLogBroken(len(lines), f"log truncated: signed head has {count} entries, file has {len(lines)}")
        expected = genesis_hash(fp) if count == 0 else _line_hash(lines[count - 1])
        if expected != last_hash:
            raise AuditLogBroken(max(count - 1, 0), "entry does not match the signed head: log rewritten")
    return lines
