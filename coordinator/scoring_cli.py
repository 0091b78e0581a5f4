"""``fedscore serve gateway``: the coordinator's scoring gateway (long-lived, mutual TLS)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from protocols.errors import ConfigError

serve_app = typer.Typer(no_args_is_help=True)
"""Holds ``gateway``; the root command mounts it (with the responder's) under ``serve``."""


@serve_app.command("gateway")
def serve_gateway_cmd(
    consortium: Path = typer.Option(..., "--consortium", help="Consortium TOML (holders' scoring addresses)."),
    pki: Path = typer.Option(Path("pki"), "--pki", help="Folder written by `fedscore certs`."),
    state_dir: Path = typer.Option(Path.home() / ".fedscore" / "coordinator", "--state-dir",
                                   help="Coordinator state: model registry, registered lender keys."),
    model: str = typer.Option("", "--model", help="Default model reference name:vN (lenders may name another)."),
    address: Optional[str] = typer.Option(None, "--address", help="Listen address (default: gateway_address)."),
    responder_timeout: float = typer.Option(10.0, "--responder-timeout", min=0.05, help="Seconds per holder."),
    max_subjects: int = typer.Option(4096, "--max-subjects", min=1, help="Enterprises per request."),
) -> None:
    """Validate lender requests, fan out to responders, evaluate the top on ciphertexts."""
    from coordinator.registry import ModelRegistry
    from coordinator.scoring_gateway import (
        GatewayCore, GrpcResponderTransport, KeyStore, holders_from_consortium, registry_tops, serve_gateway,
    )
    from protocols.consortium import load_consortium
    from protocols.scoring import MutualTls, ScoringLimits, UnknownModel

    cfg = load_consortium(consortium)
    holders = holders_from_consortium(cfg)
    if not holders:
        raise ConfigError(f"{consortium}: no participant has a scoring_address")
    limits = ScoringLimits(responder_timeout_s=responder_timeout, max_subjects=max_subjects)
    tls = MutualTls(pki / "ca.crt", pki / "scoring" / "gateway.crt", pki / "scoring" / "gateway.key")
    registry = ModelRegistry(state_dir)
    core = GatewayCore(
        holders, GrpcResponderTransport(tls, limits=limits), registry_tops(registry),
        keys=KeyStore(state_dir / "scoring-keys", limits=limits), default_model=model, limits=limits,
    )
    if model:  # as the responders do: a default the registry cannot serve fails here, not at the first request
        try:
            core.top(model)
        except UnknownModel as exc:
            raise ConfigError(f"--model: {exc} ({registry.path})") from None
    listen = address or cfg.coordinator.gateway_address
    running = serve_gateway(core, listen, tls)
    Console(highlight=False, stderr=True).print(
        f"gateway listening on {listen.rsplit(':', 1)[0]}:{running.port}; holders "
        + ", ".join(f"{h.name}{' (required)' if h.required else ''}" for h in holders)
    )
    print(json.dumps({"ready": True, "port": running.port}), flush=True)
    try:
        running.wait()
    except KeyboardInterrupt:
        running.stop()
