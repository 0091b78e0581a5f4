"""FATE's default_credit data (UCI credit-card default, 30,000 clients) as fedscore consortiums.

- vertical (``examples/fate_vertical.toml``): bank = FATE guest (label + 13 features),
  bureau = FATE host (10 features), the same 30,000 clients (22.12 % default);
- horizontal (``examples/fate_horizontal.toml``): three banks of 8,000 clients each with the same
  23 features; ``default_credit_homo_test.csv`` (6,000 clients) is the common evaluation set.

FATE ids are integers; they become synthetic USCCs (see :mod:`participants.datasets.ids`).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from participants.datasets.errors import DatasetError
from participants.datasets.frames import Frames, load_custom_frames, participant_frame
from participants.datasets.paths import REPO_ROOT
from protocols.consortium import ConsortiumConfig, load_consortium

EXAMPLES = REPO_ROOT / "examples"
VERTICAL_CONFIG = EXAMPLES / "fate_vertical.toml"
HORIZONTAL_CONFIG = EXAMPLES / "fate_horizontal.toml"
HORIZONTAL_TEST_FILE = "default_credit_homo_test.csv"

ROWS = 30_000
POSITIVES = 6_636
HOMO_ROWS = {"default_credit_homo_guest.csv": 8_000, "default_credit_homo_host_1.csv": 8_000,
             "default_credit_homo_host_2.csv": 8_000, HORIZONTAL_TEST_FILE: 6_000}


def load_fate_vertical(config: str | os.PathLike[str] = VERTICAL_CONFIG) -> tuple[Frames, pd.Series]:
    """``({"bank": 30000x13, "bureau": 30000x10}, labels)``, all indexed by the same USCCs."""
    return load_custom_frames(config)


def load_fate_horizontal(config: str | os.PathLike[str] = HORIZONTAL_CONFIG) -> tuple[Frames, pd.Series]:
    """``({bank_a|bank_b|bank_c: 8000x23}, labels of all 24,000 training clients)``."""
    return load_custom_frames(config)


def load_fate_horizontal_test(
    config: ConsortiumConfig | str | os.PathLike[str] = HORIZONTAL_CONFIG,
) -> tuple[pd.DataFrame, pd.Series]:
    """The 6,000-client evaluation set, read with the first bank's column mapping."""
    cfg = config if isinstance(config, ConsortiumConfig) else load_consortium(config)
    first = cfg.data_holders[0]
    assert first.features is not None
    test_holder = first.model_copy(update={
        "name": "test",
        "features": first.features.model_copy(update={"file": HORIZONTAL_TEST_FILE}),
    })
    frame, labels = participant_frame(cfg, test_holder)
    if labels is None:
        raise DatasetError(f"{HORIZONTAL_TEST_FILE}: no labels read")
    return frame, labels


def check_vertical(frames: Frames, labels: pd.Series) -> None:
    """Fail loudly if the files are not the ones SOURCE.md documents."""
    if len(labels) != ROWS or int(labels.sum()) != POSITIVES:
        raise DatasetError(f"FATE vertical: expected {ROWS} rows / {POSITIVES} defaults, got "
                           f"{len(labels)} / {int(labels.sum())}")
    for name, frame in frames.items():
        if not frame.index.equals(labels.index) or not np.isfinite(frame.to_numpy()).all():
            raise DatasetError(f"FATE vertical: {name} rows do not match the labelled rows")
