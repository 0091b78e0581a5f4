"""Scoring responder: consent per enterprise, ciphertexts only, same-shaped replies whether or not
the holder knows an enterprise, typed errors, only the gateway may call it, and each request's
feature month (embeddings per month, cached and bounded; months it cannot serve are refused).

:func:`monthly_core` and :func:`month_pd` are shared with the gateway, lender and monitoring tests."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from bench.bench_scoring import AllowAll
from crypto.ckks_keys import EncryptedVector, LenderKeyPair, decrypt
from participants.datastore import LocalDataStore
from participants.scoring_responder import EmbeddingTable, MonthlyEmbeddings, ResponderCore, serve_responder
from protocols._grpc import scoring_pb2 as pb
from protocols._grpc import scoring_pb2_grpc as pb_grpc
from protocols.scoring import (
    InvalidRequest,
    MonthNotAvailable,
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
LAST, EARLIER = "2024-12", "2024-11"
"""The world's data ends at LAST (its consortium ``as_of``, so every responder's default month)."""


def monthly_embeddings(world, holder: str, *, max_months: int = 3) -> MonthlyEmbeddings:
    """A holder's embeddings per month from its own data, as ``fedscore serve responder`` builds them."""
    part = next(p for p in world.cfg.participants if p.name == holder)
    return MonthlyEmbeddings(world.store(holder), LocalDataStore(part, default_as_of=world.cfg.as_of),
                             refs=[world.model_ref], max_months=max_months)


def monthly_core(world, cls=ResponderCore):
    """``responder_core`` for :func:`bench.bench_scoring.start_deployment`: month-aware responders
    (the start-up-month tables it hands over are ignored)."""
    return lambda name, _tables, consent, **kw: cls(name, monthly_embeddings(world, name), consent, **kw)


def month_pd(world, usccs: list[str], month: str, holders: list[str] | None = None) -> np.ndarray:
    """The model's PD in the clear with every holder's features as of ``month``."""
    from participants.monitoring.scorers import PlaintextScorer
    from protocols.scoring import sigmoid

    names = holders or world.holders
    parts = {p.name: p for p in world.cfg.participants}
    scorer = PlaintextScorer({h: world.store(h).load_bottom(world.model_ref) for h in names}, world.spec,
                             lambda m: {h: LocalDataStore(parts[h]).features(m) for h in names})
    return sigmoid(scorer.logits(usccs, month))


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


# ---------------------------------------------------------------------------------------------
# Feature month
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def monthly(world, keys):
    core = ResponderCore(HOLDER, monthly_embeddings(world, HOLDER, max_months=1), AllowAll(), limits=ScoringLimits(max_subjects=16))
    core.install_key(keys.public_context_bytes())
    yield core
    core.close()


def _holder_features(world, month: str):
    part = next(p for p in world.cfg.participants if p.name == HOLDER)
    return LocalDataStore(part).features(month)


def test_each_month_is_served_from_that_months_features(world, keys, monthly) -> None:
    bottom = world.store(HOLDER).load_bottom(world.model_ref)
    tables = {m: monthly.model(world.model_ref, m) for m in (EARLIER, LAST)}
    assert monthly.model(world.model_ref) is tables[LAST] and monthly.month("") == LAST  # default month
    for month, table in tables.items():
        frame = _holder_features(world, month)
        assert table.as_of == month and list(table.index) == list(frame.index)
        assert np.max(np.abs(table.matrix - bottom.embed(frame))) < 1e-9
    known = [u for u in tables[EARLIER].index if u in tables[LAST].index][:3]
    assert np.max(np.abs(tables[EARLIER].matrix[[tables[EARLIER].index[u] for u in known]]
                         - tables[LAST].matrix[[tables[LAST].index[u] for u in known]])) > 1e-3
    base = dict(key_id=keys.key_id, model_ref=world.model_ref, lender="lender", layout="packed", usccs=known,
                grants=[world.grant(u).model_dump_json() for u in known])
    for month, table in tables.items():
        envelopes, d, _ = monthly.contribute(**base, as_of=month)
        assert np.max(np.abs(_decrypt_block(keys, envelopes, 3, d) - table.matrix[[table.index[u] for u in known]])) < 1e-5


