"""Vertical workflow at the coordinator, driven in-process against the real participant handlers.

The Flower Grid is replaced by a relay that hands each RecordDict to the participant's handler, so
the message order, the bytes the coordinator holds and the final bookkeeping are exactly those of a
Flower run, minus the transport. Every message is recorded to check what the coordinator sees.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from flwr.app import ConfigRecord, RecordDict

import coordinator.workflows.vertical as workflow
from coordinator.registry import ModelRegistry
from coordinator.strategies import NodeReply
from coordinator.workflows import psi_relay
from crypto.masking import MaskedVector, decode_fixed
from participants.datasets.ids import synthetic_usccs
from participants.handlers import psi as psi_handler
from participants.handlers import vertical as handlers
from participants.model_store import LocalModelStore
from protocols.errors import ConfigError, ProtocolViolation
from protocols.psi import Blinded, Tags, decode_messages, encode_messages
from protocols.wire import vertical as wire

pytestmark = pytest.mark.timeout(120)


def write_consortium(root: Path, n: int = 500, seed: int = 0) -> tuple[Path, dict[str, list[str]]]:
    """bank (labels, 2 noise features), tax (the signal, 85% coverage), utility (weak signal, 70%)."""
    rng = np.random.default_rng(seed)
    extra = n // 4
    ids = synthetic_usccs("vfl-test", range(n + extra))
    signal = rng.normal(size=n + extra)
    weak = signal + rng.normal(scale=2.0, size=n + extra)
    y = (rng.random(n + extra) < 1 / (1 + np.exp(-(2.5 * signal - 0.5)))).astype(int)
    bank_rows = np.arange(n)
    tax_rows = np.sort(rng.choice(n + extra, size=int(0.85 * n), replace=False))
    util_rows = np.sort(rng.choice(n + extra, size=int(0.7 * n), replace=False))
    frames = {
        "bank": pd.DataFrame({"id": [ids[i] for i in bank_rows], "y": y[bank_rows],
                              "f0": rng.normal(size=bank_rows.size), "f1": rng.normal(size=bank_rows.size)}),
        "tax": pd.DataFrame({"id": [ids[i] for i in tax_rows], "g0": signal[tax_rows] * 3 + 10,
                             "g1": rng.normal(size=tax_rows.size)}),
        "utility": pd.DataFrame({"id": [ids[i] for i in util_rows], "u0": weak[util_rows]}),
    }
    lines = ['name = "vfltest"', 'mode = "vertical"', "", "[coordinator]", 'name = "operator"',
             'superlink_address = "127.0.0.1:9092"', 'gateway_address = "127.0.0.1:50051"']
    for name, frame in frames.items():
        (root / name).mkdir(parents=True)
        frame.sample(frac=1.0, random_state=seed).to_csv(root / name / "records.csv", index=False)
        cols = [c for c in frame.columns if c not in ("id", "y")]
        lines += ["", "[[participants]]", f'name = "{name}"', f'kind = "{"bank" if name == "bank" else "other"}"',
                  f'data_dir = "{name}"']
        if name == "bank":
            lines += ["holds_labels = true", "lends = true"]
        lines += ["[participants.features]", 'schema = "custom"', 'file = "records.csv"', 'id_column = "id"',
                  f"columns = {json.dumps(cols)}"]
        if name == "bank":
            lines += ['label_column = "y"', 'label_type = "binary"']
    path = root / "consortium.toml"
    path.write_text("\n".join(lines) + "\n")
    return path, {name: list(frame["id"]) for name, frame in frames.items()}


class Relay:
    """Grid stand-in: routes each message to the node's handler and records what crossed."""

    def __init__(self, consortium: Path, node_root: Path, run_id: int, tamper=None) -> None:
        names = ["bank", "tax", "utility"]
        self.nodes = {
            100 + i: SimpleNamespace(node_config={"partition-id": i},
                                     run_config={"consortium": str(consortium), "node-state-root": str(node_root)},
                                     run_id=run_id, state=RecordDict())
            for i in range(len(names))
        }
        self.sent: list[tuple[str, object]] = []
        self.received: list[tuple[str, object]] = []
        self.tamper = tamper

    def exchange(self, grid, plan, message_type, names, *, group, timeout):
        out = []
        for nid, content in plan:
            if self.tamper is not None:
                self.tamper(message_type, names.get(nid), content)
            self.sent.append((message_type, content))
            try:
                reply = handlers.HANDLERS[message_type](content, self.nodes[nid])
            except Exception as exc:  # what Flower turns into an error reply
                out.append(NodeReply(nid, names.get(nid, f"node-{nid}"), None, f"error: {type(exc).__name__}: {exc}"))
                continue
            self.received.append((message_type, reply))
            out.append(NodeReply(nid, names.get(nid, f"node-{nid}"), reply))
        return out


