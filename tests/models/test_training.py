"""Training loops, parameter vectors and preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models import (
    MLP,
    InvalidInput,
    LogisticRegression,
    Preprocessor,
    ShapeMismatch,
    Standardiser,
    TrainConfig,
    fit,
    flatten_params,
    get_weights,
    local_update,
    predict_proba,
    set_weights,
    unflatten_params,
)
from models.preprocessing import MedianImputer, Winsoriser
from models.split import BottomModel, SplitModel, TopModel


def separable(n: int = 2000, d: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (X @ rng.normal(size=d) > 0).astype(int)
    return X, y


def test_logistic_regression_separates_a_separable_problem():
    X, y = separable()
    result = fit(LogisticRegression(5), X, y, TrainConfig(epochs=150, lr=0.05))
    assert result.val_metrics is not None and result.val_metrics.auc > 0.98
    assert result.val_metrics.ks > 0.85


def test_mlp_learns_a_non_linear_boundary_lr_cannot():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(3000, 2))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)  # XOR-like
    cfg = TrainConfig(epochs=60, lr=0.01, batch_size=256, seed=1)
    lr_auc = fit(LogisticRegression(2), X, y, cfg).val_metrics.auc
    mlp_auc = fit(MLP(2, hidden=(16, 8)), X, y, cfg).val_metrics.auc
    assert mlp_auc > 0.9 > lr_auc + 0.2


def test_fit_is_deterministic_under_a_seed():
    X, y = separable(500)
    cfg = TrainConfig(epochs=20, batch_size=64, seed=7)
    torch.manual_seed(0)
    a = flatten_params(fit(MLP(5), X, y, cfg).model)
    torch.manual_seed(0)
    b = flatten_params(fit(MLP(5), X, y, cfg).model)
    np.testing.assert_array_equal(a, b)


def test_early_stopping_restores_the_best_epoch():
    X, y = separable(400)
    y = np.random.default_rng(1).permutation(y)  # pure noise: validation loss soon rises
    result = fit(MLP(5, hidden=(64, 64)), X, y, TrainConfig(epochs=300, lr=0.01, batch_size=32, patience=5))
    assert len(result.history) < 300
    assert result.best_epoch == len(result.history) - 5
    best_val = min(h["val_loss"] for h in result.history)
    assert result.history[result.best_epoch - 1]["val_loss"] == best_val


def test_split_model_trains_with_fit():
    X, y = separable(1500, 6)

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.split = SplitModel({"a": BottomModel(3, 2), "b": BottomModel(3, 2, hidden=[4])}, TopModel(2, "poly"))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.split({"a": x[:, :3], "b": x[:, 3:]})

    assert fit(Wrapped(), X, y, TrainConfig(epochs=150, lr=0.03)).val_metrics.auc > 0.95


def test_flatten_unflatten_round_trip():
    model = MLP(7, hidden=(5, 3))
    vec = flatten_params(model)
    assert vec.dtype == np.float64 and vec.ndim == 1 and vec.size == sum(p.numel() for p in model.parameters())
    other = MLP(7, hidden=(5, 3))
    assert not np.array_equal(flatten_params(other), vec)
    unflatten_params(other, vec)
    np.testing.assert_allclose(flatten_params(other), vec, atol=0)
    x = torch.randn(4, 7)
    torch.testing.assert_close(other(x), model(x))
    with pytest.raises(ShapeMismatch, match="values"):
        unflatten_params(other, vec[:-1])
    clone = set_weights(MLP(7, hidden=(5, 3)), get_weights(model))
    np.testing.assert_array_equal(flatten_params(clone), vec)
    with pytest.raises(ShapeMismatch, match="shape"):
        set_weights(MLP(7, hidden=(5, 4)), get_weights(model))


def test_local_update_changes_weights_and_prox_keeps_them_closer():
    X, y = separable(800, 4, seed=2)
    start = LogisticRegression(4)
    g = flatten_params(start)
    moved = {}
    for mu in (0.0, 5.0):
        m = LogisticRegression(4)
        unflatten_params(m, g)
        upd = local_update(m, X, y, epochs=3, lr=0.05, proximal_mu=mu, global_params=g, seed=1)
        assert upd.num_examples == 800 and np.isfinite(upd.loss)
        moved[mu] = np.linalg.norm(flatten_params(m) - g)
    assert moved[0.0] > 0
    assert moved[5.0] < moved[0.0]
    with pytest.raises(ShapeMismatch):
        local_update(LogisticRegression(4), X, y, 1, 0.1, proximal_mu=1.0, global_params=g[:-1])


def test_bad_training_input_is_named():
    X, y = separable(50)
    with pytest.raises(InvalidInput, match="expects 5 features, got 4"):
        fit(LogisticRegression(5), X[:, :4], y)
    with pytest.raises(InvalidInput, match="50 feature rows but 49 labels"):
        fit(LogisticRegression(5), X, y[:-1])
    X[0, 0] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        predict_proba(LogisticRegression(5), X)


def test_preprocessing_fits_on_train_only_and_serialises_to_json():
    rng = np.random.default_rng(0)
    X = rng.lognormal(size=(500, 3))
    X[rng.uniform(size=X.shape) < 0.1] = np.nan
    X[0, 1] = 1e9  # a ratio with a near-zero denominator
    pre = Preprocessor.fit(X, ["a", "b", "c"], winsorise=(0.01, 0.99))
    out = pre.transform(X)
    assert np.isfinite(out).all()
    assert np.abs(out.mean(axis=0)).max() < 0.2
    assert out[0, 1] == pytest.approx(out[:, 1].max())
    again = Preprocessor.model_validate_json(pre.model_dump_json())
    np.testing.assert_array_equal(again.transform(X), out)
    assert json.loads(pre.model_dump_json())["features"] == ["a", "b", "c"]
    with pytest.raises(ShapeMismatch, match="3 features, got 2"):
        pre.transform(X[:, :2])


def test_imputer_winsoriser_standardiser_units():
    X = np.array([[1.0, np.nan], [3.0, np.nan], [np.nan, np.nan]])
    imp = MedianImputer.fit(X)
    assert imp.medians == [2.0, 0.0]
    assert not np.isnan(imp.transform(X)).any()
    w = Winsoriser.fit(np.arange(101.0).reshape(-1, 1), (0.1, 0.9))
    assert w.transform([[-5.0], [500.0]]).ravel().tolist() == [10.0, 90.0]
    s = Standardiser.fit([[1.0, 5.0], [3.0, 5.0]])
    np.testing.assert_allclose(s.transform([[1.0, 5.0], [3.0, 5.0]]), [[-1, 0], [1, 0]])
    np.testing.assert_allclose(s.inverse_transform(s.transform([[2.0, 7.0]])), [[2.0, 7.0]])
