"""fedscore models: PyTorch models (logistic, MLP, split bottom/top with an HE-friendly head),
training loops over local tensors, parameter (de)serialisation and credit-scoring metrics.

Imports nothing from crypto, protocols, participants or coordinator.
"""

from models.errors import InvalidInput, ModelError, ShapeMismatch
from models.logistic import LogisticRegression
from models.metrics import Metrics, evaluate
from models.mlp import MLP
from models.params import flatten_params, get_weights, num_params, set_weights, unflatten_params
from models.preprocessing import MedianImputer, Preprocessor, Standardiser, Winsoriser
from models.split import BottomModel, SplitModel, TopModel, TopSpec, evaluate_top
from models.training import LocalUpdate, TrainConfig, TrainResult, fit, local_update, predict_logits, predict_proba

__all__ = [
    "MLP",
    "BottomModel",
    "InvalidInput",
    "LocalUpdate",
    "LogisticRegression",
    "MedianImputer",
    "Metrics",
    "ModelError",
    "Preprocessor",
    "ShapeMismatch",
    "SplitModel",
    "Standardiser",
    "TopModel",
    "TopSpec",
    "TrainConfig",
    "TrainResult",
    "Winsoriser",
    "evaluate",
    "evaluate_top",
    "fit",
    "flatten_params",
    "get_weights",
    "local_update",
    "num_params",
    "predict_logits",
    "predict_proba",
    "set_weights",
    "unflatten_params",
]
