"""Errors raised by schemas and protocol state machines.

One small hierarchy: catch :class:`ProtocolError` broadly at a boundary (CLI, RPC handler),
recover narrowly from the specific subclasses.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class for every error raised by :mod:`protocols`."""


class InvalidUSCC(ProtocolError, ValueError):
    """A unified social credit code failed one of the GB 32100-2015 rules."""

    def __init__(self, code: str, rule: str) -> None:
        self.code = code
        self.rule = rule
        super().__init__(f"invalid USCC {code!r}: {rule}")


class ConfigError(ProtocolError, ValueError):
    """A consortium or feature configuration is malformed; the message names file, key and problem."""


class ProtocolViolation(ProtocolError):
    """A peer sent a message that the protocol state machine does not accept in its current state."""


class WrapKeyRefused(ProtocolViolation):
    """A key holder refused a peer's relayed wrap key (substituted, mis-signed or replayed): a
    security event that stops the run, not a dropout to route around."""

    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(f"wrap key of {peer!r} refused: {reason}")
        self.peer = peer
        self.reason = reason


class ConsentError(ProtocolError):
    """A consent operation (enrol, grant, revoke, status) was refused by the consent authority."""


class NotAuthenticated(ConsentError):
    """An enterprise request did not authenticate. Deliberately one message for "not enrolled",
    "wrong key", "stale" and "replayed", so probing cannot learn which enterprises are enrolled."""

    def __init__(self) -> None:
        super().__init__("request not authenticated: sign it with the enrolled enterprise key, fresh, once")


class UnknownGrant(ConsentError):
    """No grant with this id belongs to the requesting enterprise (same answer whether it exists or not)."""


class DataError(ProtocolError, ValueError):
    """A participant's local data does not match its declared schema.

    The message names the file, column and row number, never the offending values (they may be
    identifiers or features that must not reach logs).
    """


class DuplicateIdentifier(ProtocolError, ValueError):
    """A party's input lists the same identifier twice; the message names the rows, never the value."""
