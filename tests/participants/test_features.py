"""Feature pipelines: point-in-time correctness, statistic semantics, labels from the ledger."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from participants.features import build_features, labels_from_ledger, parse_records
from participants.features.stats import _nanmean, _nanstd
from protocols.errors import DataError
from protocols.feature_schemas import STANDARD_SCHEMAS, add_months, month_index, month_str
from protocols.uscc import make_uscc

IDS = [make_uscc(f"91440300MA5{i:06d}") for i in range(6)]


def utility_records(series: dict[str, list[float | None]], end: str = "2024-12") -> pd.DataFrame:
    """Monthly kWh per firm ending at ``end`` (None = no record that month)."""
    rows = []
    for uscc, values in series.items():
        start = month_index(end) - len(values) + 1
        for k, value in enumerate(values):
            if value is not None:
                rows.append({"uscc": uscc, "month": month_str(start + k), "kwh": value,
                             "payment_delay_days": 0})
    return pd.DataFrame(rows)


def random_records(kind: str, n_firms: int, months: int, seed: int, end: str) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    schema = STANDARD_SCHEMAS[kind]
    start = month_index(end) - months + 1
    rows = []
    for i in range(n_firms):
        first = start + int(rng.integers(0, months // 2))
        for m in range(first, start + months):
            if rng.random() < 0.1:
                continue
            row = {"uscc": make_uscc(f"91110105{i:09d}"), "month": month_str(m)}
            row.update({f: float(rng.gamma(2.0, 50.0)) for f in schema.raw_field_names})
            rows.append(row)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("kind", sorted(STANDARD_SCHEMAS))
def test_features_as_of_t_ignore_later_months(kind: str) -> None:
    records = random_records(kind, 40, 30, seed=1, end="2024-12")
    as_of = "2024-06"
    before = build_features(kind, records[records["month"] <= as_of], as_of)
    after = build_features(kind, records, as_of)
    # later months, with wild values, appended in a different order
    extra = random_records(kind, 40, 6, seed=2, end="2025-06")
    extra = extra[extra["month"] > "2024-12"]
    everything = pd.concat([extra, records]).sample(frac=1.0, random_state=3)
    pd.testing.assert_frame_equal(before, after)
    pd.testing.assert_frame_equal(before, build_features(kind, everything, as_of))
    assert list(before.columns) == STANDARD_SCHEMAS[kind].feature_names
    assert np.isfinite(before.to_numpy()).all()
    assert before.index.is_monotonic_increasing


def test_statistics_mean_what_they_say() -> None:
    flat, rising, dropping, young, lapsed = IDS[:5]
    records = utility_records({
        flat: [100.0] * 24,
        rising: [100.0 * 1.05**k for k in range(24)],
        dropping: [100.0] * 21 + [20.0] * 3,
        young: [None] * 19 + [100.0] * 5,
        lapsed: [100.0] * 20 + [None] * 4,
    })
    f = build_features("utility", records, "2024-12")
    assert f.loc[flat, "kwh_log_trend"] == pytest.approx(0.0, abs=1e-12)
    assert f.loc[flat, "kwh_cv"] == pytest.approx(0.0, abs=1e-12)
    assert f.loc[flat, "kwh_log_drop"] == pytest.approx(0.0, abs=1e-12)
    assert f.loc[rising, "kwh_log_trend"] > 0
    assert f.loc[rising, "kwh_log_yoy"] > 0
    assert f.loc[dropping, "kwh_log_drop"] > 1.0
    assert f.loc[dropping, "kwh_log_mean3"] < f.loc[flat, "kwh_log_mean3"]
    assert f.loc[flat, "kwh_log_mean3"] == pytest.approx(np.log1p(100.0))
    assert f.loc[young, "tenure_months"] == 5 and f.loc[young, "short_history"] == 1
    assert f.loc[flat, "tenure_months"] == 24 and f.loc[flat, "short_history"] == 0
    assert f.loc[lapsed, "missing_recent"] == 1 and f.loc[lapsed, "months_since_last"] == 4
    assert f.loc[flat, "missing_recent"] == 0 and f.loc[flat, "active_months12"] == 12
    assert f.loc[lapsed, "active_months12"] == 8


def test_firms_without_records_by_as_of_are_absent() -> None:
    records = utility_records({IDS[0]: [1.0] * 24, IDS[1]: [None] * 20 + [5.0] * 4})
    f = build_features("utility", records, "2024-06")
    assert list(f.index) == [IDS[0]]
    empty = build_features("utility", records, "2020-01")
    assert empty.empty and list(empty.columns) == STANDARD_SCHEMAS["utility"].feature_names


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.drop(columns=["kwh"]), "missing column(s) kwh"),
        (lambda r: r.assign(month=r["month"].where(r.index != 3, "2024-13")), "month row 4"),
        (lambda r: pd.concat([r, r.iloc[[0]]]), "second record"),
        (lambda r: r.assign(kwh=r["kwh"].astype(object).where(r.index != 1, "lots")),
         "kwh row 2: not a number"),
    ],
)
def test_malformed_records_are_data_errors_naming_column_and_row(mutate, message: str) -> None:
    records = utility_records({IDS[0]: [1.0] * 6}).reset_index(drop=True)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        parse_records("utility", mutate(records), source="meter.csv")
    assert "meter.csv" in str(info.value) and IDS[0] not in str(info.value)


def ledger(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["uscc", "customer_since", "default_month", "observed_until"])


def test_labels_cover_exactly_the_12_months_after_as_of() -> None:
    t = "2024-06"
    frame = ledger([
        (IDS[0], "2020-01", "", "2025-06"),                   # survives -> 0
        (IDS[1], "2020-01", add_months(t, 1), "2025-06"),     # first month after -> 1
        (IDS[2], "2020-01", add_months(t, 12), "2025-06"),    # last month of window -> 1
        (IDS[3], "2020-01", add_months(t, 13), "2025-12"),    # after the window -> 0
        (IDS[4], "2020-01", t, "2025-06"),                    # defaulted at as-of -> excluded
        (IDS[5], add_months(t, 1), "", "2025-06"),            # not yet a customer -> excluded
    ])
    labels = labels_from_ledger(frame, t)
    assert labels.to_dict() == {IDS[0]: 0, IDS[1]: 1, IDS[2]: 1, IDS[3]: 0}


def test_labels_ignore_outcomes_outside_the_window() -> None:
    t = "2024-06"
    rng = np.random.default_rng(0)
    ids = [make_uscc(f"91110105{i:09d}") for i in range(200)]
    months = [add_months(t, int(k)) for k in rng.integers(-30, 30, size=200)]
    frame = ledger([(u, "2019-01", m, "2026-12") for u, m in zip(ids, months)])
    base = labels_from_ledger(frame, t)
    # moving defaults that are beyond T+12 further out changes nothing
    later = frame.copy()
    beyond = later["default_month"] > add_months(t, 12)
    later.loc[beyond, "default_month"] = add_months(t, 40)
    pd.testing.assert_series_equal(base, labels_from_ledger(later, t))
    in_window = (frame["default_month"] > t) & (frame["default_month"] <= add_months(t, 12))
    assert base.sum() == in_window.sum()
    assert len(base) == (frame["default_month"] > t).sum()


def test_censored_outcomes_are_excluded_and_too_late_as_of_fails() -> None:
    frame = ledger([(IDS[0], "2020-01", "", "2025-03"), (IDS[1], "2020-01", "2025-01", "2025-03")])
    labels = labels_from_ledger(frame, "2024-06")
    assert labels.to_dict() == {IDS[1]: 1}  # IDS[0] not observed through 2025-06: no label
    with pytest.raises(DataError, match="observed only until 2025-03"):
        labels_from_ledger(ledger([(IDS[0], "2020-01", "", "2025-03")]), "2024-06")
    with pytest.raises(DataError, match="default_month row 1"):
        labels_from_ledger(ledger([(IDS[0], "2020-01", "soon", "2025-03")]), "2024-06")


def test_window_means_match_numpy_and_never_warn_on_empty_rows() -> None:
    """Holders build features in several threads; numpy's empty-slice warning cannot be silenced
    safely there, so the statistics avoid it instead of catching it."""

    rng = np.random.default_rng(0)
    block = rng.normal(size=(200, 12))
    block[rng.random(block.shape) < 0.4] = np.nan
    block[:5] = np.nan  # firms with no record in the window
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean = _nanmean(block)
        std = _nanstd(block, mean)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(mean, np.nanmean(block, axis=1), equal_nan=True)
        np.testing.assert_allclose(std, np.nanstd(block, axis=1), equal_nan=True)
    assert np.isnan(mean[:5]).all() and np.isfinite(mean[5:]).all()
