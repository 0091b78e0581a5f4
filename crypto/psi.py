"""ECDH-PSI recipes: hash identifiers onto Curve25519, blind, re-blind, tag and match — on arrays.

The protocol this supports (ordering, roles, messages) lives in :mod:`protocols.psi`; this module
knows nothing about USCCs or Flower. Values cross the API as contiguous ``bytes`` of fixed-width
elements (32-byte points, 16-byte tags), never as one Python object per identifier.

Construction and why it is secure
---------------------------------
* **Hash to the curve, never to a bare u-coordinate.** ``H(id)`` = Elligator 2 (RFC 9380, Z = 2) of
  SHA-512(context ‖ domain ‖ len ‖ id) reduced mod p. Elligator 2 always lands on Curve25519 itself,
  never on its quadratic twist. (Using the hash directly as an X25519 input would put half of the ids
  on the twist; blinding keeps the side, so every blinded value would leak one bit of its id, a
  dictionary aid on an enumerable id space.) ``domain`` carries the consortium and run, so hashes of
  one run are unrelated to those of another.
* **No cofactor clearing needed.** ``H(id)`` = Q + T with Q in the prime-order subgroup (order ℓ ≈
  2^252) and T in the 8-torsion. X25519 clamps every scalar to a multiple of 8, so blinding computes
  k·(Q + T) = k·Q: the first blinding already lands in the prime-order group, and every later value
  is a pure prime-order element. Double blinding gives ab·Q_id, equal for equal ids and distinct for
  distinct ids except with probability ≈ 2^-248 per pair (Q_x = ±Q_y).
* **Random-oracle argument.** Elligator 2 is 4-to-1 from field elements onto its image (about half
  of the curve's u-coordinates, up to a negligible set of exceptions), so ``H`` is a random oracle
  onto a known, efficiently invertible half of the curve. The usual DDH reduction for ECDH-PSI programs H(id) := a preimage of s·Y + T
  for a challenge Y, random s and torsion T, retrying when that point falls outside the image
  (expected twice): blinded values of non-members are pseudorandom under DDH in the prime-order
  subgroup, with a factor-2 loss.
* **Peer input is checked before it is multiplied.** Every received value must be a canonical
  encoding (high bit clear, u < p) of a point *on the curve*; low-order inputs give an all-zero
  X25519 result. Either aborts with :class:`~crypto.errors.InvalidPoint` naming the batch and
  position. (Curve25519 is twist-secure anyway; the on-curve check keeps garbage from producing a
  silent "no match".)
* **Fresh secrets per run.** :class:`BlindingKey` is generated per run and cannot be pickled; pool
  workers receive it through the pool's initializer pipe, never through the filesystem.
* **Relay-proof comparison.** Double-blinded values are compared as 16-byte *tags*: AES-256 (a PRP)
  of their first 16 bytes under a key derived from an ephemeral X25519 agreement between the two
  parties, one key per direction. The relay sees the tags of one direction only, under a key it
  cannot derive, so it cannot match anything. Truncation to 128 bits leaves a false-match
  probability ≈ |X|·|Y|/2^128.

Speed: the per-element cost is two X25519 ladders (OpenSSL, through ``cryptography``) plus a cheap
hash (SHA-512, batched inversion, one GMP Jacobi symbol) plus, for peer values, one Jacobi symbol;
chunks run on a process pool over all cores (see ``bench/bench_psi.py``).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto import _x25519
from crypto.errors import CryptoError, DuplicateValue, InvalidPoint

__all__ = [
    "POINT_BYTES",
    "TAG_BYTES",
    "BlindingKey",
    "TagAgreement",
    "TagKey",
    "match_tags",
    "default_workers",
    "has_fast_hashing",
]

POINT_BYTES = 32
TAG_BYTES = 16
CONTEXT = b"fedscore/psi/x25519-ell2/v1"
PARALLEL_MIN = 20_000
"""Below this many elements a step runs in-process: starting a pool costs more than it saves."""
_CHUNK_MIN, _CHUNK_MAX = 2_000, 25_000


def default_workers() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def has_fast_hashing() -> bool:
    """True when GMP is available; otherwise hashing and point checks are several times slower."""
    return _x25519.has_fast_legendre()


def _count(values: bytes, width: int, what: str) -> int:
    if not isinstance(values, (bytes, bytearray, memoryview)):
        raise InvalidPoint(f"{what}: expected bytes, got {type(values).__name__}")
    if len(values) % width:
        raise InvalidPoint(f"{what}: {len(values)} bytes is not a whole number of {width}-byte values")
    return len(values) // width


# --------------------------------------------------------------------------------------------------
# Process pool: the key reaches workers through the initializer pipe only.

_WORKER: dict[str, Any] = {}


def _worker_init(raw_key: bytes, prefix: bytes) -> None:
    _WORKER["key"] = X25519PrivateKey.from_private_bytes(raw_key)
    _WORKER["prefix"] = prefix


def _hash_blind(key: X25519PrivateKey, prefix: bytes, ids: Sequence[bytes]) -> bytes:
    return _x25519.scalarmult_many(key, _x25519.hash_to_curve(prefix, ids))


def _reblind(key: X25519PrivateKey, values: bytes) -> bytes:
    _x25519.check_points(values)
    return _x25519.scalarmult_many(key, values)


def _task_hash_blind(ids: Sequence[bytes]) -> bytes:
    return _hash_blind(_WORKER["key"], _WORKER["prefix"], ids)


def _task_reblind(values: bytes) -> bytes:
    return _reblind(_WORKER["key"], values)


def _chunk_size(n: int, workers: int) -> int:
    return int(min(_CHUNK_MAX, max(_CHUNK_MIN, -(-n // (workers * 4)))))


class BlindingKey:
    """A party's secret blinding scalar for ONE PSI run (X25519, clamped to a multiple of 8).

    Generate a fresh one per run: reusing it across runs would let peers link blinded sets.
    Never pickled; export it only into the party's own state store with :meth:`export_secret`.
    """

    __slots__ = ("_private",)

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private

    @classmethod
    def generate(cls) -> BlindingKey:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_secret(cls, raw: bytes) -> BlindingKey:
        """Restore a key saved with :meth:`export_secret` (32 bytes)."""
        if not isinstance(raw, bytes) or len(raw) != 32:
            raise CryptoError("a PSI blinding key is exactly 32 bytes")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def export_secret(self) -> bytes:
        """The raw 32-byte scalar, for the party's own state store only — never for the wire or logs."""
        from cryptography.hazmat.primitives import serialization

        return self._private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def __repr__(self) -> str:
        return "BlindingKey(<secret>)"

    def __reduce__(self) -> Any:
        raise TypeError("a BlindingKey is never pickled")

    def hash_and_blind(
        self, ids: Sequence[bytes], domain: bytes, *, workers: int | None = None
    ) -> bytes:
        """k·H(id) for each id, concatenated 32-byte values in input order.

        ``domain`` must be identical at every party of the run (consortium id ‖ run id).
        """
        if not isinstance(domain, bytes):
            raise CryptoError("domain must be bytes")
        prefix = _x25519.hash_prefix(CONTEXT, domain)
        n = len(ids)
        for i, ident in enumerate(ids):
            if not isinstance(ident, bytes):
                raise CryptoError(f"identifier at position {i} is {type(ident).__name__}, expected bytes")
        workers = default_workers() if workers is None else workers
        if n < PARALLEL_MIN:
            workers = 1
        size = _chunk_size(n, workers)
        starts = list(range(0, n, size))
        chunks = [list(ids[s:s + size]) for s in starts]
        return self._guarded(
            lambda c: _hash_blind(self._private, prefix, c), _task_hash_blind, chunks, starts,
            prefix, workers, "own identifiers", n,
        )

    def reblind(self, values: bytes, *, what: str = "peer values", workers: int | None = None) -> bytes:
        """k·P for each 32-byte point P received from a peer, after checking every P.

        Raises :class:`InvalidPoint` naming ``what`` and the position of the first bad value.
        """
        n = _count(values, POINT_BYTES, what)
        values = bytes(values)
        workers = default_workers() if workers is None else workers
        if n < PARALLEL_MIN:
            workers = 1
        size = _chunk_size(n, workers)
        starts = list(range(0, n, size))
        chunks = [values[s * POINT_BYTES:(s + size) * POINT_BYTES] for s in starts]
        return self._guarded(
            lambda c: _reblind(self._private, c), _task_reblind, chunks, starts, b"", workers, what, n,
        )

    def _guarded(
        self,
        inline: Callable[[Any], bytes],
        task: Callable[[Any], bytes],
        chunks: list[Any],
        starts: list[int],
        prefix: bytes,
        workers: int,
        what: str,
        total: int,
    ) -> bytes:
        parts: list[bytes] = []
        try:
            if workers <= 1 or len(chunks) <= 1:
                for chunk in chunks:
                    parts.append(inline(chunk))
            else:
                ctx = multiprocessing.get_context("forkserver")  # safe next to gRPC/torch threads
                initargs = (self.export_secret(), prefix)
                with ctx.Pool(min(workers, len(chunks)), initializer=_worker_init, initargs=initargs) as pool:
                    for part in pool.imap(task, chunks):  # in order: a failure surfaces at its chunk
                        parts.append(part)
        except _x25519.DegeneratePoint as exc:
            position = starts[len(parts)] + exc.index
            raise InvalidPoint(f"{what}: value {position} of {total}: {exc.reason}") from None
        return b"".join(parts)


