"""The shared Redis tier (L2) of the ProjectCache: one project fetch per group, not per worker.

Keys (prefix from `CacheSettings.key_prefix`, default ``claimx:v1``)::

    <prefix>:project:<id>   JSON {"verified_at": <epoch s>, "absent": false}, PX ttl (less jitter)
    <prefix>:lock:<id>      owner token, SET NX PX lock_lease_ms, released by compare-and-delete
    <prefix>:invalidate     pub/sub: {"origin": <tier id>, "ids": [...] | null}
    <prefix>:ready          pub/sub: a project id whose lock was just released (waiters re-check)

The flow of an in-process miss (`before_load`): GET the key (a hit if another worker verified
the project within ttl); else take the lock and load; if another worker holds the lock, wait
for its result (woken by `<prefix>:ready`, re-checking with short polls, at most
`lock_wait_s`): the key appears (a hit: that worker's rows are already acknowledged), or the
lock goes away without a key (abandoned, or the owner died and the lease expired: try again).
The owner writes the key only in `confirm()`, i.e. after the broker acknowledged the rows.

Redis failing is routine: every call has a hard timeout of `socket_timeout_s`, the client
does not retry, and a circuit breaker stops calls while Redis is down. Meanwhile the cache
runs on its in-process tier alone; the pub/sub listener keeps trying to reconnect, and when
it is back the in-process entries are dropped (invalidations may have been missed) and the
shared tier is used again.

Whatever is in Redis may have been put there by anyone who can reach it: an invalidation
message is validated (size, UTF-8, shape, ids) and a bad one is skipped with a log line and
`claimx_project_cache_pubsub_rejected_total{reason}`; an entry whose `verified_at` is not a
finite time at most CLOCK_SKEW_S ahead of ours is a miss. Should the listener fail anyway,
it is restarted (`..._listener_restarts_total`), and the tier does not count as up meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated, Any, TypeVar

import redis.asyncio as aioredis
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from kafka_pipeline.claimx.api.client import API_ID_PATTERN
from kafka_pipeline.claimx.cache.shared import LOCAL, SharedAnswer, TierCounters, TierState
from kafka_pipeline.claimx.cache.store import entry_jitter_s
from kafka_pipeline.config import CacheSettings
from kafka_pipeline.observability.logging import get_logger
from kafka_pipeline.resilience.circuit_breaker import CircuitBreaker, State

log = get_logger(__name__)

T = TypeVar("T")

# Release the lock only if we still own it, then wake the waiters.
UNLOCK_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
end
redis.call('publish', ARGV[2], ARGV[3])
return 1
"""

# Write the verified (or absent) entry, release our lock if we hold it, wake the waiters and,
# for a refresh, tell the other workers to drop their older in-process entry.
CONFIRM_LUA = """
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' and redis.call('get', KEYS[2]) == ARGV[3] then
  redis.call('del', KEYS[2])
end
redis.call('publish', ARGV[4], ARGV[5])
if ARGV[6] ~= '' then
  redis.call('publish', ARGV[6], ARGV[7])
end
return 1
"""

# One round trip for an in-process miss: the shared entry if there is one, else try the lock.
# Atomic, so a worker never takes the lock just after the owner wrote the entry and released it.
GET_OR_LOCK_LUA = """
local value = redis.call('get', KEYS[1])
if value then
  return {1, value}
end
if redis.call('set', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2, ''}
end
return {0, ''}
"""

LISTEN_POLL_S = 1.0
PROBE_INTERVAL_S = 0.1
RECONNECT_MAX_S = 2.0
CLOCK_SKEW_S = 5.0  # an entry stamped further ahead of our clock than this is not believed
MAX_MESSAGE_BYTES = 1_048_576  # an invalidation of many ids fits; anything longer is not ours
MAX_INVALIDATION_IDS = 10_000

PUBSUB_REJECTED = Counter(
    "claimx_project_cache_pubsub_rejected", "Pub/sub messages skipped because they are not valid, by reason.", ["reason"]
)
LISTENER_RESTARTS = Counter(
    "claimx_project_cache_listener_restarts", "Times the pub/sub listener failed unexpectedly and was restarted."
)

