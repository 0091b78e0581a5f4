"""Message handlers of the participant's ClientApp, one module per training mode.

Each module exports ``HANDLERS: dict[message_type, (content, context) -> reply content]``;
:mod:`participants.client_app` registers every module listed in ``HANDLER_MODULES`` that exists.
"""

HANDLER_MODULES: tuple[str, ...] = (
    "participants.handlers.horizontal",
    "participants.handlers.vertical",
)
