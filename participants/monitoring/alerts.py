"""Alert rules the lender configures, and where alerts go.

Rules compare an enterprise's score this month with its previous one: PD above a threshold, PD up
by N percentage points, a grade downgrade of N notches, and — only when the consortium's
explanation policy allows per-source contributions — a source whose contribution to the logit rose
by at least a set amount (reason codes: which holder's data moved the score).

Sinks: the JSON-lines file is written first and fsynced: it is the lender's durable record, so an
alert is never lost when the console or the webhook fails. Webhook failures are logged without any
identifier and counted in the :class:`DispatchReport`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tomllib
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator
from rich.console import Console
from rich.table import Table

from participants.monitoring.watchlist import ScoreRecord
from protocols.consent import UTCDatetime, utc_now
from protocols.consortium import validate_settings
from protocols.errors import ConfigError
from protocols.scoring import GRADE_BANDS

log = logging.getLogger(__name__)

GRADES: tuple[str, ...] = tuple(g for g, _ in GRADE_BANDS)
RuleName = Literal["pd_above", "pd_jump", "grade_downgrade", "source_shift"]


class ExplanationPolicy(BaseModel):
    """What the consortium allows a lender to learn beyond the score. Off by default: per-source
    contributions reveal how each holder's data moved a score, which the holders must agree to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_source_contributions: bool = False


class AlertRules(BaseModel):
    """Thresholds; ``None`` disables a rule."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pd_above: float | None = Field(default=0.15, gt=0, lt=1, description="alert when PD exceeds this")
    pd_jump_points: float | None = Field(default=5.0, gt=0, le=100,
                                         description="alert when PD rises by this many percentage points")
    grade_downgrade: int | None = Field(default=1, ge=1, le=len(GRADE_BANDS) - 1,
                                        description="alert when the grade falls by this many notches")
    source_shift: float | None = Field(default=None, gt=0,
                                       description="alert when a source's logit contribution rises this much")
    explanations: ExplanationPolicy = ExplanationPolicy()

    @model_validator(mode="after")
    def _source_rule_needs_policy(self) -> "AlertRules":
        if self.source_shift is not None and not self.explanations.per_source_contributions:
            raise ValueError("source_shift needs explanations.per_source_contributions = true "
                             "(the consortium's explanation policy)")
        return self


class WebhookConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    url: HttpUrl
    timeout: float = Field(default=5.0, gt=0, le=120)


class AlertConfig(BaseModel):
    """The ``[rules]``, ``[sinks]`` TOML a lender keeps next to its watchlist."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: AlertRules = AlertRules()
    jsonl: Path | None = None
    webhook: WebhookConfig | None = None


def load_alert_config(path: str | os.PathLike[str]) -> AlertConfig:
    """Read and validate an alert TOML; problems become one :class:`ConfigError` naming the key."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return validate_settings(AlertConfig, data, str(path))


class SourceReason(BaseModel):
    """How much one holder's contribution to the logit moved since the previous month."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    before: float
    after: float

    @property
    def change(self) -> float:
        return self.after - self.before


