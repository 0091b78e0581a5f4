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


def true_hazard(manifest: Mapping, usccs: Sequence[str], months: Sequence[int]) -> dict[int, np.ndarray]:
    """Month index -> the true default hazard of each of ``usccs`` that month (re-simulated from the
    folder's manifest; deterministic)."""
    params = params_from_manifest(dict(manifest))
    world = simulate_world(params)
    rows = pd.Index(world.uscc.astype(str)).get_indexer(pd.Index([str(u) for u in usccs]))
    if (rows < 0).any():
        raise DataError("an enterprise is not in the simulated world; was the synthetic folder edited?")
    out = {}
    for m in months:
        t = int(m) - params.start
        if not 0 <= t < params.months:
            raise DataError(f"month index {m} is outside the simulated months")
        out[int(m)] = world.hazard[rows, t]
    return out
