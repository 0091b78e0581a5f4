"""Key wrapping: only the intended recipient, under the exact context, recovers the secret."""

from __future__ import annotations

import os
import stat

import pytest

from crypto.errors import InsecureKeyFile, MalformedData, UnwrapError
from crypto.keywrap import WrapKeyPair, WrapPublicKey, unwrap, wrap

CTX = b'{"purpose":"test","recipient":"bank-b","sender":"bank-a"}'


@pytest.fixture(scope="module")
def bob() -> WrapKeyPair:
    return WrapKeyPair.generate()


@pytest.fixture(scope="module")
def carol() -> WrapKeyPair:
    return WrapKeyPair.generate()


def test_round_trip_for_recipient(bob):
    secret = os.urandom(1000)
    assert unwrap(wrap(secret, bob.public_key, context=CTX), bob, context=CTX) == secret


def test_each_wrap_is_fresh(bob):
    secret = b"k" * 32
    a, b = wrap(secret, bob.public_key, context=CTX), wrap(secret, bob.public_key, context=CTX)
    assert a != b and secret not in a


def test_wrong_recipient_context_or_tampering_fails(bob, carol):
    blob = wrap(b"top secret", bob.public_key, context=CTX)
    with pytest.raises(UnwrapError):
        unwrap(blob, carol, context=CTX)
    with pytest.raises(UnwrapError):
        unwrap(blob, bob, context=CTX.replace(b"bank-b", b"bank-c"))
    for i in (0, 5, 40, len(blob) - 1):  # magic, ephemeral key, nonce, tag
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(UnwrapError):
            unwrap(bytes(tampered), bob, context=CTX)
    with pytest.raises(UnwrapError):
        unwrap(blob[:20], bob, context=CTX)


def test_low_order_ephemeral_key_is_an_unwrap_error(bob):
    blob = bytearray(wrap(b"x", bob.public_key, context=CTX))
    blob[3:35] = bytes(32)  # u = 0, a degenerate point
    with pytest.raises(UnwrapError):
        unwrap(bytes(blob), bob, context=CTX)


def test_context_must_be_bytes(bob):
    with pytest.raises(TypeError):
        wrap(b"x", bob.public_key, context="not bytes")  # type: ignore[arg-type]


def test_save_load_modes_and_refusals(bob, tmp_path):
    key_path, pub_path = tmp_path / "bob.key", tmp_path / "bob.pub"
    bob.save(key_path)
    bob.public_key.save(pub_path)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    loaded = WrapKeyPair.load(key_path)
    assert loaded.public_bytes() == bob.public_bytes()
    assert WrapPublicKey.load(pub_path) == bob.public_key
    blob = wrap(b"s", WrapPublicKey.from_bytes(bob.public_bytes()), context=CTX)
    assert unwrap(blob, loaded, context=CTX) == b"s"
    with pytest.raises(MalformedData):
        WrapPublicKey.from_bytes(b"short")
    os.chmod(key_path, 0o640)
    with pytest.raises(InsecureKeyFile):
        WrapKeyPair.load(key_path)
