"""structlog set-up: readable console locally, JSON in production; every line names the worker."""

from __future__ import annotations

import logging
import sys

import structlog

# A log call may name (under this key) the fields its message already shows, like the cycle-stats
# line: the console renderer leaves them out, JSON keeps them as fields.
IN_MESSAGE = "_fields_in_message"


def _drop_fields_in_message(logger: object, method: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
    for name in event_dict.pop(IN_MESSAGE, ()):
        event_dict.pop(name, None)
    return event_dict


def _keep_fields_in_message(logger: object, method: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
    event_dict.pop(IN_MESSAGE, None)
    return event_dict


def configure_logging(worker_name: str, *, log_format: str = "console", level: str = "INFO") -> None:
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderers: list[structlog.types.Processor] = (
        [_keep_fields_in_message, structlog.processors.JSONRenderer()]
        if log_format == "json"
        else [_drop_fields_in_message, structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    )
    structlog.configure(
        processors=[*processors, *renderers],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(worker=worker_name)
    # Library loggers (aiokafka, uvicorn) go to stderr at WARNING so they do not drown the stats.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
