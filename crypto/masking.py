"""Pairwise additive masking: the coordinator learns the sum of participants' vectors, nothing else.

Used by vertical training: every participant masks its bottom-model output (batch × d) and the
coordinator adds the masked matrices; the pairwise masks cancel exactly and only the sum remains.

Protocol (one session = one fixed participant set)::

    mk = MaskingKey.generate()                                          # fresh X25519 per session
    ann = mk.announce(identity, participant_id="bank", session_id=sid)  # signed with Ed25519
    # ... coordinator relays every announcement to everyone ...
    session = MaskingSession(session_id=sid, me="bank", mask_key=mk,
                             announcements=all_anns, identities=directory)   # BadSignature if swapped
    masked = session.mask(bottom_out, round_tag="epoch3/batch17/fwd")   # MaskedVector
    # coordinator:
    total = sum_masked([masked_bank, masked_tax, ...])                 # float64, shape of the input

Guarantees and their mechanisms
-------------------------------
* **Relay cannot swap keys.** Each X25519 public key is announced inside an Ed25519-signed
  envelope naming participant and session; ``identities`` is the consortium directory obtained out
  of band. A swapped or replayed announcement raises :class:`BadSignature`.
* **Exact cancellation.** Values are fixed-point encoded (``round(x · 2^24)``, resolution
  ≈ 6e-8) into int64 and all arithmetic is mod 2^64 on ``uint64``; participant *i* adds
  ``PRG(seed_ij, tag)`` for every peer *j* after it (sorted ids) and subtracts it for every peer
  before it, so masks cancel bit for bit and the unmasked sum equals Σ encode(x_i) exactly.
* **Documented range.** Each value must satisfy ``|x| < 2^30`` and sessions hold at most 256
  participants, so every partial or full sum stays below 2^62 · 2^-24 and never wraps; values out of
  range, NaN or infinity raise :class:`ValueOutOfRange` instead of wrapping silently.
* **Masks never reused.** Seeds come from X25519 + HKDF salted with the session digest; the PRG
  (ChaCha20 via ``cryptography``) is keyed by HMAC(seed, round tag). A session refuses a round tag
  twice (:class:`MaskReuse`): the same mask on two vectors would reveal their difference.
* **Mismatches detected, not summed.** A masked vector carries participant, round tag, session
  digest (over session id, ids and announced keys — so diverging relayed views differ), the
  participant list and the shape; :func:`sum_masked` raises :class:`MaskMismatch` unless they agree
  and every participant contributed exactly once.

Limits: no dropout recovery (a missing participant aborts the round — vertical training needs every
holder anyway; absent enterprises are sent as zeros). The sum itself is revealed by design.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto._canonical import canonical_bytes
from crypto.errors import BadSignature, InvalidPoint, MalformedData, MaskMismatch, MaskReuse, ValueOutOfRange
from crypto.identity import IdentityKey, IdentityPublicKey

__all__ = [
    "FRACTIONAL_BITS",
    "SCALE",
    "MAX_ABS",
    "MAX_PARTICIPANTS",
    "MaskingKey",
    "MaskingSession",
    "MaskedVector",
    "sum_masked",
    "encode_fixed",
    "decode_fixed",
]

#: Fixed-point fractional bits: x is carried as round(x · 2^24).
FRACTIONAL_BITS = 24
SCALE = float(1 << FRACTIONAL_BITS)
#: Each value must satisfy |x| < MAX_ABS.
MAX_ABS = float(1 << 30)
#: With |x| < 2^30 and ≤ 2^8 contributions, |Σ| · 2^24 < 2^62: the int64 sum never wraps.
MAX_PARTICIPANTS = 256

_ANNOUNCE_DOMAIN = "masking.announce/v1"
_SEED_LABEL = b"fedscore/mask-seed/v1\x00"
_PRG_LABEL = b"fedscore/mask-prg/v1\x00"
_MAGIC = b"FMV1"
_ZERO_NONCE = bytes(16)


def encode_fixed(values: Any) -> np.ndarray:
    """float → int64 fixed point viewed as uint64 (flat). Refuses NaN/inf and |x| ≥ MAX_ABS."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MalformedData(f"values are not numeric: {exc}") from None
    flat = arr.reshape(-1)
    bad = ~(np.abs(flat) < MAX_ABS)  # also catches NaN
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueOutOfRange(
            f"{int(bad.sum())} value(s) are NaN, infinite or outside ±2^30 (first at flat index {first}); "
            "fixed-point masking would wrap"
        )
    return np.rint(flat * SCALE).astype(np.int64).view(np.uint64)


