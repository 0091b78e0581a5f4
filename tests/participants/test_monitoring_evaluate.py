"""The early-warning evaluation's training panel: no look-ahead, and one recipe for both models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest

import participants.monitoring.evaluate as ev
from participants.datastore import LocalDataStore
from participants.features import build_features
from participants.features.build import MONTH_IDX
from participants.monitoring.errors import MonitoringError
from participants.synth import generate
from participants.synth.writer import MANIFEST
from protocols.consortium import load_consortium
from protocols.feature_schemas import LABEL_HORIZON_MONTHS, LABEL_LEDGER, month_index, month_str

AS_OF = "2024-12"
LAST = month_index(AS_OF)
START = LAST - 2          # deploy two months before the last written month
TRAIN_AS_OF = START - LABEL_HORIZON_MONTHS
RECIPE = ev.TrainingRecipe(snapshots=4, step=3)


def _stores(root: Path) -> dict[str, LocalDataStore]:
    cfg = load_consortium(root / "consortium.toml")
    return {p.name: LocalDataStore(p) for p in cfg.data_holders}


def _panel(root: Path, months: list[int]) -> tuple[dict[str, pd.DataFrame], pd.Series]:
    stores = _stores(root)
    return ev.training_panel(lambda m: {n: build_features(s.schema.kind, s.records, m) for n, s in stores.items()},
                             stores["bank"], months, START)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ew") / "world"
    generate(root, enterprises=400, seed=7, months=36, as_of=AS_OF)
    return root


@pytest.fixture(scope="module")
def months(world: Path) -> list[int]:
    manifest = json.loads((world / MANIFEST).read_text(encoding="utf-8"))
    return ev.panel_months(TRAIN_AS_OF, int(manifest["start"]), START, RECIPE)


def test_panel_months_end_at_train_as_of_and_keep_a_full_feature_window() -> None:
    first = TRAIN_AS_OF - 10 - ev.HISTORY_MONTHS + 1   # history for train_as_of .. train_as_of - 10 only
    got = ev.panel_months(TRAIN_AS_OF, first, START, RECIPE)
    assert got == [TRAIN_AS_OF - 9, TRAIN_AS_OF - 6, TRAIN_AS_OF - 3, TRAIN_AS_OF]
    assert all(t - ev.HISTORY_MONTHS + 1 >= first and t + LABEL_HORIZON_MONTHS <= START for t in got)
    monthly = ev.panel_months(TRAIN_AS_OF, first, START, ev.TrainingRecipe(snapshots=12, step=1))
    assert monthly == list(range(TRAIN_AS_OF - 10, TRAIN_AS_OF + 1))


def test_panel_months_refuse_labels_past_deployment_or_missing_history() -> None:
    with pytest.raises(MonitoringError, match="look past"):
        ev.panel_months(START - LABEL_HORIZON_MONTHS + 1, 0, START, RECIPE)
    with pytest.raises(MonitoringError, match="needs records"):
        ev.panel_months(TRAIN_AS_OF, TRAIN_AS_OF - ev.HISTORY_MONTHS + 2, START, RECIPE)


def test_training_panel_refuses_a_snapshot_whose_labels_reach_past_start(world: Path) -> None:
    with pytest.raises(MonitoringError, match="after"):
        _panel(world, [TRAIN_AS_OF, TRAIN_AS_OF + 1])


def test_panel_labels_match_the_ledger_within_each_snapshot_window(world: Path, months: list[int]) -> None:
    assert len(months) == 3  # 2023-04, -07, -10: the generator writes from 2022-01
    features, labels = _panel(world, months)
    ledger = pd.read_csv(world / "bank" / LABEL_LEDGER.file, dtype=str, keep_default_na=False).set_index("uscc")
    default = ledger[LABEL_LEDGER.default_month].map(lambda v: month_index(v) if v else 10**9)
    since = ledger[LABEL_LEDGER.customer_since].map(month_index)
    assert set(labels.index.get_level_values(0)) == {month_str(t) for t in months}
    for t in months:
        y = labels.xs(month_str(t), level=0)
        d = default.loc[y.index].to_numpy()
        assert (d > t).all(), "a firm already in default at the snapshot month is in its universe"
        assert (since.loc[y.index].to_numpy() <= t).all()
        np.testing.assert_array_equal(y.to_numpy(), (d <= t + LABEL_HORIZON_MONTHS).astype(int))
        assert ((d <= START) | (y.to_numpy() == 0)).all()
        # the bank knows every firm it labels, with features as of that snapshot
        assert y.index.isin(features["bank"].xs(month_str(t), level=0).index).all()
    assert labels.groupby(level=0).sum().gt(0).all()


def test_panel_is_unchanged_when_everything_after_start_is_erased(world: Path, months: list[int],
                                                                  tmp_path: Path) -> None:
    """Blank every default after ``start``, cap observation at ``start`` and drop every record
    after the last snapshot month: the panel the models are trained on must not move."""
    features, labels = _panel(world, months)
    cut = tmp_path / "cut"
    shutil.copytree(world, cut)
    path = cut / "bank" / LABEL_LEDGER.file
    ledger = pd.read_csv(path, dtype=str, keep_default_na=False)
    late = ledger[LABEL_LEDGER.default_month].map(lambda v: bool(v) and month_index(v) > START)
    assert late.sum() > 0, "the world has no default after start; the test would prove nothing"
    ledger.loc[late, LABEL_LEDGER.default_month] = ""
    ledger[LABEL_LEDGER.observed_until] = month_str(START)
    ledger.to_csv(path, index=False)
    stores = _stores(cut)
    for s in stores.values():   # records after the last snapshot month disappear
        s.records.drop(s.records.index[s.records[MONTH_IDX] > months[-1]], inplace=True)
    assert all(s.records[MONTH_IDX].max() == months[-1] for s in stores.values())
    cut_features, cut_labels = ev.training_panel(
        lambda m: {n: build_features(s.schema.kind, s.records, m) for n, s in stores.items()},
        stores["bank"], months, START)
    pdt.assert_series_equal(labels, cut_labels, check_exact=True)
    for name in features:
        pdt.assert_frame_equal(features[name], cut_features[name], check_exact=True)


class _Trained(Exception):
    """Stops the evaluation once both models are trained (scoring is not under test here)."""


def test_both_models_train_on_the_same_rows_labels_and_plan(world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = ev.train_split

    def spy(features, labels, label_holder, plan=ev.PLAN, ref=""):
        calls.append((ref, dict(features), labels, plan))
        trained = real(features, labels, label_holder, plan, ref)
        if len(calls) == 2:
            raise _Trained
        return trained

    monkeypatch.setattr(ev, "train_split", spy)
    recipe = ev.TrainingRecipe(plan=ev.PLAN.model_copy(update={"epochs": 1.0}), snapshots=3, step=2)
    with pytest.raises(_Trained):
        ev.run_evaluation(world, months=4, recipe=recipe)
    (fed_ref, fed_x, fed_y, fed_plan), (bank_ref, bank_x, bank_y, bank_plan) = calls
    assert (fed_ref, bank_ref) == (ev.FEDERATED, ev.BANK_ONLY)
    assert fed_plan == bank_plan == recipe.plan
    pdt.assert_series_equal(fed_y, bank_y, check_exact=True)
    assert set(bank_x) == {"bank"} and set(fed_x) == {"bank", "tax", "platform", "utility"}
    pdt.assert_frame_equal(fed_x["bank"], bank_x["bank"], check_exact=True)
    train_as_of = LAST - 4 - LABEL_HORIZON_MONTHS
    assert sorted(set(fed_y.index.get_level_values(0))) == [month_str(train_as_of - 2 * k) for k in (2, 1, 0)]
    assert fed_y.sum() > 0 and not fed_y.index.duplicated().any()


def test_headroom_is_the_share_of_the_oracles_gain_the_federated_model_captures() -> None:
    from participants.monitoring.early_warning import ModelOutcome

    def outcome(name: str, warned: int) -> ModelOutcome:
        return ModelOutcome(model=name, targets=100, warned_early=warned, share=warned / 100, median_lead=5.0,
                            mean_auc=0.7, flags_per_month=10.0)

    report = ev.EarlyWarningReport.model_construct(outcomes=[outcome("federated", 60), outcome("bank-only", 50)],
                                                   oracle=outcome("oracle", 90))
    assert report.headroom_captured == pytest.approx(0.25)
    assert ev.EarlyWarningReport.model_construct(outcomes=report.outcomes, oracle=None).headroom_captured is None


@pytest.mark.parametrize("kwargs, match", [({"rate": 0.0}, "--rate"), ({"rate": 2.0}, "--rate"),
                                           ({"lead": -1}, "--lead"), ({"months": 3, "lead": 3}, "--months")])
def test_bad_evaluation_settings_are_refused_before_any_world_is_made(tmp_path: Path, kwargs, match) -> None:
    with pytest.raises(MonitoringError, match=match):
        ev.run_evaluation(tmp_path / "none", **kwargs)
    assert not (tmp_path / "none").exists()
