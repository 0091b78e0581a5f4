"""Scoring gateway on loopback (gateway + 3 responders in threads, mutual TLS everywhere):
accuracy against the plaintext model, faults, typed errors, and proof that the gateway is blind."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from bench.bench_scoring import AllowAll, start_deployment
from coordinator.scoring_gateway import GatewayCore
from crypto.ckks_keys import EncryptedVector, LenderKeyPair, PublicContext, decrypt
from crypto.errors import MissingSecretKey
from models.split import TopModel, evaluate_top
from participants.lender import GrpcGatewayTransport
from participants.scoring_responder import ResponderCore
from protocols._grpc import scoring_pb2 as pb
from protocols.scoring import (
    DeadlineExceeded,
    InvalidRequest,
    MonthNotAvailable,
    MutualTls,
    NotAuthorized,
    ReplayedRequest,
    RequestTooLarge,
    RequiredSourceUnavailable,
    ScoringLimits,
    StaleRequest,
    UnknownKey,
    sigmoid,
)
from tests.participants.test_scoring_responder import EARLIER, LAST, month_pd, monthly_core
from tests.protocols.test_scoring import cached_world

pytestmark = pytest.mark.timeout(300)


def _fast_dir() -> Path:
    """Consent state on tmpfs when there is one: the guard fsyncs every use."""
    return Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return cached_world(tmp_path_factory)


@pytest.fixture(scope="module")
def revocations(world, tmp_path_factory):
    path = tmp_path_factory.mktemp("revocations") / "list.json"
    world.revoked = []
    world.publish(1, path)
    return path


@pytest.fixture(scope="module")
def guards(world, revocations):
    state = _fast_dir()
    return {h: world.guard(h, state / h, revocations=revocations) for h in world.holders}


@pytest.fixture(scope="module")
def deployment(world, guards):
    dep = start_deployment(world, guards)
    yield dep
    dep.stop()


@pytest.fixture(scope="module")
def lender_keys() -> LenderKeyPair:
    return LenderKeyPair.generate()


@pytest.fixture(scope="module")
def client(deployment, world, lender_keys):
    c = deployment.lender(world, lender_keys, timeout=60)
    c.register()
    return c


def test_encrypted_scores_match_plaintext_on_1000_smes(world, lender_keys) -> None:
    # Consent is allowed here (the other tests run the real guard): this one is about the arithmetic.
    dep = start_deployment(world, {h: AllowAll() for h in world.holders})
    try:
        client = dep.lender(world, lender_keys, timeout=120)
        client.register()
        usccs = world.universe()[:1000]
        results = client.score(usccs, [world.grant(u) for u in usccs])
    finally:
        dep.stop()
    pds = np.array([r.pd for r in results])
    expected = world.plaintext_pd(usccs)
    assert [r.uscc for r in results] == usccs
    assert np.max(np.abs(pds - expected)) < 1e-4
    assert all(r.scored and r.sources == ("bank", "tax", "utility") and not r.missing for r in results)
    assert {r.grade for r in results} >= {"A", "E"}
    assert all(300 <= r.score <= 900 for r in results)


def test_poly_top_through_the_same_path(world, guards, lender_keys) -> None:
    import torch

    torch.manual_seed(11)
    spec = TopModel(world.spec.in_dim, "poly", hidden=5).he_spec()

    def gateway(holders, transport, tops, **kw):
        return GatewayCore(holders, transport, {world.model_ref: spec}, **kw)

    dep = start_deployment(world, guards, gateway_core=gateway)
    try:
        c = dep.lender(world, lender_keys, timeout=60)
        c.register()
        usccs = world.universe()[200:260]
        results = c.score(usccs, [world.grant(u) for u in usccs])
    finally:
        dep.stop()
    z = np.zeros((len(usccs), spec.in_dim))
    for h in world.holders:
        frame, bottom = world.features[h], world.store(h).load_bottom(world.model_ref)
        for i, u in enumerate(usccs):
            if u in frame.index:
                z[i] += bottom.embed(frame.loc[[u]])[0]
    assert np.max(np.abs(np.array([r.pd for r in results]) - sigmoid(evaluate_top(spec, z)))) < 1e-4


# ---------------------------------------------------------------------------------------------
# Consent
# ---------------------------------------------------------------------------------------------


def test_revoked_grant_is_permission_denied_with_reason(world, client, revocations) -> None:
    uscc = world.universe()[5]
    grant = world.grant(uscc)
    assert client.score([uscc], [grant])[0].scored
    world.revoked.append(grant)
    world.publish(2, revocations)
    with pytest.raises(NotAuthorized, match="revoked"):
        client.score([uscc], [grant])


def test_grant_for_another_lender_is_refused(world, client) -> None:
    uscc = world.universe()[6]
    with pytest.raises(NotAuthorized, match="wrong_lender"):
        client.score([uscc], [world.grant(uscc, lender="someone-else")])


def test_refusal_by_one_holder_affects_only_that_sme(world, client) -> None:
    usccs = world.universe()[10:14]
    grants = [world.grant(u) for u in usccs]
    grants[1] = world.grant(usccs[1], holders=("bank", "utility"))
    results = client.score(usccs, grants)
    full = world.plaintext_pd(usccs)
    without_tax = world.plaintext_pd([usccs[1]], holders=["bank", "utility"])
    assert results[1].sources == ("bank", "utility") and results[1].missing == {"tax": "holder_not_covered"}
    assert abs(results[1].pd - without_tax[0]) < 1e-4
    for i in (0, 2, 3):
        assert results[i].sources == ("bank", "tax", "utility") and abs(results[i].pd - full[i]) < 1e-4


def test_purpose_reaches_every_holder(world, client) -> None:
    usccs = world.universe()[24:27]
    monitoring = [world.grant(u, purpose="monitoring") for u in usccs]
    with pytest.raises(NotAuthorized, match="wrong_purpose"):
        client.score(usccs, monitoring)  # default purpose: scoring
    results = client.score(usccs, monitoring, purpose="monitoring")
    assert all(r.scored and r.sources == ("bank", "tax", "utility") for r in results)
    assert np.max(np.abs(np.array([r.pd for r in results]) - world.plaintext_pd(usccs))) < 1e-4
    with pytest.raises(NotAuthorized, match="wrong_purpose"):
        client.score(usccs[:1], [world.grant(usccs[0])], purpose="monitoring")


def test_unknown_purpose_is_invalid_argument(world, deployment, client) -> None:
    request = _request(client, world, world.universe()[27:28])
    request.purpose = "training"
    with pytest.raises(InvalidRequest, match="purpose 'training'"):
        _raw(world, deployment).score(request, 30)


def test_label_holder_refusal_leaves_sme_unscored(world, client) -> None:
    usccs = world.universe()[20:22]
    grants = [world.grant(usccs[0], holders=("tax", "utility")), world.grant(usccs[1])]
    first, second = client.score(usccs, grants)
    assert not first.scored and first.pd is None and first.missing["bank"] == "holder_not_covered"
    assert second.scored


# ---------------------------------------------------------------------------------------------
# Bad input gets a specific status
# ---------------------------------------------------------------------------------------------


def _raw(world, deployment) -> GrpcGatewayTransport:
    return GrpcGatewayTransport(deployment.address, MutualTls.from_pki(world.pki.root, "lender"))


def _request(client, world, usccs, *, stamp=None) -> pb.ScoreRequest:
    from protocols.scoring import Stamp

    s = stamp or Stamp.new()
    return pb.ScoreRequest(
        stamp=pb.Stamp(request_id=s.request_id, issued_at_ms=s.issued_at_ms), key_id=client.key_id,
        subjects=[pb.Subject(uscc=u, grant_json=world.grant(u).model_dump_json()) for u in usccs],
    )


def test_invalid_uscc_is_invalid_argument_naming_the_rule(world, client) -> None:
    good = world.universe()[0]
    bad = good[:-1] + ("0" if good[-1] != "0" else "1")
    with pytest.raises(InvalidRequest, match="subject 1: invalid USCC: check digit"):
        client.score([good, bad], [world.grant(good), world.grant(good)])


def test_unknown_key_is_not_found(world, deployment) -> None:
    stranger = deployment.lender(world, LenderKeyPair.generate())
    uscc = world.universe()[0]
    with pytest.raises(UnknownKey, match="not registered"):
        stranger.score([uscc], [world.grant(uscc)])


def test_secret_bearing_context_is_refused_at_registration(world, deployment, lender_keys) -> None:
    from participants.lender import _stamp

    transport = _raw(world, deployment)
    with pytest.raises(InvalidRequest, match="secret key"):
        transport.register_key(pb.RegisterKeyRequest(stamp=_stamp(), public_context=lender_keys._secret_bytes()), 30)


def test_oversized_request_is_resource_exhausted(world, deployment, client) -> None:
    u = world.universe()[0]
    request = _request(client, world, [u])
    request.subjects.extend([pb.Subject(uscc=u, grant_json="{}")] * ScoringLimits().max_subjects)
    with pytest.raises(RequestTooLarge, match="at most 4096"):
        _raw(world, deployment).score(request, 30)


def test_replayed_request_id_is_already_exists(world, deployment, client) -> None:
    transport = _raw(world, deployment)
    request = _request(client, world, world.universe()[30:31])
    transport.score(request, 30)
    with pytest.raises(ReplayedRequest):
        transport.score(request, 30)


def test_stale_timestamp_is_refused(world, deployment, client) -> None:
    from protocols.scoring import Stamp

    old = Stamp("ab" * 16, int((time.time() - 3600) * 1000))
    with pytest.raises(StaleRequest, match="stale"):
        _raw(world, deployment).score(_request(client, world, world.universe()[31:32], stamp=old), 30)


# ---------------------------------------------------------------------------------------------
# Faults: missing holders, slow holders, deadlines
# ---------------------------------------------------------------------------------------------


def test_down_holder_is_left_out_and_reported(world, guards, lender_keys) -> None:
    dep = start_deployment(world, guards, holders=["bank", "tax"])  # utility never started
    try:
        c = dep.lender(world, lender_keys, timeout=30)
        c.register()
        usccs = world.universe()[40:45]
        results = c.score(usccs, [world.grant(u) for u in usccs])
    finally:
        dep.stop()
    expected = world.plaintext_pd(usccs, holders=["bank", "tax"])
    assert np.max(np.abs(np.array([r.pd for r in results]) - expected)) < 1e-4
    assert all(r.sources == ("bank", "tax") and r.missing == {"utility": "unavailable"} for r in results)


def test_required_holder_down_is_a_clear_error(world, guards, lender_keys) -> None:
    dep = start_deployment(world, guards, holders=["tax", "utility"])
    try:
        c = dep.lender(world, lender_keys, timeout=30)
        c.register()
        u = world.universe()[0]
        with pytest.raises(RequiredSourceUnavailable, match="required holder bank"):
            c.score([u], [world.grant(u)])
    finally:
        dep.stop()


class _Slow(ResponderCore):
    def contribute(self, **kwargs):
        time.sleep(4)
        return super().contribute(**kwargs)


def _slow(which: str):
    return lambda name, *a, **k: (_Slow if name == which else ResponderCore)(name, *a, **k)


def test_slow_holder_times_out_without_hanging_the_request(world, lender_keys) -> None:
    limits = ScoringLimits(responder_timeout_s=0.8)
    dep = start_deployment(world, {h: AllowAll() for h in world.holders}, responder_core=_slow("utility"), limits=limits)
    try:
        c = dep.lender(world, lender_keys, timeout=30)
        c.register()
        usccs = world.universe()[50:53]
        c.score(usccs, [world.grant(u) for u in usccs])  # installs the key everywhere
        t0 = time.monotonic()
        results = c.score(usccs, [world.grant(u) for u in usccs])
        elapsed = time.monotonic() - t0
    finally:
        dep.stop()
    assert elapsed < 3.0
    assert all(r.missing == {"utility": "timeout"} for r in results)
    expected = world.plaintext_pd(usccs, holders=["bank", "tax"])
    assert np.max(np.abs(np.array([r.pd for r in results]) - expected)) < 1e-4


def test_lender_deadline_is_honoured(world, lender_keys) -> None:
    dep = start_deployment(world, {h: AllowAll() for h in world.holders}, responder_core=_slow("bank"))
    try:
        c = dep.lender(world, lender_keys, timeout=30)
        c.register()
        c.timeout = 0.7
        u = world.universe()[0]
        t0 = time.monotonic()
        with pytest.raises((DeadlineExceeded, RequiredSourceUnavailable)):
            c.score([u], [world.grant(u)])
        assert time.monotonic() - t0 < 2.0
    finally:
        dep.stop()


# ---------------------------------------------------------------------------------------------
# Proof of blindness
# ---------------------------------------------------------------------------------------------


class ServerRecorder(grpc.ServerInterceptor):
    """Everything the gateway receives from and sends to lenders."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, object]] = []

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        def wrapped(request, context):
            self.messages.append(("received", request))
            response = inner(request, context)
            self.messages.append(("sent", response))
            return response

        return grpc.unary_unary_rpc_method_handler(
            wrapped, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )


