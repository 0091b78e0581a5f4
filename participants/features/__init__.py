"""Per-source feature pipelines: monthly raw records -> model features as of a month.

Point-in-time by construction: a pipeline first drops every record after the as-of month, so
features for month T never change when later months arrive.
"""

from participants.features.build import build_features, parse_records
from participants.features.labels import binary_labels, labels_from_ledger

__all__ = ["binary_labels", "build_features", "labels_from_ledger", "parse_records"]
