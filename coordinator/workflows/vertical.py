"""Vertical (split) training at the coordinator: PSI → key setup → pipelined training → evaluation.

The coordinator relays and adds, nothing more: it sees blinded ids and tags (PSI), public keys in
signed envelopes, masked bottom outputs whose pairwise masks cancel only in the sum ``Z`` (the sum
itself is revealed by design), gradients wrapped to each passive participant's X25519 key, and
the label holder's final metrics and HE-friendly top spec. It never sees a single participant's
plaintext output, a gradient, a label or an id.

Rounds (:mod:`protocols.wire.vertical` has the message list): 3 PSI + 1 setup + (R + 2) training + 1 final,
where R is the number of forward rounds the plan's schedule needs. Every participant is needed in
every round (masks cancel only when all contribute), so any failure ends the run with the
participant named and the registry version marked failed.

Run config (shared app keys): ``consortium``, ``model`` (logistic → linear bottoms, mlp → MLP
bottoms of ``mlp-hidden``), ``local-epochs`` (epochs), ``lr``, ``batch-size``, ``seed``,
``val-fraction``, ``dp-noise``/``dp-clip``/``dp-delta`` (label DP), ``expect-nodes``,
``connect-timeout``, ``round-timeout``, ``state-dir``, ``result-file``, ``model-name``,
``vertical-plan`` (JSON of :class:`VerticalPlan` fields, overriding the mapped keys: top kind,
out_dim, batches per round, source dropout …) and ``as-of``.
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
from coordinator.strategies import NodeReply
from coordinator.workflows._common import exchange as _exchange
from coordinator.workflows._common import summary_file, write_summary
from coordinator.workflows._common import wait_for_nodes as _wait_for_nodes
from coordinator.workflows.psi_relay import PsiRelayState, run_psi
from crypto.masking import MaskedVector, sum_masked
from protocols.consortium import load_consortium, parse_widths, validate_settings
from protocols.errors import ConfigError, ProtocolViolation
from protocols.vertical import Schedule, VerticalPlan, label_dp_epsilon
from protocols.wire import vertical as w

log = logging.getLogger("flwr").getChild("fedscore.vertical")

DEFAULT_MODEL_NAME = "vertical-credit"


class VerticalRunConfig(BaseModel):
    """Run-config keys the vertical workflow acts on."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    consortium: str = ""
    as_of: str = Field("", alias="as-of")
    vertical_plan: str = Field("", alias="vertical-plan")
    model: str = Field("logistic", pattern="^(logistic|mlp)$")
    mlp_hidden: str = Field("32,16", alias="mlp-hidden")
    local_epochs: int = Field(6, alias="local-epochs", ge=1, le=1000)
    lr: float = Field(0.02, gt=0, le=10)
    batch_size: int = Field(1024, alias="batch-size", ge=16)
    seed: int = 0
    val_fraction: float = Field(0.2, alias="val-fraction", gt=0, lt=1)
    dp_noise: float = Field(0.0, alias="dp-noise", ge=0)
    dp_clip: float = Field(1.0, alias="dp-clip", gt=0)
    dp_delta: float = Field(1e-5, alias="dp-delta", gt=0, lt=1)
    expect_nodes: int = Field(0, alias="expect-nodes", ge=0)
    connect_timeout: float = Field(120.0, alias="connect-timeout", gt=0)
    round_timeout: float = Field(300.0, alias="round-timeout", gt=0)
    state_dir: str = Field("", alias="state-dir")
    result_file: str = Field("", alias="result-file")
    model_name: str = Field(DEFAULT_MODEL_NAME, alias="model-name")

    def plan(self) -> VerticalPlan:
        """Mapped shared keys first, then the explicit ``vertical-plan`` JSON on top."""
        hidden = parse_widths(self.mlp_hidden, "run config: mlp-hidden") if self.model == "mlp" else ()
        base: dict[str, Any] = {
            "bottom_hidden": hidden, "epochs": float(self.local_epochs), "lr": self.lr,
            "batch_size": self.batch_size, "seed": self.seed, "val_fraction": self.val_fraction,
            "label_dp_sigma": self.dp_noise, "label_dp_clip": self.dp_clip,
        }
        if self.vertical_plan:
            try:
                extra = json.loads(self.vertical_plan)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"run config: vertical-plan is not JSON ({exc.msg})") from None
            if not isinstance(extra, dict):
                raise ConfigError("run config: vertical-plan must be a JSON object")
            base.update(extra)
        return validate_settings(VerticalPlan, base, "vertical plan")


def config_from(run_config: Mapping[str, Any]) -> VerticalRunConfig:
    cfg = validate_settings(VerticalRunConfig, run_config)
    if cfg.model_name == "horizontal-credit":  # the shared app default belongs to the other mode
        cfg = cfg.model_copy(update={"model_name": DEFAULT_MODEL_NAME})
    return cfg


