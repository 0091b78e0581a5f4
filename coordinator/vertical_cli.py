"""``fedscore train vertical``: PSI → split training → evaluation → registry, on Flower's simulation engine.

One command runs the whole consortium on this machine: a simulation SuperLink (TLS on loopback) and
one virtual SuperNode per data holder of the consortium file, each reading only its own folder. The
coordinator's registry and the run summary go to ``--state-dir``; each participant's state (keys,
and its bottom model in ``<state-dir>/nodes/<participant>/models``) to its own folder below it.
The command fails (non-zero exit) when the run does not complete.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from protocols.consortium import load_consortium, parse_widths
from protocols.errors import ConfigError, ProtocolViolation
from protocols.feature_schemas import month_index

_ROUND = re.compile(r"vertical round (\d+)/(\d+)")
_STAGE = re.compile(r"vertical stage (\w+): (\d+) round")


def app_config_keys(app_dir: Path) -> set[str]:
    """Run-config keys the Flower app declares (overrides of other keys are refused by Flower)."""
    doc = tomllib.loads((app_dir / "pyproject.toml").read_text())
    return set(doc.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}))


def build_run_config(
    consortium: Path,
    *,
    state_dir: Path,
    result_file: Path,
    epochs: int,
    top: str,
    model: str,
    hidden: str,
    out_dim: int | None,
    lr: float,
    batch_size: int,
    label_dp_sigma: float,
    label_dp_clip: float,
    seed: int,
    as_of: str | None,
    source_dropout: float | None = None,
    batches_per_round: int | None = None,
    approve_below_pd: float | None = None,
    model_name: str,
    declared: set[str],
) -> dict[str, Any]:
    """Map CLI options onto run-config keys; plan fields without a shared key ride in ``vertical-plan``."""
    cfg: dict[str, Any] = {
        "mode": "vertical",
        "consortium": str(consortium.resolve()),
        "model": model,
        "mlp-hidden": hidden,
        "local-epochs": epochs,
        "lr": lr,
        "batch-size": batch_size,
        "seed": seed,
        "dp-noise": label_dp_sigma,
        "dp-clip": label_dp_clip,
        "state-dir": str(state_dir.resolve()),
        "result-file": str(result_file.resolve()),
        "node-state-root": str((state_dir / "nodes").resolve()),
        "model-name": model_name,
    }
    extra: dict[str, Any] = {}
    if top != "linear":
        extra["top_kind"] = top
    if out_dim is not None:
        extra["out_dim"] = out_dim
    if source_dropout is not None:
        extra["source_dropout"] = source_dropout
    if batches_per_round is not None:
        extra["batches_per_round"] = batches_per_round
    if approve_below_pd is not None:
        extra["approve_below_pd"] = approve_below_pd
    if extra:
        cfg["vertical-plan"] = json.dumps(extra)
    if as_of:
        cfg["as-of"] = as_of
    unknown = sorted(set(cfg) - declared)
    if unknown:
        raise ConfigError(f"the Flower app config does not declare run-config key(s) {unknown}")
    return cfg


def challenger_text(summary: dict[str, Any]) -> str:
    """The label holder's own-features model on the same rows, and what federation adds to lending."""
    alone = summary.get("label_holder_alone")
    if not alone:
        return ""
    text = f"\n{summary['label_holder']} alone (same recipe, same rows): AUC {alone['auc']:.4f}"
    lending = alone.get("lending")
    if lending:
        text += (f"; approving PD < {alone['approve_below_pd']:.0%} ({lending['approval_rate']:.0%} of applicants) "
                 f"its bad rate is {lending['bad_rate_reference']:.2%}, federated {lending['bad_rate_candidate']:.2%}; "
                 f"at its bad rate the federated model approves {lending['extra_approvals']:+.1%}")
    return text


def metrics_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"vertical training {summary.get('version') or ''} — validation ({summary['val_rows']:,} held-out rows)")
    for col in ("enterprises", "n", "defaults", "AUC", "KS", "Gini"):
        table.add_column(col, justify="left" if col == "enterprises" else "right")
    labels = {"all": "all", "full_coverage": "known to every holder", "partial_coverage": "missing at some holder"}
    for key, label in labels.items():
        m = summary["metrics"].get(key)
        if m is None:
            table.add_row(label, "-", "-", "-", "-", "-")
        else:
            table.add_row(label, f"{int(m['n']):,}", f"{int(m['positives']):,}", f"{m['auc']:.4f}", f"{m['ks']:.4f}",
                          f"{m['gini']:.4f}")
    stages = ", ".join(f"{k} {v['rounds']} rounds / {v['seconds']:.1f}s" for k, v in summary["stages"].items())
    dp = summary.get("label_dp")
    dp_text = f"; label DP σ={dp['sigma']:g}: ε={dp['epsilon']:.2f} (δ={dp['delta']:g})" if dp else "; label DP off"
    matched = ", ".join(f"{p} {n:,}" for p, n in summary["matched"].items())
    table.caption = (f"universe {summary['universe']:,} ({summary['label_holder']}); shared: {matched}\n"
                     f"{stages}; total {summary['total_rounds']} rounds, {summary['seconds']:.1f}s{dp_text}; "
                     f"top {summary['top_kind']}{challenger_text(summary)}")
    return table