# --------------------------------------------------------------------------------------------------
# Tags: what double-blinded values look like on their way to the party that compares them.


class TagKey:
    """AES-256 key turning double-blinded points into 16-byte comparison tags for one direction."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise CryptoError("a tag key is 32 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "TagKey(<secret>)"

    def __reduce__(self) -> Any:
        raise TypeError("a TagKey is never pickled")

    def tag(self, values: bytes, *, what: str = "double-blinded values") -> bytes:
        """Tags of concatenated 32-byte values, in the same order (16 bytes each)."""
        n = _count(values, POINT_BYTES, what)
        if n == 0:
            return b""
        heads = np.frombuffer(values, dtype=np.uint8).reshape(n, POINT_BYTES)[:, :TAG_BYTES]
        enc = Cipher(algorithms.AES(self._key), modes.ECB()).encryptor()
        return enc.update(np.ascontiguousarray(heads).tobytes()) + enc.finalize()


class TagAgreement:
    """Ephemeral X25519 agreement between two parties, giving one :class:`TagKey` per direction.

    The public key travels through the relay; an honest-but-curious relay cannot derive the keys.
    """

    __slots__ = ("_private",)

    def __init__(self, private: X25519PrivateKey | None = None) -> None:
        self._private = private or X25519PrivateKey.generate()

    @classmethod
    def from_secret(cls, raw: bytes) -> TagAgreement:
        if not isinstance(raw, bytes) or len(raw) != 32:
            raise CryptoError("a tag agreement secret is exactly 32 bytes")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def export_secret(self) -> bytes:
        """The raw 32-byte secret, for the party's own state store only."""
        from cryptography.hazmat.primitives import serialization

        return self._private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def __repr__(self) -> str:
        return "TagAgreement(<secret>)"

    def __reduce__(self) -> Any:
        raise TypeError("a TagAgreement is never pickled")

    @property
    def public_bytes(self) -> bytes:
        return self._private.public_key().public_bytes_raw()

    def keys(self, peer_public: bytes, context: bytes) -> tuple[TagKey, TagKey]:
        """``(outgoing, incoming)``: keys for tags this party sends to the peer, and receives from it."""
        if not isinstance(peer_public, bytes) or len(peer_public) != 32:
            raise InvalidPoint("peer tag public key: expected 32 bytes")
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:
            raise InvalidPoint("peer tag public key: low-order point") from None
        mine = self.public_bytes

        def derive(sender: bytes, receiver: bytes) -> TagKey:
            info = b"fedscore/psi/tag/v1" + len(context).to_bytes(2, "big") + context + sender + receiver
            return TagKey(HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(shared))

        return derive(mine, peer_public), derive(peer_public, mine)


