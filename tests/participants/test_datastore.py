"""Local data store: a participant's directory -> features, labels, ids; consortium yardstick frames."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from participants.datastore import LocalDataStore, join_on_labels, load_consortium_frames
from participants.synth import generate
from protocols.consortium import FeatureSchemaConfig, ParticipantConfig
from protocols.errors import ConfigError, DataError
from protocols.feature_schemas import STANDARD_SCHEMAS
from protocols.uscc import make_uscc


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("store") / "c"
    generate(out, enterprises=400, seed=9)
    return out


def test_frames_per_participant_and_labels_from_the_bank(synth: Path) -> None:
    frames, labels = load_consortium_frames(synth / "consortium.toml")
    assert list(frames) == ["bank", "tax", "platform", "utility"]
    for name, frame in frames.items():
        assert list(frame.columns) == STANDARD_SCHEMAS[name].feature_names
        assert frame.notna().all().all() and frame.index.is_unique
    assert set(labels.unique()) <= {0, 1} and labels.name == "default_12m"
    assert set(labels.index) <= set(frames["bank"].index)
    pooled = join_on_labels(frames, labels)
    assert list(pooled.index) == list(labels.index)
    assert "platform.present" in pooled.columns and pooled.notna().all().all()
    absent = ~labels.index.isin(frames["platform"].index)
    assert absent.any() and (pooled.loc[absent, "platform.present"] == 0).all()


def test_earlier_as_of_sees_fewer_months_and_labels_only_at_label_holder(synth: Path) -> None:
    store = LocalDataStore.from_dir(synth / "bank", "bank")
    late, early = store.features("2024-12"), store.features("2024-06")
    assert set(early.index) <= set(late.index)
    assert early["tenure_months"].max() <= late["tenure_months"].max() - 6
    assert store.ids("2024-06") == list(early.index)
    assert store.latest_month() == "2024-12"
    assert len(store.labels("2024-06")) > 0
    tax = LocalDataStore.from_dir(synth / "tax", "tax")
    with pytest.raises(ConfigError, match="holds no labels"):
        tax.labels()


def test_mapping_renames_a_holders_own_columns(synth: Path, tmp_path: Path) -> None:
    raw = pd.read_csv(synth / "utility" / "electricity_monthly.csv.gz", dtype={"uscc": str})
    own = raw.rename(columns={"uscc": "credit_code", "month": "period", "kwh": "yongdianliang"})
    own.to_csv(tmp_path / "meter.csv", index=False)
    schema = FeatureSchemaConfig.model_validate({
        "schema": "utility", "file": "meter.csv", "id_column": "credit_code",
        "month_column": "period", "mapping": {"yongdianliang": "kwh"}})
    mine = LocalDataStore.from_dir(tmp_path, schema).features("2024-12")
    standard = LocalDataStore.from_dir(synth / "utility", "utility").features("2024-12")
    pd.testing.assert_frame_equal(mine, standard)


def test_custom_schema_uses_mapped_columns_and_binary_labels(tmp_path: Path) -> None:
    pd.DataFrame({"id": [3, 1, 2], "y": [1, 0, 0], "x0": [0.5, 1.5, 2.5], "x1": [1, 2, None]}).to_csv(
        tmp_path / "guest.csv", index=False)
    participant = ParticipantConfig.model_validate({
        "name": "guest", "kind": "bank", "holds_labels": True, "data_dir": str(tmp_path),
        "features": {"schema": "custom", "file": "guest.csv", "id_column": "id", "id_format": "any",
                     "label_column": "y", "mapping": {"x0": "limit"}, "columns": ["x1"]}})
    store = LocalDataStore(participant)
    features = store.features()
    assert list(features.columns) == ["limit", "x1"] and list(features.index) == ["1", "2", "3"]
    assert features.loc["3", "limit"] == 0.5 and pd.isna(features.loc["2", "x1"])
    assert store.labels().to_dict() == {"1": 0, "2": 0, "3": 1}
    pd.DataFrame({"id": [1], "y": [2], "x0": [1.0], "x1": [1.0]}).to_csv(tmp_path / "guest.csv",
                                                                        index=False)
    with pytest.raises(DataError, match="label must be 0 or 1"):
        LocalDataStore(participant).labels()


def test_bad_files_are_data_errors_that_name_file_and_row_not_ids(tmp_path: Path) -> None:
    good = make_uscc("91440300MA5000001")
    bad = good[:-1] + ("0" if good[-1] != "0" else "1")
    pd.DataFrame({"uscc": [good, bad], "month": ["2024-01", "2024-01"], "kwh": [1, 2],
                  "payment_delay_days": [0, 0]}).to_csv(tmp_path / "electricity_monthly.csv.gz",
                                                        index=False)
    store = LocalDataStore.from_dir(tmp_path, "utility")
    with pytest.raises(DataError, match=r"electricity_monthly.csv.gz: row 2: id is not a valid USCC") as info:
        store.features()
    assert bad not in str(info.value)
    with pytest.raises(DataError, match="data file not found"):
        LocalDataStore.from_dir(tmp_path / "nowhere", "tax").features()
    (tmp_path / "vat_monthly.csv.gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(DataError, match="cannot parse"):
        LocalDataStore.from_dir(tmp_path, "tax").features()


def test_a_file_with_only_its_header_is_a_data_error_naming_it(synth: Path, tmp_path: Path) -> None:
    """Training and scoring read through the same store: an emptied file stops them, it never
    yields an empty feature frame (a constant model, AUC 0.5)."""
    import re
    import shutil
    import subprocess
    import sys

    from participants.datasets.frames import participant_frame
    from participants.datastore import holder_data
    from protocols.consortium import load_consortium

    copy = tmp_path / "c"
    shutil.copytree(synth, copy)
    records = copy / "tax" / "vat_monthly.csv.gz"
    header = pd.read_csv(records, nrows=0)
    header.to_csv(records, index=False)
    with pytest.raises(DataError, match=f"^{re.escape(str(records))}: no rows$"):
        LocalDataStore.from_dir(copy / "tax", "tax").features("2024-12")
    cfg = load_consortium(copy / "consortium.toml")
    with pytest.raises(DataError, match=f"^{re.escape(str(records))}: no rows$"):
        holder_data(cfg, cfg.participant("tax"))  # what a training node reads for PSI and its features
    ledger = copy / "bank" / "outcomes.csv"
    pd.read_csv(ledger, nrows=0).to_csv(ledger, index=False)
    with pytest.raises(DataError, match=f"^{re.escape(str(ledger))}: no rows$"):
        LocalDataStore.from_dir(copy / "bank", "bank").labels("2024-12")
    (tmp_path / "guest.csv").write_text("id,y,x0\n")  # public data read by horizontal training
    guest = ParticipantConfig.model_validate({
        "name": "guest", "kind": "bank", "holds_labels": True, "data_dir": str(tmp_path),
        "features": {"schema": "custom", "file": "guest.csv", "id_column": "id", "id_format": "any",
                     "label_column": "y", "mapping": {"x0": "limit"}}})
    with pytest.raises(DataError, match="guest.csv: no rows$"):
        participant_frame(cfg, guest)
    with pytest.raises(DataError, match="guest.csv: no rows$"):
        LocalDataStore(guest).features()

    result = subprocess.run([sys.executable, "-m", "fedscore", "baseline", "--dataset", "synth",
                             "--config", str(copy / "consortium.toml")], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "AUC" not in result.stdout
    assert f"{records}: no rows" in result.stderr and "Traceback" not in result.stdout + result.stderr