def test_a_month_that_arrives_later_is_served_without_a_restart(world, keys, tmp_path) -> None:
    import pandas as pd

    part = next(p for p in world.cfg.participants if p.name == HOLDER)
    records = Path(part.data_dir) / part.features.records_file
    full = pd.read_csv(records, dtype=str, keep_default_na=False)
    copy = part.model_copy(update={"data_dir": tmp_path})
    target = tmp_path / part.features.records_file
    full[full[part.features.month_column] != LAST].to_csv(target, index=False)  # LAST not delivered yet
    core = ResponderCore(HOLDER, MonthlyEmbeddings(world.store(HOLDER), LocalDataStore(copy), refs=[world.model_ref]),
                         AllowAll())
    assert core.month("") == EARLIER
    with pytest.raises(MonthNotAvailable, match=f"month {LAST} is beyond {HOLDER}'s data, which ends at {EARLIER}"):
        core.month(LAST)
    full.to_csv(target, index=False)  # the holder's pipeline appends the new month
    assert core.month(LAST) == LAST and core.month("") == LAST
    table = core.model(world.model_ref, LAST)
    bottom = world.store(HOLDER).load_bottom(world.model_ref)
    assert np.max(np.abs(table.matrix - bottom.embed(_holder_features(world, LAST)))) < 1e-9
    with pytest.raises(MonthNotAvailable, match="which ends at 2024-12"):
        core.month("2025-01")  # still nothing newer


def test_months_it_cannot_serve_are_refused_before_consent_is_used(world, keys, monthly) -> None:
    calls: list[int] = []

    class Counting(AllowAll):
        def check_many(self, requests, **kw):
            calls.append(len(requests))
            return super().check_many(requests, **kw)

    monthly._consent = Counting()
    u = world.universe()[0]
    base = dict(key_id=keys.key_id, model_ref=world.model_ref, lender="lender", layout="packed", usccs=[u],
                grants=[world.grant(u).model_dump_json()])
    for month, message in (("2025-01", f"month 2025-01 is beyond {HOLDER}'s data, which ends at {LAST}"),
                           ("2023-11", f"month 2023-11 is before {HOLDER}'s data, which starts at 2023-12"),
                           ("2024-13", f"month '2024-13' is not YYYY-MM \\(asked of {HOLDER}\\)"),
                           ("24-12", "month '24-12' is not YYYY-MM")):
        with pytest.raises(MonthNotAvailable, match=message):
            monthly.contribute(**base, as_of=month)
    assert calls == []
    monthly.contribute(**base, as_of=LAST)
    assert calls == [1]
    fixed = ResponderCore(HOLDER, {world.model_ref: EmbeddingTable(world.model_ref, {}, np.zeros((0, 4)), LAST)}, AllowAll())
    assert fixed.month("") == fixed.month(LAST) == LAST
    with pytest.raises(MonthNotAvailable, match=f"month {EARLIER} is not served by {HOLDER}: it holds one "
                                                f"precomputed frame of features, served as of {LAST} only"):
        fixed.month(EARLIER)


def test_month_cache_keeps_the_default_and_the_latest_others_and_builds_once(world, monthly) -> None:
    from concurrent.futures import ThreadPoolExecutor

    embeddings = monthly.embeddings
    builds: list[str] = []
    build = embeddings._build
    embeddings._build = lambda ref, month: (builds.append(month), time.sleep(0.2), build(ref, month))[-1]
    with ThreadPoolExecutor(4) as pool:  # concurrent first requests for one month: built once, same table
        tables = list(pool.map(lambda _: monthly.model(world.model_ref, "2024-10"), range(4)))
    assert builds == ["2024-10"] and all(t is tables[0] for t in tables)
    monthly.model(world.model_ref)
    monthly.model(world.model_ref, EARLIER)  # max_months=1: evicts 2024-10, never the default
    assert sorted(m for m, _ in embeddings.cached()) == [EARLIER, LAST]
    monthly.model(world.model_ref, "2024-10")
    assert builds == ["2024-10", LAST, EARLIER, "2024-10"]
    assert sorted(m for m, _ in embeddings.cached()) == ["2024-10", LAST]


