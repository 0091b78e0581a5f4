"""Standard feature schemas: consistent, self-describing, and month arithmetic that round-trips."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from protocols.errors import ConfigError
from protocols.feature_schemas import (
    ID_COLUMN,
    MONTH_COLUMN,
    STANDARD_KINDS,
    STANDARD_SCHEMAS,
    FeatureSpec,
    add_months,
    month_index,
    month_str,
    standard_schema,
)


def test_every_kind_has_a_schema_whose_features_use_its_own_fields() -> None:
    assert set(STANDARD_SCHEMAS) == set(STANDARD_KINDS)
    for kind, schema in STANDARD_SCHEMAS.items():
        assert schema.kind == kind
        fields = set(schema.raw_field_names)
        assert ID_COLUMN not in fields and MONTH_COLUMN not in fields
        assert len(schema.feature_names) == len(set(schema.feature_names)) >= 10
        for spec in schema.features:
            assert spec.field is None or spec.field in fields
            assert spec.description
        stats = {spec.stat for spec in schema.features}
        # level, trend, volatility, recent drop, tenure and missing-history for every source
        assert {"mean3", "slope12", "cv12", "drop3v6", "tenure", "missing_recent"} <= stats
        # heavy-tailed fields are only used on a log scale for level/trend/drop
        for spec in schema.features:
            if spec.field in schema.heavy_tailed_fields and spec.stat in ("mean3", "slope12", "drop3v6"):
                assert spec.transform == "log1p", spec.name


def test_feature_names_are_distinct_across_standard_schemas_except_history() -> None:
    seen: dict[str, str] = {}
    history = {"tenure_months", "active_months12", "months_since_last", "missing_recent", "short_history"}
    for kind, schema in STANDARD_SCHEMAS.items():
        for name in schema.feature_names:
            if name in history:
                continue
            assert name not in seen, (name, kind, seen.get(name))
            seen[name] = kind


def test_tax_schema_carries_concentration() -> None:
    assert "top_buyer_share_mean6" in standard_schema("tax").feature_names


def test_unknown_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="expected one of bank, tax, platform, utility"):
        standard_schema("telecom")


def test_feature_spec_rejects_inconsistent_operands() -> None:
    with pytest.raises(ValidationError):
        FeatureSpec(name="x", stat="mean3", description="no field")
    with pytest.raises(ValidationError):
        FeatureSpec(name="x", stat="tenure", field="kwh", description="field on history stat")
    with pytest.raises(ValidationError):
        FeatureSpec(name="x", stat="ratio6", field="a", description="ratio without other")


@pytest.mark.parametrize("month", ["2019-01", "2024-12", "2025-06", "0001-01"])
def test_month_round_trip(month: str) -> None:
    assert month_str(month_index(month)) == month
    assert add_months(add_months(month, 13), -13) == month


def test_month_arithmetic_crosses_years_and_rejects_bad_months() -> None:
    assert add_months("2024-12", 1) == "2025-01"
    assert month_index("2025-01") - month_index("2024-01") == 12
    for bad in ("2024-00", "2024-13", "2024-1", "24-01", "2024/01", 202401):
        with pytest.raises(ConfigError):
            month_index(bad)  # type: ignore[arg-type]
