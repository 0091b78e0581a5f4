"""USCC validation: the GB 32100-2015 alphabet, length and check digit."""

from __future__ import annotations

import random

import pytest
from pydantic import BaseModel, ValidationError

from protocols.errors import InvalidUSCC
from protocols.uscc import ALPHABET, USCC, check_character, is_valid_uscc, make_uscc, validate_uscc

KNOWN_VALID = ["91350100M000100Y43", "91440300708461136T"]


@pytest.mark.parametrize("code", KNOWN_VALID)
def test_published_codes_are_valid(code: str) -> None:
    assert validate_uscc(code) == code


@pytest.mark.parametrize("code", KNOWN_VALID)
def test_every_single_character_change_is_detected(code: str) -> None:
    # The mod-31 check catches every substitution at any position.
    for position in range(18):
        for replacement in ALPHABET:
            if replacement == code[position]:
                continue
            mutated = code[:position] + replacement + code[position + 1 :]
            assert not is_valid_uscc(mutated), mutated


def test_error_names_the_check_digit_rule() -> None:
    with pytest.raises(InvalidUSCC, match="check digit expected T got X"):
        validate_uscc("91440300708461136X")


@pytest.mark.parametrize(
    ("code", "rule"),
    [
        ("9144030070846113", "length must be 18, got 16"),
        ("91440300708461136T0", "length must be 18, got 19"),
        ("9144O300708461136T", "forbidden character 'O' at position 5"),
        ("91440300708461136I", "forbidden character 'I' at position 18"),
    ],
)
def test_error_names_the_failed_rule(code: str, rule: str) -> None:
    with pytest.raises(InvalidUSCC) as info:
        validate_uscc(code)
    assert info.value.rule == rule


def test_lowercase_and_whitespace_are_normalised() -> None:
    assert validate_uscc(" 91440300708461136t ") == "91440300708461136T"


def test_make_uscc_produces_valid_codes() -> None:
    rng = random.Random(0)
    for _ in range(500):
        body = "".join(rng.choice(ALPHABET) for _ in range(17))
        code = make_uscc(body)
        assert validate_uscc(code) == code
        assert code[-1] == check_character(body)


def test_pydantic_type_validates_and_reports_rule() -> None:
    class Applicant(BaseModel):
        uscc: USCC

    assert Applicant(uscc="91350100m000100y43").uscc == "91350100M000100Y43"
    with pytest.raises(ValidationError, match="check digit expected"):
        Applicant(uscc="91350100M000100Y44")


def test_non_string_is_rejected() -> None:
    with pytest.raises(InvalidUSCC, match="expected a string"):
        validate_uscc(12345)  # type: ignore[arg-type]
