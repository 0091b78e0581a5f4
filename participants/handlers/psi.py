"""Flower adapter of :mod:`protocols.psi` for vertical training: the label holder's rows are the universe.

The protocol (messages, checks, cryptography) is :mod:`protocols.psi`'s; this module only

* derives the run's :class:`~protocols.psi.PsiConfig` locally from the consortium file and the
  Flower run id (so the relay cannot steer the hash domain, the roles or the tag-key contexts),
* carries messages as one ``ConfigRecord`` (:func:`protocols.psi.encode_messages`), and
* keeps the party between messages in the node's run state (Flower's ``context.state``, which
  persists across the messages of one run even when each message is served by a fresh process):
  the exported :class:`~protocols.psi.PartyState` holds the run's secrets, so it never goes to
  disk, the wire or a log, and it is dropped as soon as the party is done.

Three Flower rounds: :func:`start` (blinded ids out), :func:`step` (re-blinded tags out),
:func:`step` again (tags in, :class:`~protocols.psi.PsiResult` out).
"""

from __future__ import annotations

from typing import Sequence

from flwr.app import ConfigRecord, RecordDict

from protocols.consortium import ConsortiumConfig
from protocols.errors import ProtocolViolation
from protocols.psi import LabelHolder, PartyState, Peer, PsiConfig, PsiResult, decode_messages, encode_messages

#: ``context.state`` key of the party between messages (one ConfigRecord holding PartyState JSON).
STATE_KEY = "vertical-psi"
_FIELD = "party"


def psi_config(consortium: ConsortiumConfig, run_id: int) -> PsiConfig:
    """The run's PSI parameters, the same at every node: roles from the consortium, domain from the run."""
    label_holder = consortium.label_holder.name
    peers = tuple(sorted(p.name for p in consortium.data_holders if p.name != label_holder))
    return PsiConfig(consortium=consortium.name, run_id=f"vertical/run-{run_id}", label_holder=label_holder,
                     peers=peers)


def start(state: RecordDict, config: PsiConfig, me: str, ids: Sequence[str]) -> ConfigRecord:
    """First message of a run: validate our ids, blind them; returns the outgoing messages."""
    if not ids:
        raise ProtocolViolation(f"{me}: no identifiers to align")
    party = LabelHolder(config, ids) if me == config.label_holder else Peer(me, config, ids)
    out = party.start()
    _keep(state, party)
    return ConfigRecord(encode_messages(out))


def step(state: RecordDict, config: PsiConfig, me: str, ids: Sequence[str],
         inbox: ConfigRecord) -> tuple[ConfigRecord, PsiResult | None]:
    """A later message: restore the party, handle its inbox; the result once the party is done."""
    party = _restored(state, config, me, ids)
    out = party.handle(decode_messages(inbox))
    if party.done:
        del state[STATE_KEY]
        return ConfigRecord(encode_messages(out)), party.result
    _keep(state, party)
    return ConfigRecord(encode_messages(out)), None


def _keep(state: RecordDict, party: LabelHolder | Peer) -> None:
    state[STATE_KEY] = ConfigRecord({_FIELD: party.export_state().model_dump_json()})


def _restored(state: RecordDict, config: PsiConfig, me: str, ids: Sequence[str]) -> LabelHolder | Peer:
    if STATE_KEY not in state:
        raise ProtocolViolation(f"{me}: PSI step out of order (no party state for this run)")
    snapshot = PartyState.model_validate_json(str(state[STATE_KEY][_FIELD]))  # type: ignore[index]
    if snapshot.name != me or snapshot.config != config:
        raise ProtocolViolation(f"{me}: the saved PSI state belongs to another party or run")
    if me == config.label_holder:
        return LabelHolder.restore(snapshot, ids)
    return Peer.restore(snapshot, ids)


__all__ = ["STATE_KEY", "psi_config", "start", "step"]
