"""Raw Curve25519 primitives for PSI: hash to curve, point checks, batched X25519 (hazmat layer).

Nothing here is safe to use without the recipe in :mod:`crypto.psi`, which owns the security
argument. Values travel as contiguous ``bytes`` of 32-byte little-endian u-coordinates; per-element
work is a tight loop over C-level calls (SHA-512, GMP's Jacobi symbol, OpenSSL's X25519 through
``cryptography``) because Python overhead per element is what separates 60 % from 90 % of the raw
scalar-multiplication rate.

Field arithmetic uses Python integers, but the two costly operations are amortised or pushed to C:
inversions are batched (Montgomery's trick: one inversion per chunk) and quadratic characters come
from GMP's ``mpz_jacobi`` (≈ 3 µs against ≈ 180 µs for ``pow(x, (p-1)/2, p)``). GMP is part of every
Debian-based system (coreutils pre-depends on it); without it we fall back to ``pow`` — the same
answers, only slower.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

P = 2**255 - 19
A = 486662  # Montgomery coefficient of Curve25519: v^2 = u^3 + A u^2 + u
POINT_BYTES = 32
_P_MINUS_1_HALF = (P - 1) // 2
_P_LIMBS = np.frombuffer(P.to_bytes(32, "little"), dtype="<u8")


class DegeneratePoint(Exception):
    """A value failed a point check; ``index`` is its position in the chunk handed to the primitive."""

    def __init__(self, index: int, reason: str) -> None:
        self.index = index
        self.reason = reason
        super().__init__(index, reason)


# --------------------------------------------------------------------------------------------------
# Quadratic character (Legendre symbol) of many field elements.


class _Mpz(ctypes.Structure):
    _fields_ = [("alloc", ctypes.c_int), ("size", ctypes.c_int), ("d", ctypes.c_void_p)]


_MPZ_DTYPE = np.dtype([("alloc", "<i4"), ("size", "<i4"), ("d", "<u8")])


def _load_gmp() -> tuple[object, _Mpz] | None:
    name = ctypes.util.find_library("gmp") or "libgmp.so.10"
    try:
        lib = ctypes.CDLL(name)
        jacobi = lib.__gmpz_jacobi
        init = lib.__gmpz_init
        imp = lib.__gmpz_import
    except (OSError, AttributeError):
        return None
    jacobi.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    jacobi.restype = ctypes.c_int
    modulus = _Mpz()
    init(ctypes.byref(modulus))
    imp.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_size_t, ctypes.c_int,
                    ctypes.c_size_t, ctypes.c_char_p]
    imp(ctypes.byref(modulus), 1, -1, 32, -1, 0, P.to_bytes(32, "little"))
    return jacobi, modulus  # keep the modulus object alive for the process lifetime


_GMP = _load_gmp()


def has_fast_legendre() -> bool:
    """True when GMP is available (hashing and point checks run several times faster)."""
    return _GMP is not None


def legendre_many(values: Sequence[int]) -> list[int]:
    """Quadratic character of each value mod p, as 1 (square), -1 (non-square) or 0 (zero).

    Values must already be reduced to [0, p).
    """
    n = len(values)
    if n == 0:
        return []
    if _GMP is None:
        out = []
        for v in values:
            t = pow(v, _P_MINUS_1_HALF, P)
            out.append(1 if t == 1 else (0 if t == 0 else -1))
        return out
    jacobi, modulus = _GMP
    blob = bytearray(b"".join(v.to_bytes(32, "little") for v in values))
    limbs = np.frombuffer(blob, dtype="<u8").reshape(n, 4)
    structs = np.zeros(n, dtype=_MPZ_DTYPE)
    structs["alloc"] = 4
    # GMP wants normalised integers: size counts limbs up to the highest non-zero one.
    nz = limbs != 0
    structs["size"] = np.where(nz[:, 3], 4, np.where(nz[:, 2], 3, np.where(nz[:, 1], 2,
                                                                              np.where(nz[:, 0], 1, 0))))
    base = ctypes.addressof(ctypes.c_char.from_buffer(blob))
    structs["d"] = base + 32 * np.arange(n, dtype=np.uint64)
    first = structs.ctypes.data
    m = ctypes.addressof(modulus)
    step = _MPZ_DTYPE.itemsize
    out = [jacobi(first + step * i, m) for i in range(n)]
    del limbs, nz  # release the exported buffer before ``blob`` can be freed
    return out


# --------------------------------------------------------------------------------------------------
# Hash to curve: SHA-512 -> field element -> Elligator 2 -> u-coordinate on Curve25519 (not the twist).


def hash_prefix(context: bytes, domain: bytes) -> bytes:
    """Length-prefixed encoding of the fixed context and the caller's domain (consortium, run)."""
    if len(context) > 255 or len(domain) > 65535:
        raise ValueError("context or domain too long")
    return bytes([len(context)]) + context + len(domain).to_bytes(2, "big") + domain