class ClientRecorder(grpc.UnaryUnaryClientInterceptor):
    """Everything the gateway sends to and receives from responders."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str, object]] = []

    def intercept_unary_unary(self, continuation, call_details, request):
        self.messages.append(("sent", call_details.method, request))
        outcome = continuation(call_details, request)
        try:
            self.messages.append(("received", call_details.method, outcome.result()))
        except grpc.RpcError:
            pass
        return outcome


def _bytes_fields(message) -> list[tuple[str, bytes]]:
    out = []
    for field, value in message.ListFields():
        values = value if field.label == field.LABEL_REPEATED else [value]
        for v in values:
            if isinstance(v, bytes):
                out.append((field.name, v))
            elif hasattr(v, "ListFields"):
                out.extend(_bytes_fields(v))
    return out


def _no_bytes_fields(descriptor, seen=None) -> bool:
    seen = seen or set()
    if descriptor.full_name in seen:
        return True
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
        if field.type == field.TYPE_BYTES:
            return False
        if field.message_type is not None and not _no_bytes_fields(field.message_type, seen):
            return False
    return True


def _words(wire: bytes, width: int):
    """Every ``width``-byte little-endian word of ``wire``, at every alignment."""
    udtype = "<u8" if width == 8 else "<u4"
    for offset in range(width):
        yield np.frombuffer(wire, dtype=udtype, count=(len(wire) - offset) // width, offset=offset)


def _contains_floats(wire: bytes, vectors: list[np.ndarray]) -> bool:
    """Whether ``wire`` holds any value of ``vectors`` as a float64, or two neighbours as float32
    (a single float32 matches random ciphertext bytes by chance; a pair does not)."""
    singles = np.unique(np.concatenate([v.astype("<f8") for v in vectors]).view("<u8"))
    pairs = np.unique(np.concatenate(
        [np.stack([v[:-1], v[1:]], axis=1).astype("<f4").reshape(-1).view("<u8") for v in vectors if v.size > 1]
    ))
    for wanted in (singles, pairs):
        for words in _words(wire, 8):
            pos = np.minimum(np.searchsorted(wanted, words), wanted.size - 1)
            if np.any(wanted[pos] == words):
                return True
    return False


def test_gateway_is_blind(world, guards) -> None:
    server_rec, client_rec = ServerRecorder(), ClientRecorder()
    dep = start_deployment(world, guards, server_interceptors=[server_rec], client_interceptors=[client_rec])
    keys = LenderKeyPair.generate()
    try:
        c = dep.lender(world, keys, timeout=60)
        c.register()
        usccs = world.universe()[100:140]
        results = c.score(usccs, [world.grant(u) for u in usccs])
        stored = dep.gateway.core.keys.get("lender", keys.key_id)
    finally:
        dep.stop()
    assert isinstance(stored, PublicContext)

    # What would leak: each holder's bottom outputs, the summed embedding, logits and PDs.
    secrets_ = [np.array([r.pd for r in results]), np.array([r.logit for r in results])]
    for h in world.holders:
        frame, bottom = world.features[h], world.store(h).load_bottom(world.model_ref)
        known = [u for u in usccs if u in frame.index]
        out = bottom.embed(frame.loc[known])
        secrets_ += [out.ravel(), out.T.ravel()]
    needles = secrets_

    for planted in (secrets_[2][5:6].astype("<f8"), secrets_[3][8:10].astype("<f4")):  # the scan can fail
        assert _contains_floats(b"\x01" * 3 + planted.tobytes() + b"\x02" * 9, needles)
    assert not _contains_floats(b"\x03" * 64, needles)

    everything = [m for _, m in server_rec.messages] + [m for _, _, m in client_rec.messages]
    assert len(server_rec.messages) == 4 and any(isinstance(m, pb.ContributeResponse) for m in everything)
    contexts = envelopes = 0
    for message in everything:
        wire = message.SerializeToString()
        assert not _contains_floats(wire, needles), type(message).__name__
        for name, blob in _bytes_fields(message):
            if name == "public_context":
                ctx = PublicContext.from_bytes(blob)  # raises SecretKeyPresent for a secret-bearing context
                assert ctx.key_id == keys.key_id
                contexts += 1
            else:
                assert name == "envelope" or name == "envelopes"
                vec = EncryptedVector.from_bytes(blob, stored)
                with pytest.raises(MissingSecretKey):
                    decrypt(stored, vec)  # everything the gateway holds cannot decrypt it
                envelopes += 1
        if isinstance(message, pb.ScoreResponse):
            assert all(s.sign in (1.0, -1.0) for s in message.shares)
    assert contexts >= 1 + len(world.holders) and envelopes >= len(world.holders) + 1

    # A responder never receives another responder's output: what it is sent has no bytes at all
    # besides the lender's public context, by the message definitions themselves.
    assert _no_bytes_fields(pb.ContributeRequest.DESCRIPTOR)
    to_responders = [m for d, _, m in client_rec.messages if d == "sent"]
    assert {type(m).__name__ for m in to_responders} == {"InstallKeyRequest", "ContributeRequest"}


class _WrongKey(ResponderCore):
    """A broken holder that encrypts under some other key than the lender's."""

    other = LenderKeyPair.generate().public_context_bytes()

    def contribute(self, **kwargs):
        kwargs["key_id"] = self.install_key(self.other)
        return super().contribute(**kwargs)


