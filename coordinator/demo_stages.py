"""The stages of ``fedscore demo``, in order.

Data holders' work (training nodes, scoring responders, the lender's key and scoring) runs as real
``fedscore`` processes; the enterprises' consent requests are signed here with their own keys and
sent to the consent authority, which is the coordinator's service.
"""

from __future__ import annotations

import csv
import json
import socket
import time
from datetime import timedelta
from pathlib import Path

from coordinator.consent_authority import ConsentAuthority, StateFiles
from coordinator.demo import DemoContext, DemoStageFailed, Stage
from crypto.identity import IdentityKey
from protocols.consent import GrantRequest, GrantTerms, RevocationRequest, utc_now
from protocols.consortium import load_consortium

LENDER = "bank-credit"  # the bank's lending desk; its TLS client certificate carries this name
SINGLE = 5  # enterprises scored one request each
PORTFOLIO = 400  # enterprises scored in one batch request


def _paths(ctx: DemoContext) -> dict[str, Path]:
    return {
        "data": ctx.out / "data",
        "config": ctx.out / "data" / "consortium.toml",
        "coordinator": ctx.out / "coordinator",
        "consent": ctx.out / "consent",
        "pki": ctx.out / "pki",
        "lender": ctx.out / "lender",
    }


def synth(ctx: DemoContext) -> str:
    p = _paths(ctx)
    summary = ctx.fedscore("synth", "synth", "--out", str(p["data"]), "--enterprises", str(ctx.enterprises),
                           "--seed", str(ctx.seed), "--json", parse_json=True)
    ctx.results["synth"] = summary
    cover = ", ".join(f"{s['participant']} {s['coverage']:.0%}" for s in summary["sources"])
    return f"{summary['enterprises']} SMEs; coverage {cover}; bank default rate {summary['base_rate']:.1%}"


def baseline(ctx: DemoContext) -> str:
    rows = ctx.fedscore("baseline", "baseline", "--dataset", "synth", "--config", str(_paths(ctx)["config"]),
                        "--seed", str(ctx.seed), "--json", parse_json=True)
    ctx.results["baseline"] = rows
    lr = {r["features"]: r["auc"] for r in rows if r["model"] == "logistic"}
    best_single = max(v for k, v in lr.items() if k != "pooled")
    return f"logistic AUC pooled {lr.get('pooled', float('nan')):.3f} vs best single source {best_single:.3f}"


SMALL_RECIPE = ("--epochs", "10", "--hidden", "16", "--out-dim", "4", "--lr", "0.01")
"""Vertical recipe for the demo's 3,000 SMEs (about 20 defaults held out): on six PSI orders it
averaged AUC 0.73 where the full-size default (40 epochs of a (32,16) bottom) averaged 0.71."""


def train_vertical(ctx: DemoContext) -> str:
    p = _paths(ctx)
    summary = ctx.fedscore("train_vertical", "train", "vertical", "--config", str(p["config"]),
                           "--state-dir", str(p["coordinator"]), "--seed", str(ctx.seed), *SMALL_RECIPE,
                           "--json", parse_json=True)
    ctx.results["vertical"] = summary
    m = summary["metrics"]["all"]
    rounds = summary["total_rounds"]
    alone = summary.get("label_holder_alone") or {}
    versus = f" (bank alone, same rows: {alone['auc']:.3f})" if "auc" in alone else ""
    return (f"{summary['version']}: AUC {m['auc']:.3f}{versus} KS {m['ks']:.3f} on {int(m['n'])} held-out; "
            f"PSI matched {summary['matched']}; {rounds} Flower rounds")


def train_horizontal(ctx: DemoContext) -> str:
    """Banks with the same schema train one model with CKKS-encrypted FedAvg.

    The synthetic consortium has one bank, so this runs only on a consortium with several banks
    (``fedscore demo --horizontal-config examples/fate_horizontal.toml``).
    """
    config = ctx.options.get("horizontal_config")
    if config is None:
        cfg = load_consortium(_paths(ctx)["config"])
        if len([p for p in cfg.participants if p.kind == "bank" and p.holds_labels]) < 2:
            ctx.results["horizontal"] = None
            return "skipped: one bank in this consortium (pass --horizontal-config for a multi-bank one)"
        config = _paths(ctx)["config"]
    summary = ctx.fedscore("train_horizontal", "train", "horizontal", "--config", str(config), "--rounds", "3",
                           "--state-dir", str(_paths(ctx)["coordinator"]), "--json", parse_json=True)
    ctx.results["horizontal"] = summary
    return f"{summary.get('version', '?')}: encrypted FedAvg across {len(summary.get('participants', []))} banks"


