"""The monitor through the real encrypted path (gateway + responders on loopback, mutual TLS, CKKS,
each holder's real consent guard checking purpose ``monitoring``) gives the same PDs as the
plaintext reference the early-warning evaluation uses."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from bench.bench_scoring import start_deployment
from crypto.ckks_keys import LenderKeyPair
from participants.monitoring.alerts import AlertRules, JsonlSink
from participants.monitoring.monitor import run_month
from participants.monitoring.scorers import PlaintextScorer, SdkScorer
from participants.monitoring.watchlist import Watchlist
from tests.protocols.test_scoring import cached_world

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return cached_world(tmp_path_factory)


@pytest.fixture(scope="module")
def client(world):
    state = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    guards = {h: world.guard(h, state / h) for h in world.holders}
    deployment = start_deployment(world, guards)
    c = deployment.lender(world, LenderKeyPair.generate(), timeout=60)
    c.register()
    yield c
    deployment.stop()


def test_encrypted_monitoring_matches_the_plaintext_reference(world, client, tmp_path) -> None:
    watchlist = Watchlist(tmp_path / "lender", "lender")
    usccs = world.universe()[:40]
    for u in usccs:
        watchlist.add(u, world.grant(u, purpose="monitoring"))
    summary = run_month(watchlist, SdkScorer(client, batch=16), "2025-01", AlertRules(), JsonlSink(tmp_path / "a.jsonl"))
    assert summary.scored == 40 and summary.unscored == 0
    stored = watchlist.scores("2025-01")
    reference = PlaintextScorer({h: world.store(h).load_bottom(world.model_ref) for h in world.holders}, world.spec,
                                lambda _month: world.features, model_ref=world.model_ref)
    expected = {r.uscc: r.pd for r in reference.score([(u, "") for u in usccs], "2025-01")}
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
        scorer.score([(u, world.grant(u, purpose="scoring").model_dump_json())], "2025-01")
