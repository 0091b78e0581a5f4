"""Vertical (split) training: the step logic every party runs, without any I/O.

Participants hold different features of the same enterprises, aligned by PSI to the label holder's
row order (the *universe*). Each keeps a bottom model over its own features; the coordinator sees
only the masked sum ``Z = Σ_i bottom_i(x_i)``; the label holder owns labels and the HE-friendly top,
and returns ``dL/dZ`` (encrypted to each participant by the transport layer).

Round schedule (one Flower message round each; deployment rounds cost seconds, so rounds are fat
and pipelined — every message both applies an old gradient and produces new outputs)::

    round r, label holder:  dZ[r-1] = top.step(Z[r-1]); bottom.backward(r-1, dZ[r-1]);
                            out[r] = bottom.forward(r)
    round r, participant:   bottom.backward(r-2, dZ[r-2]); out[r] = bottom.forward(r)
    coordinator:            Z[r] = Σ masked out[r]

so a passive participant's gradient is one round stale (it arrives a round later via the
coordinator). A round carries ``batches_per_round`` mini-batches computed with the same bottom
weights; the label holder takes one top step per mini-batch and each participant one bottom step
per mini-batch. The training and validation rows, and every batch, are derived from the plan's
seed and the universe size, so the coordinator sends round numbers, never row indices.

Absent sources: an enterprise a holder does not know contributes a zero vector. During training
each non-label source is also dropped at random (``source_dropout``) so the model learns to score
enterprises that some holders do not know.

Label protection (optional): the label holder clips each example's gradient row to
``label_dp_clip`` and adds Gaussian noise ``σ·clip`` before returning it; the privacy spent is
reported by :func:`label_dp_epsilon`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.metrics import evaluate
from models.preprocessing import Preprocessor
from models.split import BottomModel, TopModel, TopSpec
from protocols.errors import ProtocolViolation

TopKind = Literal["linear", "square", "poly"]


class VerticalPlan(BaseModel):
    """Hyper-parameters every party must agree on (sent by the coordinator in the run config)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    out_dim: int = Field(default=4, ge=1, le=64, description="width of each bottom output and of Z")
    bottom_hidden: tuple[int, ...] = Field(default=(), description="() = linear bottoms")
    top_kind: TopKind = "linear"
    top_hidden: int = Field(default=8, ge=1)
    batch_size: int = Field(default=1024, ge=16, description="upper bound; see min_batches_per_epoch")
    min_batches_per_epoch: int = Field(
        default=8, ge=1, description="small universes get smaller batches, so an epoch still takes several steps"
    )
    batches_per_round: int = Field(default=4, ge=1)
    epochs: float = Field(default=6.0, gt=0)
    lr: float = Field(default=0.02, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    source_dropout: float = Field(default=0.15, ge=0, lt=1)
    label_dp_sigma: float = Field(default=0.0, ge=0, description="noise multiplier; 0 disables")
    label_dp_clip: float = Field(default=1.0, gt=0)
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    approve_below_pd: float = Field(
        default=0.07, gt=0, lt=1, description="lending policy of the label holder's challenger report (0.07: grades A-C)")
    seed: int = 0

    @model_validator(mode="after")
    def _poly_needs_hidden(self) -> "VerticalPlan":
        if self.top_kind != "linear" and self.top_hidden < 1:
            raise ValueError("a polynomial top needs top_hidden >= 1")
        return self


@dataclass(frozen=True)
class Schedule:
    """Row split and batch order, derived identically by every party from (plan, universe size)."""

    plan: VerticalPlan
    n: int
    train: np.ndarray = field(repr=False)
    val: np.ndarray = field(repr=False)

    @classmethod
    def build(cls, plan: VerticalPlan, n: int) -> "Schedule":
        if n < 10:
            raise ProtocolViolation(f"vertical training needs at least 10 aligned enterprises, got {n}")
        perm = np.random.default_rng([plan.seed, 0x5EED]).permutation(n)
        n_val = max(1, int(round(plan.val_fraction * n)))
        return cls(plan=plan, n=n, train=np.sort(perm[n_val:]), val=np.sort(perm[:n_val]))

    @property
    def batch_size(self) -> int:
        """The plan's batch size, shrunk for small universes (never below 16 rows)."""
        return max(16, min(self.plan.batch_size, math.ceil(self.train.size / self.plan.min_batches_per_epoch)))

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.train.size / self.batch_size)

    @property
    def rounds(self) -> int:
        """Forward rounds (each carries ``batches_per_round`` mini-batches)."""
        total_batches = math.ceil(self.plan.epochs * self.batches_per_epoch)
        return math.ceil(total_batches / self.plan.batches_per_round)

    def batches(self, round_idx: int) -> list[np.ndarray]:
        """Universe positions of each mini-batch of ``round_idx``."""
        if not 0 <= round_idx < self.rounds:
            raise ProtocolViolation(f"round {round_idx} outside 0..{self.rounds - 1}")
        out = []
        bpe = self.batches_per_epoch
        for k in range(self.plan.batches_per_round):
            g = round_idx * self.plan.batches_per_round + k
            epoch, within = divmod(g, bpe)
            perm = np.random.default_rng([self.plan.seed, 0xE90C, epoch]).permutation(self.train.size)
            rows = self.train[perm[within * self.batch_size : (within + 1) * self.batch_size]]
            out.append(rows)
        return out


