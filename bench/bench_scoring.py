"""Encrypted scoring benchmark: gateway + 3 responders on loopback with mutual TLS, vs the same
gRPC path carrying plaintext partial sums (as FATE-Serving does), measured in the same run.

Rows:

* ``single``  — p50/p99 latency of scoring one enterprise (lender SDK call: encrypt at holders,
  homomorphic top at the gateway, decrypt at the lender), requests 100 ms apart, and the plaintext
  path's p50/p99 under the same pacing;
* ``batch``   — throughput (enterprises/s) of scoring ``--batch`` enterprises in 4,096-slot
  requests, two in flight, and the plaintext path's;
* ``consent`` — enterprises/s one holder's :class:`participants.consent.ConsentGuard` checks
  (signature, revocation list, durable use count, signed audit entry per enterprise).

The crypto rows use a consent checker that allows everything so they measure the scoring path
itself; the ``consent`` row shows what per-enterprise consent costs on this machine's disk.
``max_error`` is the largest |PD difference| between the encrypted and the plaintext model.

The plaintext baseline is the *same* gRPC services with the same fan-out: responders put the raw
float64 block in the envelope field and the gateway sums and applies the top in numpy.

Run: ``python -m bench.bench_scoring [--quick] [--json]``.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench._report import bench_parser, report
from coordinator.registry import ModelRegistry
from crypto.audit import AuditLog
from crypto.identity import IdentityKey
from crypto.tls import DeploymentPki, write_deployment_pki
from models.preprocessing import Preprocessor
from models.split import TopSpec, evaluate_top
from participants.consent import ConsentGuard, FileRevocationSource
from participants.consent_store import HolderStore
from participants.datastore import LocalDataStore
from participants.model_store import LocalModelStore
from protocols.consent import ConsentDecision, Grant, GrantTerms, Revocation, SignedRevocationList, new_grant_id
from protocols.consortium import ConsortiumConfig, load_consortium
from protocols.scoring import sigmoid
from protocols.vertical import BottomParty, TopParty, VerticalPlan, run_in_process

MODEL_NAME = "credit"
PACE_S = 0.1
"""Pause between single-enterprise requests (both paths): ~10 requests/s, a lender's interactive load."""
LENDER = "lender"


# ---------------------------------------------------------------------------------------------
# A small synthetic consortium with a split model trained in process (shared with the tests)
# ---------------------------------------------------------------------------------------------