def test_ciphertext_under_another_key_is_left_out_and_named(world, lender_keys) -> None:
    dep = start_deployment(world, {h: AllowAll() for h in world.holders}, responder_core=(
        lambda name, *a, **k: (_WrongKey if name == "tax" else ResponderCore)(name, *a, **k)))
    try:
        c = dep.lender(world, lender_keys, timeout=30)
        c.register()
        usccs = world.universe()[60:63]
        results = c.score(usccs, [world.grant(u) for u in usccs])
    finally:
        dep.stop()
    assert all(r.missing == {"tax": "error"} and r.sources == ("bank", "utility") for r in results)
    expected = world.plaintext_pd(usccs, holders=["bank", "utility"])
    assert np.max(np.abs(np.array([r.pd for r in results]) - expected)) < 1e-4


# ---------------------------------------------------------------------------------------------
# Feature month
# ---------------------------------------------------------------------------------------------


class _IgnoresMonth(ResponderCore):
    """A holder that serves its start-up month whatever the request asks (as responders did before
    the month travelled): it says so in its reply."""

    def month(self, as_of: str = "") -> str:
        return super().month("")


def test_month_travels_to_every_holder_and_each_reports_it(world, lender_keys) -> None:
    def cores(name, tables, consent, **kw):
        if name == "tax":
            return _IgnoresMonth(name, {world.model_ref: tables[world.model_ref]}, consent, **kw)
        return monthly_core(world)(name, tables, consent, **kw)

    dep = start_deployment(world, {h: AllowAll() for h in world.holders}, responder_core=cores)
    try:
        c = dep.lender(world, lender_keys, timeout=30)
        c.register()
        usccs = world.universe()[70:75]
        request = _request(c, world, usccs)
        request.as_of = EARLIER
        response = _raw(world, dep).score(request, 30)
        reports = {s.holder: (s.status, s.as_of, s.detail) for s in response.sources}
        assert reports["bank"] == reports["utility"] == ("contributed", EARLIER, "")
        assert reports["tax"] == ("error", "", f"answered for month (none), asked {EARLIER}")
        results = c.score(usccs, [world.grant(u) for u in usccs], as_of=EARLIER)
        assert all(r.as_of == EARLIER and r.months == {"bank": EARLIER, "utility": EARLIER} for r in results)
        assert all(r.missing == {"tax": "error"} for r in results)
        expected = month_pd(world, usccs, EARLIER, holders=["bank", "utility"])
        assert np.max(np.abs(np.array([r.pd for r in results]) - expected)) < 1e-4
        with pytest.raises(MonthNotAvailable, match=f"month 2025-01 is beyond bank's data, which ends at {LAST}; "
                                                    f"month 2025-01 is beyond utility's data, which ends at {LAST}"):
            c.score(usccs, [world.grant(u) for u in usccs], as_of="2025-01")
        request = _request(c, world, usccs)
        request.as_of = "2024-1"
        with pytest.raises(MonthNotAvailable, match="month '2024-1' is not YYYY-MM"):
            _raw(world, dep).score(request, 30)
    finally:
        dep.stop()