def bottom_inputs(
    x: np.ndarray, present: np.ndarray, feature_names: list[str], schedule: Schedule
) -> tuple[Preprocessor, np.ndarray]:
    """A party's universe-aligned rows ready for its bottom: preprocessing fitted on the training
    rows it knows (never on validation rows), applied to every row it knows; absent rows stay 0."""
    present = np.asarray(present, dtype=bool)
    fit_rows = schedule.train[present[schedule.train]]
    if fit_rows.size < 2:
        raise ProtocolViolation("fewer than 2 of the party's rows are in the training split")
    pre = Preprocessor.fit(x[fit_rows], feature_names, impute=True, winsorise=(0.01, 0.99))
    xt = np.zeros_like(x, dtype=np.float64)
    if present.any():
        xt[present] = pre.transform(x[present])
    return pre, xt


def _torch_seed(plan: VerticalPlan, name: str) -> int:
    return (plan.seed * 1_000_003 + sum(name.encode())) % (2**31)


class BottomParty:
    """A participant's side: its bottom model over its own (universe-aligned) feature matrix."""

    def __init__(
        self,
        name: str,
        features: np.ndarray,
        present: np.ndarray,
        plan: VerticalPlan,
        *,
        is_label_holder: bool = False,
    ) -> None:
        if features.ndim != 2 or features.shape[0] != present.shape[0]:
            raise ProtocolViolation(f"{name}: features {features.shape} and presence {present.shape} disagree")
        self.name = name
        self.plan = plan
        self.schedule = Schedule.build(plan, features.shape[0])
        self._x = torch.as_tensor(np.nan_to_num(features, nan=0.0), dtype=torch.float32)
        self._present = np.asarray(present, dtype=bool)
        self._drop = 0.0 if is_label_holder else plan.source_dropout
        torch.manual_seed(_torch_seed(plan, name))
        self.model = BottomModel(features.shape[1], plan.out_dim, plan.bottom_hidden or None)
        self._opt = torch.optim.Adam(self.model.parameters(), lr=plan.lr, weight_decay=plan.weight_decay)
        self._pending: dict[int, list[tuple[np.ndarray, torch.Tensor]]] = {}

    def _keep(self, round_idx: int, rows: np.ndarray, k: int) -> torch.Tensor:
        keep = self._present[rows].copy()
        if self._drop > 0:
            rng = np.random.default_rng([self.plan.seed, 0xD709, round_idx, k, sum(self.name.encode())])
            keep &= rng.random(rows.size) >= self._drop
        return torch.as_tensor(keep, dtype=torch.float32).reshape(-1, 1)

    def forward(self, round_idx: int) -> np.ndarray:
        """Outputs for every mini-batch of the round, stacked row-wise (absent rows are zero)."""
        if round_idx in self._pending:
            raise ProtocolViolation(f"{self.name}: round {round_idx} forwarded twice")
        batches = self.schedule.batches(round_idx)
        pending, outs = [], []
        with torch.no_grad():
            for k, rows in enumerate(batches):
                keep = self._keep(round_idx, rows, k)
                pending.append((rows, keep))
                outs.append((self.model(self._x[rows]) * keep).numpy())
        self._pending[round_idx] = pending
        return np.concatenate(outs, axis=0).astype(np.float64)

    def backward(self, round_idx: int, grad: np.ndarray) -> None:
        """Apply ``dL/dZ`` for an earlier round: one optimiser step per mini-batch."""
        pending = self._pending.pop(round_idx, None)
        if pending is None:
            raise ProtocolViolation(f"{self.name}: gradient for round {round_idx}, which it never forwarded")
        total = sum(rows.size for rows, _ in pending)
        if grad.shape != (total, self.plan.out_dim):
            raise ProtocolViolation(f"{self.name}: gradient shape {grad.shape}, expected {(total, self.plan.out_dim)}")
        offset = 0
        for rows, keep in pending:
            g = torch.as_tensor(grad[offset : offset + rows.size], dtype=torch.float32)
            offset += rows.size
            self._opt.zero_grad()
            out = self.model(self._x[rows]) * keep
            out.backward(g)
            self._opt.step()

    def embed(self, rows: np.ndarray) -> np.ndarray:
        """Outputs for arbitrary rows (evaluation, scoring): no dropout, absent rows zero."""
        with torch.no_grad():
            keep = torch.as_tensor(self._present[rows], dtype=torch.float32).reshape(-1, 1)
            return (self.model(self._x[rows]) * keep).numpy().astype(np.float64)


