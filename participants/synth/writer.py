"""Write a simulated world as a consortium: one directory per holder + ``consortium.toml``.

Each participant directory holds ONLY that participant's records (the bank also keeps its
private outcome ledger, the only place labels exist). ``synth.json`` at the top records the
generator parameters; it marks the directory as generated output, so it may be regenerated or
advanced without ``--force``.

Point-in-time semantics: the world is simulated through ``as_of + 12`` months, records are
written only up to ``as_of``, and the bank's ledger records each customer's default month when it
falls on or before ``as_of + 12`` (``observed_until`` = as_of + 12). Labels for as-of T are derived
from it ("default in T+1..T+12"). ``advance`` re-simulates the same world (same seed, start and
firms; per-month random streams make earlier months identical) one month further and rewrites
the files: one more month of records, one more month of outcomes.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from participants.features.labels import labels_from_ledger
from participants.synth.sources import coverage, source_records
from participants.synth.world import NO_MONTH, World, WorldParams, simulate_world
from protocols.consortium import ConsortiumConfig, dump_consortium
from protocols.errors import ConfigError
from protocols.feature_schemas import (
    ID_COLUMN,
    LABEL_HORIZON_MONTHS,
    LABEL_LEDGER,
    STANDARD_KINDS,
    STANDARD_SCHEMAS,
    month_index,
    month_str,
)

MANIFEST = "synth.json"
GENERATOR_VERSION = 1
SOURCES: tuple[str, ...] = STANDARD_KINDS
_GZIP = {"method": "gzip", "compresslevel": 1, "mtime": 0}


@dataclass
class SourceSummary:
    participant: str
    rows: int
    enterprises: int
    coverage: float
    """share of all simulated enterprises with records up to the as-of month."""
    first_month: str
    last_month: str


@dataclass
class SynthSummary:
    out: str
    enterprises: int
    seed: int
    as_of: str
    months_written: int
    label_customers: int
    label_positives: int
    base_rate: float
    seconds: float
    sources: list[SourceSummary] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _is_ours(out: Path) -> bool:
    return (out / MANIFEST).is_file()


def check_target(out: Path, force: bool) -> None:
    """Refuse to write into a non-empty directory we did not generate, unless forced."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not _is_ours(out) and not force:
        raise ConfigError(f"{out}: directory is not empty and was not written by synth "
                          "(use --force to write into it)")


def _ledger(world: World, as_of: int) -> pd.DataFrame:
    """The bank's private outcome ledger (customers known by the as-of month)."""
    horizon_end = as_of + LABEL_HORIZON_MONTHS
    customer = (world.bank_customer & (world.bank_since <= as_of)
                & (world.bank_since <= world.default_month)
                & (world.bank_since >= world.founded))
    idx = np.flatnonzero(customer)
    default = world.default_month[idx]
    default_text = np.where(default <= horizon_end,
                            [month_str(m) if m != NO_MONTH else "" for m in default], "")
    frame = pd.DataFrame({
        ID_COLUMN: world.uscc[idx],
        LABEL_LEDGER.customer_since: [month_str(m) for m in world.bank_since[idx]],
        LABEL_LEDGER.default_month: default_text,
        LABEL_LEDGER.observed_until: month_str(horizon_end),
    })
    return frame.sort_values(ID_COLUMN, kind="stable").reset_index(drop=True)


def consortium_for(out: Path, as_of: str, name: str = "synthetic-sme") -> ConsortiumConfig:
    """The vertical consortium config describing a synth output folder (relative data dirs)."""
    participants = []
    for i, kind in enumerate(SOURCES):
        entry: dict = {
            "name": kind, "kind": kind,
            "node_address": f"127.0.0.1:{9101 + i}",
            "scoring_address": f"127.0.0.1:{50061 + i}",
            "data_dir": str((out / kind).resolve()),
            "features": {"schema": kind},
        }
        if kind == "bank":
            entry.update(holds_labels=True, lends=True)
            entry["features"]["label_column"] = LABEL_LEDGER.default_month
        participants.append(entry)
    return ConsortiumConfig.model_validate({
        "name": name, "mode": "vertical", "as_of": as_of,
        "description": "Synthetic SME consortium: bank, tax authority, e-commerce platform, utility.",
        "coordinator": {"name": "coordinator", "superlink_address": "127.0.0.1:9092",
                        "gateway_address": "127.0.0.1:50051"},
        "participants": participants,
    })


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    compression = _GZIP if path.name.endswith(".gz") else None
    frame.to_csv(tmp, index=False, compression=compression, lineterminator="\n")
    tmp.replace(path)


