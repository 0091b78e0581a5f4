"""fedscore models: PyTorch models (logistic, MLP, split bottom/top with an HE-friendly head),
training loops over local tensors, parameter (de)serialisation and credit-scoring metrics.

Imports nothing from crypto, protocols, participants or coordinator. Names are resolved lazily so
that importing ``models.errors`` (every command does) does not load torch and scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "InvalidInput": "errors", "ModelError": "errors", "ShapeMismatch": "errors",
    "LogisticRegression": "logistic",
    "Metrics": "metrics", "evaluate": "metrics",
    "MLP": "mlp",
    "flatten_params": "params", "get_weights": "params", "num_params": "params", "set_weights": "params",
    "unflatten_params": "params",
    "MedianImputer": "preprocessing", "Preprocessor": "preprocessing", "Standardiser": "preprocessing",
    "Winsoriser": "preprocessing",
    "BottomModel": "split", "SplitModel": "split", "TopModel": "split", "TopSpec": "split", "evaluate_top": "split",
    "LocalUpdate": "training", "TrainConfig": "training", "TrainResult": "training", "fit": "training",
    "local_update": "training", "predict_logits": "training", "predict_proba": "training",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"models.{module}"), name)
