"""A participant's local data: raw files in its data directory -> features, labels, ids.

Everything here runs at the data holder and reads only that holder's own directory. For the
research yardstick (centralised comparisons on synthetic or public data), :func:`load_consortium_frames`
builds every participant's features, each in isolation, from one consortium file.
"""

from __future__ import annotations

import io
import os
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from participants.datasets.frames import participant_frame
from participants.features import build_features, parse_records
from participants.features.build import MONTH_IDX
from participants.features.labels import LABEL_NAME, binary_labels, labels_from_ledger
from protocols.consortium import (
    ConsortiumConfig,
    FeatureSchemaConfig,
    ParticipantConfig,
    load_consortium,
)
from protocols.errors import ConfigError, DataError
from protocols.feature_schemas import ID_COLUMN, LABEL_LEDGER, MONTH_COLUMN, month_str
from protocols.uscc import is_valid_uscc


ARFF_ROW_COLUMN = "row"
"""ARFF files carry no id: their data lines are numbered 0..n-1 in this column."""


def _read_arff(path: Path) -> pd.DataFrame:
    """Numeric/nominal ARFF (``?`` = missing) plus a 0-based ``row`` id column."""
    text = path.read_text(encoding="utf-8").replace("\r", "")
    head, sep, data = text.partition("@data\n")
    if not sep:
        raise DataError(f"{path}: no @data section in ARFF file")
    columns = [line.split()[1] for line in head.splitlines()
               if line.lower().startswith("@attribute")]
    frame = pd.read_csv(io.StringIO(data), header=None, names=columns, na_values="?",
                        comment="%")
    if ARFF_ROW_COLUMN in frame.columns:
        raise DataError(f"{path}: has its own {ARFF_ROW_COLUMN!r} column; cannot number rows")
    frame.insert(0, ARFF_ROW_COLUMN, [str(i) for i in range(len(frame))])
    return frame


def _read_csv(path: Path, *, id_column: str) -> pd.DataFrame:
    """CSV / CSV.gz (or ARFF by suffix); errors name the file, never a parser traceback."""
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    try:
        if path.suffix.lower() == ".arff":
            frame = _read_arff(path)
        else:
            frame = pd.read_csv(path, dtype={id_column: str}, keep_default_na=True, low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError,
            EOFError, ValueError, IndexError) as exc:
        if isinstance(exc, DataError):
            raise
        kind = type(exc).__name__
        raise DataError(f"{path}: cannot parse as {path.suffix.lstrip('.') or 'CSV'} ({kind})") \
            from None
    if frame.empty:  # a header alone: every figure built on it would be silently meaningless
        raise DataError(f"{path}: no rows")
    return frame


def _check_ids(ids: pd.Series, source: str, id_format: str) -> None:
    if ids.isna().any():
        row = int(np.flatnonzero(ids.isna().to_numpy())[0]) + 1
        raise DataError(f"{source}: row {row}: empty id")
    if id_format != "uscc":
        return
    unique = pd.unique(ids)
    valid = np.fromiter((is_valid_uscc(x) for x in unique), dtype=bool, count=len(unique))
    if not valid.all():
        bad = set(unique[~valid])
        row = int(np.flatnonzero(ids.isin(bad).to_numpy())[0]) + 1
        raise DataError(f"{source}: row {row}: id is not a valid USCC "
                        f"({len(bad)} invalid id(s) in the file)")


