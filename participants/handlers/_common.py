"""What every mode's handlers need around the protocol: which participant this node is, its
long-term keys, and the adapter from Flower's ``(content, context)`` to ``(content, env)``.

One place because horizontal and vertical nodes are the same node: the same consortium entry, the
same ``keys/identity.key`` and ``keys/wrap.key`` in the same state directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from flwr.app import Context, RecordDict

from crypto.errors import CryptoError
from crypto.identity import IdentityKey, IdentityPublicKey
from crypto.keywrap import WrapKeyPair, WrapPublicKey
from protocols.consortium import ConsortiumConfig, ParticipantConfig, load_consortium
from protocols.errors import ConfigError, ProtocolViolation

Env = TypeVar("Env")
Handler = Callable[[RecordDict, Context], RecordDict]

#: Ed25519 domain of a wrap-key announcement (horizontal and vertical; the session names the mode).
WRAP_DOMAIN = "participant.wrap-key/v1"


def locate(node_config: Mapping[str, Any], consortium_path: str, mode: str) -> tuple[ConsortiumConfig, ParticipantConfig]:
    """Map the Flower node to a data holder of a ``mode`` consortium.

    Deployment: node config ``node-name``. Simulation: ``partition-id`` indexes the consortium's
    data holders. Only that participant's entry is used afterwards.
    """
    if not consortium_path:
        raise ConfigError("no consortium file: set run config 'consortium' or node config 'consortium'")
    cfg = load_consortium(consortium_path)
    if cfg.mode != mode:
        raise ConfigError(f"consortium {cfg.name!r} is {cfg.mode}, not {mode}")
    holders = cfg.data_holders
    if "node-name" in node_config:
        participant = cfg.participant(str(node_config["node-name"]))
        if not participant.holds_data:
            raise ConfigError(f"participant {participant.name!r} holds no data")
    elif "partition-id" in node_config:
        pid = int(node_config["partition-id"])
        if not 0 <= pid < len(holders):
            raise ConfigError(f"partition-id {pid} but the consortium has {len(holders)} data holders")
        participant = holders[pid]
    else:
        raise ConfigError("node config has neither 'node-name' (deployment) nor 'partition-id' (simulation)")
    return cfg, participant


def node_state_dir(node_config: Mapping[str, Any], state_root: str | None, name: str, data_dir: Path) -> Path:
    """Where a node keeps its keys, models and run folders, the same for every mode (one node, one
    identity): node config ``state-dir``, else ``<node-state-root>/<name>``, else ``<data_dir>/state``
    (also the default of ``fedscore scoring serve``)."""
    if node_config.get("state-dir"):
        return Path(str(node_config["state-dir"]))
    if state_root:
        return Path(state_root) / name
    return data_dir / "state"


def long_term_keys(keys_dir: Path) -> tuple[IdentityKey, WrapKeyPair]:
    """Load (or create once) this participant's Ed25519 identity and X25519 wrap keys."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    id_path, wrap_path = keys_dir / "identity.key", keys_dir / "wrap.key"
    if not id_path.exists():
        IdentityKey.generate().save(id_path)
    if not wrap_path.exists():
        WrapKeyPair.generate().save(wrap_path)
    return IdentityKey.load(id_path), WrapKeyPair.load(wrap_path)


def own_keys(keys_dir: Path, participant: ParticipantConfig) -> tuple[IdentityKey, WrapKeyPair]:
    """:func:`long_term_keys`, refused when the consortium pins another identity for this node
    (the node was started on the wrong state directory, or its key was replaced)."""
    pinned = participant.identity_fingerprint
    if pinned is not None and not (keys_dir / "identity.key").exists():
        raise ConfigError(
            f"participant {participant.name!r}: no identity key in {keys_dir}, but the consortium pins "
            f"{pinned[:16]}… for this node; wrong state dir? (the key is not created when pinned)"
        )
    identity, wrap_pair = long_term_keys(keys_dir)
    if pinned is not None and identity.fingerprint != pinned:
        raise ConfigError(
            f"participant {participant.name!r}: identity key {keys_dir / 'identity.key'} has fingerprint "
            f"{identity.fingerprint[:16]}…, the consortium pins {pinned[:16]}… for this node; "
            f"wrong state dir? ('fedscore identity show --state-dir DIR' prints a node's fingerprint)"
        )
    return identity, wrap_pair


