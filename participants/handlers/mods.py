"""Cross-cutting ClientApp concerns as Flower mods (wrap every handler, know nothing of protocols)."""

from __future__ import annotations

import logging
import time

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

logger = logging.getLogger("fedscore.participant")


def _size(msg: Message) -> int:
    """Bytes in a message's records (for the log; the bytes themselves are never logged)."""
    if not msg.has_content():
        return 0
    total = 0
    for record in msg.content.values():
        for value in record.values():
            if isinstance(value, bytes):
                total += len(value)
            elif isinstance(value, list):
                total += sum(len(v) for v in value if isinstance(v, bytes))
            elif hasattr(value, "data") and isinstance(getattr(value, "data"), bytes):
                total += len(value.data)
    return total


def message_log_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Log message type, round, sizes, duration and outcome -- never payloads, ids or features."""
    start = time.perf_counter()
    name = context.node_config.get("node-name", context.node_config.get("partition-id", "?"))
    try:
        reply = call_next(msg, context)
    except Exception as exc:
        logger.warning(
            "node=%s type=%s group=%s failed after %.2fs: %s",
            name, msg.metadata.message_type, msg.metadata.group_id, time.perf_counter() - start, type(exc).__name__,
        )
        raise
    outcome = "error" if reply.has_error() else "ok"
    logger.info(
        "node=%s type=%s group=%s in=%dB out=%dB %.2fs %s",
        name, msg.metadata.message_type, msg.metadata.group_id, _size(msg), _size(reply),
        time.perf_counter() - start, outcome,
    )
    return reply
