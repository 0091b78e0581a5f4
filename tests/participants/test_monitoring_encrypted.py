"""The monitor through the real encrypted path (gateway + responders on loopback, mutual TLS, CKKS,
each holder's real consent guard checking purpose ``monitoring``) gives the same PDs as the
plaintext reference the early-warning evaluation uses, month by month: the holders score each
month's features and the history stores the month they reported."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from bench.bench_scoring import start_deployment
from crypto.ckks_keys import LenderKeyPair
from participants.monitoring.alerts import AlertRules, JsonlSink
from participants.monitoring.errors import MonitoringError
from participants.monitoring.monitor import run_month
from participants.monitoring.scorers import PlaintextScorer, SdkScorer
from participants.monitoring.watchlist import Watchlist
from protocols.scoring import MonthNotAvailable
from tests.participants._monitoring_helpers import TableScorer
from tests.participants.test_scoring_responder import EARLIER, LAST, month_pd, monthly_core
from tests.protocols.test_scoring import cached_world

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return cached_world(tmp_path_factory)


@pytest.fixture(scope="module")
def deployment(world):
    state = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    guards = {h: world.guard(h, state / h) for h in world.holders}
    dep = start_deployment(world, guards, responder_core=monthly_core(world))
    yield dep
    dep.stop()


@pytest.fixture(scope="module")
def client(world, deployment):
    c = deployment.lender(world, LenderKeyPair.generate(), timeout=60)
    c.register()
    return c


def test_encrypted_monitoring_matches_the_plaintext_reference(world, client, tmp_path) -> None:
    watchlist = Watchlist(tmp_path / "lender", "lender")
    usccs = world.universe()[:40]
    for u in usccs:
        watchlist.add(u, world.grant(u, purpose="monitoring"))
    summary = run_month(watchlist, SdkScorer(client, batch=16), LAST, AlertRules(), JsonlSink(tmp_path / "a.jsonl"))
    assert summary.scored == 40 and summary.unscored == 0
    stored = watchlist.scores(LAST)
    reference = PlaintextScorer({h: world.store(h).load_bottom(world.model_ref) for h in world.holders}, world.spec,
                                lambda _month: world.features, model_ref=world.model_ref)
    expected = {r.uscc: r.pd for r in reference.score([(u, "") for u in usccs], LAST)}
    assert set(stored) == set(usccs)
    assert max(abs(stored[u].pd - expected[u]) for u in usccs) < 1e-4
    assert np.std([r.pd for r in stored.values()]) > 1e-3  # distinct enterprises, not one repeated value
    assert all(r.sources == tuple(world.holders) for r in stored.values())


def test_a_scoring_grant_cannot_be_used_to_monitor(world, client, tmp_path) -> None:
    """Holders refuse a grant whose purpose is not monitoring (here for the label holder too, so
    the enterprise is left unscored rather than scored from fewer sources)."""
    from protocols.scoring import NotAuthorized

    u = world.universe()[50]
    scorer = SdkScorer(client)
    with pytest.raises(NotAuthorized, match="wrong_purpose"):
        scorer.score([(u, world.grant(u, purpose="scoring").model_dump_json())], LAST)


def test_each_month_is_scored_with_that_months_features(world, client, tmp_path) -> None:
    watchlist = Watchlist(tmp_path / "lender", "lender")
    usccs = world.universe()[100:124]
    for u in usccs:
        watchlist.add(u, world.grant(u, purpose="monitoring"))
    scorer = SdkScorer(client)
    for month in (EARLIER, LAST):
        run_month(watchlist, scorer, month, AlertRules(), JsonlSink(tmp_path / "a.jsonl"))
    assert watchlist.months() == [EARLIER, LAST]
    stored = {m: watchlist.scores(m) for m in (EARLIER, LAST)}
    for month, scores in stored.items():
        assert np.max(np.abs(np.array([scores[u].pd for u in usccs]) - month_pd(world, usccs, month))) < 1e-4
        assert all(r.as_of == month for r in scores.values())
    assert max(abs(stored[EARLIER][u].pd - stored[LAST][u].pd) for u in usccs) > 1e-3
    with pytest.raises(MonthNotAvailable, match=f"month 2025-01 is beyond bank's data, which ends at {LAST}"):
        run_month(watchlist, scorer, "2025-01", AlertRules(), JsonlSink(tmp_path / "a.jsonl"))
    assert watchlist.months() == [EARLIER, LAST]


def test_scores_reported_for_another_month_are_not_stored(tmp_path) -> None:
    from tests.participants._monitoring_helpers import NOW, USCC_A, grant, record
    from crypto.identity import IdentityKey

    class WrongMonth(TableScorer):
        def score(self, subjects, as_of):
            return [record(u, "2025-01", 0.02) for u, _ in subjects]

    watchlist = Watchlist(tmp_path / "lender", "lender")
    watchlist.add(USCC_A, grant(IdentityKey.generate(), USCC_A), now=NOW)
    with pytest.raises(MonitoringError, match="asked for 2025-02, but scores came back as of 2025-01; nothing stored"):
        run_month(watchlist, WrongMonth({}), "2025-02", AlertRules(), JsonlSink(tmp_path / "a.jsonl"), now=NOW)
    assert watchlist.months() == []


def test_monitor_run_scores_the_month_it_names(world, deployment, client, tmp_path) -> None:
    from typer.testing import CliRunner

    from fedscore import build_app

    client.keys.save(tmp_path / "lender.ckks")
    state = tmp_path / "lender"
    watchlist = Watchlist(state, "lender")
    usccs = world.universe()[130:136]
    for u in usccs:
        watchlist.add(u, world.grant(u, purpose="monitoring"))
    common = ["--state-dir", str(state), "--key", str(tmp_path / "lender.ckks"), "--gateway", deployment.address,
              "--pki", str(world.pki.root), "--json"]
    run = CliRunner().invoke(build_app(), ["monitor", "run", "--as-of", EARLIER, *common])
    assert run.exit_code == 0, run.output
    stored = watchlist.scores(EARLIER)
    assert np.max(np.abs(np.array([stored[u].pd for u in usccs]) - month_pd(world, usccs, EARLIER))) < 1e-4
    future = CliRunner().invoke(build_app(), ["monitor", "run", "--as-of", "2025-03", *common])
    assert isinstance(future.exception, MonthNotAvailable) and "month 2025-03 is beyond" in str(future.exception)
    assert watchlist.months() == [EARLIER]
