"""Split (vertical) model: one bottom model per participant, one HE-friendly top at the label holder.

Each participant turns its own features into a small vector ``b_i = bottom_i(x_i)``; only the
sum ``z = sum_i b_i`` ever leaves the participants (under pairwise masks in training, under the
lender's CKKS key in scoring). The top maps ``z`` to a logit using only operations CKKS can
evaluate on ciphertexts: additions, plaintext multiplications and one square. The torch forward
and :func:`evaluate_top` (plain numpy on :meth:`TopModel.he_spec`) compute the same function, so
the encrypted evaluator can be checked against both.

An enterprise missing at a holder contributes a zero vector to the sum (see :class:`SplitModel`),
which is also what an absent ciphertext means to the gateway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from models.errors import InvalidInput, ShapeMismatch
from models.mlp import mlp_layers

TopKind = Literal["linear", "square", "poly"]

POLY_COEFFS: tuple[float, float, float] = (0.0, 0.5, 0.25)
"""Default activation ``a(h) = 0.5 h + 0.25 h^2``: the degree-2 Taylor expansion of swish
``h * sigmoid(h)``, smooth and non-saturating, so training stays stable without ReLU."""
SQUARE_COEFFS: tuple[float, float, float] = (0.0, 0.0, 1.0)


class BottomModel(nn.Module):
    """A participant's private feature extractor: linear, or a small MLP when ``hidden`` is given."""

    def __init__(self, in_features: int, out_dim: int, hidden: Sequence[int] | None = None, bias: bool = True) -> None:
        super().__init__()
        if in_features < 1 or out_dim < 1:
            raise InvalidInput(f"BottomModel sizes must be >= 1, got in_features={in_features} out_dim={out_dim}")
        self.in_features = in_features
        self.out_dim = out_dim
        self.hidden = tuple(hidden) if hidden else ()
        if self.hidden:
            self.net: nn.Module = mlp_layers(in_features, self.hidden, out_dim)
        else:
            self.net = nn.Linear(in_features, out_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass(frozen=True)
class TopSpec:
    """Plain-numpy weights of a :class:`TopModel`, everything an encrypted evaluator needs.

    ``linear``: ``logit = z @ w2 + b2``.
    ``square``/``poly``: ``h = z @ w1.T + b1``; ``a = c0 + c1*h + c2*h*h``; ``logit = a @ w2 + b2``.
    (An evaluator may fold ``c1``, ``c2`` into ``w2`` to save one multiplicative level.)
    """

    kind: TopKind
    in_dim: int
    w2: np.ndarray
    b2: float
    w1: np.ndarray | None = None
    b1: np.ndarray | None = None
    coeffs: tuple[float, float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def multiplicative_depth(self) -> int:
        """Ciphertext-ciphertext or ciphertext-plaintext multiplications on the longest path."""
        return 1 if self.kind == "linear" else 3

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (lists and floats, no pickle)."""
        out: dict[str, Any] = {"kind": self.kind, "in_dim": self.in_dim, "w2": self.w2.tolist(), "b2": self.b2}
        if self.kind != "linear":
            assert self.w1 is not None and self.b1 is not None and self.coeffs is not None
            out.update(w1=self.w1.tolist(), b1=self.b1.tolist(), coeffs=list(self.coeffs))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TopSpec:
        try:
            kind = data["kind"]
            in_dim = int(data["in_dim"])
            w2 = np.asarray(data["w2"], dtype=np.float64)
            b2 = float(data["b2"])
            if kind == "linear":
                spec = cls(kind="linear", in_dim=in_dim, w2=w2, b2=b2)
            elif kind in ("square", "poly"):
                c = tuple(float(v) for v in data["coeffs"])
                if len(c) != 3:
                    raise ShapeMismatch(f"top spec: coeffs must have 3 values, got {len(c)}")
                spec = cls(
                    kind=kind, in_dim=in_dim, w2=w2, b2=b2,
                    w1=np.asarray(data["w1"], dtype=np.float64), b1=np.asarray(data["b1"], dtype=np.float64),
                    coeffs=(c[0], c[1], c[2]),
                )
            else:
                raise ShapeMismatch(f"top spec: unknown kind {kind!r} (expected linear, square or poly)")
        except KeyError as exc:
            raise ShapeMismatch(f"top spec: missing key {exc.args[0]!r}") from None
        spec.check()
        return spec

    def check(self) -> None:
        if self.kind == "linear":
            if self.w2.shape != (self.in_dim,):
                raise ShapeMismatch(f"top spec: w2 shape {self.w2.shape}, expected ({self.in_dim},)")
            return
        if self.w1 is None or self.b1 is None or self.w1.ndim != 2 or self.w1.shape[1] != self.in_dim:
            raise ShapeMismatch(f"top spec: w1 must be (hidden, {self.in_dim})")
        hidden = self.w1.shape[0]
        if self.b1.shape != (hidden,) or self.w2.shape != (hidden,):
            raise ShapeMismatch(f"top spec: b1 {self.b1.shape} and w2 {self.w2.shape} must both be ({hidden},)")


class TopModel(nn.Module):
    """HE-friendly head over the summed bottom outputs; ``forward`` returns logits of shape ``(n,)``."""

    def __init__(
        self,
        in_dim: int,
        kind: TopKind = "linear",
        hidden: int = 8,
        coeffs: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if in_dim < 1:
            raise InvalidInput(f"TopModel in_dim must be >= 1, got {in_dim}")
        if kind not in ("linear", "square", "poly"):
            raise InvalidInput(f"TopModel kind must be linear, square or poly, got {kind!r}")
        self.in_dim = in_dim
        self.kind: TopKind = kind
        if kind == "linear":
            self.out = nn.Linear(in_dim, 1)
            self.coeffs: tuple[float, float, float] | None = None
            return
        if hidden < 1:
            raise InvalidInput(f"TopModel hidden must be >= 1, got {hidden}")
        if coeffs is None:
            coeffs = SQUARE_COEFFS if kind == "square" else POLY_COEFFS
        if len(coeffs) != 3:
            raise InvalidInput(f"TopModel coeffs must be (c0, c1, c2), got {list(coeffs)}")
        self.coeffs = (float(coeffs[0]), float(coeffs[1]), float(coeffs[2]))
        self.hidden = nn.Linear(in_dim, hidden)
        self.out = nn.Linear(hidden, 1)

    def activation(self, h: torch.Tensor) -> torch.Tensor:
        assert self.coeffs is not None
        c0, c1, c2 = self.coeffs
        return c0 + c1 * h + c2 * (h * h)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return self.out(z).squeeze(-1)
        return self.out(self.activation(self.hidden(z))).squeeze(-1)

    def he_spec(self) -> TopSpec:
        """Weights as float64 numpy arrays for encrypted (or reference) evaluation."""
        w2 = self.out.weight.detach().cpu().double().numpy().reshape(-1).copy()
        b2 = float(self.out.bias.detach().cpu().double().item())
        if self.kind == "linear":
            return TopSpec(kind="linear", in_dim=self.in_dim, w2=w2, b2=b2)
        return TopSpec(
            kind=self.kind,
            in_dim=self.in_dim,
            w2=w2,
            b2=b2,
            w1=self.hidden.weight.detach().cpu().double().numpy().copy(),
            b1=self.hidden.bias.detach().cpu().double().numpy().copy(),
            coeffs=self.coeffs,
        )


def evaluate_top(spec: TopSpec, z: np.ndarray) -> np.ndarray:
    """Reference evaluation of the top on plaintext ``z`` (rows x in_dim) → logits ``(n,)``."""
    arr = np.asarray(z, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != spec.in_dim:
        raise InvalidInput(f"top input must be (rows, {spec.in_dim}), got {arr.shape}")
    if spec.kind == "linear":
        return arr @ spec.w2 + spec.b2
    assert spec.w1 is not None and spec.b1 is not None and spec.coeffs is not None
    c0, c1, c2 = spec.coeffs
    h = arr @ spec.w1.T + spec.b1
    return (c0 + c1 * h + c2 * (h * h)) @ spec.w2 + spec.b2


class SplitModel(nn.Module):
    """Bottoms + top in one process: the centralised reference for vertical training and a
    convenient way to test that federated split training reaches the same place.

    ``forward(parts, present)``: ``parts[name]`` holds that participant's feature tensor
    (or is absent/None when the holder has no rows at all); ``present[name]`` is an optional
    0/1 row mask that zeroes the bottom output of enterprises the holder does not know.
    """

    def __init__(self, bottoms: Mapping[str, BottomModel], top: TopModel) -> None:
        super().__init__()
        if not bottoms:
            raise InvalidInput("SplitModel needs at least one bottom model")
        for name, b in bottoms.items():
            if b.out_dim != top.in_dim:
                raise InvalidInput(f"bottom {name!r} out_dim={b.out_dim} differs from top in_dim={top.in_dim}")
        self.bottoms = nn.ModuleDict(dict(bottoms))
        self.top = top

    def embed(
        self, parts: Mapping[str, torch.Tensor | None], present: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The summed bottom outputs ``z`` (what the masked aggregation reveals)."""
        unknown = set(parts) - set(self.bottoms)
        if unknown:
            raise InvalidInput(f"no bottom model for participant(s) {sorted(unknown)}")
        total: torch.Tensor | None = None
        for name, bottom in self.bottoms.items():
            x = parts.get(name)
            if x is None:
                continue
            out = bottom(x)
            if present is not None and name in present:
                out = out * present[name].reshape(-1, 1).to(out.dtype)
            total = out if total is None else total + out
        if total is None:
            raise InvalidInput("SplitModel.forward got no participant inputs")
        return total

    def forward(
        self, parts: Mapping[str, torch.Tensor | None], present: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        return self.top(self.embed(parts, present))
