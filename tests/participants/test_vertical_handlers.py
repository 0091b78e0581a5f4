"""Participant side of vertical training: the PSI adapter, node resolution, state that survives a fresh process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, RecordDict

from crypto.identity import IdentityKey, IdentityPublicKey
from crypto.keywrap import WrapKeyPair
from crypto.masking import MaskingKey
from participants.datasets.ids import synthetic_usccs
from participants.handlers import psi
from participants.handlers._common import announce_wrap_key
from participants.handlers import vertical as handlers
from protocols.errors import ConfigError, DuplicateIdentifier, InvalidUSCC, ProtocolViolation
from protocols.psi import Blinded, PsiConfig, decode_messages, encode_messages, route
from protocols.vertical import VerticalPlan
from protocols.wire import vertical as vertical_wire

pytestmark = pytest.mark.timeout(60)

IDS = synthetic_usccs("handler-test", range(260))


def _config(peers=("tax", "utility"), run: int = 1) -> PsiConfig:
    return PsiConfig(consortium="c", run_id=f"vertical/run-{run}", label_holder="bank", peers=tuple(peers))


def run_psi(label_ids: list[str], peer_ids: dict[str, list[str]]):
    """Three Flower rounds through the adapter; each party's only memory is its run-state RecordDict."""
    config = _config(tuple(sorted(peer_ids)))
    ids = {"bank": label_ids, **peer_ids}
    states = {name: RecordDict() for name in ids}
    records = {name: psi.start(states[name], config, name, ids[name]) for name in ids}
    seen = list(records.values())
    results = {}
    for _ in range(2):
        boxes = route(m for rec in records.values() for m in decode_messages(rec))
        records = {}
        for name, box in boxes.items():
            records[name], result = psi.step(states[name], config, name, ids[name], ConfigRecord(encode_messages(box)))
            if result is not None:
                results[name] = result
        seen += records.values()
    assert all(not r for r in records.values())  # three rounds, nothing left to send
    return results, states, seen


