"""Messaging and output helpers every coordinator workflow shares.

Why here: horizontal and vertical runs talk to the same Grid the same way (one fat message round
per step, each node's reply or failure named by participant) and leave their run summary in the
same place, so a change to either (timeouts, where summaries go) is made once.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Iterable, Mapping

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from pydantic import BaseModel

from coordinator.strategies import NodeReply

log = logging.getLogger("flwr").getChild("fedscore.workflows")


def exchange(
    grid: Grid,
    plan: Iterable[tuple[int, RecordDict]],
    message_type: str,
    names: Mapping[int, str],
    *,
    group: str,
    timeout: float,
) -> list[NodeReply]:
    """Send one message per node, wait up to ``timeout``; every node gets a NodeReply (ok or not)."""
    plan = list(plan)
    msgs = [Message(content, dst_node_id=nid, message_type=message_type, group_id=group) for nid, content in plan]
    replies = {m.metadata.src_node_id: m for m in grid.send_and_receive(msgs, timeout=timeout)} if msgs else {}
    out = []
    for nid, _ in plan:
        name = names.get(nid, f"node-{nid}")
        reply = replies.get(nid)
        if reply is None:
            out.append(NodeReply(nid, name, None, f"no reply within {timeout:.0f}s"))
        elif reply.has_error():
            out.append(NodeReply(nid, name, None, f"error: {reply.error.reason[:200]}"))
        else:
            out.append(NodeReply(nid, name, reply.content))
    for r in out:
        if not r.ok:
            log.warning("%s: participant %s dropped (%s)", message_type, r.participant, r.error)
    return out


def wait_for_nodes(grid: Grid, want: int, timeout: float) -> list[int]:
    """Node ids connected once ``want`` have joined or ``timeout`` seconds have passed (sorted)."""
    deadline = time.monotonic() + timeout
    nodes = sorted(grid.get_node_ids())
    while len(nodes) < want and time.monotonic() < deadline:
        time.sleep(1.0)
        nodes = sorted(grid.get_node_ids())
    return nodes


def summary_file(result_file: str, state_dir: str, run_id: int, name: str) -> Path | None:
    """``result-file`` if set, else ``<state-dir>/runs/<run>/<name>``, else nowhere (None)."""
    if result_file:
        return Path(result_file)
    if state_dir:
        return Path(state_dir) / "runs" / str(run_id) / name
    return None


def write_summary(path: Path, summary: BaseModel) -> None:
    """The run summary as indented JSON (stray numpy scalars written as floats)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary.model_dump(mode="json"), indent=1, default=float) + "\n")
