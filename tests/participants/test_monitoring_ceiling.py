"""The records ceiling: the panel's true hazard, and a regressor that ranks by what it was shown."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

import participants.monitoring.evaluate as ev
from participants.datastore import LocalDataStore
from participants.features import build_features
from participants.monitoring.ceiling import HazardFit, panel_hazard
from participants.monitoring.early_warning import ModelOutcome
from participants.synth import generate
from participants.synth.oracle import TrueHazard
from participants.synth.world import simulate_world
from participants.synth.writer import MANIFEST, params_from_manifest
from protocols.consortium import load_consortium
from protocols.feature_schemas import LABEL_HORIZON_MONTHS, month_index, month_str

AS_OF = "2024-12"
START = month_index(AS_OF) - 2


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ceiling") / "world"
    generate(root, enterprises=300, seed=5, months=36, as_of=AS_OF)
    return root


def test_panel_hazard_is_the_simulators_hazard_of_each_enterprise_month(world: Path) -> None:
    manifest = json.loads((world / MANIFEST).read_text(encoding="utf-8"))
    cfg = load_consortium(world / "consortium.toml")
    stores = {p.name: LocalDataStore(p) for p in cfg.data_holders}
    months = [START - LABEL_HORIZON_MONTHS - 3, START - LABEL_HORIZON_MONTHS]
    _, labels = ev.training_panel(lambda m: {n: build_features(s.schema.kind, s.records, m)
                                             for n, s in stores.items()}, stores["bank"], months, START)
    got = panel_hazard(TrueHazard(manifest), labels.index)

    sim = simulate_world(params_from_manifest(manifest))
    row = pd.Index(sim.uscc.astype(str))
    for (as_of, uscc), value in zip(labels.index[:: max(1, len(labels) // 25)], got[:: max(1, len(labels) // 25)]):
        t = month_index(as_of) - sim.params.start
        assert value == sim.hazard[row.get_loc(uscc), t]
    assert set(labels.index.get_level_values(0)) == {month_str(m) for m in months}
    assert np.all((got > 0) & (got < 1))


def _frames(rng: np.random.Generator, n: int) -> tuple[dict[str, pd.DataFrame], pd.Index, np.ndarray]:
    ids = pd.Index([f"firm{i:04d}" for i in range(n)])
    signal = rng.normal(size=n)
    hazard = 1 / (1 + np.exp(-(-3 + 1.5 * signal)))
    informative = pd.DataFrame({"x": signal + 0.1 * rng.normal(size=n), "z": rng.normal(size=n)}, index=ids)
    noise = pd.DataFrame({"w": rng.normal(size=n)}, index=ids)
    return {"a": informative.iloc[: int(0.8 * n)], "b": noise}, ids, hazard   # "a" lacks the last 20 %


def test_the_fit_ranks_by_the_hazard_when_its_holders_carry_the_signal_and_not_otherwise() -> None:
    train, ids, hazard = _frames(np.random.default_rng(0), 1500)
    test, test_ids, test_hazard = _frames(np.random.default_rng(1), 1000)
    known = np.arange(len(test_ids)) < int(0.8 * len(test_ids))

    both = HazardFit(["a", "b"]).fit(train, ids, hazard).score(test, test_ids)
    blind = HazardFit(["b"]).fit(train, ids, hazard).score(test, test_ids)

    assert spearmanr(both[known], test_hazard[known]).statistic > 0.9
    assert abs(spearmanr(blind, test_hazard).statistic) < 0.1


def test_ceiling_ratio_is_all_holders_over_the_banks_records() -> None:
    def outcome(name: str, warned: int) -> ModelOutcome:
        return ModelOutcome(model=name, targets=100, warned_early=warned, share=warned / 100, median_lead=5.0,
                            mean_auc=0.7, flags_per_month=10.0)

    report = ev.EarlyWarningReport.model_construct(ceiling=[outcome("all", 66), outcome("bank", 55)])
    assert report.ceiling_ratio == pytest.approx(1.2)
    assert ev.EarlyWarningReport.model_construct(ceiling=[]).ceiling_ratio is None
    assert ev.EarlyWarningReport.model_construct(ceiling=[outcome("all", 3), outcome("bank", 0)]).ceiling_ratio is None
