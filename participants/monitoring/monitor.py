"""One monitoring month: re-score the watchlist, keep the history, raise alerts, check stability.

Everything here runs at the lender. Entries whose grant has expired are skipped (and counted), so
the monitor never asks the holders for an enterprise it may no longer watch.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from participants.monitoring.alerts import AlertRules, AlertSink, DispatchReport, JsonlSink, dispatch, evaluate_rules
from participants.monitoring.errors import MonitoringError
from participants.monitoring.scorers import Scorer
from participants.monitoring.stability import StabilityReport, score_stability
from participants.monitoring.watchlist import Watchlist, check_month
from protocols.consent import utc_now

MIN_PSI_SAMPLE = 20
"""Below this many scores a PSI over deciles is noise; the run reports none."""


class RunSummary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    as_of: str
    previous_as_of: str | None
    watched: int
    expired: int
    scored: int
    unscored: int
    alerts: int
    alerts_by_rule: dict[str, int]
    failed_sinks: tuple[str, ...] = ()
    stability: StabilityReport | None = None


def run_month(watchlist: Watchlist, scorer: Scorer, as_of: str, rules: AlertRules, durable: JsonlSink,
              sinks: Sequence[AlertSink] = (), *, now: datetime | None = None) -> RunSummary:
    """Score every watched enterprise with a live grant for ``as_of`` and act on the result. Scores
    the scorer reports for another month are refused (:class:`MonitoringError`) before anything is stored."""
    check_month(as_of)
    now = now or utc_now()
    entries = watchlist.entries()
    live = [e for e in entries if e.active(now)]
    records = scorer.score([(e.uscc, e.grant_json) for e in live], as_of)
    other = sorted({r.as_of for r in records} - {as_of})
    if other:
        months = ", ".join(m or "no month" for m in other)
        raise MonitoringError(f"asked for {as_of}, but scores came back as of {months}; nothing stored")
    previous_month = watchlist.previous_month(as_of)
    previous = watchlist.scores(previous_month) if previous_month else {}
    watchlist.record(records)
    alerts = [a for r in records for a in evaluate_rules(r, previous.get(r.uscc), rules, now=now)]
    report: DispatchReport = dispatch(alerts, durable, sinks)
    by_rule: dict[str, int] = {}
    for a in alerts:
        by_rule[a.rule] = by_rule.get(a.rule, 0) + 1
    stability = None
    current_pds = [r.pd for r in records if r.scored and r.pd is not None]
    previous_pds = [r.pd for r in previous.values() if r.scored and r.pd is not None]
    if min(len(current_pds), len(previous_pds)) >= MIN_PSI_SAMPLE and previous_month is not None:
        stability = score_stability(previous_pds, current_pds, reference=previous_month, current=as_of)
    scored = sum(r.scored for r in records)
    return RunSummary(
        as_of=as_of, previous_as_of=previous_month, watched=len(entries), expired=len(entries) - len(live),
        scored=scored, unscored=len(records) - scored, alerts=len(alerts), alerts_by_rule=by_rule,
        failed_sinks=report.failed, stability=stability,
    )