def run_inprocess(tmp_path: Path, monkeypatch, run_config: dict, *, tamper=None, run_id: int = 11):
    consortium, ids = write_consortium(tmp_path / "data")
    relay = Relay(consortium, tmp_path / "nodes", run_id, tamper)
    monkeypatch.setattr(workflow, "_exchange", relay.exchange)
    monkeypatch.setattr(workflow, "_wait_for_nodes", lambda grid, want, timeout: sorted(relay.nodes))
    ctx = SimpleNamespace(run_config={"consortium": str(consortium), "state-dir": str(tmp_path / "coord"),
                                      **run_config}, run_id=run_id)
    return workflow.run(None, ctx), relay, ids


def _strings_and_bytes(record) -> list[bytes]:
    out = []
    for rec in record.values():
        for value in rec.values():
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, (bytes, str)):
                    out.append(v.encode() if isinstance(v, str) else v)
    return out


FAST = {"local-epochs": 6, "batch-size": 64, "lr": 0.05, "model": "logistic"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One full run shared by the tests that only inspect it."""
    tmp_path = tmp_path_factory.mktemp("vfl")
    with pytest.MonkeyPatch.context() as mp:
        summary, relay, ids = run_inprocess(tmp_path, mp, FAST)
    return tmp_path, summary, relay, ids


def test_split_training_beats_the_label_holder_alone_and_everything_is_recorded(trained) -> None:
    tmp_path, summary, relay, ids = trained
    # alignment: the universe is the bank's rows; intersections as constructed
    assert summary.universe == 500 and summary.label_holder == "bank"
    tax_truth = len(set(ids["bank"]) & set(ids["tax"]))
    util_truth = len(set(ids["bank"]) & set(ids["utility"]))
    assert summary.matched == {"tax": tax_truth, "utility": util_truth}
    # the bank's own features are noise: everything above 0.5 comes from the other holders
    assert summary.metrics["all"]["auc"] > 0.75
    assert summary.metrics["full_coverage"]["auc"] > summary.metrics["partial_coverage"]["auc"] - 0.1
    # the bank's own challenger (its features alone, same recipe and rows) is near chance; at a 40 %
    # default rate it approves nobody below PD 7 %, so there is no lending comparison to make
    alone = summary.label_holder_alone
    assert alone is not None and alone["auc"] < 0.6 and summary.metrics["all"]["auc"] > alone["auc"] + 0.1
    assert alone["approve_below_pd"] == 0.07 and alone["lending"] is None
    # rounds: 3 PSI + 1 setup + (R + 2) training + 1 final, each stage timed
    assert summary.stages["psi"].rounds == 3 and summary.stages["setup"].rounds == 1
    assert summary.stages["training"].rounds == summary.forward_rounds + 2
    assert summary.total_rounds == 3 + 1 + summary.forward_rounds + 2 + 1
    assert all(s.seconds >= 0 for s in summary.stages.values())
    assert summary.train_loss[-1] < summary.train_loss[0]
    assert summary.label_dp is None
    # registry: a ready vertical version with the top spec; bottoms in each node's own store
    version = ModelRegistry(tmp_path / "coord").get(summary.version)
    assert version.status == "ready" and version.kind == "vertical"
    assert version.weights_location["top_spec"]["kind"] == "linear"
    assert version.weights_location["participants"] == ["bank", "tax", "utility"]
    assert summary.bottoms_stored == ["bank", "tax", "utility"]
    for name in ("bank", "tax", "utility"):
        stored = LocalModelStore(tmp_path / "nodes" / name / "models").load_bottom(summary.version)
        assert stored.model.out_dim == 4
        assert not (tmp_path / "nodes" / name / "runs").exists() or not any((tmp_path / "nodes" / name / "runs").rglob("*.npz"))
    assert (tmp_path / "coord" / "runs" / "11" / "vertical-summary.json").exists()
    # the PSI parties (and their secrets) lived in each node's run state only, and are gone
    assert all(psi_handler.STATE_KEY not in node.state for node in relay.nodes.values())


def test_the_coordinator_sees_no_ids_no_single_output_and_no_gradient(trained) -> None:
    _, summary, relay, ids = trained
    every_id = {i.encode() for group in ids.values() for i in group}
    blobs = [b for _, rec in relay.sent + relay.received for b in _strings_and_bytes(rec)]
    assert blobs
    assert not any(i in b for b in blobs for i in every_id)
    # a single participant's masked output decodes to noise; only the sum is small
    singles = [MaskedVector.from_bytes(bytes(rec[wire.REC_PAYLOAD][wire.P_MASKED]))
               for mtype, rec in relay.received if mtype == wire.MSG_STEP and wire.REC_PAYLOAD in rec
               and wire.P_MASKED in rec[wire.REC_PAYLOAD]]
    assert len(singles) == 3 * summary.forward_rounds
    assert all(np.median(np.abs(decode_fixed(v.data))) > 1e6 for v in singles)
    # gradients reach the coordinator only wrapped: the plaintext bytes of dZ never appear
    grads = [bytes(g) for mtype, rec in relay.received if mtype == wire.MSG_STEP and wire.REC_PAYLOAD in rec
             and wire.P_GRADS in rec[wire.REC_PAYLOAD] for g in rec[wire.REC_PAYLOAD][wire.P_GRADS]]
    assert len(grads) == 2 * summary.forward_rounds
    for g in grads:
        arr = np.frombuffer(g[3 + 32 + 12: 3 + 32 + 12 + 8 * 64], dtype="<f8")
        assert not (np.isfinite(arr).all() and np.abs(arr).max() < 1.0)  # ciphertext, not small floats


def test_label_dp_reports_epsilon(tmp_path, monkeypatch) -> None:
    summary, _, _ = run_inprocess(tmp_path, monkeypatch, {**FAST, "dp-noise": 1.0})
    assert summary.label_dp is not None
    assert summary.label_dp["sigma"] == 1.0 and 0 < summary.label_dp["epsilon"] < 1000
    assert summary.metrics["all"]["auc"] > 0.6
    assert summary.version is not None


def test_a_swapped_wrap_key_is_refused_and_the_version_fails(tmp_path, monkeypatch) -> None:
    def swap(message_type, name, content):
        if message_type == wire.MSG_STEP and int(content[wire.REC_CONFIG][wire.K_ROUND]) == 0:
            directory = json.loads(str(content[wire.REC_CONFIG][wire.K_DIRECTORY]))
            directory["tax"]["wrap"], directory["utility"]["wrap"] = directory["utility"]["wrap"], directory["tax"]["wrap"]
            content[wire.REC_CONFIG][wire.K_DIRECTORY] = json.dumps(directory)

    with pytest.raises(ProtocolViolation, match="round 0"):
        run_inprocess(tmp_path, monkeypatch, FAST, tamper=swap)
    (version,) = ModelRegistry(tmp_path / "coord").list()
    assert version.status == "failed"


def test_plan_comes_from_shared_keys_and_vertical_plan() -> None:
    cfg = workflow.config_from({"model": "mlp", "mlp-hidden": "16,8", "local-epochs": 3, "lr": 0.01,
                                "vertical-plan": '{"top_kind": "poly", "out_dim": 8}', "model-name": "horizontal-credit"})
    plan = cfg.plan()
    assert plan.bottom_hidden == (16, 8) and plan.epochs == 3 and plan.top_kind == "poly" and plan.out_dim == 8
    assert cfg.model_name == workflow.DEFAULT_MODEL_NAME
    with pytest.raises(ConfigError, match="vertical-plan"):
        workflow.config_from({"vertical-plan": "{not json"}).plan()
    with pytest.raises(ConfigError, match="out_dim"):
        workflow.config_from({"vertical-plan": '{"out_dim": 0}'}).plan()


def _blind_reply(nid: int, name: str, role: str, to: tuple[str, ...], count: int = 2, sender: str | None = None):
    msg = Blinded(run_id="r", sender=sender or name, to=to, count=count, tag_key=b"\x02" * 32, values=b"\x01" * 32 * count)
    return NodeReply(nid, f"node-{nid}", RecordDict({
        wire.REC_CONFIG: ConfigRecord({wire.K_PARTICIPANT: name, wire.K_ROLE: role}),
        wire.REC_PSI: ConfigRecord(encode_messages([msg])),
    }))


def test_psi_relay_refuses_two_label_holders_unknown_nodes_and_forged_senders() -> None:
    lh, peer = wire.ROLE_LABEL_HOLDER, wire.ROLE_PEER
    with pytest.raises(ProtocolViolation, match="exactly one label holder"):
        psi_relay.collect_blinded(psi_relay.PsiRelayState(), [_blind_reply(1, "a", lh, ("b",)),
                                                              _blind_reply(2, "b", lh, ("a",))], None)
    with pytest.raises(ProtocolViolation, match="data holders"):
        psi_relay.collect_blinded(psi_relay.PsiRelayState(), [_blind_reply(1, "a", lh, ("b",)),
                                                              _blind_reply(2, "b", peer, ("a",))], ["a", "c"])
    with pytest.raises(ProtocolViolation, match="in the name of 'a'"):
        psi_relay.collect_blinded(psi_relay.PsiRelayState(), [_blind_reply(1, "a", lh, ("b",)),
                                                              _blind_reply(2, "b", peer, ("a",), sender="a")], None)
    with pytest.raises(ProtocolViolation, match="addressed a message to"):
        psi_relay.collect_blinded(psi_relay.PsiRelayState(), [_blind_reply(1, "a", lh, ("b", "mallory")),
                                                              _blind_reply(2, "b", peer, ("a",))], None)


def test_psi_relay_routes_with_protocols_psi_and_checks_sizes() -> None:
    lh, peer = wire.ROLE_LABEL_HOLDER, wire.ROLE_PEER
    state = psi_relay.PsiRelayState()
    psi_relay.collect_blinded(state, [_blind_reply(1, "a", lh, ("b", "c"), count=3), _blind_reply(2, "b", peer, ("a",)),
                                      _blind_reply(3, "c", peer, ("a",), count=1)], None)
    assert state.set_sizes == {"a": 3, "b": 2, "c": 1} and state.universe == 3 and state.peers == ["b", "c"]
    plan = psi_relay.plan_next(state)
    assert [nid for nid, _ in plan] == [1, 2, 3]
    inbox = {nid: decode_messages(content[wire.REC_PSI]) for nid, content in plan}
    assert sorted(m.sender for m in inbox[1]) == ["b", "c"] and [m.sender for m in inbox[2]] == ["a"]
    assert inbox[2][0].values == b"\x01" * 96  # relayed unchanged

    def tags_reply(nid: int, name: str, to: str, count: int):
        msg = Tags(run_id="r", sender=name, to=(to,), count=count, tags=b"\x03" * 16 * count)
        return NodeReply(nid, name, RecordDict({wire.REC_PSI: ConfigRecord(encode_messages([msg]))}))

    with pytest.raises(ProtocolViolation, match="sent 2 tags to a, whose set has 3"):
        psi_relay.collect_tags(state, [tags_reply(2, "b", "a", 2)])
    state.outbox = []
    psi_relay.collect_tags(state, [tags_reply(1, "a", "b", 2), tags_reply(1, "a", "c", 1),
                                   tags_reply(2, "b", "a", 3), tags_reply(3, "c", "a", 3)])
    assert [len(decode_messages(c[wire.REC_PSI])) for _, c in psi_relay.plan_next(state)] == [2, 1, 1]
    with pytest.raises(ProtocolViolation, match="nothing to relay to b, c"):
        state.outbox = [Tags(run_id="r", sender="b", to=("a",), count=0, tags=b"")]
        psi_relay.plan_next(state)