def test_the_reply_names_the_month_used_and_refusals_are_invalid_argument(world, keys, monthly) -> None:
    running = serve_responder(monthly, "127.0.0.1:0", MutualTls.from_pki(world.pki.root, HOLDER))
    try:
        channel = grpc.secure_channel(f"127.0.0.1:{running.port}", MutualTls(
            world.pki.ca_cert, world.pki.gateway_cert, world.pki.gateway_key).channel_credentials())
        gateway = pb_grpc.ScoringResponderStub(channel)
        u = world.universe()[0]

        def request(as_of: str) -> pb.ContributeRequest:
            s = Stamp.new()
            return pb.ContributeRequest(
                stamp=pb.Stamp(request_id=s.request_id, issued_at_ms=s.issued_at_ms), key_id=keys.key_id,
                model_ref=world.model_ref, lender="lender", layout="packed", as_of=as_of,
                subjects=[pb.Subject(uscc=u, grant_json=world.grant(u).model_dump_json())])

        assert gateway.Contribute(request(""), timeout=30).as_of == LAST
        assert gateway.Contribute(request(EARLIER), timeout=30).as_of == EARLIER
        with pytest.raises(grpc.RpcError) as refused:
            gateway.Contribute(request("2025-02"), timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == f"month 2025-02 is beyond {HOLDER}'s data, which ends at {LAST}"
    finally:
        running.stop(0)


def test_data_without_months_serves_only_its_default_month(tmp_path, keys) -> None:
    """A ``custom`` schema (benchmark CSVs) has one frame and no time axis: it is served to requests
    naming no month (or the month it was configured as of), and a request for any other month is
    refused rather than answered with the same frame under another month's name."""
    from models.preprocessing import Preprocessor
    from models.split import BottomModel
    from participants.model_store import LocalModelStore
    from protocols.consortium import FeatureSchemaConfig

    ids = [make_uscc(f"9135010000000{i:04d}") for i in range(5)]
    x = np.arange(10, dtype=float).reshape(5, 2)
    (tmp_path / "bureau.csv").write_text("uscc,a,b\n" + "".join(f"{u},{r[0]},{r[1]}\n" for u, r in zip(ids, x)))
    schema = FeatureSchemaConfig.model_validate({"schema": "custom", "file": "bureau.csv", "columns": ["a", "b"]})
    models = LocalModelStore(tmp_path / "models")
    models.save_bottom("credit:v1", BottomModel(2, 3), Preprocessor.fit(x, ["a", "b"]), ["a", "b"])
    for configured in ("", "2024-12"):
        data = LocalDataStore.from_dir(tmp_path, schema, name="bureau", default_as_of=configured or None)
        core = ResponderCore("bureau", MonthlyEmbeddings(models, data, refs=["credit:v1"]), AllowAll())
        assert core.embeddings.span() is None and core.month("") == configured
        table = core.model("credit:v1")
        assert table.as_of == configured
        assert np.max(np.abs(table.matrix - models.load_bottom("credit:v1").embed(data.features()))) < 1e-9
        served = f"as of {configured}" if configured else "to requests naming no month"
        with pytest.raises(MonthNotAvailable, match=f"month 2024-11 is not served by bureau: its data has no months "
                                                    f"\\(custom schema\\), served {served} only"):
            core.model("credit:v1", "2024-11")
        if configured:
            assert core.model("credit:v1", configured) is table


def test_a_holder_whose_records_are_only_a_header_refuses_to_start(tmp_path) -> None:
    """``fedscore serve responder`` builds this at start-up: an emptied file stops it, naming the file."""
    from participants.model_store import LocalModelStore
    from protocols.consortium import FeatureSchemaConfig
    from protocols.errors import DataError

    (tmp_path / "vat_monthly.csv").write_text("uscc,month,invoice_count,invoice_amount,distinct_buyers,"
                                              "top_buyer_share,voided_invoices,tax_arrears\n")
    schema = FeatureSchemaConfig.model_validate({"schema": "tax", "file": "vat_monthly.csv"})
    data = LocalDataStore.from_dir(tmp_path, schema, name=HOLDER)
    with pytest.raises(DataError, match="vat_monthly.csv: no rows$"):
        MonthlyEmbeddings(LocalModelStore(tmp_path / "models"), data, refs=["credit:v1"])
