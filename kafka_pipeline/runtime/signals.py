"""How every long-lived worker runs: until SIGTERM or SIGINT asks it to drain and stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Protocol


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