def register(train_app: typer.Typer) -> None:
    """Add ``vertical`` to the ``train`` command group."""

    @train_app.command("vertical")
    def vertical(
        config: Path = typer.Option(..., "--config", "-c", exists=True, dir_okay=False, help="Consortium TOML (mode vertical)."),
        as_of: Optional[str] = typer.Option(None, "--as-of", help="Feature/label month YYYY-MM (default: the consortium's)."),
        epochs: int = typer.Option(40, "--epochs", min=1, help="Passes over the training rows."),
        top: str = typer.Option("linear", "--top", help="HE-friendly top: linear or poly."),
        bottom: str = typer.Option("mlp", "--bottom", help="Bottom models: mlp or linear."),
        hidden: str = typer.Option("32,16", "--hidden", help="MLP bottom hidden widths, comma-separated."),
        out_dim: int = typer.Option(8, "--out-dim", min=1, max=64, help="Bottom output width (the width of Z)."),
        lr: float = typer.Option(0.003, "--lr", help="Adam learning rate of every bottom and the top."),
        batch_size: int = typer.Option(1024, "--batch-size", min=16),
        source_dropout: Optional[float] = typer.Option(
            None, "--source-dropout", min=0.0, max=0.95,
            help="Chance a non-label source is hidden per row in training, so partial coverage still scores (default 0.15)."),
        batches_per_round: Optional[int] = typer.Option(
            None, "--batches-per-round", min=1, help="Mini-batches per Flower round: fewer rounds vs staler gradients (default 4)."),
        approve_below_pd: Optional[float] = typer.Option(
            None, "--approve-below-pd", min=0.001, max=0.999,
            help="Lending policy for the label holder's challenger report: approve below this PD (default 0.07, grades A-C)."),
        label_dp_sigma: float = typer.Option(0.0, "--label-dp-sigma", min=0.0, help="Label DP noise multiplier (0 = off)."),
        label_dp_clip: float = typer.Option(1.0, "--label-dp-clip", min=1e-6),
        seed: int = typer.Option(0, "--seed"),
        model_name: str = typer.Option("vertical-credit", "--model-name"),
        state_dir: Path = typer.Option(Path(".fedscore/coordinator"), "--state-dir", help="Registry, run summaries, node state."),
        timeout: float = typer.Option(3600.0, "--timeout", help="Seconds before the run is abandoned."),
        as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
    ) -> None:
        """Align the consortium's enterprises with PSI, train the split model, evaluate, register."""
        from coordinator.workflows.launch import APP_DIR, simulate
        from coordinator.workflows.vertical import config_from

        if top not in ("linear", "poly"):
            raise ConfigError(f"--top must be linear or poly, not {top!r}")
        if bottom not in ("mlp", "linear"):
            raise ConfigError(f"--bottom must be mlp or linear, not {bottom!r}")
        parse_widths(hidden, "--hidden")
        if as_of:
            try:
                month_index(as_of)
            except ConfigError as exc:
                raise ConfigError(f"--as-of: {exc}") from None
        cfg = load_consortium(config)
        if cfg.mode != "vertical":
            raise ConfigError(f"{config}: consortium {cfg.name!r} is {cfg.mode}, not vertical")
        state_dir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="sim-", dir=state_dir))
        result_file = workdir / "summary.json"
        run_config = build_run_config(
            config, state_dir=state_dir, result_file=result_file, epochs=epochs, top=top,
            model="mlp" if bottom == "mlp" else "logistic", hidden=hidden, out_dim=out_dim, lr=lr,
            batch_size=batch_size, label_dp_sigma=label_dp_sigma, label_dp_clip=label_dp_clip, seed=seed,
            as_of=as_of, model_name=model_name, declared=app_config_keys(APP_DIR),
            source_dropout=source_dropout, batches_per_round=batches_per_round, approve_below_pd=approve_below_pd)
        try:  # what the coordinator would refuse (--lr 0 …) is refused before anything starts
            config_from(run_config).plan()
        except ConfigError:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        console = Console(stderr=as_json)
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      console=console, transient=True, disable=as_json) as progress:
            task = progress.add_task("starting simulation", total=None)

            def on_log(line: str) -> None:
                if (m := _ROUND.search(line)) is not None:
                    progress.update(task, description="training", completed=int(m[1]), total=int(m[2]))
                elif (m := _STAGE.search(line)) is not None:
                    progress.update(task, description=f"{m[1]} done")

            # the whole workdir (TLS material included) stays for inspection, as it always has
            record = simulate(config, run_config, workdir, timeout=timeout, on_log=on_log, keep_tls=True)
        if record.get("status") != "finished:completed" or not result_file.exists():
            logs = (workdir / "logs" / "superlink.log")
            tail = logs.read_text(errors="replace")[-1500:] if logs.exists() else ""
            raise ProtocolViolation(f"vertical run ended {record.get('status')!r}; logs in {workdir}\n{tail}")
        summary = json.loads(result_file.read_text())
        final = Path(state_dir) / "runs" / str(summary["run_id"])
        final.mkdir(parents=True, exist_ok=True)
        shutil.copy(result_file, final / "vertical-summary.json")
        if as_json:
            typer.echo(json.dumps(summary))
        else:
            console.print(metrics_table(summary))
            console.print(f"summary: {final / 'vertical-summary.json'}")


__all__ = ["register", "build_run_config", "metrics_table", "app_config_keys"]