class StageRecord(BaseModel):
    rounds: int = 0
    seconds: float = 0.0


class VerticalSummary(BaseModel):
    """Everything a run produced, minus weights (JSON; rendered by ``fedscore train vertical``)."""

    model_config = ConfigDict(extra="forbid")

    run_id: int
    version: str | None
    plan: dict[str, Any]
    participants: list[str]
    label_holder: str
    universe: int
    set_sizes: dict[str, int]
    matched: dict[str, int]
    train_rows: int
    val_rows: int
    forward_rounds: int
    stages: dict[str, StageRecord]
    total_rounds: int
    train_loss: list[float]
    metrics: dict[str, dict[str, float] | None]
    label_dp: dict[str, float] | None
    label_holder_alone: dict[str, Any] | None = Field(
        default=None, description="the label holder's own-features model on the same held-out rows, with lending value")
    top_kind: str
    bottoms_stored: list[str]
    seconds: float
    status: str = "succeeded"


@dataclass
class VerticalRun:
    """Workflow state: who is who, keys relayed, what is in flight between rounds."""

    cfg: VerticalRunConfig
    plan: VerticalPlan
    run_id: int
    psi: PsiRelayState = field(default_factory=PsiRelayState)
    directory: dict[str, dict[str, Any]] = field(default_factory=dict)
    schedule: Schedule | None = None
    stages: dict[str, StageRecord] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    z_prev: np.ndarray | None = None
    z_val: np.ndarray | None = None
    grads: dict[int, dict[str, bytes]] = field(default_factory=dict)

    @property
    def names(self) -> dict[int, str]:
        return self.psi.names

    @property
    def label_holder(self) -> str:
        return self.psi.label_holder

    @property
    def peers(self) -> list[str]:
        return self.psi.peers

    def stage(self, name: str, started: float, rounds: int) -> None:
        self.stages[name] = StageRecord(rounds=rounds, seconds=round(time.monotonic() - started, 3))
        log.info("vertical stage %s: %d round(s) in %.1fs", name, rounds, self.stages[name].seconds)


def _require_ok(replies: list[NodeReply], step: str) -> dict[str, RecordDict]:
    failed = [r for r in replies if not r.ok]
    if failed:
        detail = "; ".join(f"{r.participant}: {r.error}" for r in failed)
        raise ProtocolViolation(f"vertical {step}: {len(failed)} participant(s) failed ({detail})")
    return {r.participant: r.content for r in replies}  # type: ignore[misc]


