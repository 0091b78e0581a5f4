"""``fedscore synth``: generate (or advance) a synthetic SME consortium on disk."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from participants.synth.writer import SynthSummary, advance, generate

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _table(summary: SynthSummary) -> Table:
    table = Table(title=f"synthetic consortium as of {summary.as_of} -> {summary.out}")
    for column in ("participant", "enterprises", "coverage", "rows", "months"):
        table.add_column(column, justify="left" if column == "participant" else "right")
    for s in summary.sources:
        table.add_row(s.participant, f"{s.enterprises:,}", f"{s.coverage:.1%}", f"{s.rows:,}",
                      f"{s.first_month}..{s.last_month}")
    table.caption = (f"{summary.enterprises:,} enterprises, seed {summary.seed}; labels at the bank: "
                     f"{summary.label_customers:,} customers, {summary.label_positives:,} defaults "
                     f"within 12 months ({summary.base_rate:.2%}); {summary.seconds:.1f} s")
    return table


@app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", help="Output folder (one sub-folder per participant)."),
    enterprises: int = typer.Option(20_000, "--enterprises", "-n", help="Enterprises simulated."),
    seed: int = typer.Option(0, "--seed", help="Random seed (output is deterministic given it)."),
    months: int = typer.Option(24, "--months", help="Months of records written, ending at --as-of."),
    as_of: str = typer.Option("2024-12", "--as-of", help="Last written month, YYYY-MM."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty foreign folder."),
    advance_world: bool = typer.Option(
        False, "--advance", help="Advance an existing synth folder instead of generating one."),
    steps: int = typer.Option(1, "--steps", help="Months to advance with --advance."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Simulate SMEs seen by a bank, the tax authority, a platform and a utility; write each
    holder's data to its own folder plus consortium.toml (labels exist only at the bank)."""
    console = Console(stderr=as_json)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True, disable=as_json) as progress:
        task = progress.add_task("starting", total=None)

        def note(step: str) -> None:
            progress.update(task, description=step)

        if advance_world:
            summary = advance(out, steps, progress=note)
        else:
            summary = generate(out, enterprises=enterprises, seed=seed, months=months,
                               as_of=as_of, force=force, progress=note)
    if as_json:
        typer.echo(json.dumps(summary.to_dict()))
    else:
        console.print(_table(summary))
