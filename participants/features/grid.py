"""Long monthly records -> dense (enterprise x month) matrices over a trailing window.

Statistics are then plain numpy reductions over column slices: one pass for 20k firms, no Python
loop over firms or months.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class MonthGrid:
    """Values of each raw field for ``ids`` over the ``width`` months ending at the as-of month.

    Column ``width - 1`` is the as-of month; NaN means "no record that month".
    """

    ids: pd.Index
    width: int
    values: dict[str, np.ndarray]
    present: np.ndarray
    """bool (n, width): a record exists (even if some of its fields are blank)."""
    first_month: np.ndarray
    """month index of each firm's first record at or before the as-of month."""
    last_month: np.ndarray


def build_grid(records: pd.DataFrame, fields: list[str], as_of_index: int, width: int) -> MonthGrid:
    """``records`` has columns ``uscc``, ``month_idx`` (int) and ``fields``; months <= as-of only."""
    ids_sorted = pd.Index(np.sort(records["uscc"].unique()))
    codes = ids_sorted.get_indexer(records["uscc"])
    months = records["month_idx"].to_numpy()
    n = len(ids_sorted)
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(first, codes, months)
    np.maximum.at(last, codes, months)
    offset = months - (as_of_index - width + 1)
    inside = offset >= 0
    rows, cols = codes[inside], offset[inside]
    present = np.zeros((n, width), dtype=bool)
    present[rows, cols] = True
    values: dict[str, np.ndarray] = {}
    for field in fields:
        matrix = np.full((n, width), np.nan)
        matrix[rows, cols] = records[field].to_numpy(dtype=float)[inside]
        values[field] = matrix
    return MonthGrid(ids_sorted, width, values, present, first, last)
