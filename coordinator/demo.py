"""``fedscore demo``: a whole consortium on this machine, end to end, with a report.

Every stage runs the same ``fedscore`` sub-command a real party would run, as its own process, so
the demo exercises the real boundaries (the coordinator never imports participant code) and each
stage's full output lands in ``<out>/logs/<stage>.log``. Background services the demo starts
(scoring gateway, responders) are stopped on exit, also on failure or Ctrl-C. Re-running is safe:
the output folder is rebuilt from scratch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=False)


class DemoStageFailed(RuntimeError):
    """A stage's command failed; the message names the stage and its log file."""


@dataclass
class DemoContext:
    """What stages share: paths, collected results, background processes to stop."""

    out: Path
    enterprises: int
    seed: int
    console: Console
    results: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    timings: list[tuple[str, float, str]] = field(default_factory=list)
    services: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            FLWR_TELEMETRY_ENABLED="0",
            FLWR_DISABLE_UPDATE_CHECK="1",
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            PYTHONUNBUFFERED="1",
        )
        return env

    def fedscore(self, stage: str, *args: str, parse_json: bool = False, timeout: float = 900) -> Any:
        """Run ``fedscore ARGS`` as a process; its output goes to the stage log. Returns parsed JSON."""
        cmd = [sys.executable, "-m", "fedscore", *args]
        log = self.logs / f"{stage}.log"
        with log.open("ab") as fh:
            fh.write(f"$ fedscore {' '.join(args)}\n".encode())
            fh.flush()
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, env=self.env(), timeout=timeout)
            fh.write(proc.stdout)
        if proc.returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise DemoStageFailed(f"stage {stage!r}: `fedscore {args[0]}` exited {proc.returncode} "
                                  f"(log: {log})\n" + "\n".join(tail))
        if parse_json:
            try:
                return json.loads(proc.stdout)
            except json.JSONDecodeError as exc:
                raise DemoStageFailed(f"stage {stage!r}: output is not JSON ({exc}); log: {log}") from None
        return proc.stdout.decode(errors="replace")

    def start_service(self, stage: str, *args: str) -> subprocess.Popen[bytes]:
        """Start a long-lived ``fedscore`` process (its own session, so it stops with its children)."""
        log = (self.logs / f"{stage}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedscore", *args],
            stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True,
        )
        self.services.append(proc)
        return proc

    def stop_services(self) -> None:
        for proc in reversed(self.services):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + 10
        for proc in self.services:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.services.clear()


@dataclass(frozen=True)
class Stage:
    key: str
    title: str
    run: Callable[[DemoContext], str]
    """Does the work, stores what the report needs in ``ctx.results``, returns a one-line summary."""


def run_stages(ctx: DemoContext, stages: Sequence[Stage]) -> None:
    total = len(stages)
    try:
        for i, stage in enumerate(stages, start=1):
            with ctx.console.status(f"[bold]{i}/{total}[/] {stage.title}…"):
                started = time.monotonic()
                summary = stage.run(ctx)
                elapsed = time.monotonic() - started
            ctx.timings.append((stage.title, elapsed, summary))
            ctx.console.print(f"[green]✓[/] {i}/{total} {stage.title} [dim]({elapsed:.1f} s)[/] {summary}")
    finally:
        ctx.stop_services()


def summary_table(ctx: DemoContext) -> Table:
    table = Table(title="fedscore demo", show_lines=False)
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("result")
    for title, seconds, summary in ctx.timings:
        table.add_row(title, f"{seconds:.1f}", summary)
    table.add_row("[bold]total[/]", f"[bold]{sum(t for _, t, _ in ctx.timings):.1f}[/]", "")
    return table


def default_stages() -> list[Stage]:
    from coordinator.demo_stages import STAGES

    return list(STAGES)


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("out/demo"), help="Output folder (rebuilt on every run)."),
    enterprises: int = typer.Option(3000, min=500, help="Synthetic SMEs in the consortium."),
    seed: int = typer.Option(7, help="Seed of the synthetic world and of training."),
    horizontal_config: Optional[Path] = typer.Option(
        None, "--horizontal-config", help="Also run horizontal training on this multi-bank consortium TOML."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the stage summary as JSON."),
) -> None:
    """Run a whole consortium on this machine: data, PSI, training, consent, encrypted scoring, audit, report."""
    console = Console(stderr=as_json)
    if out.exists():
        shutil.rmtree(out)
    (out / "logs").mkdir(parents=True)
    ctx = DemoContext(out=out.resolve(), enterprises=enterprises, seed=seed, console=console,
                      options={"horizontal_config": horizontal_config.resolve() if horizontal_config else None})
    try:
        run_stages(ctx, default_stages())
    except DemoStageFailed as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps({
            "stages": [{"stage": t, "seconds": round(s, 2), "result": r} for t, s, r in ctx.timings],
            "report": str(ctx.out / "report" / "index.html"),
            "results": ctx.results,
        }, indent=1, default=str))
    else:
        console.print(summary_table(ctx))
        console.print(f"Report: [bold]{ctx.out / 'report' / 'index.html'}[/]")
