"""The simulated SME world: static firm profiles and a latent monthly health process.

Every source observes a DIFFERENT facet of a firm's health, plus noise:

====================  =====================================================================
latent factor         mainly seen by
====================  =====================================================================
``cash`` liquidity    bank (balance, overdraft); weakly tax arrears and bill payment delays
``sales`` demand      tax (invoiced amount/count); platform GMV; noisily bank inflows
``ops`` activity      utility (kWh)
``chain`` breadth     tax (distinct buyers, top-buyer share)
``rep`` reputation    platform (rating, refunds, repeat buyers) -- matters for online sellers
====================  =====================================================================

The monthly default hazard depends on all factors, so no single source sees the whole risk and
the pooled model beats each source alone.

Determinism and time: static attributes come from the stream ``(seed, 0)`` and everything that
happens in month ``m`` from streams keyed by ``(seed, purpose, m)``. Simulating a longer horizon
therefore reproduces the earlier months exactly, which is what lets the world be advanced month
by month: the generator always simulates ``horizon`` months beyond the last written month (for
labels) and writes records only up to the as-of month.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from participants.synth.ids import REGIONS, make_usccs

FACTORS = ("cash", "sales", "ops", "chain", "rep")
INDUSTRIES: tuple[str, ...] = (
    "manufacturing", "wholesale_retail", "catering", "construction",
    "it_services", "logistics", "agriculture", "business_services",
)
_IND_SHARE = np.array([0.22, 0.26, 0.12, 0.08, 0.09, 0.08, 0.05, 0.10])
_IND_RISK = np.array([0.0, 0.1, 0.45, 0.35, -0.15, 0.15, 0.2, -0.05])
_IND_ONLINE = np.array([0.45, 0.8, 0.7, 0.08, 0.35, 0.2, 0.5, 0.25])
_IND_KWH_PER_CNY = np.array([0.12, 0.02, 0.05, 0.03, 0.015, 0.03, 0.06, 0.01])
_IND_SEASON_AMP = np.array([0.08, 0.15, 0.12, 0.2, 0.05, 0.1, 0.3, 0.05])
_IND_SEASON_PEAK = np.array([10, 11, 7, 5, 12, 11, 9, 12])  # calendar month of the peak

RHO = 0.95
TARGET_RATE = 0.05
"""Expected share of firms alive at the anchor month that default within the next 12 months."""
HAZARD_WEIGHTS = {"cash": 1.05, "sales": 0.9, "ops": 0.85, "chain": 0.7, "rep": 0.75}


@dataclass(frozen=True)
class WorldParams:
    n: int
    seed: int
    start: int
    """month index of the first simulated (and first written) month."""
    months: int
    """months simulated in total (written months + label horizon)."""
    anchor: int
    """month index firm ages are counted back from (the first as-of; kept when advancing)."""


@dataclass
class World:
    params: WorldParams
    uscc: np.ndarray
    industry: np.ndarray
    category: np.ndarray
    region: np.ndarray
    founded: np.ndarray
    """month index of registration."""
    size: np.ndarray
    """typical monthly revenue, CNY."""
    factors: dict[str, np.ndarray]
    """(n, months) value of each latent factor."""
    shock_kind: np.ndarray
    """(n, months) 0 none, 1 sales collapse, 2 platform collapse, 3 activity collapse."""
    default_month: np.ndarray
    """month index of default (int64 max when none within the simulated months)."""
    hazard: np.ndarray
    """(n, months) monthly default probability."""
    bank_customer: np.ndarray
    bank_since: np.ndarray
    tax_registered: np.ndarray
    tax_since: np.ndarray
    utility_metered: np.ndarray
    utility_since: np.ndarray
    online: np.ndarray
    platform_since: np.ndarray

    @property
    def months(self) -> np.ndarray:
        return self.params.start + np.arange(self.params.months)


NO_MONTH = np.iinfo(np.int64).max


def _geometric_lag(rng: np.random.Generator, mean: float, n: int) -> np.ndarray:
    return rng.geometric(1.0 / (1.0 + mean), size=n) - 1


def calibrate_intercept(score: np.ndarray, born: np.ndarray, params: WorldParams) -> float:
    """Hazard intercept giving a TARGET_RATE chance of default in the 12 months after the anchor.

    Shocks common to all firms (macro, industry) would otherwise swing the base rate from seed
    to seed. Only months up to anchor+12 are used, so an advanced world (simulated further)
    finds the same intercept and its past is unchanged.
    """
    a = params.anchor - params.start  # column of the anchor month
    lo, hi = -12.0, 0.0
    before = slice(0, a + 1)
    window = slice(a + 1, a + 13)
    alive_at_anchor = born[:, a]
    for _ in range(40):
        mid = (lo + hi) / 2
        p = np.where(born, 1.0 / (1.0 + np.exp(-(mid + score))), 0.0)
        survive = np.exp(np.log1p(-p[:, before]).sum(axis=1)) * alive_at_anchor
        default_in = 1.0 - np.exp(np.log1p(-p[:, window]).sum(axis=1))
        rate = (survive * default_in).sum() / max(survive.sum(), 1e-12)
        lo, hi = (mid, hi) if rate < TARGET_RATE else (lo, mid)
    return (lo + hi) / 2


def simulate_world(params: WorldParams) -> World:
    """Simulate static profiles, the latent factors, shocks and defaults (vectorised over firms)."""
    n, seed, start, total = params.n, params.seed, params.start, params.months
    srng = np.random.default_rng([seed, 0])

    industry = srng.choice(len(INDUSTRIES), size=n, p=_IND_SHARE / _IND_SHARE.sum())
    category = srng.choice([1, 2, 3], size=n, p=[0.8, 0.17, 0.03])
    weights = np.array([w for _, w in REGIONS])
    region = srng.choice(len(REGIONS), size=n, p=weights / weights.sum())
    young = srng.random(n) < 0.22
    age_young = srng.integers(3, 40, size=n)
    age_old = np.clip(np.exp(srng.normal(np.log(96), 0.6, size=n)), 40, 480).astype(np.int64)
    founded = params.anchor - np.where(young, age_young, age_old)
    post_reform = founded >= 2016 * 12
    uscc = make_usccs(srng, category, region, post_reform)
    size = np.exp(srng.normal(np.log(350_000), 0.9, size=n)) * np.where(category == 2, 0.25, 1.0)

    # Persistent firm quality per factor (partly shared: good firms tend to be good overall).
    shared = 0.35
    common_mean = srng.normal(size=n)
    mu = {f: 0.65 * (np.sqrt(shared) * common_mean + np.sqrt(1 - shared) * srng.normal(size=n))
          for f in FACTORS}
    state = {f: srng.normal(size=n) * 0.75 for f in FACTORS}

    # Coverage at each source (who ever has a relationship) and when it starts.
    bank_customer = srng.random(n) < 0.78
    bank_since = founded + _geometric_lag(srng, 5.0, n)
    tax_registered = srng.random(n) < np.where(category == 2, 0.82, 0.975)
    tax_since = founded + _geometric_lag(srng, 0.5, n)
    utility_metered = srng.random(n) < 0.91
    utility_since = founded + _geometric_lag(srng, 1.0, n)
    online = srng.random(n) < _IND_ONLINE[industry] * np.where(category == 2, 1.0, 0.95)
    platform_since = founded + _geometric_lag(srng, 10.0, n)

    factors = {f: np.empty((n, total)) for f in FACTORS}
    shock_kind = np.zeros((n, total), dtype=np.int8)
    score = np.zeros((n, total))
    born = np.zeros((n, total), dtype=bool)
    uniform = np.empty((n, total))
    macro = 0.0
    ind_level = np.zeros(len(INDUSTRIES))
    prov = np.array([code[:2] for code, _ in REGIONS])
    _, prov_idx = np.unique(prov, return_inverse=True)
    prov_level = np.zeros(prov_idx.max() + 1)
    innovation_sd = np.sqrt(1 - RHO**2)

    for t in range(total):
        m = start + t
        rng = np.random.default_rng([seed, 1, m])
        macro = 0.85 * macro + 0.06 * rng.normal()
        ind_level = 0.9 * ind_level + 0.12 * rng.normal(size=len(INDUSTRIES))
        prov_level = 0.9 * prov_level + 0.1 * rng.normal(size=len(prov_level))
        common = rng.normal(size=n)
        for f in FACTORS:
            eps = np.sqrt(0.25) * common + np.sqrt(0.75) * rng.normal(size=n)
            state[f] = RHO * state[f] + innovation_sd * 0.75 * eps
        # Idiosyncratic collapses (a key buyer lost, a store delisted, a production halt); firms
        # with concentrated customers are more exposed. They decay with the factor's persistence.
        fragile = (mu["chain"] + state["chain"]) < -0.8
        p_shock = 0.004 * np.where(fragile, 2.5, 1.0)
        hit = rng.random(n) < p_shock
        kind = rng.integers(1, 4, size=n)
        kind = np.where(hit, kind, 0)
        state["sales"] -= 1.6 * (kind == 1)
        state["rep"] -= 2.0 * (kind == 2)
        state["ops"] -= 1.6 * (kind == 3)
        state["cash"] -= 0.6 * (kind > 0)
        shock_kind[:, t] = kind
        env = macro + ind_level[industry] + prov_level[prov_idx[region]]
        age = m - founded
        for f in FACTORS:
            env_load = {"cash": 0.5, "sales": 1.0, "ops": 0.8, "chain": 0.2, "rep": 0.1}[f]
            factors[f][:, t] = mu[f] + state[f] + env_load * env
        score[:, t] = (_IND_RISK[industry] + 0.5 * (age < 24) + 0.2 * (category == 2)
                       - sum(HAZARD_WEIGHTS[f] * factors[f][:, t] for f in FACTORS if f != "rep")
                       - HAZARD_WEIGHTS["rep"] * factors["rep"][:, t] * online)
        born[:, t] = age >= 0
        uniform[:, t] = rng.random(n)

    intercept = calibrate_intercept(score, born, params)
    hazard = np.where(born, 1.0 / (1.0 + np.exp(-(intercept + score))), 0.0)
    hit_month = hazard > uniform
    has_default = hit_month.any(axis=1)
    default_month = np.where(has_default, start + np.argmax(hit_month, axis=1), NO_MONTH)
    default_month = default_month.astype(np.int64)

    return World(
        params=params, uscc=uscc, industry=industry, category=category, region=region,
        founded=founded, size=size, factors=factors, shock_kind=shock_kind,
        default_month=default_month, hazard=hazard, bank_customer=bank_customer,
        bank_since=bank_since, tax_registered=tax_registered, tax_since=tax_since,
        utility_metered=utility_metered, utility_since=utility_since, online=online,
        platform_since=platform_since,
    )