class Alert(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    alert_id: str
    rule: RuleName
    uscc: str
    as_of: str
    previous_as_of: str | None = None
    pd: float
    previous_pd: float | None = None
    grade: str | None = None
    previous_grade: str | None = None
    message: str
    reasons: tuple[SourceReason, ...] = ()
    model_ref: str = ""
    created_at: UTCDatetime


def _alert_id(rule: str, uscc: str, as_of: str, model_ref: str) -> str:
    """Deterministic: re-running a month yields the same ids, so receivers can de-duplicate."""
    return hashlib.sha256(f"{rule}|{uscc}|{as_of}|{model_ref}".encode()).hexdigest()[:24]


def source_reasons(current: ScoreRecord, previous: ScoreRecord | None) -> tuple[SourceReason, ...]:
    """Per-source contribution changes, largest rise first (empty without contributions)."""
    if current.contributions is None or previous is None or previous.contributions is None:
        return ()
    sources = sorted(set(current.contributions) | set(previous.contributions))
    reasons = [SourceReason(source=s, before=previous.contributions.get(s, 0.0), after=current.contributions.get(s, 0.0))
               for s in sources]
    return tuple(sorted(reasons, key=lambda r: -r.change))


def evaluate_rules(current: ScoreRecord, previous: ScoreRecord | None, rules: AlertRules,
                   *, now: datetime | None = None) -> list[Alert]:
    """Alerts for one enterprise this month (pure: no I/O)."""
    if not current.scored or current.pd is None:
        return []
    prev = previous if previous is not None and previous.scored and previous.pd is not None else None
    allowed = rules.explanations.per_source_contributions
    reasons = source_reasons(current, prev) if allowed else ()
    now = now or utc_now()
    out: list[Alert] = []

    def add(rule: RuleName, message: str) -> None:
        out.append(Alert(
            alert_id=_alert_id(rule, current.uscc, current.as_of, current.model_ref), rule=rule, uscc=current.uscc,
            as_of=current.as_of, previous_as_of=prev.as_of if prev else None, pd=current.pd,
            previous_pd=prev.pd if prev else None, grade=current.grade, previous_grade=prev.grade if prev else None,
            message=message, reasons=reasons, model_ref=current.model_ref, created_at=now,
        ))

    if rules.pd_above is not None and current.pd > rules.pd_above:
        add("pd_above", f"PD {current.pd:.1%} above {rules.pd_above:.1%}")
    if prev is None:
        return out
    if rules.pd_jump_points is not None:
        jump = (current.pd - prev.pd) * 100
        if jump >= rules.pd_jump_points:
            add("pd_jump", f"PD up {jump:.1f} points ({prev.pd:.1%} -> {current.pd:.1%})")
    if rules.grade_downgrade is not None and current.grade in GRADES and prev.grade in GRADES:
        notches = GRADES.index(current.grade) - GRADES.index(prev.grade)
        if notches >= rules.grade_downgrade:
            add("grade_downgrade", f"grade {prev.grade} -> {current.grade}")
    if allowed and rules.source_shift is not None and reasons and reasons[0].change >= rules.source_shift:
        top = reasons[0]
        add("source_shift", f"{top.source} moved the logit by {top.change:+.2f}")
    return out


# ---------------------------------------------------------------------------------------------
# Sinks
# ---------------------------------------------------------------------------------------------


class AlertSink(Protocol):
    name: str

    def emit(self, alerts: Sequence[Alert]) -> None: ...


class JsonlSink:
    """Append-only JSON lines, fsynced: the durable copy of every alert (0600, lender side)."""

    name = "jsonl"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def emit(self, alerts: Sequence[Alert]) -> None:
        if not alerts:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            for alert in alerts:
                fh.write(alert.model_dump_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read(self) -> list[Alert]:
        if not self.path.exists():
            return []
        return [Alert.model_validate_json(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line]


class ConsoleSink:
    """A rich table on the lender's terminal."""

    name = "console"

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)

    def emit(self, alerts: Sequence[Alert]) -> None:
        if not alerts:
            return
        table = Table("as of", "uscc", "rule", "PD", "grade", "why", title=f"{len(alerts)} alert(s)")
        for a in alerts:
            why = a.message
            if a.reasons:
                why += "; " + ", ".join(f"{r.source} {r.change:+.2f}" for r in a.reasons[:2])
            grade = a.grade or "-"
            if a.previous_grade and a.previous_grade != a.grade:
                grade = f"{a.previous_grade}->{grade}"
            table.add_row(a.as_of, a.uscc, a.rule, f"{a.pd:.2%}", grade, why, style="red" if a.rule == "pd_above" else None)
        self.console.print(table)


class WebhookSink:
    """POSTs ``{"alerts": [...]}`` as JSON to the lender's own endpoint, with a timeout."""

    name = "webhook"

    def __init__(self, config: WebhookConfig, *, client: httpx.Client | None = None) -> None:
        self.config = config
        self._client = client

    def emit(self, alerts: Sequence[Alert]) -> None:
        if not alerts:
            return
        body = {"alerts": [json.loads(a.model_dump_json()) for a in alerts]}
        client = self._client or httpx.Client(timeout=self.config.timeout)
        try:
            response = client.post(str(self.config.url), json=body, timeout=self.config.timeout)
            response.raise_for_status()
        finally:
            if self._client is None:
                client.close()


class DispatchReport(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    alerts: int
    durable: bool = Field(description="written to the JSON-lines file")
    failed: tuple[str, ...] = Field(default=(), description="sinks that failed (their alerts stay in the file)")


def dispatch(alerts: Sequence[Alert], durable: JsonlSink, others: Sequence[AlertSink] = ()) -> DispatchReport:
    """JSON lines first (errors propagate: no durable copy, no run), then every other sink,
    whose failures are logged and reported but never stop the run or lose an alert."""
    durable.emit(alerts)
    failed = []
    for sink in others:
        try:
            sink.emit(alerts)
        except Exception as exc:  # a sink is someone else's system: any failure is contained
            failed.append(sink.name)
            log.warning("alert sink %s failed for %d alert(s): %s; they remain in %s",
                        sink.name, len(alerts), type(exc).__name__, durable.path.name)
    return DispatchReport(alerts=len(alerts), durable=True, failed=tuple(failed))
