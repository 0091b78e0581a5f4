"""Identities: signatures bind signer, domain and the exact canonical message."""

from __future__ import annotations

import os
import stat

import pytest

from crypto.errors import BadSignature, InsecureKeyFile, MalformedData
from crypto.identity import IdentityKey, IdentityPublicKey, canonical_bytes, signing_input


@pytest.fixture(scope="module")
def alice() -> IdentityKey:
    return IdentityKey.generate()


@pytest.fixture(scope="module")
def bob() -> IdentityKey:
    return IdentityKey.generate()


GRANT = {"enterprise": "h:ab12", "lender": "L1", "purpose": "credit", "holders": ["bank", "tax"], "ttl": 3600}


def test_canonical_bytes_ignore_key_order_and_refuse_non_json():
    assert canonical_bytes({"b": 1, "a": [1, 2]}) == canonical_bytes({"a": [1, 2], "b": 1}) == b'{"a":[1,2],"b":1}'
    for bad in ({"x": b"raw"}, {"x": float("nan")}, {1: "int key"}, {"x": {1, 2}}):
        with pytest.raises(MalformedData):
            canonical_bytes(bad)


def test_sign_verify_and_key_order_independence(alice):
    sig = alice.sign("consent.grant/v1", GRANT)
    alice.public_key.verify("consent.grant/v1", dict(reversed(list(GRANT.items()))), sig)


def test_bad_signatures_are_refused(alice, bob):
    sig = alice.sign("consent.grant/v1", GRANT)
    with pytest.raises(BadSignature):
        bob.public_key.verify("consent.grant/v1", GRANT, sig)  # wrong signer
    with pytest.raises(BadSignature):
        alice.public_key.verify("consent.revoke/v1", GRANT, sig)  # other domain
    with pytest.raises(BadSignature):
        alice.public_key.verify("consent.grant/v1", {**GRANT, "lender": "L2"}, sig)  # edited
    with pytest.raises(BadSignature):
        alice.public_key.verify("consent.grant/v1", GRANT, sig[:-1])
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    with pytest.raises(BadSignature):
        alice.public_key.verify("consent.grant/v1", GRANT, flipped)


def test_domains_cannot_collide():
    with pytest.raises(MalformedData):
        signing_input("a\x00b", b"c")
    with pytest.raises(MalformedData):
        signing_input("", b"c")


def test_seal_and_open(alice, bob):
    env = alice.seal("psi.announce/v1", GRANT)
    assert alice.public_key.open(env, "psi.announce/v1") == GRANT
    with pytest.raises(BadSignature):
        bob.public_key.open(env, "psi.announce/v1")
    with pytest.raises(BadSignature):
        alice.public_key.open(env, "other/v1")
    with pytest.raises(BadSignature):
        alice.public_key.open({**env, "payload": {**GRANT, "ttl": 1}}, "psi.announce/v1")
    with pytest.raises(MalformedData):
        alice.public_key.open({"payload": GRANT}, "psi.announce/v1")


def test_fingerprint_save_load(alice, tmp_path):
    alice.save(tmp_path / "a.key")
    alice.public_key.save(tmp_path / "a.pub")
    assert stat.S_IMODE(os.stat(tmp_path / "a.key").st_mode) == 0o600
    loaded = IdentityKey.load(tmp_path / "a.key")
    assert loaded.fingerprint == alice.fingerprint and len(alice.fingerprint) == 64
    assert IdentityPublicKey.load(tmp_path / "a.pub") == alice.public_key
    assert IdentityPublicKey.from_bytes(alice.public_key.to_bytes()) == alice.public_key
    loaded.public_key.verify("d/v1", b"m", alice.sign("d/v1", b"m"))
    os.chmod(tmp_path / "a.key", 0o604)
    with pytest.raises(InsecureKeyFile):
        IdentityKey.load(tmp_path / "a.key")
    os.chmod(tmp_path / "a.pub", 0o600)
    with pytest.raises(MalformedData):
        IdentityKey.load(tmp_path / "a.pub")  # a public key file is not a secret key file


def test_missing_or_directory_key_files_are_named_not_raw_os_errors(tmp_path):
    from crypto.errors import CryptoError

    for load in (IdentityKey.load, IdentityPublicKey.load):
        with pytest.raises(CryptoError, match=r"nope\.key: key file not found"):
            load(tmp_path / "nope.key")
        with pytest.raises(CryptoError, match="is a directory or special file"):
            load(tmp_path)
