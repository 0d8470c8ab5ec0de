"""In-flight slots and per-project lanes: how many events run at once, and in what order a
project's events hand their output to the producer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass


class Slot:
    """One of the worker's `max_in_flight` slots, held by an event until its message is in the
    producer (or it ended without one); `release` is idempotent."""

    __slots__ = ("_slots", "held")

    def __init__(self, slots: Slots) -> None:
        self._slots = slots
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._slots.in_use -= 1
            self._slots.on_free()


class Slots:
    """The slots held now; how many there may be is the worker's setting (`enrich.max_in_flight`)."""

    def __init__(self, on_free: Callable[[], None]) -> None:
        self.on_free = on_free
        self.in_use = 0
        self.peak = 0  # the most ever held at once (never above max_in_flight)

    def take(self) -> Slot:
        self.in_use += 1
        self.peak = max(self.peak, self.in_use)
        return Slot(self)


@dataclass
class Turn:
    """An event's place in its project's lane: wait for `previous`, then set `mine`."""

    project_id: str | None
    previous: asyncio.Event | None
    mine: asyncio.Event

    async def wait_previous(self) -> None:
        if self.previous is not None:
            await self.previous.wait()


class ProjectLanes:
    """Events of one project run concurrently with everything else, but each hands its output
    to the producer only after the project's previous event did (or ended without output)."""

    def __init__(self) -> None:
        self._tail: dict[str, asyncio.Event] = {}  # per project, the turn of its latest event

    def join(self, project_id: str | None) -> Turn:
        mine = asyncio.Event()
        previous = None
        if project_id is not None:
            previous = self._tail.get(project_id)
            self._tail[project_id] = mine
        return Turn(project_id, previous, mine)

    def leave(self, turn: Turn) -> None:
        """The event is over: the next one of its project may go."""
        turn.mine.set()
        if turn.project_id is not None and self._tail.get(turn.project_id) is turn.mine:
            del self._tail[turn.project_id]