def test_psi_aligns_every_party_to_the_label_holders_shuffled_rows(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    bank, tax, util = IDS[:150], IDS[100:260][::-1], IDS[::3]
    results, states, seen = run_psi(bank, {"tax": tax, "utility": util})
    lh = results["bank"]
    universe = [bank[r] for r in lh.rows]
    assert sorted(universe) == sorted(bank) and lh.size == 150
    assert universe != bank  # the universe order is a secret shuffle, not the bank's file order
    for name, own in (("tax", tax), ("utility", util)):
        r = results[name]
        assert r.size == 150
        assert [own[i] for i in r.rows] == [universe[u] for u in r.positions]
        assert {universe[u] for u in np.flatnonzero(lh.present[name])} == set(bank) & set(own)
    # the secrets lived in the run state only: nothing on disk, nothing left once done
    assert not any(tmp_path.iterdir())
    assert all(psi.STATE_KEY not in s for s in states.values())
    wire = b"".join(v if isinstance(v, bytes) else str(v).encode() for rec in seen for v in rec.values())
    assert not any(code.encode() in wire for code in IDS)


def test_psi_state_between_messages_is_the_exported_party_only() -> None:
    state = RecordDict()
    psi.start(state, _config(("tax",)), "tax", IDS[:20])
    assert list(state) == [psi.STATE_KEY]
    saved = str(state[psi.STATE_KEY]["party"])
    assert not any(code in saved for code in IDS[:20])  # a digest binds it to the ids; no id is kept
    with pytest.raises(ProtocolViolation, match="another party or run"):
        psi.step(state, _config(("tax",), run=2), "tax", IDS[:20], ConfigRecord({}))
    with pytest.raises(ProtocolViolation, match="another list of ids"):
        psi.step(state, _config(("tax",)), "tax", IDS[:19], ConfigRecord({}))


def test_psi_refuses_bad_input_and_steps_out_of_order() -> None:
    bad = IDS[:5] + [IDS[5][:-1] + ("0" if IDS[5][-1] != "0" else "1")]
    with pytest.raises(InvalidUSCC, match="row 5") as err:
        psi.start(RecordDict(), _config(), "tax", bad)
    assert IDS[5][:-1] not in str(err.value)
    with pytest.raises(DuplicateIdentifier):
        psi.start(RecordDict(), _config(), "tax", [IDS[0], IDS[0]])
    with pytest.raises(ProtocolViolation, match="no identifiers"):
        psi.start(RecordDict(), _config(), "tax", [])
    with pytest.raises(ProtocolViolation, match="out of order"):
        psi.step(RecordDict(), _config(), "tax", IDS[:5], ConfigRecord({}))
    state = RecordDict()
    psi.start(state, _config(), "tax", IDS[:5])
    foreign = Blinded(run_id="vertical/run-1", sender="utility", to=("tax",), count=1, tag_key=bytes(32), values=bytes(32))
    with pytest.raises(ProtocolViolation, match="unexpected sender"):
        psi.step(state, _config(), "tax", IDS[:5], ConfigRecord(encode_messages([foreign])))
    with pytest.raises(ProtocolViolation, match="malformed"):
        psi.step(state, _config(), "tax", IDS[:5], ConfigRecord({"0.kind": "blinded", "0.count": 1}))


def test_psi_config_is_derived_from_the_consortium_and_run(tmp_path) -> None:
    from tests.coordinator.test_vertical_workflow import write_consortium

    path, _ = write_consortium(tmp_path / "data", n=40)
    env = handlers.resolve_env({"partition-id": 1}, {"consortium": str(path)}, 5)
    config = psi.psi_config(env.consortium, env.run_id)
    assert config.label_holder == "bank" and config.peers == ("tax", "utility") and config.mode == "universe"
    assert config.domain != psi.psi_config(env.consortium, 6).domain


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


# --- pinned identities -------------------------------------------------------------------------
def _setup_nodes(tmp_path):
    """Three nodes (write_consortium) through the real setup handler; returns the consortium file,
    the relay's view (directory as the coordinator builds it) and a function re-resolving a node's env."""
    from tests.coordinator.test_vertical_workflow import write_consortium

    path, _ = write_consortium(tmp_path / "data", n=40)

    def env_of(name: str):
        i = ["bank", "tax", "utility"].index(name)
        return handlers.resolve_env({"partition-id": i}, {"consortium": str(path), "node-state-root": str(tmp_path / "s")}, 5)

    plan = VerticalPlan(batch_size=32, batches_per_round=2, epochs=2, bottom_hidden=(4,))
    rng = np.random.default_rng(0)
    directory = {}
    for name in ("bank", "tax", "utility"):
        env = env_of(name)
        aligned = {"x": rng.normal(size=(200, 2)), "present": np.ones(200, bool)}
        if env.is_label_holder:
            aligned["labels"] = (rng.random(200) < 0.3) * 1.0
        handlers._save_npz(env.run_dir / "aligned.npz", aligned)
        handlers._write_json(env.run_dir / "own.json", {"features": ["f0", "f1"]})
        reply = handlers.handle_setup(RecordDict({vertical_wire.REC_CONFIG: ConfigRecord({vertical_wire.K_PLAN: plan.model_dump_json()})}), env)
        cfg, payload = reply[vertical_wire.REC_CONFIG], reply[vertical_wire.REC_PAYLOAD]
        directory[name] = {"identity": bytes(payload[vertical_wire.P_IDENTITY_KEY]).hex(),
                           "mask": json.loads(str(cfg[vertical_wire.K_MASK_ANNOUNCEMENT])),
                           "wrap": json.loads(str(cfg[vertical_wire.K_WRAP_ANNOUNCEMENT]))}
    return path, directory, env_of


def _pin(path, fingerprints: dict[str, str]) -> None:
    text = path.read_text()
    for name, fp in fingerprints.items():
        text = text.replace(f'name = "{name}"\n', f'name = "{name}"\nidentity_fingerprint = "{fp}"\n', 1)
    path.write_text(text)


def _substituted(directory, env, victim: str):
    """What an active coordinator can forge: ``victim``'s entry under an identity of its own choosing."""
    fake = IdentityKey.generate()
    entry = {"identity": fake.public_key.to_bytes().hex(),
             "mask": MaskingKey.generate().announce(fake, participant_id=victim, session_id=env.session),
             "wrap": announce_wrap_key(fake, victim, env.session, WrapKeyPair.generate().public_key)}
    return {**directory, victim: entry}, fake


def test_a_substituted_identity_is_refused_when_pinned_and_the_pinned_one_accepted(tmp_path) -> None:
    path, directory, env_of = _setup_nodes(tmp_path)
    forged, fake = _substituted(directory, env_of("bank"), "tax")
    handlers._install_directory(env_of("bank"), forged)  # a valid forgery: unpinned, it is trusted on first use

    fingerprints = {n: IdentityPublicKey.from_bytes(bytes.fromhex(e["identity"])).fingerprint
                    for n, e in directory.items()}
    _pin(path, fingerprints)
    for name in ("bank", "utility"):
        with pytest.raises(ProtocolViolation, match="identity relayed for 'tax' does not match") as err:
            handlers._install_directory(env_of(name), forged)
        assert fake.fingerprint[:16] not in str(err.value) and fingerprints["tax"][:16] not in str(err.value)
        assert forged["tax"]["identity"][:16] not in str(err.value)
    for name in ("bank", "tax", "utility"):
        env = env_of(name)
        assert env.consortium.participant("tax").identity_fingerprint == fingerprints["tax"]
        handlers._install_directory(env, directory)
        kept = json.loads((env.run_dir / "directory.json").read_text())["identities"]
        assert kept == {n: e["identity"] for n, e in directory.items()}


def test_a_node_whose_own_key_is_not_its_pinned_identity_refuses_the_run(tmp_path) -> None:
    path, directory, env_of = _setup_nodes(tmp_path)
    _pin(path, {"tax": IdentityKey.generate().fingerprint})
    env = env_of("tax")
    start = RecordDict({vertical_wire.REC_CONFIG: ConfigRecord({})})
    with pytest.raises(ConfigError, match=r"participant 'tax': identity key .*wrong state dir"):
        handlers.handle_psi_blind(start, env, RecordDict())
    with pytest.raises(ConfigError, match="wrong state dir"):
        handlers._install_directory(env, directory)
    fresh = handlers.NodeEnv(env.participant, env.consortium, env.run_id, tmp_path / "empty", env.data_dir)
    with pytest.raises(ConfigError, match=r"no identity key in .*wrong state dir"):
        handlers.handle_psi_blind(start, fresh, RecordDict())
    assert not (tmp_path / "empty" / "keys" / "identity.key").exists()  # not created when pinned


def test_the_challenger_report_compares_the_label_holders_own_model_at_its_policy() -> None:
    rng = np.random.default_rng(0)
    n = 2_000
    risk = rng.normal(size=n)
    own = risk[:, None] * 0.4 + rng.normal(size=(n, 2))  # the bank's features: weak signal
    labels = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * risk - 2.2)))).astype(float)
    plan = VerticalPlan(epochs=3, batch_size=256, lr=0.02, approve_below_pd=0.25)
    val = handlers.Schedule.build(plan, n).val
    aligned = {"xt": own, "present": np.ones(n, bool), "labels": labels}
    strong = 2.0 * risk[val] - 2.2  # a federated model that sees the risk itself
    report = handlers.challenger_report(aligned, val, strong, plan)
    assert 0.5 < report["auc"] < 0.8 and report["approve_below_pd"] == 0.25
    lending = report["lending"]
    assert lending["n"] == val.size and lending["bad_rate_candidate"] < lending["bad_rate_reference"]
    assert lending["extra_approvals"] > 0
    strict = handlers.challenger_report(aligned, val, strong, plan.model_copy(update={"approve_below_pd": 0.001}))
    assert strict["lending"] is None and strict["auc"] == pytest.approx(report["auc"])  # nobody approved
    assert handlers.challenger_report({**aligned, "labels": np.zeros(n)}, val, strong, plan) is None
