"""``build_features``: one source's monthly records -> its standard model features as of a month."""

from __future__ import annotations

import numpy as np
import pandas as pd

from participants.features.grid import build_grid
from participants.features.stats import GRID_WIDTH, compute
from protocols.errors import DataError
from protocols.feature_schemas import ID_COLUMN, MONTH_COLUMN, month_index, standard_schema

MONTH_IDX = "month_idx"


def parse_records(kind: str, records: pd.DataFrame, *, source: str = "records") -> pd.DataFrame:
    """Check a standard-layout frame and add an integer ``month_idx`` column.

    Raises :class:`DataError` naming ``source``, the column and the first bad row (1-based data
    row), never the value: a wrong file must fail loudly, not become wrong features.
    """
    schema = standard_schema(kind)
    needed = [ID_COLUMN, MONTH_COLUMN, *schema.raw_field_names]
    missing = [c for c in needed if c not in records.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)} for the {kind} schema")
    frame = records[needed].copy()
    frame[ID_COLUMN] = frame[ID_COLUMN].astype(str)
    months = frame[MONTH_COLUMN].astype(str)
    ok = months.str.fullmatch(r"\d{4}-(0[1-9]|1[0-2])")
    if not ok.all():
        row = int(np.flatnonzero(~ok.to_numpy())[0]) + 1
        raise DataError(f"{source}: column {MONTH_COLUMN} row {row}: expected YYYY-MM")
    frame[MONTH_IDX] = months.str[:4].astype(int) * 12 + months.str[5:7].astype(int) - 1
    for field in schema.raw_field_names:
        numeric = pd.to_numeric(frame[field], errors="coerce")
        bad = numeric.isna() & frame[field].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0]) + 1
            raise DataError(f"{source}: column {field} row {row}: not a number")
        if np.isinf(numeric.to_numpy(dtype=float)).any():
            row = int(np.flatnonzero(np.isinf(numeric.to_numpy(dtype=float)))[0]) + 1
            raise DataError(f"{source}: column {field} row {row}: infinite value")
        frame[field] = numeric.astype(float)
    dup = frame.duplicated([ID_COLUMN, MONTH_IDX])
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0]) + 1
        raise DataError(f"{source}: row {row}: a second record for the same enterprise and month")
    return frame


def build_features(kind: str, records: pd.DataFrame, as_of: str) -> pd.DataFrame:
    """Features of every enterprise with a record at or before ``as_of``.

    ``records``: standard raw layout of ``kind`` (``uscc``, ``month`` YYYY-MM, raw fields).
    Returns a float frame indexed by USCC (sorted), columns = the schema's feature names, no NaN.
    Only records with month <= as_of are read (point-in-time correctness).
    """
    schema = standard_schema(kind)
    frame = records if MONTH_IDX in records.columns else parse_records(kind, records)
    t = month_index(as_of)
    frame = frame[frame[MONTH_IDX] <= t]
    if frame.empty:
        return pd.DataFrame(columns=schema.feature_names, index=pd.Index([], name=ID_COLUMN),
                            dtype=float)
    grid = build_grid(frame, schema.raw_field_names, t, GRID_WIDTH)
    data = {spec.name: compute(spec, grid, t) for spec in schema.features}
    out = pd.DataFrame(data, index=grid.ids, columns=schema.feature_names)
    out.index.name = ID_COLUMN
    return out
