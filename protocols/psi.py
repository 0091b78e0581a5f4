"""Multi-party ECDH-PSI as a pure state machine: message schemas, party objects, relay routing.

No I/O and no Flower here: a party turns an inbox into an outbox (``start() -> [msg]``,
``handle(inbox) -> [msg]``) until ``result`` is ready; a relay forwards messages by their ``to``
field and reads nothing but sizes. The cryptography is :mod:`crypto.psi`.

Roles: one **label holder** L (its rows are the universe) and one or more **peers** P_1..P_k. Every
pair (L, P_j) runs ECDH-PSI; L uses one blinded set for all pairs.

Flow (three relay rounds at most, each one fat Flower message per party)::

    round 1  start()                  L: a·H(x) for its rows in a secret random order π  → every P_j
                                      P_j: b_j·H(y) in a secret random order σ_j           → L
                                      (each also sends a fresh tag-agreement public key)
    round 2  handle(blinded)          P_j: tags of b_j·a·H(x) (direction P_j→L), π order   → L
                                      L ("universe" mode): tags of a·b_j·H(y), σ_j order   → P_j
    round 3  handle(tags)             "universe": everyone is done.
                                      "intersection": L finds the rows every peer has and sends
                                      each P_j the σ_j positions of those rows, in the shared order
    round 4  handle(selection)        "intersection" only: P_j is done.

So "universe" mode (vertical training) needs two relays of party data (rounds 2 and 3), and
"intersection" mode one more, small, message per peer.

What each party learns
----------------------
* **Everyone**: the size of each set it exchanges with (L learns every |Y_j|, P_j learns |X|).
* **Universe mode.** L: for each peer, which of L's rows that peer also has (``present``). P_j:
  which of its own rows L has, and each one's position in π — a uniformly random secret order, so
  positions reveal nothing but |X|. P_j learns nothing about other peers.
* **Intersection mode.** L: as in universe mode (it is the hub). P_j: only which of its own rows are
  in the common intersection I = X ∩ Y_1 ∩ … ∩ Y_k and their order (ranks in π restricted to I).
* **Shared order**: ascending π position. Universe mode: ``positions`` index π (size |X|);
  intersection mode: ranks 0..|I|-1. π is drawn by L from os.urandom and never sent, so the order
  leaks nothing beyond membership.
* **The relay** forwards blinded points (under per-run scalars), tags (under keys from an X25519
  agreement between the two parties it cannot derive) and index lists into secret random orders: it
  learns |X|, every |Y_j| and, in intersection mode, |I|; it cannot match or invert anything.

Input rules: every USCC is validated before any cryptography (:class:`~protocols.errors.InvalidUSCC`
names the row, not the code); a repeated USCC (after normalisation) is rejected with
:class:`~protocols.errors.DuplicateIdentifier` naming both rows — a customer table with duplicates is
a data error, and silently deduplicating would misalign features. Any message out of turn, from an
unexpected sender, for another run or with inconsistent sizes raises
:class:`~protocols.errors.ProtocolViolation`; a malformed point from a peer raises
:class:`crypto.errors.InvalidPoint`.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from crypto.psi import POINT_BYTES, TAG_BYTES, BlindingKey, TagAgreement, match_tags
from protocols.errors import DuplicateIdentifier, InvalidUSCC, ProtocolViolation
from protocols.uscc import validate_uscc

__all__ = [
    "PsiConfig",
    "Blinded",
    "Tags",
    "Selection",
    "PsiMessage",
    "PsiResult",
    "PartyState",
    "LabelHolder",
    "Peer",
    "prepare_ids",
    "route",
    "parse_message",
    "encode_messages",
    "decode_messages",
]

INDEX_BYTES = 4
Mode = Literal["universe", "intersection"]
_Name = Annotated[str, Field(min_length=1, max_length=128)]


# --------------------------------------------------------------------------------------------------
# Schemas


class PsiConfig(BaseModel):
    """Everything the parties of one run agree on; the coordinator sends it to all of them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    consortium: _Name
    run_id: _Name
    label_holder: _Name
    peers: tuple[_Name, ...] = Field(min_length=1)
    mode: Mode = "universe"

    @model_validator(mode="after")
    def _distinct(self) -> PsiConfig:
        if len(set(self.peers)) != len(self.peers):
            raise ValueError("peers must be distinct")
        if self.label_holder in self.peers:
            raise ValueError("the label holder cannot also be a peer")
        return self

    @property
    def domain(self) -> bytes:
        """Hash domain: ids hash differently in every consortium and run."""
        return _encode("psi-domain", self.consortium, self.run_id)

    def pair_context(self, peer: str) -> bytes:
        """What both ends of the (label holder, peer) pair bind their tag keys to."""
        return _encode("psi-pair", self.consortium, self.run_id, self.label_holder, peer)


