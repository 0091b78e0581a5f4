"""Training loops over local tensors.

:func:`fit` is centralised training (baselines, the label holder's own model): Adam, optional
mini-batches, weight decay, early stopping on a stratified validation split, restoring the best
weights. :func:`local_update` is one client's step in horizontal FedAvg/FedProx: a few epochs
from the global weights, with the proximal term ``mu/2 * ||w - w_global||^2`` when ``mu > 0``.
Both are seeded so that a run can be repeated exactly on CPU.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import expit
from sklearn.model_selection import train_test_split
from torch import nn

from models._checks import as_labels, as_matrix
from models.errors import InvalidInput, ShapeMismatch
from models.metrics import Metrics, evaluate
from models.params import flatten_params, num_params, unflatten_params


class TrainConfig(BaseModel):
    """Hyper-parameters of :func:`fit` (defaults suit a few thousand to a few hundred thousand rows)."""

    model_config = ConfigDict(frozen=True)

    epochs: int = Field(default=200, ge=1)
    lr: float = Field(default=0.02, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    batch_size: int | None = Field(default=None, ge=1, description="None = full batch")
    val_fraction: float = Field(default=0.2, ge=0, lt=1, description="0 disables early stopping")
    patience: int = Field(default=15, ge=1, description="epochs without validation-loss improvement")
    min_delta: float = Field(default=1e-5, ge=0)
    seed: int = 0
    threads: int | None = Field(default=1, ge=1, description="torch intra-op threads; None = unchanged")


@dataclass
class TrainResult:
    model: nn.Module
    best_epoch: int
    val_metrics: Metrics | None
    train_metrics: Metrics | None
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class LocalUpdate:
    """What a horizontal client reports with its new weights."""

    num_examples: int
    epochs: int
    loss: float


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op threads (None = leave as is), restoring the setting afterwards.

    The models here are tiny: extra threads buy nothing and, when several clients or test workers
    share two cores, OpenMP spin-waiting makes training an order of magnitude slower.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; returns a generator for batch shuffling."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def to_tensors(X: Any, y: Any | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validated float32 tensors (features 2-D, labels 1-D 0/1)."""
    x_arr = as_matrix(X)
    x_t = torch.as_tensor(x_arr, dtype=torch.float32)
    if y is None:
        return x_t, None
    labels = as_labels(y, both_classes=False)
    if labels.size != x_arr.shape[0]:
        raise InvalidInput(f"{x_arr.shape[0]} feature rows but {labels.size} labels")
    return x_t, torch.as_tensor(labels, dtype=torch.float32)


def _check_width(model: nn.Module, X: torch.Tensor) -> None:
    expected = getattr(model, "in_features", None)
    if expected is not None and X.shape[1] != expected:
        raise InvalidInput(f"{type(model).__name__} expects {expected} features, got {X.shape[1]}")


def predict_logits(model: nn.Module, X: Any) -> np.ndarray:
    x_t, _ = to_tensors(X)
    _check_width(model, x_t)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(x_t).reshape(-1).double().numpy()
    model.train(was_training)
    return out


def predict_proba(model: nn.Module, X: Any) -> np.ndarray:
    """Probability of default for each row."""
    return expit(predict_logits(model, X))


def _batches(n: int, batch_size: int | None, gen: torch.Generator) -> list[torch.Tensor]:
    if batch_size is None or batch_size >= n:
        return [torch.arange(n)]
    return list(torch.randperm(n, generator=gen).split(batch_size))


def _safe_metrics(y: np.ndarray, p: np.ndarray) -> Metrics | None:
    return evaluate(y, p) if 0 < y.sum() < y.size else None


def fit(model: nn.Module, X: Any, y: Any, config: TrainConfig | None = None) -> TrainResult:
    """Train ``model`` (any module mapping features to logits) and restore its best weights."""
    cfg = config or TrainConfig()
    with torch_threads(cfg.threads):
        return _fit(model, X, y, cfg)


def _fit(model: nn.Module, X: Any, y: Any, cfg: TrainConfig) -> TrainResult:
    x_t, y_t = to_tensors(X, y)
    assert y_t is not None
    _check_width(model, x_t)
    labels = y_t.numpy().astype(np.int64)
    gen = seed_everything(cfg.seed)

    idx = np.arange(labels.size)
    if cfg.val_fraction > 0:
        stratify = labels if np.bincount(labels, minlength=2).min() >= 2 else None
        tr_idx, va_idx = train_test_split(idx, test_size=cfg.val_fraction, random_state=cfg.seed, stratify=stratify)
    else:
        tr_idx, va_idx = idx, np.zeros(0, dtype=np.int64)
    x_tr, y_tr = x_t[tr_idx], y_t[tr_idx]
    x_va, y_va = x_t[va_idx], y_t[va_idx]

    loss_fn = nn.BCEWithLogitsLoss()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best_loss, best_epoch, best_state, stale = float("inf"), 0, copy.deepcopy(model.state_dict()), 0
    history: list[dict[str, float]] = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        total = 0.0
        for batch in _batches(len(tr_idx), cfg.batch_size, gen):
            opt.zero_grad()
            loss = loss_fn(model(x_tr[batch]), y_tr[batch])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch)
        record = {"epoch": float(epoch), "train_loss": total / len(tr_idx)}
        if len(va_idx):
            model.eval()
            with torch.no_grad():
                val_loss = float(loss_fn(model(x_va), y_va))
            record["val_loss"] = val_loss
            if val_loss < best_loss - cfg.min_delta:
                best_loss, best_epoch, stale = val_loss, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
        history.append(record)
        if len(va_idx) and stale >= cfg.patience:
            break
    if len(va_idx):
        model.load_state_dict(best_state)
    else:
        best_epoch = len(history)
    model.eval()
    y_np = labels
    train_metrics = _safe_metrics(y_np[tr_idx], predict_proba(model, x_tr.numpy()))
    val_metrics = _safe_metrics(y_np[va_idx], predict_proba(model, x_va.numpy())) if len(va_idx) else None
    return TrainResult(model=model, best_epoch=best_epoch, val_metrics=val_metrics, train_metrics=train_metrics,
                       history=history)


