"""Integration-test plumbing: make the shared :mod:`deployment` helper importable by its short name,
whether or not the test folders are packages."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
