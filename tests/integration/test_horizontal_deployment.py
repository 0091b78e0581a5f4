"""Real deployment: SuperLink + 3 SuperNodes on loopback, TLS + SuperNode auth, 2 encrypted rounds."""

from __future__ import annotations

import json

import pytest

from coordinator.registry import ModelRegistry
from crypto.tls import generate_node_auth_key
from participants.datasets.fate import HORIZONTAL_CONFIG, HORIZONTAL_TEST_FILE
from protocols.consortium import load_consortium

from deployment import Deployment

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]


def test_encrypted_horizontal_training_over_tls_with_node_auth(tmp_path):
    cfg = load_consortium(HORIZONTAL_CONFIG)
    nodes = {
        p.name: {
            "data-dir": str(p.data_dir),
            "consortium": str(HORIZONTAL_CONFIG),
            "state-dir": str(tmp_path / "nodes" / p.name),
            "test-file": HORIZONTAL_TEST_FILE,
        }
        for p in cfg.data_holders
    }
    coord_state = tmp_path / "coordinator"
    result = tmp_path / "coordinator" / "summary.json"
    rogue_key = generate_node_auth_key()
    rogue_key.write(tmp_path / "rogue.key", tmp_path / "rogue.pub")

    dep = Deployment(tmp_path / "deploy", nodes)
    with dep:
        started = [dep.superlink, *dep.supernodes.values()]
        # A SuperNode whose key was never registered must not get in.
        started.append(dep.start_node("bank_a", key=tmp_path / "rogue.key", label="rogue"))
        record = dep.run(
            {
                "mode": "horizontal",
                "rounds": 2,
                "min-nodes": 3,
                "expect-nodes": 3,
                "connect-timeout": 60.0,
                "round-timeout": 90.0,
                "state-dir": str(coord_state),
                "result-file": str(result),
            },
            timeout=300,
        )
        assert record["status"] == "finished:completed", record.get("log", "") + dep.logs()
        rogue_log = (dep.workdir / "logs" / "supernode-rogue.log").read_text(errors="replace")
    # everything this test started is gone
    assert all(p.poll() is not None for p in started)

    summary = json.loads(result.read_text())
    assert summary["participants"] == sorted(nodes), "only the three registered nodes took part"
    assert "SuperNode ID" not in rogue_log
    assert summary["coordinator_decrypt_check"] == "MissingSecretKey"
    assert summary["key_holder"] in nodes
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    for r in summary["rounds"]:
        assert set(r["metrics"]) == set(nodes)
        for m in r["metrics"].values():
            assert {"val-auc", "val-ks", "val-gini"} <= set(m)
    initial_auc = summary["rounds"][0]["aggregated"]["val-auc"]  # the seeded initial model
    final_auc = summary["final_aggregated"]["val-auc"]
    assert final_auc > initial_auc + 0.05
    assert 0.5 < summary["final_aggregated"]["test-auc"] <= 1.0

    version = ModelRegistry(coord_state).get(summary["version"])
    assert version.status == "ready" and version.participants == sorted(nodes)
    assert "registry" not in version.weights_location  # not published: weights stay with participants
    for name in nodes:
        stored = list((tmp_path / "nodes" / name / "models").rglob("*.npy"))
        assert len(stored) == 1
        assert not (tmp_path / "nodes" / name / "runs" / str(summary["run_id"])).exists()  # run key deleted
    assert not list(coord_state.rglob("*.npy"))
    assert (result.parent / "report.png").stat().st_size > 0
