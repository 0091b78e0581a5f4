"""The simulator's own view of a firm's risk, for judging models on synthetic worlds only.

Every holder sees the latent health process through its own lens and noise; the simulator knows
it exactly. Ranking firms by their true monthly default hazard is the best any model of the
recorded data could approach, so it bounds what federation can add on a synthetic consortium
(early warning, lending value). Never used to train or score: it reads no holder's records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from participants.synth.world import simulate_world
from participants.synth.writer import params_from_manifest
from protocols.errors import DataError


class TrueHazard:
    """The simulator's hazard table for one synthetic folder, simulated once and looked up many times
    (each lookup of :func:`true_hazard` would re-simulate the whole world)."""

    def __init__(self, manifest: Mapping) -> None:
        self.params = params_from_manifest(dict(manifest))
        world = simulate_world(self.params)
        self._hazard = world.hazard
        self._rows = pd.Index(world.uscc.astype(str))

    def __call__(self, usccs: Sequence[str], months: Sequence[int]) -> dict[int, np.ndarray]:
        """Month index -> the true default hazard of each of ``usccs`` that month."""
        rows = self._rows.get_indexer(pd.Index([str(u) for u in usccs]))
        if (rows < 0).any():
            raise DataError("an enterprise is not in the simulated world; was the synthetic folder edited?")
        out = {}
        for m in months:
            t = int(m) - self.params.start
            if not 0 <= t < self.params.months:
                raise DataError(f"month index {m} is outside the simulated months")
            out[int(m)] = self._hazard[rows, t]
        return out


def true_hazard(manifest: Mapping, usccs: Sequence[str], months: Sequence[int]) -> dict[int, np.ndarray]:
    """Month index -> the true default hazard of each of ``usccs`` that month (re-simulated from the
    folder's manifest; deterministic). For several lookups, keep a :class:`TrueHazard`."""
    return TrueHazard(manifest)(usccs, months)
