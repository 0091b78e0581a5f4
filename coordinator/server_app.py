"""The coordinator's Flower ServerApp: routes a run to the workflow named by run-config ``mode``."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from coordinator.workflows import run_workflow

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_workflow(grid, context)
