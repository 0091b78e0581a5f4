"""Observation models: what each data holder records about a firm each month.

Each source sees the latent factors of :mod:`participants.synth.world` through its own lens and
its own noise. Records exist only while the relationship exists (after the firm joined that holder,
up to its default month) and only up to the month being written.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from participants.synth.world import (
    _IND_KWH_PER_CNY,
    _IND_SEASON_AMP,
    _IND_SEASON_PEAK,
    World,
)
from protocols.feature_schemas import ID_COLUMN, MONTH_COLUMN, STANDARD_SCHEMAS, month_str

SOURCE_CODES = {"bank": 1, "tax": 2, "platform": 3, "utility": 4}
GAP_RATE = {"bank": 0.0, "tax": 0.015, "platform": 0.0, "utility": 0.01}
"""Share of months missing at random (a VAT return filed late, a meter not read)."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _season(world: World, month: int) -> np.ndarray:
    calendar = month % 12 + 1
    ind = world.industry
    wave = _IND_SEASON_AMP[ind] * np.cos(2 * np.pi * (calendar - _IND_SEASON_PEAK[ind]) / 12)
    spring_festival = {1: -0.05, 2: -0.3}.get(calendar, 0.0)
    return wave + spring_festival


def _revenue(world: World, t: int) -> np.ndarray:
    """True monthly sales (not recorded anywhere as such; each holder sees a slice of it)."""
    m = world.params.start + t
    rng = np.random.default_rng([world.params.seed, 2, m, 0])
    sales = world.factors["sales"][:, t]
    return world.size * np.exp(0.32 * sales + _season(world, m) + 0.08 * rng.normal(size=len(sales)))


