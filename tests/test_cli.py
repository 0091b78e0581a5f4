"""The ``fedscore`` command: exit codes and one-line errors, run as a real process."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedscore", *args], capture_output=True, text=True, timeout=120
    )


def test_uscc_validate_all_valid_exits_zero() -> None:
    result = run("uscc", "validate", "91350100M000100Y43", "91440300708461136T")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("valid") == 2


def test_uscc_validate_reports_each_code_and_fails_on_any_invalid() -> None:
    result = run("uscc", "validate", "91350100M000100Y43", "91350100M000100Y44")
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 2
    assert "check digit expected 3 got 4" in lines[1]
    assert "Traceback" not in result.stdout + result.stderr


def test_uscc_validate_json() -> None:
    import json

    result = run("uscc", "validate", "--json", "91350100M000100Y43", "913501")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["valid"] for r in rows] == [True, False]
    assert rows[1]["reason"] == "length must be 18, got 6"
    assert result.returncode == 1