@dataclass
class World:
    """Everything a scoring deployment needs, on disk under ``root``."""

    root: Path
    cfg: ConsortiumConfig
    holders: list[str]
    label_holder: str
    features: dict[str, pd.DataFrame]
    model_ref: str
    spec: TopSpec
    registry_dir: Path
    pki: DeploymentPki
    authority: IdentityKey
    revocations: Path
    revoked: list[Grant] = field(default_factory=list)

    def model_dir(self, holder: str) -> Path:
        return self.root / "state" / holder / "models"

    def store(self, holder: str) -> LocalModelStore:
        return LocalModelStore(self.model_dir(holder))

    def universe(self) -> list[str]:
        """Every enterprise some holder knows, sorted."""
        ids: set[str] = set()
        for frame in self.features.values():
            ids.update(map(str, frame.index))
        return sorted(ids)

    def plaintext_pd(self, usccs: list[str], holders: list[str] | None = None) -> np.ndarray:
        """The model's PD computed in the clear (absent holders and unknown enterprises give zero)."""
        z = np.zeros((len(usccs), self.spec.in_dim))
        for name in holders if holders is not None else self.holders:
            frame = self.features[name]
            bottom = self.store(name).load_bottom(self.model_ref)
            known = [i for i, u in enumerate(usccs) if u in frame.index]
            if known:
                z[known] += bottom.embed(frame.loc[[usccs[i] for i in known]])
        return sigmoid(evaluate_top(self.spec, z))

    def grant(self, uscc: str, *, lender: str = LENDER, holders: tuple[str, ...] | str = "all",
              purpose: str = "scoring", days: int = 30) -> Grant:
        now = datetime.now(timezone.utc)
        terms = GrantTerms(enterprise=uscc, lender=lender, purpose=purpose, holders=holders,
                           valid_from=now - timedelta(hours=1), valid_until=now + timedelta(days=days))
        return Grant(grant_id=new_grant_id(), terms=terms, issued_at=now,
                     authority=self.authority.fingerprint).signed_with(self.authority)

    def publish(self, sequence: int, path: Path | None = None) -> Path:
        """Sign the revocation list (``self.revoked``) into ``path`` (default: the world's file)."""
        path = path or self.revocations
        now = datetime.now(timezone.utc)
        signed = SignedRevocationList(
            authority=self.authority.fingerprint, sequence=sequence, issued_at=now,
            next_update=now + timedelta(seconds=30),
            revoked=tuple(Revocation(grant_id=g.grant_id, revoked_at=now, grant_valid_until=g.terms.valid_until)
                          for g in self.revoked),
        ).signed_with(self.authority)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(signed.model_dump_json())
        tmp.replace(path)
        return path

    def guard(self, holder: str, state: Path, *, revocations: Path | None = None, refresh_s: float = 0.0) -> ConsentGuard:
        """A holder's real consent guard with its consent database and audit log under ``state``."""
        return ConsentGuard(
            node=holder, authority_key=self.authority.public_key, store=HolderStore(state / "consent.db"),
            source=FileRevocationSource(revocations or self.revocations), audit=AuditLog(state / "audit.jsonl", IdentityKey.generate()),
            hash_key=b"h" * 32, refresh_interval=timedelta(seconds=refresh_s), max_list_age=timedelta(hours=1),
        )


def build_world(
    root: str | Path,
    *,
    enterprises: int = 1200,
    seed: int = 7,
    holders: tuple[str, ...] = ("bank", "tax", "utility"),
    top_kind: str = "linear",
    out_dim: int = 4,
    epochs: float = 2.0,
) -> World:
    """Synthesise a consortium, train a split model in process, save bottoms and top, issue PKI."""
    from participants.synth.writer import generate

    root = Path(root)
    generate(root / "data", enterprises=enterprises, seed=seed, months=13, force=True)
    cfg = load_consortium(root / "data" / "consortium.toml")
    parts = {p.name: p for p in cfg.participants if p.name in holders}
    label_holder = next(n for n, p in parts.items() if p.holds_labels)
    stores = {n: LocalDataStore(p) for n, p in parts.items()}
    features = {n: s.features() for n, s in stores.items()}
    labels = stores[label_holder].labels()
    universe = [str(u) for u in labels.index]
    plan = VerticalPlan(out_dim=out_dim, top_kind=top_kind, top_hidden=6, batch_size=128, batches_per_round=4,
                        epochs=epochs, lr=0.03, seed=seed)
    parties, preps = {}, {}
    for name, frame in features.items():
        preps[name] = Preprocessor.fit(frame.to_numpy(dtype=np.float64), list(frame.columns))
        present = np.array([u in frame.index for u in universe])
        aligned = frame.reindex(universe)
        x = np.zeros(aligned.shape)
        if present.any():
            x[present] = preps[name].transform(aligned[present].to_numpy(dtype=np.float64))
        parties[name] = BottomParty(name, x, present, plan, is_label_holder=name == label_holder)
    top = TopParty(labels.to_numpy(dtype=np.float64), plan)
    run_in_process(parties, top, label_holder)
    registry_dir = root / "coordinator"
    registry = ModelRegistry(registry_dir)
    version = registry.create(MODEL_NAME, kind="vertical", config=plan.model_dump(mode="json"), participants=list(parts))
    ref = version.ref
    for name, party in parties.items():
        LocalModelStore(root / "state" / name / "models").save_bottom(
            ref, party.model, preps[name], list(features[name].columns))
    spec = top.spec()
    registry.complete(version, metrics={}, weights_location={"top_spec": spec.to_dict(), "bottoms": list(parts)})
    pki = write_deployment_pki(root / "pki", list(parts), lender=LENDER)
    world = World(root=root, cfg=cfg, holders=list(parts), label_holder=label_holder, features=features,
                  model_ref=ref, spec=spec, registry_dir=registry_dir, pki=pki, authority=IdentityKey.generate(),
                  revocations=root / "revocations.json")
    world.authority.save(root / "authority.key")
    (root / "world.json").write_text(json.dumps({"holders": world.holders, "label_holder": label_holder, "model_ref": ref}))
    world.publish(1)
    return world


