"""Watchlist: a monitoring grant is required, entries and history persist, a month's run."""

from __future__ import annotations

import os
import sqlite3
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from crypto.identity import IdentityKey
from participants.monitoring.alerts import AlertRules, JsonlSink, WebhookConfig, WebhookSink
from participants.monitoring.cli import app
from participants.monitoring.errors import GrantRequired, MonitoringError
from participants.monitoring.monitor import run_month
from participants.monitoring.watchlist import Watchlist
from tests.participants._monitoring_helpers import NOW, USCC_A, TableScorer, grant, record
from protocols.errors import ConfigError

USCC_B = "91110000MA01ABCD1M"
USCC_C = "91330100MA2AAAAA1E"


@pytest.fixture(scope="module")
def authority() -> IdentityKey:
    return IdentityKey.generate()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "lender-state"


@pytest.mark.parametrize("change, why", [
    ({"purpose": "scoring"}, "monitoring"),
    ({"lender": "other-bank"}, "other-bank"),
    ({"days": 10, "start": NOW - timedelta(days=30)}, "expired"),
])
def test_adding_needs_a_live_monitoring_grant_for_this_lender(state, authority, change, why) -> None:
    watchlist = Watchlist(state, "lender")
    with pytest.raises(GrantRequired, match=why):
        watchlist.add(USCC_A, grant(authority, USCC_A, **change), now=NOW)
    assert len(watchlist) == 0


def test_grant_for_another_enterprise_or_not_a_grant_is_refused(state, authority) -> None:
    watchlist = Watchlist(state, "lender")
    with pytest.raises(GrantRequired, match="another enterprise"):
        watchlist.add(USCC_A, grant(authority, USCC_B), now=NOW)
    with pytest.raises(GrantRequired, match="not a consent grant"):
        watchlist.add(USCC_A, '{"terms": {}}', now=NOW)


def test_signature_is_checked_when_the_authority_key_is_given(state, authority) -> None:
    forged = grant(IdentityKey.generate(), USCC_A)
    watchlist = Watchlist(state, "lender")
    with pytest.raises(GrantRequired, match="not signed"):
        watchlist.add(USCC_A, forged, now=NOW, authority_key=authority.public_key)
    watchlist.add(USCC_A, grant(authority, USCC_A), now=NOW, authority_key=authority.public_key)
    assert [e.uscc for e in watchlist.entries()] == [USCC_A]


def test_entries_grants_and_history_survive_a_restart(state, authority) -> None:
    g = grant(authority, USCC_A)
    first = Watchlist(state, "lender")
    first.add(USCC_A, g, now=NOW, note="loan 17")
    first.add(USCC_B, grant(authority, USCC_B), now=NOW)
    first.record([record(USCC_A, "2025-01", 0.02, {"bank": -1.0}), record(USCC_A, "2025-02", 0.04)])
    again = Watchlist(state, "lender")
    entry = again.get(USCC_A)
    assert entry is not None and entry.grant_id == g.grant_id and entry.note == "loan 17"
    assert entry.grant_json == g.model_dump_json()
    history = again.history(USCC_A)
    assert [(r.as_of, r.pd) for r in history] == [("2025-01", 0.02), ("2025-02", 0.04)]
    assert history[0].contributions == {"bank": -1.0} and history[1].contributions is None
    assert again.previous_month("2025-02") == "2025-01" and again.previous_month("2025-01") is None
    assert (again.path.stat().st_mode & 0o777) == 0o600
    assert again.remove(USCC_B) and not again.remove(USCC_B)
    assert [e.uscc for e in Watchlist(state, "lender").entries()] == [USCC_A]
    again.remove(USCC_A, purge_history=True)
    assert again.history(USCC_A) == []


def test_run_month_scores_live_entries_stores_history_and_alerts(state, authority, tmp_path) -> None:
    watchlist = Watchlist(state, "lender")
    watchlist.add(USCC_A, grant(authority, USCC_A), now=NOW)
    watchlist.add(USCC_B, grant(authority, USCC_B), now=NOW)
    watchlist.add(USCC_C, grant(authority, USCC_C, days=20), now=NOW)  # expires before the 2nd run
    scorer = TableScorer({"2025-02": {USCC_A: 0.01, USCC_B: 0.02, USCC_C: 0.02},
                          "2025-03": {USCC_A: 0.09, USCC_B: 0.021, USCC_C: 0.5}})
    durable = JsonlSink(tmp_path / "alerts.jsonl")
    rules = AlertRules(pd_above=0.5, pd_jump_points=5, grade_downgrade=2)
    first = run_month(watchlist, scorer, "2025-02", rules, durable, now=NOW)
    assert (first.scored, first.alerts, first.previous_as_of) == (3, 0, None)

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500)

    hook = WebhookSink(WebhookConfig(url="https://hooks.example/x"), client=httpx.Client(transport=httpx.MockTransport(refuse)))
    second = run_month(watchlist, scorer, "2025-03", rules, durable, [hook], now=NOW + timedelta(days=30))
    assert sorted(scorer.calls[-1]) == sorted([USCC_A, USCC_B])  # the expired grant is never sent
    assert (second.watched, second.expired, second.scored, second.previous_as_of) == (3, 1, 2, "2025-02")
    assert second.alerts_by_rule == {"pd_jump": 1, "grade_downgrade": 1}
    assert second.failed_sinks == ("webhook",)
    assert {(a.uscc, a.rule) for a in durable.read()} == {(USCC_A, "pd_jump"), (USCC_A, "grade_downgrade")}
    assert [r.pd for r in watchlist.history(USCC_A)] == [0.01, 0.09]


