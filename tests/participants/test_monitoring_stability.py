"""Population stability index: values, thresholds, holder-side reports."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from participants.monitoring.errors import MonitoringError
from participants.monitoring.stability import Drift, classify, feature_stability, psi, score_stability


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_psi_is_near_zero_for_the_same_population(rng) -> None:
    assert psi(rng.normal(size=20_000), rng.normal(size=20_000)) < 0.01


def test_psi_grows_with_the_shift_and_crosses_the_retrain_threshold(rng) -> None:
    ref = rng.normal(size=20_000)
    values = [psi(ref, rng.normal(loc=shift, size=20_000)) for shift in (0.1, 0.3, 0.8)]
    assert values == sorted(values)
    assert classify(values[0]) is Drift.STABLE
    assert classify(values[-1]) is Drift.RETRAIN


def test_psi_matches_the_textbook_formula_on_two_bins() -> None:
    ref = np.r_[np.zeros(50), np.ones(50)]
    cur = np.r_[np.zeros(80), np.ones(20)]
    expected = (0.8 - 0.5) * np.log(0.8 / 0.5) + (0.2 - 0.5) * np.log(0.2 / 0.5)
    assert psi(ref, cur) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("value, status", [(0.0, Drift.STABLE), (0.099, Drift.STABLE), (0.1, Drift.WATCH),
                                           (0.25, Drift.WATCH), (0.2501, Drift.RETRAIN)])
def test_thresholds(value: float, status: Drift) -> None:
    assert classify(value) is status


def test_empty_or_infinite_samples_are_typed_errors() -> None:
    with pytest.raises(MonitoringError, match="empty"):
        psi([], [1.0])
    with pytest.raises(MonitoringError, match="inf"):
        psi([1.0, 2.0], [np.inf])


def test_score_report_names_the_months_and_status(rng) -> None:
    report = score_stability(rng.beta(1, 20, 5000), rng.beta(2, 10, 5000), reference="2025-01", current="2025-02")
    assert (report.scope, report.reference, report.current, report.worst) == ("score", "2025-01", "2025-02", "pd")
    assert report.status is Drift.RETRAIN


def test_feature_report_flags_only_the_drifted_feature(rng) -> None:
    ref = pd.DataFrame({"stable": rng.normal(size=4000), "moved": rng.normal(size=4000)})
    cur = pd.DataFrame({"stable": rng.normal(size=4000), "moved": rng.normal(loc=1.0, size=4000)})
    report = feature_stability("utility", ref, cur, reference_month="2024-12", current_month="2025-06")
    assert report.worst == "moved" and report.status is Drift.RETRAIN
    assert classify(report.psi["stable"]) is Drift.STABLE
    with pytest.raises(MonitoringError, match="lack"):
        feature_stability("utility", ref, cur[["stable"]], reference_month="a", current_month="b")


def test_clock_features_are_left_out_of_a_holders_report(tmp_path) -> None:
    """Tenure rises one a month for every firm: its PSI a year apart always says "retrain", which
    would drown the real signal, so a holder's report skips it and keeps every other feature."""
    from participants.datastore import LocalDataStore
    from participants.monitoring.stability import clock_features, holder_feature_stability
    from participants.synth import generate
    from protocols.consortium import load_consortium

    generate(tmp_path / "w", enterprises=400, seed=3, months=36, as_of="2024-12")
    bank = next(p for p in load_consortium(tmp_path / "w" / "consortium.toml").data_holders if p.name == "bank")
    store = LocalDataStore(bank)
    assert clock_features("bank") == ("tenure_months",) and clock_features("custom") == ()
    report = holder_feature_stability(store, "2023-12", "2024-12")
    assert "tenure_months" not in report.psi
    assert set(report.psi) == set(store.features("2024-12").columns) - {"tenure_months"}
    unfiltered = feature_stability("bank", store.features("2023-12"), store.features("2024-12"),
                                   reference_month="2023-12", current_month="2024-12")
    assert unfiltered.worst == "tenure_months" and unfiltered.status is Drift.RETRAIN
