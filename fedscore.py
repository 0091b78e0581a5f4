"""The ``fedscore`` console command.

A thin module that mounts the sub-commands each package defines; it is the only place that imports
both role packages. Errors of the project's hierarchies become one red line and a non-zero exit code,
never a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

import click
import typer
from rich.console import Console
from rich.markup import escape

# Sub-command apps, mounted in this order. Each module defines ``app: typer.Typer``.
_SUBCOMMANDS = (
    "protocols.cli",
    "participants.cli",
    "participants.audit_cli",
    "participants.lender_cli",
    "coordinator.cli",
    "coordinator.consent_cli",
    "coordinator.demo",
)
# Long-lived services: each role contributes its server to one ``fedscore serve`` group.
_SERVICES = (
    "coordinator.scoring_cli",  # serve gateway
    "participants.lender_cli",  # serve responder
)

for _name, _value in {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}.items():
    os.environ.setdefault(_name, _value)


def build_app() -> typer.Typer:
    root = typer.Typer(
        name="fedscore",
        help="Federated credit scoring for SMEs: usable but invisible data.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    for module_name in _SUBCOMMANDS:
        root.add_typer(importlib.import_module(module_name).app)
    serve = typer.Typer(help="Long-lived services: scoring gateway, scoring responder.", no_args_is_help=True)
    for module_name in _SERVICES:
        serve.add_typer(importlib.import_module(module_name).serve_app)
    root.add_typer(serve, name="serve")
    return root


def _user_errors() -> tuple[type[BaseException], ...]:
    from crypto.errors import CryptoError
    from models.errors import ModelError
    from protocols.errors import ProtocolError

    return (CryptoError, ModelError, ProtocolError)


def _path_problem(exc: OSError) -> str:
    """``path: problem`` for a file-system error; mkdir over a file raises FileExistsError."""
    problem = "exists and is not a directory" if isinstance(exc, FileExistsError) else exc.strerror or str(exc)
    return f"{exc.filename}: {problem}" if exc.filename else problem


def main(argv: list[str] | None = None) -> None:
    app = build_app()
    err = Console(stderr=True, highlight=False)
    try:
        result = app(args=argv, standalone_mode=False)
    except _user_errors() as exc:
        # one line however long its paths, and "[section]" or "x[0]" in a message is text, not markup
        err.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        sys.exit(2)
    except OSError as exc:  # a path given on the command line is not what it must be (a file as --state-dir …)
        err.print(f"[red]error:[/] {escape(_path_problem(exc))}", soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err.print("[red]aborted[/]")
        sys.exit(130)
    # Without standalone mode click returns the code of a ``typer.Exit`` instead of raising it.
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
