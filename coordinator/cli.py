"""Sub-commands the consortium operator runs: ``train``, ``models``, ``certs``.

``fedscore train horizontal`` runs the whole consortium on this machine on Flower's simulation
engine: a simulation SuperLink (TLS on loopback, certificates from :mod:`crypto.tls`) and one
virtual SuperNode per data holder, each reading only its own files. It follows the run log for
progress, exits non-zero if the run did not complete, and prints the summary (``--json`` for
machines). ``--baseline`` also trains the same model centrally on the pooled rows -- a yardstick
for public benchmark data only, since it reads every participant's files.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from coordinator.registry import ModelRegistry
from protocols.consortium import load_consortium, parse_widths
from protocols.errors import ConfigError, ProtocolViolation

app = typer.Typer(no_args_is_help=True)
train_app = typer.Typer(help="Train a credit model across the consortium.", no_args_is_help=True)
models_app = typer.Typer(help="The coordinator's model registry.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(models_app, name="models")

_ROUND = re.compile(r"round (\d+)/(\d+)")
DEFAULT_STATE = Path(".fedscore/coordinator")


# --- train horizontal ------------------------------------------------------------------------
def horizontal_run_config(
    consortium: Path,
    *,
    state_dir: Path,
    result_file: Path,
    node_state_root: Path,
    options: dict[str, Any],
) -> dict[str, Any]:
    """The ``--run-config`` for one horizontal simulation run."""
    cfg = load_consortium(consortium)
    if cfg.mode != "horizontal":
        raise ConfigError(f"{consortium}: consortium {cfg.name!r} is {cfg.mode}, not horizontal")
    holders = len(cfg.data_holders)
    run_config: dict[str, Any] = {
        "mode": "horizontal",
        "consortium": str(Path(consortium).resolve()),
        "state-dir": str(state_dir.resolve()),
        "result-file": str(result_file.resolve()),
        "node-state-root": str(node_state_root.resolve()),
        "expect-nodes": holders,
        "min-nodes": min(int(options.pop("min-nodes", holders)), holders),
    }
    run_config.update({k: v for k, v in options.items() if v is not None})
    return run_config


def pooled_baseline(consortium: Path, run_config: dict[str, Any]) -> dict[str, float]:
    """Centralised yardstick: the same model trained to convergence on all training rows pooled.

    Uses each participant's training part exactly as the federated run splits it (same seed and
    validation fraction), trains with early stopping, evaluates on the common test file. Reads every participant's files, so
    it is meant for public benchmark data, never for a real consortium.
    """
    import numpy as np
    import pandas as pd
    from sklearn.model_selection import train_test_split

    from models import LogisticRegression, MLP, TrainConfig, fit
    from models.metrics import evaluate
    from models.training import predict_proba, seed_everything

    cfg = load_consortium(consortium)
    seed = int(run_config.get("seed", 42))
    val_fraction = float(run_config.get("val-fraction", 0.2))

    def read(path: Path, feats: Any) -> tuple[np.ndarray, np.ndarray]:
        frame = pd.read_csv(path)
        cols = [*feats.mapping.keys(), *feats.columns]
        return frame[cols].to_numpy(dtype=np.float64), frame[feats.label_column].to_numpy(dtype=np.float64)

    xs, ys = [], []
    for p in cfg.data_holders:
        assert p.features is not None and p.data_dir is not None
        x, y = read(Path(p.data_dir) / p.features.records_file, p.features)
        x_tr, _, y_tr, _ = train_test_split(x, y, test_size=val_fraction, random_state=seed, stratify=y)
        xs.append(x_tr)
        ys.append(y_tr)
    first = cfg.data_holders[0]
    test = str(run_config.get("test-data", ""))
    if not test:
        raise ConfigError("--baseline needs --test-file (the common evaluation set)")
    test_path = Path(test) if Path(test).is_absolute() else Path(first.data_dir) / test  # type: ignore[arg-type]
    x_te, y_te = read(test_path, first.features)
    x_all, y_all = np.concatenate(xs), np.concatenate(ys)

    # Trained to convergence with early stopping: the best the same model does on pooled rows.
    seed_everything(seed)
    if run_config.get("model", "logistic") == "logistic":
        model = LogisticRegression(x_all.shape[1])
        train_cfg = TrainConfig(epochs=300, lr=0.05, batch_size=None, patience=20, seed=seed)
    else:
        hidden = parse_widths(run_config.get("mlp-hidden", "32,16"), "--mlp-hidden")
        model = MLP(x_all.shape[1], hidden=hidden)
        train_cfg = TrainConfig(epochs=60, lr=3e-3, batch_size=1024, weight_decay=1e-4, patience=6, seed=seed)
    result = fit(model, x_all, y_all, train_cfg)
    m = evaluate(y_te, predict_proba(model, x_te))
    return {"test-auc": m.auc, "test-ks": m.ks, "test-gini": m.gini, "epochs": float(result.best_epoch)}


def _summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"horizontal model {summary.get('version') or '(unregistered)'} — run {summary['run_id']}")
    for col in ("participant", "val AUC", "val KS", "val Gini", "test AUC", "test KS"):
        table.add_column(col, justify="right" if col != "participant" else "left")
    for name, m in sorted(summary["final"].items()):
        table.add_row(name, *[f"{m[k]:.4f}" if k in m else "-" for k in
                              ("val-auc", "val-ks", "val-gini", "test-auc", "test-ks")])
    agg = summary["final_aggregated"]
    table.add_row("[b]weighted[/]", *[f"{agg[k]:.4f}" if k in agg else "-" for k in
                                      ("val-auc", "val-ks", "val-gini", "test-auc", "test-ks")])
    dropped = "; ".join(f"{k}: {', '.join(v)}" for k, v in summary.get("dropped", {}).items()) or "none"
    privacy = summary.get("privacy")
    dp = (f"DP (ε={privacy['epsilon']:.3f}, δ={privacy['delta']:g})" if privacy else "no DP noise")
    table.caption = (f"{len(summary['rounds'])} rounds, {summary['seconds']:.1f}s; key holder {summary['key_holder']}; "
                     f"coordinator decrypt attempt: {summary['coordinator_decrypt_check']}; dropped: {dropped}; {dp}")
    return table


@train_app.command("horizontal")
def train_horizontal(
    config: Path = typer.Option(..., "--config", "-c", exists=True, dir_okay=False, help="Consortium TOML (mode horizontal)."),
    rounds: int = typer.Option(5, "--rounds", min=1, help="Federated rounds."),
    model: str = typer.Option("logistic", "--model", help="logistic or mlp."),
    mlp_hidden: str = typer.Option("32,16", "--mlp-hidden", help="MLP hidden widths, comma-separated."),
    strategy: str = typer.Option("fedavg", "--strategy", help="fedavg or fedprox."),
    proximal_mu: float = typer.Option(0.01, "--mu", min=0.0, help="FedProx proximal coefficient."),
    local_epochs: int = typer.Option(2, "--local-epochs", min=1),
    lr: float = typer.Option(0.01, "--lr"),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    dp_noise: float = typer.Option(0.0, "--dp-noise", min=0.0, help="Gaussian noise multiplier z (0 = off)."),
    dp_clip: float = typer.Option(1.0, "--dp-clip", min=1e-9, help="L2 clip of each update."),
    dp_delta: float = typer.Option(1e-5, "--dp-delta"),
    min_nodes: Optional[int] = typer.Option(None, "--min-nodes", min=1, help="Proceed while this many answer (default: all)."),
    plaintext: bool = typer.Option(False, "--plaintext", help="Comparison only: aggregate in the clear."),
    publish: bool = typer.Option(False, "--publish", help="Key holder uploads the final model to the registry."),
    test_file: str = typer.Option("", "--test-file", help="Common evaluation file (in each holder's data dir)."),
    baseline: bool = typer.Option(False, "--baseline", help="Also train centrally on pooled rows (benchmark data only)."),
    seed: int = typer.Option(42, "--seed"),
    model_name: str = typer.Option("horizontal-credit", "--model-name"),
    parent: str = typer.Option("", "--parent", help="Registry version this one continues (name:vN)."),
    state_dir: Path = typer.Option(DEFAULT_STATE, "--state-dir", help="Registry, run summaries, node state."),
    timeout: float = typer.Option(3600.0, "--timeout", help="Seconds before the run is abandoned."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
) -> None:
    """Encrypted FedAvg/FedProx across the consortium's banks; registers the model version."""
    from coordinator.workflows.horizontal import config_from
    from coordinator.workflows.launch import simulate

    if model not in ("logistic", "mlp"):
        raise ConfigError(f"--model must be logistic or mlp, not {model!r}")
    if strategy not in ("fedavg", "fedprox"):
        raise ConfigError(f"--strategy must be fedavg or fedprox, not {strategy!r}")
    parse_widths(mlp_hidden, "--mlp-hidden")
    options: dict[str, Any] = {
        "rounds": rounds, "model": model, "mlp-hidden": mlp_hidden, "strategy": strategy, "proximal-mu": proximal_mu,
        "local-epochs": local_epochs, "lr": lr, "batch-size": batch_size, "dp-noise": dp_noise, "dp-clip": dp_clip,
        "dp-delta": dp_delta, "encrypted": not plaintext, "publish-model": publish, "test-data": test_file,
        "seed": seed, "model-name": model_name, "parent-version": parent,
    }
    if min_nodes is not None:
        options["min-nodes"] = min_nodes
    config_from(options)  # what the run would refuse (--lr 0, --dp-delta 1 …) is refused before anything starts
    state_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="sim-", dir=state_dir))
    result_file = workdir / "summary.json"
    run_config = horizontal_run_config(config, state_dir=state_dir, result_file=result_file,
                                       node_state_root=state_dir / "nodes", options=options)
    console = Console(stderr=as_json)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=as_json) as progress:
        task = progress.add_task("starting simulation", total=None)

        def on_log(line: str) -> None:
            if (m := _ROUND.search(line)) is not None and "horizontal" not in line:
                progress.update(task, description=f"round {m[1]}/{m[2]}", completed=int(m[1]), total=int(m[2]))
            elif "dropped" in line:
                progress.console.print(f"[yellow]{line.strip()}[/]")

        record = simulate(config, run_config, workdir, timeout=timeout, on_log=on_log)
    if record.get("status") != "finished:completed" or not result_file.exists():
        tail = "\n".join(str(record.get("log", "")).splitlines()[-25:])
        raise ProtocolViolation(f"horizontal run ended {record.get('status')!r}; files in {workdir}\n{tail}")
    summary = json.loads(result_file.read_text())
    summary["files"] = {"summary": str(result_file), "report": str(workdir / "report.html")}
    if baseline:
        pooled = pooled_baseline(config, run_config)
        fed = summary["final_aggregated"].get("test-auc")
        summary["baseline"] = {"pooled": pooled, "federated_test_auc": fed,
                               "auc_gap": None if fed is None else pooled["test-auc"] - fed}
    if as_json:
        typer.echo(json.dumps(summary))
        return
    console.print(_summary_table(summary))
    if baseline:
        b = summary["baseline"]
        console.print(f"pooled centralised test AUC {b['pooled']['test-auc']:.4f} vs federated "
                      f"{b['federated_test_auc']:.4f}: gap {b['auc_gap']:+.4f}")
    console.print(f"report: {workdir / 'report.html'}")


