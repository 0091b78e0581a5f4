"""Split model pieces: the numpy reference of the top is the torch forward, and the spec round-trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.errors import InvalidInput, ShapeMismatch
from models.split import BottomModel, SplitModel, TopModel, TopSpec, evaluate_top


@pytest.mark.parametrize("kind", ["linear", "square", "poly"])
def test_numpy_reference_equals_torch_forward(kind):
    torch.manual_seed(3)
    top = TopModel(in_dim=4, kind=kind, hidden=6)
    z = torch.randn(257, 4) * 3
    spec = top.he_spec()
    with torch.no_grad():
        expected32 = top(z).numpy()
        expected64 = top.double()(z.double()).numpy()
    ref = evaluate_top(spec, z.double().numpy())
    assert ref.shape == (257,)
    assert np.max(np.abs(ref - expected64)) < 1e-6
    assert np.max(np.abs(ref - expected32) / (1 + np.abs(ref))) < 1e-5


@pytest.mark.parametrize("kind", ["linear", "poly"])
def test_spec_json_round_trip(kind):
    top = TopModel(in_dim=3, kind=kind, hidden=5)
    spec = top.he_spec()
    again = TopSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    z = np.random.default_rng(0).normal(size=(10, 3))
    np.testing.assert_array_equal(evaluate_top(spec, z), evaluate_top(again, z))


def test_non_linear_top_uses_only_he_operations():
    """The poly top is a degree-2 polynomial in z: its third finite difference vanishes."""
    top = TopModel(in_dim=2, kind="poly", hidden=4).double()
    spec = top.he_spec()
    z0, d = np.array([[0.3, -0.2]]), np.array([[0.7, 0.4]])
    f = [evaluate_top(spec, z0 + k * d)[0] for k in range(4)]
    assert abs(f[3] - 3 * f[2] + 3 * f[1] - f[0]) < 1e-9
    assert abs(f[2] - 2 * f[1] + f[0]) > 1e-9 or np.allclose(spec.w2, 0)
    assert spec.multiplicative_depth > TopModel(in_dim=2).he_spec().multiplicative_depth


def test_bad_spec_and_input_are_named():
    spec = TopModel(in_dim=3).he_spec()
    with pytest.raises(InvalidInput, match=r"\(rows, 3\)"):
        evaluate_top(spec, np.zeros((2, 4)))
    with pytest.raises(ShapeMismatch, match="missing key 'w2'"):
        TopSpec.from_dict({"kind": "linear", "in_dim": 3, "b2": 0.0})
    with pytest.raises(ShapeMismatch, match="unknown kind"):
        TopSpec.from_dict({"kind": "relu", "in_dim": 3, "w2": [0, 0, 0], "b2": 0.0})
    with pytest.raises(InvalidInput, match="kind"):
        TopModel(in_dim=2, kind="relu")  # type: ignore[arg-type]


def test_split_model_sums_bottoms_and_zeroes_absent_rows():
    torch.manual_seed(0)
    bottoms = {"bank": BottomModel(3, 2), "tax": BottomModel(5, 2, hidden=[4])}
    model = SplitModel(bottoms, TopModel(2))
    xb, xt = torch.randn(6, 3), torch.randn(6, 5)
    with torch.no_grad():
        z = model.embed({"bank": xb, "tax": xt})
        torch.testing.assert_close(z, bottoms["bank"](xb) + bottoms["tax"](xt))
        mask = torch.tensor([1, 0, 1, 0, 1, 1])
        z_masked = model.embed({"bank": xb, "tax": xt}, present={"tax": mask})
        torch.testing.assert_close(z_masked[1], bottoms["bank"](xb)[1])
        torch.testing.assert_close(model.embed({"bank": xb}), bottoms["bank"](xb))
    with pytest.raises(InvalidInput, match="out_dim"):
        SplitModel({"bank": BottomModel(3, 4)}, TopModel(2))
    with pytest.raises(InvalidInput, match="utility"):
        model({"utility": xb})
