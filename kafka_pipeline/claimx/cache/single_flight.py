"""One load per project at a time, however many callers ask meanwhile.

A flight is a task that loads one project; while it runs, every caller for that project awaits
it (through `asyncio.shield`, so a caller that is cancelled does not cancel the load for the
others) and gets its result or its exception. The flight leaves the table as it ends, before
its callers resume: a caller that comes after it starts a new one. Background flights (refreshes
nobody awaits) are cancelled by `close()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kafka_pipeline.claimx.cache.verification import ProjectSnapshot


@dataclass(slots=True)
class FlightResult:
    snapshot: ProjectSnapshot | None  # the loaded rows; None when nothing was loaded
    verified: bool = True  # False: nothing loaded and nothing verified (a background refresh gave up)


Flight = asyncio.Task[FlightResult]


class Flights:
    def __init__(self) -> None:
        self._running: dict[str, Flight] = {}
        self._background: set[Flight] = set()

    def get(self, project_id: str) -> Flight | None:
        return self._running.get(project_id)

    def __contains__(self, project_id: str) -> bool:
        return project_id in self._running

    def start(self, project_id: str, fly: Callable[[], Awaitable[FlightResult]], *, name: str, background: bool = False) -> Flight:
        """Run `fly()` as the project's flight (the caller checked there is none)."""
        task = asyncio.get_running_loop().create_task(self._fly(project_id, fly), name=name)
        self._running[project_id] = task
        task.add_done_callback(_retrieve_exception)
        if background:
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return task

    async def _fly(self, project_id: str, fly: Callable[[], Awaitable[FlightResult]]) -> FlightResult:
        try:
            return await fly()
        finally:
            if self._running.get(project_id) is asyncio.current_task():
                del self._running[project_id]

    async def close(self) -> None:
        """Cancel the background flights and wait for them to end."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for project_id, task in list(self._running.items()):
            if task in tasks:  # cancelled before it ran: its own cleanup never did
                del self._running[project_id]


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    """Mark a flight's exception as seen: its callers got it, or none are left to get it."""
    if not task.cancelled():
        task.exception()
