"""The ProjectCache: decides when the parent project of an event must be fetched.

"Ensure the project" (claimx-domain.md, section 1): before child rows are written, the
project's `projects` + `contacts` rows must be in the tables. `verify()` answers, per event:

- ``hit``: the project was verified within ``ttl_s``; nothing is fetched, no rows emitted.
- ``loaded``: this call fetched the project; the caller emits the snapshot rows with its
  child rows and, once the broker acknowledged that message, calls `confirm()` (or
  `abandon()` if the message failed).
- ``coalesced``: another call's fetch (in flight, or done but not yet confirmed) answered
  this one; the caller emits the same snapshot rows and confirms/abandons the same way.

A project counts as cached only after `confirm()`, never before; a fetch runs once per
project however many events ask at once (single-flight), a failed fetch caches nothing and
every waiter sees its exception; a 404 (PermanentError "NotFound") is remembered as absent
for ``absent_ttl_s``. Entries expire after ``ttl_s`` (less a random jitter of up to
``ttl_jitter_s`` so entries confirmed together do not expire together); the least recently
used entry is evicted beyond ``max_entries``.

Freshness: with an ``on_background_refresh`` callback, the first hit on an entry older than
``refresh_after_s`` still answers ``hit`` but starts one background reload; its snapshot is
handed to the callback (which emits the rows and awaits the broker ack) and then confirmed.

With a shared tier (`kafka_pipeline.claimx.cache.redis_tier.RedisTier`) the cache has two
levels: this in-process dict (L1) and Redis (L2), shared by every worker of the group.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from kafka_pipeline.config import CacheSettings
from kafka_pipeline.errors import PermanentError
from kafka_pipeline.runtime.logging import get_logger

log = get_logger(__name__)

NOT_FOUND = "NotFound"


@dataclass(slots=True)
class ProjectSnapshot:
    """What loading a project yields: its rows from the export, per table."""

    project_id: str
    rows: dict[str, list[dict[str, Any]]]  # {"claimx_projects": [...], "claimx_contacts": [...]}


# --- the shared tier (L2), as this module needs it; RedisTier implements it -------------------

@dataclass(slots=True, frozen=True)
class SharedAnswer:
    """What the shared tier says before an in-process load."""

    verified_age: float | None = None  # another worker verified the project this long ago: a hit
    absent_remaining: float | None = None  # the project is known absent (404) for this much longer
    token: str | None = None  # this worker holds the load lock: load, then confirm/abandon
    busy: bool = False  # another worker holds the lock (a background refresh then skips)


LOCAL = SharedAnswer()  # no answer from Redis: load in-process without a lock


@dataclass
class TierCounters:
    """The Redis tier's own counts (the cache reports them beside its own)."""

    misses: int = 0  # flights the shared tier had no answer for
    errors: int = 0  # calls that failed (Redis down or slow)
    lock_waits: int = 0  # waits for another worker's load of the same project


class SharedTier(Protocol):
    counters: TierCounters
    reconnects: int

    @property
    def is_up(self) -> bool: ...

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


# The cache reports each load's duration and result here (metrics wire it; the API client does the same).
LoadObserver = Callable[[str, float, bool], None]  # (cache name, seconds, ok)


@dataclass(frozen=True, slots=True)
class Verification:
    outcome: Literal["hit", "loaded", "coalesced"]
    snapshot: ProjectSnapshot | None  # None on a hit; the rows to emit on loaded/coalesced


Loader = Callable[[], Awaitable[ProjectSnapshot]]
RefreshCallback = Callable[[ProjectSnapshot], Awaitable[None]]

_HIT = Verification("hit", None)


