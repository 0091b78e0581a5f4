"""Standard feature schemas: the one source of truth for column names.

Each data-holder kind (bank, tax authority, e-commerce platform, utility) publishes monthly
RAW records in a standard layout (one row per enterprise and month) and turns them, locally, into
MODEL FEATURES as of a month. The synthetic generator writes these raw columns, the feature
pipelines read them and emit these feature names, and consortium configs map a participant's own
column names onto them. Nothing else in the project spells a column name.

Why declare features as (field, statistic, transform) specs rather than code: the pipeline is one
generic, vectorised routine; a feature name always says what it is computed from; and the model
side can list a participant's features without importing the participant.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocols.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Months ("YYYY-MM"): the time axis of every record and of every as-of date.
# ---------------------------------------------------------------------------------------------

_MONTH_RE = re.compile(r"^(\d{4})-(\d{2})$")


def month_index(month: str) -> int:
    """``"2024-03"`` -> months since year 0 (an integer axis that subtracts correctly)."""
    match = _MONTH_RE.match(month) if isinstance(month, str) else None
    if match is None or not 1 <= int(match.group(2)) <= 12:
        raise ConfigError(f"invalid month {month!r}: expected YYYY-MM")
    return int(match.group(1)) * 12 + int(match.group(2)) - 1


def month_str(index: int) -> str:
    """Inverse of :func:`month_index`."""
    year, month0 = divmod(int(index), 12)
    return f"{year:04d}-{month0 + 1:02d}"


def add_months(month: str, delta: int) -> str:
    return month_str(month_index(month) + delta)


# ---------------------------------------------------------------------------------------------
# Schema models
# ---------------------------------------------------------------------------------------------

SourceKind = Literal["bank", "tax", "platform", "utility"]
SchemaKind = Literal["bank", "tax", "platform", "utility", "custom"]
STANDARD_KINDS: tuple[str, ...] = ("bank", "tax", "platform", "utility")

ID_COLUMN = "uscc"
"""Standard name of the enterprise id column in every raw file."""
MONTH_COLUMN = "month"
"""Standard name of the month column (``YYYY-MM``) in every monthly raw file."""
LABEL_HORIZON_MONTHS = 12
"""A label is "default within this many months after the as-of month"."""

Unit = Literal["CNY", "count", "days", "kWh", "ratio", "stars"]

Statistic = Literal[
    "mean3",  # mean over calendar months T-2..T (level, recent)
    "mean6",  # mean over T-5..T (level)
    "slope12",  # OLS slope per month over T-11..T (trend)
    "cv12",  # std/mean over T-11..T, on the raw scale (volatility)
    "drop3v6",  # mean(T-8..T-3) - mean(T-2..T): positive when activity fell (recent drop)
    "yoy3",  # mean(T-2..T) - mean(T-14..T-12): change on the same season a year earlier
    "max12",  # maximum over T-11..T
    "last",  # value in the latest month with a record (carried forward)
    "posfrac12",  # share of reported months in T-11..T with a value > 0
    "ratio6",  # sum(field, T-5..T) / sum(other, T-5..T)
    "tenure",  # months from the first record ever to T (inclusive)
    "active12",  # months with a record in T-11..T
    "since_last",  # months from the last record to T (0 = reported in T)
    "missing_recent",  # 1 when there is no record in T-2..T
    "short_history",  # 1 when tenure < 12 months
]
Transform = Literal["none", "log1p"]


class RawField(BaseModel):
    """One column of the monthly raw records."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    unit: Unit
    description: str
    heavy_tailed: bool = False
    """Money or volume (non-negative, heavy-tailed): features use it on a log scale."""


