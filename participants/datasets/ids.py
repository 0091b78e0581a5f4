"""Deterministic, valid USCCs for public data sets that have no enterprise codes.

PSI, consent and scoring only accept 18-character unified social credit codes with a correct check
digit. FATE identifies clients by integers and the Polish bankruptcy data has no id at all, so each
row gets a synthetic code derived from (data set namespace, integer id):

``9`` (registered with market regulation) ``1`` (enterprise) + 6-digit area code derived from the
namespace + 2 namespace characters + the id in base 31 over 7 characters + check character.

The mapping is injective within a namespace (the id is written out, not hashed), identical on every
holder (so the guest's and host's rows of the same FATE id meet in PSI), and different namespaces
never collide because their 8-character prefixes differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from participants.datasets.errors import DatasetError
from protocols.uscc import ALPHABET, make_uscc

_ID_WIDTH = 7
MAX_ID = len(ALPHABET) ** _ID_WIDTH - 1


def _prefix(namespace: str) -> str:
    digest = hashlib.sha256(namespace.encode("utf-8")).digest()
    area = f"{110000 + int.from_bytes(digest[:4], 'big') % 540000:06d}"  # 110000..649999: mainland areas
    tag = ALPHABET[digest[4] % len(ALPHABET)] + ALPHABET[digest[5] % len(ALPHABET)]
    return "91" + area + tag


def _base31(value: int) -> str:
    out = []
    for _ in range(_ID_WIDTH):
        value, digit = divmod(value, len(ALPHABET))
        out.append(ALPHABET[digit])
    return "".join(reversed(out))


def synthetic_uscc(namespace: str, index: int) -> str:
    """The code of row/id ``index`` (0 <= index <= MAX_ID) in ``namespace``."""
    if isinstance(index, bool) or not 0 <= int(index) <= MAX_ID or int(index) != index:
        raise DatasetError(f"id {index!r} cannot be mapped to a USCC (need an integer in 0..{MAX_ID})")
    return make_uscc(_prefix(namespace) + _base31(int(index)))


def synthetic_usccs(namespace: str, indices: Iterable[int]) -> list[str]:
    prefix = _prefix(namespace)
    out = []
    for position, index in enumerate(indices, start=1):
        i = int(index)
        if not 0 <= i <= MAX_ID or i != index:
            raise DatasetError(f"id at position {position} cannot be mapped to a USCC "
                               f"(need an integer in 0..{MAX_ID})")
        out.append(make_uscc(prefix + _base31(i)))
    return out
