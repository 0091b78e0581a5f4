"""Read one public data file (CSV or ARFF) into a DataFrame, with errors that name the file."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from participants.datasets.errors import DatasetError

ROW_COLUMN = "row"
"""ARFF files carry no id: the reader numbers their data lines 0..n-1 in this column."""


def read_arff(path: Path) -> pd.DataFrame:
    """Numeric/nominal ARFF (``?`` = missing) plus a 0-based :data:`ROW_COLUMN`."""
    try:
        text = path.read_text(encoding="ascii").replace("\r", "")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ARFF ({exc})") from None
    head, sep, data = text.partition("@data\n")
    if not sep:
        raise DatasetError(f"{path}: no @data section")
    columns = [line.split()[1] for line in head.splitlines() if line.lower().startswith("@attribute")]
    if not columns:
        raise DatasetError(f"{path}: no @attribute lines")
    try:
        frame = pd.read_csv(io.StringIO(data), header=None, names=columns, na_values="?")
    except (ValueError, pd.errors.ParserError) as exc:
        raise DatasetError(f"{path}: malformed ARFF data ({exc})") from None
    if ROW_COLUMN in frame.columns:
        raise DatasetError(f"{path}: has its own {ROW_COLUMN!r} column; cannot number rows")
    frame.insert(0, ROW_COLUMN, range(len(frame)))
    return frame


def read_table(path: Path, usecols: list[str] | None = None) -> pd.DataFrame:
    """CSV or ARFF by suffix; ``usecols`` are checked and reported together when missing."""
    if not path.is_file():
        raise DatasetError(f"data file {path} not found")
    if path.suffix.lower() == ".arff":
        frame = read_arff(path)
    else:
        try:
            frame = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise DatasetError(f"{path}: cannot read CSV ({exc})") from None
    if frame.empty:
        raise DatasetError(f"{path}: no rows")
    if usecols is not None:
        missing = [c for c in usecols if c not in frame.columns]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}")
        frame = frame[usecols]
    return frame
