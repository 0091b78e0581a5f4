"""Encrypted FedAvg / FedProx: which message each node gets, and how replies become an aggregate.

The strategies are pure: ``configure_*`` returns ``(node_id, RecordDict)`` pairs and
``aggregate_*`` consumes :class:`NodeReply` objects, so they run (and are tested) without a Flower
runtime; the workflow in ``coordinator.workflows.horizontal`` does the messaging.

Aggregation arithmetic. Participant *i* sends ``u_i = [w_i·θ_i, w_i]`` where ``w_i = n_i / N``
(``n_i`` its training examples, ``N`` the total announced at setup; dividing keeps CKKS values
small). The coordinator only adds: ``U = Σ u_i``. Each participant decrypts ``U`` and takes
``θ = U[:-1] / U[-1]``, the FedAvg weighted mean over *the nodes that answered* -- a dropout simply
leaves its term out. The coordinator holds the public context alone, so :class:`CkksSum` can add
and re-serialise ciphertexts but any attempt to decrypt raises :class:`crypto.errors.MissingSecretKey`.
FedProx differs only in the proximal term each participant adds to its local loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from crypto.ckks_keys import EncryptedVector, PublicContext, decrypt, sum_encrypted
from protocols.errors import ProtocolViolation
from protocols.wire import horizontal as wire

__all__ = [
    "NodeReply",
    "RoundOutcome",
    "Aggregator",
    "CkksSum",
    "PlainSum",
    "EncryptedFedAvg",
    "EncryptedFedProx",
    "make_strategy",
    "METRIC_KEYS",
]

#: Metrics a participant reports for the model a round started from (validation split).
METRIC_KEYS = ("val-auc", "val-ks", "val-gini", "val-loss")


@dataclass(frozen=True)
class NodeReply:
    """One node's answer in a round; ``content`` is ``None`` when it failed or timed out."""

    node_id: int
    participant: str
    content: RecordDict | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.content is not None and self.error is None


@dataclass
class RoundOutcome:
    """What one round produced: the new aggregate, per-participant metrics and who dropped."""

    server_round: int
    aggregate: bytes | np.ndarray | None
    contributors: list[str]
    dropped: list[str]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    aggregated_metrics: dict[str, float] = field(default_factory=dict)


class Aggregator(Protocol):
    """Sums updates. Implementations never need (or get) a secret key."""

    encrypted: bool

    def extract(self, content: RecordDict) -> bytes | np.ndarray: ...

    def sum(self, updates: Sequence[bytes | np.ndarray]) -> bytes | np.ndarray: ...

    def attach(self, content: RecordDict, aggregate: bytes | np.ndarray | None) -> None: ...


class CkksSum:
    """Adds CKKS ciphertexts under the consortium aggregation key's PUBLIC context."""

    encrypted = True

    def __init__(self, public_context: PublicContext) -> None:
        if not isinstance(public_context, PublicContext):
            raise TypeError("CkksSum needs a PublicContext (never a secret key)")
        self.context = public_context

    @property
    def key_id(self) -> str:
        return self.context.key_id

    def extract(self, content: RecordDict) -> bytes:
        try:
            blob = content[wire.REC_PAYLOAD][wire.P_UPDATE]
        except KeyError:
            raise ProtocolViolation("encrypted update missing from reply") from None
        if not isinstance(blob, bytes):
            raise ProtocolViolation("encrypted update must be bytes")
        return blob

    def sum(self, updates: Sequence[bytes | np.ndarray]) -> bytes:
        envs = [EncryptedVector.from_bytes(bytes(u), self.context) for u in updates]  # type: ignore[arg-type]
        lengths = {len(e) for e in envs}
        if len(lengths) != 1:
            raise ProtocolViolation(f"updates have different lengths {sorted(lengths)}")
        return sum_encrypted(envs).to_bytes()

    def attach(self, content: RecordDict, aggregate: bytes | np.ndarray | None) -> None:
        payload = content.get(wire.REC_PAYLOAD) or ConfigRecord()
        payload[wire.P_AGGREGATE] = bytes(aggregate) if aggregate is not None else b""  # type: ignore[arg-type]
        content[wire.REC_PAYLOAD] = payload

    def try_decrypt(self, aggregate: bytes) -> np.ndarray:
        """What a curious coordinator would try; always raises MissingSecretKey (it has no secret)."""
        return decrypt(self.context, EncryptedVector.from_bytes(aggregate, self.context))


class PlainSum:
    """Plaintext sums, for comparison runs only: the coordinator then SEES every update."""

    encrypted = False

    def extract(self, content: RecordDict) -> np.ndarray:
        try:
            vec = content[wire.REC_ARRAYS][wire.A_UPDATE].numpy()
        except KeyError:
            raise ProtocolViolation("plaintext update missing from reply") from None
        vec = np.asarray(vec, dtype=np.float64).reshape(-1)
        if not np.isfinite(vec).all():
            raise ProtocolViolation("update contains NaN or inf")
        return vec

    def sum(self, updates: Sequence[bytes | np.ndarray]) -> np.ndarray:
        arrays = [np.asarray(u, dtype=np.float64) for u in updates]
        if len({a.shape for a in arrays}) != 1:
            raise ProtocolViolation("updates have different lengths")
        return np.sum(arrays, axis=0)

    def attach(self, content: RecordDict, aggregate: bytes | np.ndarray | None) -> None:
        if aggregate is not None:
            content[wire.REC_ARRAYS] = ArrayRecord({wire.A_AGGREGATE: Array(np.asarray(aggregate, dtype=np.float64))})


