"""crypto.psi: hashing onto the curve, blinding, re-blinding, tags and matching on small sets."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest

from crypto import _x25519
from crypto.errors import DuplicateValue, InvalidPoint
from crypto.psi import POINT_BYTES, TAG_BYTES, BlindingKey, TagAgreement, match_tags

P = _x25519.P
DOMAIN = b"test-consortium/run-1"


def _ids(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(12) for _ in range(n)]


def _psi(x: list[bytes], y: list[bytes], *, workers: int | None = 1) -> set[bytes]:
    a, b = BlindingKey.generate(), BlindingKey.generate()
    ax = a.hash_and_blind(x, DOMAIN, workers=workers)
    by = b.hash_and_blind(y, DOMAIN, workers=workers)
    bax = b.reblind(ax, workers=workers)
    aby = a.reblind(by, workers=workers)
    ta, tb = TagAgreement(), TagAgreement()
    out_b, _ = tb.keys(ta.public_bytes, b"ctx")
    _, in_a = ta.keys(tb.public_bytes, b"ctx")
    i, j = match_tags(out_b.tag(bax), in_a.tag(aby))
    assert all(x[p] == y[q] for p, q in zip(i, j))
    return {x[p] for p in i}


@pytest.mark.parametrize("n_common,n_x,n_y", [(0, 300, 200), (150, 300, 200), (250, 250, 250), (0, 0, 50), (0, 0, 0)])
def test_psi_equals_plain_intersection(n_common: int, n_x: int, n_y: int) -> None:
    common = _ids(n_common, 1)
    x = common + _ids(n_x - n_common, 2)
    y = common + _ids(n_y - n_common, 3)
    random.Random(4).shuffle(x)
    random.Random(5).shuffle(y)
    assert _psi(x, y) == set(x) & set(y)


def test_process_pool_path_matches_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    import crypto.psi as psi

    monkeypatch.setattr(psi, "PARALLEL_MIN", 10)
    monkeypatch.setattr(psi, "_CHUNK_MIN", 300)
    x, y = _ids(1200, 6), _ids(600, 7) + _ids(1200, 6)[:400]
    key = BlindingKey.generate()
    assert key.hash_and_blind(x, DOMAIN, workers=2) == key.hash_and_blind(x, DOMAIN, workers=1)
    assert _psi(x, y, workers=2) == set(x) & set(y)


def test_hash_lands_on_the_curve_not_the_twist() -> None:
    values = _x25519.hash_to_curve(_x25519.hash_prefix(b"ctx", DOMAIN), _ids(300, 8))
    for k in range(0, len(values), 32):
        u = int.from_bytes(values[k:k + 32], "little")
        assert u < P
        assert pow(u * (u * u + _x25519.A * u + 1) % P, (P - 1) // 2, P) == 1


@pytest.mark.parametrize("gmp", [True, False])
def test_legendre_matches_euler_criterion(gmp: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not gmp:  # the pure-Python fallback must give the same answers (hashes must agree across parties)
        monkeypatch.setattr(_x25519, "_GMP", None)
    elif not _x25519.has_fast_legendre():
        pytest.fail("GMP not found: hashing runs on the slow fallback")
    rng = random.Random(9)
    vals = [rng.randrange(P) for _ in range(200)] + [0, 1, P - 1]
    euler = [0 if v == 0 else (1 if pow(v, (P - 1) // 2, P) == 1 else -1) for v in vals]
    assert _x25519.legendre_many(vals) == euler


def test_blinded_values_are_fresh_per_key_and_per_domain() -> None:
    ids = _ids(50, 10)
    a1 = BlindingKey.generate().hash_and_blind(ids, DOMAIN)
    a2 = BlindingKey.generate().hash_and_blind(ids, DOMAIN)
    key = BlindingKey.generate()
    d1, d2 = key.hash_and_blind(ids, b"run-1"), key.hash_and_blind(ids, b"run-2")
    assert len(a1) == len(a2) == 50 * POINT_BYTES
    chunks = lambda v: {v[i:i + 32] for i in range(0, len(v), 32)}  # noqa: E731
    assert not chunks(a1) & chunks(a2)
    assert not chunks(d1) & chunks(d2)


def _low_order_points() -> list[bytes]:
    # u = 0, u = 1 (order 4), the order-8 points, and u = p - 1.
    order8 = [
        bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
        bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    ]
    return [bytes(32), (1).to_bytes(32, "little"), (P - 1).to_bytes(32, "little"), *order8]


@pytest.mark.parametrize("bad", _low_order_points() + [
    (P).to_bytes(32, "little"),  # non-canonical zero
    (P + 1).to_bytes(32, "little"),  # non-canonical one
    bytes(31) + b"\x80",  # high bit set
])
def test_degenerate_peer_point_aborts_with_position(bad: bytes) -> None:
    good = BlindingKey.generate().hash_and_blind(_ids(5, 11), DOMAIN)
    with pytest.raises(InvalidPoint, match=r"peer set: value 3 of 6"):
        BlindingKey.generate().reblind(good[:96] + bad + good[96:], what="peer set")


def test_garbage_from_peer_aborts() -> None:
    key = BlindingKey.generate()
    with pytest.raises(InvalidPoint, match="not a whole number"):
        key.reblind(os.urandom(33))
    with pytest.raises(InvalidPoint):  # 64 random values: the chance all lie on the curve is 2^-64
        key.reblind(bytes(b & 0x7F if i % 32 == 31 else b for i, b in enumerate(os.urandom(64 * 32))))
    with pytest.raises(InvalidPoint):
        key.reblind("not bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidPoint):
        TagAgreement().keys(bytes(32), b"ctx")


def test_secrets_are_never_pickled_or_printed() -> None:
    key, agreement = BlindingKey.generate(), TagAgreement()
    for obj in (key, agreement):
        with pytest.raises(TypeError):
            pickle.dumps(obj)
        assert "secret" in repr(obj)
    assert key.export_secret().hex() not in repr(key)
    restored = BlindingKey.from_secret(key.export_secret())
    assert restored.hash_and_blind(_ids(3, 12), DOMAIN) == key.hash_and_blind(_ids(3, 12), DOMAIN)


def test_tag_keys_are_directional_and_shared() -> None:
    a, b = TagAgreement(), TagAgreement()
    a_out, a_in = a.keys(b.public_bytes, b"ctx")
    b_out, b_in = b.keys(a.public_bytes, b"ctx")
    v = BlindingKey.generate().hash_and_blind(_ids(20, 13), DOMAIN)
    assert a_out.tag(v) == b_in.tag(v)
    assert b_out.tag(v) == a_in.tag(v)
    assert a_out.tag(v) != a_in.tag(v)  # the relay cannot match the two directions
    assert len(a_out.tag(v)) == 20 * TAG_BYTES
    assert a.keys(b.public_bytes, b"other")[0].tag(v) != a_out.tag(v)


def test_match_tags_rejects_repeats_and_sorts_by_left() -> None:
    rng = np.random.default_rng(14)
    right = rng.integers(0, 256, size=(100, TAG_BYTES), dtype=np.uint8)
    pick = rng.permutation(100)[:40]
    left = np.concatenate([right[pick], rng.integers(0, 256, size=(30, TAG_BYTES), dtype=np.uint8)])
    order = rng.permutation(len(left))
    left = left[order]
    i, j = match_tags(left.tobytes(), right.tobytes())
    assert list(i) == sorted(i) and len(i) == 40
    assert (left[i] == right[j]).all()
    with pytest.raises(DuplicateValue):
        match_tags(np.concatenate([left, left[:1]]).tobytes(), right.tobytes())
    with pytest.raises(DuplicateValue):
        match_tags(left.tobytes(), np.concatenate([right, right[:1]]).tobytes())