def load_world(root: str | Path) -> World:
    """Reopen a world written by :func:`build_world` (features are re-read from the data)."""
    from crypto.tls import load_certificate  # noqa: F401  (the PKI files are reused as they are)

    root = Path(root)
    meta = json.loads((root / "world.json").read_text())
    cfg = load_consortium(root / "data" / "consortium.toml")
    parts = {p.name: p for p in cfg.participants if p.name in meta["holders"]}
    features = {n: LocalDataStore(p).features() for n, p in parts.items()}
    spec = TopSpec.from_dict(ModelRegistry(root / "coordinator").get(meta["model_ref"]).weights_location["top_spec"])
    pki_root = root / "pki"
    pki = DeploymentPki(
        root=pki_root, ca_cert=pki_root / "ca.crt", ca_key=pki_root / "ca.key",
        superlink_cert=pki_root / "superlink" / "server.crt", superlink_key=pki_root / "superlink" / "server.key",
        gateway_cert=pki_root / "scoring" / "gateway.crt", gateway_key=pki_root / "scoring" / "gateway.key",
        responder_certs={n: pki_root / "scoring" / f"{n}.crt" for n in parts},
        responder_keys={n: pki_root / "scoring" / f"{n}.key" for n in parts},
        lender_cert=pki_root / "scoring" / f"{LENDER}.crt", lender_key=pki_root / "scoring" / f"{LENDER}.key",
        supernode_private_keys={}, supernode_public_keys={},
    )
    return World(root=root, cfg=cfg, holders=meta["holders"], label_holder=meta["label_holder"], features=features,
                 model_ref=meta["model_ref"], spec=spec, registry_dir=root / "coordinator", pki=pki,
                 authority=IdentityKey.load(root / "authority.key"), revocations=root / "revocations.json")


class AllowAll:
    """Consent checker for measuring the scoring path alone (never used outside benchmarks/tests)."""

    def check(self, grant, *, enterprise, lender, purpose, holder) -> ConsentDecision:
        return ConsentDecision(allowed=True)

    def check_many(self, requests, *, lender, purpose, holder) -> list[ConsentDecision]:
        return [ConsentDecision(allowed=True) for _ in requests]


# ---------------------------------------------------------------------------------------------
# In-process deployment on loopback (threads; every hop over mutual TLS)
# ---------------------------------------------------------------------------------------------


@dataclass
class Deployment:
    gateway: Any
    responders: dict[str, Any]
    address: str

    def lender(self, world: World, keys, **kwargs):
        from participants.lender import LenderClient
        from protocols.scoring import MutualTls

        return LenderClient.connect(self.address, MutualTls.from_pki(world.pki.root, LENDER), keys, **kwargs)

    def stop(self) -> None:
        self.gateway.stop(0)
        for r in self.responders.values():
            r.stop(0)


