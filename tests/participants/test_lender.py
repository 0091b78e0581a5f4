"""Lender SDK and CLI: swappable transport, decryption to PD/score/grade/sources, grant and batch
files, key generation, and the CLI against a loopback deployment."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from bench.bench_scoring import AllowAll, start_deployment
from coordinator.scoring_gateway import GatewayCore, Holder
from crypto.ckks_keys import LenderKeyPair
from participants.lender import LenderClient, load_grants, read_batch
from participants.scoring_responder import ResponderCore
from protocols._grpc import scoring_pb2 as pb
from protocols.scoring import (
    InvalidRequest,
    MonthMismatch,
    MonthNotAvailable,
    ScoreScale,
    UnknownKey,
    grade_for,
)
from tests.participants.test_scoring_responder import EARLIER, LAST, month_pd, monthly_core, monthly_embeddings
from tests.protocols.test_scoring import cached_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return cached_world(tmp_path_factory)


class InProcessResponders:
    """A ResponderTransport that calls responder cores directly (no network)."""

    def __init__(self, cores: dict[str, ResponderCore]) -> None:
        self.cores = cores
        self.calls: list[str] = []

    def install_key(self, holder, public_context, timeout):
        return self.cores[holder.name].install_key(public_context)

    def contribute(self, holder, request, timeout):
        self.calls.append(holder.name)
        core = self.cores[holder.name]
        envelopes, d, refusals = core.contribute(
            key_id=request.key_id, model_ref=request.model_ref, lender=request.lender, layout=request.layout,
            usccs=[s.uscc for s in request.subjects], grants=[s.grant_json for s in request.subjects],
            purpose=request.purpose, as_of=request.as_of)
        return pb.ContributeResponse(holder=holder.name, envelopes=envelopes, out_dim=d, refusals=refusals,
                                     as_of=core.month(request.as_of))


class InProcessGateway:
    """A GatewayTransport that hands requests to a GatewayCore as lender ``lender``."""

    def __init__(self, core: GatewayCore) -> None:
        self.core = core

    def register_key(self, request, timeout):
        ctx = self.core.register_key("lender", request.public_context)
        return pb.RegisterKeyResponse(key_id=ctx.key_id, slot_count=ctx.slot_count, depth=ctx.info.depth)

    def score(self, request, timeout):
        return self.core.score("lender", request.key_id, request.model_ref, [s.uscc for s in request.subjects],
                               [s.grant_json for s in request.subjects], timeout=timeout, purpose=request.purpose,
                               as_of=request.as_of)


@pytest.fixture(scope="module")
def in_process(world):
    cores = {h: ResponderCore(h, monthly_embeddings(world, h), AllowAll()) for h in world.holders}
    responders = InProcessResponders(cores)
    gateway = GatewayCore([Holder(h, "in-process", required=h == world.label_holder) for h in world.holders],
                          responders, {world.model_ref: world.spec}, default_model=world.model_ref)
    yield InProcessGateway(gateway), responders
    gateway.close()


def test_sdk_works_over_any_transport(world, in_process) -> None:
    transport, responders = in_process
    client = LenderClient(transport, LenderKeyPair.generate())
    with pytest.raises(UnknownKey):
        client.score([world.universe()[0]], [world.grant(world.universe()[0])])
    assert client.register() == client.key_id
    usccs = world.universe()[300:340]
    results = client.score(usccs, [world.grant(u) for u in usccs])
    expected = world.plaintext_pd(usccs)
    assert np.max(np.abs(np.array([r.pd for r in results]) - expected)) < 1e-4
    scale = ScoreScale()
    for r in results:
        assert r.score == scale.score(r.pd) and r.grade == grade_for(r.pd) and r.model_ref == world.model_ref
    assert set(responders.calls) == set(world.holders)


def test_score_batch_splits_into_requests_and_keeps_order(world, in_process) -> None:
    transport, _ = in_process
    client = LenderClient(transport, LenderKeyPair.generate())
    client.register()
    usccs = world.universe()[:230]
    pairs = [(u, world.grant(u)) for u in usccs]
    results = client.score_batch(pairs, chunk=100, parallel=2)
    assert [r.uscc for r in results] == usccs
    assert np.max(np.abs(np.array([r.pd for r in results]) - world.plaintext_pd(usccs))) < 1e-4


def test_purpose_travels_with_every_request(world, in_process) -> None:
    transport, _ = in_process
    sent: list[str] = []

    class Recording:
        def register_key(self, request, timeout):
            return transport.register_key(request, timeout)

        def score(self, request, timeout):
            sent.append(request.purpose)
            return transport.score(request, timeout)

    client = LenderClient(Recording(), LenderKeyPair.generate())
    client.register()
    usccs = world.universe()[400:405]
    client.score_batch([(u, world.grant(u, purpose="monitoring")) for u in usccs], chunk=2, purpose="monitoring")
    client.score(usccs[:1], [world.grant(usccs[0])])
    assert sent == ["monitoring"] * 3 + ["scoring"]
    with pytest.raises(InvalidRequest, match="purpose 'training'"):
        client.score(usccs[:1], [world.grant(usccs[0])], purpose="training")
    assert len(sent) == 4  # refused before sending


def test_as_of_travels_and_results_say_which_month(world, in_process) -> None:
    transport, _ = in_process
    client = LenderClient(transport, LenderKeyPair.generate())
    client.register()
    usccs = world.universe()[420:440]
    pairs = [(u, world.grant(u)) for u in usccs]
    default = client.score(usccs, [g for _, g in pairs])
    earlier = client.score_batch(pairs, chunk=8, as_of=EARLIER)
    for results, month in ((default, LAST), (earlier, EARLIER)):
        assert all(r.as_of == month and r.months == dict.fromkeys(world.holders, month) for r in results)
        assert np.max(np.abs(np.array([r.pd for r in results]) - month_pd(world, usccs, month))) < 1e-4
    assert np.max(np.abs(np.array([r.pd for r in default]) - np.array([r.pd for r in earlier]))) > 1e-3
    with pytest.raises(MonthNotAvailable, match="month '2024-13' is not YYYY-MM"):
        client.score(usccs[:1], [pairs[0][1]], as_of="2024-13")


def test_an_answer_for_another_month_is_refused(world, in_process) -> None:
    transport, _ = in_process

    class Stale:
        """A gateway path where one holder used another month than asked (reported in its source)."""

        def register_key(self, request, timeout):
            return transport.register_key(request, timeout)

        def score(self, request, timeout):
            response = transport.score(request, timeout)
            response.sources[1].as_of = LAST
            return response

    client = LenderClient(Stale(), LenderKeyPair.generate())
    client.register()
    u = world.universe()[441]
    with pytest.raises(MonthMismatch, match=f"asked for features as of {EARLIER}, but tax used {LAST}"):
        client.score([u], [world.grant(u)], as_of=EARLIER)


def test_mismatched_lengths_are_refused_before_sending(world, in_process) -> None:
    client = LenderClient(in_process[0], LenderKeyPair.generate())
    with pytest.raises(InvalidRequest, match="2 enterprises but 1 grants"):
        client.score(world.universe()[:2], [world.grant(world.universe()[0])])


# ---------------------------------------------------------------------------------------------
# Grant and batch files
# ---------------------------------------------------------------------------------------------


def test_grant_files_in_every_shape(world, tmp_path) -> None:
    u = world.universe()[:4]
    g = [world.grant(x) for x in u]
    (tmp_path / "one.json").write_text(g[0].model_dump_json(indent=1))
    (tmp_path / "many.json").write_text(json.dumps([g[1].model_dump(mode="json"), g[2].model_dump(mode="json")]))
    (tmp_path / "lines.jsonl").write_text(g[3].model_dump_json() + "\n")
    grants = load_grants([tmp_path / "one.json", tmp_path / "many.json", tmp_path / "lines.jsonl"])
    assert list(grants) == u
    assert json.loads(grants[u[2]])["grant_id"] == g[2].grant_id

    (tmp_path / "batch.csv").write_text("uscc,name\n" + "\n".join(f"{x},firm" for x in u[:3]) + "\n")
    assert [p[0] for p in read_batch(tmp_path / "batch.csv", grants)] == u[:3]
    assert [p[0] for p in read_batch(tmp_path / "lines.jsonl", {})] == [u[3]]


def test_batch_file_errors_name_the_line(world, tmp_path) -> None:
    u = world.universe()[:2]
    (tmp_path / "b.csv").write_text(f"uscc\n{u[0]}\n{u[1]}\n")
    with pytest.raises(InvalidRequest, match=r"b.csv:3: no grant"):
        read_batch(tmp_path / "b.csv", {u[0]: "{}"})
    (tmp_path / "bad.csv").write_text("uscc\n12345\n")
    with pytest.raises(InvalidRequest, match=r"bad.csv:2: .*length"):
        read_batch(tmp_path / "bad.csv", {})
    (tmp_path / "g.jsonl").write_text("not json\n")
    with pytest.raises(InvalidRequest, match=r"g.jsonl:1"):
        load_grants([tmp_path / "g.jsonl"])


def test_a_batch_file_naming_no_enterprise_is_refused_before_calling_the_gateway(capsys, tmp_path) -> None:
    from tests.test_cli import run_here

    grant = tmp_path / "g.json"
    grant.write_text(json.dumps({"terms": {"enterprise": "91350100M000100Y43"}}))
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "header.csv").write_text("uscc,name\n# nothing yet\n\n")
    (tmp_path / "none.jsonl").write_text("\n")
    for name in ("empty.txt", "header.csv", "none.jsonl"):
        with pytest.raises(InvalidRequest, match=f"{name}: the batch file names no enterprise"):
            read_batch(tmp_path / name, load_grants([grant]))
    # no key and no gateway exist: the command must stop at the batch file, before either is used
    result = run_here(capsys, "score", "--batch", str(tmp_path / "empty.txt"), "--grant", str(grant),
                 "--key", str(tmp_path / "absent.ckks"), "--gateway", "127.0.0.1:9")
    assert result.returncode != 0
    assert f"{tmp_path / 'empty.txt'}: the batch file names no enterprise (no USCC)" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _root() -> typer.Typer:
    """The real ``fedscore`` command tree."""
    from fedscore import build_app

    return build_app()


def test_keygen_writes_a_private_key_and_refuses_to_overwrite(tmp_path) -> None:
    runner = CliRunner()
    key = tmp_path / "lender.ckks"
    result = runner.invoke(_root(), ["lender", "keygen", "--out", str(key)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert LenderKeyPair.load(key).key_id in result.output
    again = runner.invoke(_root(), ["lender", "keygen", "--out", str(key)])
    assert again.exit_code != 0 and "--force" in str(again.exception)
    help_text = runner.invoke(_root(), ["serve", "--help"]).output
    assert "gateway" in help_text and "responder" in help_text


def test_an_out_of_range_gateway_port_is_refused_naming_the_address(capsys, tmp_path) -> None:
    from tests.test_cli import run_here

    key = tmp_path / "lender.ckks"
    LenderKeyPair.generate().save(key)
    grant = tmp_path / "g.json"
    grant.write_text(json.dumps({"terms": {"enterprise": "91350100M000100Y43"}}))
    common = ["--key", str(key), "--pki", str(tmp_path / "pki")]
    for args in (["score", "91350100M000100Y43", "--grant", str(grant), "--gateway", "127.0.0.1:99999", *common],
                 ["lender", "register", "--gateway", "127.0.0.1:99999", *common]):
        result = run_here(capsys, *args)
        assert result.returncode != 0, args
        assert "gateway: address '127.0.0.1:99999': port must be an integer in 1..65535" in result.stderr
        assert "Traceback" not in result.stdout + result.stderr


def test_register_json_prints_the_key_id(monkeypatch, tmp_path) -> None:
    import participants.lender_cli as lender_cli

    class Registering:
        def register(self) -> str:
            return "ab" * 32

    monkeypatch.setattr(lender_cli, "_client", lambda *args, **kwargs: Registering())
    result = CliRunner().invoke(_root(), ["lender", "register", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"key_id": "ab" * 32}


def test_cli_registers_and_scores_a_batch(world, tmp_path) -> None:
    dep = start_deployment(world, {h: AllowAll() for h in world.holders}, responder_core=monthly_core(world))
    try:
        runner = CliRunner()
        key = tmp_path / "lender.ckks"
        LenderKeyPair.generate().save(key)
        common = ["--key", str(key), "--gateway", dep.address, "--pki", str(world.pki.root)]
        reg = runner.invoke(_root(), ["lender", "register", *common])
        assert reg.exit_code == 0, reg.output
        usccs = world.universe()[500:520]
        grants = tmp_path / "grants.jsonl"
        grants.write_text("\n".join(world.grant(u).model_dump_json() for u in usccs))
        batch = tmp_path / "batch.csv"
        batch.write_text("uscc\n" + "\n".join(usccs))
        out = runner.invoke(_root(), ["score", "--batch", str(batch), "--grant", str(grants), "--json", *common])
        assert out.exit_code == 0, out.output
        rows = [json.loads(line) for line in out.output.splitlines()]
        assert [r["uscc"] for r in rows] == usccs
        assert np.max(np.abs(np.array([r["pd"] for r in rows]) - world.plaintext_pd(usccs))) < 1e-4
        assert all(r["as_of"] == LAST for r in rows)
        table = runner.invoke(_root(), ["score", usccs[0], "--grant", str(grants), *common])
        assert table.exit_code == 0 and usccs[0] in table.output and "bank, tax, utility" in table.output
        assert LAST in table.output
        earlier = runner.invoke(_root(), ["score", *usccs[:5], "--grant", str(grants), "--as-of", EARLIER, "--json", *common])
        assert earlier.exit_code == 0, earlier.output
        rows = [json.loads(line) for line in earlier.output.splitlines()]
        assert all(r["as_of"] == EARLIER for r in rows)
        assert np.max(np.abs(np.array([r["pd"] for r in rows]) - month_pd(world, usccs[:5], EARLIER))) < 1e-4
        future = runner.invoke(_root(), ["score", usccs[0], "--grant", str(grants), "--as-of", "2025-06", *common])
        assert future.exit_code != 0 and isinstance(future.exception, MonthNotAvailable)
        assert "month 2025-06 is beyond bank's data" in str(future.exception)
    finally:
        dep.stop()


def test_serve_responder_refuses_to_regenerate_a_lost_audit_key(capsys, tmp_path) -> None:
    from participants.datasets.fate import VERTICAL_CONFIG
    from tests.test_cli import run_here

    consent = tmp_path / "state" / "consent"
    consent.mkdir(parents=True)
    (consent / "consent.db").write_bytes(b"")   # the responder has served before; its node.key is gone
    result = run_here(capsys, "serve", "responder", "--consortium", str(VERTICAL_CONFIG), "--participant", "bureau",
                      "--model", "credit:v1", "--state-dir", str(tmp_path / "state"),
                      "--authority-key", str(tmp_path / "authority.pub"), "--revocations", str(tmp_path / "r.json"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {consent / 'node.key'}: the bureau responder's identity key is missing")
    assert not (consent / "node.key").exists() and not (consent / "pseudonym.key").exists()
