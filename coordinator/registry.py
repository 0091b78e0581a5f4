"""Model registry at the coordinator: every trained model version, kept in embedded SQLite.

Why SQLite under ``--state-dir``: the registry must survive a coordinator restart without a
database server, and every write is one transaction, so a crash mid-run leaves either the old or
the new record, never half of one.

What is recorded: name, kind (``horizontal`` / ``vertical``), an auto-incremented version number
per name, parent version, status (``training`` → ``ready`` | ``failed``), the run configuration,
the participants, metrics (per round and final), and *where the weights live*.

Where the weights live -- the coordinator never decrypts, so it cannot hold weights by itself:

* ``participants``: (default) every key holder decrypted the final aggregate and keeps the model in
  its own local model store; the registry lists who has it (``weights_location``).
* ``registry``: the consortium agreed to publish the model; the key holder uploaded the decrypted
  vector, stored as ``<state-dir>/weights/<name>/v<version>.npy`` (plain float64, no pickle) and
  referenced by path and SHA-256.
* vertical training registers its top model the same way (kind ``vertical``); bottom models stay
  with their holders (``weights_location`` names them).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from protocols._sqlite import connect as sqlite_connect
from protocols._sqlite import closing_transaction, create_schema, require_existing
from protocols.errors import ProtocolError

__all__ = [
    "RegistryError",
    "VersionNotFound",
    "ModelVersion",
    "ModelRegistry",
    "REGISTRY_FILE",
]

REGISTRY_FILE = "registry.sqlite3"
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")

Status = Literal["training", "ready", "failed"]
Kind = Literal["horizontal", "vertical"]


class RegistryError(ProtocolError):
    """The registry cannot do what was asked (bad name, bad state transition, corrupt weights)."""


class VersionNotFound(RegistryError, LookupError):
    """No model version with that reference."""


class ModelVersion(BaseModel):
    """One registered model version (what ``fedscore models show`` prints)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int
    name: str
    version: int
    kind: Kind
    status: Status
    parent: str | None = None
    created_at: str
    finished_at: str | None = None
    run_id: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    participants: list[str] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)
    weights_location: dict[str, Any] = Field(default_factory=dict)
    notes: str = ""

    @property
    def ref(self) -> str:
        """``name:v<version>``, the handle users pass around."""
        return f"{self.name}:v{self.version}"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_versions (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    kind          TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    parent        TEXT,
    created_at    TEXT    NOT NULL,
    finished_at   TEXT,
    run_id        TEXT,
    config        TEXT    NOT NULL,
    participants  TEXT    NOT NULL,
    metrics       TEXT    NOT NULL,
    weights       TEXT    NOT NULL,
    notes         TEXT    NOT NULL DEFAULT '',
    UNIQUE (name, version)
);
"""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise RegistryError(f"model name {name!r} must match {_NAME_RE.pattern}")
    return name


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=False, default=str)


class ModelRegistry:
    """SQLite-backed registry; one file per coordinator state directory.

    Every method opens its own short transaction, so a ServerApp process and the CLI can use the
    same registry at the same time. ``create=False`` opens an existing registry only (for commands
    that read it): a missing folder or registry file is a :class:`ConfigError` naming the folder.
    """

    def __init__(self, state_dir: Path | str, *, create: bool = True) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / REGISTRY_FILE
        if not create:
            require_existing(self.state_dir, self.path, "model registry", "fedscore train")
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        create_schema(self.path, _SCHEMA)

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection per call, inside one write transaction (other processes share the file)."""
        with closing_transaction(sqlite_connect(self.path)) as conn:
            yield conn

    # -- reading ------------------------------------------------------------------------------
    @staticmethod
    def _row(row: sqlite3.Row) -> ModelVersion:
        return ModelVersion(
            id=row["id"],
            name=row["name"],
            version=row["version"],
            kind=row["kind"],
            status=row["status"],
            parent=row["parent"],
            created_at=row["created_at"],
            finished_at=row["finished_at"],
            run_id=row["run_id"],
            config=json.loads(row["config"]),
            participants=json.loads(row["participants"]),
            metrics=json.loads(row["metrics"]),
            weights_location=json.loads(row["weights"]),
            notes=row["notes"],
        )

    def list(self, name: str | None = None, *, kind: Kind | None = None) -> list[ModelVersion]:
        """All versions, newest first; optionally one model name or one kind."""
        query, args = "SELECT * FROM model_versions", []
        where = []
        if name is not None:
            where.append("name = ?")
            args.append(name)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY id DESC"
        with self._conn() as conn:
            return [self._row(r) for r in conn.execute(query, args).fetchall()]

    def get(self, ref: str | int) -> ModelVersion:
        """By row id, ``name:vN`` / ``name:N``, or ``name`` (latest ready version)."""
        with self._conn() as conn:
            if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
                row = conn.execute("SELECT * FROM model_versions WHERE id = ?", (int(ref),)).fetchone()
            elif ":" in ref:
                name, _, ver = ref.partition(":")
                ver = ver[1:] if ver.lower().startswith("v") else ver
                if not ver.isdigit():
                    raise VersionNotFound(f"bad model reference {ref!r} (expected name:vN)")
                row = conn.execute(
                    "SELECT * FROM model_versions WHERE name = ? AND version = ?", (name, int(ver))
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT * FROM model_versions WHERE name = ? AND status = 'ready' "
                    "ORDER BY version DESC LIMIT 1",
                    (ref,),
                ).fetchone()
        if row is None:
            raise VersionNotFound(f"no model version {ref!r}")
        return self._row(row)

    def latest(self, name: str) -> ModelVersion | None:
        try:
            return self.get(name)
        except VersionNotFound:
            return None

    # -- writing ------------------------------------------------------------------------------
    def create(
        self,
        name: str,
        *,
        kind: Kind,
        config: dict[str, Any],
        participants: list[str] | None = None,
        parent: str | None = None,
        run_id: str | None = None,
    ) -> ModelVersion:
        """Open a new version in status ``training``; the version number is next for ``name``."""
        _check_name(name)
        if parent:
            self.get(parent)  # must exist
        with self._conn() as conn:
            (last,) = conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM model_versions WHERE name = ?", (name,)
            ).fetchone()
            cur = conn.execute(
                "INSERT INTO model_versions (name, version, kind, status, parent, created_at, run_id,"
                " config, participants, metrics, weights) VALUES (?, ?, ?, 'training', ?, ?, ?, ?, ?, '{}', '{}')",
                (name, last + 1, kind, parent, _now(), run_id, _dumps(config), _dumps(participants or [])),
            )
            row_id = cur.lastrowid
        return self.get(int(row_id))

    def _update(self, version: ModelVersion, **fields: Any) -> ModelVersion:
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._conn() as conn:
            status = conn.execute(
                "SELECT status FROM model_versions WHERE id = ?", (version.id,)
            ).fetchone()
            if status is None:
                raise VersionNotFound(f"no model version {version.ref}")
            if status["status"] != "training":
                raise RegistryError(f"{version.ref} is already {status['status']}; versions are immutable once closed")
            conn.execute(f"UPDATE model_versions SET {sets} WHERE id = ?", (*fields.values(), version.id))
        return self.get(version.id)

    def record_progress(
        self, version: ModelVersion, *, metrics: dict[str, Any], participants: list[str] | None = None
    ) -> ModelVersion:
        """Save metrics so far (after each round), so a crash keeps the history."""
        fields: dict[str, Any] = {"metrics": _dumps(metrics)}
        if participants is not None:
            fields["participants"] = _dumps(participants)
        return self._update(version, **fields)

    def complete(
        self,
        version: ModelVersion,
        *,
        metrics: dict[str, Any],
        weights_location: dict[str, Any],
        participants: list[str] | None = None,
        notes: str = "",
    ) -> ModelVersion:
        fields: dict[str, Any] = {
            "status": "ready",
            "finished_at": _now(),
            "metrics": _dumps(metrics),
            "weights": _dumps(weights_location),
            "notes": notes,
        }
        if participants is not None:
            fields["participants"] = _dumps(participants)
        return self._update(version, **fields)

    def fail(self, version: ModelVersion, reason: str) -> ModelVersion:
        return self._update(version, status="failed", finished_at=_now(), notes=reason[:500])

    # -- published weights --------------------------------------------------------------------
    def store_weights(self, version: ModelVersion, vector: np.ndarray) -> dict[str, Any]:
        """Save a published (consortium-approved, already decrypted) weight vector; returns its location."""
        arr = np.asarray(vector, dtype=np.float64).reshape(-1)
        if arr.size == 0 or not np.isfinite(arr).all():
            raise RegistryError("published weights must be a non-empty finite vector")
        path = self.state_dir / "weights" / version.name / f"v{version.version}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, arr, allow_pickle=False)
        return {
            "path": str(path.relative_to(self.state_dir)),
            "sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
            "size": int(arr.size),
        }

    def load_weights(self, ref: str | int) -> np.ndarray:
        """The published vector of a version (only if it was published to the registry)."""
        version = self.get(ref)
        loc = version.weights_location.get("registry")
        if not loc:
            raise RegistryError(
                f"{version.ref} was not published to the registry; its weights stay with "
                f"{', '.join(version.weights_location.get('participants', [])) or 'the participants'}"
            )
        arr = np.load(self.state_dir / loc["path"], allow_pickle=False)
        if hashlib.sha256(arr.tobytes()).hexdigest() != loc["sha256"]:
            raise RegistryError(f"{version.ref}: stored weights do not match their recorded SHA-256")
        return arr
