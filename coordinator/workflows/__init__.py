"""Coordinator workflows: one module per training mode, each with ``run(grid, context)``.

The ServerApp stays a router: it reads run-config ``mode`` and calls the matching module here, so a
new mode is a new module plus one line in :data:`WORKFLOWS`.
"""

from __future__ import annotations

import importlib
from typing import Any

from protocols.errors import ConfigError

WORKFLOWS: dict[str, str] = {
    "horizontal": "coordinator.workflows.horizontal",
    "vertical": "coordinator.workflows.vertical",
}


def run_workflow(grid: Any, context: Any) -> Any:
    """Dispatch on ``context.run_config['mode']``; unknown or missing modes are config errors."""
    mode = str(context.run_config.get("mode", ""))
    if mode not in WORKFLOWS:
        raise ConfigError(f"run config mode {mode!r} is not one of {sorted(WORKFLOWS)}")
    try:
        module = importlib.import_module(WORKFLOWS[mode])
    except ModuleNotFoundError as exc:
        if exc.name == WORKFLOWS[mode]:
            raise ConfigError(f"mode {mode!r} is not available in this installation") from None
        raise
    return module.run(grid, context)