class VerticalWorkflow:
    """Drives one run over a Grid; each stage is a method, the state lives in :class:`VerticalRun`."""

    def __init__(self, grid: Grid, run: VerticalRun) -> None:
        self.grid = grid
        self.run = run

    def _send(self, plan: list[tuple[int, RecordDict]], message_type: str, group: str) -> list[NodeReply]:
        return _exchange(self.grid, plan, message_type, self.run.names, group=group, timeout=self.run.cfg.round_timeout)

    # -- stage 1 --------------------------------------------------------------------------------------
    def align(self, nodes: list[int], expected: list[str] | None) -> None:
        t0 = time.monotonic()
        run_psi(self.run.psi, nodes, lambda plan, mtype: self._send(plan, mtype, "psi"),
                domain_config={w.K_AS_OF: self.run.cfg.as_of}, expected=expected)
        self.run.schedule = Schedule.build(self.run.plan, self.run.psi.universe)
        self.run.stage("psi", t0, self.run.psi.rounds)
        log.info("aligned: universe %d; shared with the label holder: %s", self.run.psi.universe,
                 ", ".join(f"{p}={n}" for p, n in self.run.psi.matched.items()))

    # -- stage 2 --------------------------------------------------------------------------------------
    def setup(self) -> None:
        t0 = time.monotonic()
        content = {w.K_PLAN: self.run.plan.model_dump_json()}
        plan = [(nid, RecordDict({w.REC_CONFIG: ConfigRecord(dict(content))})) for nid in sorted(self.run.names)]
        replies = _require_ok(self._send(plan, w.MSG_SETUP, "setup"), "setup")
        for name, reply in replies.items():
            cfg, payload = reply[w.REC_CONFIG], reply[w.REC_PAYLOAD]
            self.run.directory[name] = {
                "identity": bytes(payload[w.P_IDENTITY_KEY]).hex(),
                "mask": json.loads(str(cfg[w.K_MASK_ANNOUNCEMENT])),
                "wrap": json.loads(str(cfg[w.K_WRAP_ANNOUNCEMENT])),
            }
        self.run.stage("setup", t0, 1)

    # -- stage 3 --------------------------------------------------------------------------------------
    def train(self, on_round: Any = None) -> None:
        run = self.run
        assert run.schedule is not None
        t0 = time.monotonic()
        rounds = run.schedule.rounds
        node_of = run.psi.node_of
        for r in range(rounds + 2):
            base = {w.K_ROUND: r, w.K_ROUNDS: rounds}
            if r == 0:
                base[w.K_DIRECTORY] = json.dumps(run.directory)
            plan = []
            for name in [run.label_holder, *run.peers]:
                payload: dict[str, Any] = {}
                if name == run.label_holder and run.z_prev is not None:
                    payload[w.P_Z] = np.ascontiguousarray(run.z_prev, dtype="<f8").tobytes()
                elif name != run.label_holder and (r - 2) in run.grads:
                    payload[w.P_GRAD] = run.grads[r - 2][name]
                content = RecordDict({w.REC_CONFIG: ConfigRecord(dict(base))})
                if payload:
                    content[w.REC_PAYLOAD] = ConfigRecord(payload)
                plan.append((node_of[name], content))
            replies = _require_ok(self._send(plan, w.MSG_STEP, f"train-{r}"), f"round {r}")
            run.grads.pop(r - 2, None)
            lh = replies[run.label_holder]
            if 1 <= r <= rounds:
                cfg, payload = lh[w.REC_CONFIG], lh[w.REC_PAYLOAD]
                peers, blobs = [str(p) for p in cfg[w.K_PEERS]], [bytes(b) for b in payload[w.P_GRADS]]
                if peers != run.peers or len(blobs) != len(peers):
                    raise ProtocolViolation(f"round {r}: the label holder wrapped gradients for {peers}, not {run.peers}")
                run.grads[r - 1] = dict(zip(peers, blobs))
                if w.REC_METRICS in lh and "train-loss" in lh[w.REC_METRICS]:
                    run.losses.append(float(lh[w.REC_METRICS]["train-loss"]))
            run.z_prev = self._sum(replies, w.P_MASKED, f"train/{r}") if r < rounds else None
            if r == rounds + 1:
                run.z_val = self._sum(replies, w.P_MASKED_VAL, "eval/val")
            if on_round is not None:
                on_round(r, rounds + 2)
            if r % 5 == 0 or r >= rounds:
                log.info("vertical round %d/%d%s", r + 1, rounds + 2,
                         f"; train loss {run.losses[-1]:.4f}" if run.losses else "")
        run.stage("training", t0, rounds + 2)

    @staticmethod
    def _sum(replies: Mapping[str, RecordDict], key: str, tag: str) -> np.ndarray:
        vectors = []
        for name, content in replies.items():
            if w.REC_PAYLOAD not in content or key not in content[w.REC_PAYLOAD]:
                raise ProtocolViolation(f"{tag}: {name} sent no masked output")
            mv = MaskedVector.from_bytes(bytes(content[w.REC_PAYLOAD][key]))
            if mv.participant != name:
                raise ProtocolViolation(f"{tag}: {name} sent a vector masked as {mv.participant!r}")
            vectors.append(mv)
        return sum_masked(vectors, round_tag=tag)

    # -- stage 4 --------------------------------------------------------------------------------------
    def evaluate(self, ref: str) -> tuple[dict[str, Any], dict[str, Any], list[str], dict[str, Any] | None]:
        run = self.run
        assert run.z_val is not None
        t0 = time.monotonic()
        plan = []
        for name in [run.label_holder, *run.peers]:
            content = RecordDict({w.REC_CONFIG: ConfigRecord({w.K_VERSION: ref})})
            if name == run.label_holder:
                content[w.REC_PAYLOAD] = ConfigRecord({w.P_Z_VAL: np.ascontiguousarray(run.z_val, dtype="<f8").tobytes()})
            plan.append((run.psi.node_of[name], content))
        replies = _require_ok(self._send(plan, w.MSG_FINAL, "final"), "final")
        stored = sorted(n for n, c in replies.items() if bool(c[w.REC_CONFIG].get(w.K_STORED, False)))
        lh = replies[run.label_holder][w.REC_CONFIG]
        run.stage("eval", t0, 1)
        challenger = json.loads(str(lh[w.K_CHALLENGER])) if w.K_CHALLENGER in lh else None
        return json.loads(str(lh[w.K_COVERAGE])), json.loads(str(lh[w.K_TOP_SPEC])), stored, challenger