def match_tags(left: bytes, right: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Positions of equal tags: ``(i, j)`` arrays with ``left[i] == right[j]``, sorted by ``i``.

    Each side must hold distinct tags (distinct ids give distinct tags); a repeat raises
    :class:`DuplicateValue` naming the side. Sort-based, O((n+m) log(n+m)) on numpy arrays.
    """
    n = _count(left, TAG_BYTES, "left tags")
    m = _count(right, TAG_BYTES, "right tags")
    empty = np.empty(0, dtype=np.int64)
    if n == 0 and m == 0:
        return empty, empty
    keys = np.concatenate([
        np.frombuffer(left, dtype=">u8").reshape(n, 2),
        np.frombuffer(right, dtype=">u8").reshape(m, 2),
    ])
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    sk = keys[order]
    same = (sk[1:, 0] == sk[:-1, 0]) & (sk[1:, 1] == sk[:-1, 1])
    first = order[:-1][same]
    second = order[1:][same]
    from_left = first < n
    if np.any(from_left == (second < n)):
        bad = first[from_left == (second < n)][0]
        side = "left" if bad < n else "right"
        raise DuplicateValue(f"{side} tags repeat a value; each side must be a set")
    i = np.where(from_left, first, second)
    j = np.where(from_left, second, first) - n
    if len(np.unique(i)) != len(i):  # three equal tags across sides already caught above
        raise DuplicateValue("a tag matches more than once")  # pragma: no cover
    by_left = np.argsort(i, kind="stable")
    return i[by_left].astype(np.int64), j[by_left].astype(np.int64)
