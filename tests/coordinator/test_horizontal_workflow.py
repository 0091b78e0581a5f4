"""The horizontal workflow end to end in one process: real participant handlers, real CKKS keys,
a stand-in Grid that delivers messages (and can lose some) -- protocol logic without Flower's runtime."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
from flwr.app import RecordDict

from coordinator.registry import ModelRegistry
from coordinator.strategies import CkksSum, InsufficientNodes
from coordinator.workflows import horizontal, run_workflow
from coordinator.workflows import _common as workflows_common
from crypto.ckks_keys import PublicContext
from crypto.errors import MissingSecretKey
from crypto.identity import IdentityKey
from crypto.keywrap import WrapKeyPair
from participants.handlers import horizontal as handlers
from participants.handlers._common import announce_wrap_key, long_term_keys
from protocols.errors import ConfigError, ProtocolViolation
from protocols.wire import horizontal as wire

FEATURES = 5


def _write_consortium(root: Path, names: list[str], rows: int = 400) -> Path:
    rng = np.random.default_rng(7)
    w = rng.normal(size=FEATURES)
    blocks = []
    for i, name in enumerate(names):
        x = rng.normal(size=(rows, FEATURES))
        y = (x @ w + rng.normal(scale=1.0, size=rows) > 0.5).astype(int)
        frame = pd.DataFrame(x, columns=[f"f{j}" for j in range(FEATURES)])
        frame.insert(0, "y", y)
        frame.insert(0, "id", np.arange(rows) + i * rows)
        (root / name).mkdir(parents=True)
        frame.to_csv(root / name / "rows.csv", index=False)
        cols = ", ".join(f'"f{j}"' for j in range(FEATURES))
        blocks.append(f"""
