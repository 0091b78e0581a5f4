"""A real Flower deployment on loopback for tests: SuperLink + SuperNodes, TLS + node authentication.

Certificates and node keys come from fedscore's own :mod:`crypto.tls`; every process runs in its
own session and is stopped by id when the context exits (also on failure). Reused by the
horizontal and the vertical deployment tests::

    with Deployment(tmp_path, {"bank_a": {"data-dir": ...}, ...}) as dep:
        record = dep.run({"mode": "horizontal", "rounds": 2}, timeout=180)
        assert record["status"] == "finished:completed"
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

from coordinator.workflows.launch import (
    Connection,
    FlowerCliError,
    flower_env,
    free_port,
    register_supernode,
    run_status,
    start_process,
    start_superlink,
    stop_process,
    submit_run,
    wait_for_run,
)
from crypto.tls import DeploymentPki, write_deployment_pki

NodeConfig = Mapping[str, Any]


def _node_config_arg(config: NodeConfig) -> str:
    parts = []
    for key, value in config.items():
        if isinstance(value, bool):
            parts.append(f"{key}={'true' if value else 'false'}")
        elif isinstance(value, (int, float)):
            parts.append(f"{key}={value}")
        else:
            parts.append(f'{key}="{value}"')
    return " ".join(parts)


class Deployment:
    """SuperLink (TLS, SuperNode auth) + one authenticated SuperNode per named participant."""

    def __init__(self, workdir: Path, nodes: Mapping[str, NodeConfig], *, register: bool = True) -> None:
        self.workdir = Path(workdir)
        self.nodes = dict(nodes)
        self.register = register
        self.flwr_home = self.workdir / "flwr-home"
        self.env = flower_env(self.flwr_home)
        self.pki: DeploymentPki | None = None
        self.conn: Connection | None = None
        self.superlink: subprocess.Popen | None = None
        self.supernodes: dict[str, subprocess.Popen] = {}
        self.node_ids: dict[str, int] = {}

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> "Deployment":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.pki = write_deployment_pki(self.workdir / "pki", list(self.nodes))
        port = free_port()
        self.conn = Connection("fedscore-test", f"127.0.0.1:{port}", self.pki.ca_cert, self.flwr_home)
        self.conn.write()
        self.superlink = start_superlink(self.workdir, self.pki, port=port, env=self.env)
        for name in self.nodes:
            if self.register:
                self.node_ids[name] = register_supernode(self.conn, self.pki.supernode_public_keys[name], env=self.env)
            self.start_node(name)

    def start_node(
        self, name: str, *, key: Path | None = None, label: str | None = None
    ) -> subprocess.Popen:
        """Start (or restart) the SuperNode of ``name``.

        ``key`` overrides its auth key and ``label`` names its process and log (an impostor
        presenting ``name``'s node config with an unregistered key, for refusal tests).
        """
        assert self.pki is not None and self.conn is not None
        label = label or name
        cmd = [
            "flower-supernode",
            "--root-certificates", str(self.pki.ca_cert),
            "--superlink", self.conn.address,
            "--port", str(free_port()),
            "--auth-supernode-private-key", str(key or self.pki.supernode_private_keys[name]),
            "--node-config", _node_config_arg({"node-name": name, **self.nodes[name]}),
            "--max-retries", "20",
        ]
        proc = start_process(cmd, log_file=self.workdir / "logs" / f"supernode-{label}.log", env=self.env,
                             cwd=self.workdir)
        self.supernodes[label] = proc
        return proc

    def stop_node(self, name: str) -> None:
        proc = self.supernodes.pop(name, None)
        if proc is not None:
            stop_process(proc)

    def stop(self) -> None:
        for name in list(self.supernodes):
            self.stop_node(name)
        if self.superlink is not None:
            stop_process(self.superlink)
            self.superlink = None

    # -- runs -----------------------------------------------------------------------------------
    def submit(self, run_config: Mapping[str, Any]) -> int:
        assert self.conn is not None
        return submit_run(self.conn, run_config, env=self.env)

    def wait(self, run_id: int, timeout: float) -> dict[str, Any]:
        assert self.conn is not None
        return wait_for_run(self.conn, run_id, env=self.env, timeout=timeout)

    def run(self, run_config: Mapping[str, Any], *, timeout: float) -> dict[str, Any]:
        """Submit, wait, and return the SuperLink's run record (``status`` is ``finished:<outcome>``)."""
        return self.wait(self.submit(run_config), timeout)

    def status(self, run_id: int) -> dict[str, Any]:
        assert self.conn is not None
        return run_status(self.conn, run_id, env=self.env)

    def logs(self) -> str:
        """All process logs (for assertion messages on failure)."""
        out = []
        for path in sorted((self.workdir / "logs").glob("*.log")):
            out.append(f"==> {path.name} <==\n" + path.read_text(errors="replace")[-4000:])
        return "\n".join(out)

    def wait_until_nodes_connected(self, timeout: float = 60.0) -> None:
        """Until every started SuperNode logged its node id (they connect before any run)."""
        deadline = time.monotonic() + timeout
        pending = set(self.supernodes)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                log = (self.workdir / "logs" / f"supernode-{name}.log").read_text(errors="replace")
                if "SuperNode ID" in log:
                    pending.discard(name)
                elif self.supernodes[name].poll() is not None:
                    raise FlowerCliError(f"supernode {name} exited:\n{log[-2000:]}")
            time.sleep(0.5)
        if pending:
            raise FlowerCliError(f"supernodes not connected after {timeout:.0f}s: {sorted(pending)}")
