"""Errors raised by :mod:`crypto`.

Catch :class:`CryptoError` broadly at a boundary; recover narrowly from a subclass. Messages say what
was wrong (which key id, which entry) and never contain secret material or raw identifiers.
"""

from __future__ import annotations


class CryptoError(Exception):
    """Base class for every error raised by :mod:`crypto`."""


class InvalidPoint(CryptoError, ValueError):
    """A peer sent a group element that is malformed, degenerate or of low order; the run must abort."""


class KeyMismatch(CryptoError, ValueError):
    """A ciphertext or context was produced under a different key than the one expected."""


class InsecureParameters(CryptoError, ValueError):
    """Encryption parameters are below the 128-bit security floor."""


class SecretKeyPresent(CryptoError, ValueError):
    """A context carries a secret key where only a public context is acceptable."""


class MissingSecretKey(CryptoError, ValueError):
    """An operation needs a secret key that this party does not hold."""


class UnwrapError(CryptoError, ValueError):
    """A wrapped key failed authentication: wrong recipient key, wrong context, or tampered bytes."""


class MaskMismatch(CryptoError, ValueError):
    """Masked contributions do not belong to the same round/participant set; summing them would be wrong."""


class BadSignature(CryptoError, ValueError):
    """A signature does not verify under the claimed identity."""


class AuditLogBroken(CryptoError):
    """An audit log failed verification; ``index`` is the first entry whose link is broken."""

    def __init__(self, index: int, reason: str) -> None:
        self.index = index
        self.reason = reason
        super().__init__(f"audit log broken at entry {index}: {reason}")


class MalformedData(CryptoError, ValueError):
    """Bytes or a structure received from a peer (or a file) do not parse as what was expected."""


class InsecureKeyFile(CryptoError, PermissionError):
    """A secret key file is readable by group or others; it is refused rather than trusted."""


class KeyFileUnreadable(CryptoError, OSError):
    """A key file named on the command line or in a config is missing, a directory or unreadable."""


class ValueOutOfRange(CryptoError, ValueError):
    """A value cannot be encoded (fixed-point range exceeded, NaN or infinity) without silently wrapping."""


class MaskReuse(CryptoError, ValueError):
    """A masking tag was used twice in one session; reusing a mask would leak the difference of two vectors."""


class DepthExhausted(CryptoError, ValueError):
    """A homomorphic multiplication needs more levels than the CKKS coefficient chain has left."""


class DuplicateValue(CryptoError, ValueError):
    """A set that must hold distinct values (PSI tags) repeats one; matching it would be ambiguous."""
