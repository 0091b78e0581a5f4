"""Participant side of horizontal (same-schema, several banks) encrypted FedAvg / FedProx.

Each handler takes the incoming :class:`~flwr.app.RecordDict` plus this node's
:class:`NodeEnv` and returns the reply content; the ClientApp only routes. What leaves the node:
public keys, CKKS ciphertexts of the weighted update, wrapped aggregation keys (for one named
peer each), and metrics -- never rows, never plaintext parameters (unless the consortium asked
this node to publish the final model).

Keys on disk (``<state-dir>``, mode 0600): ``keys/identity.key`` (Ed25519, signs wrapped keys),
``keys/wrap.key`` (X25519, receives wrapped keys) -- long-term; ``runs/<run>/aggregation.ckks``
-- the run's CKKS aggregation secret, deleted after the final round. The decrypted final model goes
to the local model store ``models/<model-name>/<version>.npy`` (+ a ``.json`` card).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from pydantic import Field
from sklearn.model_selection import train_test_split

from crypto.ckks_keys import AggregationKey, EncryptedVector, decrypt, encrypt_vector
from crypto.identity import IdentityKey, IdentityPublicKey
from crypto.keywrap import WrapKeyPair, WrapPublicKey
from models import LogisticRegression, MLP, flatten_params, local_update, num_params, unflatten_params
from models.metrics import evaluate as evaluate_scores
from models.metrics import roc_points
from models.training import predict_proba, seed_everything
from participants.datasets.frames import participant_frame
from participants.handlers._common import (
    announce_wrap_key,
    check_pinned_identity,
    env_binder,
    locate,
    node_state_dir,
    open_wrap_key,
    own_keys,
)
from protocols.consortium import ConsortiumConfig, ParticipantConfig, parse_widths, validate_settings
from protocols.errors import ConfigError, ProtocolViolation, WrapKeyRefused
from protocols.wire.horizontal import (
    A_AGGREGATE,
    A_UPDATE,
    A_WEIGHTS,
    K_HOLDER,
    K_KEY_ID,
    K_NUM_FEATURES,
    K_NUM_PARAMS,
    K_NUM_TRAIN,
    K_NUM_VAL,
    K_PARTICIPANT,
    K_PEERS,
    K_PUBLISH,
    K_REASON,
    K_REFUSED,
    K_ROUND,
    K_VERSION,
    MSG_FINAL,
    MSG_FIT,
    MSG_HELLO,
    MSG_KEYGEN,
    P_AGGREGATE,
    P_HOLDER_IDENTITY,
    P_IDENTITY_KEY,
    P_PEER_IDENTITIES,
    P_PEER_WRAP_ANNOUNCEMENTS,
    P_PUBLIC_CONTEXT,
    P_UPDATE,
    P_WRAP_ANNOUNCEMENT,
    P_WRAPPED,
    REC_ARRAYS,
    REC_CONFIG,
    REC_METRICS,
    REC_PAYLOAD,
    SharedRunSettings,
)

CURVE_POINTS = 51  # ROC / KS curves leave the node as this many summary points, no thresholds


# --- configuration ---------------------------------------------------------------------------
class TrainSettings(SharedRunSettings):
    """The run-config keys a participant acts on (the rest is the coordinator's business)."""

    optimizer: str = Field("adam", pattern="^(adam|sgd)$")
    seed: int = 42
    val_fraction: float = Field(0.2, alias="val-fraction", gt=0, lt=1)
    consortium: str = ""
    test_data: str = Field("", alias="test-data")
    node_state_root: str = Field("", alias="node-state-root")

    @property
    def hidden(self) -> tuple[int, ...]:
        return parse_widths(self.mlp_hidden, "mlp-hidden")


def settings_from(run_config: Mapping[str, Any]) -> TrainSettings:
    return validate_settings(TrainSettings, run_config)


@dataclass(frozen=True)
class LocalData:
    """This participant's own rows, already split; nothing here ever leaves the node."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])


@dataclass(frozen=True)
class NodeEnv:
    """Who this node is and where its data and keys live (resolved once per message)."""

    participant: str
    run_id: int
    settings: TrainSettings
    state_dir: Path
    data_dir: Path
    participant_config: ParticipantConfig
    consortium: ConsortiumConfig
    test_file: Path | None

    @property
    def keys_dir(self) -> Path:
        return self.state_dir / "keys"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "runs" / str(self.run_id)

    @property
    def session(self) -> str:
        """What wrap-key announcements are bound to: derived locally, so the relay cannot steer it."""
        return f"{self.consortium.name}/horizontal/run-{self.run_id}"


def resolve_env(node_config: Mapping[str, Any], run_config: Mapping[str, Any], run_id: int) -> NodeEnv:
    """Map the Flower node to a participant.

    Deployment: ``--node-config`` gives ``node-name`` and ``data-dir`` (and optionally ``consortium``
    and ``state-dir``, which are node-local paths). Simulation: ``partition-id`` indexes the data
    holders of the consortium file named in the run config. Either way only this participant's
    entry and directory are read.
    """
    settings = settings_from(run_config)
    consortium_path = str(node_config.get("consortium") or settings.consortium)
    cfg, participant = locate(node_config, consortium_path, "horizontal")
    data_dir = Path(str(node_config.get("data-dir") or participant.data_dir))
    state_dir = node_state_dir(node_config, settings.node_state_root, participant.name, data_dir)
    test = str(node_config.get("test-file") or settings.test_data)
    return NodeEnv(
        participant=participant.name,
        run_id=run_id,
        settings=settings,
        state_dir=state_dir,
        data_dir=data_dir,
        participant_config=participant,
        consortium=cfg,
        test_file=Path(test) if test else None,
    )


def _frame(env: NodeEnv, participant: ParticipantConfig) -> tuple[np.ndarray, np.ndarray]:
    frame, labels = participant_frame(env.consortium, participant)
    if labels is None:
        raise ConfigError(f"participant {participant.name}: no labels; horizontal training needs them")
    return frame.to_numpy(dtype=np.float64), labels.to_numpy(dtype=np.float64)


def load_local_data(env: NodeEnv, *, with_test: bool = False) -> LocalData:
    """Read this participant's own records file and split off a stratified validation part.

    Only the ``custom`` feature schema (one row per entity, binary label) is used for horizontal
    training; the split is seeded so every message of the run sees the same rows. A common
    evaluation file (``test-file`` node config / ``test-data`` run config) is read with this
    participant's own column mapping.
    """
    p = env.participant_config.model_copy(update={"data_dir": env.data_dir})
    x, y = _frame(env, p)
    x_tr, x_va, y_tr, y_va = train_test_split(
        x, y, test_size=env.settings.val_fraction, random_state=env.settings.seed, stratify=y
    )
    x_te = y_te = None
    if with_test and env.test_file is not None and p.features is not None:
        test_path = env.test_file if env.test_file.is_absolute() else env.data_dir / env.test_file
        test_holder = p.model_copy(update={
            "name": f"{p.name}-test",
            "data_dir": test_path.parent,
            "features": p.features.model_copy(update={"file": test_path.name}),
        })
        x_te, y_te = _frame(env, test_holder)
    return LocalData(x_tr, y_tr, x_va, y_va, x_te, y_te)


# --- keys ------------------------------------------------------------------------------------
def _long_term_keys(env: NodeEnv) -> tuple[IdentityKey, WrapKeyPair]:
    return own_keys(env.keys_dir, env.participant_config)


def _agg_key_path(env: NodeEnv) -> Path:
    return env.run_dir / "aggregation.ckks"


def _load_agg_key(env: NodeEnv, key_id: str | None = None) -> AggregationKey:
    path = _agg_key_path(env)
    if not path.exists():
        raise ProtocolViolation(f"participant {env.participant}: no aggregation key for this run (setup round missed)")
    key = AggregationKey.load(path)
    if key_id is not None and key.key_id != key_id:
        raise ProtocolViolation(f"participant {env.participant}: aggregation key id differs from the round's")
    return key  # type: ignore[return-value]


# --- model helpers ---------------------------------------------------------------------------
def build_model(settings: TrainSettings, num_features: int) -> torch.nn.Module:
    """The shared initial model: same seed → same weights on every participant."""
    seed_everything(settings.seed)
    if settings.model == "logistic":
        return LogisticRegression(num_features)
    return MLP(num_features, hidden=settings.hidden)


def _summary_curves(y: np.ndarray, p: np.ndarray) -> dict[str, list[float]]:
    """ROC at fixed FPRs and KS (cumulative bad/good share by score quantile): summary points only."""
    roc = roc_points(y, p)
    grid = np.linspace(0.0, 1.0, CURVE_POINTS)
    tpr = np.interp(grid, np.asarray(roc.fpr), np.asarray(roc.tpr))
    order = np.argsort(-p, kind="stable")
    ys = y[order]
    cut = np.clip(np.round(grid * ys.size).astype(int), 0, ys.size)
    bad_cum = np.concatenate([[0.0], np.cumsum(ys)])[cut] / max(ys.sum(), 1.0)
    good_cum = np.concatenate([[0.0], np.cumsum(1 - ys)])[cut] / max((1 - ys).sum(), 1.0)
    return {
        "roc-fpr": grid.tolist(),
        "roc-tpr": tpr.tolist(),
        "ks-population": grid.tolist(),
        "ks-bad": bad_cum.tolist(),
        "ks-good": good_cum.tolist(),
    }


def _score(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, prefix: str) -> dict[str, float]:
    p = predict_proba(model, x)
    m = evaluate_scores(y, p)
    eps = 1e-12
    loss = float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))
    return {f"{prefix}-auc": m.auc, f"{prefix}-ks": m.ks, f"{prefix}-gini": m.gini, f"{prefix}-loss": loss}


def _global_from(content: RecordDict, env: NodeEnv, model: torch.nn.Module) -> np.ndarray:
    """θ_global: decrypt the aggregate (or the seeded init in round 1) and load it into ``model``."""
    if env.settings.encrypted:
        blob = content.get(REC_PAYLOAD, ConfigRecord()).get(P_AGGREGATE, b"")
        if not blob:
            return flatten_params(model)
        key = _load_agg_key(env)
        total = decrypt(key, EncryptedVector.from_bytes(blob, key))
    else:
        arrays = content.get(REC_ARRAYS)
        if arrays is None or A_AGGREGATE not in arrays:
            return flatten_params(model)
        total = np.asarray(arrays[A_AGGREGATE].numpy(), dtype=np.float64)
    if total.size != num_params(model) + 1 or not total[-1] > 0:
        raise ProtocolViolation(f"participant {env.participant}: aggregate does not fit the model")
    theta = total[:-1] / total[-1]
    unflatten_params(model, theta)
    return theta


def _privatise(theta_local: np.ndarray, theta_global: np.ndarray, s: TrainSettings, rng: np.random.Generator) -> np.ndarray:
    """Clip the update to L2 norm C and add N(0, (zC)²) (see coordinator.workflows.privacy)."""
    delta = theta_local - theta_global
    norm = float(np.linalg.norm(delta))
    if norm > s.dp_clip:
        delta = delta * (s.dp_clip / norm)
    delta = delta + rng.normal(0.0, s.dp_noise * s.dp_clip, size=delta.shape)
    return theta_global + delta


# --- handlers --------------------------------------------------------------------------------
def handle_hello(content: RecordDict, env: NodeEnv) -> RecordDict:
    """Announce who we are, our identity, our wrap key sealed by it (for this run) and sizes (counts only)."""
    identity, wrap_pair = _long_term_keys(env)
    data = load_local_data(env)
    model = build_model(env.settings, data.num_features)
    return RecordDict(
        {
            REC_CONFIG: ConfigRecord(
                {
                    K_PARTICIPANT: env.participant,
                    K_NUM_TRAIN: int(data.y_train.size),
                    K_NUM_VAL: int(data.y_val.size),
                    K_NUM_FEATURES: data.num_features,
                    K_NUM_PARAMS: num_params(model),
                }
            ),
            REC_PAYLOAD: ConfigRecord(
                {
                    P_WRAP_ANNOUNCEMENT: json.dumps(
                        announce_wrap_key(identity, env.participant, env.session, wrap_pair.public_key)
                    ),
                    P_IDENTITY_KEY: identity.public_key.to_bytes(),
                }
            ),
        }
    )


def _verified_peers(content: RecordDict, env: NodeEnv) -> dict[str, WrapPublicKey]:
    """Each named peer's wrap key, from its relayed hello announcement, verified (see
    :func:`~participants.handlers._common.open_wrap_key`); any doubt refuses the whole keygen."""
    cfg, payload = content[REC_CONFIG], content[REC_PAYLOAD]
    peers = [str(p) for p in cfg.get(K_PEERS, [])]
    announcements = list(payload.get(P_PEER_WRAP_ANNOUNCEMENTS, []))
    identities = list(payload.get(P_PEER_IDENTITIES, []))
    if not len(peers) == len(announcements) == len(identities):
        raise ProtocolViolation(f"{env.participant}: keygen names {len(peers)} peer(s) but relays "
                                f"{len(announcements)} wrap key(s) and {len(identities)} identity(ies)")
    if len(set(peers)) != len(peers) or env.participant in peers:
        raise ProtocolViolation(f"{env.participant}: keygen peers repeat a name or include this node")
    verified: dict[str, WrapPublicKey] = {}
    for peer, announcement, identity in zip(peers, announcements, identities):
        try:
            envelope = json.loads(str(announcement))
            _, verified[peer] = open_wrap_key(env.consortium, env.participant, peer, identity, envelope, env.session)
        except (ProtocolViolation, ValueError) as exc:
            detail = str(exc).removeprefix(f"{env.participant}: ") if isinstance(exc, ProtocolViolation) \
                else "the announcement is not JSON"
            raise WrapKeyRefused(peer, detail) from None
    return verified


def handle_keygen(content: RecordDict, env: NodeEnv) -> RecordDict:
    """Key holder: verify every peer's relayed wrap-key announcement, then (only then) make the run's
    aggregation key, wrap it for each peer, keep the secret. A doubtful wrap key gets a refusal
    reply naming the peer (``K_REFUSED``), and no key is made."""
    identity, _ = _long_term_keys(env)
    try:
        recipients = _verified_peers(content, env)
    except WrapKeyRefused as refusal:  # a typed answer, so the coordinator stops instead of retrying
        return RecordDict({REC_CONFIG: ConfigRecord({K_PARTICIPANT: env.participant, K_REFUSED: refusal.peer,
                                                     K_REASON: refusal.reason})})
    key = AggregationKey.generate()
    env.run_dir.mkdir(parents=True, exist_ok=True)
    key.save(_agg_key_path(env))
    wrapped = [
        key.wrap_for(pk, signer=identity, sender_id=env.participant, recipient_id=peer)
        for peer, pk in recipients.items()
    ]
    return RecordDict(
        {
            REC_CONFIG: ConfigRecord({K_KEY_ID: key.key_id, K_PARTICIPANT: env.participant}),
            REC_PAYLOAD: ConfigRecord({P_PUBLIC_CONTEXT: key.public_context_bytes(), P_WRAPPED: wrapped}),
        }
    )


def install_wrapped_key(content: RecordDict, env: NodeEnv) -> str | None:
    """Peer: if the message carries our wrapped aggregation key, check the relayed holder identity
    against its pinned fingerprint (if any), verify the holder's signature, unwrap it with our X25519
    key and store the secret 0600. Returns the key id installed."""
    payload = content.get(REC_PAYLOAD)
    if payload is None or not payload.get(P_WRAPPED):
        return None
    _, wrap_pair = _long_term_keys(env)
    cfg = content[REC_CONFIG]
    holder = str(cfg[K_HOLDER])
    sender = IdentityPublicKey.from_bytes(payload[P_HOLDER_IDENTITY])
    check_pinned_identity(env.consortium, env.participant, holder, sender)
    key = AggregationKey.unwrap(
        payload[P_WRAPPED],
        wrap_pair,
        sender=sender,
        sender_id=holder,
        recipient_id=env.participant,
        expected_key_id=str(cfg[K_KEY_ID]),
    )
    env.run_dir.mkdir(parents=True, exist_ok=True)
    key.save(_agg_key_path(env))
    return key.key_id


def handle_fit(content: RecordDict, env: NodeEnv) -> RecordDict:
    """One round: (install our wrapped key the first time), decrypt θ_global, score it on our
    validation split, train, send enc(w·θ, w)."""
    s = env.settings
    cfg = content[REC_CONFIG]
    server_round = int(cfg[K_ROUND])
    mu = float(cfg.get("proximal-mu", 0.0)) if cfg.get("strategy") == "fedprox" else 0.0
    weight_scale = float(cfg.get("weight-scale", 1.0))
    if s.encrypted:
        install_wrapped_key(content, env)
    data = load_local_data(env)
    model = build_model(s, data.num_features)
    theta_global = _global_from(content, env, model)
    metrics = _score(model, data.x_val, data.y_val, "val")

    result = local_update(
        model,
        data.x_train,
        data.y_train,
        epochs=s.local_epochs,
        lr=s.lr,
        proximal_mu=mu,
        global_params=theta_global,
        batch_size=s.batch_size,
        optimizer=s.optimizer,  # type: ignore[arg-type]
        seed=s.seed * 1000 + server_round,
    )
    theta = flatten_params(model)
    if s.dp_noise > 0:
        theta = _privatise(theta, theta_global, s, np.random.default_rng())
    w = data.y_train.size / weight_scale
    vector = np.concatenate([w * theta, [w]])
    reply = RecordDict()
    if s.encrypted:
        key = _load_agg_key(env)
        reply[REC_PAYLOAD] = ConfigRecord({P_UPDATE: encrypt_vector(key, vector).to_bytes()})
    else:
        reply[REC_ARRAYS] = ArrayRecord({A_UPDATE: Array(vector)})
    metrics.update({"train-loss": float(result.loss), "num-train": int(data.y_train.size), "num-val": int(data.y_val.size)})
    reply[REC_METRICS] = MetricRecord(metrics)
    reply[REC_CONFIG] = ConfigRecord({K_PARTICIPANT: env.participant, K_ROUND: server_round})
    return reply


def handle_final(content: RecordDict, env: NodeEnv) -> RecordDict:
    """Decrypt the final model, keep it in our local model store, report its metrics (+ curves)."""
    s = env.settings
    cfg = content[REC_CONFIG]
    data = load_local_data(env, with_test=True)
    model = build_model(s, data.num_features)
    theta = _global_from(content, env, model)
    metrics: dict[str, Any] = _score(model, data.x_val, data.y_val, "val")
    p_val = predict_proba(model, data.x_val)
    metrics.update({f"val-{k}": v for k, v in _summary_curves(data.y_val, p_val).items()})
    if data.x_test is not None and data.y_test is not None:
        metrics.update(_score(model, data.x_test, data.y_test, "test"))
        p_test = predict_proba(model, data.x_test)
        metrics.update({f"test-{k}": v for k, v in _summary_curves(data.y_test, p_test).items()})
    metrics["num-val"] = int(data.y_val.size)
    version = str(cfg.get(K_VERSION, "")) or f"run-{env.run_id}"
    stored = save_local_model(env, version, theta, data.num_features)
    reply = RecordDict(
        {
            REC_METRICS: MetricRecord(metrics),
            REC_CONFIG: ConfigRecord({K_PARTICIPANT: env.participant, "model-store": str(stored)}),
        }
    )
    if bool(cfg.get(K_PUBLISH, False)):
        reply[REC_ARRAYS] = ArrayRecord({A_WEIGHTS: Array(np.asarray(theta, dtype=np.float64))})
    shutil.rmtree(env.run_dir, ignore_errors=True)  # the run's secret key is no longer needed
    return reply


def save_local_model(env: NodeEnv, version: str, theta: np.ndarray, num_features: int) -> Path:
    """``<state>/models/<name>/<version>.npy`` (float64, no pickle) + a JSON card beside it."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in version.replace(":", "_"))
    folder = env.state_dir / "models" / env.settings.model_name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{safe}.npy"
    np.save(path, np.asarray(theta, dtype=np.float64), allow_pickle=False)
    card = {
        "version": version,
        "model": env.settings.model,
        "mlp_hidden": env.settings.mlp_hidden if env.settings.model == "mlp" else None,
        "num_features": num_features,
        "features": env.participant_config.features.feature_names() if env.participant_config.features else [],
        "run_id": env.run_id,
    }
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return path


_with_env = env_binder(resolve_env)


#: message type -> ``(content, context) -> reply content``; the ClientApp registers these.
HANDLERS: dict[str, Callable[[RecordDict, Context], RecordDict]] = {
    MSG_HELLO: _with_env(handle_hello),
    MSG_KEYGEN: _with_env(handle_keygen),
    MSG_FIT: _with_env(handle_fit),
    MSG_FINAL: _with_env(handle_final),
}

__all__ = [
    "HANDLERS",
    "LocalData",
    "NodeEnv",
    "TrainSettings",
    "build_model",
    "load_local_data",
    "resolve_env",
    "save_local_model",
]