def test_cli_add_refuses_a_scoring_grant_and_accepts_a_monitoring_one(state, authority, tmp_path) -> None:
    runner = CliRunner()
    bad = tmp_path / "scoring.json"
    bad.write_text(grant(authority, USCC_A, purpose="scoring", start=_now()).model_dump_json())
    result = runner.invoke(app, ["monitor", "add", "--grant", str(bad), "--state-dir", str(state)])
    assert isinstance(result.exception, GrantRequired)
    good = tmp_path / "monitoring.jsonl"
    good.write_text("\n".join(grant(authority, u, start=_now()).model_dump_json() for u in (USCC_A, USCC_B)))
    result = runner.invoke(app, ["monitor", "add", "--grant", str(good), "--state-dir", str(state)])
    assert result.exit_code == 0, result.output
    listed = runner.invoke(app, ["monitor", "list", "--json", "--state-dir", str(state)])
    assert sorted(line.split('"')[3] for line in listed.output.splitlines()) == sorted([USCC_A, USCC_B])


def _now():
    from protocols.consent import utc_now

    return utc_now()


def test_watchlist_file_is_private_and_in_wal_mode(state) -> None:
    watchlist = Watchlist(state, "lender")
    assert len(watchlist) == 0
    assert os.stat(watchlist.path).st_mode & 0o777 == 0o600
    assert sqlite3.connect(watchlist.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_file_that_is_not_a_watchlist_is_a_monitoring_error(tmp_path: Path) -> None:
    folder = tmp_path / "monitoring"
    folder.mkdir()
    (folder / "watchlist.sqlite3").write_bytes(b"not a database" * 512)
    with pytest.raises(MonitoringError, match="not a watchlist database"):
        Watchlist(tmp_path, "lender")


def test_cli_run_refuses_a_malformed_webhook_url_in_one_line(state, tmp_path) -> None:
    result = CliRunner().invoke(app, ["monitor", "run", "--as-of", "2024-12", "--state-dir", str(state),
                                      "--webhook", "not-a-url", "--key", str(tmp_path / "none.ckks")])
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception).startswith("--webhook: url: ") and "not-a-url" not in str(result.exception)


@pytest.mark.parametrize("flag, value, named", [
    ("--pd-above", "5", "--pd-above: Input should be less than 1 (got 5.0)"),
    ("--pd-jump", "0", "--pd-jump: Input should be greater than 0 (got 0.0)"),
    ("--downgrade", "9", "--downgrade: Input should be less than or equal to 4 (got 9)"),
    ("--source-shift", "-1", "--source-shift: Input should be greater than 0 (got -1.0)"),
])
def test_cli_run_names_the_alert_option_out_of_range(capsys, state, tmp_path, flag, value, named) -> None:
    from tests.test_cli import run_here

    result = run_here(capsys, "monitor", "run", "--as-of", "2024-12", "--state-dir", str(state), flag, value,
                 "--key", str(tmp_path / "none.ckks"))
    assert result.returncode != 0
    assert result.stderr.strip() == f"error: {named}"
    assert "Traceback" not in result.stdout + result.stderr



@pytest.mark.parametrize("args", [
    ["monitor", "list"],
    ["monitor", "remove", USCC_B],
    ["monitor", "run", "--as-of", "2024-12"],
], ids=["list", "remove", "run"])
@pytest.mark.parametrize("made", [False, True], ids=["missing", "empty"])
def test_cli_reading_commands_refuse_a_state_folder_without_a_watchlist_and_create_nothing(tmp_path, capsys,
                                                                                           args, made) -> None:
    from tests.test_cli import run_in_process

    state = tmp_path / "typo"
    if made:
        state.mkdir()
    code, output = run_in_process(capsys, *args, "--state-dir", str(state), *(
        ["--pki", str(tmp_path / "no-pki"), "--key", str(tmp_path / "none.ckks")] if "run" in args else []))
    assert code != 0 and "Traceback" not in output
    assert output.strip().startswith(f"error: state folder {state} ") and "watchlist" in output
    assert "no-pki" not in output and "none.ckks" not in output  # the state is checked before keys and certificates
    assert state.is_dir() == made and (not made or not list(state.iterdir()))  # nothing created there


def test_cli_run_names_a_malformed_month_before_the_missing_state_and_pki(tmp_path, capsys) -> None:
    from tests.test_cli import run_in_process

    state = tmp_path / "lender-state"
    code, output = run_in_process(capsys, "monitor", "run", "--as-of", "2024-13", "--state-dir", str(state),
                                  "--pki", str(tmp_path / "no-pki"), "--key", str(tmp_path / "none.ckks"))
    assert code != 0 and "Traceback" not in output
    assert output.strip() == "error: --as-of: month '2024-13' is not YYYY-MM"
    assert not state.exists()
