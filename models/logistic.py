"""Logistic regression as a torch module, so it trains with the same loops (local, FedAvg, FedProx)
as every other model and its parameters flatten the same way for encrypted aggregation."""

from __future__ import annotations

import torch
from torch import nn

from models.errors import InvalidInput


class LogisticRegression(nn.Module):
    """``logit = w . x + b``; ``forward`` returns logits of shape ``(n,)`` (apply sigmoid for PD)."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        if in_features < 1:
            raise InvalidInput(f"in_features must be >= 1, got {in_features}")
        self.in_features = in_features
        self.linear = nn.Linear(in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)
