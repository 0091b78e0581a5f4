"""``fedscore identity show``: the fingerprint of a node's long-term Ed25519 identity, to pin it.

A data holder's node keeps ``keys/identity.key`` (and ``keys/wrap.key``) in its state directory and
creates them on first use; the operator pins each holder's fingerprint as ``identity_fingerprint``
in the consortium file so that no relay can substitute another identity. This command creates the
keys if absent (as the node would) and prints only public material: never the private key.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)
identity_app = typer.Typer(help="A node's long-term identity: the fingerprint to pin in the consortium file.",
                           no_args_is_help=True)
app.add_typer(identity_app, name="identity")


@identity_app.command("show")
def show(
    state_dir: Path = typer.Option(..., "--state-dir", file_okay=False,
                                   help="The node's state directory (its node config 'state-dir')."),
    as_json: bool = typer.Option(False, "--json", help="Print fingerprint, public key and key file as JSON."),
) -> None:
    """Print this node's identity fingerprint (creating the key pair on first use)."""
    from participants.handlers._common import long_term_keys

    keys_dir = state_dir / "keys"
    key_file = keys_dir / "identity.key"
    created = not key_file.exists()
    identity, _ = long_term_keys(keys_dir)
    if as_json:
        typer.echo(json.dumps({
            "fingerprint": identity.fingerprint,
            "public_key": identity.public_key.to_bytes().hex(),
            "key_file": str(key_file),
            "created": created,
        }))
        return
    if created:
        typer.echo(f"created a new identity in {keys_dir}", err=True)
    typer.echo(f'identity_fingerprint = "{identity.fingerprint}"')
