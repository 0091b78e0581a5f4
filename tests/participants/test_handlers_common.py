"""Shared node plumbing: one node keeps one state directory whichever mode it runs."""

from __future__ import annotations

from pathlib import Path

from participants.handlers import horizontal
from participants.handlers._common import node_state_dir

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_state_dir_precedence_is_explicit_then_root_then_data_dir(tmp_path) -> None:
    data = tmp_path / "data"
    assert node_state_dir({"state-dir": str(tmp_path / "x")}, str(tmp_path / "root"), "bank", data) == tmp_path / "x"
    assert node_state_dir({}, str(tmp_path / "root"), "bank", data) == tmp_path / "root" / "bank"
    assert node_state_dir({}, None, "bank", data) == data / "state"
    assert node_state_dir({"state-dir": ""}, "", "bank", data) == data / "state"


def test_a_horizontal_node_without_a_state_dir_uses_the_same_default_as_vertical(tmp_path) -> None:
    # (tests/participants/test_vertical_handlers.py checks the vertical side: <data_dir>/state)
    node = {"node-name": "bank_a", "consortium": str(EXAMPLES / "fate_horizontal.toml"), "data-dir": str(tmp_path / "d")}
    env = horizontal.resolve_env(node, {}, 3)
    assert env.state_dir == tmp_path / "d" / "state"
    assert Path.home() not in env.state_dir.parents
