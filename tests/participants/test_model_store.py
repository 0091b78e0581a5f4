"""The participant's local model store: round-trip without pickle, atomic replacement, clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from models.preprocessing import Preprocessor
from models.split import BottomModel
from participants.model_store import LocalModelStore, ModelStoreError


def test_round_trip_gives_identical_outputs(tmp_path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(50, 3)) * 5 + 2, columns=["a", "b", "c"])
    pre = Preprocessor.fit(frame.to_numpy(), ["a", "b", "c"])
    torch.manual_seed(0)
    model = BottomModel(3, 4, (8,))
    store = LocalModelStore(tmp_path)
    store.save_bottom("vertical-demo:v1", model, pre, ["a", "b", "c"], {"participant": "tax"})
    loaded = store.load_bottom("vertical-demo:v1")
    expected = model(torch.as_tensor(pre.transform(frame.to_numpy()), dtype=torch.float32)).detach().numpy()
    # column order in the frame does not matter: the store selects by name
    assert np.allclose(loaded.embed(frame[["c", "a", "b"]]), expected, atol=1e-6)
    assert loaded.meta == {"participant": "tax"}
    assert store.refs() == ["vertical-demo:v1"]
    assert not list(tmp_path.rglob("*.pkl"))


def test_errors_name_the_problem(tmp_path) -> None:
    store = LocalModelStore(tmp_path)
    with pytest.raises(ModelStoreError, match="name:vN"):
        store.path("../etc")
    with pytest.raises(ModelStoreError, match="no bottom model"):
        store.load_bottom("missing:v3")
    pre = Preprocessor.fit(np.ones((4, 2)) * np.arange(4)[:, None], ["a", "b"])
    store.save_bottom("m:v1", BottomModel(2, 2), pre, ["a", "b"])
    with pytest.raises(ModelStoreError, match="lacks column"):
        store.load_bottom("m:v1").embed(pd.DataFrame({"a": [1.0]}))


def test_the_label_holders_validation_record_round_trips_without_pickle(tmp_path) -> None:
    store = LocalModelStore(tmp_path)
    pre = Preprocessor.fit(np.ones((4, 2)) * np.arange(4)[:, None], ["a", "b"])
    ids = np.array(["91350211MA2XXXXX1A", "91350211MA2XXXXX2B"])
    store.save_bottom("m:v1", BottomModel(2, 2), pre, ["a", "b"],
                      evaluation={"universe_ids": ids, "val_logits": np.array([0.5, -1.0])})
    record = store.load_evaluation("m:v1")
    assert list(record["universe_ids"]) == list(ids) and np.array_equal(record["val_logits"], [0.5, -1.0])
    store.save_bottom("m:v2", BottomModel(2, 2), pre, ["a", "b"])  # a passive participant keeps none
    with pytest.raises(ModelStoreError, match="no validation record"):
        store.load_evaluation("m:v2")
    (store.path("m:v1") / "evaluation.npz").write_bytes(b"not an npz")
    with pytest.raises(ModelStoreError, match="unreadable"):
        store.load_evaluation("m:v1")
