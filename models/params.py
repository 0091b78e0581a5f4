"""Model parameters as plain numpy: one float64 vector for encrypted aggregation (CKKS packs a
flat vector into slots) and a list of arrays in ``state_dict`` order for Flower messages."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from models.errors import ShapeMismatch


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flatten_params(model: nn.Module) -> np.ndarray:
    """All trainable parameters, in ``model.parameters()`` order, as one 1-D float64 vector."""
    parts = [p.detach().cpu().double().reshape(-1) for p in model.parameters()]
    if not parts:
        return np.zeros(0, dtype=np.float64)
    return torch.cat(parts).numpy().copy()


def unflatten_params(model: nn.Module, vector: np.ndarray | Sequence[float]) -> nn.Module:
    """Load a vector produced by :func:`flatten_params` (possibly averaged/decrypted) in place."""
    vec = np.asarray(vector, dtype=np.float64).reshape(-1)
    expected = num_params(model)
    if vec.size != expected:
        raise ShapeMismatch(f"parameter vector has {vec.size} values, model {type(model).__name__} has {expected}")
    if not np.isfinite(vec).all():
        raise ShapeMismatch("parameter vector contains NaN or inf")
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(torch.from_numpy(vec[offset : offset + n]).reshape(p.shape).to(p.dtype))
            offset += n
    return model


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """``state_dict`` tensors as numpy arrays, in order (the shape Flower strategies expect)."""
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_weights(model: nn.Module, weights: Sequence[np.ndarray]) -> nn.Module:
    """Inverse of :func:`get_weights`; checks count and shapes before touching the model."""
    state = model.state_dict()
    if len(weights) != len(state):
        raise ShapeMismatch(f"got {len(weights)} arrays for {len(state)} tensors of {type(model).__name__}")
    new_state = {}
    for (key, current), arr in zip(state.items(), weights):
        a = np.asarray(arr)
        if tuple(a.shape) != tuple(current.shape):
            raise ShapeMismatch(f"{key}: got shape {tuple(a.shape)}, expected {tuple(current.shape)}")
        new_state[key] = torch.as_tensor(a, dtype=current.dtype)
    model.load_state_dict(new_state)
    return model
