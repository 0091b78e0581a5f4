"""The coordinator's part in multi-party ECDH-PSI: relay opaque bytes, learn sizes only.

The protocol is :mod:`protocols.psi` (universe mode: the label holder's rows are the universe);
this module moves its messages over three Flower rounds (see :mod:`protocols.wire.vertical`) with
:func:`protocols.psi.route`: collect every party's blinded set; hand each party the messages
addressed to it and collect tags; hand the tags on and collect match sizes. Blinded values are under
secret per-run scalars and tags under keys from an X25519 agreement between the two parties, so
nothing the relay holds can be matched or inverted; what it learns is each set's size and each
intersection's size (documented leakage). It checks what it can see: who sent a message, whom it
is for, and that sizes agree.

Pure steps (which messages go to whom, the checks) are separated from messaging so they can be tested alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from flwr.app import ConfigRecord, RecordDict

from coordinator.strategies import NodeReply
from protocols.errors import ProtocolViolation
from protocols.psi import Blinded, Selection, Tags, decode_messages, encode_messages, route
from protocols.wire import vertical as w

#: ``exchange(plan, message_type) -> replies``: one Flower round (the workflow supplies it).
Exchange = Callable[[list[tuple[int, RecordDict]], str], list[NodeReply]]
Message = Blinded | Tags | Selection


@dataclass
class PsiRelayState:
    """What the relay holds between rounds: node names, roles, sizes and the messages in flight."""

    names: dict[int, str] = field(default_factory=dict)
    label_holder: str = ""
    peers: list[str] = field(default_factory=list)
    universe: int = 0
    set_sizes: dict[str, int] = field(default_factory=dict)
    matched: dict[str, int] = field(default_factory=dict)
    outbox: list[Message] = field(default_factory=list)
    rounds: int = 0

    @property
    def node_of(self) -> dict[str, int]:
        return {name: nid for nid, name in self.names.items()}


def _require_ok(replies: Sequence[NodeReply], step: str) -> None:
    failed = [r for r in replies if not r.ok]
    if failed:
        detail = "; ".join(f"{r.participant}: {r.error}" for r in failed)
        raise ProtocolViolation(f"PSI {step}: {len(failed)} participant(s) failed ({detail})")


def _messages(state: PsiRelayState, reply: NodeReply, step: str, kind: type[Blinded] | type[Tags]) -> list[Message]:
    """A node's messages: each of ``kind``, sent in its own name, to known parties other than itself."""
    name = state.names[reply.node_id]
    content = reply.content
    assert content is not None
    msgs = decode_messages(content[w.REC_PSI] if w.REC_PSI in content else {})  # type: ignore[arg-type]
    for msg in msgs:
        if not isinstance(msg, kind):
            raise ProtocolViolation(f"PSI {step}: {name} sent a {type(msg).__name__} message, expected {kind.__name__}")
        if msg.sender != name:
            raise ProtocolViolation(f"PSI {step}: {name} sent a message in the name of {msg.sender!r}")
        strangers = [t for t in msg.to if t not in state.set_sizes or t == name]
        if strangers:
            raise ProtocolViolation(f"PSI {step}: {name} addressed a message to {strangers}")
    return msgs


def collect_blinded(state: PsiRelayState, replies: Sequence[NodeReply], expected: Sequence[str] | None) -> None:
    """Round 1 replies: names, the single label holder, one blinded set per party (its size is all we read)."""
    _require_ok(replies, "blind")
    holders = set()
    for r in replies:
        cfg = r.content[w.REC_CONFIG]  # type: ignore[index]
        name = str(cfg[w.K_PARTICIPANT])
        if name in state.names.values():
            raise ProtocolViolation(f"two nodes claim to be participant {name!r}")
        state.names[r.node_id] = name
        if str(cfg[w.K_ROLE]) == w.ROLE_LABEL_HOLDER:
            holders.add(name)
    if len(holders) != 1:
        raise ProtocolViolation(f"PSI needs exactly one label holder, nodes named {sorted(holders)}")
    state.label_holder = holders.pop()
    if expected is not None and sorted(state.names.values()) != sorted(expected):
        raise ProtocolViolation(f"nodes are {sorted(state.names.values())}, the consortium's data holders {sorted(expected)}")
    state.peers = sorted(n for n in state.names.values() if n != state.label_holder)
    if not state.peers:
        raise ProtocolViolation("vertical training needs at least one participant besides the label holder")
    state.set_sizes = dict.fromkeys(state.names.values(), 0)
    for r in replies:
        msgs = _messages(state, r, "blind", Blinded)
        name = state.names[r.node_id]
        if len(msgs) != 1:
            raise ProtocolViolation(f"PSI blind: {name} sent {len(msgs)} blinded sets, expected 1")
        state.set_sizes[name] = msgs[0].count  # what the relay learns: sizes
        state.outbox += msgs
    state.universe = state.set_sizes[state.label_holder]


