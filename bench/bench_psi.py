"""ECDH-PSI benchmark: end-to-end two-party PSI against the raw X25519 rate, measured in one run.

Rows:

* ``raw`` — X25519 scalar multiplications per second on all cores: a tight loop of the very call
  the PSI makes (``crypto._x25519.scalarmult_many``), one process per core, no hashing, no I/O;
  measured before and after the PSI runs, the baseline is their mean.
* ``psi N×N`` — both parties' full work for N ids each with 50 % overlap, run one after the other
  on this machine: hash + blind (both sets), re-blind (both sets), tag, match. ``mults`` = 4N (every
  id is multiplied twice); ``efficiency`` = (mults / wall) / raw rate — how close the protocol gets
  to doing nothing but scalar multiplications. ``floor_s`` = mults / raw rate, the wall time of a
  perfect implementation on this machine.

Targets: efficiency ≥ 0.70 for every size, and 1M × 1M within 90 s. ``--quick`` runs 100k only.

Run: ``python -m bench.bench_psi [--quick] [--json] [--workers W]``.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Any

from bench._report import bench_parser, report
from crypto import _x25519
from crypto.psi import BlindingKey, TagAgreement, default_workers, has_fast_hashing, match_tags

DOMAIN = b"bench/psi"
EFFICIENCY_TARGET = 0.70
WALL_TARGET_1M = 90.0

_RAW: dict[str, Any] = {}


def _raw_init() -> None:
    _RAW["key"] = BlindingKey.generate()._private  # noqa: SLF001 - the exact object the PSI uses
    ids = [b"%018d" % i for i in range(2_000)]
    _RAW["points"] = _x25519.hash_to_curve(_x25519.hash_prefix(b"bench", DOMAIN), ids)


def _raw_task(mults: int) -> int:
    pts, key, done = _RAW["points"], _RAW["key"], 0
    while done < mults:
        take = min(mults - done, len(pts) // 32)
        _x25519.scalarmult_many(key, pts[:take * 32])
        done += take
    return done


def raw_rate(workers: int, seconds: float) -> dict:
    """Scalar multiplications per second with ``workers`` processes for about ``seconds``."""
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Pool(workers, initializer=_raw_init) as pool:
        pool.map(_raw_task, [200] * workers)  # warm up: imports, first calls
        t0 = time.perf_counter()
        probe = sum(pool.map(_raw_task, [1_000] * workers))
        per_s = probe / (time.perf_counter() - t0)
        each = max(1_000, int(per_s * seconds / workers))
        t0 = time.perf_counter()
        total = sum(pool.map(_raw_task, [each] * workers))
        wall = time.perf_counter() - t0
    return {"case": "raw X25519", "workers": workers, "mults": total, "wall_s": round(wall, 2),
            "mults_per_s": round(total / wall), "per_core_per_s": round(total / wall / workers)}


def psi_once(n: int, workers: int) -> dict:
    """Both parties' work for n ids each, half of them shared."""
    x = [b"%018d" % i for i in range(n)]
    y = [b"%018d" % i for i in range(n // 2, n // 2 + n)]
    steps: dict[str, float] = {}
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    a, b = BlindingKey.generate(), BlindingKey.generate()
    ax = a.hash_and_blind(x, DOMAIN, workers=workers)
    by = b.hash_and_blind(y, DOMAIN, workers=workers)
    steps["hash_blind_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    bax = b.reblind(ax, workers=workers)
    aby = a.reblind(by, workers=workers)
    steps["reblind_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ta, tb = TagAgreement(), TagAgreement()
    b_out, _ = tb.keys(ta.public_bytes, b"bench")
    _, a_in = ta.keys(tb.public_bytes, b"bench")
    i, _j = match_tags(b_out.tag(bax), a_in.tag(aby))
    steps["tag_match_s"] = time.perf_counter() - t0

    wall = time.perf_counter() - t_all
    if len(i) != n - n // 2:
        raise AssertionError(f"PSI found {len(i)} common ids, expected {n - n // 2}")
    return {"n": n, "wall_s": wall, "mults": 4 * n, **steps}


def run(quick: bool, workers: int | None = None) -> list[dict]:
    workers = workers or default_workers()
    seconds = 3.0 if quick else 6.0
    raw = raw_rate(workers, seconds)
    rows = [dict(raw, case="raw X25519 (before)", target="-", ok=None)]
    runs = [psi_once(n, workers) for n in ((100_000,) if quick else (100_000, 1_000_000))]
    after = raw_rate(workers, seconds)
    rows.append(dict(after, case="raw X25519 (after)", target="-", ok=None))
    # The baseline is the mean of both raw measurements, so a change of machine load during the
    # run shows up as a gap between them rather than as a skewed efficiency.
    raw = {"mults_per_s": (raw["mults_per_s"] + after["mults_per_s"]) / 2}
    for r in runs:
        n = r["n"]
        eff = (r["mults"] / r["wall_s"]) / raw["mults_per_s"]
        floor = r["mults"] / raw["mults_per_s"]
        ok = eff >= EFFICIENCY_TARGET and (n < 1_000_000 or r["wall_s"] <= WALL_TARGET_1M)
        target = f"eff>={EFFICIENCY_TARGET:.2f}" + (f", wall<={WALL_TARGET_1M:.0f}s" if n >= 1_000_000 else "")
        rows.append({
            "case": f"psi {n // 1000}k x {n // 1000}k", "workers": workers, "mults": r["mults"],
            "wall_s": round(r["wall_s"], 2), "ids_per_s": round(2 * n / r["wall_s"]),
            "mults_per_s": round(r["mults"] / r["wall_s"]), "efficiency": round(eff, 3),
            "floor_s": round(floor, 1), "hash_blind_s": round(r["hash_blind_s"], 2),
            "reblind_s": round(r["reblind_s"], 2), "tag_match_s": round(r["tag_match_s"], 2),
            "gmp": has_fast_hashing(), "load_avg_1m": round(os.getloadavg()[0], 2),
            "target": target, "ok": ok,
        })
    return rows


def _print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    cols = ["case", "workers", "mults", "wall_s", "mults_per_s", "per_core_per_s", "ids_per_s", "efficiency",
            "floor_s", "hash_blind_s", "reblind_s", "tag_match_s", "load_avg_1m", "target", "ok"]
    table = Table(title="ECDH-PSI (X25519 + Elligator 2)")
    for c in cols:
        table.add_column(c, justify="left" if c in ("case", "target") else "right")
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append("" if v is None else ("PASS" if v is True else "FAIL" if v is False else str(v)))
        table.add_row(*cells)
    Console(width=max(160, Console().width)).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("bench_psi", __doc__, "100k ids only")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    args = parser.parse_args(argv)
    return report(run(args.quick, workers=args.workers), args.json, _print_table)


if __name__ == "__main__":
    raise SystemExit(main())
