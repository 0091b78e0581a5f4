"""Pairwise masking: exact cancellation, signed keys, and mismatches detected rather than summed."""

from __future__ import annotations

import numpy as np
import pytest

from crypto.errors import BadSignature, MalformedData, MaskMismatch, MaskReuse, ValueOutOfRange
from crypto.identity import IdentityKey
from crypto.masking import (
    MAX_ABS,
    SCALE,
    MaskedVector,
    MaskingKey,
    MaskingSession,
    decode_fixed,
    encode_fixed,
    sum_masked,
)

PARTIES = ("bank", "platform", "tax", "utility")


def make_sessions(session_id: str = "s1", parties=PARTIES):
    ids = {p: IdentityKey.generate() for p in parties}
    keys = {p: MaskingKey.generate() for p in parties}
    anns = {p: keys[p].announce(ids[p], participant_id=p, session_id=session_id) for p in parties}
    directory = {p: ids[p].public_key for p in parties}
    sessions = {
        p: MaskingSession(session_id=session_id, me=p, mask_key=keys[p], announcements=anns, identities=directory)
        for p in parties
    }
    return sessions, ids, keys, anns, directory


@pytest.fixture()
def world():
    return make_sessions()


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(11)


def test_masks_cancel_exactly_and_hide_inputs(world, rng):
    sessions = world[0]
    xs = {p: rng.normal(scale=3.0, size=(64, 5)) for p in PARTIES}
    masked = [sessions[p].mask(xs[p], round_tag="e0/b0/fwd") for p in PARTIES]
    total = sum_masked(masked, round_tag="e0/b0/fwd")
    exact = sum(np.rint(x * SCALE).astype(np.int64) for x in xs.values()) / SCALE
    assert total.shape == (64, 5)
    assert np.array_equal(total, exact)  # bit-exact: masks cancel mod 2^64
    assert np.max(np.abs(total - sum(xs.values()))) <= len(PARTIES) / SCALE
    for mv, p in zip(masked, PARTIES):  # a masked vector does not reveal its input
        assert not np.array_equal(mv.data, encode_fixed(xs[p]))
        assert np.max(np.abs(decode_fixed(mv.data) - xs[p].reshape(-1))) > 1e3


def test_wire_round_trip(world, rng):
    sessions = world[0]
    masked = [MaskedVector.from_bytes(sessions[p].mask(rng.normal(size=7), round_tag="t").to_bytes()) for p in PARTIES]
    assert sum_masked(masked).shape == (7,)
    blob = sessions["bank"].mask(np.zeros(3), round_tag="u").to_bytes()
    with pytest.raises(MaskMismatch):
        MaskedVector.from_bytes(blob[:-8])  # body shorter than its declared shape
    with pytest.raises(MalformedData):
        MaskedVector.from_bytes(b"nope" + blob[4:])


def test_swapped_public_key_is_caught(world):
    sessions, ids, keys, anns, directory = world
    relay_key = MaskingKey.generate()
    swapped = dict(anns)
    forged = dict(anns["tax"])
    forged["payload"] = {**anns["tax"]["payload"], "x25519": relay_key.public_bytes().hex()}
    swapped["tax"] = forged
    with pytest.raises(BadSignature):
        MaskingSession(session_id="s1", me="bank", mask_key=keys["bank"], announcements=swapped, identities=directory)
    # a relay signing with its own identity is not the directory's "tax" either
    relay_id = IdentityKey.generate()
    swapped["tax"] = relay_key.announce(relay_id, participant_id="tax", session_id="s1")
    with pytest.raises(BadSignature):
        MaskingSession(session_id="s1", me="bank", mask_key=keys["bank"], announcements=swapped, identities=directory)


def test_replayed_announcement_from_another_session_is_caught(world):
    _, ids, keys, anns, directory = world
    old = dict(anns)
    old["tax"] = MaskingKey.generate().announce(ids["tax"], participant_id="tax", session_id="s0")
    with pytest.raises(BadSignature):
        MaskingSession(session_id="s1", me="bank", mask_key=keys["bank"], announcements=old, identities=directory)


def test_round_mismatch_is_detected(world, rng):
    sessions = world[0]
    masked = [sessions[p].mask(rng.normal(size=4), round_tag="r1" if p != "tax" else "r2") for p in PARTIES]
    with pytest.raises(MaskMismatch):
        sum_masked(masked)
    same = [sessions[p].mask(rng.normal(size=4), round_tag="r3") for p in PARTIES]
    with pytest.raises(MaskMismatch):
        sum_masked(same, round_tag="r4")


def test_participant_set_mismatch_is_detected(world, rng):
    sessions = world[0]
    other_sessions = make_sessions("s1")[0]  # same ids, different keys: a diverging view
    masked = [sessions[p].mask(rng.normal(size=4), round_tag="r") for p in PARTIES[:3]]
    masked.append(other_sessions["utility"].mask(rng.normal(size=4), round_tag="r"))
    with pytest.raises(MaskMismatch):
        sum_masked(masked)
    full = [sessions[p].mask(rng.normal(size=4), round_tag="q") for p in PARTIES]
    with pytest.raises(MaskMismatch):
        sum_masked(full[:3])  # a participant is missing
    with pytest.raises(MaskMismatch):
        sum_masked(full[:3] + [full[0]])  # one counted twice


def test_shape_mismatch_is_detected(world, rng):
    sessions = world[0]
    masked = [sessions[p].mask(rng.normal(size=(4, 2)), round_tag="r") for p in PARTIES[:3]]
    masked.append(sessions["utility"].mask(rng.normal(size=(2, 4)), round_tag="r"))
    with pytest.raises(MaskMismatch):
        sum_masked(masked)


def test_round_tag_cannot_be_reused(world, rng):
    sessions = world[0]
    sessions["bank"].mask(rng.normal(size=4), round_tag="once")
    with pytest.raises(MaskReuse):
        sessions["bank"].mask(rng.normal(size=4), round_tag="once")


def test_masks_differ_across_rounds(world):
    sessions = world[0]
    a = sessions["bank"].mask(np.zeros(16), round_tag="a").data
    b = sessions["bank"].mask(np.zeros(16), round_tag="b").data
    assert not np.array_equal(a, b)


def test_out_of_range_values_raise_instead_of_wrapping(world):
    sessions = world[0]
    for bad in (np.array([0.0, MAX_ABS]), np.array([np.nan]), np.array([-np.inf]), np.array([-MAX_ABS * 2])):
        with pytest.raises(ValueOutOfRange):
            sessions["bank"].mask(bad, round_tag=f"bad-{bad[-1]}")
    edge = np.nextafter(MAX_ABS, 0)
    assert decode_fixed(encode_fixed([edge, -edge])).tolist() == [edge, -edge]


def test_session_requires_the_full_directory(world):
    _, ids, keys, anns, directory = world
    partial = {p: anns[p] for p in PARTIES[:3]}
    with pytest.raises(MaskMismatch):
        MaskingSession(session_id="s1", me="bank", mask_key=keys["bank"], announcements=partial, identities=directory)
    with pytest.raises(BadSignature):  # my own slot must carry my key
        MaskingSession(session_id="s1", me="bank", mask_key=MaskingKey.generate(), announcements=anns, identities=directory)