def decode_fixed(encoded: np.ndarray) -> np.ndarray:
    """uint64 (mod 2^64) fixed point → float64, interpreting the word as two's complement."""
    return np.asarray(encoded, dtype=np.uint64).view(np.int64).astype(np.float64) / SCALE


def _prg_words(key: bytes, n: int) -> np.ndarray:
    enc = Cipher(algorithms.ChaCha20(key, _ZERO_NONCE), mode=None).encryptor()
    return np.frombuffer(enc.update(bytes(8 * n)), dtype="<u8")


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not name or len(name) > 256:
        raise MalformedData(f"{what} must be a non-empty string of at most 256 characters")
    return name


class MaskingKey:
    """An X25519 key pair for ONE masking session (generate a fresh one per session)."""

    __slots__ = ("_key", "_public", "_used")

    def __init__(self, key: X25519PrivateKey) -> None:
        self._key = key
        self._public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._used: set[tuple[str, str]] = set()  # (session digest, round tag) already masked

    @classmethod
    def generate(cls) -> "MaskingKey":
        return cls(X25519PrivateKey.generate())

    def public_bytes(self) -> bytes:
        return self._public

    def announce(self, identity: IdentityKey, *, participant_id: str, session_id: str) -> dict[str, Any]:
        """The signed announcement to relay to the other participants (JSON-able)."""
        payload = {
            "participant": _check_name(participant_id, "participant_id"),
            "session": _check_name(session_id, "session_id"),
            "x25519": self._public.hex(),
        }
        return identity.seal(_ANNOUNCE_DOMAIN, payload)


def _verified_public(ann: Mapping[str, Any], identity: IdentityPublicKey, pid: str, session_id: str) -> bytes:
    payload = identity.open(ann, _ANNOUNCE_DOMAIN)
    if not isinstance(payload, dict) or payload.get("participant") != pid or payload.get("session") != session_id:
        raise BadSignature(f"announcement for {pid!r} is signed for another participant or session")
    try:
        raw = bytes.fromhex(payload["x25519"])
    except (KeyError, TypeError, ValueError):
        raise MalformedData(f"announcement for {pid!r} has no valid x25519 key") from None
    if len(raw) != 32:
        raise MalformedData(f"announcement for {pid!r} has an x25519 key of {len(raw)} bytes")
    return raw