class FeatureSpec(BaseModel):
    """One model feature: statistic of a raw field (or of the record history) as of a month."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    stat: Statistic
    field: str | None = None
    other: str | None = None
    """Denominator field for ``ratio6``."""
    transform: Transform = "none"
    description: str

    @model_validator(mode="after")
    def _operands(self) -> "FeatureSpec":
        history_stats = {"tenure", "active12", "since_last", "missing_recent", "short_history"}
        if self.stat in history_stats:
            if self.field is not None:
                raise ValueError(f"feature {self.name}: {self.stat} takes no field")
        elif self.field is None:
            raise ValueError(f"feature {self.name}: {self.stat} needs a field")
        if (self.stat == "ratio6") != (self.other is not None):
            raise ValueError(f"feature {self.name}: 'other' is required by ratio6 and only by it")
        return self


class SourceSchema(BaseModel):
    """The standard layout of one data-holder kind: raw monthly fields and model features."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: SourceKind
    description: str
    records_file: str
    """Default file name of the monthly records inside a participant's data directory."""
    raw_fields: tuple[RawField, ...]
    features: tuple[FeatureSpec, ...]

    @model_validator(mode="after")
    def _consistent(self) -> "SourceSchema":
        names = [f.name for f in self.raw_fields]
        reserved = {ID_COLUMN, MONTH_COLUMN}
        if len(set(names)) != len(names) or reserved & set(names):
            raise ValueError(f"{self.kind}: raw field names must be unique and not {sorted(reserved)}")
        feature_names = [f.name for f in self.features]
        if len(set(feature_names)) != len(feature_names):
            raise ValueError(f"{self.kind}: duplicate feature names")
        for spec in self.features:
            for operand in (spec.field, spec.other):
                if operand is not None and operand not in names:
                    raise ValueError(f"{self.kind}: feature {spec.name} uses unknown field {operand}")
        return self

    @property
    def clock_feature_names(self) -> tuple[str, ...]:
        """Features that grow with the calendar by construction (``tenure``): every firm's value rises
        one a month, so their stability index measures elapsed time, not drift."""
        return tuple(f.name for f in self.features if f.stat == "tenure")

    @property
    def raw_field_names(self) -> list[str]:
        return [f.name for f in self.raw_fields]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def heavy_tailed_fields(self) -> list[str]:
        return [f.name for f in self.raw_fields if f.heavy_tailed]

    def raw_field(self, name: str) -> RawField:
        for field in self.raw_fields:
            if field.name == name:
                return field
        raise KeyError(name)


