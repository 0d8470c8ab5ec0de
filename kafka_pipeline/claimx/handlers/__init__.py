"""Event handlers, one module per family; importing the package registers them all.

`handler_for(event_type)` -> the handler, or None (the event is skipped).
"""

from kafka_pipeline.claimx.handlers import media, mfn, policyholder, project, task, video, xa  # noqa: F401 - registers
from kafka_pipeline.claimx.handlers.base import (
    HANDLERS,
    EventHandler,
    HandlerContext,
    HandlerResult,
    SingleFlight,
    handler_for,
    register,
)
from kafka_pipeline.claimx.handlers.media import MediaBatcher

__all__ = [
    "HANDLERS",
    "EventHandler",
    "HandlerContext",
    "HandlerResult",
    "MediaBatcher",
    "SingleFlight",
    "handler_for",
    "register",
]
