"""Synthetic but structurally valid unified social credit codes (GB 32100-2015).

Layout: registration authority '9' (market regulation) + organisation category ('1' enterprise,
'2' individual business, '3' farmers' cooperative) + 6-digit administrative region code + 9-char
organisation code (8 body characters and a GB 11714 check character) + USCC check character.
Firms registered after the 2015 reform get SAMR-assigned bodies starting with "MA".
"""

from __future__ import annotations

import numpy as np

from protocols.uscc import ALPHABET

# Real county-level region codes (a province is its first two digits), weighted towards the
# coastal provinces where SME density is highest.
REGIONS: tuple[tuple[str, float], ...] = (
    ("110105", 4.0), ("110108", 4.0), ("120116", 2.0), ("130102", 1.5), ("310104", 3.0),
    ("310115", 5.0), ("320214", 3.0), ("320505", 3.5), ("330106", 3.5), ("330782", 4.0),
    ("340104", 2.0), ("350203", 2.5), ("370102", 2.0), ("370202", 2.5), ("410105", 2.0),
    ("420106", 2.0), ("430104", 1.5), ("440106", 4.0), ("440305", 4.5), ("440306", 4.0),
    ("441900", 4.5), ("500103", 1.5), ("510107", 2.5), ("610113", 1.5),
)

_USCC_VALUE = np.array([ALPHABET.index(c) for c in ALPHABET])
_ORG_WEIGHTS = np.array([3, 7, 9, 10, 5, 8, 4, 2])
_USCC_WEIGHTS = np.array([pow(3, i, 31) for i in range(17)])
# GB 11714 values: digits are themselves, letters A=10 ... Z=35.
_ORG_VALUE = np.array([int(c) if c.isdigit() else ord(c) - 55 for c in ALPHABET])
_DIGITS = np.array([ALPHABET.index(c) for c in "0123456789"])
_LETTERS_AND_DIGITS = np.arange(len(ALPHABET))


def _org_check(body_idx: np.ndarray) -> np.ndarray:
    """GB 11714 check character (as USCC-alphabet index) for (n, 8) body indices."""
    total = (_ORG_VALUE[body_idx] * _ORG_WEIGHTS).sum(axis=1)
    c9 = 11 - total % 11
    chars = np.where(c9 == 10, ALPHABET.index("X"), np.where(c9 == 11, 0, c9))
    return chars


def make_usccs(rng: np.random.Generator, category: np.ndarray, region: np.ndarray,
               post_reform: np.ndarray) -> np.ndarray:
    """Unique valid USCCs, one per firm (vectorised; duplicates redrawn)."""
    n = len(category)
    head = np.empty((n, 9), dtype=np.int64)
    head[:, 0] = ALPHABET.index("9")
    head[:, 1] = np.array([ALPHABET.index(c) for c in "0123"])[category]
    region_digits = np.array([[int(ch) for ch in code] for code, _ in REGIONS])
    head[:, 2:8] = region_digits[region]
    codes = np.empty(n, dtype=object)
    todo = np.arange(n)
    while len(todo):
        m = len(todo)
        body = _DIGITS[rng.integers(0, 10, size=(m, 8))]
        samr = post_reform[todo]
        body[samr, 0] = ALPHABET.index("M")
        body[samr, 1] = ALPHABET.index("A")
        body[samr, 2:] = _LETTERS_AND_DIGITS[rng.integers(0, len(ALPHABET), size=(samr.sum(), 6))]
        org = np.concatenate([body, _org_check(body)[:, None]], axis=1)
        full = np.concatenate([head[todo, :8], org], axis=1)  # 17 characters
        total = (_USCC_VALUE[full] * _USCC_WEIGHTS).sum(axis=1)
        check = (31 - total % 31) % 31
        chars = np.array(list(ALPHABET))[np.concatenate([full, check[:, None]], axis=1)]
        codes[todo] = ["".join(row) for row in chars]
        _, first = np.unique(codes.astype(str), return_index=True)
        dup = np.ones(n, dtype=bool)
        dup[first] = False
        todo = np.flatnonzero(dup)
    return codes.astype(str)
