"""Loaded snapshots waiting for the broker: held until confirmed or abandoned.

A project counts as cached only once the message carrying its rows is acknowledged; meanwhile
its snapshot is pending, and other events of the project are answered with it (they write the
same rows). A pending snapshot may hold the shared tier's load lock: dropping it releases the
lock, so waiting workers load themselves. One never settled is stale after `ttl_s`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kafka_pipeline.claimx.cache.shared import SharedTier
from kafka_pipeline.claimx.cache.verification import ProjectSnapshot


@dataclass(slots=True)
class Pending:
    snapshot: ProjectSnapshot
    loaded_at: float
    token: str | None  # the shared-tier lock this worker holds for the project, if any
    refresh: bool  # loaded whatever the cache held: its confirm tells the other workers


class PendingSnapshots:
    def __init__(self, tier: SharedTier, ttl_s: float, clock: Callable[[], float]) -> None:
        self._tier = tier
        self._ttl = ttl_s
        self._clock = clock
        self._held: dict[str, Pending] = {}

    def hold(self, project_id: str, snapshot: ProjectSnapshot, token: str | None, *, refresh: bool) -> None:
        """Hold a fresh load, replacing an older one (whose lock is released unless it is the same)."""
        old = self._held.get(project_id)
        if old is not None and old.token is not None and old.token != token:
            self._tier.release(project_id, old.token)
        self._held[project_id] = Pending(snapshot, self._clock(), token, refresh)

    def current(self, project_id: str) -> ProjectSnapshot | None:
        """The held snapshot, unless it is stale (then it is dropped)."""
        pending = self._held.get(project_id)
        if pending is None:
            return None
        if self._clock() - pending.loaded_at < self._ttl:
            return pending.snapshot
        self.drop(project_id)
        return None

    def take(self, project_id: str) -> Pending | None:
        """Settle as confirmed: the caller records the project and hands the lock on."""
        return self._held.pop(project_id, None)

    def drop(self, project_id: str) -> bool:
        """Settle as abandoned: forget the snapshot and release its lock."""
        pending = self._held.pop(project_id, None)
        if pending is None:
            return False
        if pending.token is not None:
            self._tier.release(project_id, pending.token)
        return True

    def clear(self) -> int:
        dropped = len(self._held)
        for project_id in list(self._held):
            self.drop(project_id)
        return dropped

    def __len__(self) -> int:
        return len(self._held)
