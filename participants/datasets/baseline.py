"""Centralised baselines: the yardstick federated models are held to.

For a vertical consortium: the label holder alone, every other holder alone (as if it had the
labels), and all features pooled — each with logistic regression and a small MLP, evaluated on
the same stratified, seeded held-out split. For a horizontal one: each bank alone and all banks
pooled, evaluated on a common test set. "Pooled" is what federation can at best reach; "label
holder alone" is what a bank has without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel
import torch
from torch import nn

from models.logistic import LogisticRegression
from models.metrics import evaluate
from models.mlp import MLP
from models.preprocessing import Preprocessor
from models.training import TrainConfig, fit, predict_proba, torch_threads
from participants.datasets.errors import DatasetError
from participants.datasets.prepare import PreparedPart, prepare_part, split_ids

ModelName = Literal["logistic", "mlp"]
POOLED = "pooled"


class BaselineRow(BaseModel):
    """One line of the baseline table (JSON-ready)."""

    dataset: str
    features: str
    """Whose features: a participant name, ``pooled``, or ``<name> only`` style labels."""
    n_features: int
    model: ModelName
    auc: float
    ks: float
    gini: float
    n_train: int
    n_test: int
    test_positives: int
    seconds: float


MODEL_FACTORIES: dict[ModelName, Callable[[int], nn.Module]] = {
    "logistic": LogisticRegression,
    "mlp": lambda d: MLP(d, hidden=(32, 16)),
}


def train_config(model: ModelName, seed: int) -> TrainConfig:
    if model == "logistic":
        return TrainConfig(epochs=300, lr=0.05, batch_size=None, patience=20, seed=seed)
    return TrainConfig(epochs=60, lr=3e-3, batch_size=1024, weight_decay=1e-4, patience=6, seed=seed)


def fit_predict(model_name: ModelName, X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray,
                seed: int) -> np.ndarray:
    """Train one baseline model (early stopping) and return its PDs on ``X_test``."""
    with torch_threads(1):
        torch.manual_seed(seed)  # initial weights depend on the global generator
        model = MODEL_FACTORIES[model_name](X_train.shape[1])
        fit(model, X_train, y_train, train_config(model_name, seed))
        return predict_proba(model, X_test)


def fit_and_score(
    dataset: str, features: str, model_name: ModelName,
    X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, seed: int,
) -> BaselineRow:
    start = time.perf_counter()
    metrics = evaluate(y_test, fit_predict(model_name, X_train, y_train, X_test, seed))
    return BaselineRow(
        dataset=dataset, features=features, n_features=X_train.shape[1], model=model_name,
        auc=metrics.auc, ks=metrics.ks, gini=metrics.gini, n_train=len(y_train), n_test=len(y_test),
        test_positives=metrics.positives, seconds=time.perf_counter() - start,
    )


def run_vertical(
    dataset: str,
    frames: Mapping[str, pd.DataFrame],
    labels: pd.Series,
    label_holder: str,
    *,
    test_size: float = 0.2,
    seed: int = 0,
    winsorise: tuple[float, float] | None = None,
    models: tuple[ModelName, ...] = ("logistic", "mlp"),
) -> list[BaselineRow]:
    """Label holder alone, each other holder alone, pooled; rows in that order."""
    if label_holder not in frames:
        raise DatasetError(f"{dataset}: label holder {label_holder!r} has no features")
    train_ids, test_ids = split_ids(labels, test_size, seed)
    y_train, y_test = labels.loc[train_ids].to_numpy(), labels.loc[test_ids].to_numpy()
    parts: dict[str, PreparedPart] = {
        name: prepare_part(name, frame, train_ids, test_ids, winsorise) for name, frame in frames.items()
    }
    order = [label_holder, *[n for n in parts if n != label_holder]]
    feature_sets: list[tuple[str, np.ndarray, np.ndarray]] = [
        (f"{n} only", parts[n].X_train, parts[n].X_test) for n in order
    ]
    if len(parts) > 1:
        feature_sets.append((
            POOLED,
            np.hstack([parts[n].X_train for n in order]),
            np.hstack([parts[n].X_test for n in order]),
        ))
    return [
        fit_and_score(dataset, label, m, Xtr, y_train, Xte, y_test, seed)
        for label, Xtr, Xte in feature_sets
        for m in models
    ]


def run_horizontal(
    dataset: str,
    parts: Mapping[str, tuple[pd.DataFrame, pd.Series]],
    test: tuple[pd.DataFrame, pd.Series],
    *,
    seed: int = 0,
    winsorise: tuple[float, float] | None = None,
    models: tuple[ModelName, ...] = ("logistic", "mlp"),
) -> list[BaselineRow]:
    """Each bank alone (preprocessed with its own statistics) and all banks pooled, on ``test``."""
    test_X, test_y = test
    columns = list(test_X.columns)
    for name, (X, _) in parts.items():
        if list(X.columns) != columns:
            raise DatasetError(f"{dataset}: {name} features differ from the test set's")
    feature_sets: list[tuple[str, pd.DataFrame, pd.Series]] = [(f"{n} only", X, y) for n, (X, y) in parts.items()]
    if len(parts) > 1:
        feature_sets.append((POOLED, pd.concat([X for X, _ in parts.values()]), pd.concat([y for _, y in parts.values()])))
    rows = []
    for label, X, y in feature_sets:
        pre = Preprocessor.fit(X.to_numpy(), columns, impute=True, winsorise=winsorise)
        for m in models:
            rows.append(fit_and_score(dataset, label, m, pre.transform(X.to_numpy()), y.to_numpy(),
                               pre.transform(test_X.to_numpy()), test_y.to_numpy(), seed))
    return rows


def split_horizontal(
    frames: Mapping[str, pd.DataFrame], labels: pd.Series, test_size: float, seed: int
) -> tuple[dict[str, tuple[pd.DataFrame, pd.Series]], tuple[pd.DataFrame, pd.Series]]:
    """Hold out a stratified share of every bank's rows and pool those shares as the test set
    (for horizontal consortiums without a separate evaluation file)."""
    parts, tests_X, tests_y = {}, [], []
    for name, frame in frames.items():
        y = labels.reindex(frame.index)
        if y.isna().any():
            raise DatasetError(f"{name}: {int(y.isna().sum())} rows without a label")
        train_ids, test_ids = split_ids(y.astype(np.int64), test_size, seed)
        parts[name] = (frame.loc[train_ids], y.loc[train_ids].astype(np.int64))
        tests_X.append(frame.loc[test_ids])
        tests_y.append(y.loc[test_ids].astype(np.int64))
    return parts, (pd.concat(tests_X), pd.concat(tests_y))
