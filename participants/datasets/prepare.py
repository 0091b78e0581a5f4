"""Turn per-participant frames into model-ready arrays without leaking the test split.

Every participant fits its own preprocessor (median imputation, optional winsorising,
standardisation) on training rows only — the same thing it will do on its own node in federated
training — and applies it to the test rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from models.preprocessing import Preprocessor
from participants.datasets.errors import DatasetError

PRESENT_SUFFIX = "__present"


@dataclass(frozen=True)
class PreparedPart:
    name: str
    features: list[str]
    X_train: np.ndarray
    X_test: np.ndarray
    preprocessor: Preprocessor


def split_ids(labels: pd.Series, test_size: float, seed: int) -> tuple[pd.Index, pd.Index]:
    """Stratified, seeded train/test split of the labelled ids."""
    if not 0.0 < test_size < 1.0:
        raise DatasetError(f"test size must be in (0, 1), got {test_size}")
    if labels.nunique() < 2:
        raise DatasetError("labels contain a single class; nothing to evaluate")
    train, test = train_test_split(labels.index, test_size=test_size, random_state=seed, stratify=labels.to_numpy())
    return pd.Index(train), pd.Index(test)


def align(frame: pd.DataFrame, ids: pd.Index, name: str) -> pd.DataFrame:
    """Rows of ``frame`` for ``ids``; enterprises the holder does not know become NaN plus a
    0/1 ``<name>__present`` column, so a model can learn what an absent source means."""
    aligned = frame.reindex(ids)
    known = ids.isin(frame.index)
    if not known.all():
        aligned[f"{name}{PRESENT_SUFFIX}"] = known.astype(np.float64)
    return aligned


def prepare_part(
    name: str,
    frame: pd.DataFrame,
    train_ids: pd.Index,
    test_ids: pd.Index,
    winsorise: tuple[float, float] | None = None,
) -> PreparedPart:
    train = align(frame, train_ids, name)
    test = align(frame, test_ids, name).reindex(columns=train.columns, fill_value=1.0)
    pre = Preprocessor.fit(train.to_numpy(), list(train.columns), impute=True, winsorise=winsorise)
    return PreparedPart(name=name, features=list(train.columns), X_train=pre.transform(train.to_numpy()),
                        X_test=pre.transform(test.to_numpy()), preprocessor=pre)
