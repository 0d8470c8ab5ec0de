"""The ProjectCache: decides when the parent project of an event must be fetched.

"Ensure the project" (claimx-domain.md, section 1): before child rows are written, the
project's `projects` + `contacts` rows must be in the tables. `verify()` answers, per event:

- ``hit``: the project was verified within ``ttl_s``; nothing is fetched, no rows emitted.
- ``loaded``: this call fetched the project; the caller emits the snapshot rows with its
  child rows and settles the answer: confirmed once the broker acknowledged that message,
  abandoned if it failed (`verification.Verification`).
- ``coalesced``: another call's fetch (in flight, or done but not yet confirmed) answered
  this one; the caller emits the same snapshot rows and settles the same way.

A project counts as cached only once confirmed, never before; a fetch runs once per project
however many events ask at once, a failed fetch caches nothing and every waiter sees its
exception; a 404 (PermanentError "NotFound") is remembered as absent for ``absent_ttl_s``.
Entries expire after ``ttl_s`` (less a random jitter of up to ``ttl_jitter_s`` so entries
confirmed together do not expire together); the least recently used entry is evicted beyond
``max_entries``. With an ``on_background_refresh`` callback, the first hit on an entry older
than ``refresh_after_s`` also starts one background reload (`refresh_ahead`).

With a shared tier (`redis_tier.RedisTier`) the cache has two levels: the in-process entries
(L1) and Redis (L2), shared by every worker of the group.

The parts, one module each: `store` (entries: TTL, LRU, absent), `pending` (loads waiting for
the broker), `single_flight` (one load per project at a time), `loader` (one load: adopt the
shared tier's answer or load under its lock), `refresh_ahead`, `shared` (the shared tier as
the cache sees it) and `stats`. This module composes them; `factory.build_project_cache` builds
it from the settings.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from kafka_pipeline.claimx.cache.loader import ProjectLoader
from kafka_pipeline.claimx.cache.pending import PendingSnapshots
from kafka_pipeline.claimx.cache.refresh_ahead import RefreshAhead
from kafka_pipeline.claimx.cache.shared import LocalTier, SharedTier
from kafka_pipeline.claimx.cache.single_flight import Flight, FlightResult, Flights
from kafka_pipeline.claimx.cache.stats import CacheStats, Counters
from kafka_pipeline.claimx.cache.store import Absent, EntryStore
from kafka_pipeline.claimx.cache.verification import HIT, Loader, ProjectSnapshot, RefreshCallback, Verification, not_found
from kafka_pipeline.config import CacheSettings

__all__ = ["CacheStats", "LoadObserver", "NoCache", "ProjectCache", "ProjectSnapshot", "RefreshCallback", "Verification"]

# The cache reports each load's duration and result here (metrics wire it; the API client does the same).
LoadObserver = Callable[[str, float, bool], None]  # (cache name, seconds, ok)


class ProjectCache:
    """Per-worker project verification cache (L1), optionally backed by a shared Redis tier (L2)."""

    def __init__(
        self,
        settings: CacheSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        shared_tier: SharedTier | None = None,
        on_background_refresh: RefreshCallback | None = None,
        name: str = "project",
        observer: LoadObserver | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.counters = Counters()
        self._shared = shared_tier
        self._tier: SharedTier = shared_tier if shared_tier is not None else LocalTier()
        self._store = EntryStore(settings, clock)
        self._pending = PendingSnapshots(self._tier, settings.ttl_s, clock)
        self._flights = Flights()
        self._loader = ProjectLoader(
            self._store,
            self._tier,
            self.counters,
            absent_ttl_s=settings.absent_ttl_s,
            observe=functools.partial(observer, name) if observer is not None else None,
        )
        self._refresh = RefreshAhead(
            settings,
            flights=self._flights,
            loader=self._loader,
            tier=self._tier,
            counters=self.counters,
            emit=on_background_refresh,
            confirmed=functools.partial(self._confirmed, notify=True),
            clock=clock,
        )
        self._refresh_due_s = self._refresh.due_after_s
        self._tier.on_remote_invalidation(lambda ids: self.invalidate(ids, broadcast=False))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the shared tier's listener (never fails because Redis is down: the cache then
        runs on its in-process tier)."""
        await self._tier.start()

    async def close(self) -> None:
        """Stop background refreshes and the shared tier (its last writes get one timeout to land)."""
        await self._flights.close()
        await self._tier.close()

    @property
    def shared_tier(self) -> SharedTier | None:
        return self._shared

    # ------------------------------------------------------------------ the hot path

    async def verify(self, project_id: str, load: Loader, *, refresh: bool = False) -> Verification:
        """Is the project in the tables? See the module docstring for the outcomes.

        Raises the load's exception (shared by every coalesced caller), or PermanentError
        with error_type "NotFound" for a project remembered as absent.
        """
        if not refresh:
            hit = self._hit(project_id, load)
            if hit is not None:
                return hit
        return await self._verify_slow(project_id, load, refresh)

    def begin_verify(self, project_id: str, load: Loader, *, refresh: bool = False) -> Verification | Coroutine[Any, Any, Verification]:
        """verify() for a caller with work of its own to do meanwhile, without a task to run it
        beside that work: its answer when it has one without waiting, else a coroutine to await
        once that work is done (the project's flight, a task already, runs meanwhile). The
        caller closes that coroutine if it never awaits it. Raises as verify() does."""
        if not refresh:
            hit = self._hit(project_id, load)
            if hit is not None:
                return hit
        step = self._step(project_id, load, refresh)
        if isinstance(step, Verification):
            return step
        flight, joined = step
        return self._after_flight(project_id, load, refresh, flight, joined)

    def _hit(self, project_id: str, load: Loader) -> Verification | None:
        """HIT for a project verified within `ttl_s` (the first hit on an entry due for refresh
        starts its background reload); None otherwise."""
        age = self._store.fresh_age(project_id)
        if age is None:
            return None
        self.counters.l1_hits += 1
        if age >= self._refresh_due_s:
            self._refresh.start(project_id, load)
        return HIT

    async def _verify_slow(self, project_id: str, load: Loader, refresh: bool) -> Verification:
        while True:
            step = self._step(project_id, load, refresh)
            if isinstance(step, Verification):
                return step
            flight, joined = step
            answer = self._landed(await asyncio.shield(flight), joined, refresh)
            if answer is not None:
                return answer

    async def _after_flight(self, project_id: str, load: Loader, refresh: bool, flight: Flight, joined: bool) -> Verification:
        answer = self._landed(await asyncio.shield(flight), joined, refresh)
        return answer if answer is not None else await self._verify_slow(project_id, load, refresh)

    def _step(self, project_id: str, load: Loader, refresh: bool) -> Verification | tuple[Flight, bool]:
        """What verify() does before it waits: its answer, or the flight to wait for and whether
        another caller started it (joined)."""
        entry = self._store.live(project_id)
        if entry is not None and not refresh:
            if entry.__class__ is Absent:
                self.counters.absent_hits += 1
                raise not_found(project_id)
            hit = self._hit(project_id, load)  # confirmed meanwhile (the hot path raced a confirm)
            if hit is not None:
                return hit

        flight = self._flights.get(project_id)
        if flight is not None:
            return flight, True

        if not refresh:
            held = self._pending.current(project_id)
            if held is not None:
                self.counters.coalesced += 1
                return Verification("coalesced", held, self)

        return self._flights.start(project_id, lambda: self._fly(project_id, load, refresh), name=f"project-cache-load-{project_id}"), False

    def _landed(self, result: FlightResult, joined: bool, refresh: bool) -> Verification | None:
        """The answer a flight gave a caller; None: it loaded nothing, and this call must (re)load."""
        c = self.counters
        if result.snapshot is None:
            if joined and (refresh or not result.verified):
                return None
            c.l2_hits += 1
            return HIT
        if joined:
            c.coalesced += 1
            return Verification("coalesced", result.snapshot, self)
        c.misses += 1
        return Verification("loaded", result.snapshot, self)

    async def _fly(self, project_id: str, load: Loader, refresh: bool) -> FlightResult:
        """One fetch of a project, shared by every caller that asks meanwhile."""
        answer = await self._tier.before_load(project_id, refresh=refresh)
        snapshot = await self._loader.load(project_id, load, answer)
        if snapshot is None:  # another worker verified it
            return FlightResult(None)
        if refresh:
            self._store.drop(project_id)
        self._pending.hold(project_id, snapshot, answer.token, refresh=refresh)
        return FlightResult(snapshot)

    # ------------------------------------------------------------------ settling (through Verification)

    def confirm(self, project_id: str) -> None:
        """The broker acknowledged the message carrying this project's snapshot rows: a hit from now on.

        A project that is already a confirmed entry keeps its timestamp (a second confirm never
        extends its life).
        """
        pending = self._pending.take(project_id)
        if pending is None:
            if self._store.fresh_age(project_id) is not None:
                return
            self._confirmed(project_id, None, notify=False)
        else:
            self._confirmed(project_id, pending.token, notify=pending.refresh)

    def abandon(self, project_id: str) -> None:
        """The message carrying the snapshot rows failed: forget the unconfirmed entry."""
        self._pending.drop(project_id)

    def _confirmed(self, project_id: str, token: str | None, *, notify: bool) -> None:
        self._store.confirm(project_id)
        self._refresh.forget(project_id)
        self._tier.confirm(project_id, token, notify=notify)

    # ------------------------------------------------------------------ invalidation and priming

    def invalidate(self, project_ids: Iterable[str] | None = None, *, broadcast: bool = True) -> int:
        """Drop entries (all when `project_ids` is None); returns how many were dropped.

        With the shared tier, the Redis keys are deleted too and every other worker is told to
        drop its in-process entries (unless `broadcast` is False, as for a received invalidation).
        """
        ids = None if project_ids is None else list(project_ids)
        if ids is None:
            dropped = self._store.clear() + self._pending.clear()
            self._refresh.forget_all()
        else:
            dropped = 0
            for project_id in ids:
                dropped += self._store.drop(project_id) + self._pending.drop(project_id)
                self._refresh.forget(project_id)
        if broadcast:
            self._tier.invalidate(ids)
        return dropped

    def prime(self, project_id: str, age_s: float = 0.0) -> bool:
        """Record a project verified `age_s` seconds ago (warm start). Returns False (and records
        nothing) when that is already past `ttl_s` or the project has a fresher entry."""
        return self._store.prime(project_id, age_s)

    # ------------------------------------------------------------------ inspection

    def stats(self) -> CacheStats:
        return CacheStats.of(self.counters, self._tier, size=len(self._store), pending=len(self._pending), evictions=self._store.evictions)

    def stats_line(self) -> str:
        """One line for the cycle-stats log: size and hit rate per tier."""
        return self.stats().line()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Readiness check for the OpsServer (never unready for Redis being down)."""
        return self.stats().readiness()

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, project_id: str) -> bool:
        """Is the project a confirmed, unexpired entry (verify() would be a hit)?"""
        return self._store.fresh_age(project_id) is not None


class NoCache:
    """The same interface with no caching and no coalescing: every verify() loads.

    The naive baseline for benchmarks (one export call per event)."""

    def __init__(self, settings: CacheSettings | None = None, *, clock: Callable[[], float] = time.monotonic, shared_tier: object = None) -> None:
        self.settings = settings
        self.counters = Counters()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def verify(self, project_id: str, load: Loader, *, refresh: bool = False) -> Verification:
        self.counters.misses += 1
        try:
            snapshot = await load()
        except BaseException:
            self.counters.loads_failed += 1
            raise
        self.counters.loads_ok += 1
        return Verification("loaded", snapshot)  # nothing held: settling it does nothing

    def invalidate(self, project_ids: Iterable[str] | None = None) -> int:
        return 0

    def stats(self) -> CacheStats:
        c = self.counters
        return CacheStats(misses=c.misses, loads_ok=c.loads_ok, loads_failed=c.loads_failed)

    def stats_line(self) -> str:
        return "project_cache=off"

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return True, {"cache": "off"}