def start_deployment(
    world: World,
    consent: dict[str, Any],
    *,
    holders: list[str] | None = None,
    responder_core=None,
    gateway_core=None,
    limits=None,
    server_interceptors=(),
    client_interceptors=(),
    external: dict[str, int] | None = None,
) -> Deployment:
    """Responders for ``holders`` (default all) and a gateway, on free loopback ports.
    ``external``: holders already served elsewhere (e.g. other processes), by port."""
    from coordinator.scoring_gateway import GatewayCore, GrpcResponderTransport, Holder, KeyStore, registry_tops, serve_gateway
    from participants.scoring_responder import EmbeddingTable, ResponderCore, serve_responder
    from protocols.scoring import MutualTls, ScoringLimits

    limits = limits or ScoringLimits()
    responder_core = responder_core or ResponderCore
    gateway_core = gateway_core or GatewayCore
    tls_root = world.pki.root
    running: dict[str, Any] = {}
    addresses = {n: f"127.0.0.1:{port}" for n, port in (external or {}).items()}
    for name in holders or [h for h in world.holders if h not in addresses]:
        table = EmbeddingTable.build(world.store(name), world.model_ref, world.features[name])
        core = responder_core(name, {world.model_ref: table}, consent[name], limits=limits)
        running[name] = serve_responder(core, "127.0.0.1:0", MutualTls.from_pki(tls_root, name))
        addresses[name] = f"127.0.0.1:{running[name].port}"
    gw_tls = MutualTls(tls_root / "ca.crt", world.pki.gateway_cert, world.pki.gateway_key)
    transport = GrpcResponderTransport(gw_tls, limits=limits, interceptors=client_interceptors)
    core = gateway_core(
        [Holder(n, addresses.get(n, "127.0.0.1:1"), required=n == world.label_holder) for n in world.holders],
        transport, registry_tops(ModelRegistry(world.registry_dir)), keys=KeyStore(limits=limits),
        default_model=world.model_ref, limits=limits,
    )
    gateway = serve_gateway(core, "127.0.0.1:0", gw_tls, interceptors=server_interceptors)
    return Deployment(gateway, running, f"127.0.0.1:{gateway.port}")


# ---------------------------------------------------------------------------------------------
# Plaintext baseline: the same services and fan-out, raw float64 instead of ciphertexts
# ---------------------------------------------------------------------------------------------


def _plain_cores():
    from coordinator.scoring_gateway import GatewayCore
    from participants.scoring_responder import ResponderCore
    from protocols._grpc import scoring_pb2 as pb
    from protocols.consent import Purpose
    from protocols.scoring import Stamp, validate_subjects

    class PlainResponder(ResponderCore):
        def contribute(self, *, key_id, model_ref, lender, layout, usccs, grants, purpose=Purpose.SCORING.value,
                       as_of=""):
            table = self.model(model_ref)
            allowed = [d.allowed for d in self._consent.check_many(list(zip(grants, usccs)), lender=lender,
                                                                    purpose=purpose, holder=self.name)]
            block = table.lookup(usccs, allowed)
            return [block.T.astype("<f8").tobytes()], table.out_dim, {}

    class PlainGateway(GatewayCore):
        def score(self, lender, key_id, model_ref, usccs, grants, *, timeout=None, request_id="", purpose="scoring",
                  as_of=""):
            codes = validate_subjects(usccs, grants, self.limits)
            ref = model_ref or self.default_model
            spec = self.top(ref)
            subjects = [pb.Subject(uscc=u, grant_json=g) for u, g in zip(codes, grants)]

            def ask(holder):
                s = Stamp.new()
                request = pb.ContributeRequest(stamp=pb.Stamp(request_id=s.request_id, issued_at_ms=s.issued_at_ms),
                                               key_id=key_id, model_ref=ref, lender=lender, layout="packed", subjects=subjects)
                reply = self.transport.contribute(holder, request, self.limits.responder_timeout_s)
                return np.frombuffer(reply.envelopes[0], dtype="<f8").reshape(spec.in_dim, len(codes)).T

            z = sum(self._pool.map(ask, self.holders))
            logits = evaluate_top(spec, z)
            return pb.ScoreResponse(request_id=request_id, model_ref=ref, key_id=key_id, count=len(codes),
                                    shares=[pb.Share(envelope=logits.astype("<f8").tobytes(), blocks=1, sign=1.0)])

    return PlainResponder, PlainGateway


