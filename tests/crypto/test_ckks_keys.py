"""Properties of CKKS key management: who can decrypt, what is refused, and key binding."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import tenseal as ts

from crypto._ckks_wire import parse_context
from crypto.ckks_keys import (
    AGGREGATION,
    SCORING_ADD_ONLY,
    AggregationKey,
    CkksParams,
    EncryptedVector,
    LenderKeyPair,
    PublicContext,
    check_security,
    decrypt,
    encrypt_columns,
    encrypt_vector,
    envelope_key_id,
    linear_combination,
    sum_encrypted,
)
from crypto.errors import (
    BadSignature,
    DepthExhausted,
    InsecureKeyFile,
    InsecureParameters,
    KeyMismatch,
    MalformedData,
    MissingSecretKey,
    SecretKeyPresent,
    UnwrapError,
)
from crypto.identity import IdentityKey
from crypto.keywrap import WrapKeyPair


@pytest.fixture(scope="module")
def lender() -> LenderKeyPair:
    return LenderKeyPair.generate()


@pytest.fixture(scope="module")
def lender_public(lender: LenderKeyPair) -> PublicContext:
    return PublicContext.from_bytes(lender.public_context_bytes())


@pytest.fixture(scope="module")
def agg() -> AggregationKey:
    return AggregationKey.generate()


@pytest.fixture(scope="module")
def agg_public(agg: AggregationKey) -> PublicContext:
    return PublicContext.from_bytes(agg.public_context_bytes())


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_public_context_carries_no_secret_and_no_galois_keys_by_default(lender, lender_public):
    fields = parse_context(lender.public_context_bytes())
    assert fields.secret_key == b""
    assert fields.galois_keys == b""
    assert fields.relin_keys != b""
    assert lender_public.key_id == lender.key_id
    assert not lender_public.has_galois_keys


def test_public_context_cannot_decrypt(lender_public, rng):
    env = encrypt_vector(lender_public, rng.normal(size=16))
    with pytest.raises(MissingSecretKey):
        decrypt(lender_public, env)


def test_secret_bearing_context_is_refused(lender, agg):
    for key in (lender, agg):
        with pytest.raises(SecretKeyPresent):
            PublicContext.from_bytes(key._secret_bytes())
    raw = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 60])
    raw.global_scale = 2.0**40
    with pytest.raises(SecretKeyPresent):
        PublicContext.from_bytes(raw.serialize(save_secret_key=True))


def test_parameters_below_128_bits_are_refused():
    small = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[40, 20, 40])
    small.global_scale = 2.0**20
    with pytest.raises(InsecureParameters):
        PublicContext.from_bytes(small.serialize())
    for degree, bound in ((8192, 218), (16384, 438), (32768, 881)):
        check_security(degree, bound)  # at the bound: accepted
        with pytest.raises(InsecureParameters):
            check_security(degree, bound + 1)
    with pytest.raises(InsecureParameters):
        CkksParams(8192, (60, 60, 60, 60), 40)
    with pytest.raises(InsecureParameters):
        CkksParams(4096, (40, 20, 40), 20)


def test_garbage_context_is_malformed():
    with pytest.raises(MalformedData):
        PublicContext.from_bytes(b"\x0a\xff\xff\xff\xff\x0fnot a context")
    with pytest.raises(MalformedData):
        PublicContext.from_bytes(b"\x0a\x03abc")


def test_expected_key_id_is_enforced(lender, agg):
    with pytest.raises(KeyMismatch):
        PublicContext.from_bytes(agg.public_context_bytes(), expected_key_id=lender.key_id)
    with pytest.raises(MalformedData):
        PublicContext.from_bytes(lender.public_context_bytes(), require_galois_keys=True)


def test_aggregation_encrypt_sum_decrypt_is_accurate_across_ciphertexts(agg, agg_public, rng):
    n = 2 * agg.slot_count + 123  # spans three ciphertexts
    updates = [rng.normal(scale=0.1, size=n) for _ in range(3)]
    wire = [encrypt_vector(agg_public, u).to_bytes() for u in updates]
    at_coordinator = [EncryptedVector.from_bytes(w, agg_public) for w in wire]
    total = sum_encrypted(at_coordinator)
    assert total.ciphertext_count == 3 and len(total) == n
    back = EncryptedVector.from_bytes(total.to_bytes(), agg)
    got = decrypt(agg, back)
    assert got.shape == (n,)
    assert np.max(np.abs(got - np.sum(updates, axis=0))) < 1e-6
    with pytest.raises(MissingSecretKey):
        decrypt(agg_public, total)


def test_wrong_key_ciphertexts_raise_key_mismatch_naming_both_ids(lender, agg, agg_public, rng):
    x = rng.normal(size=32)
    under_agg = encrypt_vector(agg_public, x)
    under_lender = encrypt_vector(lender, x)
    for action in (
        lambda: decrypt(lender, under_agg),
        lambda: EncryptedVector.from_bytes(under_agg.to_bytes(), lender),
        lambda: under_agg + under_lender,
        lambda: sum_encrypted([under_agg, under_lender]),
    ):
        with pytest.raises(KeyMismatch) as info:
            action()
        assert agg.key_id in str(info.value) and lender.key_id in str(info.value)
    assert envelope_key_id(under_agg.to_bytes()) == agg.key_id


def test_corrupt_envelopes_are_malformed(agg, agg_public, rng):
    wire = encrypt_vector(agg_public, rng.normal(size=10)).to_bytes()
    for bad in (wire[:-5], b"XXXX" + wire[4:], wire + b"\x00", wire[:8]):
        with pytest.raises(MalformedData):
            EncryptedVector.from_bytes(bad, agg)
    other = encrypt_vector(agg_public, rng.normal(size=11))
    with pytest.raises(MalformedData):
        encrypt_vector(agg_public, rng.normal(size=10)) + other
    with pytest.raises(MalformedData):
        encrypt_vector(agg_public, [float("nan")])


def test_scoring_operations_linear_square_linear(lender, lender_public, rng):
    batch, d = 64, 3
    cols = [rng.normal(scale=0.5, size=batch) for _ in range(d)]
    holders = [encrypt_columns(lender_public, np.stack(cols, 1) * s) for s in (0.2, 0.3, 0.5)]
    assert [len(h) for h in holders] == [d] * 3 and len(holders[0][0]) == batch
    summed = [sum_encrypted([h[j] for h in holders]) for j in range(d)]  # Σ holders = cols
    w, b = rng.normal(size=d), 0.25
    hidden = linear_combination(summed, w, b).square()  # both levels of the default chain
    expected = (np.stack(cols, 1) @ w + b) ** 2
    assert np.max(np.abs(decrypt(lender, hidden) - expected)) < 1e-3
    with pytest.raises(DepthExhausted):
        hidden.mul_plain(2.0)
    biased = summed[0].add_plain(np.arange(batch, dtype=float))
    assert np.max(np.abs(decrypt(lender, biased) - (cols[0] + np.arange(batch)))) < 1e-5


def test_saved_secret_has_mode_0600_and_round_trips(lender, agg, tmp_path, rng):
    path = tmp_path / "keys" / "lender.ckks"
    lender.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = LenderKeyPair.load(path)
    assert loaded.key_id == lender.key_id
    x = rng.normal(size=20)
    assert np.max(np.abs(decrypt(loaded, encrypt_vector(lender, x)) - x)) < 1e-6
    with pytest.raises(MalformedData):
        AggregationKey.load(path)  # a lender key is not an aggregation key
    os.chmod(path, 0o644)
    with pytest.raises(InsecureKeyFile):
        LenderKeyPair.load(path)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_add_only_lender_key_is_small_and_refuses_multiplication(rng):
    key = LenderKeyPair.generate(SCORING_ADD_ONLY)
    assert key.info.depth == 0
    env = encrypt_vector(key, rng.normal(size=8))
    with pytest.raises(DepthExhausted):
        env.mul_plain(3.0)


@pytest.fixture(scope="module")
def wrap_parties():
    return {
        "alice_id": IdentityKey.generate(),
        "bob_wrap": WrapKeyPair.generate(),
        "carol_wrap": WrapKeyPair.generate(),
        "mallory_id": IdentityKey.generate(),
    }


def test_wrapped_aggregation_key_unwraps_only_for_its_recipient(agg, wrap_parties, rng):
    p = wrap_parties
    blob = agg.wrap_for(p["bob_wrap"].public_key, signer=p["alice_id"], sender_id="bank-a", recipient_id="bank-b")
    bob = AggregationKey.unwrap(
        blob, p["bob_wrap"], sender=p["alice_id"].public_key, sender_id="bank-a", recipient_id="bank-b",
        expected_key_id=agg.key_id,
    )
    assert bob.key_id == agg.key_id
    x = rng.normal(size=50)
    assert np.max(np.abs(decrypt(bob, encrypt_vector(agg, x)) - x)) < 1e-6

    kw = dict(sender=p["alice_id"].public_key, sender_id="bank-a", recipient_id="bank-b")
    with pytest.raises(UnwrapError):
        AggregationKey.unwrap(blob, p["carol_wrap"], **kw)  # wrong recipient key
    with pytest.raises(UnwrapError):
        AggregationKey.unwrap(blob, p["bob_wrap"], sender=p["alice_id"].public_key,
                              sender_id="bank-a", recipient_id="bank-c")  # addressed to someone else
    with pytest.raises(BadSignature):
        AggregationKey.unwrap(blob, p["bob_wrap"], sender=p["mallory_id"].public_key,
                              sender_id="bank-a", recipient_id="bank-b")
    tampered = bytearray(blob)
    tampered[-10] ^= 1
    with pytest.raises(BadSignature):
        AggregationKey.unwrap(bytes(tampered), p["bob_wrap"], **kw)
    with pytest.raises(KeyMismatch):
        AggregationKey.unwrap(blob, p["bob_wrap"], expected_key_id="0" * 64, **kw)


def test_substituted_key_from_a_relay_is_refused(wrap_parties):
    """A relay that wraps its own key for bob cannot make it pass as alice's."""
    p = wrap_parties
    rogue = AggregationKey.generate(AGGREGATION)
    blob = rogue.wrap_for(p["bob_wrap"].public_key, signer=p["mallory_id"], sender_id="bank-a", recipient_id="bank-b")
    with pytest.raises(BadSignature):
        AggregationKey.unwrap(blob, p["bob_wrap"], sender=p["alice_id"].public_key,
                              sender_id="bank-a", recipient_id="bank-b")


def test_wrap_for_all_skips_the_sender_and_addresses_each_recipient(agg, wrap_parties):
    p = wrap_parties
    directory = {"bank-a": WrapKeyPair.generate().public_key, "bank-b": p["bob_wrap"].public_key,
                 "bank-c": p["carol_wrap"].public_key}
    blobs = agg.wrap_for_all(directory, signer=p["alice_id"], sender_id="bank-a")
    assert sorted(blobs) == ["bank-b", "bank-c"]
    for rid, me in (("bank-b", p["bob_wrap"]), ("bank-c", p["carol_wrap"])):
        key = AggregationKey.unwrap(blobs[rid], me, sender=p["alice_id"].public_key, sender_id="bank-a",
                                    recipient_id=rid, expected_key_id=agg.key_id)
        assert key.key_id == agg.key_id
    with pytest.raises(UnwrapError):  # carol's blob is useless to bob
        AggregationKey.unwrap(blobs["bank-c"], p["bob_wrap"], sender=p["alice_id"].public_key,
                              sender_id="bank-a", recipient_id="bank-c")