# --- models ------------------------------------------------------------------------------------
@models_app.command("list")
def models_list(
    state_dir: Path = typer.Option(DEFAULT_STATE, "--state-dir"),
    name: Optional[str] = typer.Option(None, "--name"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every registered model version, newest first."""
    versions = ModelRegistry(state_dir, create=False).list(name)
    if as_json:
        typer.echo(json.dumps([v.model_dump() for v in versions]))
        return
    table = Table(title=f"model registry ({state_dir})")
    for col in ("ref", "kind", "status", "parent", "created", "AUC", "weights at"):
        table.add_column(col, no_wrap=col == "ref")
    for v in versions:
        final = v.metrics.get("final") or {}
        auc = final.get("test-auc", final.get("val-auc", final.get("auc")))
        where = "registry" if "registry" in v.weights_location else ", ".join(v.weights_location.get("participants", [])) or "-"
        table.add_row(v.ref, v.kind, v.status, v.parent or "-", v.created_at[:16].replace("T", " "),
                      f"{auc:.4f}" if isinstance(auc, (int, float)) else "-", where)
    Console().print(table)


@models_app.command("show")
def models_show(
    ref: str = typer.Argument(..., help="name:vN, a row id, or a name (latest ready)."),
    state_dir: Path = typer.Option(DEFAULT_STATE, "--state-dir"),
) -> None:
    """One version in full (config, participants, metrics, lineage, where its weights are)."""
    typer.echo(json.dumps(ModelRegistry(state_dir, create=False).get(ref).model_dump(), indent=2))


# --- certs -------------------------------------------------------------------------------------
@app.command("certs")
def certs(
    out: Path = typer.Option(..., "--out", help="Directory to write into (created)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", exists=True, dir_okay=False,
                                          help="Consortium TOML: one responder cert and node key per participant."),
    participant: list[str] = typer.Option([], "--participant", "-p", help="Participant name (repeatable)."),
    host: list[str] = typer.Option([], "--host", help="SAN host/IP of the servers (default 127.0.0.1, localhost)."),
    lender: str = typer.Option("lender", "--lender", help="Name in the lender's client certificate."),
    days: int = typer.Option(365, "--days", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print the paths written (never key material) as JSON."),
) -> None:
    """CA, SuperLink server cert, scoring gateway/responder/lender certs (mutual TLS), SuperNode keys."""
    from crypto.tls import DEFAULT_HOSTS, write_deployment_pki

    names = list(participant)
    if config is not None:
        names += [p.name for p in load_consortium(config).participants if p.name not in names]
    if not names:
        raise ConfigError("name the participants with --config or --participant")
    pki = write_deployment_pki(out, names, hosts=tuple(host) or DEFAULT_HOSTS, lender=lender, days=days)
    if as_json:
        def paths(tree: dict[str, Any]) -> dict[str, Any]:
            return {k: paths(v) if isinstance(v, dict) else str(out / v) for k, v in tree.items()}

        typer.echo(json.dumps({"out": str(out), "manifest": str(out / "pki.json"), **paths(pki.manifest())}))
        return
    console = Console()
    console.print(f"CA                {pki.ca_cert}  (keep {pki.ca_key.name} offline)")
    console.print(f"SuperLink         {pki.superlink_cert}")
    console.print(f"scoring gateway   {pki.gateway_cert}")
    for n in names:
        console.print(f"{n:<17} responder {pki.responder_certs[n].name}, node key {pki.supernode_public_keys[n].name}")
    console.print(f"manifest          {out / 'pki.json'}")


def _mount_optional() -> None:
    """Commands other modules add to the ``train`` group (present only when installed)."""
    try:
        from coordinator import vertical_cli
    except ModuleNotFoundError as exc:
        if exc.name != "coordinator.vertical_cli":
            raise
        return
    vertical_cli.register(train_app)


_mount_optional()
