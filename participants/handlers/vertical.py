"""Participant side of vertical (split) training: PSI alignment, key setup, pipelined steps, evaluation.

The step arithmetic is :mod:`protocols.vertical`'s (``BottomParty``/``TopParty``); this module adds
what a real node needs around it: where its data and state live, the keys, and persistence between
messages (in deployment a fresh ClientApp process serves each message, so everything a later
message needs is saved in the run folder, as plain arrays and JSON — never pickle; the PSI party,
which holds the run's PSI secrets, waits in Flower's ``context.state`` instead).

What leaves the node: blinded ids and tags (PSI), public keys in signed envelopes, bottom outputs
masked under pairwise masks, and at the label holder dZ wrapped to each peer's X25519 key, the top
spec and metrics. Never features, labels, ids or plaintext bottom outputs.

Keys: ``<state>/keys/identity.key`` (Ed25519, long-term, shared with horizontal training) signs the
run's masking and wrap announcements; ``<state>/keys/wrap.key`` (X25519, long-term) receives dZ.
Peer identities are checked against ``identity_fingerprint`` of the consortium entry when the
config has one; otherwise they are trusted on first use within the run (an honest-but-curious
coordinator relays them unchanged; a malicious one could substitute keys — pin fingerprints). A node
whose own key differs from its pinned fingerprint refuses the run at its first message.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ConfigRecord, Context, MetricRecord, RecordDict

from crypto.identity import IdentityKey, IdentityPublicKey
from crypto.keywrap import WrapKeyPair, WrapPublicKey, unwrap, wrap
from crypto.masking import MaskingKey, MaskingSession
from models.errors import InvalidInput
from models.lending import compare, policy_approval_rate
from models.metrics import evaluate
from models.preprocessing import Preprocessor
from participants.datastore import holder_data
from participants.handlers import psi
from participants.handlers._common import (
    announce_wrap_key,
    env_binder,
    locate,
    node_state_dir,
    open_wrap_key,
    own_keys,
)
from participants.model_store import LocalModelStore
from protocols.consortium import ConsortiumConfig, ParticipantConfig
from protocols.errors import ProtocolViolation
from protocols.psi import PsiResult
from protocols.scoring import sigmoid
from protocols.vertical import (
    BottomParty,
    Schedule,
    TopParty,
    VerticalPlan,
    bottom_inputs,
    coverage_metrics,
    train_alone,
)
from protocols.wire.vertical import (
    K_AS_OF,
    K_CHALLENGER,
    K_COVERAGE,
    K_DIRECTORY,
    K_IDENTITY_FINGERPRINT,
    K_LABEL_HOLDER,
    K_MASK_ANNOUNCEMENT,
    K_MATCHED,
    K_MATCHED_BY_PEER,
    K_NUM_FEATURES,
    K_PARTICIPANT,
    K_PEERS,
    K_PLAN,
    K_ROLE,
    K_ROUND,
    K_STORED,
    K_TOP_SPEC,
    K_UNIVERSE,
    K_VERSION,
    K_WRAP_ANNOUNCEMENT,
    MSG_FINAL,
    MSG_PSI_BLIND,
    MSG_PSI_MATCH,
    MSG_PSI_REBLIND,
    MSG_SETUP,
    MSG_STEP,
    P_GRAD,
    P_GRADS,
    P_IDENTITY_KEY,
    P_MASKED,
    P_MASKED_VAL,
    P_Z,
    P_Z_VAL,
    REC_CONFIG,
    REC_METRICS,
    REC_PAYLOAD,
    REC_PSI,
    ROLE_LABEL_HOLDER,
    ROLE_PEER,
)

# Ed25519 signature domains of messages between participants (the coordinator only relays them;
# wrap-key announcements: participants.handlers._common.announce_wrap_key).
GRAD_DOMAIN = "vertical.grad/v1"


# --- where this node is --------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeEnv:
    """Who this node is and where its data and state live (resolved once per message)."""

    participant: ParticipantConfig
    consortium: ConsortiumConfig
    run_id: int
    state_dir: Path
    data_dir: Path

    @property
    def name(self) -> str:
        return self.participant.name

    @property
    def label_holder(self) -> str:
        return self.consortium.label_holder.name

    @property
    def is_label_holder(self) -> bool:
        return self.name == self.label_holder

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "runs" / str(self.run_id) / "vertical"

    @property
    def session(self) -> str:
        """Masking session and PSI domain: derived locally, so the relay cannot steer them."""
        return f"{self.consortium.name}/vertical/run-{self.run_id}"


def resolve_env(node_config: Mapping[str, Any], run_config: Mapping[str, Any], run_id: int) -> NodeEnv:
    """Deployment: node config ``node-name`` (+ ``data-dir``, ``consortium``, ``state-dir``).
    Simulation: ``partition-id`` indexes the consortium's data holders (run config ``consortium``).
    State dir: node config ``state-dir``, else ``<node-state-root>/<name>``, else ``<data_dir>/state``."""
    path = str(node_config.get("consortium") or run_config.get("consortium") or "")
    cfg, participant = locate(node_config, path, "vertical")
    data_dir = Path(str(node_config.get("data-dir") or participant.data_dir))
    participant = participant.model_copy(update={"data_dir": data_dir})
    state_dir = node_state_dir(node_config, run_config.get("node-state-root") or None, participant.name, data_dir)
    return NodeEnv(participant=participant, consortium=cfg, run_id=int(run_id), state_dir=state_dir, data_dir=data_dir)


def load_own_data(env: NodeEnv, as_of: str | None) -> tuple[pd.DataFrame, pd.Series | None]:
    """This node's features indexed by USCC (and labels at the label holder), from its own folder only."""
    return holder_data(env.consortium, env.participant, as_of)