@dataclass(frozen=True, eq=False)
class MaskedVector:
    """One participant's masked contribution; safe to hand to the coordinator."""

    participant: str
    round_tag: str
    set_digest: str
    participants: tuple[str, ...]
    shape: tuple[int, ...]
    data: np.ndarray  # flat uint64

    def to_bytes(self) -> bytes:
        header = canonical_bytes(
            {
                "participant": self.participant,
                "round_tag": self.round_tag,
                "set_digest": self.set_digest,
                "participants": list(self.participants),
                "shape": list(self.shape),
            }
        )
        return _MAGIC + struct.pack(">I", len(header)) + header + self.data.astype("<u8", copy=False).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "MaskedVector":
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < 8 or bytes(data[:4]) != _MAGIC:
            raise MalformedData("not a masked vector (bad magic)")
        (hlen,) = struct.unpack(">I", bytes(data[4:8]))
        try:
            h = json.loads(bytes(data[8:8 + hlen]))
            mv = cls(
                participant=str(h["participant"]),
                round_tag=str(h["round_tag"]),
                set_digest=str(h["set_digest"]),
                participants=tuple(str(p) for p in h["participants"]),
                shape=tuple(int(s) for s in h["shape"]),
                data=np.frombuffer(bytes(data[8 + hlen:]), dtype="<u8").astype(np.uint64, copy=False),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedData(f"corrupt masked-vector header or body: {exc}") from None
        if any(s < 0 for s in mv.shape) or int(np.prod(mv.shape, dtype=np.int64)) != mv.data.size:
            raise MaskMismatch(f"masked vector body holds {mv.data.size} values but its shape is {mv.shape}")
        return mv


class MaskingSession:
    """Pairwise seeds for a verified participant set; masks vectors for one participant."""

    def __init__(
        self,
        *,
        session_id: str,
        me: str,
        mask_key: MaskingKey,
        announcements: Mapping[str, Mapping[str, Any]],
        identities: Mapping[str, IdentityPublicKey],
    ) -> None:
        _check_name(session_id, "session_id")
        participants = tuple(sorted(identities))
        if me not in identities:
            raise MalformedData(f"{me!r} is not in the participant directory")
        if not 2 <= len(participants) <= MAX_PARTICIPANTS:
            raise MalformedData(f"masking needs 2..{MAX_PARTICIPANTS} participants, got {len(participants)}")
        if set(announcements) != set(participants):
            missing = sorted(set(participants) - set(announcements))
            extra = sorted(set(announcements) - set(participants))
            raise MaskMismatch(f"announcements do not match the directory (missing {missing}, unknown {extra})")
        keys = {pid: _verified_public(announcements[pid], identities[pid], pid, session_id) for pid in participants}
        if keys[me] != mask_key.public_bytes():
            raise BadSignature(f"the announcement relayed for {me!r} (this node) is not this session's key")
        self._digest = hashlib.sha256(
            canonical_bytes(
                {
                    "session": session_id,
                    "participants": [[p, identities[p].fingerprint, keys[p].hex()] for p in participants],
                }
            )
        ).hexdigest()
        self._me, self._participants, self._key = me, participants, mask_key
        self._seeds: dict[str, bytes] = {}
        for pid in participants:
            if pid == me:
                continue
            try:
                shared = mask_key._key.exchange(X25519PublicKey.from_public_bytes(keys[pid]))
            except ValueError as exc:
                raise InvalidPoint(f"announced masking key of {pid!r} is degenerate") from exc
            lo, hi = sorted((me, pid))
            self._seeds[pid] = HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=bytes.fromhex(self._digest),
                info=_SEED_LABEL + canonical_bytes([lo, hi]),
            ).derive(shared)

    @property
    def participants(self) -> tuple[str, ...]:
        return self._participants

    @property
    def set_digest(self) -> str:
        return self._digest

    def mask(self, values: Any, *, round_tag: str) -> MaskedVector:
        """Mask ``values`` (any shape) for ``round_tag``; each tag may be used once per session."""
        _check_name(round_tag, "round_tag")
        arr = np.asarray(values, dtype=np.float64) if not isinstance(values, np.ndarray) else values
        encoded = encode_fixed(arr)  # a fresh array: safe to mask in place
        slot = (self._digest, round_tag)
        if slot in self._key._used:
            raise MaskReuse(f"round tag {round_tag!r} was already used in this session; use a fresh tag")
        self._key._used.add(slot)
        tag = _PRG_LABEL + round_tag.encode()
        n = encoded.size
        for pid, seed in self._seeds.items():
            words = _prg_words(hmac.new(seed, tag, hashlib.sha256).digest(), n)
            if self._me < pid:
                encoded += words
            else:
                encoded -= words
        return MaskedVector(
            participant=self._me,
            round_tag=round_tag,
            set_digest=self._digest,
            participants=self._participants,
            shape=tuple(int(s) for s in np.shape(arr)),
            data=encoded,
        )


def sum_masked(vectors: Sequence[MaskedVector], *, round_tag: str | None = None) -> np.ndarray:
    """Exact sum of one round's masked vectors, decoded to float64 in the original shape.

    Raises :class:`MaskMismatch` if round tags, session digests, participant lists or shapes differ,
    if a participant is missing or appears twice, or if ``round_tag`` is given and differs.
    """
    if not vectors:
        raise MaskMismatch("no masked vectors to sum")
    first = vectors[0]
    for v in vectors:
        if not isinstance(v, MaskedVector):
            raise TypeError(f"expected MaskedVector, got {type(v).__name__}")
        if v.round_tag != first.round_tag:
            raise MaskMismatch(f"round tags differ: {first.round_tag!r} vs {v.round_tag!r} (from {v.participant!r})")
        if v.set_digest != first.set_digest or v.participants != first.participants:
            raise MaskMismatch(f"{v.participant!r} masked for a different participant set/session than {first.participant!r}")
        if v.shape != first.shape or v.data.size != first.data.size:
            raise MaskMismatch(f"shapes differ: {first.shape} vs {v.shape} (from {v.participant!r})")
    if round_tag is not None and first.round_tag != round_tag:
        raise MaskMismatch(f"vectors are for round {first.round_tag!r}, expected {round_tag!r}")
    contributors = [v.participant for v in vectors]
    if sorted(contributors) != list(first.participants):
        missing = sorted(set(first.participants) - set(contributors))
        dup = sorted({p for p in contributors if contributors.count(p) > 1})
        raise MaskMismatch(f"contributors do not match the participant set (missing {missing}, duplicated {dup})")
    total = first.data.astype(np.uint64, copy=True)
    for v in vectors[1:]:
        total += v.data
    return decode_fixed(total).reshape(first.shape)
