"""The participant's Flower ClientApp: a thin router from message types to handlers.

One app for every mode: each module in :data:`participants.handlers.HANDLER_MODULES` that exists
contributes ``HANDLERS`` (``"train.hfl_fit" -> handler``); cross-cutting concerns are mods.
Handlers get the content and the Flower context and return the reply content; a handler that
raises becomes an error reply, which the coordinator records as that participant dropping out.
"""

from __future__ import annotations

import importlib
from typing import Callable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from participants.handlers import HANDLER_MODULES
from participants.handlers.mods import message_log_mod

Handler = Callable[[RecordDict, Context], RecordDict]

app = ClientApp(mods=[message_log_mod])


def _route(handler: Handler) -> Callable[[Message, Context], Message]:
    def on_message(msg: Message, context: Context) -> Message:
        return Message(handler(msg.content, context), reply_to=msg)

    on_message.__name__ = getattr(handler, "__name__", "handler")
    return on_message


def _load_handlers() -> dict[str, Handler]:
    table: dict[str, Handler] = {}
    for module_name in HANDLER_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # that mode is not installed; others still work
                continue
            raise
        for message_type, handler in getattr(module, "HANDLERS", {}).items():
            if message_type in table:
                raise ValueError(f"message type {message_type!r} is handled twice")
            table[message_type] = handler
    return table


def register(client_app: ClientApp, handlers: dict[str, Handler]) -> None:
    """Register ``handlers`` on ``client_app`` under their category (train/evaluate/query) and action."""
    for message_type, handler in handlers.items():
        category, _, action = message_type.partition(".")
        if category not in ("train", "evaluate", "query") or not action.isidentifier():
            raise ValueError(f"bad message type {message_type!r}")
        getattr(client_app, category)(action)(_route(handler))


HANDLERS = _load_handlers()
register(app, HANDLERS)
