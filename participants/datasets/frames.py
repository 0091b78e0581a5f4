"""Load a consortium of public data (``custom`` feature schemas) into per-participant frames.

The consortium TOML is the single source of truth for who holds which columns: the loaders here
only read what it says. Output matches the synthetic data store: ``{participant: features}``, each
indexed by USCC, and one label Series indexed by USCC (the union over label holders).

Ids with ``id_format = "any"`` (FATE's integers, the row numbers of ARFF files) are mapped to
synthetic USCCs in the consortium's name as namespace (:mod:`participants.datasets.ids`), so
alignment, consent and scoring run on valid codes exactly as they would on real ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from participants.datasets.errors import DatasetError
from participants.datasets.ids import synthetic_usccs
from participants.datasets.paths import DEFAULT_ROOT, ENV_VAR, datasets_root
from participants.datasets.readers import read_table
from protocols.consortium import ConsortiumConfig, ParticipantConfig, load_consortium
from protocols.feature_schemas import ID_COLUMN
from protocols.uscc import is_valid_uscc

Frames = dict[str, pd.DataFrame]


def rebase_data_dir(data_dir: Path) -> Path:
    """Honour ``$FEDSCORE_DATASETS``: a data_dir inside the default shared folder moves with it."""
    if not os.environ.get(ENV_VAR):
        return data_dir
    try:
        relative = Path(data_dir).resolve().relative_to(DEFAULT_ROOT.resolve())
    except ValueError:
        return data_dir
    return datasets_root() / relative


def _records_path(p: ParticipantConfig) -> Path:
    assert p.data_dir is not None and p.features is not None
    path = rebase_data_dir(Path(p.data_dir)) / p.features.records_file
    if not path.is_file():
        raise DatasetError(
            f"participant {p.name!r}: data file {path} not found "
            "(public data sets live in ../shared/datasets next to the repository)"
        )
    return path


def _to_uscc(raw_ids: pd.Series, id_format: str, namespace: str, where: str) -> pd.Index:
    if id_format == "uscc":
        codes = raw_ids.astype(str).str.strip().str.upper()
        valid = codes.map(is_valid_uscc).to_numpy(dtype=bool)
        if not valid.all():
            row = int(np.flatnonzero(~valid)[0]) + 1
            raise DatasetError(f"{where}: row {row}: id is not a valid USCC ({int((~valid).sum())} invalid)")
        return pd.Index(codes, name=ID_COLUMN)
    numeric = pd.to_numeric(raw_ids, errors="coerce")
    if numeric.isna().any() or not np.all(np.equal(np.mod(numeric, 1), 0)):
        raise DatasetError(f"{where}: id_format 'any' needs integer ids to derive USCCs")
    return pd.Index(synthetic_usccs(namespace, numeric.astype(np.int64)), name=ID_COLUMN)


def participant_frame(cfg: ConsortiumConfig, p: ParticipantConfig) -> tuple[pd.DataFrame, pd.Series | None]:
    """One holder's features (renamed per its mapping) and, for a label holder, its labels."""
    features = p.features
    if features is None:
        raise DatasetError(f"participant {p.name!r} holds no data")
    if features.kind != "custom":
        raise DatasetError(
            f"participant {p.name!r}: schema {features.kind!r} is a monthly standard schema; "
            "use the participant data store for it"
        )
    path = _records_path(p)
    raw_columns = [*features.mapping, *features.columns]
    wanted = [features.id_column, *raw_columns]
    if features.label_column is not None:
        if features.resolved_label_file not in (None, features.records_file):
            raise DatasetError(f"participant {p.name!r}: labels in a separate file are not supported for public data")
        wanted.append(features.label_column)
    table = read_table(path, wanted)
    where = f"{path} (participant {p.name!r})"
    if table[features.id_column].duplicated().any():
        raise DatasetError(f"{where}: duplicate ids in column {features.id_column!r}")
    index = _to_uscc(table[features.id_column], features.id_format, cfg.name, where)
    try:
        frame = table[raw_columns].astype(np.float64)
    except ValueError as exc:
        raise DatasetError(f"{where}: non-numeric feature values ({exc})") from None
    frame = frame.rename(columns=features.raw_to_standard())
    frame.index = index
    labels = None
    if features.label_column is not None:
        y = pd.to_numeric(table[features.label_column], errors="coerce")
        if not y.isin([0, 1]).all():
            raise DatasetError(f"{where}: label column {features.label_column!r} must be 0/1")
        labels = pd.Series(y.astype(np.int64).to_numpy(), index=index, name="y")
    return frame, labels


def load_custom_frames(config: ConsortiumConfig | str | os.PathLike[str]) -> tuple[Frames, pd.Series]:
    """``({participant: features indexed by USCC}, labels indexed by USCC)`` for a public-data consortium."""
    cfg = config if isinstance(config, ConsortiumConfig) else load_consortium(config)
    frames: Frames = {}
    label_parts: list[pd.Series] = []
    for p in cfg.data_holders:
        frame, labels = participant_frame(cfg, p)
        frames[p.name] = frame
        if labels is not None:
            label_parts.append(labels)
    if not label_parts:
        raise DatasetError(f"consortium {cfg.name!r}: no participant holds labels")
    labels = pd.concat(label_parts) if len(label_parts) > 1 else label_parts[0]
    if labels.index.duplicated().any():
        raise DatasetError(f"consortium {cfg.name!r}: the same enterprise is labelled by two holders")
    return frames, labels
