"""The lender's watchlist and its decrypted score history, in SQLite under the lender's state dir.

Why SQLite in the lender's own folder: decrypted scores are the lender's alone (they must never sit
at the coordinator or a holder), the history must survive restarts without a database server, and
each write is one transaction. The file is created 0600. Connections and transactions are the
project's common SQLite recipe (:mod:`protocols._sqlite`: WAL, busy timeout, ``BEGIN IMMEDIATE``).

Each entry carries the enterprise's ``monitoring`` grant: an enterprise is watched only while it
has authorised this lender to monitor it. The lender checks what it can check locally (terms,
validity window and, given the authority's public key, the signature); revocation is enforced by
every holder at each use.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from crypto.errors import BadSignature, MalformedData
from crypto.identity import IdentityPublicKey
from participants.monitoring.errors import GrantRequired, MonitoringError
from protocols._sqlite import closing_transaction, connect, create_schema, require_existing
from protocols.consent import Grant, Purpose, UTCDatetime, utc_now
from protocols.feature_schemas import month_index
from protocols.uscc import USCC, validate_uscc

WATCHLIST_FILE = "watchlist.sqlite3"
MONITORING_DIR = "monitoring"


def check_month(month: str) -> str:
    """``YYYY-MM`` or a :class:`MonitoringError`."""
    try:
        month_index(month)
    except (ValueError, TypeError, AttributeError):
        raise MonitoringError(f"month {month!r} is not YYYY-MM") from None
    return month


class WatchEntry(BaseModel):
    """One watched enterprise and the grant that allows monitoring it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uscc: USCC
    grant_id: str
    grant_json: str = Field(repr=False)
    valid_until: UTCDatetime
    added_at: UTCDatetime
    note: str = ""

    def active(self, now: datetime) -> bool:
        return now < self.valid_until


