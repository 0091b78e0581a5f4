"""Yardstick for the generator: does each source carry part of the signal, and all of them more?

Centralised logistic regression on the label holder's customers (research use only: it pools
features that in production never leave their holders). Single-source models use the source's
features plus a "present" indicator; the pooled model uses every source.
"""

from __future__ import annotations

import os

import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from participants.datastore import join_on_labels, load_consortium_frames

POOLED = "pooled"


def _model() -> object:
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))


def _auc(x: pd.DataFrame, y: pd.Series, seed: int, folds: int) -> float:
    """Hold-out AUC (70/30 stratified) or, with ``folds`` > 1, AUC of out-of-fold predictions
    (lower variance on small samples)."""
    if folds > 1:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        scores = cross_val_predict(_model(), x.to_numpy(), y.to_numpy(), cv=splitter,
                                   method="predict_proba")[:, 1]
        return float(roc_auc_score(y.to_numpy(), scores))
    x_tr, x_te, y_tr, y_te = train_test_split(x.to_numpy(), y.to_numpy(), test_size=0.3,
                                              random_state=seed, stratify=y.to_numpy())
    model = _model()
    model.fit(x_tr, y_tr)
    return float(roc_auc_score(y_te, model.predict_proba(x_te)[:, 1]))


def auc_table(config_path: str | os.PathLike[str], as_of: str | None = None,
              seed: int = 0, folds: int = 0) -> dict[str, float]:
    """AUC of LR per single source and pooled (same split for all), keyed by participant."""
    frames, labels = load_consortium_frames(config_path, as_of)
    if labels.nunique() < 2:
        raise ValueError("labels have a single class: nothing to discriminate")
    table: dict[str, float] = {}
    for name in frames:
        table[name] = _auc(join_on_labels(frames, labels, [name]), labels, seed, folds)
    table[POOLED] = _auc(join_on_labels(frames, labels), labels, seed, folds)
    return table


def margin(table: dict[str, float]) -> float:
    """Pooled AUC minus the best single-source AUC."""
    return table[POOLED] - max(v for k, v in table.items() if k != POOLED)


if __name__ == "__main__":  # pragma: no cover - manual check
    import sys

    result = auc_table(sys.argv[1], folds=int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    for key, value in result.items():
        print(f"{key:10s} {value:.4f}")
    print(f"margin     {margin(result):+.4f}")