# --- entry point -------------------------------------------------------------------------------------
def run(grid: Grid, context: Context) -> VerticalSummary:
    """Entry point called by the ServerApp router for ``mode = "vertical"``."""
    cfg = config_from(context.run_config)
    plan = cfg.plan()
    started = time.monotonic()
    run_id = int(context.run_id) if getattr(context, "run_id", None) is not None else 0
    expected: list[str] | None = None
    want = cfg.expect_nodes
    if cfg.consortium:
        consortium = load_consortium(cfg.consortium)
        if consortium.mode != "vertical":
            raise ConfigError(f"consortium {consortium.name!r} is {consortium.mode}, not vertical")
        expected = sorted(p.name for p in consortium.data_holders)
        want = max(want, len(expected))
    nodes = _wait_for_nodes(grid, max(want, 2), cfg.connect_timeout)
    if len(nodes) < max(want, 2):
        raise ProtocolViolation(f"{len(nodes)} node(s) connected, vertical training needs {max(want, 2)}")
    log.info("vertical run %s: %d node(s); plan %s", run_id, len(nodes), plan.model_dump_json())
    state = VerticalRun(cfg=cfg, plan=plan, run_id=run_id)
    flow = VerticalWorkflow(grid, state)
    flow.align(nodes, expected)
    registry = ModelRegistry(cfg.state_dir) if cfg.state_dir else None
    version: ModelVersion | None = None
    if registry is not None:
        version = registry.create(cfg.model_name, kind="vertical", config=_public_config(cfg, plan),
                                  participants=sorted(state.names.values()), run_id=str(run_id))
    try:
        flow.setup()
        flow.train()
        ref = version.ref if version is not None else f"{cfg.model_name}:v{max(run_id, 1) % 10**9}"
        metrics, top_spec, stored, challenger = flow.evaluate(ref)
        summary = _summary(state, version, metrics, top_spec, stored, started, challenger)
        if registry is not None and version is not None:
            registry.complete(
                version,
                metrics={"coverage": metrics, "stages": {k: v.model_dump() for k, v in state.stages.items()},
                         "label_dp": summary.label_dp, "train_loss": summary.train_loss,
                         "psi": {"universe": summary.universe, "matched": summary.matched},
                         "label_holder_alone": summary.label_holder_alone},
                weights_location={"top_spec": top_spec, "participants": sorted(state.names.values()),
                                  "bottoms": "local model stores"},
                participants=sorted(state.names.values()),
            )
    except BaseException as exc:
        if registry is not None and version is not None:
            registry.fail(version, f"{type(exc).__name__}: {exc}")
        raise
    _write_summary(summary, cfg)
    auc = (metrics.get("all") or {}).get("auc", float("nan"))
    log.info("vertical run %s finished in %.1fs: %d rounds, validation AUC %.4f", run_id, summary.seconds,
             summary.total_rounds, auc)
    return summary


def _public_config(cfg: VerticalRunConfig, plan: VerticalPlan) -> dict[str, Any]:
    return {"plan": plan.model_dump(mode="json"), "as_of": cfg.as_of or None, "consortium": Path(cfg.consortium).name}


def _summary(state: VerticalRun, version: ModelVersion | None, metrics: dict[str, Any], top_spec: dict[str, Any],
             stored: list[str], started: float, challenger: dict[str, Any] | None = None) -> VerticalSummary:
    assert state.schedule is not None
    plan = state.plan
    epsilon = label_dp_epsilon(plan, state.schedule.train.size, state.schedule.rounds, state.cfg.dp_delta)
    return VerticalSummary(
        run_id=state.run_id,
        version=version.ref if version else None,
        plan=plan.model_dump(mode="json"),
        participants=sorted(state.names.values()),
        label_holder=state.label_holder,
        universe=state.psi.universe,
        set_sizes=dict(state.psi.set_sizes),
        matched=state.psi.matched,
        train_rows=int(state.schedule.train.size),
        val_rows=int(state.schedule.val.size),
        forward_rounds=state.schedule.rounds,
        stages=state.stages,
        total_rounds=sum(s.rounds for s in state.stages.values()),
        train_loss=state.losses,
        metrics=metrics,
        label_dp=None if epsilon is None else {"sigma": plan.label_dp_sigma, "clip": plan.label_dp_clip,
                                               "epsilon": epsilon, "delta": state.cfg.dp_delta},
        label_holder_alone=challenger,
        top_kind=str(top_spec.get("kind")),
        bottoms_stored=stored,
        seconds=round(time.monotonic() - started, 3),
    )


def summary_path(cfg: VerticalRunConfig, run_id: int) -> Path | None:
    return summary_file(cfg.result_file, cfg.state_dir, run_id, "vertical-summary.json")


def _write_summary(summary: VerticalSummary, cfg: VerticalRunConfig) -> None:
    path = summary_path(cfg, summary.run_id)
    if path is not None:
        write_summary(path, summary)


__all__ = ["VerticalRunConfig", "VerticalSummary", "VerticalRun", "VerticalWorkflow", "config_from", "run"]