class PlainLender:
    """Lender side of the plaintext baseline: same request, logits in the clear."""

    def __init__(self, transport, key_id: str, timeout: float = 60.0) -> None:
        self.transport, self.key_id, self.timeout = transport, key_id, timeout

    def score(self, usccs, grants) -> np.ndarray:
        from participants.lender import _stamp
        from protocols._grpc import scoring_pb2 as pb

        request = pb.ScoreRequest(stamp=_stamp(), key_id=self.key_id,
                                  subjects=[pb.Subject(uscc=u, grant_json=g) for u, g in zip(usccs, grants)])
        reply = self.transport.score(request, self.timeout)
        return sigmoid(np.frombuffer(reply.shares[0].envelope, dtype="<f8"))


# ---------------------------------------------------------------------------------------------
# Benchmark
# ---------------------------------------------------------------------------------------------


def _responder_process(world_root: str, holder: str, plain: bool, ports) -> None:
    """Body of a responder process (spawned): serve until terminated."""
    from participants.scoring_responder import EmbeddingTable, ResponderCore, serve_responder
    from protocols.scoring import MutualTls

    world = load_world(world_root)
    table = EmbeddingTable.build(world.store(holder), world.model_ref, world.features[holder])
    cls = _plain_cores()[0] if plain else ResponderCore
    running = serve_responder(cls(holder, {world.model_ref: table}, AllowAll()), "127.0.0.1:0",
                              MutualTls.from_pki(world.pki.root, holder))
    ports.put((holder, running.port))
    running.wait()


def _spawn_responders(world: World, plain: bool):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    procs = [ctx.Process(target=_responder_process, args=(str(world.root), h, plain, ports), daemon=True)
             for h in world.holders]
    for p in procs:
        p.start()
    found = dict(ports.get(timeout=600) for _ in procs)
    return procs, found


