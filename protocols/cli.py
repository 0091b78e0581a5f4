"""Sub-commands for things every role shares: enterprise identifiers; option parsing every role's
commands share (the role packages cannot import each other's CLI helpers)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import typer
from rich.console import Console

from protocols.errors import ConfigError, InvalidUSCC
from protocols.uscc import validate_uscc

app = typer.Typer(no_args_is_help=True)
uscc_app = typer.Typer(help="Unified social credit codes (GB 32100-2015).", no_args_is_help=True)
app.add_typer(uscc_app, name="uscc")


def parse_instant(text: str, option: str) -> datetime:
    """ISO date or date-time for a command option; without a zone it is taken as UTC."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an ISO date (2025-03-01) or date-time", param_hint=option) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def check_writable(path: Path, option: str) -> None:
    """Refuse an output file that cannot be written, before anything is recorded that it should hold."""
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a directory")
    if not path.parent.is_dir():
        raise ConfigError(f"{option} {path}: no such folder {path.parent}")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise ConfigError(f"{option} {path}: not writable")


@uscc_app.command("validate")
def validate(
    codes: list[str] = typer.Argument(..., help="One or more 18-character codes."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per code on stdout."),
) -> None:
    """Check each code's alphabet and check digit; exit 1 if any is invalid."""
    console = Console(highlight=False)
    failed = 0
    for code in codes:
        try:
            normalised = validate_uscc(code)
            row = {"code": normalised, "valid": True, "reason": None}
        except InvalidUSCC as exc:
            failed += 1
            row = {"code": code, "valid": False, "reason": exc.rule}
        if as_json:
            print(json.dumps(row, ensure_ascii=False))
        elif row["valid"]:
            console.print(f"[green]valid[/]    {row['code']}")
        else:
            console.print(f"[red]invalid[/]  {code}: {row['reason']}")
    if failed:
        raise typer.Exit(1)