class ScoreRecord(BaseModel):
    """One decrypted monthly score (lender side only).

    ``contributions``: each source's share of the logit, present only when the consortium's
    explanation policy allows per-source contributions and the scorer can provide them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    uscc: USCC
    as_of: str
    scored: bool
    pd: float | None = None
    logit: float | None = None
    score: int | None = None
    grade: str | None = None
    model_ref: str = ""
    sources: tuple[str, ...] = ()
    missing: dict[str, str] = Field(default_factory=dict)
    contributions: dict[str, float] | None = None


def check_monitoring_grant(grant: Grant | str, *, uscc: str, lender: str, now: datetime | None = None,
                           authority_key: IdentityPublicKey | None = None) -> Grant:
    """The grant if it lets ``lender`` monitor ``uscc`` now, else :class:`GrantRequired` saying why."""
    if isinstance(grant, str):
        try:
            grant = Grant.model_validate_json(grant)
        except (ValidationError, ValueError):
            raise GrantRequired("not a consent grant (expected the authority's signed JSON)") from None
    now = now or utc_now()
    terms = grant.terms
    if terms.enterprise != uscc:
        raise GrantRequired("the grant is for another enterprise")
    if terms.purpose != Purpose.MONITORING:
        raise GrantRequired(f"the grant's purpose is {terms.purpose.value!r}; watching needs a 'monitoring' grant")
    if terms.lender != lender:
        raise GrantRequired(f"the grant authorises lender {terms.lender!r}, not {lender!r}")
    if now >= terms.valid_until:
        raise GrantRequired("the grant has expired")
    if now < terms.valid_from:
        raise GrantRequired("the grant is not valid yet")
    if authority_key is not None:
        try:
            grant.verify(authority_key)
        except (BadSignature, MalformedData):
            raise GrantRequired("the grant is not signed by the consent authority") from None
    return grant


_SCHEMA = """
CREATE TABLE IF NOT EXISTS watchlist (
    uscc        TEXT PRIMARY KEY,
    grant_id    TEXT NOT NULL,
    grant_json  TEXT NOT NULL,
    valid_until TEXT NOT NULL,
    added_at    TEXT NOT NULL,
    note        TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS scores (
    uscc          TEXT NOT NULL,
    as_of         TEXT NOT NULL,
    scored        INTEGER NOT NULL,
    pd            REAL,
    logit         REAL,
    score         INTEGER,
    grade         TEXT,
    model_ref     TEXT NOT NULL,
    sources       TEXT NOT NULL,
    missing       TEXT NOT NULL,
    contributions TEXT,
    PRIMARY KEY (uscc, as_of)
);
CREATE INDEX IF NOT EXISTS scores_by_month ON scores (as_of);
"""


class Watchlist:
    """A lender's watchlist and score history (``<state_dir>/monitoring/watchlist.sqlite3``).

    ``create=False`` opens an existing watchlist only (for commands that read or re-score it): a
    missing state folder or watchlist file is a :class:`ConfigError` naming the folder.
    """

    def __init__(self, state_dir: str | os.PathLike[str], lender: str, *, create: bool = True) -> None:
        self.lender = lender
        folder = Path(state_dir) / MONITORING_DIR
        self.path = folder / WATCHLIST_FILE
        if not create:
            require_existing(state_dir, self.path, "watchlist", "fedscore monitor add")
        folder.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            create_schema(self.path, _SCHEMA)
        except sqlite3.Error as exc:
            raise MonitoringError(f"{self.path}: not a watchlist database ({exc})") from None

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``) on a fresh connection, closed afterwards."""
        try:
            conn = connect(self.path)
        except sqlite3.Error as exc:
            raise MonitoringError(f"{self.path}: cannot open the watchlist ({exc})") from None
        with closing_transaction(conn) as tx:
            yield tx

    # -- entries -------------------------------------------------------------------------------

    def add(self, uscc: str, grant: Grant | str, *, now: datetime | None = None,
            authority_key: IdentityPublicKey | None = None, note: str = "") -> WatchEntry:
        """Watch ``uscc`` under ``grant`` (re-adding replaces the grant, e.g. after a renewal)."""
        code = validate_uscc(uscc)
        now = now or utc_now()
        parsed = check_monitoring_grant(grant, uscc=code, lender=self.lender, now=now, authority_key=authority_key)
        entry = WatchEntry(uscc=code, grant_id=parsed.grant_id, grant_json=parsed.model_dump_json(),
                           valid_until=parsed.terms.valid_until, added_at=now, note=note)
        with self._conn() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO watchlist (uscc, grant_id, grant_json, valid_until, added_at, note) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (entry.uscc, entry.grant_id, entry.grant_json, entry.valid_until.isoformat(),
                 entry.added_at.isoformat(), entry.note),
            )
        return entry

    def remove(self, uscc: str, *, purge_history: bool = False) -> bool:
        """Stop watching; True if it was watched. ``purge_history`` also deletes its scores."""
        code = validate_uscc(uscc)
        with self._conn() as conn:
            removed = conn.execute("DELETE FROM watchlist WHERE uscc = ?", (code,)).rowcount
            if purge_history:
                conn.execute("DELETE FROM scores WHERE uscc = ?", (code,))
        return removed > 0

    @staticmethod
    def _entry(row: sqlite3.Row) -> WatchEntry:
        return WatchEntry(uscc=row["uscc"], grant_id=row["grant_id"], grant_json=row["grant_json"],
                          valid_until=row["valid_until"], added_at=row["added_at"], note=row["note"])

    def entries(self) -> list[WatchEntry]:
        with self._conn() as conn:
            rows = conn.execute("SELECT * FROM watchlist ORDER BY uscc").fetchall()
        return [self._entry(r) for r in rows]

    def get(self, uscc: str) -> WatchEntry | None:
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM watchlist WHERE uscc = ?", (validate_uscc(uscc),)).fetchone()
        return None if row is None else self._entry(row)

    def __len__(self) -> int:
        with self._conn() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM watchlist").fetchone()[0])

    # -- history -------------------------------------------------------------------------------

    def record(self, records: Sequence[ScoreRecord]) -> None:
        """Store a month's scores (a re-run of the same month replaces them)."""
        rows = [
            (r.uscc, check_month(r.as_of), int(r.scored), r.pd, r.logit, r.score, r.grade, r.model_ref,
             json.dumps(list(r.sources)), json.dumps(r.missing),
             None if r.contributions is None else json.dumps(r.contributions))
            for r in records
        ]
        with self._conn() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO scores (uscc, as_of, scored, pd, logit, score, grade, model_ref, sources,"
                " missing, contributions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    @staticmethod
    def _record(row: sqlite3.Row) -> ScoreRecord:
        return ScoreRecord(
            uscc=row["uscc"], as_of=row["as_of"], scored=bool(row["scored"]), pd=row["pd"], logit=row["logit"],
            score=row["score"], grade=row["grade"], model_ref=row["model_ref"], sources=tuple(json.loads(row["sources"])),
            missing=json.loads(row["missing"]),
            contributions=None if row["contributions"] is None else json.loads(row["contributions"]),
        )

    def history(self, uscc: str) -> list[ScoreRecord]:
        """Every stored month of one enterprise, oldest first."""
        with self._conn() as conn:
            rows = conn.execute("SELECT * FROM scores WHERE uscc = ? ORDER BY as_of",
                                (validate_uscc(uscc),)).fetchall()
        return [self._record(r) for r in rows]

    def scores(self, as_of: str) -> dict[str, ScoreRecord]:
        with self._conn() as conn:
            rows = conn.execute("SELECT * FROM scores WHERE as_of = ?", (check_month(as_of),)).fetchall()
        return {r["uscc"]: self._record(r) for r in rows}

    def months(self) -> list[str]:
        with self._conn() as conn:
            return [r[0] for r in conn.execute("SELECT DISTINCT as_of FROM scores ORDER BY as_of").fetchall()]

    def previous_month(self, as_of: str) -> str | None:
        """The latest stored month strictly before ``as_of``."""
        earlier = [m for m in self.months() if month_index(m) < month_index(check_month(as_of))]
        return earlier[-1] if earlier else None