def _filler(n: int, seed: int = 0) -> list[str]:
    """Valid USCCs no holder knows (they cost the same as known ones: a zero row)."""
    from protocols.uscc import ALPHABET, make_uscc

    rng = np.random.default_rng(seed)
    return [make_uscc("91" + "".join(rng.choice(list(ALPHABET[:10]), 15))) for _ in range(n)]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run(quick: bool, processes: bool = True) -> list[dict]:
    """Rows: single-SME latency p50/p99, batch throughput, consent cost; each vs plaintext.
    ``processes``: each responder in its own process (as deployed); else threads of this one."""
    from concurrent import futures

    from crypto.ckks_keys import LenderKeyPair
    from participants.lender import GrpcGatewayTransport
    from protocols.scoring import MutualTls

    repeats = 40 if quick else 200
    batch_n = 8192 if quick else 16384
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp:
        world = build_world(Path(tmp) / "world", enterprises=1200, epochs=1.0)
        universe = world.universe()
        pool = universe + _filler(max(0, batch_n - len(universe)))
        grant_text = {u: world.grant(u).model_dump_json() for u in pool[:batch_n]}
        rows: list[dict] = []

        def single(score_one) -> list[float]:
            lat = []
            for i in range(repeats):
                u = universe[i % len(universe)]
                t0 = time.perf_counter()
                score_one(u)
                lat.append((time.perf_counter() - t0) * 1e3)
                time.sleep(PACE_S)  # latency at low load; the batch row measures saturation
            return lat

        def batch(score_many) -> float:
            chunks = [pool[i:i + 4096] for i in range(0, batch_n, 4096)]
            t0 = time.perf_counter()
            with futures.ThreadPoolExecutor(2) as ex:
                list(ex.map(score_many, chunks))
            return batch_n / (time.perf_counter() - t0)

        def deploy(plain: bool):
            cores = _plain_cores() if plain else (None, None)
            if not processes:
                return start_deployment(world, allow, responder_core=cores[0], gateway_core=cores[1]), []
            procs, ports = _spawn_responders(world, plain)
            return start_deployment(world, allow, gateway_core=cores[1], external=ports), procs

        def stop(dep, procs) -> None:
            dep.stop()
            for p in procs:
                p.terminate()
                p.join(10)

        # encrypted path
        allow = {h: AllowAll() for h in world.holders}
        dep, procs = deploy(False)
        keys = LenderKeyPair.generate()
        client = dep.lender(world, keys, timeout=120)
        client.register()
        client.score(universe[:2], [grant_text[u] for u in universe[:2]])  # warm-up: keys installed
        he_lat = single(lambda u: client.score([u], [grant_text[u]]))
        he_tput = batch(lambda c: client.score(c, [grant_text[u] for u in c]))
        check = universe[:1000]
        he_pd = np.array([r.pd for r in client.score(check, [grant_text[u] for u in check])])
        stop(dep, procs)

        # plaintext path through the same services
        dep, procs = deploy(True)
        plain = PlainLender(GrpcGatewayTransport(dep.address, MutualTls.from_pki(world.pki.root, LENDER)), keys.key_id)
        plain.score(universe[:2], [grant_text[u] for u in universe[:2]])
        pt_lat = single(lambda u: plain.score([u], [grant_text[u]]))
        pt_tput = batch(lambda c: plain.score(c, [grant_text[u] for u in c]))
        pt_pd = plain.score(check, [grant_text[u] for u in check])
        stop(dep, procs)
        err = float(np.max(np.abs(he_pd - pt_pd)))

        base = {"bench": "scoring", "holders": len(world.holders), "max_error": err,
                "responders": "processes" if processes else "threads"}
        for stat, q, target in (("p50", 50, 50.0), ("p99", 99, 150.0)):
            he, pt = _percentile(he_lat, q), _percentile(pt_lat, q)
            rows.append({**base, "metric": f"single_{stat}_ms", "value": round(he, 2), "plaintext": round(pt, 2),
                         "ratio": round(he / pt, 1), "target": f"<= {target:g}", "met": he <= target, "n": repeats})
        rows.append({**base, "metric": "batch_smes_per_s", "value": round(he_tput), "plaintext": round(pt_tput),
                     "ratio": round(pt_tput / he_tput, 1), "target": ">= 5000", "met": he_tput >= 5000, "n": batch_n})

        # consent: what a real ConsentGuard costs per enterprise at one holder (durable use count + audit)
        guard = world.guard(world.holders[0], Path(tmp) / "consent")
        m = 20 if quick else 60
        t0 = time.perf_counter()
        for u in universe[:m]:
            guard.check(grant_text[u], enterprise=u, lender=LENDER, purpose="scoring", holder=world.holders[0])
        per_s = m / (time.perf_counter() - t0)
        rows.append({**base, "metric": "consent_checks_per_s", "value": round(per_s), "plaintext": None,
                     "ratio": None, "target": "-", "met": None, "n": m})
        return rows


def _print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    err = rows[0]["max_error"] if rows else float("nan")
    table = Table(title=f"Encrypted scoring, gateway + {rows[0]['holders'] if rows else 3} responders, mutual TLS "
                        f"(max |PD error| {err:.1e})")
    for col in ("metric", "encrypted", "plaintext", "ratio", "target", "met", "n"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["metric"], f"{r['value']:,}", "-" if r["plaintext"] is None else f"{r['plaintext']:,}",
                      "-" if r["ratio"] is None else f"{r['ratio']}x", r["target"],
                      "-" if r["met"] is None else ("yes" if r["met"] else "NO"), f"{r['n']:,}")
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("bench_scoring", __doc__, "fewer repeats, 8,192-SME batch")
    parser.add_argument("--threads", action="store_true", help="responders as threads of this process")
    args = parser.parse_args(argv)
    return report(run(quick=args.quick, processes=not args.threads), args.json, _print_table)


if __name__ == "__main__":
    raise SystemExit(main())