def hash_to_field(prefix: bytes, ids: Sequence[bytes]) -> list[int]:
    """SHA-512(prefix || len(id) || id) reduced mod p: 512 bits for 255, so the bias is < 2^-256."""
    sha = hashlib.sha512
    frm = int.from_bytes
    out = []
    for ident in ids:
        if len(ident) > 65535:
            raise ValueError("identifier longer than 65535 bytes")
        out.append(frm(sha(prefix + len(ident).to_bytes(2, "big") + ident).digest(), "little") % P)
    return out


def elligator2(rs: Sequence[int]) -> list[int]:
    """Elligator 2 map (RFC 9380 §6.7.1, Z = 2) onto Curve25519; returns u-coordinates.

    x1 = -A / (1 + 2 r^2); u = x1 if x1^3 + A x1^2 + x1 is a square, else -x1 - A. Exactly one of the
    two candidates lies on the curve, so the output is always a curve point (never the twist).
    1 + 2 r^2 is never 0 mod p because -1/2 is a non-square for p = 2^255 - 19.
    """
    n = len(rs)
    if n == 0:
        return []
    ds = [(2 * r * r + 1) % P for r in rs]
    # Montgomery's batch inversion: one modular inversion for the whole chunk.
    prefix = [0] * n
    acc = 1
    for i, d in enumerate(ds):
        prefix[i] = acc
        acc = acc * d % P
    inv = pow(acc, -1, P)
    x1 = [0] * n
    for i in range(n - 1, -1, -1):
        x1[i] = (-A * (prefix[i] * inv)) % P
        inv = inv * ds[i] % P
    gx = [x * (x * (x + A) % P + 1) % P for x in x1]
    chis = legendre_many(gx)
    return [x if c == 1 else (-x - A) % P for x, c in zip(x1, chis)]


def hash_to_curve(prefix: bytes, ids: Sequence[bytes]) -> bytes:
    """Concatenated 32-byte u-coordinates of the curve points for ``ids``."""
    return b"".join(u.to_bytes(32, "little") for u in elligator2(hash_to_field(prefix, ids)))


# --------------------------------------------------------------------------------------------------
# Checks on points received from a peer.


def check_points(values: bytes) -> None:
    """Raise :class:`DegeneratePoint` unless every 32-byte value is a canonical curve u-coordinate.

    Rejects: the high bit set or u >= p (non-canonical encodings, which honest peers never emit),
    u = 0, and points on the quadratic twist (the character of u^3 + A u^2 + u is not 1). Low-order
    curve points pass here and are caught by :func:`scalarmult_many` (their product is zero).
    """
    n = len(values) // POINT_BYTES
    if n == 0:
        return
    limbs = np.frombuffer(values, dtype="<u8").reshape(n, 4)
    high_bit = (limbs[:, 3] >> np.uint64(63)) != 0
    if high_bit.any():
        raise DegeneratePoint(int(np.argmax(high_bit)), "high bit set (non-canonical encoding)")
    # u >= p  <=>  limbs 1..3 equal p's and limb 0 >= p's limb 0 (p = 2^255 - 19).
    ge_p = (limbs[:, 3] == _P_LIMBS[3]) & (limbs[:, 2] == _P_LIMBS[2]) & (limbs[:, 1] == _P_LIMBS[1]) & (
        limbs[:, 0] >= _P_LIMBS[0])
    if ge_p.any():
        raise DegeneratePoint(int(np.argmax(ge_p)), "u-coordinate not reduced mod p (non-canonical)")
    frm = int.from_bytes
    us = [frm(values[i:i + 32], "little") for i in range(0, n * 32, 32)]
    gx = [u * (u * (u + A) % P + 1) % P for u in us]
    for i, c in enumerate(legendre_many(gx)):
        if c != 1:
            reason = "low-order point (u = 0)" if us[i] == 0 else "not on the curve (twist point)"
            raise DegeneratePoint(i, reason)


# --------------------------------------------------------------------------------------------------
# Batched X25519.


def scalarmult_many(private: X25519PrivateKey, values: bytes) -> bytes:
    """X25519(k, u) for every 32-byte u in ``values``; raises :class:`DegeneratePoint` on a zero result.

    X25519 clamps k to a multiple of 8, so the result is the prime-order component times k, and a
    zero result means the input had small order.
    """
    load = X25519PublicKey.from_public_bytes
    exchange = private.exchange
    try:
        return b"".join([exchange(load(values[i:i + 32])) for i in range(0, len(values), 32)])
    except ValueError:
        pass
    for i in range(0, len(values), 32):  # slow path, only to name the offending position
        try:
            exchange(load(values[i:i + 32]))
        except ValueError:
            raise DegeneratePoint(i // 32, "low-order point (X25519 result is zero)") from None
    raise AssertionError("unreachable: batch failed but no element fails")  # pragma: no cover
