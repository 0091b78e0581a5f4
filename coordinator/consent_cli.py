"""``fedscore consent enrol|grant|revoke|status|list|publish``.

The enterprise side (its key signs every request) and the authority (state in ``--state-dir``) run
in one process here; the requests are the same signed messages a remote authority would receive.
``revoke`` republishes the signed revocation list at once; ``publish --every`` keeps it fresh for
holders (their freshness bound, 60 s by default, must exceed the interval).
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from coordinator.consent_authority import ConsentAuthority, StateFiles
from crypto.identity import IdentityKey
from protocols.consent import (
    ALL,
    GrantRequest,
    GrantStatus,
    GrantTerms,
    Purpose,
    RevocationRequest,
    StatusQuery,
    utc_now,
)
from protocols.cli import check_writable, parse_instant
from protocols.consortium import format_validation_error
from protocols.errors import ConfigError

app = typer.Typer(no_args_is_help=True)
consent_app = typer.Typer(help="Enterprise authorisation: grant, inspect and revoke consent.", no_args_is_help=True)
app.add_typer(consent_app, name="consent")

DEFAULT_STATE_DIR = Path.home() / ".fedscore" / "consent"
_STATE = typer.Option(DEFAULT_STATE_DIR, "--state-dir", help="Consent authority state directory.")
_KEY = typer.Option(..., "--key-file", help="The enterprise's Ed25519 secret key file.")
_JSON = typer.Option(False, "--json", help="Machine-readable output.")


def _publish(authority: ConsentAuthority, state_dir: Path) -> int:
    return authority.publish(StateFiles(state_dir).revocations).sequence


@consent_app.command("enrol")
def enrol(
    uscc: str = typer.Argument(..., help="The enterprise's unified social credit code."),
    key_file: Path = _KEY,
    replace: bool = typer.Option(False, "--replace", help="Rotate the key of an enrolled enterprise."),
    state_dir: Path = _STATE,
) -> None:
    """Enrol an enterprise's public key (creating the key file if it does not exist).
    The operator runs this after checking the enterprise's identity out of band."""
    if not key_file.exists():
        key = IdentityKey.generate()
        key.save(key_file)
        key.public_key.save(key_file.with_suffix(".pub"))
    key = IdentityKey.load(key_file)
    authority = ConsentAuthority.open(state_dir)
    authority.enrol(uscc, key.public_key, replace=replace)
    Console(highlight=False).print(
        f"enrolled key {key.fingerprint[:16]}; authority public key: {StateFiles(state_dir).public_key}"
    )


