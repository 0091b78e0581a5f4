"""The coordinator's part in multi-party ECDH-PSI: relay opaque bytes, learn sizes only.

Three Flower rounds (see :mod:`protocols.wire.vertical`): collect every party's
blinded set; hand the label holder every peer's set and each peer the label holder's set, collect
tags; hand each side the tags meant for it, collect match sizes. Blinded values are under secret
per-run scalars and tags under keys from an X25519 agreement between the two parties, so nothing
the relay holds can be matched or inverted; what it learns is each set's size and each
intersection's size (documented leakage).

Pure planning (which bytes go to whom) is separated from messaging so it can be tested alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from flwr.app import ConfigRecord, RecordDict

from coordinator.strategies import NodeReply
from protocols.errors import ProtocolViolation
from protocols.wire import vertical as w

#: ``exchange(plan, message_type) -> replies``: one Flower round (the workflow supplies it).
Exchange = Callable[[list[tuple[int, RecordDict]], str], list[NodeReply]]


@dataclass
class PsiRelayState:
    """What the relay holds between rounds: node names, roles and opaque bytes."""

    names: dict[int, str] = field(default_factory=dict)
    label_holder: str = ""
    blinded: dict[str, bytes] = field(default_factory=dict)
    tag_keys: dict[str, bytes] = field(default_factory=dict)
    tags: dict[str, list[bytes]] = field(default_factory=dict)
    peers: list[str] = field(default_factory=list)
    universe: int = 0
    set_sizes: dict[str, int] = field(default_factory=dict)
    matched: dict[str, int] = field(default_factory=dict)
    rounds: int = 0

    @property
    def node_of(self) -> dict[str, int]:
        return {name: nid for nid, name in self.names.items()}



def _require_ok(replies: Sequence[NodeReply], step: str) -> None:
    failed = [r for r in replies if not r.ok]
    if failed:
        detail = "; ".join(f"{r.participant}: {r.error}" for r in failed)
        raise ProtocolViolation(f"PSI {step}: {len(failed)} participant(s) failed ({detail})")


def collect_blinded(state: PsiRelayState, replies: Sequence[NodeReply], expected: Sequence[str] | None) -> None:
    """Round 1 replies: names, the single label holder, blinded sets and tag keys."""
    _require_ok(replies, "blind")
    holders = set()
    for r in replies:
        cfg, payload = r.content[w.REC_CONFIG], r.content[w.REC_PAYLOAD]  # type: ignore[index]
        name = str(cfg[w.K_PARTICIPANT])
        if name in state.names.values():
            raise ProtocolViolation(f"two nodes claim to be participant {name!r}")
        state.names[r.node_id] = name
        if str(cfg[w.K_ROLE]) == w.ROLE_LABEL_HOLDER:
            holders.add(name)
        state.blinded[name] = bytes(payload[w.P_BLINDED])
        state.tag_keys[name] = bytes(payload[w.P_TAG_KEY])
        if len(state.blinded[name]) % 32:
            raise ProtocolViolation(f"PSI blind: {name} sent a blinded set of {len(state.blinded[name])} bytes")
        state.set_sizes[name] = len(state.blinded[name]) // 32  # what the relay learns: sizes
    if len(holders) != 1:
        raise ProtocolViolation(f"PSI needs exactly one label holder, nodes named {sorted(holders)}")
    state.label_holder = holders.pop()
    if expected is not None and sorted(state.names.values()) != sorted(expected):
        raise ProtocolViolation(f"nodes are {sorted(state.names.values())}, the consortium's data holders {sorted(expected)}")
    state.peers = sorted(n for n in state.names.values() if n != state.label_holder)
    if not state.peers:
        raise ProtocolViolation("vertical training needs at least one participant besides the label holder")
    state.universe = len(state.blinded[state.label_holder]) // 32


def plan_reblind(state: PsiRelayState) -> list[tuple[int, RecordDict]]:
    lh, node = state.label_holder, state.node_of
    plan = [(node[lh], RecordDict({
        w.REC_CONFIG: ConfigRecord({w.K_PEERS: list(state.peers)}),
        w.REC_PAYLOAD: ConfigRecord({w.P_PEER_BLINDED: [state.blinded[p] for p in state.peers],
                                     w.P_PEER_TAG_KEYS: [state.tag_keys[p] for p in state.peers]}),
    }))]
    for p in state.peers:
        plan.append((node[p], RecordDict({
            w.REC_CONFIG: ConfigRecord({w.K_PEERS: [lh]}),
            w.REC_PAYLOAD: ConfigRecord({w.P_PEER_BLINDED: [state.blinded[lh]], w.P_PEER_TAG_KEYS: [state.tag_keys[lh]]}),
        })))
    return plan


def collect_tags(state: PsiRelayState, replies: Sequence[NodeReply]) -> None:
    _require_ok(replies, "reblind")
    for r in replies:
        name = state.names[r.node_id]
        tags = [bytes(t) for t in r.content[w.REC_PAYLOAD][w.P_TAGS]]  # type: ignore[index]
        want = len(state.peers) if name == state.label_holder else 1
        if len(tags) != want:
            raise ProtocolViolation(f"PSI reblind: {name} sent {len(tags)} tag sets, expected {want}")
        state.tags[name] = tags
    state.blinded.clear()  # no longer needed: hold as little as possible


def plan_match(state: PsiRelayState) -> list[tuple[int, RecordDict]]:
    """The label holder's tags for peer i go to peer i; every peer's tags go to the label holder."""
    lh, node = state.label_holder, state.node_of
    plan = [(node[lh], RecordDict({
        w.REC_CONFIG: ConfigRecord({w.K_PEERS: list(state.peers)}),
        w.REC_PAYLOAD: ConfigRecord({w.P_PEER_TAGS: [state.tags[p][0] for p in state.peers]}),
    }))]
    for i, p in enumerate(state.peers):
        plan.append((node[p], RecordDict({
            w.REC_CONFIG: ConfigRecord({w.K_PEERS: [lh]}),
            w.REC_PAYLOAD: ConfigRecord({w.P_PEER_TAGS: [state.tags[lh][i]]}),
        })))
    return plan


def collect_matches(state: PsiRelayState, replies: Sequence[NodeReply]) -> None:
    """Sizes only; the label holder's and each peer's view of an intersection must agree."""
    _require_ok(replies, "match")
    by_name = {state.names[r.node_id]: r.content[w.REC_CONFIG] for r in replies}  # type: ignore[index]
    lh_cfg = by_name[state.label_holder]
    lh_view = dict(zip([str(p) for p in lh_cfg[w.K_PEERS]], [int(m) for m in lh_cfg[w.K_MATCHED_BY_PEER]]))
    for p in state.peers:
        cfg = by_name[p]
        if int(cfg[w.K_UNIVERSE]) != state.universe:
            raise ProtocolViolation(f"PSI match: {p} sees a universe of {cfg[w.K_UNIVERSE]}, not {state.universe}")
        if int(cfg[w.K_MATCHED]) != lh_view.get(p):
            raise ProtocolViolation(f"PSI match: {p} matched {cfg[w.K_MATCHED]} rows, the label holder {lh_view.get(p)}")
        state.matched[p] = int(cfg[w.K_MATCHED])
    state.tags.clear()


def run_psi(state: PsiRelayState, nodes: Sequence[int], exchange: Exchange, *, domain_config: Mapping[str, object],
            expected: Sequence[str] | None = None) -> PsiRelayState:
    """Drive the three rounds; ``domain_config`` goes to every node in round 1 (e.g. the as-of month)."""
    blind = [(nid, RecordDict({w.REC_CONFIG: ConfigRecord(dict(domain_config))})) for nid in nodes]  # type: ignore[arg-type]
    collect_blinded(state, exchange(blind, w.MSG_PSI_BLIND), expected)
    collect_tags(state, exchange(plan_reblind(state), w.MSG_PSI_REBLIND))
    collect_matches(state, exchange(plan_match(state), w.MSG_PSI_MATCH))
    state.rounds = 3
    return state


__all__ = ["PsiRelayState", "run_psi", "collect_blinded", "plan_reblind", "collect_tags", "plan_match", "collect_matches"]