ProjectId = Annotated[str, StringConstraints(pattern=API_ID_PATTERN)]


class InvalidationMessage(BaseModel):
    """`<prefix>:invalidate`: who sent it and which ids to drop (None: all)."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    origin: Annotated[str, StringConstraints(max_length=64)]
    ids: Annotated[list[ProjectId], Field(max_length=MAX_INVALIDATION_IDS)] | None


def parse_invalidation(data: Any) -> InvalidationMessage | str:
    """The message, or the reason it is rejected (`size`, `utf8`, `json`, `shape`)."""
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError:
            return "utf8"
    if not isinstance(data, bytes):
        return "shape"
    if len(data) > MAX_MESSAGE_BYTES:
        return "size"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "utf8"
    try:
        return InvalidationMessage.model_validate_json(data)
    except ValidationError as exc:  # pydantic-core parses JSON itself: depth is bounded, no RecursionError
        return "json" if any(error["type"] == "json_invalid" for error in exc.errors()) else "shape"


class RedisUnavailable(Exception):
    """Redis did not answer in time, refused, or the breaker is open: use the in-process tier."""


def make_pool(settings: CacheSettings, max_connections: int = 16) -> aioredis.BlockingConnectionPool:
    """Short timeouts, no client retries, and a bounded pool where a burst waits for a free
    connection (within the call's timeout) instead of failing."""
    assert settings.redis_url is not None, "the Redis tier needs cache.redis_url"
    return aioredis.BlockingConnectionPool.from_url(
        settings.redis_url.get_secret_value(),
        max_connections=max_connections,
        timeout=settings.socket_timeout_s,
        **_connection_options(settings),
        decode_responses=True,
    )


def make_listener_pool(settings: CacheSettings) -> aioredis.ConnectionPool:
    """The pub/sub listener's own pool: raw bytes (it checks UTF-8 itself; redis-py would raise
    mid-read), and unbounded, so a connection lost in a hung close never blocks a resubscribe."""
    assert settings.redis_url is not None
    return aioredis.ConnectionPool.from_url(settings.redis_url.get_secret_value(), **_connection_options(settings), decode_responses=False)


def _connection_options(settings: CacheSettings) -> dict[str, Any]:
    return {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
        "retry": Retry(NoBackoff(), 0),  # a failed call goes to the breaker, not into a retry loop
        "health_check_interval": 0,
    }


def _quietly_done(call: asyncio.Future[Any]) -> None:
    if not call.cancelled():
        call.exception()  # an abandoned command's error is known already: not "never retrieved"


class RedisTier:
    """The shared tier of the ProjectCache (it implements `shared.SharedTier`)."""

    def __init__(
        self,
        settings: CacheSettings,
        *,
        client: aioredis.Redis | None = None,
        wall_clock: Callable[[], float] = time.time,
        breaker_failure_threshold: int | None = None,
        breaker_cooldown_s: float | None = None,
        max_connections: int | None = None,
    ) -> None:
        """The keyword arguments override the settings (tests use small ones)."""
        if client is None and not settings.redis_url:
            raise ValueError("RedisTier needs settings.redis_url or a client")
        self.settings = settings
        self._timeout = settings.socket_timeout_s
        max_connections = max_connections or settings.redis_max_connections
        # Commands use at most `max_connections` at once; the pub/sub listener has its own pool.
        self._client = client or aioredis.Redis(connection_pool=make_pool(settings, max_connections))
        self._listen_client = client or aioredis.Redis(connection_pool=make_listener_pool(settings))
        self._slots = asyncio.Semaphore(max_connections)
        self._wall = wall_clock
        self._breaker = CircuitBreaker(
            "redis",
            failure_threshold=breaker_failure_threshold or settings.redis_breaker_failure_threshold,
            cooldown_s=breaker_cooldown_s or settings.redis_breaker_cooldown_s,
            on_change=self._on_breaker_change,
        )
        self._origin = uuid.uuid4().hex
        prefix = settings.key_prefix
        self._key_prefix = f"{prefix}:project:"
        self._lock_prefix = f"{prefix}:lock:"
        self.invalidate_channel = f"{prefix}:invalidate"
        self.ready_channel = f"{prefix}:ready"
        self._unlock = self._client.register_script(UNLOCK_LUA)
        self._get_or_lock_script = self._client.register_script(GET_OR_LOCK_LUA)
        self._confirm_script = self._client.register_script(CONFIRM_LUA)
        self.counters = TierCounters()
        # Told of invalidations that came from other workers (and of a reconnect: None = all).
        self._on_remote_invalidation: Callable[[list[str] | None], object] | None = None
        self._ready_events: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._pubsub_reset: asyncio.Event | None = None
        self.listening = False
        self.reconnects = 0
        self.invalidations_received = 0
        self.messages_rejected = 0
        self.listener_restarts = 0

    def on_remote_invalidation(self, callback: Callable[[list[str] | None], object]) -> None:
        """`callback(ids)` runs for every invalidation another worker broadcast (None: all)."""
        self._on_remote_invalidation = callback

    def key(self, project_id: str) -> str:
        return self._key_prefix + project_id

    def lock_key(self, project_id: str) -> str:
        return self._lock_prefix + project_id

    @property
    def is_up(self) -> bool:
        """Redis answers and invalidations reach us: without the listener the shared tier is not up."""
        listener = self._listener
        return self._breaker.state == "closed" and self.listening and listener is not None and not listener.done()

    @property
    def state(self) -> TierState:
        return "up" if self.is_up else "down"

    @property
    def breaker_state(self) -> State:
        return self._breaker.state

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the pub/sub listener: returns after its first attempt to subscribe, whether or not
        Redis answered (if not, the listener keeps trying in the background)."""
        if self._listener is None:
            self._pubsub_reset = asyncio.Event()
            subscribed = asyncio.get_running_loop().create_future()
            self._listener = asyncio.create_task(self._supervise(subscribed), name="project-cache-redis-listener")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(subscribed), self._timeout * 3)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.wait([self._listener])  # whatever ended it, stopping is not the place to raise it
            self._listener = None
            self.listening = False
        if self._tasks:  # let the last confirms/releases reach Redis (each bounded by the timeout)
            await asyncio.wait(list(self._tasks), timeout=self._timeout * 2)
        for task in list(self._tasks):
            task.cancel()
        for client in dict.fromkeys([self._client, self._listen_client]):
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    # ------------------------------------------------------------------ calls, bounded and broken-circuit aware

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        """One Redis call, `socket_timeout_s` at most in all: the wait for a free connection slot
        (this worker's own burst, so not a Redis failure) and the call itself (a failure for
        the breaker when it errs or runs out of time)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise RedisUnavailable("no free redis connection in time") from None
        try:
            if not self._breaker.allow():
                raise RedisUnavailable("redis circuit open")
            # The command runs in a task of its own so that the caller has its answer at the
            # deadline: redis-py cleans up a cancelled command by closing its connection, and
            # against a hung server that close can wait out a timeout of its own (a second
            # socket_timeout_s for the caller). The cleanup goes on in the background.
            call = asyncio.ensure_future(make())
            try:
                await asyncio.wait((call,), timeout=max(0.0, deadline - loop.time()))
            except asyncio.CancelledError:
                self._abandon(call)
                self._breaker.record_failure()  # frees a half-open trial slot; the caller was cancelled
                raise
            if not call.done():
                self._abandon(call)
                error: BaseException | None = TimeoutError(f"no answer within {self._timeout:g} s")
            else:
                error = call.exception()
            if error is not None:
                if not isinstance(error, RedisError | OSError | TimeoutError):
                    raise error
                self._breaker.record_failure()
                self.counters.errors += 1
                raise RedisUnavailable(f"{type(error).__name__}: {error}") from error
            self._breaker.record_success()
            return call.result()
        finally:
            self._slots.release()

    def _abandon(self, call: asyncio.Future[Any]) -> None:
        """Cancel a command nobody waits for any more; close() waits for its cleanup."""
        call.cancel()
        self._tasks.add(call)
        call.add_done_callback(_quietly_done)
        call.add_done_callback(self._tasks.discard)

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_breaker_change(self, name: str, old: State, new: State) -> None:
        if old == "closed" and new == "open":
            log.warning("project_cache_redis_unavailable", detail="continuing on the in-process tier")
            if self._pubsub_reset is not None:
                self._pubsub_reset.set()  # reconnect the listener too: it may have missed invalidations
            # Pooled connections to the Redis that went away are dead; after a restart each would
            # fail its first command and re-open the breaker. Start over with fresh connections.
            self._spawn(self._client.connection_pool.disconnect(), "redis-pool-reset")
        elif new == "closed":
            log.info("project_cache_redis_available", detail="shared tier in use again")

    # ------------------------------------------------------------------ reading

    def _parse(self, raw: str | bytes | None) -> SharedAnswer | None:
        if raw is None:
            return None
        try:
            value = json.loads(raw)
            verified_at, absent = value["verified_at"], value.get("absent", False)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return None  # not ours or damaged: treat as a miss (a confirm overwrites it)
        if not isinstance(verified_at, int | float) or isinstance(verified_at, bool) or not isinstance(absent, bool):
            return None
        now = self._wall()
        if not math.isfinite(verified_at) or verified_at > now + CLOCK_SKEW_S:
            return None  # a forged or corrupt stamp must not make an entry live for ever
        age = max(0.0, now - verified_at)
        if absent:
            remaining = self.settings.absent_ttl_s - age
            return SharedAnswer(absent_remaining=remaining) if remaining > 0 else None
        return SharedAnswer(verified_age=age) if age < self.settings.ttl_s else None

    async def lookup(self, project_id: str) -> SharedAnswer | None:
        """The project's shared entry, None when there is none. Raises RedisUnavailable."""
        raw: bytes | str | None = await self._call(lambda: self._client.get(self.key(project_id)))
        return self._parse(raw.decode() if isinstance(raw, bytes) else raw)

    async def _try_lock(self, project_id: str) -> str | None:
        token = uuid.uuid4().hex
        acquired = await self._call(
            lambda: self._client.set(self.lock_key(project_id), token, nx=True, px=self.settings.lock_lease_ms)
        )
        return token if acquired else None

    async def _peek(self, project_id: str) -> tuple[SharedAnswer | None, bool]:
        async def both() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(self.key(project_id))
                pipe.exists(self.lock_key(project_id))
                return await pipe.execute()

        raw, locked = await self._call(both)
        return self._parse(raw), bool(locked)

    async def _get_or_lock(self, project_id: str) -> tuple[SharedAnswer | None, str | None]:
        """(the shared answer, None) if the entry exists; (None, token) if we took the lock;
        (None, None) if another worker holds it. Raises RedisUnavailable."""
        token = uuid.uuid4().hex
        found, raw = await self._call(
            lambda: self._get_or_lock_script(
                keys=[self.key(project_id), self.lock_key(project_id)], args=[token, self.settings.lock_lease_ms]
            )
        )
        if int(found) == 1:
            answer = self._parse(raw)
            if answer is not None:
                return answer, None
            # Expired by our clock (or damaged): a miss, and the next confirm overwrites it.
            return None, await self._try_lock(project_id)
        return None, token if int(found) == 2 else None

    async def before_load(self, project_id: str, *, refresh: bool) -> SharedAnswer:
        """Decide an in-process miss: a shared hit or absence, this worker's lock, or LOCAL.

        Never raises for Redis trouble (answers LOCAL). Waits for another worker's load at
        most `lock_wait_s`, then loads itself.
        """
        counters = self.counters
        try:
            if refresh:  # a refresh loads regardless; the lock only spares the others a load
                token = await self._try_lock(project_id)
                return SharedAnswer(token=token) if token is not None else LOCAL
            deadline = asyncio.get_running_loop().time() + self.settings.lock_wait_s
            waited = False
            while True:
                found, token = await self._get_or_lock(project_id)
                if found is not None:
                    return found
                if token is not None:
                    if not waited:
                        counters.misses += 1
                    return SharedAnswer(token=token)
                if not waited:
                    counters.lock_waits += 1
                    waited = True
                found, free = await self._wait(project_id, deadline)
                if found is not None:
                    return found
                if not free:  # waited lock_wait_s: the owner is too slow, load without the lock
                    log.info("project_cache_lock_wait_timeout", project_id=project_id, waited_s=self.settings.lock_wait_s)
                    return LOCAL
        except RedisUnavailable:
            return LOCAL

    async def _wait(self, project_id: str, deadline: float) -> tuple[SharedAnswer | None, bool]:
        """Wait for the lock owner: (answer, _) when the entry appears, (None, True) when the
        lock is gone without one, (None, False) at the deadline."""
        loop = asyncio.get_running_loop()
        event = self._ready_events.setdefault(project_id, asyncio.Event())
        poll = 0.05  # the ready message normally wakes us first; polls catch a lost one or an expired lease
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None, False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(poll, remaining))
                event.clear()
                found, locked = await self._peek(project_id)
                if found is not None:
                    return found, True
                if not locked:
                    return None, True
                poll = min(poll * 2, 0.25)
        finally:
            if self._ready_events.get(project_id) is event:
                del self._ready_events[project_id]

    async def before_refresh(self, project_id: str, refresh_after_s: float) -> SharedAnswer:
        """Decide a background refresh: adopt a fresher shared entry, skip (busy), or lock and load."""
        try:
            found = await self.lookup(project_id)
            if found is not None and found.verified_age is not None and found.verified_age < refresh_after_s:
                return found
            token = await self._try_lock(project_id)
            return SharedAnswer(token=token) if token is not None else SharedAnswer(busy=True)
        except RedisUnavailable:
            return LOCAL

    # ------------------------------------------------------------------ writing (fire and forget: never block the caller)

    def _entry_px(self) -> int:
        return max(1, int((self.settings.ttl_s - entry_jitter_s(self.settings)) * 1000))

    def confirm(self, project_id: str, token: str | None, *, notify: bool) -> None:
        """The project's rows were acknowledged: write the shared entry, release the lock, wake
        waiters; `notify` (a refresh) also tells the other workers to drop their older entry."""
        value = json.dumps({"verified_at": self._wall(), "absent": False})
        self._spawn(self._write(project_id, value, self._entry_px(), token, notify), f"project-cache-confirm-{project_id}")

    def store_absent(self, project_id: str, token: str | None, ttl_s: float) -> None:
        value = json.dumps({"verified_at": self._wall(), "absent": True})
        self._spawn(self._write(project_id, value, max(1, int(ttl_s * 1000)), token, False), f"project-cache-absent-{project_id}")

    async def _write(self, project_id: str, value: str, px: int, token: str | None, notify: bool) -> None:
        message = json.dumps({"origin": self._origin, "ids": [project_id]}) if notify else ""
        with contextlib.suppress(RedisUnavailable):
            await self._call(
                lambda: self._confirm_script(
                    keys=[self.key(project_id), self.lock_key(project_id)],
                    args=[value, px, token or "", self.ready_channel, project_id, self.invalidate_channel if notify else "", message],
                )
            )

    def release(self, project_id: str, token: str) -> None:
        """Give up the lock without an entry (load failed, message abandoned): waiters load."""

        async def unlock() -> None:
            with contextlib.suppress(RedisUnavailable):
                await self._call(lambda: self._unlock(keys=[self.lock_key(project_id)], args=[token, self.ready_channel, project_id]))

        self._spawn(unlock(), f"project-cache-unlock-{project_id}")

    def invalidate(self, project_ids: list[str] | None) -> None:
        """Delete the shared entries (all when None) and tell every other worker to drop its own."""
        self._spawn(self.invalidate_now(project_ids), "project-cache-invalidate")

    async def invalidate_now(self, project_ids: Iterable[str] | None) -> int:
        """As `invalidate`, awaited; returns the shared entries deleted (0 when Redis is down)."""
        ids = None if project_ids is None else list(project_ids)
        message = json.dumps({"origin": self._origin, "ids": ids})
        try:
            if ids is None:
                deleted = await self._delete_all()
            elif ids:
                deleted = await self._call(lambda: self._client.delete(*(self.key(i) for i in ids)))
            else:
                return 0
            await self._call(lambda: self._client.publish(self.invalidate_channel, message))
        except RedisUnavailable:
            log.warning("project_cache_invalidate_not_shared", detail="redis unavailable; only this worker dropped its entries")
            return 0
        return int(deleted)

    async def _delete_all(self) -> int:
        deleted = 0
        cursor: int | str = 0
        while True:
            cursor, keys = await self._call(lambda c=cursor: self._client.scan(cursor=c, match=f"{self._key_prefix}*", count=1000))  # type: ignore[misc]
            if keys:
                deleted += await self._call(lambda k=keys: self._client.unlink(*k))  # type: ignore[misc]
            if int(cursor) == 0:
                return deleted

    # ------------------------------------------------------------------ pub/sub listener

    async def _supervise(self, subscribed: asyncio.Future[None]) -> None:
        """Run the listener for as long as the tier runs: an unexpected failure is logged, counted
        and followed by a fresh listener (which treats the in-process entries as stale)."""
        resumed = False
        delay = 0.05
        while True:
            try:
                await self._listen(subscribed, resumed=resumed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever it was, invalidations must keep arriving
                self.listening = False
                self.listener_restarts += 1
                LISTENER_RESTARTS.inc()
                log.error("project_cache_redis_listener_failed", error=f"{type(exc).__name__}: {exc}"[:300], detail="restarting it")
                if not subscribed.done():
                    subscribed.set_result(None)
                resumed = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)

    async def _listen(self, subscribed: asyncio.Future[None], *, resumed: bool = False) -> None:
        """Keep one subscription to the invalidate and ready channels, reconnecting forever.

        A resubscription after a failed one means Redis was unreachable for a while:
        invalidations may have been missed, so the in-process entries are dropped. A failing
        listener also counts against the breaker, so an idle worker notices Redis is gone.
        """
        assert self._pubsub_reset is not None
        failed = resumed
        delay = 0.05
        while True:
            pubsub = self._listen_client.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self._timeout * 2):
                    await pubsub.subscribe(self.invalidate_channel, self.ready_channel)
                self._pubsub_reset.clear()
                self.listening = True
                delay = 0.05
                if failed:
                    self._on_reconnected()
                    failed = False
                if not subscribed.done():
                    subscribed.set_result(None)
                while not self._pubsub_reset.is_set():
                    recovering = self._breaker.state != "closed"
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=PROBE_INTERVAL_S if recovering else LISTEN_POLL_S
                    )
                    if message is not None:
                        self._on_message(message)
                    elif recovering:  # no traffic needed to notice Redis is back: probe through the breaker
                        with contextlib.suppress(RedisUnavailable):
                            await self._call(self._client.ping)
                # Commands failed (breaker opened): resubscribe on a fresh connection.
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                if not subscribed.done():
                    subscribed.set_result(None)  # start() does not wait for Redis
                if self.listening:
                    log.debug("project_cache_redis_listener_lost", error=f"{type(exc).__name__}: {exc}")
                self.listening = False
                failed = True
                self._breaker.record_failure()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), self._timeout)

    def _on_reconnected(self) -> None:
        self.reconnects += 1
        if self._on_remote_invalidation is not None:
            dropped = self._on_remote_invalidation(None)
            log.info("project_cache_redis_reconnected", dropped_entries=dropped, detail="in-process entries treated as stale")

    def _on_message(self, message: dict[str, Any]) -> None:
        channel, data = _text(message.get("channel")), message.get("data")
        if channel == self.ready_channel:
            event = self._ready_events.get(_text(data) or "")
            if event is not None:
                event.set()
        elif channel == self.invalidate_channel and self._on_remote_invalidation is not None:
            parsed = parse_invalidation(data)
            if isinstance(parsed, str):
                self.messages_rejected += 1
                PUBSUB_REJECTED.labels(parsed).inc()
                size = len(data) if isinstance(data, bytes | str) else 0
                log.warning("project_cache_invalidation_rejected", reason=parsed, size=size, channel=channel)
                return
            if parsed.origin == self._origin:
                return
            self.invalidations_received += 1
            self._on_remote_invalidation(parsed.ids)


def _text(value: Any) -> str | None:
    """A channel name or ready-message payload as text (the listener reads raw bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None
