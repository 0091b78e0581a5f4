"""Run every ``bench/bench_*.py`` module and print one summary table.

Contract for a benchmark module ``bench/bench_<name>.py``:

* ``run(quick: bool) -> list[dict]`` — measure and return flat rows (JSON-serialisable values).
  Baselines are measured in the same run, so ratios stay meaningful on any machine. Conventional
  keys: ``case`` (what the row measures), ``target`` (the acceptance criterion as text) and ``ok``
  (True/False when the row has a target, None otherwise); all other keys are figures.
* ``main(argv: list[str] | None = None) -> int`` — its own CLI: a rich table by default,
  ``--json`` for the rows, ``--quick`` for the small sizes.
* Importing the module does no work; multiprocessing code sits behind ``if __name__ == "__main__"``.

Run: ``python -m bench [--quick] [--json] [--only NAME ...]``. Exit code 1 when a row has ``ok``
False, so CI can gate on it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import time
from pathlib import Path


def discover() -> list[str]:
    """Names (``psi``, ``ckks``, …) of every ``bench_*`` module beside this file."""
    here = Path(__file__).parent
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))


def _figures(row: dict) -> str:
    skip = {"case", "target", "ok"}
    return ", ".join(f"{k}={v}" for k, v in row.items() if k not in skip)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--json", action="store_true", help="print {bench: rows} as JSON")
    parser.add_argument("--only", nargs="*", default=None, help="bench names to run (default: all)")
    args = parser.parse_args(argv)
    names = [n for n in discover() if args.only is None or n in args.only]
    results: dict[str, list[dict]] = {}
    errors: dict[str, str] = {}
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        t0 = time.perf_counter()
        try:
            results[name] = module.run(args.quick)
        except Exception as exc:  # one broken bench must not hide the others' figures
            errors[name] = f"{type(exc).__name__}: {exc}"
            results[name] = []
        results[name] = [dict(r, bench_s=round(time.perf_counter() - t0, 1)) if i == 0 else r
                         for i, r in enumerate(results[name])]
    failed = bool(errors) or any(r.get("ok") is False for rows in results.values() for r in rows)
    if args.json:
        print(json.dumps({"results": results, "errors": errors}, indent=2))
        return 1 if failed else 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fedscore benchmarks" + (" (quick)" if args.quick else ""))
    for col in ("bench", "case", "target", "ok", "figures"):
        table.add_column(col, overflow="fold")
    for name in names:
        for r in results[name]:
            ok = r.get("ok")
            table.add_row(name, str(r.get("case", "")), str(r.get("target", "")),
                          "" if ok is None else ("PASS" if ok else "FAIL"), _figures(r))
        if name in errors:
            table.add_row(name, "(error)", "", "FAIL", errors[name])
    Console(width=max(160, Console().width)).print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