@dataclass
class CacheStats:
    hits: int = 0  # answered without a fetch: l1 + l2
    misses: int = 0  # calls that started a fetch
    coalesced: int = 0  # calls answered by another call's fetch
    loads_ok: int = 0
    loads_failed: int = 0
    evictions: int = 0
    size: int = 0  # confirmed + absent entries in this process
    l2_hits: int = 0  # hits answered by the shared tier (included in `hits`)
    absent_hits: int = 0  # calls answered "not found" from the absent cache
    pending: int = 0  # loaded, waiting for confirm()/abandon()
    lock_waits: int = 0  # waits for another worker's fetch (shared tier)
    background_refreshes: int = 0  # stale entries reloaded in the background
    background_refresh_failures: int = 0
    redis_state: str = "off"  # off | up | down
    l2_misses: int = 0  # flights the shared tier had no answer for
    l2_errors: int = 0  # shared-tier calls that failed (Redis down or slow)

    @property
    def lookups(self) -> int:
        return self.hits + self.misses + self.coalesced + self.absent_hits

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    @property
    def fetches_avoided(self) -> float:
        """1 - project fetches / events that needed their project. Unlike `hit_rate` it credits
        coalescing: concurrent events of one project share one fetch without any of them being
        a hit. The dashboard computes the same from `claimx_project_cache_requests_total`."""
        return 1.0 - self.misses / self.lookups if self.lookups else 0.0

    @property
    def l1_hit_rate(self) -> float:
        return (self.hits - self.l2_hits) / self.lookups if self.lookups else 0.0

    @property
    def l2_hit_rate(self) -> float:
        return self.l2_hits / self.lookups if self.lookups else 0.0


class _Absent:
    """An L1 entry for a project the API answered 404 for, until `until`."""

    __slots__ = ("until",)

    def __init__(self, until: float) -> None:
        self.until = until


class _Pending:
    """A loaded snapshot whose rows are not yet acknowledged by the broker."""

    __slots__ = ("snapshot", "loaded_at", "token", "refresh")

    def __init__(self, snapshot: ProjectSnapshot, loaded_at: float, token: str | None, refresh: bool) -> None:
        self.snapshot = snapshot
        self.loaded_at = loaded_at
        self.token = token  # the shared-tier lock this worker holds for the project, if any
        self.refresh = refresh


@dataclass(slots=True)
class _FlightResult:
    snapshot: ProjectSnapshot | None  # the loaded rows; None when nothing was loaded
    verified: bool = True  # False: nothing loaded and nothing verified (a background refresh gave up)


@dataclass(slots=True)
class _Flight:
    task: asyncio.Task[_FlightResult]
    refresh: bool
    background: bool = False