class LabelLedgerSchema(BaseModel):
    """The label holder's private outcome ledger (one row per customer, never leaves the bank).

    Labels are DERIVED from it for any as-of month T: eligible customers are those that were
    customers at T (``customer_since <= T``) and had not defaulted at or before T; the label is 1
    when ``default_month`` falls in T+1..T+12. A customer whose outcome is only observed until
    before T+12 without a default is censored (no label).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = "outcomes.csv"
    customer_since: str = "customer_since"
    default_month: str = "default_month"
    observed_until: str = "observed_until"


LABEL_LEDGER = LabelLedgerSchema()


# ---------------------------------------------------------------------------------------------
# Feature-spec builders (keep the four schemas short and uniform)
# ---------------------------------------------------------------------------------------------


def _flow_features(field: str, what: str, *, log: bool = True) -> list[FeatureSpec]:
    """Level, trend, volatility and recent drop of one monthly flow."""
    t: Transform = "log1p" if log else "none"
    prefix = f"{field}_log" if log else field
    scale = "log(1+x) of " if log else ""
    return [
        FeatureSpec(name=f"{prefix}_mean3", stat="mean3", field=field, transform=t,
                    description=f"level: 3-month mean of {scale}{what}"),
        FeatureSpec(name=f"{prefix}_mean6", stat="mean6", field=field, transform=t,
                    description=f"level: 6-month mean of {scale}{what}"),
        FeatureSpec(name=f"{prefix}_trend", stat="slope12", field=field, transform=t,
                    description=f"trend: 12-month slope per month of {scale}{what}"),
        FeatureSpec(name=f"{field}_cv", stat="cv12", field=field,
                    description=f"volatility: 12-month coefficient of variation of {what}"),
        FeatureSpec(name=f"{prefix}_drop", stat="drop3v6", field=field, transform=t,
                    description=f"recent drop: previous-6 minus last-3 month mean of {scale}{what}"),
    ]


def _history_features(what: str) -> list[FeatureSpec]:
    """Tenure and missing-history indicators (young firms, lapsed reporting)."""
    return [
        FeatureSpec(name="tenure_months", stat="tenure",
                    description=f"months since the first {what} record"),
        FeatureSpec(name="active_months12", stat="active12",
                    description=f"months with a {what} record among the last 12"),
        FeatureSpec(name="months_since_last", stat="since_last",
                    description=f"months since the latest {what} record"),
        FeatureSpec(name="missing_recent", stat="missing_recent",
                    description=f"1 when no {what} record in the last 3 months"),
        FeatureSpec(name="short_history", stat="short_history",
                    description=f"1 when fewer than 12 months of {what} history"),
    ]


BANK = SourceSchema(
    kind="bank",
    description="Settlement-account flows and credit exposure at the lending bank.",
    records_file="accounts_monthly.csv.gz",
    raw_fields=(
        RawField(name="inflow", unit="CNY", heavy_tailed=True,
                 description="credits into the enterprise's settlement accounts in the month"),
        RawField(name="outflow", unit="CNY", heavy_tailed=True,
                 description="debits from the settlement accounts in the month"),
        RawField(name="balance", unit="CNY", heavy_tailed=True,
                 description="average daily balance over the month"),
        RawField(name="overdraft_days", unit="days",
                 description="days in the month with an overdrawn account"),
        RawField(name="loans_outstanding", unit="count",
                 description="loans outstanding at month end (prior borrowing)"),
    ),
    features=(
        *_flow_features("inflow", "account inflow"),
        FeatureSpec(name="outflow_inflow_ratio", stat="ratio6", field="outflow", other="inflow",
                    description="6-month outflow over inflow (cash burn above 1)"),
        FeatureSpec(name="balance_log_mean3", stat="mean3", field="balance", transform="log1p",
                    description="level: 3-month mean of log(1+average balance)"),
        FeatureSpec(name="balance_log_trend", stat="slope12", field="balance", transform="log1p",
                    description="trend: 12-month slope of log(1+average balance)"),
        FeatureSpec(name="balance_log_drop", stat="drop3v6", field="balance", transform="log1p",
                    description="recent drop of log(1+average balance)"),
        FeatureSpec(name="overdraft_days_mean3", stat="mean3", field="overdraft_days",
                    description="overdraft days per month, last 3 months"),
        FeatureSpec(name="overdraft_days_max12", stat="max12", field="overdraft_days",
                    description="worst month of overdraft days in the last 12"),
        FeatureSpec(name="loans_outstanding_last", stat="last", field="loans_outstanding",
                    description="loans outstanding in the latest month"),
        *_history_features("account"),
    ),
)

TAX = SourceSchema(
    kind="tax",
    description="VAT invoicing (增值税发票) and tax standing at the tax authority.",
    records_file="vat_monthly.csv.gz",
    raw_fields=(
        RawField(name="invoice_count", unit="count",
                 description="VAT invoices issued in the month (sales side)"),
        RawField(name="invoice_amount", unit="CNY", heavy_tailed=True,
                 description="total amount of VAT invoices issued, tax excluded"),
        RawField(name="distinct_buyers", unit="count",
                 description="distinct downstream buyers invoiced in the month"),
        RawField(name="top_buyer_share", unit="ratio",
                 description="share of the month's invoiced amount going to the largest buyer"),
        RawField(name="voided_invoices", unit="count",
                 description="invoices voided or red-lettered (红冲) in the month"),
        RawField(name="tax_arrears", unit="CNY", heavy_tailed=True,
                 description="overdue tax outstanding at month end"),
    ),
    features=(
        *_flow_features("invoice_amount", "invoiced amount"),
        FeatureSpec(name="invoice_count_log_mean3", stat="mean3", field="invoice_count",
                    transform="log1p", description="level: 3-month mean of log(1+invoices)"),
        FeatureSpec(name="invoice_count_log_drop", stat="drop3v6", field="invoice_count",
                    transform="log1p", description="recent drop of log(1+invoices)"),
        FeatureSpec(name="distinct_buyers_mean6", stat="mean6", field="distinct_buyers",
                    description="customer breadth: distinct buyers per month, 6-month mean"),
        FeatureSpec(name="distinct_buyers_trend", stat="slope12", field="distinct_buyers",
                    description="trend of customer breadth"),
        FeatureSpec(name="top_buyer_share_mean6", stat="mean6", field="top_buyer_share",
                    description="concentration: 6-month mean share of the largest buyer"),
        FeatureSpec(name="void_rate6", stat="ratio6", field="voided_invoices", other="invoice_count",
                    description="voided over issued invoices, last 6 months"),
        FeatureSpec(name="tax_arrears_log_last", stat="last", field="tax_arrears",
                    transform="log1p", description="log(1+overdue tax) in the latest month"),
        FeatureSpec(name="arrears_months_frac12", stat="posfrac12", field="tax_arrears",
                    description="share of recent months with overdue tax"),
        *_history_features("VAT"),
    ),
)

PLATFORM = SourceSchema(
    kind="platform",
    description="Store performance on an e-commerce platform.",
    records_file="orders_monthly.csv.gz",
    raw_fields=(
        RawField(name="gmv", unit="CNY", heavy_tailed=True, description="gross merchandise value sold"),
        RawField(name="orders", unit="count", description="orders received in the month"),
        RawField(name="refund_rate", unit="ratio", description="refunded orders over orders"),
        RawField(name="rating", unit="stars", description="store rating at month end (1-5)"),
        RawField(name="repeat_buyer_rate", unit="ratio",
                 description="share of the month's buyers who had bought before"),
    ),
    features=(
        *_flow_features("gmv", "GMV"),
        FeatureSpec(name="orders_log_mean3", stat="mean3", field="orders", transform="log1p",
                    description="level: 3-month mean of log(1+orders)"),
        FeatureSpec(name="orders_log_drop", stat="drop3v6", field="orders", transform="log1p",
                    description="recent drop of log(1+orders)"),
        FeatureSpec(name="refund_rate_mean6", stat="mean6", field="refund_rate",
                    description="6-month mean refund rate"),
        FeatureSpec(name="rating_mean6", stat="mean6", field="rating",
                    description="6-month mean store rating"),
        FeatureSpec(name="rating_trend", stat="slope12", field="rating",
                    description="12-month slope of the store rating"),
        FeatureSpec(name="repeat_buyer_rate_mean6", stat="mean6", field="repeat_buyer_rate",
                    description="6-month mean repeat-buyer rate"),
        *_history_features("store"),
    ),
)

UTILITY = SourceSchema(
    kind="utility",
    description="Electricity consumption and bill payment at the power utility.",
    records_file="electricity_monthly.csv.gz",
    raw_fields=(
        RawField(name="kwh", unit="kWh", heavy_tailed=True, description="electricity consumed in the month"),
        RawField(name="payment_delay_days", unit="days",
                 description="days the month's bill was paid after its due date (0 = on time)"),
    ),
    features=(
        *_flow_features("kwh", "electricity use"),
        FeatureSpec(name="kwh_log_yoy", stat="yoy3", field="kwh", transform="log1p",
                    description="last 3 months vs the same 3 months a year earlier, log scale"),
        FeatureSpec(name="payment_delay_mean6", stat="mean6", field="payment_delay_days",
                    description="mean bill payment delay, last 6 months"),
        FeatureSpec(name="payment_delay_max12", stat="max12", field="payment_delay_days",
                    description="worst bill payment delay in the last 12 months"),
        FeatureSpec(name="late_months_frac12", stat="posfrac12", field="payment_delay_days",
                    description="share of recent months paid late"),
        *_history_features("metering"),
    ),
)

STANDARD_SCHEMAS: dict[str, SourceSchema] = {s.kind: s for s in (BANK, TAX, PLATFORM, UTILITY)}


def standard_schema(kind: str) -> SourceSchema:
    """The standard schema of a data-holder kind; :class:`ConfigError` names the valid kinds."""
    try:
        return STANDARD_SCHEMAS[kind]
    except KeyError:
        raise ConfigError(
            f"no standard schema {kind!r}: expected one of {', '.join(STANDARD_KINDS)}"
        ) from None
