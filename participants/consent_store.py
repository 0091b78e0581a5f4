"""SQLite persistence at a data holder: per-grant use counters and the latest revocation list.

The use counter is the one piece of consent state that must be exact under concurrency: a grant
with ``max_uses=k`` must never be served k+1 times, whether the requests race in threads of one
process or in several processes sharing the database. Counting is therefore one conditional upsert
(``uses < max``) inside an immediate (write-locked) transaction; SQLite serialises writers, so the
condition is evaluated against the committed count every time. WAL keeps readers unblocked. A
batch (:meth:`HolderStore.try_use_many`) makes the same upserts in one such transaction: one
durable commit for thousands of enterprises instead of one each.
"""

from __future__ import annotations

from collections.abc import Sequence

from protocols._sqlite import ThreadLocalStore
from protocols.consent import SignedRevocationList

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uses (
    grant_id TEXT NOT NULL,
    holder TEXT NOT NULL,
    uses INTEGER NOT NULL,
    PRIMARY KEY (grant_id, holder)
);
CREATE TABLE IF NOT EXISTS revocation_list (
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
    sequence INTEGER NOT NULL,
    body TEXT NOT NULL
);
"""


class HolderStore(ThreadLocalStore):
    """Consent state a holder keeps across restarts (``consent.db`` in the node's state directory)."""

    _SCHEMA = _SCHEMA

    def try_use(self, grant_id: str, holder: str, max_uses: int | None) -> int | None:
        """Count one use atomically; return the new count, or None if ``max_uses`` is already reached."""
        return self.try_use_many(holder, [(grant_id, max_uses)])[0]

    def try_use_many(self, holder: str, uses: Sequence[tuple[str, int | None]]) -> list[int | None]:
        """Count one use per ``(grant_id, max_uses)`` in order, all in one write transaction; each
        result is the new count, or None where ``max_uses`` was already reached. Each increment is
        the same conditional upsert :meth:`try_use` makes, so a grant listed twice is counted twice
        and no grant ever passes its bound, whatever races in other threads or processes."""
        for _, max_uses in uses:
            if max_uses is not None and max_uses < 1:
                raise ValueError(f"max_uses must be positive, got {max_uses}")
        if not uses:
            return []
        out: list[int | None] = []
        with self._tx() as db:
            for grant_id, max_uses in uses:
                row = db.execute(
                    "INSERT INTO uses VALUES (:grant, :holder, 1) ON CONFLICT(grant_id, holder) DO UPDATE "
                    "SET uses = uses + 1 WHERE :max IS NULL OR uses < :max RETURNING uses",
                    {"grant": grant_id, "holder": holder, "max": max_uses},
                ).fetchone()
                out.append(None if row is None else int(row[0]))
        return out

    def uses(self, grant_id: str, holder: str) -> int:
        row = self._conn().execute(
            "SELECT uses FROM uses WHERE grant_id = ? AND holder = ?", (grant_id, holder)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def all_uses(self) -> dict[tuple[str, str], int]:
        rows = self._conn().execute("SELECT grant_id, holder, uses FROM uses ORDER BY grant_id, holder")
        return {(g, h): int(u) for g, h, u in rows}

    def save_revocation_list(self, revocations: SignedRevocationList) -> bool:
        """Keep ``revocations`` if its sequence is higher than the stored one (a replayed older list,
        which might hide a revocation, is ignored). The caller has verified the signature."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO revocation_list VALUES (1, ?, ?) ON CONFLICT(only_row) DO UPDATE "
                "SET sequence = excluded.sequence, body = excluded.body WHERE excluded.sequence > sequence",
                (revocations.sequence, revocations.model_dump_json()),
            )
            return cur.rowcount == 1

    def revocation_list(self) -> SignedRevocationList | None:
        row = self._conn().execute("SELECT body FROM revocation_list WHERE only_row = 1").fetchone()
        return None if row is None else SignedRevocationList.model_validate_json(row[0])
