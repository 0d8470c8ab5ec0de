"""What the cache tests share: clocks, loaders, cache builders and a deadline wait."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

from prometheus_client import REGISTRY

from kafka_pipeline.claimx.cache.metrics import CacheMetrics
from kafka_pipeline.claimx.cache.project_cache import ProjectCache
from kafka_pipeline.claimx.cache.redis_tier import RedisTier
from kafka_pipeline.claimx.cache.shared import LOCAL, SharedAnswer, TierCounters, TierState
from kafka_pipeline.claimx.cache.verification import ProjectSnapshot, Verification
from kafka_pipeline.config import CacheSettings
from kafka_pipeline.errors import PermanentError

SOCKET_TIMEOUT_S = 0.5  # the outage tests check that no call waits longer than about this
RELAXED_TIMEOUT_S = 1.0  # the counting tests: a busy test machine must not look like a Redis outage


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ShiftedClock:
    """Real time plus an offset the test moves (both clocks: Redis stamps are wall time)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def wall(self) -> float:
        return time.time() + self.offset


def snapshot(project_id: str, version: int = 1) -> ProjectSnapshot:
    return ProjectSnapshot(
        project_id,
        {
            "claimx_projects": [{"project_id": project_id, "status": f"v{version}"}],
            "claimx_contacts": [{"project_id": project_id, "contact_email": "a@b.c", "contact_type": "CLAIM_REP"}],
        },
    )


class Loader:
    """Stands in for the project export: counts calls; optionally slow, failing, or 404."""

    def __init__(self, *, delay: float = 0.0, error: BaseException | None = None) -> None:
        self.calls: list[str] = []
        self.delay = delay
        self.error = error
        self.not_found: set[str] = set()

    @property
    def total(self) -> int:
        return len(self.calls)

    @property
    def counts(self) -> dict[str, int]:
        """Loads per project."""
        return dict(Counter(self.calls))

    def for_project(self, project_id: str) -> Callable[[], Awaitable[ProjectSnapshot]]:
        async def load() -> ProjectSnapshot:
            self.calls.append(project_id)
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.error is not None:
                raise self.error
            if project_id in self.not_found:
                raise PermanentError(f"404 {project_id}", error_type="NotFound")
            return snapshot(project_id, version=self.calls.count(project_id))

        return load


class RecordingTier:
    """A shared tier that answers what the test sets and records what it is told."""

    def __init__(self, answer: SharedAnswer = LOCAL) -> None:
        self.answer = answer
        self.counters = TierCounters()
        self.reconnects = 0
        self.calls: list[tuple[object, ...]] = []

    @property
    def state(self) -> TierState:
        return "up"

    async def start(self) -> None:
        self.calls.append(("start",))

    async def close(self) -> None:
        self.calls.append(("close",))

    def on_remote_invalidation(self, callback: Callable[[list[str] | None], object]) -> None:
        self.invalidated_by_others = callback

    async def before_load(self, project_id: str, *, refresh: bool) -> SharedAnswer:
        self.calls.append(("before_load", project_id, refresh))
        return self.answer

    async def before_refresh(self, project_id: str, refresh_after_s: float) -> SharedAnswer:
        self.calls.append(("before_refresh", project_id))
        return self.answer

    def confirm(self, project_id: str, token: str | None, *, notify: bool) -> None:
        self.calls.append(("confirm", project_id, token, notify))

    def store_absent(self, project_id: str, token: str | None, ttl_s: float) -> None:
        self.calls.append(("store_absent", project_id, token, ttl_s))

    def release(self, project_id: str, token: str) -> None:
        self.calls.append(("release", project_id, token))

    def invalidate(self, project_ids: list[str] | None) -> None:
        self.calls.append(("invalidate", project_ids))

    async def invalidate_now(self, project_ids: object) -> int:
        return 0


def local_settings(**overrides: float | int) -> CacheSettings:
    values: dict[str, float | int] = {"ttl_s": 100.0, "refresh_after_s": 50.0, "absent_ttl_s": 10.0, "ttl_jitter_s": 0.0}
    values.update(overrides)
    return CacheSettings(**values)  # type: ignore[arg-type]


def make_cache(clock: FakeClock, **overrides: float | int) -> ProjectCache:
    return ProjectCache(local_settings(**overrides), clock=clock)


async def verify_confirmed(cache: ProjectCache, project_id: str, loader: Loader) -> Verification:
    """verify(), then what the worker does once the broker acknowledged the rows."""
    result = await cache.verify(project_id, loader.for_project(project_id))
    result.confirm()
    return result


# --- several caches sharing a real Redis ---------------------------------------------------


def settings_for(redis_url: str, **overrides: object) -> CacheSettings:
    values: dict[str, object] = {
        "redis_url": redis_url,
        "key_prefix": f"test-{uuid.uuid4().hex[:8]}:v1",
        "ttl_s": 600.0,
        "refresh_after_s": 300.0,
        "ttl_jitter_s": 0.0,
        "lock_lease_ms": 2_000,
        "lock_wait_s": 2.0,
        "socket_timeout_s": RELAXED_TIMEOUT_S,
    }
    values.update(overrides)
    return CacheSettings(**values)  # type: ignore[arg-type]


def make_worker(
    settings: CacheSettings,
    clock: ShiftedClock | None = None,
    on_background_refresh: Callable[[ProjectSnapshot], Awaitable[None]] | None = None,
) -> ProjectCache:
    """One simulated worker's cache on the shared tier, its metrics on the default registry."""
    tier = RedisTier(settings, breaker_cooldown_s=0.3, wall_clock=clock.wall if clock else time.time)
    metrics = CacheMetrics.on(REGISTRY)
    cache = ProjectCache(
        settings,
        clock=clock.monotonic if clock else time.monotonic,
        shared_tier=tier,
        on_background_refresh=on_background_refresh,
        observer=metrics.observe_load,
    )
    metrics.track(cache)
    return cache


def tier_of(cache: ProjectCache) -> RedisTier:
    tier = cache.shared_tier
    assert isinstance(tier, RedisTier)
    return tier


async def event(cache: ProjectCache, loader: Loader, project_id: str, *, refresh: bool = False, ack_s: float = 0.002) -> Verification:
    """What the enrichment worker does per event: verify, emit the rows, wait for the ack, confirm."""
    result = await cache.verify(project_id, loader.for_project(project_id), refresh=refresh)
    if result.carries_project:
        with result:
            await asyncio.sleep(ack_s)
    return result


async def start_workers(settings: CacheSettings, count: int = 3) -> list[ProjectCache]:
    caches = [make_worker(settings) for _ in range(count)]
    for cache in caches:
        await cache.start()
    return caches
