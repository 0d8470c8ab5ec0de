"""Refresh-ahead: a hit on an entry older than `refresh_after_s` starts one background reload.

The hit is still answered `hit`; the reload runs as the project's flight (so an event asking
meanwhile waits for it rather than loading again), hands its snapshot to `emit` (which writes
the rows and awaits the broker ack) and then confirms the project. With a shared tier it first
asks whether another worker refreshed the project already (its time is adopted) or is doing it
now (this worker then waits a while before trying again). A failed refresh keeps the still-valid
entry and is not tried again for a quarter of the refresh window (at most a minute).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from kafka_pipeline.claimx.cache.loader import ProjectLoader
from kafka_pipeline.claimx.cache.shared import SharedTier
from kafka_pipeline.claimx.cache.single_flight import FlightResult, Flights
from kafka_pipeline.claimx.cache.stats import Counters
from kafka_pipeline.claimx.cache.verification import Loader, RefreshCallback
from kafka_pipeline.config import CacheSettings
from kafka_pipeline.observability.logging import get_logger

log = get_logger(__name__)

# The project's reloaded rows were acknowledged: record it (project id, the tier lock held).
Confirmed = Callable[[str, str | None], None]


class RefreshAhead:
    def __init__(
        self,
        settings: CacheSettings,
        *,
        flights: Flights,
        loader: ProjectLoader,
        tier: SharedTier,
        counters: Counters,
        emit: RefreshCallback | None,
        confirmed: Confirmed,
        clock: Callable[[], float],
    ) -> None:
        self._flights = flights
        self._loader = loader
        self._tier = tier
        self._counters = counters
        self._emit = emit
        self._confirmed = confirmed
        self._clock = clock
        self._refresh_after = settings.refresh_after_s
        # A hit this old starts a refresh; never without somewhere to emit the rows.
        self.due_after_s = settings.refresh_after_s if emit is not None else math.inf
        self._while_running_s = settings.ttl_s
        self._after_busy_s = min(settings.refresh_after_s, settings.lock_wait_s)
        self._after_failure_s = min(settings.refresh_after_s / 4, 60.0)
        self._not_before: dict[str, float] = {}

    def start(self, project_id: str, load: Loader) -> None:
        """A hit found the entry due: start its refresh unless one runs or it is backing off."""
        if project_id in self._flights:
            return
        not_before = self._not_before.get(project_id)
        now = self._clock()
        if not_before is not None and now < not_before:
            return
        # Until this refresh ends (or backs off), further hits do not start another one.
        self._not_before[project_id] = now + self._while_running_s
        self._flights.start(
            project_id, lambda: self._refresh(project_id, load), name=f"project-cache-refresh-{project_id}", background=True
        )

    def forget(self, project_id: str) -> None:
        """The project was confirmed or dropped: no back-off holds for it any longer."""
        self._not_before.pop(project_id, None)

    def forget_all(self) -> None:
        self._not_before.clear()

    async def _refresh(self, project_id: str, load: Loader) -> FlightResult:
        assert self._emit is not None
        try:
            answer = await self._tier.before_refresh(project_id, self._refresh_after)
            if answer.busy:  # another worker is refreshing it; its confirm invalidates our entry
                self._not_before[project_id] = self._clock() + self._after_busy_s
                return FlightResult(None, verified=False)
            snapshot = await self._loader.load(project_id, load, answer)  # releases the lock on failure
            if snapshot is None:  # another worker refreshed it: its time was adopted
                self.forget(project_id)
                return FlightResult(None)
            try:
                await self._emit(snapshot)
            except BaseException:
                if answer.token is not None:
                    self._tier.release(project_id, answer.token)
                raise
            self._counters.background_refreshes += 1
            self._confirmed(project_id, answer.token)
            return FlightResult(snapshot)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed refresh keeps the (still valid) entry
            self._counters.background_refresh_failures += 1
            self._not_before[project_id] = self._clock() + self._after_failure_s
            log.warning("project_cache_refresh_failed", project_id=project_id, error=str(exc), error_type=type(exc).__name__)
            return FlightResult(None, verified=False)
