"""``fedscore baseline``: centralised yardsticks on the public data sets and on synthetic data."""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from models.errors import ModelError
from participants.datasets.errors import DatasetError

app = typer.Typer(no_args_is_help=True)


class DatasetName(str, Enum):
    fate_vertical = "fate-vertical"
    fate_horizontal = "fate-horizontal"
    polish = "polish"
    synth = "synth"


def baseline_rows(dataset: DatasetName, config: Path | None, seed: int, test_size: float) -> list[_baseline.BaselineRow]:
    """Load ``dataset`` and run the matching baseline (pure function behind the command)."""
    from participants.datasets import baseline as _baseline  # torch and scikit-learn load only here

    from protocols.consortium import load_consortium

    if dataset is DatasetName.fate_vertical:
        from participants.datasets import fate

        path = config or fate.VERTICAL_CONFIG
        frames, labels = fate.load_fate_vertical(path)
        return _baseline.run_vertical(dataset.value, frames, labels, load_consortium(path).label_holder.name,
                            test_size=test_size, seed=seed)
    if dataset is DatasetName.fate_horizontal:
        from participants.datasets import fate

        path = config or fate.HORIZONTAL_CONFIG
        frames, labels = fate.load_fate_horizontal(path)
        parts = {name: (frame, labels.loc[frame.index]) for name, frame in frames.items()}
        return _baseline.run_horizontal(dataset.value, parts, fate.load_fate_horizontal_test(path), seed=seed)
    if dataset is DatasetName.polish:
        from participants.datasets import polish

        path = config or polish.VERTICAL_CONFIG
        frames, labels = polish.load_polish_vertical(path)
        return _baseline.run_vertical(dataset.value, frames, labels, load_consortium(path).label_holder.name,
                            test_size=test_size, seed=seed, winsorise=polish.WINSORISE)
    if config is None:
        raise DatasetError("--dataset synth needs --config PATH (a consortium written by `fedscore synth`)")
    return synth_rows(config, seed, test_size)


def synth_rows(config: Path, seed: int, test_size: float) -> list[_baseline.BaselineRow]:
    from participants.datasets import baseline as _baseline  # torch and scikit-learn load only here

    try:
        from participants.datastore import load_consortium_frames
    except ImportError as exc:  # the synthetic data store is a separate module
        raise DatasetError(f"synthetic data store unavailable: {exc}") from None
    from protocols.consortium import load_consortium

    cfg = load_consortium(config)
    frames, labels = load_consortium_frames(config)
    name = f"synth:{cfg.name}"
    if cfg.mode == "vertical":
        return _baseline.run_vertical(name, frames, labels, cfg.label_holder.name, test_size=test_size, seed=seed,
                            winsorise=(0.005, 0.995))
    parts, test = _baseline.split_horizontal(frames, labels, test_size, seed)
    return _baseline.run_horizontal(name, parts, test, seed=seed, winsorise=(0.005, 0.995))


def render(rows: list[_baseline.BaselineRow], console: Console) -> None:
    """One table per dataset: features x model -> AUC / KS / Gini."""
    for dataset in dict.fromkeys(r.dataset for r in rows):
        subset = [r for r in rows if r.dataset == dataset]
        first = subset[0]
        table = Table(title=f"{dataset}: train {first.n_train:,}, test {first.n_test:,} "
                            f"({first.test_positives:,} bad)")
        for column, justify in (("features", "left"), ("#feat", "right"), ("model", "left"),
                                ("AUC", "right"), ("KS", "right"), ("Gini", "right"), ("s", "right")):
            table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        for r in subset:
            table.add_row(r.features, str(r.n_features), r.model, f"{r.auc:.4f}", f"{r.ks:.4f}",
                          f"{r.gini:.4f}", f"{r.seconds:.1f}")
        console.print(table)


@app.command("baseline")
def baseline(
    dataset: DatasetName = typer.Option(..., "--dataset", help="Which data to train on."),
    config: Path | None = typer.Option(None, "--config", help="Consortium TOML (required for synth; "
                                       "defaults to the matching examples/*.toml otherwise)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and of training."),
    test_size: float = typer.Option(0.2, "--test-size", help="Held-out share (stratified); "
                                    "fate-horizontal always tests on homo_test."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as a JSON array."),
) -> None:
    """Train pooled and single-participant logistic regression and MLP; report AUC, KS, Gini."""
    start = time.perf_counter()
    try:
        rows = baseline_rows(dataset, config, seed, test_size)
    except ModelError as exc:  # bad data reaching a model: one line, not a traceback
        raise DatasetError(f"{dataset.value}: {exc}") from None
    if as_json:
        print(json.dumps([r.model_dump() for r in rows], indent=2))
        return
    console = Console(highlight=False)
    render(rows, console)
    console.print(f"[dim]{time.perf_counter() - start:.1f} s[/]")