[[participants]]
name = "{name}"
kind = "bank"
holds_labels = true
data_dir = "{name}"
[participants.features]
schema = "custom"
file = "rows.csv"
id_column = "id"
id_format = "any"
label_column = "y"
label_type = "binary"
columns = [{cols}]
""")
    path = root / "consortium.toml"
    path.write_text('name = "toy"\nmode = "horizontal"\n[coordinator]\nsuperlink_address = "127.0.0.1:9092"\n'
                    'gateway_address = "127.0.0.1:50051"\n' + "".join(blocks))
    return path


@dataclass
class _Msg:
    content: RecordDict
    dst_node_id: int
    message_type: str
    group_id: str
    metadata: Any = None
    error: Any = None

    def has_error(self) -> bool:
        return self.error is not None


@dataclass
class FakeGrid:
    """Delivers each message to the participant handler of its node; ``lose`` drops replies.

    ``tamper(participant, message_type, content)`` rewrites a message before delivery (an active
    coordinator); with ``flower_errors`` a handler's exception comes back as Flower reports it (an
    error reply whose reason is ``<class ...>:<'message'>``) instead of propagating."""

    nodes: dict[int, str]
    node_root: Path
    run_config: dict[str, Any]
    lose: set[tuple[str, str]] = field(default_factory=set)  # (participant, group)
    fail: set[tuple[str, str]] = field(default_factory=set)
    seen: list[tuple[str, str, str]] = field(default_factory=list)
    tamper: Callable[[str, str, RecordDict], None] | None = None
    flower_errors: bool = False

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, msgs, *, timeout=None):
        out = []
        for m in msgs:
            name = self.nodes[m.dst_node_id]
            self.seen.append((name, m.message_type, m.group_id))
            if (name, m.group_id) in self.lose:
                continue
            ctx = SimpleNamespace(node_config={"node-name": name, "state-dir": str(self.node_root / name)},
                                  run_config=self.run_config, run_id=77)
            meta = SimpleNamespace(src_node_id=m.dst_node_id)
            if (name, m.group_id) in self.fail:
                out.append(_Msg(RecordDict(), 0, "", "", meta, SimpleNamespace(reason="disk full")))
                continue
            if self.tamper is not None:
                self.tamper(name, m.message_type, m.content)
            try:
                reply = handlers.HANDLERS[m.message_type](m.content, ctx)
            except Exception as exc:
                if not self.flower_errors:
                    raise
                out.append(_Msg(RecordDict(), 0, "", "", meta,
                                SimpleNamespace(reason=str(type(exc)) + ":<'" + str(exc) + "'>")))
                continue
            out.append(_Msg(reply, 0, "", "", meta))
        return out


@pytest.fixture()
def toy(tmp_path, monkeypatch):
    names = ["bank_a", "bank_b", "bank_c"]
    cfg = _write_consortium(tmp_path / "data", names)
    monkeypatch.setattr(workflows_common, "Message", lambda content, **kw: _Msg(content, **kw))

    def make(**overrides):
        run_config = {
            "mode": "horizontal", "consortium": str(cfg), "rounds": 3, "local-epochs": 2, "lr": 0.05,
            "batch-size": 64, "min-nodes": 2, "state-dir": str(tmp_path / "coord"), "report": False,
            "result-file": str(tmp_path / "coord" / "summary.json"), "connect-timeout": 1.0,
        }
        run_config.update(overrides)
        grid = FakeGrid({101: "bank_a", 102: "bank_b", 103: "bank_c"}, tmp_path / "nodes", run_config)
        context = SimpleNamespace(run_config=run_config, run_id=77)
        return grid, context

    return make


def test_encrypted_run_trains_registers_and_keeps_secrets_off_the_coordinator(toy, tmp_path):
    grid, context = toy()
    summary = run_workflow(grid, context)
    assert summary.coordinator_decrypt_check == "MissingSecretKey"
    assert summary.participants == ["bank_a", "bank_b", "bank_c"] and summary.key_holder == "bank_a"
    first, final = summary.rounds[0].aggregated["val-auc"], summary.final_aggregated["val-auc"]
    assert final > first + 0.1
    # setup is two message rounds, then one per training round plus the final one
    types = [t for _, t, _ in grid.seen]
    assert types.count(wire.MSG_HELLO) == 3 and types.count(wire.MSG_KEYGEN) == 1
    assert types.count(wire.MSG_FIT) == 9 and types.count(wire.MSG_FINAL) == 3
    # the coordinator's files hold no key material and no weights
    coord = tmp_path / "coord"
    assert not list(coord.rglob("*.ckks")) and not list(coord.rglob("*.npy"))
    version = ModelRegistry(coord).get(summary.version)
    assert version.status == "ready" and version.weights_location == {"participants": summary.participants}
    # every participant stored the same decrypted model; the run's secret key is gone afterwards
    stored = [np.load(next((tmp_path / "nodes" / n / "models").rglob("*.npy"))) for n in summary.participants]
    assert all(np.allclose(stored[0], s, atol=1e-6) for s in stored[1:])
    assert not any((tmp_path / "nodes" / n / "runs" / "77").exists() for n in summary.participants)


def test_coordinator_cannot_decrypt_a_real_aggregate(toy):
    grid, context = toy(rounds=1)
    cfg = horizontal.config_from(context.run_config)
    setup = horizontal._hello(grid, sorted(grid.nodes), cfg)
    horizontal._key_setup(grid, setup, cfg)
    agg = CkksSum(setup.public_context)
    plan = []
    for nid in sorted(setup.names):
        content = RecordDict({wire.REC_CONFIG: horizontal.ConfigRecord({wire.K_ROUND: 1, "weight-scale": 1200.0})})
        horizontal._attach_pending_key(content, setup.names[nid], setup)
        plan.append((nid, content))
    replies = workflows_common.exchange(grid, plan, wire.MSG_FIT, setup.names, group="1", timeout=10)
    total = agg.sum([agg.extract(r.content) for r in replies])
    with pytest.raises(MissingSecretKey):
        agg.try_decrypt(total)
    # the bytes the coordinator holds are a public context; re-loading them cannot add a secret
    reloaded = PublicContext.from_bytes(setup.public_context.to_bytes())
    with pytest.raises(MissingSecretKey):
        CkksSum(reloaded).try_decrypt(total)


def test_dropouts_are_named_and_the_run_goes_on(toy, caplog):
    grid, context = toy(rounds=3)
    grid.lose = {("bank_b", "2")}  # timeout in round 2
    grid.fail = {("bank_c", "1")}  # error in round 1: its wrapped key must be offered again
    with caplog.at_level(logging.WARNING, logger="flwr"):
        summary = run_workflow(grid, context)
    assert summary.dropped == {"round-1": ["bank_c"], "round-2": ["bank_b"]}
    assert summary.rounds[0].contributors == ["bank_a", "bank_b"]
    assert summary.rounds[2].contributors == ["bank_a", "bank_b", "bank_c"]  # bank_c got its key late
    assert "bank_b dropped" in caplog.text and "bank_c dropped" in caplog.text
    assert summary.final_aggregated["val-auc"] > summary.rounds[0].aggregated["val-auc"]


def test_too_few_nodes_fail_the_run_and_the_version(toy, tmp_path):
    grid, context = toy(rounds=2, **{"min-nodes": 3})
    grid.lose = {("bank_c", "2")}
    with pytest.raises(InsufficientNodes, match="bank_c"):
        run_workflow(grid, context)
    (version,) = ModelRegistry(tmp_path / "coord").list()
    assert version.status == "failed" and "bank_c" in version.notes


def test_encrypted_and_plaintext_aggregation_agree(toy, tmp_path):
    grid, context = toy(rounds=2)
    enc = run_workflow(grid, context)
    grid, context = toy(rounds=2, encrypted=False, **{"result-file": str(tmp_path / "plain.json")})
    plain = run_workflow(grid, context)
    assert plain.coordinator_decrypt_check.startswith("not-applicable")
    for name in enc.final:
        assert abs(enc.final[name]["val-auc"] - plain.final[name]["val-auc"]) <= 1e-3


def test_fedprox_and_dp_are_accounted(toy):
    grid, context = toy(rounds=2, strategy="fedprox", **{"proximal-mu": 0.1, "dp-noise": 1.0, "dp-clip": 5.0})
    summary = run_workflow(grid, context)
    assert summary.privacy is not None
    assert summary.privacy.rounds == 2 and 0 < summary.privacy.epsilon < float("inf")
    assert summary.config["strategy"] == "fedprox"


def test_unknown_mode_is_a_config_error():
    with pytest.raises(ConfigError):
        run_workflow(None, SimpleNamespace(run_config={"mode": "diagonal"}))


def test_published_model_is_the_one_the_participants_decrypted(toy, tmp_path):
    grid, context = toy(rounds=1, **{"publish-model": True})
    summary = run_workflow(grid, context)
    assert summary.published
    reg = ModelRegistry(tmp_path / "coord")
    published = reg.load_weights(summary.version)
    local = np.load(next((tmp_path / "nodes" / "bank_b" / "models").rglob("*.npy")))
    np.testing.assert_allclose(published, local, atol=1e-6)
    version = reg.get(summary.version)
    assert set(version.weights_location) == {"participants", "registry"}


# --- an active coordinator substituting a wrap key at setup ----------------------------------
NAMES = ["bank_a", "bank_b", "bank_c"]


def _pin_all(tmp_path, context) -> dict[str, IdentityKey]:
    """Create each node's long-term keys up front and pin their fingerprints in the consortium."""
    identities = {n: long_term_keys(tmp_path / "nodes" / n / "keys")[0] for n in NAMES}
    path = Path(context.run_config["consortium"])
    text = path.read_text()
    for n, identity in identities.items():
        text = text.replace(f'name = "{n}"\n', f'name = "{n}"\nidentity_fingerprint = "{identity.fingerprint}"\n', 1)
    path.write_text(text)
    return identities