def _encode(*parts: str) -> bytes:
    out = b""
    for p in parts:
        raw = p.encode()
        out += len(raw).to_bytes(2, "big") + raw
    return out


class _Msg(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    run_id: _Name
    sender: _Name
    to: tuple[_Name, ...] = Field(min_length=1)
    count: int = Field(ge=0, lt=2**32)


class Blinded(_Msg):
    """A party's own ids, hashed and blinded, in its secret random order; plus its tag-agreement key."""

    kind: Literal["blinded"] = "blinded"
    tag_key: bytes
    values: bytes

    @field_validator("tag_key")
    @classmethod
    def _key_size(cls, v: bytes) -> bytes:
        if len(v) != 32:
            raise ValueError("tag_key must be 32 bytes")
        return v

    @model_validator(mode="after")
    def _size(self) -> Blinded:
        if len(self.values) != POINT_BYTES * self.count:
            raise ValueError(f"values hold {len(self.values)} bytes, expected {POINT_BYTES} x {self.count}")
        return self


class Tags(_Msg):
    """Tags of the recipient's values double-blinded by the sender, in the recipient's order."""

    kind: Literal["tags"] = "tags"
    tags: bytes

    @model_validator(mode="after")
    def _size(self) -> Tags:
        if len(self.tags) != TAG_BYTES * self.count:
            raise ValueError(f"tags hold {len(self.tags)} bytes, expected {TAG_BYTES} x {self.count}")
        return self


class Selection(_Msg):
    """Intersection mode: positions (uint32, little-endian) in the recipient's blinded order, in shared order."""

    kind: Literal["selection"] = "selection"
    indices: bytes

    @model_validator(mode="after")
    def _size(self) -> Selection:
        if len(self.indices) != INDEX_BYTES * self.count:
            raise ValueError(f"indices hold {len(self.indices)} bytes, expected {INDEX_BYTES} x {self.count}")
        return self


PsiMessage = Annotated[Union[Blinded, Tags, Selection], Field(discriminator="kind")]
_ADAPTER: TypeAdapter[Blinded | Tags | Selection] = TypeAdapter(PsiMessage)


def parse_message(data: str | bytes | dict[str, object]) -> Blinded | Tags | Selection:
    """A message from its JSON (bytes as base64) or its ``model_dump()`` dict; no pickle anywhere."""
    if isinstance(data, dict):
        return _ADAPTER.validate_python(data)
    return _ADAPTER.validate_json(data)


def encode_messages(messages: Iterable[Blinded | Tags | Selection]) -> dict[str, str | int | bytes | list[str]]:
    """Messages as one flat mapping ``"<i>.<field>" -> value`` of names, counts, raw bytes and name lists.

    Fits a transport record of scalars and bytes (a Flower ``ConfigRecord``) without base64 or pickle.
    """
    out: dict[str, str | int | bytes | list[str]] = {}
    for i, msg in enumerate(messages):
        for key, value in msg.model_dump().items():
            out[f"{i}.{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def decode_messages(fields: Mapping[str, object]) -> list[Blinded | Tags | Selection]:
    """Inverse of :func:`encode_messages`; anything malformed is a :class:`ProtocolViolation` (values never echoed)."""
    grouped: dict[int, dict[str, object]] = {}
    for key, value in fields.items():
        idx, sep, name = str(key).partition(".")
        if not sep or not idx.isdigit():
            raise ProtocolViolation(f"PSI record key {str(key)[:40]!r} is not '<index>.<field>'")
        grouped.setdefault(int(idx), {})[name] = value
    if sorted(grouped) != list(range(len(grouped))):
        raise ProtocolViolation("PSI record: message indices are not 0..n-1")
    out = []
    for i in range(len(grouped)):
        try:
            out.append(parse_message(grouped[i]))
        except ValidationError as exc:
            where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
            raise ProtocolViolation(f"PSI record: message {i} is malformed ({where})") from None
    return out


def route(outgoing: Iterable[Blinded | Tags | Selection]) -> dict[str, list[Blinded | Tags | Selection]]:
    """The relay's whole job: group messages by recipient. Reads ``to`` only, never the payload."""
    inboxes: dict[str, list[Blinded | Tags | Selection]] = {}
    for msg in outgoing:
        for name in msg.to:
            inboxes.setdefault(name, []).append(msg)
    return inboxes


# --------------------------------------------------------------------------------------------------
# Input preparation


def prepare_ids(ids: Sequence[str]) -> list[str]:
    """Validated, normalised USCCs in input order; rejects invalid codes and duplicates before any crypto."""
    out: list[str] = []
    first_row: dict[str, int] = {}
    duplicates: list[tuple[int, int]] = []
    for row, code in enumerate(ids):
        try:
            norm = validate_uscc(code)
        except InvalidUSCC as exc:
            raise InvalidUSCC(f"<row {row}>", exc.rule) from None  # never echo the code itself
        if norm in first_row:
            duplicates.append((first_row[norm], row))
        else:
            first_row[norm] = row
        out.append(norm)
    if duplicates:
        a, b = duplicates[0]
        more = f" ({len(duplicates)} repeated rows in all)" if len(duplicates) > 1 else ""
        raise DuplicateIdentifier(f"rows {a} and {b} hold the same USCC{more}; PSI input must be a set")
    return out


def _ids_digest(ids: Sequence[str]) -> bytes:
    """Binds a saved state to the exact id list it was made for (local only, never sent)."""
    h = hashlib.sha256()
    for code in ids:
        h.update(code.encode("ascii") + b"\n")
    return h.digest()


def _secret_permutation(n: int) -> np.ndarray:
    """A uniformly random permutation from os.urandom (argsort of random 64-bit keys)."""
    if n == 0:
        return np.empty(0, dtype=np.int64)
    keys = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
    return np.argsort(keys, kind="stable").astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Parties


@dataclass(frozen=True)
class PsiResult:
    """One party's output; row numbers refer to its own input list, never ids.

    ``rows[k]`` is this party's row at position ``positions[k]`` of the shared order (ascending).
    ``size`` is the length of the shared order (|X| in universe mode, |I| in intersection mode).
    ``present`` (label holder, universe mode): per peer, a mask over shared positions.
    """

    mode: Mode
    size: int
    rows: np.ndarray
    positions: np.ndarray
    present: dict[str, np.ndarray] = field(default_factory=dict)


class _State(enum.Enum):
    NEW = "new"
    AWAIT_BLINDED = "await-blinded"
    AWAIT_TAGS = "await-tags"
    AWAIT_SELECTION = "await-selection"
    DONE = "done"


class PartyState(BaseModel):
    """A party between two messages, for hosts that serve each message in a fresh process.

    It holds the run's secrets (blinding scalar, tag-agreement key, secret order): keep it in the
    node's in-memory run state (Flower's ``context.state``), never in logs, on the wire or on disk.
    The ids are not part of it: the holder supplies them again to :meth:`LabelHolder.restore` /
    :meth:`Peer.restore`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    name: _Name
    config: PsiConfig
    state: Literal["await-blinded", "await-tags", "await-selection"]
    order: bytes
    key: bytes
    agreement: bytes
    kept: dict[str, bytes] = Field(default_factory=dict)
    universe: int = 0
    ids_digest: bytes

    def __repr__(self) -> str:
        return f"PartyState(name={self.name!r}, state={self.state!r}, <secrets>)"

    __str__ = __repr__


class _Party:
    def export_state(self) -> PartyState:
        """Snapshot after ``start()`` or a ``handle()`` that left the run unfinished (holds secrets)."""
        if self._state in (_State.NEW, _State.DONE):
            raise ProtocolViolation(f"{self.name}: nothing to export in state {self._state.value}")
        return PartyState(name=self.name, config=self.config, state=self._state.value,  # type: ignore[arg-type]
                          order=self._order.astype("<i8").tobytes(), key=self._key.export_secret(),
                          agreement=self._agreement.export_secret(), kept=self._kept_state(),
                          universe=getattr(self, "_universe", 0), ids_digest=_ids_digest(self._ids))

    @classmethod
    def _restored(cls, snapshot: PartyState, ids: Sequence[str], workers: int | None) -> _Party:
        self = cls.__new__(cls)
        self.name, self.config = snapshot.name, snapshot.config
        self._ids = prepare_ids(ids)
        self._workers = workers
        self._state = _State(snapshot.state)
        self._order = np.frombuffer(snapshot.order, dtype="<i8").astype(np.int64)
        if len(self._order) != len(self._ids) or _ids_digest(self._ids) != snapshot.ids_digest:
            raise ProtocolViolation(f"{self.name}: restored state was made for another list of ids")
        self._key = BlindingKey.from_secret(snapshot.key)
        self._agreement = TagAgreement.from_secret(snapshot.agreement)
        self._result = None
        return self

    def _kept_state(self) -> dict[str, bytes]:
        raise NotImplementedError

    def __init__(self, name: str, config: PsiConfig, ids: Sequence[str], *, workers: int | None) -> None:
        self.name = name
        self.config = config
        self._ids = prepare_ids(ids)
        self._workers = workers
        self._state = _State.NEW
        self._order = _secret_permutation(len(self._ids))
        self._key = BlindingKey.generate()
        self._agreement = TagAgreement()
        self._result: PsiResult | None = None

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    @property
    def result(self) -> PsiResult:
        if self._result is None:
            raise ProtocolViolation(f"{self.name}: PSI result requested in state {self._state.value}")
        return self._result

    def _expect(self, state: _State, what: str) -> None:
        if self._state is not state:
            raise ProtocolViolation(f"{self.name}: {what} is not accepted in state {self._state.value}")

    def _blinded(self, to: Sequence[str]) -> Blinded:
        ordered = [self._ids[i].encode("ascii") for i in self._order]
        values = self._key.hash_and_blind(ordered, self.config.domain, workers=self._workers)
        return Blinded(run_id=self.config.run_id, sender=self.name, to=tuple(to), count=len(ordered),
                       tag_key=self._agreement.public_bytes, values=values)

    def _collect(self, inbox: Sequence[object], kind: type[_Msg], senders: Sequence[str]) -> dict[str, _Msg]:
        """Exactly one ``kind`` message from each of ``senders``, for this run, addressed to us."""
        got: dict[str, _Msg] = {}
        for msg in inbox:
            if not isinstance(msg, kind):
                raise ProtocolViolation(f"{self.name}: got a {type(msg).__name__} message, expected {kind.__name__}")
            if msg.run_id != self.config.run_id:
                raise ProtocolViolation(f"{self.name}: message from {msg.sender} belongs to another run")
            if self.name not in msg.to:
                raise ProtocolViolation(f"{self.name}: message from {msg.sender} is addressed to others")
            if msg.sender not in senders:
                raise ProtocolViolation(f"{self.name}: unexpected sender {msg.sender!r}")
            if msg.sender in got:
                raise ProtocolViolation(f"{self.name}: two {kind.__name__} messages from {msg.sender}")
            got[msg.sender] = msg
        missing = [s for s in senders if s not in got]
        if missing:
            raise ProtocolViolation(f"{self.name}: missing {kind.__name__} from {', '.join(missing)}")
        return got


class LabelHolder(_Party):
    """The party whose rows are the universe; it talks to every peer."""

    def __init__(self, config: PsiConfig, ids: Sequence[str], *, workers: int | None = None) -> None:
        super().__init__(config.label_holder, config, ids, workers=workers)
        self._kept: dict[str, bytes] = {}
        self._peer_sizes: dict[str, int] = {}

    @classmethod
    def restore(cls, snapshot: PartyState, ids: Sequence[str], *, workers: int | None = None) -> LabelHolder:
        """Continue a run from :meth:`export_state`, given the same ids."""
        if snapshot.name != snapshot.config.label_holder:
            raise ProtocolViolation(f"state of {snapshot.name!r} is not the label holder's")
        self = cls._restored(snapshot, ids, workers)
        assert isinstance(self, LabelHolder)
        self._kept = dict(snapshot.kept)
        self._peer_sizes = {}
        return self

    def _kept_state(self) -> dict[str, bytes]:
        return dict(self._kept)

    def start(self) -> list[Blinded | Tags | Selection]:
        self._expect(_State.NEW, "start")
        msg = self._blinded(self.config.peers)
        self._state = _State.AWAIT_BLINDED
        return [msg]

    def handle(self, inbox: Sequence[Blinded | Tags | Selection]) -> list[Blinded | Tags | Selection]:
        if self._state is _State.AWAIT_BLINDED:
            return self._on_blinded(self._collect(inbox, Blinded, self.config.peers))
        if self._state is _State.AWAIT_TAGS:
            return self._on_tags(self._collect(inbox, Tags, self.config.peers))
        raise ProtocolViolation(f"{self.name}: no message is accepted in state {self._state.value}")

    def _on_blinded(self, got: dict[str, _Msg]) -> list[Blinded | Tags | Selection]:
        out: list[Blinded | Tags | Selection] = []
        for peer in self.config.peers:
            msg = got[peer]
            assert isinstance(msg, Blinded)
            double = self._key.reblind(msg.values, what=f"blinded set of {peer}", workers=self._workers)
            outgoing, incoming = self._agreement.keys(msg.tag_key, self.config.pair_context(peer))
            self._kept[peer] = incoming.tag(double)
            self._peer_sizes[peer] = msg.count
            if self.config.mode == "universe":
                out.append(Tags(run_id=self.config.run_id, sender=self.name, to=(peer,), count=msg.count,
                                tags=outgoing.tag(double)))
        self._state = _State.AWAIT_TAGS
        return out

    def _on_tags(self, got: dict[str, _Msg]) -> list[Blinded | Tags | Selection]:
        n = len(self._ids)
        present: dict[str, np.ndarray] = {}
        peer_pos: dict[str, np.ndarray] = {}
        for peer in self.config.peers:
            msg = got[peer]
            assert isinstance(msg, Tags)
            if msg.count != n:
                raise ProtocolViolation(f"{self.name}: {peer} sent {msg.count} tags for a set of {n}")
            mine, theirs = match_tags(msg.tags, self._kept[peer])
            mask = np.zeros(n, dtype=bool)
            mask[mine] = True
            present[peer] = mask
            at = np.full(n, -1, dtype=np.int64)
            at[mine] = theirs
            peer_pos[peer] = at
        self._kept.clear()
        if self.config.mode == "universe":
            self._result = PsiResult("universe", n, self._order.copy(), np.arange(n, dtype=np.int64), present)
            self._state = _State.DONE
            return []
        common = np.flatnonzero(np.logical_and.reduce([present[p] for p in self.config.peers]))
        out: list[Blinded | Tags | Selection] = []
        for peer in self.config.peers:
            idx = peer_pos[peer][common].astype("<u4")
            out.append(Selection(run_id=self.config.run_id, sender=self.name, to=(peer,), count=len(idx),
                                 indices=idx.tobytes()))
        self._result = PsiResult("intersection", len(common), self._order[common],
                                 np.arange(len(common), dtype=np.int64))
        self._state = _State.DONE
        return out


class Peer(_Party):
    """A data holder aligning its rows to the label holder's universe."""

    def __init__(self, name: str, config: PsiConfig, ids: Sequence[str], *, workers: int | None = None) -> None:
        if name not in config.peers:
            raise ProtocolViolation(f"{name!r} is not a peer of PSI run {config.run_id}")
        super().__init__(name, config, ids, workers=workers)
        self._kept = b""
        self._universe = 0

    @classmethod
    def restore(cls, snapshot: PartyState, ids: Sequence[str], *, workers: int | None = None) -> Peer:
        """Continue a run from :meth:`export_state`, given the same ids."""
        if snapshot.name not in snapshot.config.peers:
            raise ProtocolViolation(f"state of {snapshot.name!r} is not a peer's")
        self = cls._restored(snapshot, ids, workers)
        assert isinstance(self, Peer)
        self._kept = snapshot.kept.get(snapshot.config.label_holder, b"")
        self._universe = snapshot.universe
        return self

    def _kept_state(self) -> dict[str, bytes]:
        return {self.config.label_holder: self._kept} if self._kept else {}

    def start(self) -> list[Blinded | Tags | Selection]:
        self._expect(_State.NEW, "start")
        msg = self._blinded([self.config.label_holder])
        self._state = _State.AWAIT_BLINDED
        return [msg]

    def handle(self, inbox: Sequence[Blinded | Tags | Selection]) -> list[Blinded | Tags | Selection]:
        lh = [self.config.label_holder]
        if self._state is _State.AWAIT_BLINDED:
            return self._on_blinded(self._collect(inbox, Blinded, lh)[lh[0]])
        if self._state is _State.AWAIT_TAGS:
            return self._on_tags(self._collect(inbox, Tags, lh)[lh[0]])
        if self._state is _State.AWAIT_SELECTION:
            return self._on_selection(self._collect(inbox, Selection, lh)[lh[0]])
        raise ProtocolViolation(f"{self.name}: no message is accepted in state {self._state.value}")

    def _on_blinded(self, msg: _Msg) -> list[Blinded | Tags | Selection]:
        assert isinstance(msg, Blinded)
        lh = self.config.label_holder
        double = self._key.reblind(msg.values, what=f"blinded set of {lh}", workers=self._workers)
        outgoing, incoming = self._agreement.keys(msg.tag_key, self.config.pair_context(self.name))
        self._universe = msg.count
        if self.config.mode == "universe":
            self._kept = incoming.tag(double)
            self._state = _State.AWAIT_TAGS
        else:
            self._state = _State.AWAIT_SELECTION
        return [Tags(run_id=self.config.run_id, sender=self.name, to=(lh,), count=msg.count,
                     tags=outgoing.tag(double))]

    def _on_tags(self, msg: _Msg) -> list[Blinded | Tags | Selection]:
        assert isinstance(msg, Tags)
        n = len(self._ids)
        if msg.count != n:
            raise ProtocolViolation(f"{self.name}: label holder sent {msg.count} tags for a set of {n}")
        mine, positions = match_tags(msg.tags, self._kept)
        by_pos = np.argsort(positions, kind="stable")
        self._result = PsiResult("universe", self._universe, self._order[mine[by_pos]], positions[by_pos])
        self._kept = b""
        self._state = _State.DONE
        return []

    def _on_selection(self, msg: _Msg) -> list[Blinded | Tags | Selection]:
        assert isinstance(msg, Selection)
        n = len(self._ids)
        idx = np.frombuffer(msg.indices, dtype="<u4").astype(np.int64)
        if idx.size and (idx.max() >= n or len(np.unique(idx)) != idx.size):
            raise ProtocolViolation(f"{self.name}: selection indexes outside our {n} rows or repeats one")
        self._result = PsiResult("intersection", int(idx.size), self._order[idx], np.arange(idx.size, dtype=np.int64))
        self._state = _State.DONE
        return []