@dataclass
class _Counters:
    l1_hits: int = 0
    l2_hits: int = 0
    misses: int = 0
    coalesced: int = 0
    absent_hits: int = 0
    loads_ok: int = 0
    loads_failed: int = 0
    evictions: int = 0
    background_refreshes: int = 0
    background_refresh_failures: int = 0


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
        self._observer = observer
        self._clock = clock
        self._ttl = settings.ttl_s
        self._refresh_after = settings.refresh_after_s
        self._absent_ttl = settings.absent_ttl_s
        self._max_entries = settings.max_entries
        # Jitter makes an entry look up to this much older; capped so a fresh entry is never
        # already due for its background refresh.
        self._jitter = min(settings.ttl_jitter_s, settings.refresh_after_s / 2)
        self._on_background_refresh = on_background_refresh
        self._shared = shared_tier
        # project_id -> stamp (float: monotonic time the entry counts as verified) or _Absent.
        self._entries: OrderedDict[str, float | _Absent] = OrderedDict()
        self._pending: dict[str, _Pending] = {}
        self._inflight: dict[str, _Flight] = {}
        self._refresh_not_before: dict[str, float] = {}  # back-off after a failed background refresh
        self._tasks: set[asyncio.Task[Any]] = set()
        self.counters = _Counters()
        if shared_tier is not None:
            shared_tier.on_remote_invalidation(lambda ids: self.invalidate(ids, broadcast=False))

    # ------------------------------------------------------------------ construction / lifecycle

    async def start(self) -> None:
        """Start the shared tier's listener (never fails because Redis is down: the cache then
        runs on its in-process tier)."""
        if self._shared is not None:
            await self._shared.start()

    async def close(self) -> None:
        """Stop background refreshes and the shared tier (its last writes get one timeout to land)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._shared is not None:
            await self._shared.close()

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
            stamp = self._entries.get(project_id)
            if stamp.__class__ is float:
                age = self._clock() - stamp
                if age < self._ttl:
                    self._entries.move_to_end(project_id)
                    self.counters.l1_hits += 1
                    if age >= self._refresh_after and self._on_background_refresh is not None:
                        self._maybe_background_refresh(project_id, load)
                    return _HIT
        return await self._verify_slow(project_id, load, refresh)

    async def _verify_slow(self, project_id: str, load: Loader, refresh: bool) -> Verification:
        c = self.counters
        while True:
            now = self._clock()
            entry = self._entries.get(project_id)
            if entry is not None:
                if entry.__class__ is _Absent:
                    if not refresh and now < entry.until:
                        self._entries.move_to_end(project_id)
                        c.absent_hits += 1
                        raise PermanentError(f"project {project_id} not found (cached)", error_type=NOT_FOUND)
                    if now >= entry.until:
                        del self._entries[project_id]
                elif now - entry >= self._ttl:  # type: ignore[operator]
                    del self._entries[project_id]
                elif not refresh:  # confirmed meanwhile (hot path raced a confirm)
                    return await self.verify(project_id, load)

            flight = self._inflight.get(project_id)
            if flight is not None:
                result = await asyncio.shield(flight.task)
                if result.snapshot is None:
                    if refresh or not result.verified:
                        continue  # that flight loaded nothing; this call must (re)load
                    c.l2_hits += 1
                    return _HIT
                c.coalesced += 1
                return Verification("coalesced", result.snapshot)

            pending = self._pending.get(project_id)
            if pending is not None and not refresh:
                if now - pending.loaded_at < self._ttl:
                    c.coalesced += 1
                    return Verification("coalesced", pending.snapshot)
                self._drop_pending(project_id)  # never confirmed nor abandoned: stale

            flight = self._start_flight(project_id, load, refresh=refresh)
            result = await asyncio.shield(flight.task)
            if result.snapshot is None:
                c.l2_hits += 1
                return _HIT
            c.misses += 1
            return Verification("loaded", result.snapshot)

    # ------------------------------------------------------------------ acknowledgement

    def confirm(self, project_id: str) -> None:
        """The broker acknowledged the message carrying this project's snapshot rows: a hit from now on.

        Call it only for a Verification that carried a snapshot. A project that is already a
        confirmed entry keeps its timestamp (a second confirm never extends its life).
        """
        pending = self._pending.pop(project_id, None)
        if pending is None:
            entry = self._entries.get(project_id)
            if entry.__class__ is float and self._clock() - entry < self._ttl:
                return
        self._set_confirmed(project_id)
        if self._shared is not None:
            self._shared.confirm(
                project_id,
                pending.token if pending is not None else None,
                notify=pending is not None and pending.refresh,
            )

    def abandon(self, project_id: str) -> None:
        """The message carrying the snapshot rows failed: forget the unconfirmed entry."""
        self._drop_pending(project_id)

    def invalidate(self, project_ids: Iterable[str] | None = None, *, broadcast: bool = True) -> int:
        """Drop entries (all when `project_ids` is None); returns how many were dropped.

        With the shared tier, the Redis keys are deleted too and every other worker is told to
        drop its in-process entries (unless `broadcast` is False, as for a received invalidation).
        """
        ids = None if project_ids is None else list(project_ids)
        dropped = self._invalidate_local(ids)
        if broadcast and self._shared is not None:
            self._shared.invalidate(ids)
        return dropped

    def _invalidate_local(self, ids: list[str] | None) -> int:
        if ids is None:
            dropped = len(self._entries) + len(self._pending)
            self._entries.clear()
            for project_id in list(self._pending):
                self._drop_pending(project_id)
            self._refresh_not_before.clear()
            return dropped
        dropped = 0
        for project_id in ids:
            if self._entries.pop(project_id, None) is not None:
                dropped += 1
            if project_id in self._pending:
                self._drop_pending(project_id)
                dropped += 1
            self._refresh_not_before.pop(project_id, None)
        return dropped

    # ------------------------------------------------------------------ inspection

    def stats(self) -> CacheStats:
        c = self.counters
        shared = self._shared
        return CacheStats(
            hits=c.l1_hits + c.l2_hits,
            misses=c.misses,
            coalesced=c.coalesced,
            loads_ok=c.loads_ok,
            loads_failed=c.loads_failed,
            evictions=c.evictions,
            size=len(self._entries),
            l2_hits=c.l2_hits,
            absent_hits=c.absent_hits,
            pending=len(self._pending),
            lock_waits=shared.counters.lock_waits if shared is not None else 0,
            background_refreshes=c.background_refreshes,
            background_refresh_failures=c.background_refresh_failures,
            redis_state="off" if shared is None else ("up" if shared.is_up else "down"),
            l2_misses=shared.counters.misses if shared is not None else 0,
            l2_errors=shared.counters.errors if shared is not None else 0,
        )

    def stats_line(self) -> str:
        """One line for the cycle-stats log: size and hit rate per tier."""
        s = self.stats()
        line = f"project_cache_size={s.size} hit_rate={s.hit_rate:.1%} (l1={s.l1_hit_rate:.1%} l2={s.l2_hit_rate:.1%})"
        if self._shared is not None:
            line += f" redis={s.redis_state}"
        return line

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Readiness check for the OpsServer. Redis being down never makes the worker unready:
        the worker carries on with its in-process tier; the details say so."""
        s = self.stats()
        details: dict[str, Any] = {"size": s.size, "pending": s.pending, "redis": s.redis_state}
        details["tier"] = "l1" if s.redis_state != "up" else "l1+l2"
        return True, details

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, project_id: object) -> bool:
        entry = self._entries.get(project_id)  # type: ignore[call-overload]
        return entry.__class__ is float and self._clock() - entry < self._ttl

    # ------------------------------------------------------------------ used by the tiers and warm start

    def prime(self, project_id: str, age_s: float = 0.0) -> bool:
        """Record a project verified `age_s` seconds ago (warm start, shared-tier answers).

        Returns False (and records nothing) when that is already past `ttl_s` or the project
        has a fresher entry.
        """
        if age_s >= self._ttl:
            return False
        stamp = self._clock() - age_s
        entry = self._entries.get(project_id)
        if entry.__class__ is float and entry >= stamp:
            return False
        self._put(project_id, stamp)
        return True

    def prime_absent(self, project_id: str, remaining_s: float) -> None:
        if remaining_s > 0:
            self._put(project_id, _Absent(self._clock() + remaining_s))

    def _put(self, project_id: str, value: float | _Absent) -> None:
        entries = self._entries
        entries[project_id] = value
        entries.move_to_end(project_id)
        if len(entries) > self._max_entries:
            entries.popitem(last=False)
            self.counters.evictions += 1

    def _set_confirmed(self, project_id: str) -> None:
        jitter = random.random() * self._jitter if self._jitter else 0.0
        self._put(project_id, self._clock() - jitter)
        self._refresh_not_before.pop(project_id, None)

    def _drop_pending(self, project_id: str) -> None:
        pending = self._pending.pop(project_id, None)
        if pending is not None and pending.token is not None and self._shared is not None:
            self._shared.release(project_id, pending.token)

    # ------------------------------------------------------------------ loading

    def _start_flight(self, project_id: str, load: Loader, *, refresh: bool) -> _Flight:
        task = asyncio.get_running_loop().create_task(self._fly(project_id, load, refresh), name=f"project-cache-load-{project_id}")
        flight = _Flight(task, refresh)
        self._inflight[project_id] = flight
        task.add_done_callback(_retrieve_exception)
        return flight

    async def _fly(self, project_id: str, load: Loader, refresh: bool) -> _FlightResult:
        """One fetch of a project, shared by every caller that asks meanwhile."""
        token: str | None = None
        try:
            if self._shared is not None:
                answer = await self._shared.before_load(project_id, refresh=refresh)
                if answer.verified_age is not None:
                    self.prime(project_id, answer.verified_age)
                    return _FlightResult(None, verified=True)
                if answer.absent_remaining is not None:
                    self.prime_absent(project_id, answer.absent_remaining)
                    raise PermanentError(f"project {project_id} not found (cached)", error_type=NOT_FOUND)
                token = answer.token
            snapshot = await self._timed_load(project_id, load, token)
            if refresh:
                self._entries.pop(project_id, None)
            old = self._pending.pop(project_id, None)
            if old is not None and old.token is not None and old.token != token and self._shared is not None:
                self._shared.release(project_id, old.token)
            self._pending[project_id] = _Pending(snapshot, self._clock(), token, refresh)
            return _FlightResult(snapshot)
        finally:
            if self._inflight.get(project_id) is not None and self._inflight[project_id].task is asyncio.current_task():
                del self._inflight[project_id]

    def _observe_load(self, seconds: float, *, ok: bool) -> None:
        if self._observer is not None:
            self._observer(self.name, seconds, ok)

    async def _timed_load(self, project_id: str, load: Loader, token: str | None) -> ProjectSnapshot:
        c = self.counters
        started = time.perf_counter()
        try:
            snapshot = await load()
        except PermanentError as exc:
            c.loads_failed += 1
            self._observe_load(time.perf_counter() - started, ok=False)
            if exc.error_type == NOT_FOUND and self._absent_ttl > 0:
                self.prime_absent(project_id, self._absent_ttl)
                if self._shared is not None:
                    self._shared.store_absent(project_id, token, self._absent_ttl)
                    token = None
            if token is not None and self._shared is not None:
                self._shared.release(project_id, token)
            raise
        except BaseException:
            c.loads_failed += 1
            self._observe_load(time.perf_counter() - started, ok=False)
            if token is not None and self._shared is not None:
                self._shared.release(project_id, token)
            raise
        c.loads_ok += 1
        self._observe_load(time.perf_counter() - started, ok=True)
        return snapshot

    # ------------------------------------------------------------------ freshness

    def _maybe_background_refresh(self, project_id: str, load: Loader) -> None:
        if project_id in self._inflight:
            return
        not_before = self._refresh_not_before.get(project_id)
        if not_before is not None and self._clock() < not_before:
            return
        # Until this refresh ends (or backs off), further hits do not start another one.
        self._refresh_not_before[project_id] = self._clock() + self._ttl
        task = asyncio.get_running_loop().create_task(
            self._background_refresh(project_id, load), name=f"project-cache-refresh-{project_id}"
        )
        self._inflight[project_id] = _Flight(task, refresh=True, background=True)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_retrieve_exception)

    async def _background_refresh(self, project_id: str, load: Loader) -> _FlightResult:
        c = self.counters
        token: str | None = None
        try:
            if self._shared is not None:
                answer = await self._shared.before_refresh(project_id, self._refresh_after)
                if answer.verified_age is not None:  # another worker refreshed it: adopt its time
                    self.prime(project_id, answer.verified_age)
                    self._refresh_not_before.pop(project_id, None)
                    return _FlightResult(None, verified=True)
                if answer.busy:  # another worker is refreshing it; its confirm invalidates our entry
                    self._refresh_not_before[project_id] = self._clock() + min(self._refresh_after, self.settings.lock_wait_s)
                    return _FlightResult(None, verified=False)
                token = answer.token
            snapshot = await self._timed_load(project_id, load, token)  # releases the lock on failure
            assert self._on_background_refresh is not None
            try:
                await self._on_background_refresh(snapshot)
            except BaseException:
                if token is not None and self._shared is not None:
                    self._shared.release(project_id, token)
                raise
            c.background_refreshes += 1
            self._set_confirmed(project_id)
            if self._shared is not None:
                self._shared.confirm(project_id, token, notify=True)
            return _FlightResult(snapshot, verified=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed refresh keeps the (still valid) entry
            c.background_refresh_failures += 1
            self._refresh_not_before[project_id] = self._clock() + min(self._refresh_after / 4, 60.0)
            log.warning("project_cache_refresh_failed", project_id=project_id, error=str(exc), error_type=type(exc).__name__)
            return _FlightResult(None, verified=False)
        finally:
            flight = self._inflight.get(project_id)
            if flight is not None and flight.task is asyncio.current_task():
                del self._inflight[project_id]


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    """Mark a flight's exception as seen: its callers got it, or none are left to get it."""
    if not task.cancelled():
        task.exception()


class NoCache:
    """The same interface with no caching and no coalescing: every verify() loads.

    The naive baseline for benchmarks (one export call per event)."""

    def __init__(self, settings: CacheSettings | None = None, *, clock: Callable[[], float] = time.monotonic, shared_tier: object = None) -> None:
        self.settings = settings
        self.counters = _Counters()

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
        return Verification("loaded", snapshot)

    def confirm(self, project_id: str) -> None:
        return None

    def abandon(self, project_id: str) -> None:
        return None

    def invalidate(self, project_ids: Iterable[str] | None = None) -> int:
        return 0

    def stats(self) -> CacheStats:
        c = self.counters
        return CacheStats(misses=c.misses, loads_ok=c.loads_ok, loads_failed=c.loads_failed)

    def stats_line(self) -> str:
        return "project_cache=off"

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return True, {"cache": "off"}
