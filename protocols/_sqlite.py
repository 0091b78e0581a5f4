"""Embedded SQLite as every fedscore store uses it: WAL, a busy timeout, explicit write transactions.

Why one helper: the consent authority, the holders' consent stores and the model registry all need
the same guarantees -- readers never blocked by a writer (WAL), concurrent processes wait instead of
failing (busy timeout), and each write is one ``BEGIN IMMEDIATE`` transaction taken with the write
lock, so conditional updates (use counters, version numbers) see the committed state.

Not wire protocol: it is a private module of ``protocols`` only because both role packages may
import from there and neither may import the other.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import ClassVar

from protocols.errors import ConfigError

BUSY_TIMEOUT_S = 30.0


def require_existing(folder: str | Path, store: str | Path, what: str, made_by: str = "") -> None:
    """Refuse to open a store that a reading command expects to be there.

    Opening a store creates it (folder, file, schema), which is right for the commands that set up
    state and wrong for those that only read it: a mistyped ``--state-dir`` would answer with an
    empty store and leave a stray folder behind. ``what`` names the store ("model registry"),
    ``made_by`` the command that creates it.
    """
    folder, store = Path(folder), Path(store)
    hint = f" (made by '{made_by}')" if made_by else ""
    if not folder.is_dir():
        raise ConfigError(f"state folder {folder} does not exist; expected a {what} "
                          f"{store.relative_to(folder)} there{hint}")
    if not store.is_file():
        raise ConfigError(f"state folder {folder} holds no {what}: {store} not found{hint}")


def connect(path: str | Path, *, synchronous: str | None = None) -> sqlite3.Connection:
    """An autocommit connection in WAL mode; transactions are explicit (see :func:`transaction`).

    ``synchronous`` (e.g. ``"FULL"``) is set when given; otherwise SQLite's default stays.
    """
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    conn.execute("PRAGMA journal_mode=WAL")
    if synchronous is not None:
        conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``; any exception (even ``KeyboardInterrupt``) rolls back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def create_schema(path: str | Path, schema: str) -> None:
    """Run ``schema`` (``CREATE ... IF NOT EXISTS`` statements) on a short-lived connection."""
    conn = connect(path)
    try:
        conn.executescript(schema)
    finally:
        conn.close()


@contextmanager
def closing_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write :func:`transaction` on a fresh connection that yields ``sqlite3.Row`` rows; the
    connection is closed afterwards, whatever happens (for stores shared between processes)."""
    conn.row_factory = sqlite3.Row
    try:
        with transaction(conn):
            yield conn
    finally:
        conn.close()


class ThreadLocalStore:
    """Base of a store that keeps one connection per thread (``sqlite3`` connections are not
    shareable across threads) and creates its schema on open; writes are fully synchronous."""

    _SCHEMA: ClassVar[str] = ""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conn().executescript(self._SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, synchronous="FULL")
            self._local.conn = conn
        return conn

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._conn())

    def close(self) -> None:
        """Close this thread's connection (other threads' connections close with their threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