def certs(ctx: DemoContext) -> str:
    p = _paths(ctx)
    ctx.fedscore("certs", "certs", "--out", str(p["pki"]), "-c", str(p["config"]), "--lender", LENDER)
    return f"consortium CA, gateway/responder/lender certificates in {p['pki'].name}/"


def _bank_customers(ctx: DemoContext) -> list[str]:
    """The bank's borrowers (the lender scores its own customers), in file order."""
    with (_paths(ctx)["data"] / "bank" / "outcomes.csv").open() as fh:
        return [row["uscc"] for row in csv.DictReader(fh)]


def consent(ctx: DemoContext) -> str:
    """Enterprises enrol their keys and authorise the bank's lending desk to score them."""
    p = _paths(ctx)
    authority = ConsentAuthority.open(p["consent"])
    customers = _bank_customers(ctx)
    chosen = customers[:: max(1, len(customers) // (SINGLE + PORTFOLIO))][: SINGLE + PORTFOLIO]
    now = utc_now()
    keys_dir = ctx.out / "enterprises"
    keys_dir.mkdir()
    grants = []
    for uscc in chosen:
        key = IdentityKey.generate()
        authority.enrol(uscc, key.public_key)
        terms = GrantTerms(enterprise=uscc, lender=LENDER, purpose="scoring", holders="all",
                           valid_from=now - timedelta(minutes=1), valid_until=now + timedelta(days=30))
        grants.append(authority.grant(GrantRequest.create(terms, key)))
        if len(grants) == 1:
            key.save(keys_dir / "first.key")  # kept: this enterprise revokes later
    (p["lender"]).mkdir(exist_ok=True)
    single, portfolio = grants[:SINGLE], grants[SINGLE:]
    (p["lender"] / "single.jsonl").write_text("".join(g.model_dump_json() + "\n" for g in single))
    (p["lender"] / "portfolio.jsonl").write_text("".join(g.model_dump_json() + "\n" for g in portfolio))
    authority.publish(StateFiles(p["consent"]).revocations)
    ctx.results["grants"] = {"single": [g.terms.enterprise for g in single], "portfolio": len(portfolio)}
    return f"{len(grants)} SMEs enrolled and granted scoring to {LENDER} (30 days, all holders)"


def _wait_port(address: str, proc, stage: str, timeout: float = 180.0) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoStageFailed(f"stage {stage!r}: service exited with {proc.returncode} (log: logs/{stage}.log)")
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return
        except OSError:
            time.sleep(0.3)
    raise DemoStageFailed(f"stage {stage!r}: {address} not listening after {timeout:.0f} s")


def services(ctx: DemoContext) -> str:
    """Scoring responders at every holder and the gateway at the coordinator, over mutual TLS."""
    p = _paths(ctx)
    cfg = load_consortium(p["config"])
    ref = ctx.results["vertical"]["version"]
    files = StateFiles(p["consent"])
    ctx.start_service("authority", "consent", "publish", "--state-dir", str(p["consent"]), "--every", "10")
    started = []
    for part in cfg.data_holders:
        proc = ctx.start_service(
            f"responder_{part.name}", "serve", "responder", "--consortium", str(p["config"]),
            "--participant", part.name, "--model", ref, "--pki", str(p["pki"]),
            "--state-dir", str(p["coordinator"] / "nodes" / part.name),
            "--authority-key", str(files.public_key), "--revocations", str(files.revocations),
        )
        started.append((part.scoring_address, proc, f"responder_{part.name}"))
    gateway = ctx.start_service("gateway", "serve", "gateway", "--consortium", str(p["config"]),
                                "--pki", str(p["pki"]), "--state-dir", str(p["coordinator"]), "--model", ref)
    started.append((cfg.coordinator.gateway_address, gateway, "gateway"))
    for address, proc, stage in started:
        _wait_port(address, proc, stage)
    ctx.results["gateway"] = cfg.coordinator.gateway_address
    return f"{len(started) - 1} responders + gateway listening (mutual TLS), model {ref}"


def _lender_args(ctx: DemoContext) -> list[str]:
    p = _paths(ctx)
    return ["--key", str(p["lender"] / "lender.ckks"), "--gateway", ctx.results["gateway"],
            "--pki", str(p["pki"]), "--name", LENDER]


def lender_keys(ctx: DemoContext) -> str:
    p = _paths(ctx)
    ctx.fedscore("lender", "lender", "keygen", "--out", str(p["lender"] / "lender.ckks"))
    out = ctx.fedscore("lender", "lender", "register", *_lender_args(ctx))
    return out.strip().splitlines()[-1] + " (public context only; the secret key stays with the lender)"


def _score(ctx: DemoContext, stage: str, *args: str) -> list[dict]:
    out = ctx.fedscore(stage, "score", *args, *_lender_args(ctx), "--json")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def score_single(ctx: DemoContext) -> str:
    p = _paths(ctx)
    usccs = ctx.results["grants"]["single"]
    rows = _score(ctx, "score_single", usccs[0], "--grant", str(p["lender"] / "single.jsonl"))
    rows += _score(ctx, "score_single", *usccs[1:], "--grant", str(p["lender"] / "single.jsonl"))
    ctx.results["single"] = rows
    card = rows[0]
    return f"{len(rows)} SMEs; e.g. PD {card['pd']:.3f}, score {card['score']}, grade {card['grade']}"


def score_batch(ctx: DemoContext) -> str:
    p = _paths(ctx)
    started = time.monotonic()
    rows = _score(ctx, "score_batch", "--batch", str(p["lender"] / "portfolio.jsonl"))
    ctx.results["portfolio"] = rows
    scored = [r for r in rows if r["scored"]]
    return f"{len(scored)}/{len(rows)} SMEs scored in one encrypted batch ({time.monotonic() - started:.1f} s)"


def revoke(ctx: DemoContext) -> str:
    """The first enterprise withdraws its consent; its next score request is refused."""
    p = _paths(ctx)
    uscc = ctx.results["grants"]["single"][0]
    grant = json.loads((p["lender"] / "single.jsonl").read_text().splitlines()[0])
    key = IdentityKey.load(ctx.out / "enterprises" / "first.key")
    authority = ConsentAuthority.open(p["consent"])
    authority.revoke(RevocationRequest.create(uscc, grant["grant_id"], key))
    authority.publish(StateFiles(p["consent"]).revocations)
    revoked_at = time.monotonic()
    # Holders pull the signed revocation list periodically and refuse everything once their copy is
    # older than the freshness bound (60 s): a revocation takes effect within that bound.
    while time.monotonic() - revoked_at < 75:
        try:
            _score(ctx, "score_revoked", uscc, "--grant", str(p["lender"] / "single.jsonl"))
        except DemoStageFailed as exc:
            refusal = next((ln for ln in str(exc).splitlines() if ln.startswith("error:") and "revoked" in ln), None)
            if refusal is None:
                raise
            ctx.results["revoked"] = refusal.removeprefix("error: ").strip()
            return f"refused {time.monotonic() - revoked_at:.0f} s after revocation: {ctx.results['revoked']}"
        time.sleep(2)
    raise DemoStageFailed("stage 'revoke': a revoked grant was still honoured after the freshness bound")


def audit(ctx: DemoContext) -> str:
    """Every holder's signed, hash-chained audit log verifies; the authority's too."""
    p = _paths(ctx)
    logs = []
    for node_dir in sorted((p["coordinator"] / "nodes").iterdir()):
        consent_dir = node_dir / "consent"
        if (consent_dir / "audit.jsonl").exists():
            pub = consent_dir / "node.pub"
            IdentityKey.load(consent_dir / "node.key").public_key.save(pub)
            logs.append((node_dir.name, consent_dir / "audit.jsonl", pub))
    files = StateFiles(p["consent"])
    logs.append(("authority", files.audit_log, files.public_key))
    entries = 0
    for name, log, pub in logs:
        out = ctx.fedscore("audit", "audit", "verify", str(log), "--public-key", str(pub))
        ctx.results.setdefault("audit", {})[name] = out.strip()
        entries += sum(1 for _ in log.open())
    return f"{len(logs)} audit logs verified ({entries} signed entries, no raw USCC)"


def report(ctx: DemoContext) -> str:
    from coordinator.demo_report import write_report

    index = write_report(ctx)
    return f"{index.relative_to(ctx.out)}"


STAGES: tuple[Stage, ...] = (
    Stage("synth", "Generate a synthetic consortium (bank, tax, platform, utility)", synth),
    Stage("baseline", "Centralised yardsticks (pooled vs single source)", baseline),
    Stage("train_vertical", "PSI + vertical split training on Flower", train_vertical),
    Stage("train_horizontal", "Horizontal CKKS-encrypted FedAvg across banks", train_horizontal),
    Stage("certs", "Certificates for mutual TLS", certs),
    Stage("consent", "Enterprises authorise the lender", consent),
    Stage("services", "Start scoring responders and gateway", services),
    Stage("lender", "Lender key pair; register the public context", lender_keys),
    Stage("score_single", "Encrypted scoring, one SME per request", score_single),
    Stage("score_batch", "Encrypted scoring, a portfolio in one request", score_batch),
    Stage("revoke", "Revocation takes effect", revoke),
    Stage("audit", "Verify the audit trails", audit),
    Stage("report", "Write the report", report),
)
