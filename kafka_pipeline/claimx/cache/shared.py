"""The shared tier (L2) as the cache sees it: what it answers before a load, what it is told after.

`redis_tier.RedisTier` is the shared tier of a worker group; `LocalTier` stands in when there is
none (every question answered LOCAL, every write dropped), so the cache's parts never ask
whether a shared tier exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

TierState = Literal["off", "up", "down"]


@dataclass(slots=True, frozen=True)
class SharedAnswer:
    """What the shared tier says before an in-process load."""

    verified_age: float | None = None  # another worker verified the project this long ago: a hit
    absent_remaining: float | None = None  # the project is known absent (404) for this much longer
    token: str | None = None  # this worker holds the load lock: load, then confirm/abandon
    busy: bool = False  # another worker holds the lock (a background refresh then skips)


LOCAL = SharedAnswer()  # no answer from the shared tier: load in-process without a lock


@dataclass
class TierCounters:
    """The shared tier's own counts (the cache reports them beside its own)."""

    misses: int = 0  # flights the shared tier had no answer for
    errors: int = 0  # calls that failed (Redis down or slow)
    lock_waits: int = 0  # waits for another worker's load of the same project


class SharedTier(Protocol):
    counters: TierCounters
    reconnects: int

    @property
    def state(self) -> TierState: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def on_remote_invalidation(self, callback: Callable[[list[str] | None], object]) -> None: ...

    async def before_load(self, project_id: str, *, refresh: bool) -> SharedAnswer: ...

    async def before_refresh(self, project_id: str, refresh_after_s: float) -> SharedAnswer: ...

    def confirm(self, project_id: str, token: str | None, *, notify: bool) -> None: ...

    def store_absent(self, project_id: str, token: str | None, ttl_s: float) -> None: ...

    def release(self, project_id: str, token: str) -> None: ...

    def invalidate(self, project_ids: list[str] | None) -> None: ...

    async def invalidate_now(self, project_ids: Iterable[str] | None) -> int: ...


class LocalTier:
    """No shared tier: the in-process tier decides alone."""

    def __init__(self) -> None:
        self.counters = TierCounters()
        self.reconnects = 0

    @property
    def state(self) -> TierState:
        return "off"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def on_remote_invalidation(self, callback: Callable[[list[str] | None], object]) -> None:
        return None

    async def before_load(self, project_id: str, *, refresh: bool) -> SharedAnswer:
        return LOCAL

    async def before_refresh(self, project_id: str, refresh_after_s: float) -> SharedAnswer:
        return LOCAL

    def confirm(self, project_id: str, token: str | None, *, notify: bool) -> None:
        return None

    def store_absent(self, project_id: str, token: str | None, ttl_s: float) -> None:
        return None

    def release(self, project_id: str, token: str) -> None:
        return None

    def invalidate(self, project_ids: list[str] | None) -> None:
        return None

    async def invalidate_now(self, project_ids: Iterable[str] | None) -> int:
        return 0
