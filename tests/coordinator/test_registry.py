"""Model registry: versions survive a restart, lineage is checked, closed versions are immutable."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.registry import ModelRegistry, RegistryError, VersionNotFound
from protocols.errors import ProtocolError


def test_versions_number_per_name_and_survive_restart(tmp_path):
    reg = ModelRegistry(tmp_path)
    a1 = reg.create("credit", kind="horizontal", config={"rounds": 3}, participants=["b1", "b2"])
    a1 = reg.complete(a1, metrics={"auc": 0.7}, weights_location={"participants": ["b1", "b2"]})
    a2 = reg.create("credit", kind="horizontal", config={"rounds": 5}, parent=a1.ref)
    other = reg.create("top", kind="vertical", config={})
    assert (a1.version, a2.version, other.version) == (1, 2, 1)

    reopened = ModelRegistry(tmp_path)  # a coordinator restart
    got = reopened.get("credit:v1")
    assert got == a1
    assert got.status == "ready" and got.metrics == {"auc": 0.7} and got.participants == ["b1", "b2"]
    assert reopened.get("credit:v2").parent == "credit:v1"
    assert [v.ref for v in reopened.list()] == ["top:v1", "credit:v2", "credit:v1"]
    assert [v.ref for v in reopened.list(kind="vertical")] == ["top:v1"]
    # a bare name resolves to the newest READY version, not the one still training
    assert reopened.get("credit").ref == "credit:v1"
    assert got.created_at <= got.finished_at


def test_closed_versions_are_immutable(tmp_path):
    reg = ModelRegistry(tmp_path)
    v = reg.create("m", kind="horizontal", config={})
    v = reg.fail(v, "node dropped below min_nodes")
    with pytest.raises(RegistryError):
        reg.complete(v, metrics={}, weights_location={})
    assert reg.get(v.id).status == "failed"


def test_unknown_parent_and_bad_names_are_typed_errors(tmp_path):
    reg = ModelRegistry(tmp_path)
    with pytest.raises(VersionNotFound):
        reg.create("m", kind="horizontal", config={}, parent="nope:v9")
    with pytest.raises(RegistryError) as info:
        reg.create("../etc", kind="horizontal", config={})
    assert isinstance(info.value, ProtocolError)
    with pytest.raises(VersionNotFound):
        reg.get("m:vx")


def test_published_weights_roundtrip_and_tamper_detection(tmp_path):
    reg = ModelRegistry(tmp_path)
    v = reg.create("m", kind="horizontal", config={})
    vec = np.random.default_rng(0).normal(size=25)
    loc = reg.store_weights(v, vec)
    v = reg.complete(v, metrics={}, weights_location={"registry": loc})
    np.testing.assert_array_equal(reg.load_weights(v.ref), vec)

    np.save(tmp_path / loc["path"], vec + 1.0)
    with pytest.raises(RegistryError):
        reg.load_weights(v.ref)


def test_unpublished_weights_point_to_participants(tmp_path):
    reg = ModelRegistry(tmp_path)
    v = reg.create("m", kind="horizontal", config={})
    v = reg.complete(v, metrics={}, weights_location={"participants": ["bank_a"]})
    with pytest.raises(RegistryError, match="bank_a"):
        reg.load_weights(v.ref)
