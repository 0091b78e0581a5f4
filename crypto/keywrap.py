"""Key wrapping: encrypt a secret (e.g. the consortium aggregation key) for one recipient.

Recipes::

    bob = WrapKeyPair.generate(); bob.save("bob.wrap.key")         # X25519, 0600, atomic
    blob = wrap(secret, bob.public_key, context=b"what/who/why")    # anyone with bob's public key
    secret = unwrap(blob, bob, context=b"what/who/why")             # only bob; else UnwrapError

Construction (ECIES-style, ephemeral-static): a fresh X25519 key pair per wrap; the shared secret
goes through HKDF-SHA256 (salt = ephemeral public || recipient public, info = label || context)
into a one-time AES-256-GCM key; ``context`` is also the GCM associated data. Wire format::

    b"FW1" | ephemeral public (32) | nonce (12) | AES-GCM ciphertext+tag

``context`` is not secret but must match exactly on both sides: bind into it everything that gives
the plaintext its meaning (sender, recipient, key id, purpose) so a blob cannot be replayed for a
different recipient or purpose. Wrapping alone does NOT authenticate the sender (anyone can wrap
for a public key); :mod:`crypto.ckks_keys` signs wrapped aggregation keys with the sender's identity.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto._files import read_secret, write_public, write_secret
from crypto.errors import InvalidPoint, MalformedData, UnwrapError

__all__ = ["WrapKeyPair", "WrapPublicKey", "wrap", "unwrap"]

_MAGIC = b"FW1"
_LABEL = b"fedscore/keywrap/v1\x00"
_SECRET_HEADER = b"fedscore-x25519-secret-v1\n"
_PUBLIC_HEADER = b"fedscore-x25519-public-v1\n"
_OVERHEAD = len(_MAGIC) + 32 + 12 + 16


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class WrapPublicKey:
    """An X25519 public key that secrets can be wrapped for."""

    __slots__ = ("_key", "_raw")

    def __init__(self, key: X25519PublicKey) -> None:
        self._key = key
        self._raw = _raw_public(key)

    @classmethod
    def from_bytes(cls, data: bytes) -> "WrapPublicKey":
        if not isinstance(data, (bytes, bytearray)) or len(data) != 32:
            raise MalformedData("an X25519 public key is exactly 32 raw bytes")
        return cls(X25519PublicKey.from_public_bytes(bytes(data)))

    def to_bytes(self) -> bytes:
        return self._raw

    def save(self, path: str | os.PathLike[str]) -> None:
        write_public(path, _PUBLIC_HEADER + self._raw.hex().encode() + b"\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "WrapPublicKey":
        with open(path, "rb") as fh:
            data = fh.read()
        if not data.startswith(_PUBLIC_HEADER):
            raise MalformedData(f"{path}: not a fedscore X25519 public key file")
        try:
            return cls.from_bytes(bytes.fromhex(data[len(_PUBLIC_HEADER):].decode().strip()))
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedData(f"{path}: corrupt public key file") from exc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WrapPublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"WrapPublicKey({self._raw.hex()[:16]}…)"


class WrapKeyPair:
    """A participant's long-term X25519 key pair for receiving wrapped secrets."""

    __slots__ = ("_key", "_public")

    def __init__(self, key: X25519PrivateKey) -> None:
        self._key = key
        self._public = WrapPublicKey(key.public_key())

    @classmethod
    def generate(cls) -> "WrapKeyPair":
        return cls(X25519PrivateKey.generate())

    @property
    def public_key(self) -> WrapPublicKey:
        return self._public

    def public_bytes(self) -> bytes:
        return self._public.to_bytes()

    def _exchange(self, peer: WrapPublicKey) -> bytes:
        try:
            return self._key.exchange(peer._key)
        except ValueError as exc:  # low-order / degenerate point from a peer
            raise InvalidPoint("peer X25519 public key is degenerate or of low order") from exc

    def save(self, path: str | os.PathLike[str]) -> None:
        raw = self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        write_secret(path, _SECRET_HEADER + raw.hex().encode() + b"\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "WrapKeyPair":
        data = read_secret(path)
        if not data.startswith(_SECRET_HEADER):
            raise MalformedData(f"{path}: not a fedscore X25519 secret key file")
        try:
            raw = bytes.fromhex(data[len(_SECRET_HEADER):].decode().strip())
            return cls(X25519PrivateKey.from_private_bytes(raw))
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedData(f"{path}: corrupt secret key file") from exc

    def __repr__(self) -> str:
        return f"WrapKeyPair(public={self._public.to_bytes().hex()[:16]}…)"


def _derive(shared: bytes, eph_pub: bytes, recipient_pub: bytes, context: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=eph_pub + recipient_pub, info=_LABEL + context
    ).derive(shared)


def _check_context(context: bytes) -> bytes:
    if not isinstance(context, (bytes, bytearray)):
        raise TypeError("context must be bytes (bind sender, recipient, key id and purpose into it)")
    return bytes(context)


def wrap(plaintext: bytes, recipient: WrapPublicKey, *, context: bytes) -> bytes:
    """Encrypt ``plaintext`` so that only the holder of ``recipient``'s private key can read it."""
    context = _check_context(context)
    if not isinstance(recipient, WrapPublicKey):
        raise TypeError("recipient must be a WrapPublicKey (use WrapPublicKey.from_bytes)")
    eph = WrapKeyPair.generate()
    eph_pub = eph.public_bytes()
    key = _derive(eph._exchange(recipient), eph_pub, recipient.to_bytes(), context)
    nonce = os.urandom(12)
    header = _MAGIC + eph_pub + nonce
    return header + AESGCM(key).encrypt(nonce, bytes(plaintext), header + context)


def unwrap(wrapped: bytes, recipient: WrapKeyPair, *, context: bytes) -> bytes:
    """Recover a wrapped secret; any tampering, wrong recipient or wrong context raises UnwrapError."""
    context = _check_context(context)
    if not isinstance(wrapped, (bytes, bytearray)) or len(wrapped) < _OVERHEAD or not wrapped.startswith(_MAGIC):
        raise UnwrapError("not a wrapped key (bad magic or too short)")
    wrapped = bytes(wrapped)
    eph_pub = wrapped[3:35]
    nonce = wrapped[35:47]
    header = wrapped[:47]
    try:
        shared = recipient._exchange(WrapPublicKey.from_bytes(eph_pub))
    except InvalidPoint as exc:
        raise UnwrapError("wrapped key carries a degenerate ephemeral key") from exc
    key = _derive(shared, eph_pub, recipient.public_bytes(), context)
    try:
        return AESGCM(key).decrypt(nonce, wrapped[47:], header + context)
    except InvalidTag:
        raise UnwrapError("wrapped key does not authenticate: wrong recipient, wrong context or tampered") from None
