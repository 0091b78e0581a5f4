"""Public data sets (FATE default_credit, Polish bankruptcy) as fedscore consortiums, and the
centralised baselines federated models are measured against.

The data never enter the repository: they are read from ``../shared/datasets`` (or
``$FEDSCORE_DATASETS``) through the consortium TOMLs in ``examples/``.
"""

from participants.datasets.errors import DatasetError
from participants.datasets.fate import load_fate_horizontal, load_fate_horizontal_test, load_fate_vertical
from participants.datasets.frames import load_custom_frames
from participants.datasets.ids import synthetic_uscc, synthetic_usccs
from participants.datasets.paths import datasets_root
from participants.datasets.polish import load_polish_vertical

__all__ = [
    "DatasetError",
    "datasets_root",
    "load_custom_frames",
    "load_fate_horizontal",
    "load_fate_horizontal_test",
    "load_fate_vertical",
    "load_polish_vertical",
    "synthetic_uscc",
    "synthetic_usccs",
]
