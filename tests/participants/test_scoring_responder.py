"""Scoring responder: consent per enterprise, ciphertexts only, same-shaped replies whether or not
the holder knows an enterprise, typed errors, and only the gateway may call it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import grpc
import numpy as np
import pytest

from crypto.ckks_keys import EncryptedVector, LenderKeyPair, decrypt
from participants.scoring_responder import EmbeddingTable, ResponderCore, serve_responder
from protocols._grpc import scoring_pb2 as pb
from protocols._grpc import scoring_pb2_grpc as pb_grpc
from protocols.scoring import (
    InvalidRequest,
    MutualTls,
    RequestTooLarge,
    ScoringLimits,
    Stamp,
    UnknownKey,
    UnknownModel,
)
from protocols.uscc import make_uscc
from tests.protocols.test_scoring import cached_world

HOLDER = "tax"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return cached_world(tmp_path_factory)


@pytest.fixture(scope="module")
def keys() -> LenderKeyPair:
    return LenderKeyPair.generate()


@pytest.fixture()
def env(world, keys, tmp_path):
    state = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    revocations = tmp_path / "revocations.json"
    world.revoked = []
    world.publish(1, revocations)
    guard = world.guard(HOLDER, state, revocations=revocations)
    table = EmbeddingTable.build(world.store(HOLDER), world.model_ref, world.features[HOLDER])
    core = ResponderCore(HOLDER, {world.model_ref: table}, guard, limits=ScoringLimits(max_subjects=16))
    core.install_key(keys.public_context_bytes())
    return core, table, revocations


def _known_and_unknown(world) -> tuple[list[str], str]:
    frame = world.features[HOLDER]
    known = [u for u in world.universe() if u in frame.index][:3]
    unknown = next(u for u in world.universe() if u not in frame.index)
    return known, unknown


def _decrypt_block(keys, envelopes, n: int, d: int) -> np.ndarray:
    [env] = envelopes
    return decrypt(keys, EncryptedVector.from_bytes(env, keys)).reshape(d, n).T


def _call(core, world, usccs, grants, layout="packed"):
    return core.contribute(key_id=core_key(core), model_ref=world.model_ref, lender="lender", layout=layout,
                           usccs=usccs, grants=[g.model_dump_json() for g in grants])


def core_key(core) -> str:
    return next(iter(core._keys))


def test_allowed_known_enterprises_get_their_bottom_output(world, keys, env) -> None:
    core, table, _ = env
    known, unknown = _known_and_unknown(world)
    usccs = [*known, unknown]
    envelopes, d, refusals = _call(core, world, usccs, [world.grant(u) for u in usccs])
    block = _decrypt_block(keys, envelopes, len(usccs), d)
    bottom = world.store(HOLDER).load_bottom(world.model_ref)
    expected = bottom.embed(world.features[HOLDER].loc[known])
    assert refusals == {}
    assert np.max(np.abs(block[:3] - expected)) < 1e-5
    assert np.max(np.abs(block[3])) < 1e-5  # unknown: zero, and nothing says so


def test_reply_does_not_reveal_whether_the_holder_knows_an_enterprise(world, env, keys) -> None:
    core, *_ = env
    known, unknown = _known_and_unknown(world)
    a, _, ra = _call(core, world, [known[0]], [world.grant(known[0])])
    b, _, rb = _call(core, world, [unknown], [world.grant(unknown)])
    assert len(a) == len(b) == 1 and ra == rb == {}
    va, vb = (EncryptedVector.from_bytes(x[0], keys) for x in (a, b))
    assert (va.key_id, len(va), va.ciphertext_count) == (vb.key_id, len(vb), vb.ciphertext_count)
    # Serialized ciphertexts are compressed random polynomials: sizes jitter per encryption, equally
    # for a real row and a zero row.
    assert abs(len(a[0]) - len(b[0])) < 0.01 * len(a[0])


def test_refused_enterprise_contributes_zero_and_only_its_reason(world, keys, env) -> None:
    core, _, revocations = env
    known, _ = _known_and_unknown(world)
    grants = [world.grant(u) for u in known]
    world.revoked = [grants[1]]
    world.publish(2, revocations)
    grants[2] = world.grant(known[2], lender="another-lender")
    envelopes, d, refusals = _call(core, world, known, grants)
    block = _decrypt_block(keys, envelopes, 3, d)
    assert refusals == {1: "revoked", 2: "wrong_lender"}
    assert np.max(np.abs(block[1:])) < 1e-5
    expected = world.store(HOLDER).load_bottom(world.model_ref).embed(world.features[HOLDER].loc[known[:1]])
    assert np.max(np.abs(block[0] - expected[0])) < 1e-5


def test_grants_are_checked_for_the_request_purpose(world, keys, env) -> None:
    core, _, _ = env
    known, _ = _known_and_unknown(world)
    monitoring = [world.grant(u, purpose="monitoring") for u in known[:2]]
    _, _, refusals = _call(core, world, known[:2], monitoring)  # no purpose: scoring
    assert refusals == {0: "wrong_purpose", 1: "wrong_purpose"}
    base = dict(key_id=core_key(core), model_ref=world.model_ref, lender="lender", layout="packed")
    texts = [g.model_dump_json() for g in monitoring]
    _, _, refusals = core.contribute(**base, usccs=known[:2], grants=texts, purpose="monitoring")
    assert refusals == {}
    scoring = [world.grant(known[2]).model_dump_json()]
    _, _, refusals = core.contribute(**base, usccs=known[2:3], grants=scoring, purpose="monitoring")
    assert refusals == {0: "wrong_purpose"}
    with pytest.raises(InvalidRequest, match="purpose 'training'"):
        core.contribute(**base, usccs=known[2:3], grants=scoring, purpose="training")


def test_columns_layout_sends_one_ciphertext_per_output_dimension(world, keys, env) -> None:
    core, table, _ = env
    known, _ = _known_and_unknown(world)
    envelopes, d, _ = _call(core, world, known, [world.grant(u) for u in known], layout="columns")
    assert len(envelopes) == d == table.out_dim
    cols = np.stack([decrypt(keys, EncryptedVector.from_bytes(e, keys)) for e in envelopes], axis=1)
    assert np.max(np.abs(cols - table.matrix[[table.index[u] for u in known]])) < 1e-5


def test_bad_requests_raise_typed_errors(world, env, keys) -> None:
    core, *_ = env
    known, _ = _known_and_unknown(world)
    grant = world.grant(known[0]).model_dump_json()
    base = dict(key_id=core_key(core), model_ref=world.model_ref, lender="lender", layout="packed")
    with pytest.raises(UnknownKey):
        core.contribute(**{**base, "key_id": "0" * 64}, usccs=known[:1], grants=[grant])
    with pytest.raises(UnknownModel, match="model"):
        core.contribute(**{**base, "model_ref": "other:v9"}, usccs=known[:1], grants=[grant])
    with pytest.raises(InvalidRequest, match="subject 0: invalid USCC: length"):
        core.contribute(**base, usccs=["123"], grants=[grant])
    with pytest.raises(InvalidRequest, match="layout"):
        core.contribute(**{**base, "layout": "rows"}, usccs=known[:1], grants=[grant])
    with pytest.raises(RequestTooLarge):
        many = [make_uscc(f"9135010000000{i:04d}") for i in range(17)]
        core.contribute(**base, usccs=many, grants=[grant] * 17)
    with pytest.raises(InvalidRequest, match="secret key"):
        core.install_key(keys._secret_bytes())


def test_only_the_gateway_may_call_and_ids_are_single_use(world, env, keys) -> None:
    core, *_ = env
    running = serve_responder(core, "127.0.0.1:0", MutualTls.from_pki(world.pki.root, HOLDER))
    try:
        def stub(tls: MutualTls):
            channel = grpc.secure_channel(f"127.0.0.1:{running.port}", tls.channel_credentials())
            return pb_grpc.ScoringResponderStub(channel)

        known, _ = _known_and_unknown(world)
        s = Stamp.new()
        request = pb.ContributeRequest(
            stamp=pb.Stamp(request_id=s.request_id, issued_at_ms=s.issued_at_ms), key_id=keys.key_id,
            model_ref=world.model_ref, lender="lender", layout="packed",
            subjects=[pb.Subject(uscc=known[0], grant_json=world.grant(known[0]).model_dump_json())],
        )
        with pytest.raises(grpc.RpcError) as denied:
            stub(MutualTls.from_pki(world.pki.root, "lender")).Contribute(request, timeout=10)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

        gateway = stub(MutualTls(world.pki.ca_cert, world.pki.gateway_cert, world.pki.gateway_key))
        reply = gateway.Contribute(request, timeout=30)
        assert reply.holder == HOLDER and len(reply.envelopes) == 1
        with pytest.raises(grpc.RpcError) as replayed:
            gateway.Contribute(request, timeout=10)
        assert replayed.value.code() == grpc.StatusCode.ALREADY_EXISTS
    finally:
        running.stop(0)


def test_a_client_without_a_consortium_certificate_cannot_connect(world, env, tmp_path) -> None:
    from crypto.tls import create_ca

    core, *_ = env
    running = serve_responder(core, "127.0.0.1:0", MutualTls.from_pki(world.pki.root, HOLDER))
    try:
        rogue = create_ca("rogue-ca").issue_peer("scoring-gateway")
        rogue.write(tmp_path / "r.crt", tmp_path / "r.key")
        creds = MutualTls(world.pki.ca_cert, tmp_path / "r.crt", tmp_path / "r.key").channel_credentials()
        channel = grpc.secure_channel(f"127.0.0.1:{running.port}", creds)
        s = Stamp.new()
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.ScoringResponderStub(channel).InstallKey(
                pb.InstallKeyRequest(stamp=pb.Stamp(request_id=s.request_id, issued_at_ms=s.issued_at_ms)), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(0)


def test_single_enterprise_replies_use_each_pooled_zero_once(world, keys, env) -> None:
    import time

    core, table, _ = env
    known, _ = _known_and_unknown(world)
    outputs = []
    for _ in range(3):
        envelopes, d, _ = _call(core, world, known[:1], [world.grant(known[0])])
        outputs.append(envelopes[0])
        deadline = time.monotonic() + 20
        while not core.zeros._pools.get((keys.key_id, d)) and time.monotonic() < deadline:
            time.sleep(0.05)  # let the background refill run
    expected = table.matrix[table.index[known[0]]]
    for envelope in outputs:
        assert np.max(np.abs(_decrypt_block(keys, [envelope], 1, d)[0] - expected)) < 1e-5
    assert len(set(outputs)) == 3  # fresh randomness every time: no two replies share ciphertext bytes
    assert core.zeros._pools[(keys.key_id, d)]  # later requests were served from the pool
    core.close()


def test_a_request_checks_consent_in_one_batch(world, keys, env) -> None:
    """One ``check_many`` per request (one use-count transaction, one audit fsync), not one per enterprise."""
    core, _, _ = env
    guard = core._consent
    calls: list[int] = []

    class Counting:
        def check_many(self, requests, **kw):
            calls.append(len(requests))
            return guard.check_many(requests, **kw)

    core._consent = Counting()
    known, unknown = _known_and_unknown(world)
    usccs = known + [unknown]
    _, _, refusals = _call(core, world, usccs, [world.grant(u) for u in usccs])
    assert calls == [4] and refusals == {}
