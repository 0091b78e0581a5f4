"""A small multilayer perceptron for tabular credit data (a few thousand parameters: cheap to
encrypt as one FedAvg update and fast on CPU)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.errors import InvalidInput


def mlp_layers(in_features: int, hidden: Sequence[int], out_features: int, dropout: float = 0.0) -> nn.Sequential:
    """Linear → ReLU (→ Dropout) blocks ending in a plain linear layer."""
    if in_features < 1 or out_features < 1:
        raise InvalidInput(f"layer sizes must be >= 1, got in={in_features} out={out_features}")
    if any(h < 1 for h in hidden):
        raise InvalidInput(f"hidden sizes must be >= 1, got {list(hidden)}")
    if not 0.0 <= dropout < 1.0:
        raise InvalidInput(f"dropout must be in [0, 1), got {dropout}")
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers.append(nn.Linear(width, h))
        layers.append(nn.ReLU())
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class MLP(nn.Module):
    """Binary classifier; ``forward`` returns logits of shape ``(n,)``."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (32, 16), dropout: float = 0.0) -> None:
        super().__init__()
        self.in_features = in_features
        self.hidden = tuple(hidden)
        self.net = mlp_layers(in_features, self.hidden, 1, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)