def _metrics_of(content: RecordDict) -> dict[str, float]:
    rec = content.get(wire.REC_METRICS)
    if rec is None:
        return {}
    return {k: float(v) for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def weighted_metrics(per_node: dict[str, dict[str, float]], weight_key: str = "num-val") -> dict[str, float]:
    """Mean of each metric over participants, weighted by their validation sizes."""
    out: dict[str, float] = {}
    keys = {k for m in per_node.values() for k in m if k != weight_key and not k.startswith("num-")}
    for k in sorted(keys):
        pairs = [(m[k], m.get(weight_key, 1.0)) for m in per_node.values() if k in m]
        total = sum(w for _, w in pairs)
        if total > 0:
            out[k] = sum(v * w for v, w in pairs) / total
    return out


class EncryptedFedAvg:
    """FedAvg over encrypted (or, for comparison, plaintext) weighted updates."""

    name = "fedavg"
    proximal_mu = 0.0

    def __init__(self, aggregator: Aggregator, *, min_nodes: int) -> None:
        if min_nodes < 1:
            raise ValueError("min_nodes must be >= 1")
        self.aggregator = aggregator
        self.min_nodes = min_nodes

    def _base_config(self, server_round: int) -> ConfigRecord:
        return ConfigRecord(
            {
                wire.K_ROUND: server_round,
                "strategy": self.name,
                "proximal-mu": float(self.proximal_mu),
            }
        )

    # -- training -----------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, node_ids: Iterable[int], aggregate: bytes | np.ndarray | None
    ) -> list[tuple[int, RecordDict]]:
        """Every node gets the previous aggregate (``None`` in round 1: start from the seeded init)."""
        out = []
        for node_id in node_ids:
            content = RecordDict({wire.REC_CONFIG: self._base_config(server_round)})
            self.aggregator.attach(content, aggregate)
            out.append((node_id, content))
        return out

    def aggregate_train(self, server_round: int, replies: Sequence[NodeReply]) -> RoundOutcome:
        """Sum the updates of the nodes that answered; raise if fewer than ``min_nodes`` did."""
        good = [r for r in replies if r.ok]
        dropped = sorted(r.participant for r in replies if not r.ok)
        if len(good) < self.min_nodes:
            raise InsufficientNodes(server_round, len(good), self.min_nodes, dropped)
        updates = [self.aggregator.extract(r.content) for r in good]  # type: ignore[arg-type]
        per_node = {r.participant: _metrics_of(r.content) for r in good}  # type: ignore[arg-type]
        return RoundOutcome(
            server_round=server_round,
            aggregate=self.aggregator.sum(updates),
            contributors=sorted(r.participant for r in good),
            dropped=dropped,
            metrics=per_node,
            aggregated_metrics=weighted_metrics(per_node),
        )

    # -- final evaluation ---------------------------------------------------------------------
    def configure_evaluate(
        self,
        node_ids: Iterable[int],
        aggregate: bytes | np.ndarray | None,
        *,
        version: str,
        publisher: int | None,
    ) -> list[tuple[int, RecordDict]]:
        """The final aggregate to everyone; only ``publisher`` (if any) is asked to upload weights."""
        out = []
        for node_id in node_ids:
            cfg = self._base_config(0)
            cfg[wire.K_VERSION] = version
            cfg[wire.K_PUBLISH] = node_id == publisher
            content = RecordDict({wire.REC_CONFIG: cfg})
            self.aggregator.attach(content, aggregate)
            out.append((node_id, content))
        return out

    def aggregate_evaluate(self, replies: Sequence[NodeReply]) -> RoundOutcome:
        good = [r for r in replies if r.ok]
        per_node = {r.participant: _metrics_of(r.content) for r in good}  # type: ignore[arg-type]
        return RoundOutcome(
            server_round=-1,
            aggregate=None,
            contributors=sorted(per_node),
            dropped=sorted(r.participant for r in replies if not r.ok),
            metrics=per_node,
            aggregated_metrics=weighted_metrics(per_node),
        )


class EncryptedFedProx(EncryptedFedAvg):
    """FedProx: FedAvg aggregation; participants add ``mu/2·||θ − θ_global||²`` to their loss."""

    name = "fedprox"

    def __init__(self, aggregator: Aggregator, *, min_nodes: int, proximal_mu: float) -> None:
        if proximal_mu <= 0:
            raise ValueError("FedProx needs proximal_mu > 0 (mu = 0 is FedAvg)")
        super().__init__(aggregator, min_nodes=min_nodes)
        self.proximal_mu = float(proximal_mu)


class InsufficientNodes(ProtocolViolation):
    """Fewer than ``min_nodes`` answered a round; the run cannot continue."""

    def __init__(self, server_round: int, answered: int, needed: int, dropped: list[str]) -> None:
        self.server_round, self.answered, self.needed, self.dropped = server_round, answered, needed, dropped
        super().__init__(
            f"round {server_round}: {answered} node(s) answered, {needed} needed; dropped: {', '.join(dropped) or '-'}"
        )


def make_strategy(name: str, aggregator: Aggregator, *, min_nodes: int, proximal_mu: float) -> EncryptedFedAvg:
    if name == "fedavg":
        return EncryptedFedAvg(aggregator, min_nodes=min_nodes)
    if name == "fedprox":
        return EncryptedFedProx(aggregator, min_nodes=min_nodes, proximal_mu=proximal_mu)
    raise ValueError(f"unknown strategy {name!r} (fedavg | fedprox)")
