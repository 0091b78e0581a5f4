"""Ed25519 identities for participants, the coordinator and the consent authority.

Recipes::

    key = IdentityKey.generate()
    key.save("node.key")                       # 0600, atomic
    key.public_key.save("node.pub")            # 0644, share with the consortium
    sig = key.sign("consent.grant/v1", {"lender": "L1", "purpose": "credit"})
    pub = IdentityPublicKey.load("node.pub")
    pub.verify("consent.grant/v1", {"lender": "L1", "purpose": "credit"}, sig)   # or BadSignature

    signed = key.seal("psi.announce/v1", payload)            # {"domain","payload","signer","signature"}
    payload = pub.open(signed, "psi.announce/v1")            # verified payload, or BadSignature

What gets signed is never "a dict" but its canonical encoding (sorted-key compact UTF-8 JSON, see
:func:`canonical_bytes`) behind a domain-separation prefix ``fedscore/v1 NUL <domain> NUL``, so a
signature made for one message type can never be replayed as another. Raw ``bytes`` payloads are
accepted too and go through the same prefix.

A fingerprint is the hex SHA-256 of the 32 raw public-key bytes; it names an identity in configs,
logs and signed envelopes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from crypto._canonical import canonical_bytes, check_domain, domain_separated
from crypto._files import read_public, read_secret, write_public, write_secret
from crypto.errors import BadSignature, MalformedData

__all__ = ["IdentityKey", "IdentityPublicKey", "canonical_bytes", "signing_input", "fingerprint_of"]

_SECRET_HEADER = b"fedscore-ed25519-secret-v1\n"
_PUBLIC_HEADER = b"fedscore-ed25519-public-v1\n"


def signing_input(domain: str, message: Mapping[str, Any] | bytes) -> bytes:
    """The exact bytes an Ed25519 signature covers for ``message`` under ``domain``."""
    payload = message if isinstance(message, bytes) else canonical_bytes(message)
    return domain_separated(domain, payload)


def fingerprint_of(public_bytes: bytes) -> str:
    """Hex SHA-256 of raw Ed25519 public key bytes."""
    return hashlib.sha256(public_bytes).hexdigest()


class IdentityPublicKey:
    """A verified-format Ed25519 public key: verify signatures, name a signer by fingerprint."""

    __slots__ = ("_key", "_raw")

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        self._raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @classmethod
    def from_bytes(cls, data: bytes) -> "IdentityPublicKey":
        if not isinstance(data, (bytes, bytearray)) or len(data) != 32:
            raise MalformedData("an Ed25519 public key is exactly 32 raw bytes")
        try:
            return cls(Ed25519PublicKey.from_public_bytes(bytes(data)))
        except ValueError as exc:
            raise MalformedData("invalid Ed25519 public key bytes") from exc

    def to_bytes(self) -> bytes:
        return self._raw

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self._raw)

    def verify(self, domain: str, message: Mapping[str, Any] | bytes, signature: bytes) -> None:
        """Return silently if ``signature`` is valid for ``message`` under ``domain``; else BadSignature."""
        if not isinstance(signature, (bytes, bytearray)) or len(signature) != 64:
            raise BadSignature(f"signature by {self.fingerprint[:16]} must be 64 bytes")
        try:
            self._key.verify(bytes(signature), signing_input(domain, message))
        except InvalidSignature:
            raise BadSignature(
                f"signature does not verify under identity {self.fingerprint[:16]} for domain {domain!r}"
            ) from None

    def open(self, signed: Mapping[str, Any], domain: str) -> Any:
        """Verify a :meth:`IdentityKey.seal` envelope and return its payload."""
        try:
            got_domain = signed["domain"]
            payload = signed["payload"]
            signer = signed["signer"]
            signature = base64.b64decode(signed["signature"], validate=True)
        except (KeyError, TypeError, binascii.Error) as exc:
            raise MalformedData("signed envelope needs domain, payload, signer and base64 signature") from exc
        if got_domain != domain:
            raise BadSignature(f"envelope is for domain {got_domain!r}, expected {domain!r}")
        if signer != self.fingerprint:
            raise BadSignature(f"envelope signed by {str(signer)[:16]}, expected {self.fingerprint[:16]}")
        self.verify(domain, canonical_bytes(payload), signature)
        return payload

    def save(self, path: str | os.PathLike[str]) -> None:
        write_public(path, _PUBLIC_HEADER + self._raw.hex().encode() + b"\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "IdentityPublicKey":
        data = read_public(path)
        if not data.startswith(_PUBLIC_HEADER):
            raise MalformedData(f"{path}: not a fedscore Ed25519 public key file")
        try:
            raw = bytes.fromhex(data[len(_PUBLIC_HEADER):].decode().strip())
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedData(f"{path}: corrupt public key file") from exc
        return cls.from_bytes(raw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdentityPublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"IdentityPublicKey({self.fingerprint[:16]}…)"


class IdentityKey:
    """An Ed25519 signing key. The private half never leaves this object except via :meth:`save`."""

    __slots__ = ("_key", "_public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self._public = IdentityPublicKey(key.public_key())

    @classmethod
    def generate(cls) -> "IdentityKey":
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> IdentityPublicKey:
        return self._public

    @property
    def fingerprint(self) -> str:
        return self._public.fingerprint

    def sign(self, domain: str, message: Mapping[str, Any] | bytes) -> bytes:
        """Sign the canonical encoding of ``message`` under ``domain``; 64-byte signature."""
        return self._key.sign(signing_input(domain, message))

    def seal(self, domain: str, payload: Any) -> dict[str, Any]:
        """A self-describing signed envelope (JSON-able) for protocol messages and grants."""
        check_domain(domain)
        sig = self._key.sign(domain_separated(domain, canonical_bytes(payload)))
        return {
            "domain": domain,
            "payload": payload,
            "signer": self.fingerprint,
            "signature": base64.b64encode(sig).decode(),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        raw = self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        write_secret(path, _SECRET_HEADER + raw.hex().encode() + b"\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "IdentityKey":
        data = read_secret(path)
        if not data.startswith(_SECRET_HEADER):
            raise MalformedData(f"{path}: not a fedscore Ed25519 secret key file")
        try:
            raw = bytes.fromhex(data[len(_SECRET_HEADER):].decode().strip())
            return cls(Ed25519PrivateKey.from_private_bytes(raw))
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedData(f"{path}: corrupt secret key file") from exc

    def __repr__(self) -> str:
        return f"IdentityKey({self.fingerprint[:16]}…)"
