"""Encrypted scoring with real processes: two responders and the gateway started through their
CLI commands, the lender through its CLI (keygen, register, score --batch). Then a passive holder is
killed (scores go on without it, and say so) and the label holder is killed (a clear error)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from protocols.consortium import dump_consortium
from tests.protocols.test_scoring import cached_world

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]

# The CLI as the ``fedscore`` command mounts it, with its error handling (typed errors → one line, exit 2).
RUNNER = """
import sys, typer
import coordinator.scoring_cli as g, participants.lender_cli as l
from protocols.errors import ProtocolError
from crypto.errors import CryptoError
root = typer.Typer()
root.add_typer(l.app)
serve = typer.Typer()
serve.add_typer(g.serve_app)
serve.add_typer(l.serve_app)
root.add_typer(serve, name="serve")
try:
    root(sys.argv[1:], standalone_mode=False)
except (ProtocolError, CryptoError) as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUNNER, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


class Service:
    """A long-lived CLI process; ready once it prints its JSON readiness line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", RUNNER, *args], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def ready(self, timeout: float = 120) -> int:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise AssertionError(f"service did not start: {self.proc.stderr.read() if self.proc.stderr else ''}")
        return json.loads(line)["port"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_scoring_with_separate_processes(tmp_path_factory, tmp_path) -> None:
    world = cached_world(tmp_path_factory)
    # Two responders keep start-up affordable on 2 cores: the label holder and one passive holder
    # (the third holder has no scoring address, so the gateway does not know it).
    holders = ["bank", "utility"]
    ports = {h: _free_port() for h in holders}
    gateway_port = _free_port()
    cfg = world.cfg.model_copy(deep=True)
    cfg.coordinator.gateway_address = f"127.0.0.1:{gateway_port}"
    for p in cfg.participants:
        p.scoring_address = f"127.0.0.1:{ports[p.name]}" if p.name in ports else None
    consortium = dump_consortium(cfg, tmp_path / "consortium.toml")
    world.authority.public_key.save(tmp_path / "authority.pub")
    world.revoked = []
    revocations = world.publish(1, tmp_path / "revocations.json")
    state = tmp_path / "coordinator"
    state.mkdir()
    shutil.copy(world.registry_dir / "registry.sqlite3", state / "registry.sqlite3")
    pki = str(world.pki.root)

    # Node state (consent database, audit log) on tmpfs when there is one: every use is fsynced.
    nodes = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    services: dict[str, Service] = {}
    try:
        for h in holders:
            node_state = nodes / h
            shutil.copytree(world.model_dir(h), node_state / "models")
            services[h] = Service(
                "serve", "responder", "--consortium", str(consortium), "--participant", h, "--model", world.model_ref,
                "--pki", pki, "--state-dir", str(node_state), "--authority-key", str(tmp_path / "authority.pub"),
                "--revocations", str(revocations), "--max-list-age", "3600")
        services["gateway"] = Service(
            "serve", "gateway", "--consortium", str(consortium), "--pki", pki, "--state-dir", str(state),
            "--model", world.model_ref, "--responder-timeout", "5")
        for name, service in services.items():
            assert service.ready() == (gateway_port if name == "gateway" else ports[name])

        key = tmp_path / "lender.ckks"
        common = ["--key", str(key), "--gateway", f"127.0.0.1:{gateway_port}", "--pki", pki]
        assert _cli("lender", "keygen", "--out", str(key)).returncode == 0
        reg = _cli("lender", "register", *common)
        assert reg.returncode == 0, reg.stderr

        usccs = world.universe()[600:680]
        grants = tmp_path / "grants.jsonl"
        grants.write_text("\n".join(world.grant(u).model_dump_json() for u in usccs))
        batch = tmp_path / "batch.csv"
        batch.write_text("uscc\n" + "\n".join(usccs) + "\n")

        def score() -> subprocess.CompletedProcess:
            return _cli("score", "--batch", str(batch), "--grant", str(grants), "--json", *common)

        full = score()
        assert full.returncode == 0, full.stderr
        rows = [json.loads(line) for line in full.stdout.splitlines()]
        assert [r["uscc"] for r in rows] == usccs
        assert np.max(np.abs(np.array([r["pd"] for r in rows]) - world.plaintext_pd(usccs, holders))) < 1e-4
        assert all(r["sources"] == holders for r in rows)
        # Every holder audited its uses, with enterprises as keyed hashes only.
        for h in holders:
            log = (nodes / h / "consent" / "audit.jsonl").read_text()
            assert log.count('"outcome":"allowed"') == len(usccs) and not any(u in log for u in usccs)

        services["utility"].stop()
        partial = score()
        assert partial.returncode == 0, partial.stderr
        rows = [json.loads(line) for line in partial.stdout.splitlines()]
        assert all(r["sources"] == ["bank"] and r["missing"] == {"utility": "unavailable"} for r in rows)
        expected = world.plaintext_pd(usccs, holders=["bank"])
        assert np.max(np.abs(np.array([r["pd"] for r in rows]) - expected)) < 1e-4

        services["bank"].stop()
        failed = score()
        assert failed.returncode == 2 and "required holder bank" in failed.stderr
    finally:
        for service in services.values():
            service.stop()
        shutil.rmtree(nodes, ignore_errors=True)
