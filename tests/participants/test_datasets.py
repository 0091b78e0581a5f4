"""Public data sets as consortiums: documented shapes and label rates, valid USCCs, no leakage
from the test split into preprocessing, and the baseline command's rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from participants.datasets import fate, polish
from participants.datasets.baseline import run_vertical
from participants.datasets.cli import app
from participants.datasets.errors import DatasetError
from participants.datasets.ids import MAX_ID, synthetic_uscc, synthetic_usccs
from participants.datasets.paths import DEFAULT_ROOT, ENV_VAR, datasets_root
from participants.datasets.prepare import prepare_part, split_ids
from protocols.errors import ProtocolError
from protocols.uscc import is_valid_uscc


@pytest.fixture(scope="module")
def fate_vertical() -> tuple[dict[str, pd.DataFrame], pd.Series]:
    return fate.load_fate_vertical()


@pytest.fixture(scope="module")
def polish_data() -> tuple[dict[str, pd.DataFrame], pd.Series]:
    return polish.load_polish_vertical()


def _all_valid_unique(index: pd.Index) -> bool:
    return index.is_unique and all(is_valid_uscc(code) for code in index)


def test_fate_vertical_shapes_and_label_rate(fate_vertical):
    frames, labels = fate_vertical
    assert frames["bank"].shape == (30_000, 13) and frames["bureau"].shape == (30_000, 10)
    assert len(labels) == 30_000 and int(labels.sum()) == 6_636
    assert set(frames["bank"].columns).isdisjoint(frames["bureau"].columns)
    for frame in frames.values():
        assert frame.index.equals(labels.index)
        assert np.isfinite(frame.to_numpy()).all()
        assert np.abs(frame.mean()).max() < 0.05  # FATE ships z-scores
    assert _all_valid_unique(labels.index)
    fate.check_vertical(frames, labels)


def test_fate_horizontal_banks_and_test_set():
    frames, labels = fate.load_fate_horizontal()
    test_X, test_y = fate.load_fate_horizontal_test()
    assert sorted(frames) == ["bank_a", "bank_b", "bank_c"]
    assert all(f.shape == (8_000, 23) for f in frames.values())
    assert test_X.shape == (6_000, 23) and int(test_y.sum()) == 1_309
    assert len(labels) == 24_000 and 0.21 < labels.mean() < 0.23
    assert all(list(f.columns) == list(test_X.columns) for f in frames.values())
    all_ids = pd.Index(np.concatenate([*(f.index for f in frames.values()), test_X.index]))
    assert all_ids.is_unique and len(all_ids) == 30_000  # a disjoint split of the same 30,000 clients
    assert _all_valid_unique(all_ids)


def test_polish_rows_labels_and_split(polish_data):
    frames, labels = polish_data
    assert len(labels) == 5_910 and int(labels.sum()) == 410
    assert frames["bank"].shape[1] + frames["tax"].shape[1] == 64
    assert set(frames["bank"].columns).isdisjoint(frames["tax"].columns)
    assert frames["bank"].isna().any().any() and frames["tax"].isna().any().any()  # imputed later, per split
    assert _all_valid_unique(labels.index)
    assert "liabilities_to_assets" in frames["bank"].columns and "net_margin" in frames["tax"].columns


def test_polish_imputation_fitted_on_train_only(polish_data):
    frames, labels = polish_data
    train_ids, test_ids = split_ids(labels, 0.2, seed=3)
    assert train_ids.intersection(test_ids).empty and len(test_ids) == 1_182
    assert labels.loc[test_ids].mean() == pytest.approx(labels.mean(), abs=0.005)  # stratified
    for name, frame in frames.items():
        part = prepare_part(name, frame, train_ids, test_ids, winsorise=polish.WINSORISE)
        assert not np.isnan(part.X_train).any() and not np.isnan(part.X_test).any()
        assert part.X_train.shape == (len(train_ids), frame.shape[1])
        medians = frame.loc[train_ids].median().to_numpy()
        np.testing.assert_allclose(part.preprocessor.imputer.medians, medians)
        assert np.abs(part.X_train.mean(axis=0)).max() < 1e-6
        # winsorised: no standardised value beyond the training extremes
        assert part.X_test.max() <= part.X_train.max() + 1e-9


def test_synthetic_usccs_are_valid_deterministic_and_injective():
    ids = [0, 1, 30, 31, 25_115, MAX_ID]
    codes = synthetic_usccs("fate-vertical", ids)
    assert all(is_valid_uscc(c) for c in codes) and len(set(codes)) == len(codes)
    assert codes == [synthetic_uscc("fate-vertical", i) for i in ids]
    assert set(codes).isdisjoint(synthetic_usccs("polish-vertical", ids))
    with pytest.raises(DatasetError, match="position 1"):
        synthetic_usccs("x", [-1])
    with pytest.raises(DatasetError):
        synthetic_uscc("x", MAX_ID + 1)


def test_dataset_location_override(monkeypatch, tmp_path: Path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match=ENV_VAR):
        datasets_root()
    (tmp_path / "polish_bankruptcy").symlink_to(DEFAULT_ROOT / "polish_bankruptcy")
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert datasets_root() == tmp_path.resolve()
    _, labels = polish.load_polish_vertical()
    assert len(labels) == 5_910
    (tmp_path / "polish_bankruptcy").unlink()
    with pytest.raises(DatasetError, match="5year.arff"):
        polish.load_polish_vertical()


def test_missing_file_is_a_clear_error(tmp_path: Path):
    text = fate.VERTICAL_CONFIG.read_text().replace("../../shared/datasets/fate", str(tmp_path))
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(ProtocolError, match="default_credit_hetero_guest.csv"):
        fate.load_fate_vertical(config)


def test_baseline_rows_are_consistent(polish_data):
    frames, labels = polish_data
    rows = run_vertical("polish", frames, labels, "bank", seed=0, winsorise=polish.WINSORISE, models=("logistic",))
    assert [r.features for r in rows] == ["bank only", "tax only", "pooled"]
    assert rows[-1].n_features == rows[0].n_features + rows[1].n_features
    for r in rows:
        assert r.gini == pytest.approx(2 * r.auc - 1) and 0 <= r.ks <= 1
        assert r.n_test == 1_182 and r.test_positives == 82
        assert r.auc > 0.7  # ratios predict bankruptcy well above chance


def _cli() -> typer.Typer:
    root = typer.Typer()
    root.add_typer(app)

    @root.command("noop")
    def noop() -> None:  # a second command keeps `baseline` a sub-command
        """No-op."""

    return root


def test_cli_json_and_errors():
    runner = CliRunner()
    result = runner.invoke(_cli(), ["baseline", "--dataset", "synth"])
    assert result.exit_code != 0 and "--config" in str(result.exception)
    result = runner.invoke(_cli(), ["baseline", "--dataset", "nope"])
    assert result.exit_code == 2
    result = runner.invoke(_cli(), ["baseline", "--dataset", "polish", "--json", "--seed", "1"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {(r["features"], r["model"]) for r in rows} == {
        (f, m) for f in ("bank only", "tax only", "pooled") for m in ("logistic", "mlp")
    }
