"""How every long-lived worker runs: until SIGTERM or SIGINT asks it to drain and stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Protocol

from kafka_pipeline.config import Settings
from kafka_pipeline.kafka.clients import set_client_name
from kafka_pipeline.lifecycle import event_loop
from kafka_pipeline.lifecycle.garbage_collector import tune_for_long_running
from kafka_pipeline.observability.logging import configure_logging
from kafka_pipeline.observability.tracing import configure_tracing, shutdown


class Worker(Protocol):
    def run(self, stop: asyncio.Event) -> Awaitable[None]: ...


async def run_until_signalled(make_worker: Callable[[], Worker]) -> None:
    """Build the worker inside the running loop, then run it; a signal sets its stop event
    (the worker finishes in-flight work, commits and returns)."""
    worker = make_worker()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await worker.run(stop)


def run_worker(settings: Settings, make_worker: Callable[[], Worker]) -> int:
    """The body of every worker command: logging as the settings say, then run until signalled.
    A failure of the worker itself (`errors.WorkerFailed`) reaches the CLI, which prints it."""
    configure_logging(settings.worker.name, log_format=settings.worker.log_format, level=settings.worker.log_level)
    set_client_name(settings.worker.name)
    configure_tracing(settings.worker.name)  # only when OTEL_* asks for traces
    tune_for_long_running()
    try:
        event_loop.run(run_until_signalled(make_worker))
    finally:
        shutdown()  # export the spans still buffered
    return 0
