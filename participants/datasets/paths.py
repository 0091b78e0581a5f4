"""Where the public data sets live.

They are never copied into the repository: they sit in ``../shared/datasets`` next to the
checkout (the same relative path in CI), or wherever ``FEDSCORE_DATASETS`` points.
"""

from __future__ import annotations

import os
from pathlib import Path

from participants.datasets.errors import DatasetError

ENV_VAR = "FEDSCORE_DATASETS"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO_ROOT.parent / "shared" / "datasets"


def datasets_root() -> Path:
    """The data set folder: ``$FEDSCORE_DATASETS`` if set, else ``<repo>/../shared/datasets``."""
    override = os.environ.get(ENV_VAR)
    root = Path(override).expanduser() if override else DEFAULT_ROOT
    if not root.is_dir():
        how = f"{ENV_VAR}={override}" if override else f"default location (set {ENV_VAR} to override)"
        raise DatasetError(f"data set folder {root} not found ({how})")
    return root.resolve()


def dataset_file(folder: str, name: str) -> Path:
    """A file inside one data set folder, with an error naming the exact missing path."""
    path = datasets_root() / folder / name
    if not path.is_file():
        raise DatasetError(f"data set file {path} not found (see {path.parent / 'SOURCE.md'})")
    return path