class LocalDataStore:
    """One participant's data directory, read lazily and validated once.

    ``features(as_of)``: model features as of a month (standard schemas: only records up to
    ``as_of``; custom schemas: the mapped columns, no time axis). ``labels(as_of)``: label holder
    only. ``ids(as_of)``: the enterprises this holder can contribute (its PSI input).
    ``as_of=None`` means the default given at construction, else the latest month in the data.
    """

    def __init__(self, participant: ParticipantConfig, *, default_as_of: str | None = None) -> None:
        if participant.features is None or participant.data_dir is None:
            raise ConfigError(f"participant {participant.name!r} holds no data")
        self.name = participant.name
        self.schema: FeatureSchemaConfig = participant.features
        self.data_dir = Path(participant.data_dir)
        self.default_as_of = default_as_of
        self.holds_labels = participant.holds_labels

    @classmethod
    def from_dir(cls, data_dir: str | os.PathLike[str], schema: FeatureSchemaConfig | str, *,
                 name: str = "local", holds_labels: bool | None = None,
                 default_as_of: str | None = None) -> "LocalDataStore":
        """A store over a directory that follows ``schema`` (a kind name means standard layout;
        the bank kind then reads its outcome ledger for labels)."""
        if isinstance(schema, str):
            schema = FeatureSchemaConfig.model_validate(
                {"schema": schema, **({"label_column": LABEL_LEDGER.default_month}
                                      if schema == "bank" and holds_labels is not False else {})})
        labels = schema.label_column is not None
        kind = schema.kind if schema.kind != "custom" else "other"
        participant = ParticipantConfig(name=name, kind=kind, holds_labels=labels,
                                        data_dir=Path(data_dir), features=schema)
        return cls(participant, default_as_of=default_as_of)

    # -- raw data ------------------------------------------------------------------------------

    @property
    def records_path(self) -> Path:
        return self.data_dir / self.schema.records_file

    def _file_version(self) -> tuple[int, int] | None:
        try:
            st = self.records_path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def refresh(self) -> bool:
        """Forget what was read if the records file changed since (new months appended by the
        holder's pipeline); True when it did. Past months' features never change by appending,
        but a rewritten file may restate them, so callers drop whatever they derived."""
        read = self.__dict__.get("_read_version")
        if read is None or read == self._file_version():
            return False
        for name in ("_raw", "records", "_read_version"):
            self.__dict__.pop(name, None)
        return True

    @cached_property
    def _raw(self) -> pd.DataFrame:
        self.__dict__["_read_version"] = self._file_version()
        frame = _read_csv(self.records_path, id_column=self.schema.id_column)
        source = str(self.records_path)
        expected = [self.schema.id_column, *self.schema.mapping]
        if self.schema.kind == "custom":
            expected += self.schema.columns
        else:
            expected.append(self.schema.month_column)
        missing = [c for c in expected if c not in frame.columns]
        if missing:
            raise DataError(f"{source}: missing column(s) {', '.join(missing)} "
                            f"(declared in features of participant {self.name})")
        _check_ids(frame[self.schema.id_column], source, self.schema.id_format)
        return frame

    @cached_property
    def records(self) -> pd.DataFrame:
        """Standard kinds: raw records renamed to the standard layout, checked, with month_idx."""
        if self.schema.kind == "custom":
            raise ConfigError(f"participant {self.name!r}: a custom schema has no monthly records")
        frame = self._raw.rename(columns={**self.schema.mapping,
                                          self.schema.id_column: ID_COLUMN,
                                          self.schema.month_column: MONTH_COLUMN})
        return parse_records(self.schema.kind, frame, source=str(self.records_path))

    def latest_month(self) -> str | None:
        """Latest month with a record (None for custom data, which has no time axis)."""
        if self.schema.kind == "custom":
            return None
        if self.records.empty:
            raise DataError(f"{self.records_path}: no records")
        return month_str(int(self.records[MONTH_IDX].max()))

    def _as_of(self, as_of: str | None) -> str | None:
        return as_of or self.default_as_of or self.latest_month()

    # -- features, labels, ids -----------------------------------------------------------------

    def features(self, as_of: str | None = None) -> pd.DataFrame:
        """Float frame indexed by id (sorted), columns = this participant's feature names.

        Standard schemas: no NaN (see :mod:`participants.features.stats`). Custom schemas: the
        mapped columns as they are; missing cells stay NaN (imputation is a modelling choice that
        must be fitted on a training split, not here)."""
        if self.schema.kind == "custom":
            raw = self._raw
            ids = raw[self.schema.id_column].astype(str)
            if ids.duplicated().any():
                row = int(np.flatnonzero(ids.duplicated().to_numpy())[0]) + 1
                raise DataError(f"{self.records_path}: row {row}: id listed twice")
            out = pd.DataFrame(index=pd.Index(ids, name=ID_COLUMN))
            for raw_name, target in [*self.schema.mapping.items(),
                                     *((c, c) for c in self.schema.columns)]:
                values = pd.to_numeric(raw[raw_name], errors="coerce")
                bad = values.isna() & raw[raw_name].notna()
                if bad.any():
                    row = int(np.flatnonzero(bad.to_numpy())[0]) + 1
                    raise DataError(f"{self.records_path}: column {raw_name} row {row}: "
                                    "not a number")
                out[target] = values.to_numpy(dtype=float)
            return out.sort_index()
        as_of_month = self._as_of(as_of)
        assert as_of_month is not None
        return build_features(self.schema.kind, self.records, as_of_month)

    def labels(self, as_of: str | None = None) -> pd.Series:
        """0/1 Series named ``default_12m`` indexed by id; label holder only."""
        if self.schema.label_column is None:
            raise ConfigError(f"participant {self.name!r} holds no labels")
        label_file = self.data_dir / (self.schema.resolved_label_file or "")
        if self.schema.resolved_label_type == "binary":
            frame = self._raw if label_file == self.records_path else _read_csv(
                label_file, id_column=self.schema.id_column)
            return binary_labels(frame, self.schema.label_column, id_column=self.schema.id_column,
                                 source=str(label_file)).rename_axis(ID_COLUMN).sort_index()
        ledger = _read_csv(label_file, id_column=self.schema.id_column)
        if self.schema.id_column in ledger.columns:
            _check_ids(ledger[self.schema.id_column], str(label_file), self.schema.id_format)
        as_of_month = self._as_of(as_of)
        assert as_of_month is not None
        return labels_from_ledger(ledger, as_of_month, default_column=self.schema.label_column,
                                  id_column=self.schema.id_column, source=str(label_file))

    def ids(self, as_of: str | None = None) -> list[str]:
        """Sorted ids this holder has data for at ``as_of`` (its PSI input set)."""
        return list(self.features(as_of).index)


