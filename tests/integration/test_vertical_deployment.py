"""Real deployment: SuperLink + 3 SuperNodes on loopback, TLS + SuperNode auth, vertical training
(PSI → setup → 2 forward rounds → evaluation). Each round costs seconds here, so the data is tiny."""

from __future__ import annotations

import json

import pytest

from coordinator.registry import ModelRegistry
from participants.model_store import LocalModelStore
from protocols.consortium import load_consortium
from tests.coordinator.test_vertical_workflow import write_consortium

from deployment import Deployment

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]


def test_vertical_training_over_tls_with_node_auth(tmp_path) -> None:
    path, ids = write_consortium(tmp_path / "data", n=300)
    cfg = load_consortium(path)
    nodes = {
        p.name: {"data-dir": str(p.data_dir), "consortium": str(path), "state-dir": str(tmp_path / "nodes" / p.name)}
        for p in cfg.data_holders
    }
    coord = tmp_path / "coordinator"
    result = coord / "summary.json"
    with Deployment(tmp_path / "deploy", nodes) as dep:
        record = dep.run(
            {
                "mode": "vertical",
                "consortium": str(path),
                "model": "logistic",
                "local-epochs": 2,
                "batch-size": 64,
                "lr": 0.1,
                # full-size batches: deployment rounds cost seconds, keep this run to 2 forward rounds
                "vertical-plan": json.dumps({"min_batches_per_epoch": 1}),
                "expect-nodes": 3,
                "connect-timeout": 60.0,
                "round-timeout": 90.0,
                "state-dir": str(coord),
                "result-file": str(result),
            },
            timeout=360,
        )
        assert record["status"] == "finished:completed", dep.logs()
        logs = dep.logs()

    summary = json.loads(result.read_text())
    assert summary["participants"] == sorted(nodes) and summary["label_holder"] == "bank"
    assert summary["matched"] == {n: len(set(ids["bank"]) & set(ids[n])) for n in ("tax", "utility")}
    assert summary["forward_rounds"] == 2 and summary["total_rounds"] == 3 + 1 + 4 + 1
    assert summary["metrics"]["all"]["auc"] > 0.6
    version = ModelRegistry(coord).get(summary["version"])
    assert version.status == "ready" and version.weights_location["top_spec"]["kind"] == "linear"
    for name in nodes:
        LocalModelStore(tmp_path / "nodes" / name / "models").load_bottom(summary["version"])
        assert not (tmp_path / "nodes" / name / "runs" / str(summary["run_id"])).exists()
    # no identifier reaches any process log (SuperLink, ServerApp, SuperNodes)
    assert not any(i in logs for group in ids.values() for i in group)
