"""Polish companies bankruptcy, 5th year (UCI 365) as a bank + tax vertical consortium.

The split of the 64 ratios lives in ``examples/polish_vertical.toml``: the bank holds the balance
sheet (liquidity, leverage, debt coverage; label holder), the tax authority the income statement
(sales, margins, turnover). About half the rows miss at least one ratio, and ratios with
near-zero denominators reach 1e5 times their median: :data:`WINSORISE` quantiles and median
imputation are fitted on the training split only (see :mod:`participants.datasets.prepare`).
"""

from __future__ import annotations

import os

import pandas as pd

from participants.datasets.errors import DatasetError
from participants.datasets.fate import EXAMPLES
from participants.datasets.frames import Frames, load_custom_frames

VERTICAL_CONFIG = EXAMPLES / "polish_vertical.toml"
ROWS = 5_910
POSITIVES = 410
WINSORISE: tuple[float, float] = (0.01, 0.99)


def load_polish_vertical(config: str | os.PathLike[str] = VERTICAL_CONFIG) -> tuple[Frames, pd.Series]:
    """``({"bank": 5910x29, "tax": 5910x35}, labels)``; features still contain NaN (impute per split)."""
    frames, labels = load_custom_frames(config)
    if len(labels) != ROWS or int(labels.sum()) != POSITIVES:
        raise DatasetError(f"Polish 5year: expected {ROWS} rows / {POSITIVES} bankrupt, got "
                           f"{len(labels)} / {int(labels.sum())}")
    return frames, labels
