"""Canonical byte encoding of JSON-able values, the only thing we ever sign or hash.

Signing "a dict" is ambiguous (key order, whitespace, float spelling); signing these bytes is not:
UTF-8 JSON with sorted keys, no whitespace, no NaN/Infinity, string keys only. Bytes must be
base64-encoded by the caller; anything not plain JSON is refused instead of being coerced.
"""

from __future__ import annotations

import json
from typing import Any

from crypto.errors import MalformedData

_DOMAIN_PREFIX = b"fedscore/v1\x00"


def _check(value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise MalformedData(f"{where}: NaN/Infinity cannot be encoded canonically")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise MalformedData(f"{where}: keys must be strings, got {type(key).__name__}")
            _check(item, f"{where}.{key}")
        return
    raise MalformedData(f"{where}: {type(value).__name__} is not JSON (encode bytes as base64 first)")


def canonical_bytes(value: Any) -> bytes:
    """Sorted-key compact UTF-8 JSON of ``value``; raises :class:`MalformedData` for non-JSON input."""
    _check(value, "$")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def check_domain(domain: str) -> bytes:
    if not isinstance(domain, str) or not domain or not domain.isascii() or "\x00" in domain:
        raise MalformedData("domain must be a non-empty ASCII string without NUL, e.g. 'consent.grant/v1'")
    return domain.encode()


def domain_separated(domain: str, payload: bytes) -> bytes:
    """``fedscore/v1 NUL domain NUL payload``: a signature for one purpose never verifies for another."""
    return _DOMAIN_PREFIX + check_domain(domain) + b"\x00" + payload