def _bank(world: World, t: int, rev: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = len(rev)
    f = world.factors
    static = np.random.default_rng([world.params.seed, 3, 1])
    share = static.uniform(0.35, 1.0, size=n)  # part of sales settled through this bank
    base_loans = static.poisson(0.5, size=n)
    cash = f["cash"][:, t]
    inflow = rev * share * np.exp(0.3 * rng.normal(size=n))
    outflow = inflow * np.exp(-0.05 * cash + 0.07 * rng.normal(size=n))
    balance = world.size * 0.25 * np.exp(0.8 * cash + 0.35 * rng.normal(size=n))
    overdraft = rng.binomial(30, _sigmoid(-3.3 - 1.3 * cash + 0.5 * rng.normal(size=n)))
    loans = base_loans + (cash < -1.0) + (cash < -1.8)
    return {"inflow": inflow, "outflow": outflow, "balance": balance,
            "overdraft_days": overdraft.astype(float), "loans_outstanding": loans.astype(float)}


def _tax(world: World, t: int, rev: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = len(rev)
    f = world.factors
    static = np.random.default_rng([world.params.seed, 3, 2])
    compliance = static.uniform(0.65, 1.0, size=n)
    ticket = np.exp(static.normal(np.log(20_000), 0.8, size=n))
    buyers = np.exp(static.normal(np.log(8), 0.7, size=n))
    sales, chain, cash = f["sales"][:, t], f["chain"][:, t], f["cash"][:, t]
    amount = rev * compliance * np.exp(0.05 * rng.normal(size=n))
    count = np.maximum(rng.poisson(amount / ticket), 1)
    distinct = np.minimum(count, np.maximum(rng.poisson(buyers * np.exp(0.45 * chain + 0.15 * sales)), 1))
    top = np.where(distinct == 1, 1.0,
                   np.clip(_sigmoid(0.2 - 0.8 * chain + 0.3 * rng.normal(size=n)), 1.0 / distinct, 1.0))
    voided = rng.binomial(count, _sigmoid(-3.8 - 0.3 * sales))
    stressed = cash + 0.7 * rng.normal(size=n) < -1.5
    arrears = np.where(stressed, 0.06 * rev * rng.uniform(1.0, 4.0, size=n), 0.0)
    return {"invoice_count": count.astype(float), "invoice_amount": amount,
            "distinct_buyers": distinct.astype(float), "top_buyer_share": top,
            "voided_invoices": voided.astype(float), "tax_arrears": arrears}


def _platform(world: World, t: int, rev: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = len(rev)
    f = world.factors
    static = np.random.default_rng([world.params.seed, 3, 3])
    online_share = static.uniform(0.1, 0.7, size=n)
    ticket = np.exp(static.normal(np.log(150), 0.7, size=n))
    rep, sales = f["rep"][:, t], f["sales"][:, t]
    gmv = rev * online_share * np.exp(0.45 * rep + 0.2 * rng.normal(size=n))
    orders = rng.poisson(gmv / ticket)
    gmv = np.where(orders > 0, gmv, 0.0)
    refund = _sigmoid(-2.8 - 0.5 * rep + 0.3 * rng.normal(size=n))
    rating = np.clip(np.round(4.55 + 0.25 * rep + 0.12 * rng.normal(size=n), 1), 1.0, 5.0)
    repeat = _sigmoid(-0.8 + 0.45 * rep + 0.2 * sales + 0.25 * rng.normal(size=n))
    return {"gmv": gmv, "orders": orders.astype(float), "refund_rate": refund, "rating": rating,
            "repeat_buyer_rate": repeat}


def _utility(world: World, t: int, rev: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = len(rev)
    f = world.factors
    m = world.params.start + t
    ops, cash = f["ops"][:, t], f["cash"][:, t]
    kwh = (world.size * _IND_KWH_PER_CNY[world.industry]
           * np.exp(0.5 * ops + 0.8 * _season(world, m) + 0.12 * rng.normal(size=n)))
    late = rng.random(n) < _sigmoid(-2.4 - 1.0 * cash)
    delay = np.where(late, 1 + rng.poisson(4 * np.exp(-0.5 * cash)), 0)
    return {"kwh": kwh, "payment_delay_days": delay.astype(float)}


_MODELS = {"bank": _bank, "tax": _tax, "platform": _platform, "utility": _utility}
_DECIMALS = {"top_buyer_share": 4, "refund_rate": 4, "repeat_buyer_rate": 4, "rating": 1}


def coverage(world: World, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(covered, first month) of each firm at a holder."""
    return {
        "bank": (world.bank_customer, world.bank_since),
        "tax": (world.tax_registered, world.tax_since),
        "platform": (world.online, world.platform_since),
        "utility": (world.utility_metered, world.utility_since),
    }[kind]


def source_records(world: World, kind: str, upto: int) -> pd.DataFrame:
    """Long monthly records of one holder for months start..upto (standard raw layout)."""
    schema = STANDARD_SCHEMAS[kind]
    covered, since = coverage(world, kind)
    start = world.params.start
    written = upto - start + 1
    ids_parts, month_parts = [], []
    value_parts: dict[str, list[np.ndarray]] = {f: [] for f in schema.raw_field_names}
    for t in range(written):
        m = start + t
        rng = np.random.default_rng([world.params.seed, 2, m, SOURCE_CODES[kind]])
        values = _MODELS[kind](world, t, _revenue(world, t), rng)
        gap = rng.random(len(covered)) < GAP_RATE[kind]
        active = (covered & (m >= since) & (m >= world.founded) & (m <= world.default_month)
                  & ~gap)
        rows = np.flatnonzero(active)
        ids_parts.append(rows)
        month_parts.append(np.full(len(rows), m))
        for field in schema.raw_field_names:
            value_parts[field].append(values[field][rows])
    rows = np.concatenate(ids_parts)
    months = np.concatenate(month_parts)
    order = np.lexsort((months, world.uscc[rows]))
    frame = pd.DataFrame({ID_COLUMN: world.uscc[rows][order],
                          MONTH_COLUMN: _month_strings(months[order])})
    for field in schema.raw_field_names:
        values = np.concatenate(value_parts[field])[order]
        if schema.raw_field(field).unit in ("count", "days", "CNY", "kWh"):
            # whole units: money in yuan, energy in kWh (integers also write 3x faster)
            frame[field] = np.round(values).astype(np.int64)
        else:
            frame[field] = np.round(values, _DECIMALS.get(field, 2))
    return frame


def _month_strings(months: np.ndarray) -> np.ndarray:
    uniq, inverse = np.unique(months, return_inverse=True)
    return np.array([month_str(u) for u in uniq], dtype=object)[inverse]
