"""Horizontal training at the coordinator: setup round, R encrypted FedAvg/FedProx rounds, final round.

The workflow owns the messaging (Grid) and the bookkeeping (registry, run summary, report); the
arithmetic lives in :mod:`coordinator.strategies`. The coordinator's only key material is the
aggregation key's PUBLIC context; right after setup the workflow tries to decrypt the first
aggregate it could form and records the typed error it gets (``coordinator_decrypt_check``), so
every run log carries the evidence.

Dropouts: a node whose reply is an error or does not arrive within ``round-timeout`` is logged by
participant name and left out of that round's sum; the run continues while at least
``min-nodes`` answer (:class:`~coordinator.strategies.InsufficientNodes` otherwise).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.serverapp import Grid
from pydantic import BaseModel, ConfigDict, Field

from coordinator.registry import ModelRegistry, ModelVersion
from coordinator.strategies import (
    CkksSum,
    EncryptedFedAvg,
    PlainSum,
    RoundOutcome,
    make_strategy,
)
from coordinator.workflows._common import exchange, summary_file, wait_for_nodes, write_summary
from coordinator.workflows.privacy import PrivacySpent, account
from crypto.ckks_keys import PublicContext
from crypto.errors import CryptoError
from protocols.consortium import validate_settings
from protocols.errors import ProtocolViolation
from protocols.wire import horizontal as wire

log = logging.getLogger("flwr").getChild("fedscore.horizontal")


class HorizontalConfig(wire.SharedRunSettings):
    """Run-config keys the coordinator acts on (``[tool.flwr.app.config]`` + ``--run-config``); the
    training keys it shares with participants are validated here too, before any node starts."""

    rounds: int = Field(3, ge=1, le=1000)
    strategy: str = Field("fedavg", pattern="^(fedavg|fedprox)$")
    proximal_mu: float = Field(0.01, alias="proximal-mu", ge=0)
    dp_delta: float = Field(1e-5, alias="dp-delta", gt=0, lt=1)
    min_nodes: int = Field(2, alias="min-nodes", ge=1)
    expect_nodes: int = Field(0, alias="expect-nodes", ge=0)
    connect_timeout: float = Field(120.0, alias="connect-timeout", gt=0)
    round_timeout: float = Field(300.0, alias="round-timeout", gt=0)
    state_dir: str = Field("", alias="state-dir")
    parent_version: str = Field("", alias="parent-version")
    publish_model: bool = Field(False, alias="publish-model")
    result_file: str = Field("", alias="result-file")
    report: bool = True


def config_from(run_config: Mapping[str, Any]) -> HorizontalConfig:
    return validate_settings(HorizontalConfig, run_config)


class RoundRecord(BaseModel):
    """One round in the run summary (metrics are of the model the round STARTED from)."""

    round: int
    contributors: list[str]
    dropped: list[str]
    metrics: dict[str, dict[str, float]]
    aggregated: dict[str, float]
    seconds: float


class TrainingSummary(BaseModel):
    """Everything a run produced, minus weights: written as JSON, rendered by coordinator.report."""

    model_config = ConfigDict(extra="forbid")

    run_id: int
    version: str | None
    config: dict[str, Any]
    participants: list[str]
    key_holder: str | None
    key_id: str | None
    coordinator_decrypt_check: str
    rounds: list[RoundRecord]
    final: dict[str, dict[str, Any]]
    final_aggregated: dict[str, float]
    dropped: dict[str, list[str]]
    privacy: PrivacySpent | None
    published: bool
    seconds: float
    status: str = "succeeded"


@dataclass
class _Setup:
    names: dict[int, str]
    sizes: dict[str, int]
    wrap_announcements: dict[str, str]  # identity-sealed, relayed to the key holder unchanged
    identity_keys: dict[str, bytes]
    key_holder: str | None = None
    key_id: str | None = None
    public_context: PublicContext | None = None
    pending_keys: dict[str, bytes] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)


def _hello(grid: Grid, nodes: list[int], cfg: HorizontalConfig) -> _Setup:
    replies = exchange(
        grid, [(n, RecordDict({wire.REC_CONFIG: ConfigRecord({})})) for n in nodes],
        wire.MSG_HELLO, {}, group="setup", timeout=cfg.round_timeout,
    )
    names: dict[int, str] = {}
    setup = _Setup(names={}, sizes={}, wrap_announcements={}, identity_keys={})
    shapes = set()
    for r in replies:
        if not r.ok:
            setup.dropped.append(r.participant)
            continue
        c, p = r.content[wire.REC_CONFIG], r.content[wire.REC_PAYLOAD]  # type: ignore[index]
        name = str(c[wire.K_PARTICIPANT])
        if name in names.values():
            raise ProtocolViolation(f"two nodes claim to be participant {name!r}")
        names[r.node_id] = name
        setup.sizes[name] = int(c[wire.K_NUM_TRAIN])
        setup.wrap_announcements[name] = str(p[wire.P_WRAP_ANNOUNCEMENT])
        setup.identity_keys[name] = bytes(p[wire.P_IDENTITY_KEY])
        shapes.add((int(c[wire.K_NUM_FEATURES]), int(c[wire.K_NUM_PARAMS])))
    if len(shapes) > 1:
        raise ProtocolViolation(f"participants disagree on the model shape: {sorted(shapes)}")
    setup.names = names
    return setup


def _key_setup(grid: Grid, setup: _Setup, cfg: HorizontalConfig) -> None:
    """One participant generates the aggregation key and wraps it for the others.

    Each peer's identity and identity-sealed wrap key go to the holder exactly as the peer sent them
    at hello; the holder verifies them before wrapping. Tries holders in name order, so a holder
    that fails does not end the run -- but a holder that REFUSES a relayed wrap key does (a typed
    refusal reply naming the peer: a key was substituted or mis-signed, a security event, not a dropout). The wrapped keys are relayed on
    each peer's training messages (see :func:`_attach_pending_key`) -- one message round saved; we
    cannot open them (X25519 + AES-GCM for the peer, signed by the holder).
    """
    by_name = {name: nid for nid, name in setup.names.items()}
    for holder in sorted(by_name):
        peers = [n for n in sorted(by_name) if n != holder]
        content = RecordDict(
            {
                wire.REC_CONFIG: ConfigRecord({wire.K_PEERS: peers}),
                wire.REC_PAYLOAD: ConfigRecord({
                    wire.P_PEER_WRAP_ANNOUNCEMENTS: [setup.wrap_announcements[p] for p in peers],
                    wire.P_PEER_IDENTITIES: [setup.identity_keys[p] for p in peers],
                }),
            }
        )
        (reply,) = exchange(grid, [(by_name[holder], content)], wire.MSG_KEYGEN, setup.names,
                             group="setup", timeout=cfg.round_timeout)
        if not reply.ok:
            continue
        refused = reply.content[wire.REC_CONFIG].get(wire.K_REFUSED)  # type: ignore[index]
        if refused is not None:
            reason = str(reply.content[wire.REC_CONFIG].get(wire.K_REASON, ""))  # type: ignore[index]
            raise ProtocolViolation(f"key holder {holder} refused the wrap key relayed for participant "
                                    f"{str(refused)!r} ({reason}); run stopped")
        key_id = str(reply.content[wire.REC_CONFIG][wire.K_KEY_ID])  # type: ignore[index]
        payload = reply.content[wire.REC_PAYLOAD]  # type: ignore[index]
        ctx = PublicContext.from_bytes(bytes(payload[wire.P_PUBLIC_CONTEXT]), expected_key_id=key_id)
        wrapped = list(payload[wire.P_WRAPPED])
        if len(wrapped) != len(peers):
            raise ProtocolViolation(f"key holder {holder} wrapped {len(wrapped)} keys for {len(peers)} peers")
        setup.pending_keys = {peer: bytes(blob) for peer, blob in zip(peers, wrapped)}
        setup.key_id = key_id
        setup.key_holder = holder
        setup.public_context = ctx
        return
    raise ProtocolViolation("no participant could generate the aggregation key")


def _attach_pending_key(content: RecordDict, name: str, setup: _Setup) -> None:
    """Add ``name``'s wrapped key to its message until it has answered a round (then it has it)."""
    blob = setup.pending_keys.get(name)
    if blob is None or setup.key_holder is None:
        return
    content[wire.REC_CONFIG][wire.K_HOLDER] = setup.key_holder
    content[wire.REC_CONFIG][wire.K_KEY_ID] = setup.key_id or ""
    payload = content.get(wire.REC_PAYLOAD) or ConfigRecord()
    payload[wire.P_WRAPPED] = blob
    payload[wire.P_HOLDER_IDENTITY] = setup.identity_keys[setup.key_holder]
    content[wire.REC_PAYLOAD] = payload


