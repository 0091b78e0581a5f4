"""The records ceiling: how much of the federation gain the holders' recorded features carry, on a
synthetic world, once label noise is taken away.

The oracle row ranks firms by the simulator's true hazard, a function of latent factors no holder
records exactly. That leaves open whether a model falls short of the oracle because it learns
badly or because the records do not carry the signal. This yardstick separates the two: a
gradient-boosting regressor is fitted, on the same training panel as the models, to the *true*
logit hazard of every enterprise-month instead of the sparse 0/1 default labels, once on every
holder's features and once on the bank's alone, and its monthly ranking is judged like the models'.
It is a reference, not a bound: another learner or target (say the 12-month cumulative hazard)
lands a few early-warned defaults either side, but its held-out fit of the hazard is as good.

Judge-only, like :mod:`participants.synth.oracle`: it reads the simulator's hazard, so it is never
used to train or score anything a holder or lender sees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor

from participants.synth.oracle import TrueHazard
from protocols.feature_schemas import month_index


def panel_hazard(oracle: TrueHazard, index: pd.MultiIndex) -> np.ndarray:
    """The true hazard of each (as_of, id) row of a training panel."""
    out = np.empty(len(index))
    as_of = index.get_level_values(0)
    ids = index.get_level_values(-1)
    for key in as_of.unique():
        rows = np.flatnonzero(as_of == key)
        m = month_index(str(key))
        out[rows] = oracle(list(ids[rows]), [m])[m]
    return out


def _matrix(frames: Mapping[str, pd.DataFrame], index: pd.Index, names: Sequence[str]) -> np.ndarray:
    """Every named holder's features for ``index`` side by side, NaN where a holder lacks the firm
    (the regressor routes missing values itself), plus a 0/1 "known to this holder" column."""
    blocks = []
    for name in names:
        frame = frames[name].reindex(index)
        blocks.append(frame.to_numpy(dtype=np.float64))
        blocks.append(frame.notna().any(axis=1).to_numpy(dtype=np.float64)[:, None])
    return np.hstack(blocks)


class HazardFit:
    """A regressor of the logit true hazard on some holders' features."""

    def __init__(self, names: Sequence[str], *, seed: int = 0) -> None:
        self.names = tuple(names)
        self._model = HistGradientBoostingRegressor(max_iter=400, learning_rate=0.05, max_leaf_nodes=31,
                                                    random_state=seed)

    def fit(self, features: Mapping[str, pd.DataFrame], index: pd.Index, hazard: np.ndarray) -> "HazardFit":
        p = np.clip(np.asarray(hazard, dtype=np.float64), 1e-9, 1 - 1e-9)
        self._model.fit(_matrix(features, index, self.names), np.log(p / (1 - p)))
        return self

    def score(self, features: Mapping[str, pd.DataFrame], ids: pd.Index) -> np.ndarray:
        """Predicted logit hazard of ``ids`` (higher = riskier; only the ranking is used)."""
        return self._model.predict(_matrix(features, ids, self.names))