def collect_tags(state: PsiRelayState, replies: Sequence[NodeReply]) -> None:
    """Round 2 replies: tags are over the recipient's own set, so their count must be that set's size."""
    _require_ok(replies, "reblind")
    for r in replies:
        for msg in _messages(state, r, "reblind", Tags):
            for to in msg.to:
                if msg.count != state.set_sizes[to]:
                    raise ProtocolViolation(f"PSI reblind: {msg.sender} sent {msg.count} tags to {to}, "
                                            f"whose set has {state.set_sizes[to]}")
            state.outbox.append(msg)


def plan_next(state: PsiRelayState) -> list[tuple[int, RecordDict]]:
    """Route the messages in flight (:func:`protocols.psi.route`); every party must get some."""
    boxes = route(state.outbox)
    state.outbox = []
    idle = sorted(n for n in state.names.values() if n not in boxes)
    if idle:
        raise ProtocolViolation(f"PSI: nothing to relay to {', '.join(idle)}")
    node = state.node_of
    return [(node[name], RecordDict({w.REC_PSI: ConfigRecord(encode_messages(boxes[name]))}))
            for name in [state.label_holder, *state.peers]]


def collect_matches(state: PsiRelayState, replies: Sequence[NodeReply]) -> None:
    """Sizes only; the label holder's and each peer's view of an intersection must agree."""
    _require_ok(replies, "match")
    for r in replies:
        if _messages(state, r, "match", Tags):
            raise ProtocolViolation(f"PSI match: {state.names[r.node_id]} is not done after three rounds")
    by_name = {state.names[r.node_id]: r.content[w.REC_CONFIG] for r in replies}  # type: ignore[index]
    lh_cfg = by_name[state.label_holder]
    if int(lh_cfg[w.K_UNIVERSE]) != state.universe:
        raise ProtocolViolation(f"PSI match: the label holder sees a universe of {lh_cfg[w.K_UNIVERSE]}, not {state.universe}")
    lh_view = dict(zip([str(p) for p in lh_cfg[w.K_PEERS]], [int(m) for m in lh_cfg[w.K_MATCHED_BY_PEER]]))
    for p in state.peers:
        cfg = by_name[p]
        if int(cfg[w.K_UNIVERSE]) != state.universe:
            raise ProtocolViolation(f"PSI match: {p} sees a universe of {cfg[w.K_UNIVERSE]}, not {state.universe}")
        if int(cfg[w.K_MATCHED]) != lh_view.get(p):
            raise ProtocolViolation(f"PSI match: {p} matched {cfg[w.K_MATCHED]} rows, the label holder {lh_view.get(p)}")
        state.matched[p] = int(cfg[w.K_MATCHED])


def run_psi(state: PsiRelayState, nodes: Sequence[int], exchange: Exchange, *, domain_config: Mapping[str, object],
            expected: Sequence[str] | None = None) -> PsiRelayState:
    """Drive the three rounds; ``domain_config`` goes to every node in round 1 (e.g. the as-of month)."""
    blind = [(nid, RecordDict({w.REC_CONFIG: ConfigRecord(dict(domain_config))})) for nid in nodes]  # type: ignore[arg-type]
    collect_blinded(state, exchange(blind, w.MSG_PSI_BLIND), expected)
    collect_tags(state, exchange(plan_next(state), w.MSG_PSI_REBLIND))
    collect_matches(state, exchange(plan_next(state), w.MSG_PSI_MATCH))
    state.rounds = 3
    return state


__all__ = ["PsiRelayState", "run_psi", "collect_blinded", "collect_tags", "plan_next", "collect_matches"]
