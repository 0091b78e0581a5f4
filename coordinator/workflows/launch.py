"""Start Flower processes and submit runs: shared by ``fedscore train`` and the deployment tests.

Why processes and the ``flwr`` CLI rather than in-process calls: the coordinator must not import
the participant package, and the app is one Flower app whose components are named in
``pyproject.toml``; ``flwr run`` builds it and the SuperLink loads both sides by name.

Pitfalls handled here: ``flwr run --stream`` exits 0 even when the ServerApp failed (so we read the
run status); every process gets its own session so it can be stopped with its children by id; the
SuperLink's runtime dependency installation is disabled; TLS is on even on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from crypto.tls import DeploymentPki, write_deployment_pki
from protocols.consortium import load_consortium

__all__ = [
    "APP_DIR",
    "FlowerCliError",
    "Connection",
    "flower_env",
    "free_port",
    "format_config",
    "start_process",
    "stop_process",
    "start_superlink",
    "wait_for_port",
    "submit_run",
    "run_status",
    "wait_for_run",
    "simulate",
]

#: The project root: where ``pyproject.toml`` names the ServerApp and ClientApp.
APP_DIR = Path(__file__).resolve().parents[2]
_BIN = Path(sys.executable).parent


class FlowerCliError(RuntimeError):
    """A Flower command failed; the message carries its exit code and last output lines."""


@dataclass(frozen=True)
class Connection:
    """A named SuperLink connection in ``$FLWR_HOME/config.toml``."""

    name: str
    address: str
    root_certificates: Path
    flwr_home: Path

    def write(self) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        text = (
            f'[superlink]\ndefault = "{self.name}"\n\n[superlink.{self.name}]\n'
            f'address = "{self.address}"\nroot-certificates = "{self.root_certificates}"\n'
        )
        (self.flwr_home / "config.toml").write_text(text)


def flower_env(flwr_home: Path | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: no telemetry, no update checks, no dependency installs."""
    env = dict(os.environ)
    env["PATH"] = f"{_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    if extra:
        env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise FlowerCliError(f"process exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise FlowerCliError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f}s")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if "'" in text:
        raise ValueError(f"config value {text!r} may not contain a single quote")
    return f"'{text}'"


def format_config(config: Mapping[str, Any]) -> str:
    """``{"rounds": 2, "model": "mlp"}`` → ``rounds=2 model='mlp'`` (for ``--run-config``)."""
    return " ".join(f"{k}={_toml_value(v)}" for k, v in config.items())


