"""Flower simulation on the FATE homo split: encrypted and plaintext aggregation give the same model."""

from __future__ import annotations

import json

import pytest

from coordinator.cli import horizontal_run_config
from coordinator.workflows.launch import (
    Connection,
    flower_env,
    free_port,
    start_superlink,
    stop_process,
    submit_run,
    wait_for_run,
)
from crypto.tls import write_deployment_pki
from participants.datasets.fate import HORIZONTAL_CONFIG, HORIZONTAL_TEST_FILE
from protocols.consortium import load_consortium

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]


def test_encrypted_matches_plaintext_on_fate_homo(tmp_path):
    holders = [p.name for p in load_consortium(HORIZONTAL_CONFIG).data_holders]
    pki = write_deployment_pki(tmp_path / "pki", holders)
    env = flower_env(tmp_path / "flwr-home")
    port = free_port()
    conn = Connection("sim", f"127.0.0.1:{port}", pki.ca_cert, tmp_path / "flwr-home")
    conn.write()
    superlink = start_superlink(tmp_path, pki, port=port, simulation=True, env=env)
    summaries = {}
    try:
        for mode in ("encrypted", "plaintext"):
            result = tmp_path / f"{mode}.json"
            run_config = horizontal_run_config(
                HORIZONTAL_CONFIG, state_dir=tmp_path / "coord", result_file=result,
                node_state_root=tmp_path / f"nodes-{mode}",
                options={"rounds": 2, "encrypted": mode == "encrypted", "test-data": HORIZONTAL_TEST_FILE,
                         "lr": 0.01, "report": False},
            )
            run_id = submit_run(conn, run_config, env=env, federation_config={
                "num-supernodes": len(holders), "client-resources-num-cpus": 1, "init-args-num-cpus": len(holders)})
            record = wait_for_run(conn, run_id, env=env, timeout=200)
            assert record["status"] == "finished:completed", record.get("log", "")[-3000:]
            summaries[mode] = json.loads(result.read_text())
    finally:
        stop_process(superlink)
    assert superlink.poll() is not None

    enc, plain = summaries["encrypted"], summaries["plaintext"]
    assert enc["coordinator_decrypt_check"] == "MissingSecretKey"
    assert enc["participants"] == plain["participants"] == sorted(holders)
    for name in holders:
        for key in ("val-auc", "test-auc"):
            assert abs(enc["final"][name][key] - plain["final"][name][key]) <= 0.001, (name, key)
    assert enc["final_aggregated"]["test-auc"] > 0.7
    # learning happened: the final model beats the seeded initial one on every participant
    for name in holders:
        assert enc["final"][name]["val-auc"] > enc["rounds"][0]["metrics"][name]["val-auc"]