class TopParty:
    """The label holder's top model: turns the summed bottoms into a gradient per row."""

    def __init__(self, labels: np.ndarray, plan: VerticalPlan) -> None:
        self.plan = plan
        self.schedule = Schedule.build(plan, labels.shape[0])
        self._y = torch.as_tensor(np.asarray(labels, dtype=np.float32))
        torch.manual_seed(_torch_seed(plan, "\x00top"))
        self.model = TopModel(plan.out_dim, plan.top_kind, plan.top_hidden)
        self._opt = torch.optim.Adam(self.model.parameters(), lr=plan.lr, weight_decay=plan.weight_decay)
        self._loss = torch.nn.BCEWithLogitsLoss()
        self._dp_rng = np.random.default_rng([plan.seed, 0xD9])
        self.losses: list[float] = []

    def step(self, round_idx: int, z: np.ndarray) -> np.ndarray:
        """One top step per mini-batch of ``round_idx``; returns ``dL/dZ`` for the same rows."""
        batches = self.schedule.batches(round_idx)
        total = sum(rows.size for rows in batches)
        if z.shape != (total, self.plan.out_dim):
            raise ProtocolViolation(f"Z for round {round_idx} has shape {z.shape}, expected {(total, self.plan.out_dim)}")
        grads, offset, losses = [], 0, []
        for rows in batches:
            zk = torch.as_tensor(z[offset : offset + rows.size], dtype=torch.float32).requires_grad_(True)
            offset += rows.size
            self._opt.zero_grad()
            loss = self._loss(self.model(zk), self._y[rows])
            loss.backward()
            self._opt.step()
            losses.append(float(loss.detach()))
            grads.append(self._protect(zk.grad.numpy().astype(np.float64)))
        self.losses.append(float(np.mean(losses)))
        return np.concatenate(grads, axis=0)

    def _protect(self, grad: np.ndarray) -> np.ndarray:
        """Label DP: clip each example's gradient (scaled to per-example size) and add noise."""
        if self.plan.label_dp_sigma <= 0:
            return grad
        b = grad.shape[0]
        per_example = grad * b
        norms = np.linalg.norm(per_example, axis=1, keepdims=True)
        per_example *= np.minimum(1.0, self.plan.label_dp_clip / np.maximum(norms, 1e-12))
        noise = self._dp_rng.normal(0.0, self.plan.label_dp_sigma * self.plan.label_dp_clip, per_example.shape)
        return (per_example + noise) / b

    def logits(self, z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.as_tensor(z, dtype=torch.float32)).numpy().astype(np.float64)

    def spec(self) -> TopSpec:
        return self.model.he_spec()


