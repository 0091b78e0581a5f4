"""No look-ahead: features and labels for a month are unchanged when later months arrive."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pandas.testing as pdt
import pytest

from participants.datastore import LocalDataStore
from participants.synth import advance, generate
from protocols.consortium import load_consortium
from protocols.feature_schemas import add_months

AS_OF = "2024-06"
MONTH = add_months(AS_OF, -2)


def _snapshot(root: Path, month: str) -> tuple[dict[str, pd.DataFrame], pd.Series]:
    cfg = load_consortium(root / "consortium.toml")
    stores = {p.name: LocalDataStore(p) for p in cfg.data_holders}
    return {n: s.features(month) for n, s in stores.items()}, stores["bank"].labels(month)


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("pit") / "world"
    generate(root, enterprises=400, seed=5, months=18, as_of=AS_OF)
    before = _snapshot(root, MONTH)
    latest_before = _snapshot(root, AS_OF)[0]
    advance(root, steps=3)
    after = _snapshot(root, MONTH)
    latest_after = _snapshot(root, add_months(AS_OF, 3))[0]
    return before, after, latest_before, latest_after


def test_features_for_a_month_do_not_change_when_later_months_arrive(snapshots) -> None:
    (before, _), (after, _), _, _ = snapshots
    assert set(before) == {"bank", "tax", "platform", "utility"}
    for name in before:
        assert len(before[name]) > 100
        pdt.assert_frame_equal(before[name], after[name], check_exact=True)


def test_labels_for_a_month_do_not_change_when_later_months_arrive(snapshots) -> None:
    (_, labels_before), (_, labels_after), _, _ = snapshots
    assert labels_before.sum() > 0
    pdt.assert_series_equal(labels_before, labels_after, check_exact=True)


def test_the_world_did_move_on(snapshots) -> None:
    """Guards the two tests above against comparing a frozen world with itself."""
    _, _, latest_before, latest_after = snapshots
    for name in latest_before:
        common = latest_before[name].index.intersection(latest_after[name].index)
        assert not latest_before[name].loc[common].equals(latest_after[name].loc[common])