def _session(context, run_id: int) -> str:
    node = {"node-name": "bank_b", "consortium": context.run_config["consortium"]}
    return handlers.resolve_env(node, context.run_config, run_id).session


def _replace_bank_b(content: RecordDict, announcement: dict, identity: bytes | None = None) -> None:
    """Rewrite bank_b's relayed entry in a keygen message (what a malicious relay would do)."""
    peers = list(content[wire.REC_CONFIG][wire.K_PEERS])
    i = peers.index("bank_b")
    payload = content[wire.REC_PAYLOAD]
    anns = list(payload[wire.P_PEER_WRAP_ANNOUNCEMENTS])
    anns[i] = json.dumps(announcement)
    payload[wire.P_PEER_WRAP_ANNOUNCEMENTS] = anns
    if identity is not None:
        ids = list(payload[wire.P_PEER_IDENTITIES])
        ids[i] = identity
        payload[wire.P_PEER_IDENTITIES] = ids


@pytest.mark.parametrize("attack", ["swap-bytes", "other-identity", "other-session"])
def test_a_substituted_wrap_key_stops_the_run_naming_the_participant(toy, tmp_path, attack):
    grid, context = toy(rounds=1)
    identities = _pin_all(tmp_path, context)
    attacker = WrapKeyPair.generate()

    def tamper(name: str, message_type: str, content: RecordDict) -> None:
        if message_type != wire.MSG_KEYGEN:
            return
        if attack == "swap-bytes":  # bank_b's own envelope, the X25519 bytes swapped for the relay's
            i = list(content[wire.REC_CONFIG][wire.K_PEERS]).index("bank_b")
            doc = json.loads(content[wire.REC_PAYLOAD][wire.P_PEER_WRAP_ANNOUNCEMENTS][i])
            doc["payload"]["x25519"] = attacker.public_bytes().hex()
            _replace_bank_b(content, doc)
        elif attack == "other-identity":  # sealed by the relay's own identity, relayed as bank_b's
            fake = IdentityKey.generate()
            _replace_bank_b(content, announce_wrap_key(fake, "bank_b", _session(context, 77), attacker.public_key),
                            fake.public_key.to_bytes())
        else:  # bank_b's genuine announcement of another run, replayed
            _replace_bank_b(content, announce_wrap_key(identities["bank_b"], "bank_b", _session(context, 76),
                                                       long_term_keys(tmp_path / "nodes" / "bank_b" / "keys")[1].public_key))

    grid.tamper, grid.flower_errors = tamper, True
    with pytest.raises(ProtocolViolation, match="key holder bank_a refused the wrap key relayed for participant 'bank_b'") as err:
        run_workflow(grid, context)
    assert attacker.public_bytes().hex()[:16] not in str(err.value)
    types = [t for _, t, _ in grid.seen]
    assert types.count(wire.MSG_KEYGEN) == 1 and wire.MSG_FIT not in types  # no retry with another holder
    assert not list((tmp_path / "nodes").rglob("*.ckks"))  # no aggregation key was made, nothing wrapped
    (version,) = ModelRegistry(tmp_path / "coord").list()
    assert version.status == "failed" and "bank_b" in version.notes


def test_pinned_identities_and_an_honest_relay_still_train(toy, tmp_path):
    grid, context = toy(rounds=2)
    _pin_all(tmp_path, context)
    grid.flower_errors = True
    summary = run_workflow(grid, context)
    assert summary.key_holder == "bank_a" and summary.coordinator_decrypt_check == "MissingSecretKey"
    assert summary.final_aggregated["val-auc"] > summary.rounds[0].aggregated["val-auc"]


def test_a_key_holder_failing_for_another_reason_is_replaced(toy, tmp_path):
    """Only a refusal stops the run; a holder that merely fails keygen is skipped (a dropout)."""
    grid, context = toy(rounds=1)

    def tamper(name: str, message_type: str, content: RecordDict) -> None:
        if message_type == wire.MSG_KEYGEN and name == "bank_a":
            content[wire.REC_PAYLOAD][wire.P_PEER_IDENTITIES] = []  # bank_a fails, but refuses no peer

    grid.tamper, grid.flower_errors = tamper, True
    summary = run_workflow(grid, context)
    assert summary.key_holder == "bank_b"