def _decrypt_check(aggregator: CkksSum, ctx: PublicContext) -> str:
    """Try to decrypt at the coordinator; return the typed error's name (the run fails if it works)."""
    from crypto.ckks_keys import encrypt_vector

    probe = encrypt_vector(ctx, np.ones(4)).to_bytes()
    try:
        aggregator.try_decrypt(aggregator.sum([probe, probe]))
    except CryptoError as exc:
        return type(exc).__name__
    raise ProtocolViolation("the coordinator could decrypt an aggregate: refusing to continue")


def _summary_path(cfg: HorizontalConfig, run_id: int) -> Path | None:
    return summary_file(cfg.result_file, cfg.state_dir, run_id, "summary.json")


# --- the workflow ----------------------------------------------------------------------------
def run(grid: Grid, context: Context) -> TrainingSummary:
    """Entry point called by the ServerApp router for ``mode = "horizontal"``."""
    cfg = config_from(context.run_config)
    started = time.monotonic()
    run_id = int(context.run_id) if getattr(context, "run_id", None) is not None else 0
    registry = ModelRegistry(cfg.state_dir) if cfg.state_dir else None
    version: ModelVersion | None = None
    want = max(cfg.expect_nodes, cfg.min_nodes)
    nodes = wait_for_nodes(grid, want, cfg.connect_timeout)
    if len(nodes) < cfg.min_nodes:
        raise ProtocolViolation(f"{len(nodes)} node(s) connected, min-nodes is {cfg.min_nodes}")
    log.info("horizontal run %s: %d node(s), %d round(s), %s, %s, encrypted=%s",
             run_id, len(nodes), cfg.rounds, cfg.model, cfg.strategy, cfg.encrypted)

    setup = _hello(grid, nodes, cfg)
    log.info("setup: %d participant(s) answered (%.1fs)%s", len(setup.names), time.monotonic() - started,
             f"; dropped: {', '.join(sorted(setup.dropped))}" if setup.dropped else "")
    if len(setup.names) < cfg.min_nodes:
        raise ProtocolViolation(f"only {len(setup.names)} participant(s) answered setup; min-nodes is {cfg.min_nodes}")
    public_config = cfg.model_dump(by_alias=True, exclude={"state_dir", "result_file"})
    if registry is not None:
        version = registry.create(
            cfg.model_name, kind="horizontal", config=public_config,
            participants=sorted(setup.names.values()), parent=cfg.parent_version or None, run_id=str(run_id),
        )
    try:
        summary = _train(grid, cfg, setup, run_id, version, registry, public_config, started)
    except BaseException as exc:
        if registry is not None and version is not None:
            registry.fail(version, f"{type(exc).__name__}: {exc}")
        raise
    return summary