def _long_term_keys(env: NodeEnv) -> tuple[IdentityKey, WrapKeyPair]:
    return own_keys(env.state_dir / "keys", env.participant)


# --- persistence of the run between messages -------------------------------------------------------
def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _load_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    if not path.exists():
        raise ProtocolViolation(f"{what} missing: message out of order for this run")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _write_json(path: Path, doc: Any, *, secret: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)
    os.replace(tmp, path)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ProtocolViolation(f"{what} missing: message out of order for this run") from None


def _module_arrays(prefix: str, module: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    out = {f"{prefix}.w.{k}": v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    for idx, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{prefix}.o.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().numpy()
    return out


def _restore_module(prefix: str, arrays: Mapping[str, np.ndarray], module: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    weights = {k[len(prefix) + 3:]: torch.as_tensor(v) for k, v in arrays.items() if k.startswith(f"{prefix}.w.")}
    module.load_state_dict(weights)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in arrays.items():
        if k.startswith(f"{prefix}.o."):
            idx, key = k[len(prefix) + 3:].split(".", 1)
            state.setdefault(int(idx), {})[key] = torch.as_tensor(v)
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)


@dataclass
class Trainer:
    """The node's training objects for one run, rebuilt from the run folder for every message."""

    env: NodeEnv
    plan: VerticalPlan
    bottom: BottomParty
    top: TopParty | None
    preprocessor: Preprocessor
    feature_names: list[str]
    meta: dict[str, Any]

    _STATE = "trainer.npz"
    _META = "trainer.json"
    _ALIGNED = "aligned.npz"

    @classmethod
    def create(cls, env: NodeEnv, plan: VerticalPlan) -> "Trainer":
        aligned = _load_npz(env.run_dir / cls._ALIGNED, "aligned data")
        meta = _read_json(env.run_dir / "own.json", "own data description")
        x, present = aligned["x"], aligned["present"].astype(bool)
        try:
            pre, xt = bottom_inputs(x, present, list(meta["features"]), Schedule.build(plan, x.shape[0]))
        except ProtocolViolation as exc:
            raise ProtocolViolation(f"{env.name}: {exc}") from None
        _save_npz(env.run_dir / cls._ALIGNED, {**aligned, "xt": xt})
        _write_json(env.run_dir / "preprocessor.json", pre.model_dump(mode="json"))
        bottom = BottomParty(env.name, xt, present, plan, is_label_holder=env.is_label_holder)
        top = TopParty(aligned["labels"], plan) if env.is_label_holder else None
        state = {"plan": plan.model_dump(mode="json"), "last_forward": -1, "losses": [], "dp_rng": None}
        return cls(env, plan, bottom, top, pre, list(meta["features"]), state)

    @classmethod
    def load(cls, env: NodeEnv) -> "Trainer":
        meta = _read_json(env.run_dir / cls._META, "training state")
        plan = VerticalPlan.model_validate(meta["plan"])
        aligned = _load_npz(env.run_dir / cls._ALIGNED, "aligned data")
        arrays = _load_npz(env.run_dir / cls._STATE, "training state")
        bottom = BottomParty(env.name, aligned["xt"], aligned["present"].astype(bool), plan,
                             is_label_holder=env.is_label_holder)
        _restore_module("bottom", arrays, bottom.model, bottom._opt)
        bottom._pending = {}
        for key in arrays:
            if key.startswith("pending.") and key.endswith(".rows"):
                _, r, k, _ = key.split(".")
                keep = torch.as_tensor(arrays[f"pending.{r}.{k}.keep"])
                bottom._pending.setdefault(int(r), []).append((int(k), arrays[key], keep))  # type: ignore[arg-type]
        bottom._pending = {r: [(rows, keep) for _, rows, keep in sorted(v, key=lambda t: t[0])]
                           for r, v in bottom._pending.items()}  # type: ignore[misc]
        top = None
        if env.is_label_holder:
            top = TopParty(aligned["labels"], plan)
            _restore_module("top", arrays, top.model, top._opt)
            top.losses = list(meta["losses"])
            if meta["dp_rng"] is not None:
                top._dp_rng.bit_generator.state = meta["dp_rng"]
        pre = Preprocessor.model_validate(_read_json(env.run_dir / "preprocessor.json", "preprocessor"))
        own = _read_json(env.run_dir / "own.json", "own data description")
        return cls(env, plan, bottom, top, pre, list(own["features"]), meta)

    def save(self) -> None:
        arrays = _module_arrays("bottom", self.bottom.model, self.bottom._opt)
        for r, batches in self.bottom._pending.items():
            for k, (rows, keep) in enumerate(batches):
                arrays[f"pending.{r}.{k}.rows"] = np.asarray(rows)
                arrays[f"pending.{r}.{k}.keep"] = keep.numpy()
        if self.top is not None:
            arrays.update(_module_arrays("top", self.top.model, self.top._opt))
            self.meta["losses"] = list(self.top.losses)
            self.meta["dp_rng"] = _jsonable(self.top._dp_rng.bit_generator.state)
        _save_npz(self.env.run_dir / self._STATE, arrays)
        _write_json(self.env.run_dir / self._META, self.meta)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


# --- masking and keys of the run ---------------------------------------------------------------------
def _mask_key(env: NodeEnv, *, create: bool = False) -> MaskingKey:
    path = env.run_dir / "mask.key.json"
    if create:
        raw = X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        _write_json(path, {"x25519": raw.hex()}, secret=True)
    doc = _read_json(path, "masking key")
    return MaskingKey(X25519PrivateKey.from_private_bytes(bytes.fromhex(doc["x25519"])))


def _install_directory(env: NodeEnv, directory: Mapping[str, Mapping[str, Any]]) -> None:
    """Verify every relayed announcement once (round 0) and keep the verified directory."""
    holders = sorted(p.name for p in env.consortium.data_holders)
    if sorted(directory) != holders:
        raise ProtocolViolation(f"{env.name}: directory lists {sorted(directory)}, consortium has {holders}")
    own_identity, _ = _long_term_keys(env)  # first: a node not on its pinned key says so, not "relayed"
    identities = {}
    wrap_keys = {}
    for name, entry in directory.items():
        identity, wrap_key = open_wrap_key(env.consortium, env.name, name, bytes.fromhex(entry["identity"]),
                                           entry["wrap"], env.session)
        identities[name] = identity.to_bytes().hex()
        wrap_keys[name] = wrap_key.to_bytes().hex()
    if identities[env.name] != own_identity.public_key.to_bytes().hex():
        raise ProtocolViolation(f"{env.name}: the directory carries another identity for this node")
    _session(env, {n: e["mask"] for n, e in directory.items()}, identities)  # verifies every signature
    _write_json(env.run_dir / "directory.json",
                {"identities": identities, "wrap": wrap_keys, "mask": {n: e["mask"] for n, e in directory.items()}})


def _session(env: NodeEnv, announcements: Mapping[str, Any] | None = None,
             identities: Mapping[str, str] | None = None) -> MaskingSession:
    if announcements is None or identities is None:
        doc = _read_json(env.run_dir / "directory.json", "key directory")
        announcements, identities = doc["mask"], doc["identities"]
    return MaskingSession(
        session_id=env.session, me=env.name, mask_key=_mask_key(env), announcements=announcements,
        identities={n: IdentityPublicKey.from_bytes(bytes.fromhex(h)) for n, h in identities.items()},
    )


def _grad_context(env: NodeEnv, peer: str, round_idx: int) -> bytes:
    return f"fedscore/vertical/dz/v1\x00{env.session}\x00{env.label_holder}\x00{peer}\x00{round_idx}".encode()


def _encode_grad(grad: np.ndarray) -> bytes:
    return np.ascontiguousarray(grad, dtype="<f8").tobytes()


def _decode_matrix(blob: bytes, rows: int, cols: int, what: str) -> np.ndarray:
    arr = np.frombuffer(bytes(blob), dtype="<f8")
    if arr.size != rows * cols:
        raise ProtocolViolation(f"{what}: {arr.size} values, expected {rows}x{cols}")
    if not np.isfinite(arr).all():
        raise ProtocolViolation(f"{what}: contains NaN or infinity")
    return arr.reshape(rows, cols).astype(np.float64)


# --- handlers ------------------------------------------------------------------------------------
def _reply(config: Mapping[str, Any], payload: Mapping[str, Any] | None = None,
           metrics: Mapping[str, Any] | None = None) -> RecordDict:
    out = RecordDict({REC_CONFIG: ConfigRecord(dict(config))})
    if payload:
        out[REC_PAYLOAD] = ConfigRecord(dict(payload))
    if metrics:
        out[REC_METRICS] = MetricRecord(dict(metrics))
    return out


def _config(content: RecordDict) -> ConfigRecord:
    if REC_CONFIG not in content:
        raise ProtocolViolation("message without a config record")
    return content[REC_CONFIG]  # type: ignore[return-value]


def _payload(content: RecordDict) -> ConfigRecord:
    return content[REC_PAYLOAD] if REC_PAYLOAD in content else ConfigRecord({})  # type: ignore[return-value]


def _role(env: NodeEnv) -> str:
    return ROLE_LABEL_HOLDER if env.is_label_holder else ROLE_PEER


def _psi_step(content: RecordDict, env: NodeEnv, state: RecordDict, own: Mapping[str, np.ndarray]
              ) -> tuple[ConfigRecord, PsiResult | None]:
    """Hand the PSI messages relayed to us to our party (restored from the run state)."""
    inbox = content[REC_PSI] if REC_PSI in content else ConfigRecord({})
    return psi.step(state, psi.psi_config(env.consortium, env.run_id), env.name, [str(i) for i in own["ids"]],
                    inbox)  # type: ignore[arg-type]


def handle_psi_blind(content: RecordDict, env: NodeEnv, state: RecordDict) -> RecordDict:
    """Read our own rows, keep them in the run folder by position, send our ids blinded and shuffled."""
    _long_term_keys(env)  # a node on the wrong state dir (not its pinned identity) refuses up front
    if env.run_dir.exists():
        shutil.rmtree(env.run_dir)  # a retried run starts clean
    as_of = str(_config(content).get(K_AS_OF, "")) or None
    frame, labels = load_own_data(env, as_of)
    ids = [str(i) for i in frame.index]
    out = psi.start(state, psi.psi_config(env.consortium, env.run_id), env.name, ids)
    arrays = {"x": frame.to_numpy(dtype=np.float64), "ids": np.array(ids, dtype=str)}
    if labels is not None:
        arrays["labels"] = labels.to_numpy(dtype=np.float64)
    _save_npz(env.run_dir / "own.npz", arrays)
    _write_json(env.run_dir / "own.json", {"features": [str(c) for c in frame.columns]})
    reply = _reply({K_PARTICIPANT: env.name, K_ROLE: _role(env), K_LABEL_HOLDER: env.label_holder})
    reply[REC_PSI] = out
    return reply


def handle_psi_reblind(content: RecordDict, env: NodeEnv, state: RecordDict) -> RecordDict:
    """Re-blind the other side's set(s); tags for the outgoing direction go back."""
    out, _ = _psi_step(content, env, state, _load_npz(env.run_dir / "own.npz", "own data"))
    reply = _reply({K_PARTICIPANT: env.name})
    reply[REC_PSI] = out
    return reply


def handle_psi_match(content: RecordDict, env: NodeEnv, state: RecordDict) -> RecordDict:
    """Match, then lay our rows out in universe order (absent rows NaN, marked not present)."""
    own = _load_npz(env.run_dir / "own.npz", "own data")
    _, result = _psi_step(content, env, state, own)
    if result is None:
        raise ProtocolViolation(f"{env.name}: PSI not finished after the match round")
    x_own = own["x"]
    x = np.full((result.size, x_own.shape[1]), np.nan)
    present = np.zeros(result.size, dtype=bool)
    x[result.positions] = x_own[result.rows]
    present[result.positions] = True
    aligned: dict[str, np.ndarray] = {"x": x, "present": present}
    reply: dict[str, Any] = {K_PARTICIPANT: env.name, K_UNIVERSE: result.size, K_MATCHED: int(result.positions.size)}
    if env.is_label_holder:
        aligned["labels"] = own["labels"][result.rows]
        aligned["ids"] = own["ids"][result.rows]  # our own ids in universe order: the split record, kept here
        for peer, mask in result.present.items():
            aligned[f"coverage.{peer}"] = mask
        reply[K_PEERS] = list(result.present)
        reply[K_MATCHED_BY_PEER] = [int(m.sum()) for m in result.present.values()]
    _save_npz(env.run_dir / "aligned.npz", aligned)
    (env.run_dir / "own.npz").unlink()
    return _reply(reply)


def handle_setup(content: RecordDict, env: NodeEnv) -> RecordDict:
    """Fit preprocessing on our training rows, build the models, announce this run's keys (signed)."""
    cfg = _config(content)
    try:
        plan = VerticalPlan.model_validate_json(str(cfg[K_PLAN]))
    except (KeyError, ValueError) as exc:
        raise ProtocolViolation(f"{env.name}: setup without a valid plan ({type(exc).__name__})") from None
    torch.set_num_threads(1)
    trainer = Trainer.create(env, plan)
    trainer.save()
    identity, wrap_pair = _long_term_keys(env)
    mask_key = _mask_key(env, create=True)
    mask_ann = mask_key.announce(identity, participant_id=env.name, session_id=env.session)
    wrap_ann = announce_wrap_key(identity, env.name, env.session, wrap_pair.public_key)
    return _reply(
        {K_PARTICIPANT: env.name, K_NUM_FEATURES: len(trainer.feature_names),
         K_IDENTITY_FINGERPRINT: identity.fingerprint,
         K_MASK_ANNOUNCEMENT: json.dumps(mask_ann), K_WRAP_ANNOUNCEMENT: json.dumps(wrap_ann)},
        {P_IDENTITY_KEY: identity.public_key.to_bytes()},
    )


def handle_step(content: RecordDict, env: NodeEnv) -> RecordDict:
    """One pipelined round (see protocols.vertical): apply an old gradient, send masked new outputs."""
    torch.set_num_threads(1)
    cfg, payload = _config(content), _payload(content)
    r = int(cfg[K_ROUND])
    if r == 0:
        _install_directory(env, json.loads(str(cfg[K_DIRECTORY])))
    trainer = Trainer.load(env)
    rounds = trainer.bottom.schedule.rounds
    if r <= int(trainer.meta["last_forward"]) or r > rounds + 1:
        raise ProtocolViolation(f"{env.name}: round {r} replayed or out of range")
    session = _session(env)
    out_cfg: dict[str, Any] = {K_PARTICIPANT: env.name, K_ROUND: r}
    out_payload: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    plan = trainer.plan
    if env.is_label_holder:
        assert trainer.top is not None
        if 1 <= r <= rounds:
            n_rows = sum(b.size for b in trainer.top.schedule.batches(r - 1))
            z = _decode_matrix(payload[P_Z], n_rows, plan.out_dim, "Z")
            grad = trainer.top.step(r - 1, z)
            trainer.bottom.backward(r - 1, grad)
            metrics["train-loss"] = float(trainer.top.losses[-1])
            identity, _ = _long_term_keys(env)
            directory = _read_json(env.run_dir / "directory.json", "key directory")
            peers = [n for n in sorted(directory["wrap"]) if n != env.name]
            blobs = []
            for peer in peers:
                blob = wrap(_encode_grad(grad), WrapPublicKey.from_bytes(bytes.fromhex(directory["wrap"][peer])),
                            context=_grad_context(env, peer, r - 1))
                blobs.append(blob + identity.sign(GRAD_DOMAIN, blob))
            out_cfg[K_PEERS] = peers
            out_payload[P_GRADS] = blobs
    elif r >= 2:
        blob = bytes(payload[P_GRAD])
        directory = _read_json(env.run_dir / "directory.json", "key directory")
        sender = IdentityPublicKey.from_bytes(bytes.fromhex(directory["identities"][env.label_holder]))
        body, signature = blob[:-64], blob[-64:]
        sender.verify(GRAD_DOMAIN, body, signature)
        _, wrap_pair = _long_term_keys(env)
        n_rows = sum(b.size for b in trainer.bottom.schedule.batches(r - 2))
        grad = _decode_matrix(unwrap(body, wrap_pair, context=_grad_context(env, env.name, r - 2)),
                              n_rows, plan.out_dim, "dZ")
        trainer.bottom.backward(r - 2, grad)
    if r < rounds:
        out_payload[P_MASKED] = session.mask(trainer.bottom.forward(r), round_tag=f"train/{r}").to_bytes()
    if r == rounds + 1:  # every bottom is final now: send the masked validation outputs
        val = trainer.bottom.embed(trainer.bottom.schedule.val)
        out_payload[P_MASKED_VAL] = session.mask(val, round_tag="eval/val").to_bytes()
    trainer.meta["last_forward"] = r
    trainer.save()
    return _reply(out_cfg, out_payload, metrics)


def challenger_report(aligned: Mapping[str, np.ndarray], val: np.ndarray, val_logits: np.ndarray,
                      plan: VerticalPlan) -> dict[str, Any] | None:
    """What federation is worth to the label holder, measured at the label holder alone: the model
    it would have without the consortium (its own features, the same recipe and training rows),
    against the federated one on the same held-out rows. Only these aggregates leave the node."""
    y = aligned["labels"][val]
    if y.min() == y.max():
        return None
    torch.set_num_threads(1)
    bottom, top = train_alone(aligned["xt"], aligned["present"].astype(bool), aligned["labels"], plan)
    alone = sigmoid(top.logits(bottom.embed(val)).reshape(-1))
    m = evaluate(y, alone)
    out: dict[str, Any] = {"auc": m.auc, "ks": m.ks, "gini": m.gini, "approve_below_pd": plan.approve_below_pd,
                           "lending": None}
    try:
        rate = policy_approval_rate(alone, plan.approve_below_pd)
        out["lending"] = compare(y, alone, sigmoid(np.asarray(val_logits).reshape(-1)), rate).as_dict()
    except InvalidInput:  # the challenger approves nobody at that PD
        pass
    return out


def handle_final(content: RecordDict, env: NodeEnv) -> RecordDict:
    """Keep the bottom in the local model store; the label holder also scores the validation rows."""
    cfg, payload = _config(content), _payload(content)
    ref = str(cfg[K_VERSION])
    trainer = Trainer.load(env)
    if int(trainer.meta["last_forward"]) != trainer.bottom.schedule.rounds + 1:
        raise ProtocolViolation(f"{env.name}: final round before training finished")
    out_cfg: dict[str, Any] = {K_PARTICIPANT: env.name}
    metrics: dict[str, Any] = {}
    evaluation: dict[str, np.ndarray] | None = None
    meta: dict[str, Any] = {"run_id": env.run_id, "plan": trainer.plan.model_dump(mode="json"),
                            "label_holder": env.label_holder, "session": env.session}
    if env.is_label_holder:
        assert trainer.top is not None
        val = trainer.bottom.schedule.val
        z = _decode_matrix(payload[P_Z_VAL], val.size, trainer.plan.out_dim, "Z_val")
        aligned = _load_npz(env.run_dir / "aligned.npz", "aligned data")
        coverage = {env.name: np.ones(val.size, dtype=bool)}
        coverage.update({k.split(".", 1)[1]: v[val].astype(bool) for k, v in aligned.items() if k.startswith("coverage.")})
        val_logits = trainer.top.logits(z)
        report = coverage_metrics(aligned["labels"][val], val_logits, coverage)
        evaluation = {"universe_ids": aligned["ids"], "val_logits": val_logits}
        spec = trainer.top.spec()
        out_cfg[K_TOP_SPEC] = json.dumps(spec.to_dict())
        out_cfg[K_COVERAGE] = json.dumps(report)
        out_cfg[K_CHALLENGER] = json.dumps(challenger_report(aligned, val, val_logits, trainer.plan))
        losses = trainer.top.losses
        metrics.update({"val-n": int(val.size), "train-loss-first": float(losses[0]), "train-loss-last": float(losses[-1])})
        for part, values in report.items():
            if values is not None:
                metrics.update({f"{part}-{k}": float(v) for k, v in values.items()})
        meta["top_spec"] = spec.to_dict()
    stored = LocalModelStore(env.state_dir / "models").save_bottom(
        ref, trainer.bottom.model, trainer.preprocessor, trainer.feature_names, meta, evaluation=evaluation)
    out_cfg[K_STORED] = stored.name == f"v{ref.rsplit(':v', 1)[1]}"
    shutil.rmtree(env.run_dir.parent, ignore_errors=True)  # run secrets and aligned rows are no longer needed
    return _reply(out_cfg, None, metrics)


_with_env = env_binder(resolve_env)


def _with_env_and_state(fn: Callable[[RecordDict, NodeEnv, RecordDict], RecordDict]) -> Callable[[RecordDict, Context], RecordDict]:
    """PSI handlers also get ``context.state``, where the PSI party waits between messages."""

    def handler(content: RecordDict, context: Context) -> RecordDict:
        return _with_env(lambda c, env: fn(c, env, context.state))(content, context)

    handler.__name__ = fn.__name__
    handler.__doc__ = fn.__doc__
    return handler


#: message type -> ``(content, context) -> reply content``; the ClientApp registers these.
HANDLERS: dict[str, Callable[[RecordDict, Context], RecordDict]] = {
    MSG_PSI_BLIND: _with_env_and_state(handle_psi_blind),
    MSG_PSI_REBLIND: _with_env_and_state(handle_psi_reblind),
    MSG_PSI_MATCH: _with_env_and_state(handle_psi_match),
    MSG_SETUP: _with_env(handle_setup),
    MSG_STEP: _with_env(handle_step),
    MSG_FINAL: _with_env(handle_final),
}

__all__ = ["HANDLERS", "NodeEnv", "Trainer", "load_own_data", "resolve_env"]