def holder_data(cfg: ConsortiumConfig, p: ParticipantConfig, as_of: str | None = None
                ) -> tuple[pd.DataFrame, pd.Series | None]:
    """One holder's features indexed by USCC and, at a label holder, its labels on the same ids;
    read from its own folder only (public ``custom`` tables, or the monthly store as of ``as_of``)."""
    if p.features is None:
        raise ConfigError(f"participant {p.name!r} holds no data")
    if p.features.kind == "custom":
        frame, labels = participant_frame(cfg, p)
    else:
        store = LocalDataStore(p, default_as_of=cfg.as_of)
        frame = store.features(as_of or None)
        labels = store.labels(as_of or None) if p.holds_labels else None
    if labels is not None:
        common = frame.index.intersection(labels.index)
        frame, labels = frame.loc[common], labels.loc[common]
    return frame, labels


def consortium_stores(cfg: ConsortiumConfig) -> dict[str, LocalDataStore]:
    return {p.name: LocalDataStore(p, default_as_of=cfg.as_of) for p in cfg.data_holders}


def load_consortium_frames(config_path: str | os.PathLike[str] | ConsortiumConfig,
                           as_of: str | None = None) -> tuple[dict[str, pd.DataFrame], pd.Series]:
    """Every data holder's features (each built from its own directory only) and the labels.

    ``as_of``: explicit month, else the consortium's ``as_of``, else the label holder's latest
    month (one as-of for all sources). Frames are indexed by each holder's own ids (not aligned:
    use :func:`join_on_labels` for a pooled matrix). Labels: the label holder's (vertical) or
    all label holders' concatenated (horizontal; an id may repeat across banks).
    """
    cfg = config_path if isinstance(config_path, ConsortiumConfig) else load_consortium(config_path)
    stores = consortium_stores(cfg)
    holders = [p.name for p in cfg.label_holders]
    month = as_of or cfg.as_of
    if month is None:
        month = stores[holders[0]].latest_month()
    frames = {name: store.features(month) for name, store in stores.items()}
    labels = pd.concat([stores[name].labels(month) for name in holders])
    labels.name = LABEL_NAME
    return frames, labels


def join_on_labels(frames: dict[str, pd.DataFrame], labels: pd.Series,
                   names: list[str] | None = None) -> pd.DataFrame:
    """Pooled matrix for centralised yardsticks: one row per labelled id.

    Columns ``<participant>.<feature>`` plus ``<participant>.present`` (1 when the holder knows
    the enterprise); features of absent enterprises are 0.
    """
    parts = []
    for name in names or list(frames):
        frame = frames[name]
        aligned = frame.reindex(labels.index)
        present = aligned.notna().all(axis=1).astype(float)
        aligned = aligned.fillna(0.0)
        aligned.columns = [f"{name}.{c}" for c in frame.columns]
        aligned[f"{name}.present"] = present
        parts.append(aligned)
    return pd.concat(parts, axis=1)
