"""SQLite persistence for the consent authority: enrolments, grants, revocations, nonces, use reports.

WAL mode so readers (status queries, list publication) never block a revocation; one connection per
thread; every write is one short transaction. Stored grants are the signed JSON exactly as issued.
"""

from __future__ import annotations

from datetime import datetime, timezone

from protocols._sqlite import ThreadLocalStore
from protocols.consent import Grant, Revocation

_SCHEMA = """
CREATE TABLE IF NOT EXISTS enterprises (
    enterprise TEXT PRIMARY KEY,
    public_key BLOB NOT NULL,
    enrolled_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS grants (
    grant_id TEXT PRIMARY KEY,
    enterprise TEXT NOT NULL,
    valid_until TEXT NOT NULL,
    body TEXT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX IF NOT EXISTS grants_by_enterprise ON grants (enterprise);
CREATE TABLE IF NOT EXISTS nonces (
    enterprise TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    PRIMARY KEY (enterprise, nonce)
);
CREATE TABLE IF NOT EXISTS holders (
    holder TEXT PRIMARY KEY,
    public_key BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS use_reports (
    grant_id TEXT NOT NULL,
    holder TEXT NOT NULL,
    uses INTEGER NOT NULL,
    reported_at TEXT NOT NULL,
    PRIMARY KEY (grant_id, holder)
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class AuthorityStore(ThreadLocalStore):
    """Persistent state of the consent authority (``consent.db`` in its state directory)."""

    _SCHEMA = _SCHEMA

    # enterprises -------------------------------------------------------------------------------

    def enrol(self, enterprise: str, public_key: bytes, at: datetime, *, replace: bool) -> bool:
        """Bind ``public_key`` to ``enterprise``; False if already enrolled and not ``replace``."""
        with self._tx() as db:
            if replace:
                db.execute(
                    "INSERT INTO enterprises VALUES (?, ?, ?) ON CONFLICT(enterprise) DO UPDATE "
                    "SET public_key = excluded.public_key, enrolled_at = excluded.enrolled_at",
                    (enterprise, public_key, _utc(at)),
                )
                return True
            cur = db.execute(
                "INSERT OR IGNORE INTO enterprises VALUES (?, ?, ?)", (enterprise, public_key, _utc(at))
            )
            return cur.rowcount == 1

    def enterprise_key(self, enterprise: str) -> bytes | None:
        row = self._conn().execute(
            "SELECT public_key FROM enterprises WHERE enterprise = ?", (enterprise,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def consume_nonce(self, enterprise: str, nonce: str, *, expires_at: datetime, now: datetime) -> bool:
        """Record a request nonce; False if it was seen before (a replay). Expired nonces are pruned:
        requests that old are refused on their timestamp anyway."""
        with self._tx() as db:
            db.execute("DELETE FROM nonces WHERE expires_at < ?", (_utc(now),))
            cur = db.execute(
                "INSERT OR IGNORE INTO nonces VALUES (?, ?, ?)", (enterprise, nonce, _utc(expires_at))
            )
            return cur.rowcount == 1

    # grants ------------------------------------------------------------------------------------

    def add_grant(self, grant: Grant) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO grants (grant_id, enterprise, valid_until, body) VALUES (?, ?, ?, ?)",
                (grant.grant_id, grant.terms.enterprise, _utc(grant.terms.valid_until), grant.model_dump_json()),
            )

    def grant(self, grant_id: str) -> tuple[Grant, datetime | None] | None:
        row = self._conn().execute(
            "SELECT body, revoked_at FROM grants WHERE grant_id = ?", (grant_id,)
        ).fetchone()
        return None if row is None else _grant_row(row)

    def grants_of(self, enterprise: str) -> list[tuple[Grant, datetime | None]]:
        rows = self._conn().execute(
            "SELECT body, revoked_at FROM grants WHERE enterprise = ? ORDER BY rowid", (enterprise,)
        ).fetchall()
        return [_grant_row(row) for row in rows]

    def revoke(self, grant_id: str, at: datetime) -> datetime | None:
        """Mark a grant revoked (idempotent); returns when it was revoked, None if unknown."""
        with self._tx() as db:
            db.execute(
                "UPDATE grants SET revoked_at = ? WHERE grant_id = ? AND revoked_at IS NULL",
                (_utc(at), grant_id),
            )
            row = db.execute("SELECT revoked_at FROM grants WHERE grant_id = ?", (grant_id,)).fetchone()
        return None if row is None else datetime.fromisoformat(row[0])

    def revocations(self, now: datetime) -> list[Revocation]:
        """Revoked grants that have not expired yet (expired ones are refused without the list)."""
        rows = self._conn().execute(
            "SELECT grant_id, revoked_at, valid_until FROM grants "
            "WHERE revoked_at IS NOT NULL AND valid_until > ? ORDER BY revoked_at, grant_id",
            (_utc(now),),
        ).fetchall()
        return [
            Revocation(grant_id=g, revoked_at=datetime.fromisoformat(r), grant_valid_until=datetime.fromisoformat(v))
            for g, r, v in rows
        ]

    def next_sequence(self, name: str) -> int:
        """Atomically increment and return a named counter (revocation list sequence numbers)."""
        with self._tx() as db:
            (value,) = db.execute(
                "INSERT INTO counters VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET value = value + 1 "
                "RETURNING value",
                (name,),
            ).fetchone()
        return int(value)

    # holders and their use reports -------------------------------------------------------------

    def register_holder(self, holder: str, public_key: bytes) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO holders VALUES (?, ?) ON CONFLICT(holder) DO UPDATE SET public_key = excluded.public_key",
                (holder, public_key),
            )

    def holder_key(self, holder: str) -> bytes | None:
        row = self._conn().execute("SELECT public_key FROM holders WHERE holder = ?", (holder,)).fetchone()
        return None if row is None else bytes(row[0])

    def record_uses(self, grant_id: str, holder: str, uses: int, at: datetime) -> None:
        """Keep the highest count a holder reported (counts only grow; a late report cannot lower it)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO use_reports VALUES (?, ?, ?, ?) ON CONFLICT(grant_id, holder) DO UPDATE "
                "SET uses = excluded.uses, reported_at = excluded.reported_at WHERE excluded.uses > uses",
                (grant_id, holder, uses, _utc(at)),
            )

    def uses_by_holder(self, grant_id: str) -> dict[str, int]:
        rows = self._conn().execute(
            "SELECT holder, uses FROM use_reports WHERE grant_id = ? ORDER BY holder", (grant_id,)
        ).fetchall()
        return {holder: int(uses) for holder, uses in rows}


def _utc(value: datetime) -> str:
    # Fixed-width UTC text (microseconds always present) so SQL compares instants as strings.
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _grant_row(row: tuple[str, str | None]) -> tuple[Grant, datetime | None]:
    body, revoked_at = row
    return Grant.model_validate_json(body), None if revoked_at is None else datetime.fromisoformat(revoked_at)
