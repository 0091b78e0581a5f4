"""Alert rules, the explanation-policy gate, TOML config, and sinks (a failing webhook loses nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from participants.monitoring.alerts import (
    AlertRules,
    ExplanationPolicy,
    JsonlSink,
    WebhookConfig,
    WebhookSink,
    dispatch,
    evaluate_rules,
    load_alert_config,
)
from protocols.errors import ConfigError
from tests.participants._monitoring_helpers import NOW, USCC_A, record

EXPLAIN = ExplanationPolicy(per_source_contributions=True)


def rules_of(alerts) -> set[str]:
    return {a.rule for a in alerts}


def test_pd_above_threshold_fires_even_without_history() -> None:
    rules = AlertRules(pd_above=0.10, pd_jump_points=None, grade_downgrade=None)
    assert rules_of(evaluate_rules(record(USCC_A, "2025-02", 0.12), None, rules, now=NOW)) == {"pd_above"}
    assert evaluate_rules(record(USCC_A, "2025-02", 0.09), None, rules, now=NOW) == []


def test_pd_jump_counts_percentage_points_month_over_month() -> None:
    rules = AlertRules(pd_above=None, pd_jump_points=5, grade_downgrade=None)
    prev = record(USCC_A, "2025-01", 0.02)
    [alert] = evaluate_rules(record(USCC_A, "2025-02", 0.075), prev, rules, now=NOW)
    assert alert.rule == "pd_jump" and alert.previous_pd == 0.02 and alert.previous_as_of == "2025-01"
    assert evaluate_rules(record(USCC_A, "2025-02", 0.065), prev, rules, now=NOW) == []
    assert evaluate_rules(record(USCC_A, "2025-02", 0.001), record(USCC_A, "2025-01", 0.2), rules, now=NOW) == []


@pytest.mark.parametrize("before, after, notches, fires", [
    (0.005, 0.02, 1, True),    # A -> B
    (0.005, 0.02, 2, False),   # one notch is not two
    (0.02, 0.20, 2, True),     # B -> E
    (0.20, 0.02, 1, False),    # an upgrade
])
def test_grade_downgrade(before: float, after: float, notches: int, fires: bool) -> None:
    rules = AlertRules(pd_above=None, pd_jump_points=None, grade_downgrade=notches)
    alerts = evaluate_rules(record(USCC_A, "2025-02", after), record(USCC_A, "2025-01", before), rules, now=NOW)
    assert rules_of(alerts) == ({"grade_downgrade"} if fires else set())


def test_source_signal_names_the_source_that_moved_the_score() -> None:
    rules = AlertRules(pd_above=None, pd_jump_points=None, grade_downgrade=None, source_shift=0.5, explanations=EXPLAIN)
    prev = record(USCC_A, "2025-01", 0.03, {"bank": -1.0, "tax": -0.5, "utility": 0.1})
    cur = record(USCC_A, "2025-02", 0.06, {"bank": -0.9, "tax": 0.4, "utility": 0.0})
    [alert] = evaluate_rules(cur, prev, rules, now=NOW)
    assert alert.rule == "source_shift"
    assert alert.reasons[0].source == "tax" and alert.reasons[0].change == pytest.approx(0.9)
    small = record(USCC_A, "2025-02", 0.04, {"bank": -0.9, "tax": -0.2, "utility": 0.1})
    assert evaluate_rules(small, prev, rules, now=NOW) == []


def test_explanations_are_off_by_default_and_then_never_attached() -> None:
    assert AlertRules().explanations.per_source_contributions is False
    with pytest.raises(ValidationError, match="explanation policy"):
        AlertRules(source_shift=0.5)
    prev = record(USCC_A, "2025-01", 0.03, {"bank": -1.0, "tax": -0.5})
    cur = record(USCC_A, "2025-02", 0.30, {"bank": -0.9, "tax": 1.5})
    alerts = evaluate_rules(cur, prev, AlertRules(), now=NOW)
    assert alerts and all(a.reasons == () for a in alerts)
    explained = evaluate_rules(cur, prev, AlertRules(explanations=EXPLAIN), now=NOW)
    assert all(a.reasons[0].source == "tax" for a in explained)


def test_unscored_enterprise_raises_no_alert() -> None:
    from participants.monitoring.watchlist import ScoreRecord

    missing = ScoreRecord(uscc=USCC_A, as_of="2025-02", scored=False)
    assert evaluate_rules(missing, record(USCC_A, "2025-01", 0.5), AlertRules(pd_above=0.01), now=NOW) == []


def test_alert_ids_are_stable_across_reruns() -> None:
    a = evaluate_rules(record(USCC_A, "2025-02", 0.5), None, AlertRules(), now=NOW)
    b = evaluate_rules(record(USCC_A, "2025-02", 0.5), None, AlertRules(), now=NOW)
    assert [x.alert_id for x in a] == [x.alert_id for x in b]


def test_toml_config_is_validated(tmp_path: Path) -> None:
    good = tmp_path / "alerts.toml"
    good.write_text('jsonl = "out/alerts.jsonl"\n[rules]\npd_above = 0.2\ngrade_downgrade = 2\n'
                    '[webhook]\nurl = "https://hooks.example/fedscore"\ntimeout = 3\n')
    cfg = load_alert_config(good)
    assert cfg.rules.pd_above == 0.2 and cfg.rules.grade_downgrade == 2 and cfg.webhook.timeout == 3
    bad = tmp_path / "bad.toml"
    bad.write_text("[rules]\npd_above = 1.5\n")
    with pytest.raises(ConfigError, match="rules.pd_above") as info:
        load_alert_config(bad)
    assert str(info.value).startswith(f"{bad}: rules.pd_above: ")  # the consortium's config-error wording
    typo = tmp_path / "typo.toml"
    typo.write_text("[rules]\npd_abve = 0.1\n")
    with pytest.raises(ConfigError, match="pd_abve"):
        load_alert_config(typo)


def _alerts():
    return evaluate_rules(record(USCC_A, "2025-02", 0.5), record(USCC_A, "2025-01", 0.01), AlertRules(), now=NOW)


def test_webhook_posts_the_alerts(tmp_path: Path) -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(204)

    alerts = _alerts()
    hook = WebhookSink(WebhookConfig(url="https://hooks.example/x"), client=httpx.Client(transport=httpx.MockTransport(handler)))
    report = dispatch(alerts, JsonlSink(tmp_path / "a.jsonl"), [hook])
    assert report.failed == () and report.alerts == len(alerts) == 3
    assert [a["alert_id"] for a in seen[0]["alerts"]] == [a.alert_id for a in alerts]


@pytest.mark.parametrize("failure", ["status", "connect", "timeout"])
def test_webhook_failure_keeps_every_alert_in_the_jsonl_file(tmp_path: Path, failure: str, caplog) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if failure == "status":
            return httpx.Response(503)
        if failure == "connect":
            raise httpx.ConnectError("refused", request=request)
        raise httpx.ReadTimeout("slow", request=request)

    alerts = _alerts()
    durable = JsonlSink(tmp_path / "alerts.jsonl")
    hook = WebhookSink(WebhookConfig(url="https://hooks.example/x", timeout=0.5),
                       client=httpx.Client(transport=httpx.MockTransport(handler)))
    report = dispatch(alerts, durable, [hook])
    assert report.failed == ("webhook",) and report.durable
    assert [a.alert_id for a in durable.read()] == [a.alert_id for a in alerts]
    assert "webhook failed" in caplog.text and USCC_A not in caplog.text
    dispatch(alerts, durable, [hook])  # appended, not overwritten
    assert len(durable.read()) == 2 * len(alerts)


def test_webhook_to_an_unreachable_port_times_out_and_keeps_alerts(tmp_path: Path) -> None:
    durable = JsonlSink(tmp_path / "alerts.jsonl")
    report = dispatch(_alerts(), durable, [WebhookSink(WebhookConfig(url="http://127.0.0.1:9/", timeout=1))])
    assert report.failed == ("webhook",) and len(durable.read()) == 3
    assert (durable.path.stat().st_mode & 0o777) == 0o600