def _train(
    grid: Grid,
    cfg: HorizontalConfig,
    setup: _Setup,
    run_id: int,
    version: ModelVersion | None,
    registry: ModelRegistry | None,
    public_config: dict[str, Any],
    started: float,
) -> TrainingSummary:
    decrypt_check = "not-applicable (plaintext comparison run)"
    if cfg.encrypted:
        _key_setup(grid, setup, cfg)
        assert setup.public_context is not None
        aggregator: CkksSum | PlainSum = CkksSum(setup.public_context)
        decrypt_check = _decrypt_check(aggregator, setup.public_context)  # type: ignore[arg-type]
        log.info("aggregation key %s… held by participants; coordinator decrypt attempt -> %s",
                 setup.public_context.key_id[:12], decrypt_check)
    else:
        aggregator = PlainSum()
        log.warning("PLAINTEXT aggregation: the coordinator sees every update (comparison runs only)")
    if len(setup.names) < cfg.min_nodes:
        raise ProtocolViolation(f"only {len(setup.names)} participant(s) hold the key; min-nodes is {cfg.min_nodes}")
    strategy: EncryptedFedAvg = make_strategy(cfg.strategy, aggregator, min_nodes=cfg.min_nodes,
                                              proximal_mu=cfg.proximal_mu)
    weight_scale = float(sum(setup.sizes[n] for n in setup.names.values()))

    history: list[RoundRecord] = []
    dropped: dict[str, list[str]] = {"setup": sorted(setup.dropped)} if setup.dropped else {}
    aggregate: bytes | np.ndarray | None = None
    for server_round in range(1, cfg.rounds + 1):
        t0 = time.monotonic()
        plan = strategy.configure_train(server_round, sorted(setup.names), aggregate)
        for nid, content in plan:
            content[wire.REC_CONFIG]["weight-scale"] = weight_scale
            _attach_pending_key(content, setup.names[nid], setup)
        replies = exchange(grid, plan, wire.MSG_FIT, setup.names, group=str(server_round), timeout=cfg.round_timeout)
        for r in replies:
            if r.ok:
                setup.pending_keys.pop(r.participant, None)
        outcome: RoundOutcome = strategy.aggregate_train(server_round, replies)
        aggregate = outcome.aggregate
        if outcome.dropped:
            dropped[f"round-{server_round}"] = outcome.dropped
        history.append(RoundRecord(
            round=server_round, contributors=outcome.contributors, dropped=outcome.dropped,
            metrics=outcome.metrics, aggregated=outcome.aggregated_metrics, seconds=time.monotonic() - t0,
        ))
        log.info("round %d/%d: %d contributed%s; val AUC of round-start model %.4f (%.1fs)",
                 server_round, cfg.rounds, len(outcome.contributors),
                 f", dropped: {', '.join(outcome.dropped)}" if outcome.dropped else "",
                 outcome.aggregated_metrics.get("val-auc", float("nan")), time.monotonic() - t0)
        if registry is not None and version is not None:
            version = registry.record_progress(version, metrics={"rounds": [h.model_dump() for h in history]})

    publisher = None
    if cfg.publish_model and setup.key_holder is not None:
        publisher = next(nid for nid, n in setup.names.items() if n == setup.key_holder)
    elif cfg.publish_model and not cfg.encrypted:
        publisher = min(setup.names)
    plan = strategy.configure_evaluate(sorted(setup.names), aggregate, version=version.ref if version else "",
                                       publisher=publisher)
    replies = exchange(grid, plan, wire.MSG_FINAL, setup.names, group="final", timeout=cfg.round_timeout)
    final = strategy.aggregate_evaluate(replies)
    if final.dropped:
        dropped["final"] = final.dropped
    full_final: dict[str, dict[str, Any]] = {}
    published_vector = None
    for r in replies:
        if not r.ok:
            continue
        full_final[r.participant] = {k: (list(v) if isinstance(v, list) else v)
                                     for k, v in r.content[wire.REC_METRICS].items()}  # type: ignore[index]
        if r.node_id == publisher and wire.REC_ARRAYS in r.content:  # type: ignore[operator]
            published_vector = r.content[wire.REC_ARRAYS][wire.A_WEIGHTS].numpy()  # type: ignore[index]
    if len(full_final) < cfg.min_nodes:
        raise ProtocolViolation(f"only {len(full_final)} participant(s) evaluated the final model")

    privacy = account(cfg.dp_noise, cfg.dp_clip, cfg.rounds, cfg.dp_delta) if cfg.dp_noise > 0 else None
    summary = TrainingSummary(
        run_id=run_id,
        version=version.ref if version else None,
        config=public_config,
        participants=sorted(setup.names.values()),
        key_holder=setup.key_holder,
        key_id=setup.public_context.key_id if setup.public_context else None,
        coordinator_decrypt_check=decrypt_check,
        rounds=history,
        final=full_final,
        final_aggregated=final.aggregated_metrics,
        dropped=dropped,
        privacy=privacy,
        published=published_vector is not None,
        seconds=time.monotonic() - started,
    )
    if privacy is not None:
        log.info("differential privacy: (epsilon=%.3f, delta=%g) over %d round(s), noise multiplier %.3f",
                 privacy.epsilon, privacy.delta, privacy.rounds, privacy.noise_multiplier)
    if registry is not None and version is not None:
        location: dict[str, Any] = {"participants": sorted(full_final)}
        if published_vector is not None:
            location["registry"] = registry.store_weights(version, published_vector)
        registry.complete(
            version,
            metrics={"rounds": [h.model_dump() for h in history], "final": final.aggregated_metrics,
                     "final_by_participant": {k: _scalars(v) for k, v in full_final.items()},
                     "privacy": privacy.model_dump() if privacy else None, "dropped": dropped},
            weights_location=location,
            participants=sorted(setup.names.values()),
        )
    _write_outputs(summary, cfg)
    log.info("horizontal run %s finished in %.1fs; final val AUC %.4f", run_id, summary.seconds,
             final.aggregated_metrics.get("val-auc", float("nan")))
    return summary


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def _write_outputs(summary: TrainingSummary, cfg: HorizontalConfig) -> None:
    path = _summary_path(cfg, summary.run_id)
    if path is None:
        return
    write_summary(path, summary)
    if cfg.report:
        from coordinator.report import write_report

        write_report(summary, path.parent)


__all__ = ["HorizontalConfig", "TrainingSummary", "RoundRecord", "config_from", "run"]
