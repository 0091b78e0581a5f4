"""Labels derived from the label holder's outcome ledger, point in time.

"Default within the 12 months after as-of": for as-of month T, a customer is eligible when it was
a customer at T and had not defaulted at or before T. Its label is 1 when the default month is in
T+1..T+12, 0 when its outcome is observed through T+12 without a default; otherwise it is censored
and left out (a label we do not know is never guessed as 0).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from protocols.errors import DataError
from protocols.feature_schemas import ID_COLUMN, LABEL_HORIZON_MONTHS, LABEL_LEDGER, month_index

LABEL_NAME = "default_12m"


def _month_idx(series: pd.Series, source: str, column: str, *, allow_blank: bool) -> np.ndarray:
    text = series.astype("string").str.strip()
    blank = text.isna() | (text == "")
    ok = text.str.fullmatch(r"\d{4}-(0[1-9]|1[0-2])").fillna(False).astype(bool)
    bad = ~ok & ~(blank if allow_blank else False)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0]) + 1
        raise DataError(f"{source}: column {column} row {row}: expected YYYY-MM"
                        + (" or blank" if allow_blank else ""))
    out = np.full(len(series), np.iinfo(np.int64).max, dtype=np.int64)
    good = ok.to_numpy()
    parts = text[ok]
    out[good] = parts.str[:4].astype(int).to_numpy() * 12 + parts.str[5:7].astype(int).to_numpy() - 1
    return out


def labels_from_ledger(ledger: pd.DataFrame, as_of: str, *, default_column: str | None = None,
                       id_column: str = ID_COLUMN, source: str = "ledger",
                       horizon: int = LABEL_HORIZON_MONTHS) -> pd.Series:
    """0/1 Series indexed by USCC (sorted) named ``default_12m``; see the module docstring."""
    default_column = default_column or LABEL_LEDGER.default_month
    needed = [id_column, LABEL_LEDGER.customer_since, default_column, LABEL_LEDGER.observed_until]
    missing = [c for c in needed if c not in ledger.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)} for an outcome ledger")
    ids = ledger[id_column].astype(str)
    if ids.duplicated().any():
        row = int(np.flatnonzero(ids.duplicated().to_numpy())[0]) + 1
        raise DataError(f"{source}: row {row}: enterprise listed twice in the ledger")
    t = month_index(as_of)
    since = _month_idx(ledger[LABEL_LEDGER.customer_since], source, LABEL_LEDGER.customer_since,
                       allow_blank=False)
    default = _month_idx(ledger[default_column], source, default_column, allow_blank=True)
    observed = _month_idx(ledger[LABEL_LEDGER.observed_until], source, LABEL_LEDGER.observed_until,
                          allow_blank=False)
    eligible = (since <= t) & (default > t)
    positive = default <= t + horizon
    known = positive | (observed >= t + horizon)
    keep = eligible & known
    if eligible.any() and not keep.any():
        latest = int(observed.max())
        raise DataError(
            f"{source}: outcomes are observed only until {latest // 12:04d}-{latest % 12 + 1:02d}; "
            f"labels as of {as_of} need {horizon} months after it"
        )
    out = pd.Series(positive[keep].astype(np.int64), index=pd.Index(ids[keep], name=ID_COLUMN),
                    name=LABEL_NAME)
    return out.sort_index()


def binary_labels(frame: pd.DataFrame, label_column: str, *, id_column: str,
                  source: str = "labels") -> pd.Series:
    """A 0/1 label column of a real data set, indexed by its id column (as strings)."""
    if label_column not in frame.columns:
        raise DataError(f"{source}: missing label column {label_column}")
    values = pd.to_numeric(frame[label_column], errors="coerce")
    bad = ~values.isin([0, 1])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0]) + 1
        raise DataError(f"{source}: column {label_column} row {row}: label must be 0 or 1")
    out = pd.Series(values.astype(np.int64).to_numpy(),
                    index=pd.Index(frame[id_column].astype(str), name=id_column), name=LABEL_NAME)
    return out
