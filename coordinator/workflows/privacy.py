"""(ε, δ) accounting for client-side Gaussian noise, composed over training rounds.

Mechanism (applied by each participant before encryption, see ``participants.handlers.horizontal``):
the participant's model update Δ = θ_local − θ_global is clipped to L2 norm ``C`` and
N(0, (z·C)² I) noise is added, ``z`` being the noise multiplier (``--dp-noise``). Every
participant takes part in every round (no sampling, so no amplification is claimed).

Guarantee reported: participant-level DP for ONE participant's released update stream, against
anyone who could see that update alone (the worst case: other participants who decrypt the sum and
subtract their own contributions; the coordinator only sees ciphertexts). Neighbouring relation:
add/remove one participant's whole dataset, so the clipped update has L2 sensitivity ``C``.

Accountant: Rényi DP of the Gaussian mechanism, ``RDP(α) = α / (2 z²)`` per round, composed
additively over ``T`` rounds, converted to (ε, δ) with the conversion of Canonne, Kamath & Steinke
(2020) / Balle et al. (2020):

    ε(δ) = min_α [ T·α/(2z²) + log((α−1)/α) − (log δ + log α)/(α−1) ]

This is never looser than the classic ``RDP + log(1/δ)/(α−1)`` bound. The example counts used by the
sample weights are treated as public metadata.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

__all__ = ["PrivacySpent", "gaussian_rdp_epsilon", "account"]

#: Orders searched for the tightest bound (fine near 1, coarse for large orders).
_ORDERS: tuple[float, ...] = tuple(
    [1.0 + x / 20.0 for x in range(1, 100)] + list(range(6, 64)) + [64, 80, 96, 128, 160, 192, 256, 384, 512, 1024]
)


class PrivacySpent(BaseModel):
    """What a run spent; ``epsilon`` is ``inf`` when no noise was added."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mechanism: str = "gaussian, client-side clipping, RDP accountant"
    noise_multiplier: float
    clip_norm: float
    rounds: int
    delta: float
    epsilon: float
    order: float | None = None


def gaussian_rdp_epsilon(noise_multiplier: float, rounds: int, delta: float) -> tuple[float, float | None]:
    """(ε, best order) after ``rounds`` Gaussian releases with noise multiplier ``z``."""
    if not 0.0 < delta < 1.0:
        raise ValueError("delta must be in (0, 1)")
    if rounds < 0:
        raise ValueError("rounds must be >= 0")
    if rounds == 0:
        return 0.0, None
    if noise_multiplier <= 0.0:
        return math.inf, None
    z2 = noise_multiplier * noise_multiplier
    best, best_order = math.inf, None
    for a in _ORDERS:
        rdp = rounds * a / (2.0 * z2)
        eps = rdp + math.log((a - 1.0) / a) - (math.log(delta) + math.log(a)) / (a - 1.0)
        if eps < best:
            best, best_order = eps, a
    return max(best, 0.0), best_order


def account(noise_multiplier: float, clip_norm: float, rounds: int, delta: float) -> PrivacySpent:
    eps, order = gaussian_rdp_epsilon(noise_multiplier, rounds, delta)
    return PrivacySpent(
        noise_multiplier=noise_multiplier,
        clip_norm=clip_norm,
        rounds=rounds,
        delta=delta,
        epsilon=eps,
        order=order,
    )
