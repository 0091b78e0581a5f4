"""protocols.psi: the multi-party state machine, driven through the pure relay on small sets."""

from __future__ import annotations

import random

import numpy as np
import pytest

from crypto.errors import InvalidPoint
from protocols.errors import DuplicateIdentifier, InvalidUSCC, ProtocolViolation
from protocols.psi import (
    Blinded,
    PartyState,
    LabelHolder,
    Peer,
    PsiConfig,
    Selection,
    Tags,
    decode_messages,
    encode_messages,
    parse_message,
    prepare_ids,
    route,
)
from protocols.uscc import ALPHABET, make_uscc


def _codes(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = {make_uscc("91" + "".join(rng.choice(ALPHABET) for _ in range(15))) for _ in range(n)}
    return sorted(out)


POOL = _codes(3000, 0)


def _config(k: int, mode: str = "universe", run_id: str = "run-1") -> PsiConfig:
    return PsiConfig(consortium="test", run_id=run_id, label_holder="bank",
                     peers=tuple(f"p{i}" for i in range(k)), mode=mode)  # type: ignore[arg-type]


def _drive(parties: dict[str, LabelHolder | Peer], seen: list | None = None) -> int:
    """Run to completion through the relay; returns the number of message rounds."""
    out = [m for p in parties.values() for m in p.start()]
    rounds = 1
    while not all(p.done for p in parties.values()):
        if seen is not None:
            seen.extend(out)
        boxes = route(out)
        out = [m for name, box in boxes.items() for m in parties[name].handle(box)]
        rounds += 1
        assert rounds < 10
    return rounds


def _sets(k: int, seed: int, nx: int = 600, ny: int = 500) -> tuple[list[str], dict[str, list[str]]]:
    rng = random.Random(seed)
    x = rng.sample(POOL, nx)
    ys = {f"p{i}": rng.sample(POOL, ny) for i in range(k)}
    return x, ys


@pytest.mark.parametrize("k", [1, 3])
def test_universe_mode_matches_plain_sets(k: int) -> None:
    cfg = _config(k)
    x, ys = _sets(k, seed=k)
    holder = LabelHolder(cfg, x)
    peers = {p: Peer(p, cfg, ys[p]) for p in cfg.peers}
    assert _drive({"bank": holder, **peers}) == 3  # two relays of party data
    lh = holder.result
    assert lh.size == len(x) and sorted(lh.rows) == list(range(len(x)))
    for p, peer in peers.items():
        r = peer.result
        truth = set(x) & set(ys[p])
        assert r.size == len(x)
        assert {ys[p][i] for i in r.rows} == truth
        assert list(r.positions) == sorted(r.positions)
        for row, pos in zip(r.rows, r.positions):  # the peer's row sits where the holder's same id sits
            assert x[lh.rows[pos]] == ys[p][row]
        assert {x[lh.rows[pos]] for pos in np.flatnonzero(lh.present[p])} == truth


@pytest.mark.parametrize("k", [1, 2, 4])
def test_intersection_mode_shared_order(k: int) -> None:
    cfg = _config(k, "intersection")
    x, ys = _sets(k, seed=10 + k, nx=900, ny=800)
    holder = LabelHolder(cfg, x)
    peers = {p: Peer(p, cfg, ys[p]) for p in cfg.peers}
    _drive({"bank": holder, **peers})
    common = set(x).intersection(*map(set, ys.values()))
    order = [x[i] for i in holder.result.rows]
    assert set(order) == common and len(order) == len(common) == holder.result.size
    for p, peer in peers.items():
        assert [ys[p][i] for i in peer.result.rows] == order


@pytest.mark.parametrize("nx,ny,overlap", [(0, 50, 0), (50, 0, 0), (200, 200, 200), (200, 150, 0)])
def test_empty_and_full_overlap(nx: int, ny: int, overlap: int) -> None:
    cfg = _config(1, "intersection")
    shared = POOL[:overlap]
    x = shared + POOL[1000:1000 + nx - overlap]
    y = shared + POOL[2000:2000 + ny - overlap]
    holder, peer = LabelHolder(cfg, x), Peer("p0", cfg, y)
    _drive({"bank": holder, "p0": peer})
    assert sorted(x[i] for i in holder.result.rows) == sorted(set(x) & set(y))
    assert [y[i] for i in peer.result.rows] == [x[i] for i in holder.result.rows]


def test_ids_are_normalised_before_hashing() -> None:
    cfg = _config(1, "intersection")
    x = POOL[:100]
    y = [c.lower() if i % 2 else f"  {c} " for i, c in enumerate(POOL[50:150])]
    holder, peer = LabelHolder(cfg, x), Peer("p0", cfg, y)
    _drive({"bank": holder, "p0": peer})
    assert holder.result.size == 50


def test_invalid_uscc_rejected_up_front_without_echoing_it() -> None:
    bad = POOL[:5] + [POOL[5][:-1] + ("0" if POOL[5][-1] != "0" else "1")]
    with pytest.raises(InvalidUSCC) as err:
        prepare_ids(bad)
    assert "row 5" in str(err.value) and POOL[5][:-1] not in str(err.value)
    with pytest.raises(InvalidUSCC):
        LabelHolder(_config(1), ["not-a-code"])


def test_duplicates_rejected_naming_rows() -> None:
    ids = POOL[:10] + [POOL[3].lower()]
    with pytest.raises(DuplicateIdentifier, match="rows 3 and 10") as err:
        Peer("p0", _config(1), ids)
    assert POOL[3] not in str(err.value)


def test_relay_sees_only_opaque_bytes_of_the_right_sizes() -> None:
    x, ys = _sets(2, seed=20, nx=300, ny=250)
    views = []
    for run in ("run-a", "run-b"):
        cfg = _config(2, "intersection", run_id=run)
        seen: list = []
        parties = {"bank": LabelHolder(cfg, x), **{p: Peer(p, cfg, ys[p]) for p in cfg.peers}}
        _drive(parties, seen)
        views.append(seen)
        for m in seen:
            dumped = m.model_dump()
            assert set(dumped) <= {"kind", "run_id", "sender", "to", "count", "tag_key", "values", "tags", "indices"}
            if isinstance(m, Blinded):
                assert len(m.values) == 32 * m.count and m.count in (300, 250)
            elif isinstance(m, Tags):
                assert len(m.tags) == 16 * m.count and m.count == 300
            else:
                assert isinstance(m, Selection) and len(m.indices) == 4 * m.count
            assert parse_message(m.model_dump_json()) == m  # JSON round trip, no pickle
    blinded = [{m.sender: m.values for m in v if isinstance(m, Blinded)} for v in views]
    for name in blinded[0]:
        a, b = blinded[0][name], blinded[1][name]
        assert {a[i:i + 32] for i in range(0, len(a), 32)}.isdisjoint({b[i:i + 32] for i in range(0, len(b), 32)})
    # No USCC appears anywhere in what the relay handles.
    wire = b"".join(m.model_dump_json().encode() for v in views for m in v)
    assert not any(code.encode() in wire for code in x[:50])


def test_out_of_turn_and_foreign_messages_are_violations() -> None:
    cfg = _config(1)
    x, ys = _sets(1, seed=30, nx=40, ny=40)
    holder, peer = LabelHolder(cfg, x), Peer("p0", cfg, ys["p0"])
    with pytest.raises(ProtocolViolation):
        holder.handle([])  # before start
    with pytest.raises(ProtocolViolation):
        _ = holder.result
    (hb,) = holder.start()
    (pb,) = peer.start()
    with pytest.raises(ProtocolViolation):
        holder.start()
    with pytest.raises(ProtocolViolation, match="missing"):
        holder.handle([])
    with pytest.raises(ProtocolViolation, match="another run"):
        holder.handle([pb.model_copy(update={"run_id": "other"})])
    with pytest.raises(ProtocolViolation, match="unexpected sender"):
        holder.handle([pb.model_copy(update={"sender": "mallory"})])
    with pytest.raises(ProtocolViolation, match="expected Blinded"):
        holder.handle([Tags(run_id="run-1", sender="p0", to=("bank",), count=0, tags=b"")])
    with pytest.raises(ProtocolViolation, match="two Blinded"):
        holder.handle([pb, pb])
    (lt,) = holder.handle([pb])
    (pt,) = peer.handle([hb])
    with pytest.raises(ProtocolViolation, match="Tags"):
        holder.handle([pb])  # a second blinded set is out of turn now
    with pytest.raises(ProtocolViolation, match="tags for a set"):
        holder.handle([pt.model_copy(update={"count": 1, "tags": pt.tags[:16]})])
    assert holder.handle([pt]) == [] and peer.handle([lt]) == []
    with pytest.raises(ProtocolViolation):
        peer.handle([lt])
    with pytest.raises(ProtocolViolation):
        Peer("stranger", cfg, ys["p0"])


def test_degenerate_point_from_peer_raises_invalid_point() -> None:
    cfg = _config(1)
    x, ys = _sets(1, seed=40, nx=30, ny=30)
    holder, peer = LabelHolder(cfg, x), Peer("p0", cfg, ys["p0"])
    holder.start()
    (pb,) = peer.start()
    poisoned = pb.model_copy(update={"values": pb.values[:64] + bytes(32) + pb.values[96:]})
    with pytest.raises(InvalidPoint, match="blinded set of p0: value 2 of 30"):
        holder.handle([poisoned])


def test_schemas_reject_inconsistent_sizes() -> None:
    with pytest.raises(ValueError):
        Blinded(run_id="r", sender="a", to=("b",), count=2, tag_key=bytes(32), values=bytes(63))
    with pytest.raises(ValueError):
        Tags(run_id="r", sender="a", to=("b",), count=1, tags=bytes(15))
    with pytest.raises(ValueError):
        PsiConfig(consortium="c", run_id="r", label_holder="bank", peers=("bank",))
    with pytest.raises(ValueError):
        PsiConfig(consortium="c", run_id="r", label_holder="bank", peers=("a", "a"))


@pytest.mark.parametrize("mode", ["universe", "intersection"])
def test_parties_survive_a_fresh_process_per_message(mode: str) -> None:
    """Every step restores the party from its JSON snapshot, as a host with one process per message would."""
    cfg = _config(2, mode)
    x, ys = _sets(2, seed=50, nx=200, ny=180)
    inputs = {"bank": x, **ys}
    live = {"bank": LabelHolder(cfg, x), **{p: Peer(p, cfg, ys[p]) for p in cfg.peers}}
    out = [m for p in live.values() for m in p.start()]
    saved = {name: p.export_state().model_dump_json() for name, p in live.items()}
    assert all(x[0] not in s for s in saved.values()) and "secret" in repr(live["bank"].export_state())
    results = {}
    while len(results) < len(inputs):
        boxes = route(out)
        out = []
        for name, box in boxes.items():
            snap = PartyState.model_validate_json(saved[name])
            kind = LabelHolder if name == "bank" else Peer
            party = kind.restore(snap, inputs[name])
            out += party.handle(box)
            if party.done:
                results[name] = party.result
            else:
                saved[name] = party.export_state().model_dump_json()
    order_x = [x[i] for i in results["bank"].rows]
    for p in cfg.peers:
        if mode == "intersection":
            assert [ys[p][i] for i in results[p].rows] == order_x
        else:
            assert {ys[p][i] for i in results[p].rows} == set(x) & set(ys[p])
    with pytest.raises(ProtocolViolation, match="another list"):
        LabelHolder.restore(_fresh_state(cfg, x), x[:-1])
    with pytest.raises(ProtocolViolation, match="another list"):
        LabelHolder.restore(_fresh_state(cfg, x), x[:-1] + [ys["p0"][0] if ys["p0"][0] not in x else POOL[-1]])
    with pytest.raises(ProtocolViolation, match="not a peer"):
        Peer.restore(_fresh_state(cfg, x), x)


def _fresh_state(cfg: PsiConfig, ids: list[str]) -> PartyState:
    holder = LabelHolder(cfg, ids)
    holder.start()
    return holder.export_state()


def test_messages_travel_as_one_flat_record_of_names_counts_and_raw_bytes() -> None:
    cfg = _config(2, "intersection")
    x, ys = _sets(2, seed=60, nx=50, ny=40)
    parties = {"bank": LabelHolder(cfg, x), **{p: Peer(p, cfg, ys[p]) for p in cfg.peers}}
    out = [m for p in parties.values() for m in p.start()]
    seen: list = []
    while not all(p.done for p in parties.values()):
        fields = encode_messages(out)
        assert all(isinstance(v, (str, int, bytes)) or (isinstance(v, list) and all(isinstance(t, str) for t in v))
                   for v in fields.values())
        back = decode_messages(fields)
        assert back == out
        seen += back
        out = [m for name, box in route(back).items() for m in parties[name].handle(box)]
    assert {type(m) for m in seen} == {Blinded, Tags, Selection}
    assert encode_messages([]) == {} and decode_messages({}) == []
    fields = encode_messages(seen[:1])
    with pytest.raises(ProtocolViolation, match="malformed"):
        decode_messages({**fields, "0.values": fields["0.values"][:-1]})
    with pytest.raises(ProtocolViolation, match="0..n-1"):
        decode_messages({k.replace("0.", "1.", 1): v for k, v in fields.items()})
    with pytest.raises(ProtocolViolation, match="not '<index>.<field>'"):
        decode_messages({"kind": "blinded"})