def _global_tensors(model: nn.Module, global_params: Any) -> list[torch.Tensor]:
    """Reference weights for the proximal term, from a flat vector, a list of arrays, or the model."""
    params = list(model.parameters())
    if global_params is None:
        return [p.detach().clone() for p in params]
    if isinstance(global_params, np.ndarray):  # a flat vector; a list/tuple means one array per parameter
        vec = global_params.astype(np.float64).reshape(-1)
        if vec.size != num_params(model):
            raise ShapeMismatch(f"global_params has {vec.size} values, model has {num_params(model)}")
        out, offset = [], 0
        for p in params:
            out.append(torch.as_tensor(vec[offset : offset + p.numel()], dtype=p.dtype).reshape(p.shape))
            offset += p.numel()
        return out
    seq: Sequence[Any] = list(global_params)
    if len(seq) != len(params):
        raise ShapeMismatch(f"global_params has {len(seq)} tensors, model has {len(params)} parameters")
    out = []
    for p, g in zip(params, seq):
        t = torch.as_tensor(np.asarray(g), dtype=p.dtype)
        if t.shape != p.shape:
            raise ShapeMismatch(f"global parameter shape {tuple(t.shape)} differs from {tuple(p.shape)}")
        out.append(t)
    return out


def local_update(
    model: nn.Module,
    X: Any,
    y: Any,
    epochs: int,
    lr: float,
    proximal_mu: float = 0.0,
    global_params: Any = None,
    *,
    batch_size: int | None = 256,
    weight_decay: float = 0.0,
    optimizer: Literal["adam", "sgd"] = "adam",
    seed: int = 0,
    threads: int | None = 1,
) -> LocalUpdate:
    """Train ``model`` in place for ``epochs`` local epochs (FedAvg; FedProx when ``proximal_mu > 0``).

    ``global_params`` are the weights the round started from (flat vector as produced by
    :func:`models.params.flatten_params`, or arrays in ``model.parameters()`` order); when omitted
    the model's current weights are taken as the global ones, which is the usual FedProx call.
    """
    if epochs < 1:
        raise InvalidInput(f"epochs must be >= 1, got {epochs}")
    if lr <= 0:
        raise InvalidInput(f"lr must be > 0, got {lr}")
    if proximal_mu < 0:
        raise InvalidInput(f"proximal_mu must be >= 0, got {proximal_mu}")
    with torch_threads(threads):
        return _local_update(model, X, y, epochs, lr, proximal_mu, global_params, batch_size, weight_decay,
                             optimizer, seed)


def _local_update(
    model: nn.Module, X: Any, y: Any, epochs: int, lr: float, proximal_mu: float, global_params: Any,
    batch_size: int | None, weight_decay: float, optimizer: str, seed: int,
) -> LocalUpdate:
    x_t, y_t = to_tensors(X, y)
    assert y_t is not None
    _check_width(model, x_t)
    gen = seed_everything(seed)
    anchor = _global_tensors(model, global_params) if proximal_mu > 0 else []
    params = list(model.parameters())
    opt: torch.optim.Optimizer
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    else:
        raise InvalidInput(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    total, seen = 0.0, 0
    for _ in range(epochs):
        total, seen = 0.0, 0
        for batch in _batches(x_t.shape[0], batch_size, gen):
            opt.zero_grad()
            loss = loss_fn(model(x_t[batch]), y_t[batch])
            data_loss = float(loss.detach())
            if proximal_mu > 0:
                prox = sum(((p - g) ** 2).sum() for p, g in zip(params, anchor))
                loss = loss + 0.5 * proximal_mu * prox
            loss.backward()
            opt.step()
            total += data_loss * len(batch)
            seen += len(batch)
    model.eval()
    return LocalUpdate(num_examples=int(x_t.shape[0]), epochs=epochs, loss=total / max(seen, 1))


__all__ = [
    "LocalUpdate",
    "TrainConfig",
    "TrainResult",
    "fit",
    "flatten_params",
    "local_update",
    "predict_logits",
    "predict_proba",
    "seed_everything",
    "to_tensors",
    "torch_threads",
    "unflatten_params",
]
