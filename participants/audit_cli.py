"""``fedscore audit verify|head|show``: check a node's audit log and read it by enterprise, lender and time.

Any node's log (holder or consent authority) is read the same way. Enterprises appear in the log
only as keyed hashes; ``--enterprise`` computes the hash with the node's pseudonym key, so only a
holder of that key (the node, or a regulator it hands the key to) can select one enterprise.

A chain proves that no entry was edited, inserted or reordered, but not that the log was not cut
short (an emptied log verifies as zero entries). ``audit head`` has the node sign its log's entry
count and last hash; published elsewhere (a regulator's inbox, another disk), it lets
``audit verify --head`` detect truncation below it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

from crypto._files import write_public
from crypto.audit import keyed_hash, sign_head, verify
from crypto.errors import AuditLogBroken, BadSignature, MalformedData
from crypto.identity import IdentityKey, IdentityPublicKey
from protocols.cli import check_writable, parse_instant
from protocols.errors import ConfigError
from protocols.consent import load_pseudonym_key
from protocols.uscc import validate_uscc

app = typer.Typer(no_args_is_help=True)
audit_app = typer.Typer(help="Signed, hash-chained audit logs: verify them, read them.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def verify_log(
    log: Path = typer.Argument(..., exists=True, dir_okay=False, help="Audit log (JSON lines)."),
    public_key: Path = typer.Option(..., "--public-key", exists=True, dir_okay=False, help="The node's identity .pub file."),
    head: Optional[Path] = typer.Option(
        None, "--head", exists=True, dir_okay=False,
        help="A signed head from 'audit head' published earlier: also detect entries cut off below it."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Check every signature and chain link; exit 1 naming the first broken entry."""
    console = Console(highlight=False)
    key = IdentityPublicKey.load(public_key)
    signed_head = _load_head(head) if head is not None else None
    try:
        count = verify(log, key, head=signed_head)
    except (BadSignature, MalformedData) as exc:
        raise ConfigError(f"--head {head}: not a head signed by this node ({exc})") from None
    except AuditLogBroken as exc:
        if as_json:
            print(json.dumps({"ok": False, "broken_at": exc.index, "reason": exc.reason}))
        else:
            console.print(f"[red]broken[/] at entry {exc.index}: {exc.reason}")
        raise typer.Exit(1) from None
    anchored = signed_head is not None
    if as_json:
        print(json.dumps({"ok": True, "entries": count, "head_checked": anchored}))
    else:
        console.print(f"[green]ok[/] {count} entries, chain and signatures intact"
                      + (", none cut off below the signed head" if anchored else
                         " (without --head, a log cut short cannot be told from a short one)"))


def _load_head(path: Path) -> dict[str, Any]:
    """A head file's envelope (its signature is checked by ``verify``), or a one-line error naming the file."""
    try:
        head = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"--head {path}: not JSON; expected the output of 'audit head'") from None
    if not isinstance(head, dict):
        raise ConfigError(f"--head {path}: not a signed head from 'audit head'")
    return head


@audit_app.command("head")
def head_of_log(
    log: Path = typer.Argument(..., exists=True, dir_okay=False, help="Audit log (JSON lines)."),
    identity_key: Path = typer.Option(..., "--identity-key", help="The node's keys/identity.key (signs the head)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the signed head here (default: print it)."),
) -> None:
    """Sign the log's entry count and last hash (after verifying it), to publish out of the node's reach.
    Reads the log only."""
    if out is not None:
        check_writable(out, "--out")
        if out.resolve() == log.resolve():
            raise ConfigError(f"--out {out}: is the log itself")
    key = IdentityKey.load(identity_key)
    try:
        signed = sign_head(log, key)
    except AuditLogBroken as exc:
        raise ConfigError(f"{log}: broken at entry {exc.index} ({exc.reason}); refusing to sign its head") from None
    text = json.dumps(signed, sort_keys=True)
    if out is None:
        print(text)
        return
    write_public(out, (text + "\n").encode())


def _entries(log: Path) -> Iterator[dict[str, Any]]:
    for index, line in enumerate(log.read_text(encoding="utf-8").splitlines()):
        try:
            entry = json.loads(line)
            if not isinstance(entry["event"], dict) or not isinstance(entry["ts"], str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise typer.BadParameter(f"entry {index} is not an audit entry; run 'audit verify'", param_hint="LOG") from None
        yield entry


def _when(entry: dict[str, Any]) -> str:
    """The time the event happened (its own ``at`` when it has one), else when it was logged."""
    return str(entry["event"].get("at") or entry["ts"])


@audit_app.command("show")
def show(
    log: Path = typer.Argument(..., exists=True, dir_okay=False, help="Audit log (JSON lines)."),
    enterprise: Optional[str] = typer.Option(None, "--enterprise", help="USCC; needs --key-file."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help="The node's pseudonym key file."),
    lender: Optional[str] = typer.Option(None, "--lender"),
    since: Optional[str] = typer.Option(None, "--since", help="ISO date/date-time (UTC unless zoned)."),
    until: Optional[str] = typer.Option(None, "--until", help="ISO date/date-time, exclusive."),
    as_json: bool = typer.Option(False, "--json", help="One JSON entry per line."),
) -> None:
    """List entries, filtered. Does not verify: run ``audit verify`` for that."""
    wanted_hash: str | None = None
    if enterprise is not None:
        if key_file is None:
            raise typer.BadParameter("--enterprise needs --key-file (entries hold keyed hashes only)", param_hint="--enterprise")
        wanted_hash = keyed_hash(load_pseudonym_key(key_file), validate_uscc(enterprise))
    start = parse_instant(since, "--since") if since else None
    end = parse_instant(until, "--until") if until else None

    def keep(entry: dict[str, Any]) -> bool:
        event = entry["event"]
        at = parse_instant(_when(entry), "LOG")
        return (
            (wanted_hash is None or event.get("enterprise") == wanted_hash)
            and (lender is None or event.get("lender") == lender)
            and (start is None or at >= start)
            and (end is None or at < end)
        )

    selected = [(i, e) for i, e in enumerate(_entries(log)) if keep(e)]
    if as_json:
        for _, entry in selected:
            print(json.dumps(entry, ensure_ascii=False, sort_keys=True))
        return
    table = Table("#", "at", "action", "outcome", "reason", "lender", "purpose", "holder", "grant")
    for index, entry in selected:
        ev = entry["event"]
        cells = [_when(entry)] + [ev.get(k) for k in ("action", "outcome", "reason", "lender", "purpose", "holder")]
        grant = ev.get("grant_id")
        table.add_row(str(index), *(str(c) if c is not None else "" for c in cells), grant[:10] + "…" if grant else "")
    Console(highlight=False, width=160).print(table)
