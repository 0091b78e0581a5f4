"""Unified social credit code (统一社会信用代码, GB 32100-2015).

Every enterprise is identified by its 18-character USCC. It is validated (alphabet and check digit)
before it is used anywhere: in PSI, in a grant, in a scoring request. A typo must never silently
become "enterprise not found".
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator

from protocols.errors import InvalidUSCC

ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # 31 symbols: no I, O, Z, S, V
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
_WEIGHTS = tuple(pow(3, i, 31) for i in range(17))  # 3^(i-1) mod 31 for positions 1..17
LENGTH = 18


def check_character(body: str) -> str:
    """Return the check character for the first 17 characters of a code."""
    if len(body) != LENGTH - 1:
        raise InvalidUSCC(body, f"expected 17 characters to compute a check digit, got {len(body)}")
    total = 0
    for position, (char, weight) in enumerate(zip(body, _WEIGHTS), start=1):
        value = _VALUE.get(char)
        if value is None:
            raise InvalidUSCC(body, f"forbidden character {char!r} at position {position}")
        total += value * weight
    return ALPHABET[(31 - total % 31) % 31]


def validate_uscc(code: str) -> str:
    """Return ``code`` (upper-cased, stripped) if valid, else raise :class:`InvalidUSCC` naming the rule."""
    if not isinstance(code, str):
        raise InvalidUSCC(repr(code), f"expected a string, got {type(code).__name__}")
    normalised = code.strip().upper()
    if len(normalised) != LENGTH:
        raise InvalidUSCC(code, f"length must be {LENGTH}, got {len(normalised)}")
    for position, char in enumerate(normalised, start=1):
        if char not in _VALUE:
            raise InvalidUSCC(code, f"forbidden character {char!r} at position {position}")
    expected = check_character(normalised[:17])
    got = normalised[17]
    if got != expected:
        raise InvalidUSCC(code, f"check digit expected {expected} got {got}")
    return normalised


def is_valid_uscc(code: str) -> bool:
    """True when ``code`` passes every rule (for filtering; use :func:`validate_uscc` to learn why not)."""
    try:
        validate_uscc(code)
    except InvalidUSCC:
        return False
    return True


def make_uscc(body17: str) -> str:
    """Append the check character to a 17-character body (used by the synthetic data generator)."""
    return body17 + check_character(body17)


USCC = Annotated[str, BeforeValidator(validate_uscc)]
"""Pydantic field type: ``uscc: USCC`` validates and normalises (InvalidUSCC is a ValueError,
so pydantic reports it as a validation error naming the rule)."""