def label_dp_epsilon(plan: VerticalPlan, n_train: int, rounds: int, delta: float = 1e-5) -> float | None:
    """(ε, δ) of the noisy gradients w.r.t. one label, via zero-concentrated DP.

    Changing one label moves that example's clipped gradient row by at most ``2·clip``; each release
    adds N(0, (σ·clip)²) per coordinate, so one release is ρ = 2/σ²-zCDP for that example. An example
    is released once per epoch it appears in; ρ composes additively and converts to
    ε = ρ + 2·sqrt(ρ·ln(1/δ)). None when label DP is off.
    """
    if plan.label_dp_sigma <= 0:
        return None
    n_train = max(n_train, 1)
    batch = max(16, min(plan.batch_size, math.ceil(n_train / plan.min_batches_per_epoch)))
    appearances = math.ceil(rounds * plan.batches_per_round / math.ceil(n_train / batch))  # epochs run
    rho = appearances * 2.0 / plan.label_dp_sigma**2
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


def train_alone(x: np.ndarray, present: np.ndarray, labels: np.ndarray, plan: VerticalPlan
                ) -> tuple[BottomParty, TopParty]:
    """One bottom over ``x`` plus the plan's top, trained in one place on the plan's schedule: the
    label holder's own challenger (its features alone) and the centralised yardsticks."""
    party = BottomParty("alone", x, present, plan, is_label_holder=True)
    top = TopParty(labels, plan)
    run_in_process({"alone": party}, top, "alone")
    return party, top


def coverage_metrics(
    labels: np.ndarray, logits: np.ndarray, coverage: dict[str, np.ndarray]
) -> dict[str, dict[str, float] | None]:
    """AUC/KS/Gini overall, on enterprises every source knows, and on those some source lacks."""
    probs = 1.0 / (1.0 + np.exp(-logits))
    full = np.all(np.stack(list(coverage.values())), axis=0) if coverage else np.ones(labels.size, bool)
    out: dict[str, dict[str, float] | None] = {}
    for name, mask in (("all", np.ones(labels.size, bool)), ("full_coverage", full), ("partial_coverage", ~full)):
        y = labels[mask]
        if y.size == 0 or y.min() == y.max():
            out[name] = None
            continue
        m = evaluate(y, probs[mask])
        out[name] = {"n": int(m.n), "positives": int(m.positives), "auc": m.auc, "ks": m.ks, "gini": m.gini}
    return out


def run_in_process(
    parties: dict[str, BottomParty], top: TopParty, label_holder: str, *, sum_outputs=None
) -> int:
    """Drive the pipelined schedule with every party in this process; returns rounds used.

    Exactly the message order of the federated workflow, with ``sum_outputs`` standing in for the
    masked aggregation (default: a plain sum). Used by tests and by centralised comparisons.
    """
    add = sum_outputs or (lambda outs: np.sum(np.stack(outs), axis=0))
    rounds = top.schedule.rounds
    z_prev: np.ndarray | None = None
    grads: dict[int, np.ndarray] = {}
    for r in range(rounds + 2):
        if z_prev is not None:  # label holder: gradient for r-1, applied to its own bottom at once
            grads[r - 1] = top.step(r - 1, z_prev)
            parties[label_holder].backward(r - 1, grads[r - 1])
        outs = []
        for name, party in parties.items():
            if name != label_holder and (r - 2) in grads:
                party.backward(r - 2, grads[r - 2])
            if r < rounds:
                outs.append(party.forward(r))
        z_prev = add(outs) if r < rounds else None
    return rounds + 2
