"""Participant side of vertical training: PSI steps, node resolution, state that survives a fresh process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from participants.datasets.ids import synthetic_usccs
from participants.handlers import vertical as handlers
from participants.handlers.psi import PsiParty
from protocols.errors import ConfigError, DuplicateIdentifier, ProtocolViolation
from protocols.vertical import VerticalPlan

pytestmark = pytest.mark.timeout(60)

IDS = synthetic_usccs("handler-test", range(260))


def run_psi(tmp_path: Path, label_ids: list[str], peer_ids: dict[str, list[str]]):
    lh = PsiParty(tmp_path / "L", "bank", "bank", "dom/1")
    peers = {n: PsiParty(tmp_path / n, n, "bank", "dom/1") for n in peer_ids}
    b_lh = lh.blind(label_ids)
    b_peers = {n: p.blind(peer_ids[n]) for n, p in peers.items()}
    names = sorted(peers)
    tags_lh = lh.reblind(names, [b_peers[n].blinded for n in names], [b_peers[n].tag_key for n in names])
    tags_peer = {n: peers[n].reblind(["bank"], [b_lh.blinded], [b_lh.tag_key])[0] for n in names}
    a_lh = lh.match(names, [tags_peer[n] for n in names])
    a_peers = {n: peers[n].match(["bank"], [tags_lh[i]]) for i, n in enumerate(names)}
    return a_lh, a_peers, (b_lh, b_peers, tags_lh, tags_peer)


def test_psi_aligns_every_party_to_the_label_holders_shuffled_rows(tmp_path) -> None:
    bank, tax, util = IDS[:150], IDS[100:260][::-1], IDS[::3]
    a_lh, a_peers, _ = run_psi(tmp_path, bank, {"tax": tax, "utility": util})
    universe = [bank[r] for r in a_lh.own_rows]
    assert sorted(universe) == sorted(bank) and a_lh.universe == 150
    assert universe != bank  # the universe order is a secret shuffle, not the bank's file order
    for name, own in (("tax", tax), ("utility", util)):
        a = a_peers[name]
        assert a.universe == 150
        assert [own[r] for r in a.own_rows] == [universe[u] for u in a.universe_pos]
        assert {universe[u] for u in np.flatnonzero(a_lh.coverage[name])} == set(bank) & set(own)


def test_psi_messages_cannot_be_matched_by_the_relay(tmp_path) -> None:
    _, _, (b_lh, b_peers, tags_lh, tags_peer) = run_psi(tmp_path, IDS[:120], {"tax": IDS[:120]})
    # same ids on both sides, yet no blinded value and no tag repeats across the two directions
    lh_points = {b_lh.blinded[i:i + 32] for i in range(0, len(b_lh.blinded), 32)}
    tax_points = {b_peers["tax"].blinded[i:i + 32] for i in range(0, len(b_peers["tax"].blinded), 32)}
    assert not lh_points & tax_points
    one = {tags_lh[0][i:i + 16] for i in range(0, len(tags_lh[0]), 16)}
    other = {tags_peer["tax"][i:i + 16] for i in range(0, len(tags_peer["tax"]), 16)}
    assert len(one) == 120 and not one & other


def test_psi_refuses_bad_input_and_steps_out_of_order(tmp_path) -> None:
    party = PsiParty(tmp_path / "x", "tax", "bank", "d")
    with pytest.raises(ProtocolViolation, match="invalid USCC"):
        party.blind(["not-a-code"])
    with pytest.raises(DuplicateIdentifier):
        party.blind([IDS[0], IDS[0]])
    with pytest.raises(ProtocolViolation, match="out of order"):
        PsiParty(tmp_path / "y", "tax", "bank", "d").reblind(["bank"], [b"\x00" * 32], [b"\x00" * 32])
    party.blind(IDS[:5])
    with pytest.raises(ProtocolViolation, match="label holder's set only"):
        party.reblind(["utility"], [b"\x00" * 32], [b"\x00" * 32])


def test_resolve_env_maps_simulation_and_deployment_nodes(tmp_path) -> None:
    from tests.coordinator.test_vertical_workflow import write_consortium

    path, _ = write_consortium(tmp_path / "data", n=40)
    sim = handlers.resolve_env({"partition-id": 1}, {"consortium": str(path), "node-state-root": str(tmp_path / "s")}, 5)
    assert sim.name == "tax" and sim.state_dir == tmp_path / "s" / "tax" and not sim.is_label_holder
    dep = handlers.resolve_env({"node-name": "bank", "consortium": str(path), "state-dir": str(tmp_path / "b")}, {}, 5)
    assert dep.is_label_holder and dep.state_dir == tmp_path / "b"
    assert dep.session == sim.session == "vfltest/vertical/run-5"
    default = handlers.resolve_env({"node-name": "utility"}, {"consortium": str(path)}, 5)
    assert default.state_dir == default.data_dir / "state"
    with pytest.raises(ConfigError, match="partition-id 3"):
        handlers.resolve_env({"partition-id": 3}, {"consortium": str(path)}, 5)
    with pytest.raises(ConfigError, match="no consortium"):
        handlers.resolve_env({"partition-id": 0}, {}, 5)


def test_trainer_state_survives_a_fresh_process(tmp_path) -> None:
    """Save after a forward, reload: same weights, same optimiser moments, same pending batches."""
    torch.set_num_threads(1)
    from tests.coordinator.test_vertical_workflow import write_consortium

    path, _ = write_consortium(tmp_path / "data", n=200)
    env = handlers.resolve_env({"partition-id": 0}, {"consortium": str(path), "node-state-root": str(tmp_path / "s")}, 9)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    x[::7] = np.nan  # missing cells are imputed from the training rows
    handlers._save_npz(env.run_dir / "aligned.npz", {"x": x, "present": np.ones(200, bool), "labels": (rng.random(200) < 0.3) * 1.0})
    handlers._write_json(env.run_dir / "own.json", {"features": ["f0", "f1"]})
    plan = VerticalPlan(batch_size=32, batches_per_round=2, epochs=2, bottom_hidden=(4,))
    trainer = handlers.Trainer.create(env, plan)
    out0 = trainer.bottom.forward(0)
    grad = trainer.top.step(0, out0)
    trainer.bottom.backward(0, grad)
    trainer.bottom.forward(1)
    trainer.save()

    again = handlers.Trainer.load(env)
    for a, b in zip(trainer.bottom.model.parameters(), again.bottom.model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(trainer.top.model.parameters(), again.top.model.parameters()):
        assert torch.equal(a, b)
    st_a, st_b = trainer.bottom._opt.state_dict()["state"], again.bottom._opt.state_dict()["state"]
    assert st_a.keys() == st_b.keys() and all(torch.equal(st_a[k]["exp_avg"], st_b[k]["exp_avg"]) for k in st_a)
    assert list(again.bottom._pending) == [1]
    rows = sum(b.size for b in trainer.top.schedule.batches(1))
    z1 = trainer.bottom.embed(np.arange(rows))  # a stand-in Z for round 1 (shape is what matters)
    g1 = trainer.top.step(1, z1)
    g1b = again.top.step(1, z1)
    np.testing.assert_allclose(g1, g1b)
    trainer.bottom.backward(1, g1)
    again.bottom.backward(1, g1b)
    np.testing.assert_allclose(trainer.bottom.embed(np.arange(10)), again.bottom.embed(np.arange(10)))
    assert np.isfinite(again.bottom.embed(np.arange(200))).all()