def write_world(world: World, out: Path, as_of: int,
                progress: Callable[[str], None] | None = None) -> SynthSummary:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    note = progress or (lambda _step: None)
    n = world.params.n
    sources: list[SourceSummary] = []
    for kind in SOURCES:
        note(f"{kind}: records")
        frame = source_records(world, kind, as_of)
        target = out / kind
        target.mkdir(exist_ok=True)
        _write_csv(frame, target / STANDARD_SCHEMAS[kind].records_file)
        if kind == "bank":
            note("bank: outcome ledger")
            _write_csv(_ledger(world, as_of), target / LABEL_LEDGER.file)
        enterprises = frame[ID_COLUMN].nunique()
        sources.append(SourceSummary(
            participant=kind, rows=len(frame), enterprises=int(enterprises),
            coverage=round(enterprises / n, 4),
            first_month=str(frame["month"].min()) if len(frame) else "",
            last_month=str(frame["month"].max()) if len(frame) else "",
        ))
    as_of_text = month_str(as_of)
    dump_consortium(consortium_for(out, as_of_text), out / "consortium.toml")
    manifest = {"generator_version": GENERATOR_VERSION, **asdict(world.params),
                "as_of": as_of_text, "start_month": month_str(world.params.start)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    labels = labels_from_ledger(pd.read_csv(out / "bank" / LABEL_LEDGER.file, dtype=str,
                                            keep_default_na=False), as_of_text)
    return SynthSummary(
        out=str(out), enterprises=n, seed=world.params.seed, as_of=as_of_text,
        months_written=as_of - world.params.start + 1, label_customers=int(len(labels)),
        label_positives=int(labels.sum()), base_rate=round(float(labels.mean()), 4),
        seconds=round(time.perf_counter() - started, 2), sources=sources,
    )


def generate(out: str | Path, *, enterprises: int, seed: int, months: int = 24,
             as_of: str = "2024-12", force: bool = False,
             progress: Callable[[str], None] | None = None) -> SynthSummary:
    """Simulate a world of ``enterprises`` SMEs and write ``months`` months ending at ``as_of``."""
    if enterprises < 1:
        raise ConfigError(f"--enterprises must be at least 1, got {enterprises}")
    if not 1 <= months <= 240:
        raise ConfigError(f"--months must be within 1..240, got {months}")
    out_path = Path(out)
    check_target(out_path, force)
    started = time.perf_counter()
    t = month_index(as_of)
    params = WorldParams(n=enterprises, seed=seed, start=t - months + 1,
                         months=months + LABEL_HORIZON_MONTHS, anchor=t)
    if progress:
        progress("simulating the latent health process")
    world = simulate_world(params)
    if _is_ours(out_path):
        for kind in SOURCES:  # regenerate cleanly: no stale files from an earlier run
            shutil.rmtree(out_path / kind, ignore_errors=True)
    summary = write_world(world, out_path, t, progress)
    summary.seconds = round(time.perf_counter() - started, 2)
    return summary


def params_from_manifest(manifest: dict, extra_months: int = 0, *, source: str = MANIFEST) -> WorldParams:
    """The world a manifest describes (``extra_months`` further on); a malformed one is a
    ConfigError naming ``source`` and the missing or bad key."""
    if not isinstance(manifest, dict):
        raise ConfigError(f"{source}: malformed manifest (not a JSON object)")
    values = {}
    for key in (f.name for f in fields(WorldParams)):
        if key not in manifest:
            raise ConfigError(f"{source}: malformed manifest: missing key {key!r}")
        try:
            values[key] = int(manifest[key])
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: malformed manifest: {key!r} is not an integer") from None
    values["months"] += extra_months
    return WorldParams(**values)


def advance(out: str | Path, steps: int = 1,
            progress: Callable[[str], None] | None = None) -> SynthSummary:
    """Move a generated consortium ``steps`` months forward (same world, one more month each)."""
    out_path = Path(out)
    manifest_path = out_path / MANIFEST
    if not manifest_path.is_file():
        raise ConfigError(f"{out_path}: no {MANIFEST}; --advance needs a folder written by synth")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{manifest_path}: malformed manifest ({type(exc).__name__})") from None
    params = params_from_manifest(manifest, steps, source=str(manifest_path))
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    started = time.perf_counter()
    world = simulate_world(params)
    as_of = params.start + params.months - LABEL_HORIZON_MONTHS - 1
    summary = write_world(world, out_path, as_of, progress)
    summary.seconds = round(time.perf_counter() - started, 2)
    return summary
