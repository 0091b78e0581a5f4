"""Sub-commands a data holder (and the lender) runs: synthetic data, baselines, portfolio monitoring,
the node identity to pin."""

from __future__ import annotations

import typer

from participants.datasets.cli import app as datasets_app
from participants.identity_cli import app as identity_app
from participants.monitoring.cli import app as monitoring_app
from participants.synth.cli import app as synth_app

app = typer.Typer(no_args_is_help=True)
app.add_typer(synth_app)
app.add_typer(datasets_app)
app.add_typer(monitoring_app)
app.add_typer(identity_app)
