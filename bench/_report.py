"""The command line every ``bench_*`` module shares: ``--quick``, ``--json``, then a table or JSON rows."""

from __future__ import annotations

import argparse
import json
from typing import Callable


def bench_parser(prog: str, doc: str | None, quick_help: str) -> argparse.ArgumentParser:
    """A parser with the two options every benchmark takes; the caller adds its own."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    return parser


def report(rows: list[dict], as_json: bool, print_table: Callable[[list[dict]], None]) -> int:
    """Print ``rows`` as indented JSON or through ``print_table``; the exit code (always 0)."""
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)
    return 0