def start_process(cmd: Sequence[str], *, log_file: Path, env: Mapping[str, str], cwd: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own session (so :func:`stop_process` can stop its children too)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log_file, "ab")  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(
            list(cmd), stdout=fh, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd, start_new_session=True
        )
    finally:
        fh.close()


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process group started with ``proc``, SIGKILL it if it lingers."""
    if proc.poll() is not None:
        _kill_group(proc.pid, signal.SIGKILL)  # children may outlive their leader
        return
    _kill_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    _kill_group(proc.pid, signal.SIGKILL)


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def start_superlink(
    workdir: Path,
    pki: DeploymentPki,
    *,
    port: int,
    simulation: bool = False,
    node_auth: bool = True,
    env: Mapping[str, str],
) -> subprocess.Popen:
    """A SuperLink on 127.0.0.1:``port`` with TLS (and SuperNode authentication unless simulating)."""
    cmd = [
        str(_BIN / "flower-superlink"),
        "--ssl-ca-certfile", str(pki.ca_cert),
        "--ssl-certfile", str(pki.superlink_cert),
        "--ssl-keyfile", str(pki.superlink_key),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--database", str(workdir / "superlink.db"),
        "--isolation", "subprocess",
        "--disable-runtime-dependency-installation",
    ]
    if simulation:
        cmd.append("--simulation")
    elif node_auth:
        cmd.append("--enable-supernode-auth")
    proc = start_process(cmd, log_file=workdir / "logs" / "superlink.log", env=env, cwd=workdir)
    try:
        wait_for_port(port, 60, proc)
    except FlowerCliError:
        stop_process(proc)
        raise
    return proc


def _flwr(args: Sequence[str], env: Mapping[str, str], timeout: float = 120) -> str:
    res = subprocess.run([str(_BIN / "flwr"), *args], env=dict(env), capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-8:])
        raise FlowerCliError(f"flwr {args[0]} failed with exit code {res.returncode}:\n{tail}")
    return res.stdout


def _json_out(text: str) -> dict[str, Any]:
    start = text.find("{")
    if start < 0:
        raise FlowerCliError(f"expected JSON from flwr, got: {text[-300:]}")
    return json.loads(text[start:])


def submit_run(
    conn: Connection,
    run_config: Mapping[str, Any],
    *,
    env: Mapping[str, str],
    federation_config: Mapping[str, Any] | None = None,
    app_dir: Path = APP_DIR,
) -> int:
    """``flwr run`` without streaming; returns the run id."""
    args = ["run", str(app_dir), conn.name, "--format", "json", "--run-config", format_config(run_config)]
    if federation_config:
        args += ["--federation-config", format_config(federation_config)]
    out = _json_out(_flwr(args, env, timeout=300))
    if not out.get("success") or "run-id" not in out:
        raise FlowerCliError(f"flwr run did not start a run: {out}")
    return int(out["run-id"])


def run_status(conn: Connection, run_id: int, *, env: Mapping[str, str]) -> dict[str, Any]:
    out = _json_out(_flwr(["list", conn.name, "--run-id", str(run_id), "--format", "json"], env))
    runs = out.get("runs") or []
    if not runs:
        raise FlowerCliError(f"run {run_id} is unknown to the SuperLink")
    return runs[0]


def register_supernode(conn: Connection, public_key: Path, *, env: Mapping[str, str]) -> int:
    """``flwr supernode register``: only registered keys may connect when auth is on."""
    out = _json_out(_flwr(["supernode", "register", str(public_key), conn.name, "--format", "json"], env))
    if not out.get("success"):
        raise FlowerCliError(f"registering {public_key.name} failed: {out}")
    return int(out["node-id"])


def wait_for_run(
    conn: Connection,
    run_id: int,
    *,
    env: Mapping[str, str],
    timeout: float,
    on_log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Follow the run's log until it ends, then return the SuperLink's run record.

    The record gets a ``log`` entry with the whole ServerApp log (the run log). Following the log
    stream rather than polling ``flwr list`` keeps a 2-core machine free for the run itself.
    """
    lines: list[str] = []
    streamer = subprocess.Popen(
        [str(_BIN / "flwr"), "log", str(run_id), conn.name, "--stream"],
        env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )

    def pump() -> None:
        assert streamer.stdout is not None
        for line in streamer.stdout:
            lines.append(line.rstrip("\n"))
            if on_log is not None:
                on_log(lines[-1])

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        streamer.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        stop_process(streamer, timeout=3)
        reader.join(timeout=5)
    while True:
        record = run_status(conn, run_id, env=env)
        if str(record.get("status", "")).startswith("finished"):
            record["log"] = "\n".join(lines)
            return record
        if time.monotonic() > deadline:
            raise FlowerCliError(f"run {run_id} did not finish within {timeout:.0f}s (status {record.get('status')})")
        time.sleep(3.0)


def simulate(
    consortium: Path,
    run_config: Mapping[str, Any],
    workdir: Path,
    *,
    timeout: float,
    on_log: Callable[[str], None] | None = None,
    keep_tls: bool = False,
) -> dict[str, Any]:
    """One run on Flower's simulation engine: a TLS SuperLink on loopback with one virtual SuperNode
    per data holder of ``consortium``; returns the run record (see :func:`wait_for_run`).

    Logs and the SuperLink database stay in ``workdir``; the ephemeral TLS material and the Flower
    home (app copies) are removed afterwards unless ``keep_tls``.
    """
    holders = [p.name for p in load_consortium(consortium).data_holders]
    pki = write_deployment_pki(workdir / "pki", holders)
    flwr_home = workdir / "flwr-home"
    env = flower_env(flwr_home)
    port = free_port()
    conn = Connection("fedscore-sim", f"127.0.0.1:{port}", pki.ca_cert, flwr_home)
    conn.write()
    superlink = start_superlink(workdir, pki, port=port, simulation=True, env=env)
    try:
        # One logical CPU per virtual node (Ray wants integers here) and as many logical CPUs as
        # nodes, so every node's small model trains at once even on a 2-core host.
        run_id = submit_run(conn, dict(run_config), env=env, federation_config={
            "num-supernodes": len(holders), "client-resources-num-cpus": 1,
            "init-args-num-cpus": len(holders)})
        return wait_for_run(conn, run_id, env=env, timeout=timeout, on_log=on_log)
    finally:
        stop_process(superlink)
        if not keep_tls:
            shutil.rmtree(workdir / "pki", ignore_errors=True)
            shutil.rmtree(flwr_home, ignore_errors=True)