@consent_app.command("grant")
def grant(
    uscc: str = typer.Argument(...),
    lender: str = typer.Option(..., "--lender", help="The one recipient this grant authorises."),
    purpose: Purpose = typer.Option(..., "--purpose"),
    holder: list[str] = typer.Option([], "--holder", help="Data holder covered (repeat); none = all holders."),
    field: list[str] = typer.Option([], "--field", help="Field/source allowed (repeat); none = all fields."),
    valid_from: Optional[str] = typer.Option(None, "--from", help="ISO date-time; default now."),
    until: Optional[str] = typer.Option(None, "--until", help="ISO date-time; default --days after --from."),
    days: int = typer.Option(30, "--days", min=1, help="Validity when --until is not given."),
    max_uses: Optional[int] = typer.Option(None, "--max-uses", min=1, help="Requests each holder may serve."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the signed grant JSON here (else stdout)."),
    key_file: Path = _KEY,
    state_dir: Path = _STATE,
) -> None:
    """Authorise one lender, for one purpose, at the named holders, for a bounded time."""
    start = parse_instant(valid_from, "--from") if valid_from else utc_now()
    end = parse_instant(until, "--until") if until else start + timedelta(days=days)
    try:
        terms = GrantTerms(
            enterprise=uscc, lender=lender, purpose=purpose, holders=tuple(holder) or ALL,
            fields=tuple(field) or ALL, valid_from=start, valid_until=end, max_uses=max_uses,
        )
    except ValidationError as exc:  # one line naming the first bad field, not pydantic's report
        raise ConfigError(format_validation_error(exc, "grant terms rejected")) from None
    if out is not None:  # a grant recorded at the authority but never saved would be half-done
        check_writable(out, "--out")
    authority = ConsentAuthority.open(state_dir, create=False)  # a wrong folder is named before the key is read
    issued = authority.grant(GrantRequest.create(terms, IdentityKey.load(key_file)))
    if out is None:
        print(issued.model_dump_json(indent=1))
    else:
        out.write_text(issued.model_dump_json(indent=1))
        Console(highlight=False, stderr=True).print(f"grant {issued.grant_id} written to {out}")


@consent_app.command("revoke")
def revoke(
    uscc: str = typer.Argument(...),
    grant_id: str = typer.Argument(...),
    key_file: Path = _KEY,
    state_dir: Path = _STATE,
) -> None:
    """Withdraw a grant now and republish the signed revocation list."""
    authority = ConsentAuthority.open(state_dir, create=False)
    key = IdentityKey.load(key_file)
    try:
        request = RevocationRequest.create(uscc, grant_id, key)
    except ValidationError as exc:  # a malformed USCC or grant id: one line naming it
        raise ConfigError(format_validation_error(exc, "revocation rejected")) from None
    revocation = authority.revoke(request)
    sequence = _publish(authority, state_dir)
    Console(highlight=False).print(
        f"revoked {revocation.grant_id} at {revocation.revoked_at.isoformat()}; revocation list #{sequence} published"
    )


def _statuses(uscc: str, key_file: Path, state_dir: Path) -> list[GrantStatus]:
    authority = ConsentAuthority.open(state_dir, create=False)
    key = IdentityKey.load(key_file)
    try:
        query = StatusQuery.create(uscc, key)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "status query rejected")) from None
    return authority.status(query)


def _scope(value: tuple[str, ...] | str) -> str:
    return value if isinstance(value, str) else ",".join(value)


@consent_app.command("status")
def status(uscc: str = typer.Argument(...), key_file: Path = _KEY, state_dir: Path = _STATE, as_json: bool = _JSON) -> None:
    """Every grant with its state now (active, pending, expired, revoked, exhausted) and use count."""
    rows = _statuses(uscc, key_file, state_dir)
    if as_json:
        for s in rows:
            print(json.dumps({"grant_id": s.grant.grant_id, "state": s.state.value, "uses": s.uses,
                              "uses_by_holder": s.uses_by_holder, "max_uses": s.grant.terms.max_uses}))
        return
    table = Table("grant", "lender", "purpose", "state", "uses", "max uses", "valid until")
    for s in rows:
        t = s.grant.terms
        table.add_row(s.grant.grant_id, t.lender, t.purpose.value, s.state.value, str(s.uses),
                      "" if t.max_uses is None else str(t.max_uses), t.valid_until.isoformat())
    Console(highlight=False, width=160).print(table)


@consent_app.command("list")
def list_grants(uscc: str = typer.Argument(...), key_file: Path = _KEY, state_dir: Path = _STATE, as_json: bool = _JSON) -> None:
    """Every grant's terms: who may use which data, where, for what, until when."""
    rows = _statuses(uscc, key_file, state_dir)
    if as_json:
        for s in rows:
            print(s.grant.model_dump_json())
        return
    table = Table("grant", "lender", "purpose", "holders", "fields", "valid from", "valid until")
    for s in rows:
        t = s.grant.terms
        table.add_row(s.grant.grant_id, t.lender, t.purpose.value, _scope(t.holders), _scope(t.fields),
                      t.valid_from.isoformat(), t.valid_until.isoformat())
    Console(highlight=False, width=160).print(table)


@consent_app.command("publish")
def publish(
    state_dir: Path = _STATE,
    every: Optional[float] = typer.Option(None, "--every", min=1.0, help="Keep republishing every N seconds."),
) -> None:
    """Sign and write the revocation list holders pull (``<state-dir>/revocations.json``)."""
    authority = ConsentAuthority.open(state_dir)
    console = Console(highlight=False)
    while True:
        console.print(f"revocation list #{_publish(authority, state_dir)} -> {StateFiles(state_dir).revocations}")
        if every is None:
            return
        time.sleep(every)
