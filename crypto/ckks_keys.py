"""CKKS key management on TenSEAL: lender keys, the consortium aggregation key, validated public
contexts and key-bound ciphertext envelopes.

Who holds what
--------------
* A **lender** holds a :class:`LenderKeyPair` (secret). It registers
  ``keys.public_context_bytes()`` with the gateway; holders and the gateway load it with
  :meth:`PublicContext.from_bytes`, which refuses secret-bearing or sub-128-bit contexts.
* For horizontal training one participant generates an :class:`AggregationKey`, wraps it for every
  other participant (:meth:`AggregationKey.wrap_for`, signed with its identity key) and gives the
  coordinator only ``public_context_bytes()``. The coordinator can add ciphertexts, never decrypt.

Recipes::

    lender = LenderKeyPair.generate()                      # N=8192, [60,40,40,60], scale 2^40
    lender.save("lender.ckks")                             # 0600, atomic, secret stays here
    ctx = PublicContext.from_bytes(lender.public_context_bytes())      # at a holder / the gateway
    env = encrypt_vector(ctx, scores)                      # EncryptedVector bound to ctx.key_id
    cols = encrypt_columns(ctx, outputs)                   # (batch × d) → d vectors, batch in slots
    wire = env.to_bytes(); env = EncryptedVector.from_bytes(wire, ctx)
    total = sum_encrypted([env_a, env_b, env_c])           # KeyMismatch if key ids differ
    plain = decrypt(lender, total)                         # numpy float64; MissingSecretKey for a PublicContext

    agg = AggregationKey.generate()                        # N=8192, [60,60], scale 2^40, add-only
    blob = agg.wrap_for(bob_wrap.public_key, signer=my_identity, sender_id="bank-a", recipient_id="bank-b")
    agg_b = AggregationKey.unwrap(blob, bob_wrap, sender=alice_identity.public_key,
                                  sender_id="bank-a", recipient_id="bank-b")

Key ids
-------
``key_id`` is the hex SHA-256 of the SEAL encryption parameters and public key exactly as serialized
(both deterministic). Every :class:`EncryptedVector` carries the key id it was encrypted under;
combining, loading or decrypting it under another key raises :class:`KeyMismatch` naming both ids,
because CKKS would otherwise silently return garbage.

Parameters and the 128-bit floor
--------------------------------
Every context we accept (received or loaded) is checked: CKKS scheme, poly modulus degree in
{8192, 16384, 32768} and total coefficient-modulus bits within the HomomorphicEncryption.org
standard bound for that degree (218 / 438 / 881 bits), read from the SEAL context itself.
Anything else raises :class:`InsecureParameters`.

Vectors longer than the slot count (N/2 = 4096 at N=8192) are split over several ciphertexts
transparently. Scoring operations (:meth:`EncryptedVector.mul_plain`, :meth:`~EncryptedVector.add_plain`,
:meth:`~EncryptedVector.square`, :func:`linear_combination`) consume levels; running out raises
:class:`DepthExhausted`. Use column packing (one ciphertext per feature, enterprises in slots) so a
linear → square → linear top needs no Galois keys.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Iterator, Mapping, Self, Sequence

import numpy as np
import tenseal as ts

from crypto._canonical import canonical_bytes
from crypto._ckks_wire import parse_context
from crypto._files import read_secret, write_secret
from crypto.errors import (
    BadSignature,
    DepthExhausted,
    InsecureParameters,
    KeyMismatch,
    MalformedData,
    MissingSecretKey,
    SecretKeyPresent,
    UnwrapError,
)
from crypto.identity import IdentityKey, IdentityPublicKey
from crypto.keywrap import WrapKeyPair, WrapPublicKey, unwrap, wrap

__all__ = [
    "CkksParams",
    "SCORING",
    "SCORING_ADD_ONLY",
    "SCORING_DEEP",
    "AGGREGATION",
    "MAX_COEFF_BITS",
    "PublicContext",
    "LenderKeyPair",
    "AggregationKey",
    "EncryptedVector",
    "encrypt_vector",
    "encrypt_columns",
    "envelope_key_id",
    "sum_encrypted",
    "linear_combination",
    "decrypt",
    "check_security",
]

#: HomomorphicEncryption.org standard, 128-bit classical security, ternary secret: max total bits of
#: the coefficient modulus (special prime included) per polynomial modulus degree.
MAX_COEFF_BITS: dict[int, int] = {8192: 218, 16384: 438, 32768: 881}

_KEY_ID_LABEL = b"fedscore/ckks-key-id/v1\x00"
_ENVELOPE_MAGIC = b"FCV1"
_SECRET_MAGIC = b"fedscore-ckks-secret-v1\n"
_WRAP_MAGIC = b"FAK1"
_WRAP_DOMAIN = "ckks.aggregation-key.wrap/v1"
_WRAP_PURPOSE = "fedscore.aggregation-key"
_MAX_CHUNKS = 1 << 16


def check_security(poly_modulus_degree: int, total_coeff_bits: int) -> None:
    """Raise :class:`InsecureParameters` unless the parameters meet the 128-bit standard bound."""
    if poly_modulus_degree < 8192:
        raise InsecureParameters(
            f"poly modulus degree {poly_modulus_degree} is below 8192; refused (128-bit floor)"
        )
    bound = MAX_COEFF_BITS.get(poly_modulus_degree)
    if bound is None:
        raise InsecureParameters(f"poly modulus degree {poly_modulus_degree} is not one of {sorted(MAX_COEFF_BITS)}")
    if total_coeff_bits > bound:
        raise InsecureParameters(
            f"coefficient modulus of {total_coeff_bits} bits exceeds {bound} bits for degree "
            f"{poly_modulus_degree}; below 128-bit security"
        )


@dataclass(frozen=True)
class CkksParams:
    """Parameters to *generate* a key with. Received contexts are checked, not trusted to match."""

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    def __post_init__(self) -> None:
        check_security(self.poly_modulus_degree, sum(self.coeff_mod_bit_sizes))

    @property
    def slot_count(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        """Multiplications (each followed by a rescale) a fresh ciphertext can afford."""
        return len(self.coeff_mod_bit_sizes) - 2


#: Lender default: linear top, or linear→square→linear when the first linear layer is applied by
#: the holders in plaintext (depth 2).
SCORING = CkksParams(8192, (60, 40, 40, 60), 40)
#: Lender option for an add-only pipeline (holders send ready partial logits): ~4x smaller context.
SCORING_ADD_ONLY = CkksParams(8192, (60, 60), 40)
#: Lender option with depth 3 (linear→square→linear fully under encryption); N=16384.
SCORING_DEEP = CkksParams(16384, (60, 40, 40, 40, 60), 40)
#: Consortium aggregation key for encrypted FedAvg: shortest chain, ~32 bytes per parameter.
AGGREGATION = CkksParams(8192, (60, 60), 40)


@dataclass(frozen=True)
class ContextInfo:
    """Parameters read back from a live TenSEAL context."""

    poly_modulus_degree: int
    total_coeff_bits: int
    depth: int
    scale: float

    @property
    def slot_count(self) -> int:
        return self.poly_modulus_degree // 2


def _inspect(ctx: ts.Context) -> ContextInfo:
    seal = ctx.seal_context().data
    if not seal.parameters_set():
        raise InsecureParameters(f"context parameters are invalid: {seal.parameters_error_message()}")
    key_data = seal.key_context_data()
    parms = key_data.parms()
    if getattr(parms.scheme(), "name", None) != "CKKS":
        raise MalformedData(f"expected a CKKS context, got {parms.scheme()}")
    try:
        scale = float(ctx.global_scale)
    except ValueError as exc:
        raise MalformedData("context carries no global scale") from exc
    return ContextInfo(
        poly_modulus_degree=int(parms.poly_modulus_degree()),
        total_coeff_bits=int(key_data.total_coeff_modulus_bit_count()),
        depth=int(seal.first_context_data().chain_index()),
        scale=scale,
    )


def _validate(ctx: ts.Context) -> ContextInfo:
    info = _inspect(ctx)
    check_security(info.poly_modulus_degree, info.total_coeff_bits)
    if not (math.isfinite(info.scale) and 2.0**20 <= info.scale <= 2.0**60):
        raise MalformedData(f"context global scale 2^{math.log2(info.scale) if info.scale > 0 else '-inf'} is unusable")
    if not ctx.has_public_key():
        raise MalformedData("context has no public key (symmetric contexts cannot be shared)")
    # Behaviour flags travel in the bytes; never let a peer switch them off under us.
    ctx.auto_relin = True
    ctx.auto_rescale = True
    ctx.auto_mod_switch = True
    return info


def _key_id_from_bytes(serialized: bytes) -> str:
    fields = parse_context(serialized)
    if not fields.encryption_parameters or not fields.public_key:
        raise MalformedData("serialized context lacks encryption parameters or public key")
    h = hashlib.sha256(_KEY_ID_LABEL)
    for part in (fields.encryption_parameters, fields.public_key):
        h.update(struct.pack(">Q", len(part)))
        h.update(part)
    return h.hexdigest()


def _public_bytes(ctx: ts.Context, *, galois_keys: bool, relin_keys: bool = True) -> bytes:
    return ctx.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=galois_keys, save_relin_keys=relin_keys
    )


class _KeyHolder:
    """Anything that binds ciphertexts: a public context or a secret key."""

    _ctx: ts.Context
    _key_id: str
    _info: ContextInfo

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def info(self) -> ContextInfo:
        return self._info

    @property
    def slot_count(self) -> int:
        return self._info.slot_count

    def encrypt(self, values: Any) -> "EncryptedVector":
        return encrypt_vector(self, values)


class PublicContext(_KeyHolder):
    """A validated CKKS context that can encrypt and evaluate but never decrypt."""

    __slots__ = ("_ctx", "_key_id", "_info", "_bytes")

    def __init__(self, *_: Any) -> None:
        raise TypeError("use PublicContext.from_bytes(data) or a key pair's public_context()")

    @classmethod
    def _make(cls, ctx: ts.Context, key_id: str, info: ContextInfo, data: bytes) -> "PublicContext":
        self = object.__new__(cls)
        self._ctx, self._key_id, self._info, self._bytes = ctx, key_id, info, data
        return self

    @classmethod
    def from_bytes(
        cls, data: bytes, *, expected_key_id: str | None = None, require_galois_keys: bool = False
    ) -> "PublicContext":
        """Load and check a context received from someone else.

        Raises :class:`SecretKeyPresent` if it carries a secret key, :class:`InsecureParameters`
        below 128-bit security, :class:`KeyMismatch` if ``expected_key_id`` is given and differs,
        :class:`MalformedData` for bytes that are not a usable CKKS context.
        """
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("context must be bytes")
        data = bytes(data)
        fields = parse_context(data)
        if fields.secret_key:
            raise SecretKeyPresent("received context carries a secret key; only a public context is acceptable")
        if require_galois_keys and not fields.galois_keys:
            raise MalformedData("context has no Galois keys but this use needs rotations")
        key_id = _key_id_from_bytes(data)
        if expected_key_id is not None and key_id != expected_key_id:
            raise KeyMismatch(f"context has key id {key_id}, expected {expected_key_id}")
        try:
            ctx = ts.context_from(data)
        except Exception as exc:  # TenSEAL raises bare ValueError/RuntimeError on bad streams
            raise MalformedData(f"bytes are not a TenSEAL context: {exc}") from None
        if ctx.has_secret_key() or ctx.is_private():
            raise SecretKeyPresent("received context carries a secret key; only a public context is acceptable")
        info = _validate(ctx)
        return cls._make(ctx, key_id, info, data)

    def to_bytes(self) -> bytes:
        return self._bytes

    @property
    def has_galois_keys(self) -> bool:
        return bool(self._ctx.has_galois_keys())

    def __repr__(self) -> str:
        return f"PublicContext(key_id={self._key_id[:16]}…, N={self._info.poly_modulus_degree})"


class _SecretKey(_KeyHolder):
    """Shared machinery of the two secret CKKS key kinds."""

    _KIND: ClassVar[str] = ""
    _DEFAULT: ClassVar[CkksParams]

    __slots__ = ("_ctx", "_key_id", "_info")

    def __init__(self, *_: Any) -> None:
        raise TypeError(f"use {type(self).__name__}.generate() or .load(path)")

    @classmethod
    def _from_context(cls, ctx: ts.Context) -> Self:
        if not ctx.has_secret_key():
            raise MissingSecretKey(f"{cls.__name__} needs a context with a secret key")
        info = _validate(ctx)
        self = object.__new__(cls)
        self._ctx, self._info = ctx, info
        self._key_id = _key_id_from_bytes(_public_bytes(ctx, galois_keys=False, relin_keys=False))
        return self

    @classmethod
    def generate(cls, params: CkksParams | None = None, *, galois_keys: bool = False) -> Self:
        """Fresh key pair. Galois keys (rotations; ~35 MB public) only if asked."""
        params = params or cls._DEFAULT
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        )
        ctx.global_scale = 2.0**params.scale_bits
        if galois_keys:
            ctx.generate_galois_keys()
        return cls._from_context(ctx)

    # -- public half -------------------------------------------------------------------------
    def public_context_bytes(self, *, galois_keys: bool = False) -> bytes:
        """Public key + relin keys (+ Galois keys if asked, generated on demand); never the secret."""
        if galois_keys and not self._ctx.has_galois_keys():
            self._ctx.generate_galois_keys()
        return _public_bytes(self._ctx, galois_keys=galois_keys)

    def public_context(self, *, galois_keys: bool = False) -> PublicContext:
        return PublicContext.from_bytes(self.public_context_bytes(galois_keys=galois_keys))

    # -- secret half -------------------------------------------------------------------------
    def decrypt(self, env: "EncryptedVector") -> np.ndarray:
        return decrypt(self, env)

    def _secret_bytes(self) -> bytes:
        return self._ctx.serialize(
            save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=True
        )

    @classmethod
    def _from_secret_bytes(cls, data: bytes, where: str) -> Self:
        if not parse_context(data).secret_key:
            raise MissingSecretKey(f"{where}: context holds no secret key")
        try:
            ctx = ts.context_from(data)
        except Exception as exc:
            raise MalformedData(f"{where}: not a TenSEAL context: {exc}") from None
        return cls._from_context(ctx)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the secret context to ``path`` with mode 0600, atomically."""
        header = canonical_bytes(
            {"kind": self._KIND, "key_id": self._key_id, "galois_keys": bool(self._ctx.has_galois_keys())}
        )
        write_secret(path, _SECRET_MAGIC + header + b"\n" + self._secret_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Load a key saved by :meth:`save`; refuses group/world-readable files and wrong kinds."""
        data = read_secret(path)
        if not data.startswith(_SECRET_MAGIC):
            raise MalformedData(f"{path}: not a fedscore CKKS secret key file")
        rest = data[len(_SECRET_MAGIC):]
        line_end = rest.find(b"\n")
        try:
            header = json.loads(rest[:line_end])
            kind, key_id = header["kind"], header["key_id"]
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedData(f"{path}: corrupt CKKS key file header") from exc
        if kind != cls._KIND:
            raise MalformedData(f"{path}: holds a {kind!r} key, expected {cls._KIND!r}")
        key = cls._from_secret_bytes(rest[line_end + 1:], str(path))
        if key.key_id != key_id:
            raise KeyMismatch(f"{path}: header says key id {key_id}, context has {key.key_id}")
        if header.get("galois_keys"):
            key._ctx.generate_galois_keys()
        return key

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key_id={self._key_id[:16]}…, N={self._info.poly_modulus_degree})"


class LenderKeyPair(_SecretKey):
    """A lender's scoring key. Default :data:`SCORING`; pass :data:`SCORING_ADD_ONLY` or
    :data:`SCORING_DEEP` to :meth:`generate` for the short or deep chain."""

    _KIND = "lender"
    _DEFAULT = SCORING


class AggregationKey(_SecretKey):
    """The consortium's shared key for encrypted FedAvg (default :data:`AGGREGATION`, add-only)."""

    _KIND = "aggregation"
    _DEFAULT = AGGREGATION

    @staticmethod
    def _wrap_meta(key_id: str, sender_id: str, recipient_id: str, sender_fp: str) -> dict[str, str]:
        for name, value in (("sender_id", sender_id), ("recipient_id", recipient_id)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
        return {
            "purpose": _WRAP_PURPOSE,
            "key_id": key_id,
            "sender_id": sender_id,
            "recipient_id": recipient_id,
            "sender_fingerprint": sender_fp,
        }

    def wrap_for(
        self, recipient: WrapPublicKey, *, signer: IdentityKey, sender_id: str, recipient_id: str
    ) -> bytes:
        """The secret context encrypted for ``recipient`` and signed by the sender's identity.

        Associated data binds purpose, key id, sender and recipient; the signature stops anyone
        (e.g. a relaying coordinator) from substituting a key of its own choosing.
        """
        meta = self._wrap_meta(self._key_id, sender_id, recipient_id, signer.fingerprint)
        meta_bytes = canonical_bytes(meta)
        wrapped = wrap(self._secret_bytes(), recipient, context=meta_bytes)
        sig = signer.sign(_WRAP_DOMAIN, {"meta": meta, "wrapped_sha256": hashlib.sha256(wrapped).hexdigest()})
        return _WRAP_MAGIC + struct.pack(">I", len(meta_bytes)) + meta_bytes + sig + wrapped

    def wrap_for_all(
        self, recipients: Mapping[str, WrapPublicKey], *, signer: IdentityKey, sender_id: str
    ) -> dict[str, bytes]:
        """:meth:`wrap_for` every participant in ``recipients`` (id → X25519 public key) but the sender."""
        return {
            rid: self.wrap_for(pub, signer=signer, sender_id=sender_id, recipient_id=rid)
            for rid, pub in sorted(recipients.items())
            if rid != sender_id
        }

    @classmethod
    def unwrap(
        cls,
        blob: bytes,
        recipient: WrapKeyPair,
        *,
        sender: IdentityPublicKey,
        sender_id: str,
        recipient_id: str,
        expected_key_id: str | None = None,
    ) -> "AggregationKey":
        """Verify the sender's signature, decrypt, and check the key. Raises BadSignature,
        UnwrapError (wrong recipient / tampered / not for us), KeyMismatch, InsecureParameters."""
        if not isinstance(blob, (bytes, bytearray)) or not bytes(blob).startswith(_WRAP_MAGIC) or len(blob) < 8:
            raise UnwrapError("not a wrapped aggregation key")
        blob = bytes(blob)
        (meta_len,) = struct.unpack(">I", blob[4:8])
        meta_bytes = blob[8:8 + meta_len]
        sig = blob[8 + meta_len:8 + meta_len + 64]
        wrapped = blob[8 + meta_len + 64:]
        try:
            meta = json.loads(meta_bytes)
        except ValueError:
            raise UnwrapError("wrapped aggregation key has a corrupt header") from None
        if not isinstance(meta, dict) or canonical_bytes(meta) != meta_bytes:
            raise UnwrapError("wrapped aggregation key header is not canonical")
        sender.verify(_WRAP_DOMAIN, {"meta": meta, "wrapped_sha256": hashlib.sha256(wrapped).hexdigest()}, sig)
        expected = cls._wrap_meta(str(meta.get("key_id")), sender_id, recipient_id, sender.fingerprint)
        if meta != expected:
            raise UnwrapError(
                "wrapped aggregation key is not addressed as expected "
                f"(sender {meta.get('sender_id')!r}→{sender_id!r}, recipient {meta.get('recipient_id')!r}→{recipient_id!r})"
            )
        secret = unwrap(wrapped, recipient, context=meta_bytes)
        key = cls._from_secret_bytes(secret, "unwrapped aggregation key")
        if key.key_id != meta["key_id"]:
            raise KeyMismatch(f"unwrapped key has id {key.key_id}, header claims {meta['key_id']}")
        if expected_key_id is not None and key.key_id != expected_key_id:
            raise KeyMismatch(f"unwrapped key has id {key.key_id}, expected {expected_key_id}")
        return key


# ---------------------------------------------------------------------------------------------
# Ciphertexts
# ---------------------------------------------------------------------------------------------


def _as_float_array(values: Any) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MalformedData(f"values are not numeric: {exc}") from None
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise MalformedData(f"expected a 1-D vector, got shape {arr.shape}; flatten it first")
    if arr.size == 0:
        raise MalformedData("cannot encrypt an empty vector")
    if not np.all(np.isfinite(arr)):
        raise MalformedData("cannot encrypt NaN or infinity")
    return arr


@contextmanager
def _depth_guard(op: str) -> Iterator[None]:
    """Turn TenSEAL's "scale out of bounds" into a typed error naming the operation."""
    try:
        yield
    except ValueError as exc:
        if "scale out of bounds" in str(exc):
            raise DepthExhausted(f"{op}: no multiplicative levels left in this key's coefficient chain") from None
        raise


class EncryptedVector:
    """A float vector encrypted under one CKKS key, split over ``ceil(len / slots)`` ciphertexts.

    Carries the ``key_id`` it was encrypted under; every operation checks it.
    """

    __slots__ = ("_key_id", "_length", "_chunks")

    def __init__(self, *_: Any) -> None:
        raise TypeError("use encrypt_vector(ctx, values) or EncryptedVector.from_bytes(data, ctx)")

    @classmethod
    def _make(cls, key_id: str, length: int, chunks: list) -> "EncryptedVector":
        self = object.__new__(cls)
        self._key_id, self._length, self._chunks = key_id, length, chunks
        return self

    @property
    def key_id(self) -> str:
        return self._key_id

    def __len__(self) -> int:
        return self._length

    @property
    def ciphertext_count(self) -> int:
        return len(self._chunks)

    # -- wire --------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """``FCV1 | u32 header length | header JSON {key_id, length, sizes} | ciphertexts``."""
        blobs = [c.serialize() for c in self._chunks]
        header = canonical_bytes(
            {"key_id": self._key_id, "length": self._length, "sizes": [len(b) for b in blobs]}
        )
        return b"".join([_ENVELOPE_MAGIC, struct.pack(">I", len(header)), header, *blobs])

    @classmethod
    def from_bytes(cls, data: bytes, key: _KeyHolder) -> "EncryptedVector":
        """Parse an envelope and bind it to ``key`` (a :class:`PublicContext` or a secret key).

        Raises :class:`KeyMismatch` (both ids in the message) if it was encrypted under another key.
        """
        key_id, length, sizes, offset = _parse_header(data)
        if key_id != key.key_id:
            raise KeyMismatch(f"ciphertext is under key {key_id}, but this context is key {key.key_id}")
        if len(sizes) != -(-length // key.slot_count):
            raise MalformedData(
                f"envelope of length {length} has {len(sizes)} ciphertexts, expected {-(-length // key.slot_count)}"
            )
        chunks = []
        for size in sizes:
            blob = data[offset:offset + size]
            offset += size
            try:
                chunks.append(ts.ckks_vector_from(key._ctx, blob))
            except Exception as exc:
                raise MalformedData(f"ciphertext does not deserialize under key {key.key_id[:16]}: {exc}") from None
        if offset != len(data):
            raise MalformedData("trailing bytes after the last ciphertext")
        for i, chunk in enumerate(chunks):
            expect = min(key.slot_count, length - i * key.slot_count)
            if chunk.size() != expect:
                raise MalformedData(f"ciphertext {i} holds {chunk.size()} values, expected {expect}")
        return cls._make(key_id, length, chunks)

    # -- arithmetic ---------------------------------------------------------------------------
    def _check_compatible(self, other: "EncryptedVector") -> None:
        if not isinstance(other, EncryptedVector):
            raise TypeError(f"expected an EncryptedVector, got {type(other).__name__}")
        if other._key_id != self._key_id:
            raise KeyMismatch(f"cannot combine ciphertexts under key {self._key_id} and key {other._key_id}")
        if other._length != self._length:
            raise MalformedData(f"cannot combine encrypted vectors of length {self._length} and {other._length}")

    def _plain_chunks(self, values: Any, op: str) -> list:
        """Split a plaintext operand like the ciphertext; scalars stay scalars."""
        if np.isscalar(values):
            v = float(values)  # type: ignore[arg-type]
            if not math.isfinite(v):
                raise MalformedData(f"{op}: operand is NaN or infinity")
            return [v] * len(self._chunks)
        arr = _as_float_array(values)
        if arr.size != self._length:
            raise MalformedData(f"{op}: plaintext of length {arr.size} for an encrypted vector of length {self._length}")
        bounds = np.cumsum([0] + [c.size() for c in self._chunks])
        return [arr[bounds[i]:bounds[i + 1]].tolist() for i in range(len(self._chunks))]

    def __add__(self, other: "EncryptedVector") -> "EncryptedVector":
        self._check_compatible(other)
        return EncryptedVector._make(self._key_id, self._length, [a + b for a, b in zip(self._chunks, other._chunks)])

    def add_(self, other: "EncryptedVector") -> "EncryptedVector":
        """In-place addition (saves a ciphertext copy when folding many contributions)."""
        self._check_compatible(other)
        for a, b in zip(self._chunks, other._chunks):
            a += b
        return self

    def add_plain(self, values: Any) -> "EncryptedVector":
        """Add a plaintext scalar or vector (e.g. a bias). Consumes no level."""
        plain = self._plain_chunks(values, "add_plain")
        return EncryptedVector._make(self._key_id, self._length, [c + p for c, p in zip(self._chunks, plain)])

    def mul_plain(self, values: Any) -> "EncryptedVector":
        """Multiply by a plaintext scalar or vector elementwise. Consumes one level."""
        plain = self._plain_chunks(values, "mul_plain")
        with _depth_guard("mul_plain"):
            return EncryptedVector._make(self._key_id, self._length, [c * p for c, p in zip(self._chunks, plain)])

    def square(self) -> "EncryptedVector":
        """Elementwise square (needs relin keys in the context). Consumes one level."""
        with _depth_guard("square"):
            return EncryptedVector._make(self._key_id, self._length, [c.square() for c in self._chunks])

    def copy(self) -> "EncryptedVector":
        return EncryptedVector._make(self._key_id, self._length, [c.copy() for c in self._chunks])

    def __repr__(self) -> str:
        return f"EncryptedVector(len={self._length}, ciphertexts={len(self._chunks)}, key_id={self._key_id[:16]}…)"


def _parse_header(data: bytes) -> tuple[str, int, list[int], int]:
    if not isinstance(data, (bytes, bytearray)) or len(data) < 8 or not bytes(data[:4]) == _ENVELOPE_MAGIC:
        raise MalformedData("not an encrypted-vector envelope (bad magic)")
    (hlen,) = struct.unpack(">I", data[4:8])
    try:
        header = json.loads(bytes(data[8:8 + hlen]))
        key_id, length, sizes = header["key_id"], header["length"], header["sizes"]
    except (ValueError, KeyError, TypeError) as exc:
        raise MalformedData("corrupt encrypted-vector header") from exc
    if not (
        isinstance(key_id, str)
        and isinstance(length, int)
        and length > 0
        and isinstance(sizes, list)
        and 0 < len(sizes) <= _MAX_CHUNKS
        and all(isinstance(s, int) and s > 0 for s in sizes)
    ):
        raise MalformedData("encrypted-vector header has invalid fields")
    if 8 + hlen + sum(sizes) != len(data):
        raise MalformedData("encrypted-vector envelope length does not match its header")
    return key_id, length, sizes, 8 + hlen


def envelope_key_id(data: bytes) -> str:
    """The key id an envelope claims, without deserializing ciphertexts (for routing)."""
    return _parse_header(data)[0]


def encrypt_vector(key: _KeyHolder, values: Any) -> EncryptedVector:
    """Encrypt a 1-D float vector of any length under ``key`` (public context or secret key)."""
    if not isinstance(key, _KeyHolder):
        raise TypeError("encrypt under a PublicContext, LenderKeyPair or AggregationKey")
    arr = _as_float_array(values)
    slots = key.slot_count
    chunks = [ts.ckks_vector(key._ctx, arr[i:i + slots].tolist()) for i in range(0, arr.size, slots)]
    return EncryptedVector._make(key.key_id, int(arr.size), chunks)


def encrypt_columns(key: _KeyHolder, matrix: Any) -> list[EncryptedVector]:
    """Column packing for scoring: a (batch × d) matrix becomes d vectors of ``batch`` slots, one
    per feature, so linear layers need only plaintext scalar multiplications (no Galois keys)."""
    try:
        arr = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MalformedData(f"matrix is not numeric: {exc}") from None
    if arr.ndim != 2:
        raise MalformedData(f"expected a (batch, features) matrix, got shape {arr.shape}")
    return [encrypt_vector(key, arr[:, j]) for j in range(arr.shape[1])]


def sum_encrypted(vectors: Iterable[EncryptedVector]) -> EncryptedVector:
    """Homomorphic sum of same-key, same-length vectors (inputs are left untouched)."""
    it = iter(vectors)
    try:
        first = next(it)
    except StopIteration:
        raise MalformedData("sum_encrypted needs at least one vector") from None
    if not isinstance(first, EncryptedVector):
        raise TypeError(f"expected an EncryptedVector, got {type(first).__name__}")
    total = first.copy()
    for v in it:
        total.add_(v)
    return total


def linear_combination(
    vectors: Sequence[EncryptedVector], weights: Sequence[float], bias: float = 0.0
) -> EncryptedVector:
    """``Σ w_i · v_i + bias`` with plaintext weights: one output unit of a linear layer over
    column-packed inputs (each vector = one feature across a batch of enterprises). One level."""
    if len(vectors) != len(weights) or not vectors:
        raise MalformedData(f"{len(vectors)} vectors but {len(weights)} weights")
    total = vectors[0].mul_plain(float(weights[0]))
    for v, w in zip(vectors[1:], weights[1:]):
        total.add_(v.mul_plain(float(w)))
    return total.add_plain(float(bias)) if bias else total


def decrypt(key: _KeyHolder, env: EncryptedVector) -> np.ndarray:
    """Decrypt with a secret key; a :class:`PublicContext` raises :class:`MissingSecretKey`."""
    if not isinstance(env, EncryptedVector):
        raise TypeError(f"expected an EncryptedVector, got {type(env).__name__}")
    if env.key_id != key.key_id:
        raise KeyMismatch(f"ciphertext is under key {env.key_id}, but the decryption key is {key.key_id}")
    if not isinstance(key, _SecretKey) or not key._ctx.has_secret_key():
        raise MissingSecretKey(f"key {key.key_id[:16]} is a public context and cannot decrypt")
    sk = key._ctx.secret_key()
    out = np.empty(env._length, dtype=np.float64)
    pos = 0
    for chunk in env._chunks:
        part = chunk.decrypt(sk)
        out[pos:pos + len(part)] = part
        pos += len(part)
    return out