def check_pinned_identity(consortium: ConsortiumConfig, me: str, name: str, identity: IdentityPublicKey) -> None:
    """An identity the coordinator relayed as ``name``'s, against the fingerprint the consortium
    pins for ``name`` (if any). ProtocolViolation names the participant, never the key."""
    try:
        pinned = consortium.participant(name).identity_fingerprint
    except ConfigError:
        raise ProtocolViolation(f"{me}: the coordinator relayed an identity for {name!r}, "
                                "who is not in the consortium") from None
    if pinned is not None and identity.fingerprint != pinned:
        raise ProtocolViolation(f"{me}: the identity relayed for {name!r} does not match the "
                                "fingerprint the consortium pins for it")


def announce_wrap_key(identity: IdentityKey, participant: str, session: str, wrap_key: WrapPublicKey) -> dict[str, Any]:
    """This node's X25519 wrap key, sealed by its identity and bound to its name and the run's
    session: what it sends (via the coordinator) to whoever will wrap a secret for it."""
    return identity.seal(WRAP_DOMAIN, {"participant": participant, "session": session,
                                       "x25519": wrap_key.to_bytes().hex()})


def open_wrap_key(consortium: ConsortiumConfig, me: str, name: str, identity: bytes, announcement: Any,
                  session: str) -> tuple[IdentityPublicKey, WrapPublicKey]:
    """Verify ``name``'s wrap-key announcement as the coordinator relayed it, with the identity it
    relayed beside it: that identity against the consortium's pin for ``name`` (if any), the
    signature, and that it was sealed for ``name`` in this ``session`` (derived locally, never
    relayed). Only then may a secret be wrapped to the key. ProtocolViolation names ``name``,
    never a key."""
    try:
        sender = IdentityPublicKey.from_bytes(bytes(identity))
    except (CryptoError, TypeError, ValueError):
        raise ProtocolViolation(f"{me}: the identity relayed for {name!r} is not an Ed25519 public key") from None
    check_pinned_identity(consortium, me, name, sender)
    try:
        payload = sender.open(announcement, WRAP_DOMAIN)
    except (CryptoError, TypeError, ValueError):
        raise ProtocolViolation(f"{me}: the wrap key relayed for {name!r} is not signed by its identity") from None
    if not isinstance(payload, Mapping) or payload.get("participant") != name or payload.get("session") != session:
        raise ProtocolViolation(f"{me}: the wrap key relayed for {name!r} is signed for another participant or session")
    try:
        return sender, WrapPublicKey.from_bytes(bytes.fromhex(str(payload["x25519"])))
    except (KeyError, ValueError, CryptoError):
        raise ProtocolViolation(f"{me}: the wrap key announced for {name!r} is malformed") from None


def env_binder(
    resolve: Callable[[Mapping[str, Any], Mapping[str, Any], int], Env],
) -> Callable[[Callable[[RecordDict, Env], RecordDict]], Handler]:
    """``resolve`` the node's env from the Flower context for every message, then call the handler
    (in deployment each message may be served by a fresh process, so nothing is cached)."""

    def bind(fn: Callable[[RecordDict, Env], RecordDict]) -> Handler:
        def handler(content: RecordDict, context: Context) -> RecordDict:
            return fn(content, resolve(context.node_config, context.run_config, context.run_id))

        handler.__name__ = fn.__name__
        handler.__doc__ = fn.__doc__
        return handler

    return bind
