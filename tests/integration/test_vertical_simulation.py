"""``fedscore train vertical`` end to end on Flower's simulation engine: synthetic 3k-SME consortium
(bank, tax, platform, utility), PSI → setup → training → evaluation → registry.

3,000 SMEs give ~2,000 labelled bank customers and ~20 defaults in the 20% held out: enough for the
AUC bound below to separate a trained model from chance without being a coin toss."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from coordinator.registry import ModelRegistry
from coordinator.vertical_cli import register
from participants.model_store import LocalModelStore
from participants.synth.writer import generate

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]


def test_train_vertical_in_simulation(tmp_path) -> None:
    generate(tmp_path / "synth", enterprises=3000, seed=3, months=24, as_of="2024-12", force=True)
    train_app = typer.Typer()
    register(train_app)
    train_app.command("noop")(lambda: None)  # a group with two commands keeps "vertical" as a sub-command
    state = tmp_path / "coordinator"
    result = CliRunner().invoke(train_app, [
        "vertical", "--config", str(tmp_path / "synth" / "consortium.toml"), "--epochs", "8", "--batch-size", "256",
        "--lr", "0.02", "--state-dir", str(state), "--json", "--timeout", "360",
    ])
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["participants"] == ["bank", "platform", "tax", "utility"]
    assert summary["label_holder"] == "bank"
    assert summary["universe"] == summary["set_sizes"]["bank"]
    assert all(0 < n <= summary["universe"] for n in summary["matched"].values())
    assert summary["total_rounds"] == 3 + 1 + summary["forward_rounds"] + 2 + 1
    assert set(summary["stages"]) == {"psi", "setup", "training", "eval"}
    assert summary["train_loss"][-1] < summary["train_loss"][0], summary
    assert summary["metrics"]["all"]["auc"] > 0.65, summary
    version = ModelRegistry(state).get(summary["version"])
    assert version.status == "ready" and version.kind == "vertical"
    assert version.weights_location["top_spec"]["kind"] == "linear"
    for name in summary["participants"]:
        bottom = LocalModelStore(state / "nodes" / name / "models").load_bottom(summary["version"])
        assert bottom.meta["label_holder"] == "bank"
    assert (state / "runs" / str(summary["run_id"]) / "vertical-summary.json").exists()
