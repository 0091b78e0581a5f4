"""``fedscore lender keygen|register``, ``fedscore score`` and ``fedscore serve responder``.

The lender's secret key never leaves its file (0600); ``register`` uploads only the public context.
``score`` prints PD, score (300–900, 600 points at 50:1 odds, 40 points to double the odds), grade
(A <1%, B <3%, C <7%, D <15%, E ≥15% PD), the holders whose data is in each score and the feature
month they used (``--as-of`` asks for one; default: each holder's default month).
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from protocols.errors import ConfigError

# Crypto and gRPC modules are imported inside the commands: every ``fedscore`` invocation imports
# this module, and TenSEAL/torch would slow unrelated commands down.

app = typer.Typer(no_args_is_help=True)
lender_app = typer.Typer(help="Lender keys: generate a CKKS key pair, register its public half.", no_args_is_help=True)
app.add_typer(lender_app, name="lender")
serve_app = typer.Typer(no_args_is_help=True)
"""Holds ``responder``; the root command mounts it (with the gateway's) under ``serve``."""

_KEY = typer.Option(Path("lender.ckks"), "--key", help="Lender CKKS secret key file.")
_GATEWAY = typer.Option(os.environ.get("FEDSCORE_GATEWAY", "127.0.0.1:50051"), "--gateway", help="Gateway host:port.")
_PKI = typer.Option(Path("pki"), "--pki", help="Folder written by `fedscore certs` (ca.crt, scoring/<name>.*).")
_NAME = typer.Option("lender", "--name", help="This lender's certificate name (scoring/<name>.crt).")


def _client(key: Path, gateway: str, pki: Path, name: str, model: str = "", timeout: float = 60.0):
    from crypto.ckks_keys import LenderKeyPair
    from participants.lender import LenderClient
    from protocols.scoring import MutualTls

    return LenderClient.connect(gateway, MutualTls.from_pki(pki, name), LenderKeyPair.load(key), model_ref=model, timeout=timeout)


@lender_app.command("keygen")
def keygen(
    out: Path = typer.Option(Path("lender.ckks"), "--out", help="Where to write the secret key (0600)."),
    deep: bool = typer.Option(False, "--deep", help="N=16384, depth 3 (slower; only for deeper tops)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing key file."),
) -> None:
    """Generate the lender's CKKS key pair (default N=8192, depth 2: linear and polynomial tops)."""
    from crypto.ckks_keys import SCORING, SCORING_DEEP, LenderKeyPair

    if out.exists() and not force:
        raise ConfigError(f"{out} exists; pass --force to replace it (scores under the old key become unreadable)")
    keys = LenderKeyPair.generate(SCORING_DEEP if deep else SCORING)
    keys.save(out)
    Console(highlight=False).print(f"key id {keys.key_id} written to {out}")


@lender_app.command("register")
def register(
    key: Path = _KEY,
    gateway: str = _GATEWAY,
    pki: Path = _PKI,
    name: str = _NAME,
    as_json: bool = typer.Option(False, "--json", help="Print the key id as a JSON object."),
) -> None:
    """Upload the public context (no secret key) to the gateway once; prints the key id."""
    key_id = _client(key, gateway, pki, name).register()
    if as_json:
        print(json.dumps({"key_id": key_id}))
        return
    Console(highlight=False).print(f"registered key {key_id}")


@app.command("score")
def score(
    usccs: list[str] = typer.Argument(None, help="Enterprises to score (or use --batch)."),
    grant: list[Path] = typer.Option([], "--grant", help="Grant file(s): one grant, a JSON array or JSON lines."),
    batch: Optional[Path] = typer.Option(None, "--batch", help="USCC per line (CSV first column), or grants as .json/.jsonl."),
    key: Path = _KEY,
    gateway: str = _GATEWAY,
    pki: Path = _PKI,
    name: str = _NAME,
    model: str = typer.Option("", "--model", help="Model reference name:vN (default: the gateway's)."),
    timeout: float = typer.Option(60.0, "--timeout", min=0.1, help="Seconds per request."),
    as_of: str = typer.Option("", "--as-of", help="Feature month YYYY-MM every holder must use "
                                                  "(default: each holder's default month)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per enterprise."),
) -> None:
    """Score enterprises; only this lender's key decrypts the result."""
    from participants.lender import load_grants, read_batch
    from protocols.scoring import InvalidRequest, feature_month

    month = feature_month(as_of)
    grants = load_grants(grant)
    if batch is not None:
        pairs = read_batch(batch, grants)
    else:
        if not usccs:
            raise InvalidRequest("name at least one USCC or pass --batch FILE")
        from protocols.uscc import validate_uscc

        pairs = []
        for code in usccs:
            norm = validate_uscc(code)
            if norm not in grants:
                raise InvalidRequest(f"no grant for {norm} among the --grant files")
            pairs.append((norm, grants[norm]))
    client = _client(key, gateway, pki, name, model, timeout)
    results = client.score_batch(pairs, as_of=month) if len(pairs) > client.limits.max_subjects else client.score(
        [u for u, _ in pairs], [g for _, g in pairs], as_of=month)
    if as_json:
        for r in results:
            print(r.model_dump_json())
        return
    table = Table("uscc", "PD", "score", "grade", "as of", "sources", "missing")
    for r in results:
        missing = ", ".join(f"{h}: {why}" for h, why in r.missing.items())
        used = r.as_of or ", ".join(f"{h} {m or '-'}" for h, m in r.months.items())
        if r.scored:
            table.add_row(r.uscc, f"{r.pd:.4f}", str(r.score), r.grade, used, ", ".join(r.sources), missing)
        else:
            table.add_row(r.uscc, "-", "-", "-", used, "", missing)
    Console(highlight=False, width=160).print(table)


@serve_app.command("responder")
def serve_responder_cmd(
    consortium: Path = typer.Option(..., "--consortium", help="Consortium TOML."),
    participant: str = typer.Option(..., "--participant", help="This node's participant name."),
    model: str = typer.Option(..., "--model", help="Model reference(s) to serve, name:vN (comma-separated)."),
    pki: Path = _PKI,
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help="Node state (default <data_dir>/state)."),
    authority_key: Path = typer.Option(..., "--authority-key", help="Consent authority public key (authority.pub)."),
    revocations: Path = typer.Option(..., "--revocations", help="Signed revocation list the authority publishes."),
    address: Optional[str] = typer.Option(None, "--address", help="Listen address (default: scoring_address)."),
    as_of: Optional[str] = typer.Option(None, "--as-of", help="Default feature month YYYY-MM, for requests naming "
                                                              "none (default: consortium as_of, else the data's last month)."),
    cache_months: int = typer.Option(3, "--cache-months", min=0, help="Other months' embeddings kept besides the default."),
    gateway_name: str = typer.Option("scoring-gateway", "--gateway-name", help="Certificate name allowed to call."),
    max_list_age: float = typer.Option(60.0, "--max-list-age", help="Seconds a revocation list stays usable."),
) -> None:
    """Run this holder's scoring responder (mutual TLS; only the gateway may call)."""
    from crypto.audit import AuditLog
    from crypto.identity import IdentityPublicKey
    from participants.consent import ConsentGuard, FileRevocationSource
    from participants.consent_store import HolderStore
    from participants.datastore import LocalDataStore
    from participants.model_store import LocalModelStore
    from participants.scoring_responder import MonthlyEmbeddings, ResponderCore, serve_responder
    from protocols.consent import audit_keys
    from protocols.consortium import load_consortium
    from protocols.scoring import MutualTls, ScoringLimits, feature_month

    cfg = load_consortium(consortium)
    part = next((p for p in cfg.participants if p.name == participant), None)
    if part is None or not part.holds_data:
        raise ConfigError(f"{consortium}: no data-holding participant named {participant!r}")
    listen = address or part.scoring_address
    if not listen:
        raise ConfigError(f"{consortium}: participant {participant} has no scoring_address; pass --address")
    state = state_dir or Path(part.data_dir) / "state"  # type: ignore[arg-type]
    consent_dir = state / "consent"
    consent_dir.mkdir(parents=True, exist_ok=True)
    node_key, hash_key = audit_keys(consent_dir / "node.key", consent_dir / "pseudonym.key",
                                    state=(consent_dir / "consent.db", consent_dir / "audit.jsonl"),
                                    owner=f"{participant} responder")
    guard = ConsentGuard(
        node=participant, authority_key=IdentityPublicKey.load(authority_key), store=HolderStore(consent_dir / "consent.db"),
        source=FileRevocationSource(revocations), audit=AuditLog(consent_dir / "audit.jsonl", node_key),
        hash_key=hash_key, max_list_age=timedelta(seconds=max_list_age),
    )
    refs = [ref for ref in (r.strip() for r in model.split(",")) if ref]
    data = LocalDataStore(part, default_as_of=feature_month(as_of) or cfg.as_of)
    embeddings = MonthlyEmbeddings(LocalModelStore(state / "models"), data, refs=refs, max_months=cache_months)
    core = ResponderCore(participant, embeddings, guard, limits=ScoringLimits())
    tables = [core.model(ref) for ref in refs]  # the default month, now: a bad model or month fails here
    running = serve_responder(core, listen, MutualTls.from_pki(pki, participant), allowed_callers=(gateway_name,))
    span = embeddings.span()
    Console(highlight=False, stderr=True).print(
        f"responder {participant} listening on {listen.rsplit(':', 1)[0]}:{running.port} "
        f"({len(tables[0].index) if tables else 0} enterprises as of {embeddings.default_month or 'its only frame'}"
        + (f", months {span[0]}..{span[1]} on request" if span else "")
        + f", models {', '.join(refs)})"
    )
    _ready(running.port)
    try:
        running.wait()
    except KeyboardInterrupt:
        running.stop()


def _ready(port: int) -> None:
    """Machine-readable readiness line for supervisors and tests."""
    print(json.dumps({"ready": True, "port": port}), flush=True)
