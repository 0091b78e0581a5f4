"""Sub-commands for things every role shares: enterprise identifiers."""

from __future__ import annotations

import json

import typer
from rich.console import Console

from protocols.errors import InvalidUSCC
from protocols.uscc import validate_uscc

app = typer.Typer(no_args_is_help=True)
uscc_app = typer.Typer(help="Unified social credit codes (GB 32100-2015).", no_args_is_help=True)
app.add_typer(uscc_app, name="uscc")


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
