"""The ProjectCache across workers: several caches (one per simulated worker) sharing a real Redis.

Also warm start from a real Delta table and the admin routes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import httpx
import pyarrow as pa
import pytest
import redis.asyncio as aioredis
from deltalake import write_deltalake
from prometheus_client import REGISTRY, generate_latest

from kafka_pipeline.claimx.cache.admin import cache_routes
from kafka_pipeline.claimx.cache.factory import build_project_cache
from kafka_pipeline.claimx.cache.metrics import CacheMetrics
from kafka_pipeline.claimx.cache.project_cache import ProjectCache, ProjectSnapshot, Verification
from kafka_pipeline.claimx.cache.redis_tier import RedisTier
from kafka_pipeline.claimx.cache.warm import delta_warmer, warm_from_delta
from kafka_pipeline.config import CacheSettings, DeltaSettings
from kafka_pipeline.errors import PermanentError
from kafka_pipeline.runtime.ops_server import OpsServer
from tests.fixtures.redis import RedisServer

SOCKET_TIMEOUT_S = 0.5  # the outage tests check that no call waits longer than about this
RELAXED_TIMEOUT_S = 1.0  # the counting tests: a busy test machine must not look like a Redis outage


class CountingApi:
    """Stands in for the project export: counts calls per project, takes `delay` seconds."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.calls: dict[str, int] = {}
        self.not_found: set[str] = set()

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def loader(self, project_id: str) -> Callable[[], Awaitable[ProjectSnapshot]]:
        async def load() -> ProjectSnapshot:
            self.calls[project_id] = self.calls.get(project_id, 0) + 1
            await asyncio.sleep(self.delay)
            if project_id in self.not_found:
                raise PermanentError(f"404 {project_id}", error_type="NotFound")
            version = self.calls[project_id]
            return ProjectSnapshot(project_id, {"claimx_projects": [{"project_id": project_id, "status": f"v{version}"}]})

        return load


class FakeClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def wall(self) -> float:
        return time.time() + self.offset


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
    clock: FakeClock | None = None,
    on_background_refresh: Callable[[ProjectSnapshot], Awaitable[None]] | None = None,
) -> ProjectCache:
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


async def ack_then_confirm(cache: ProjectCache, project_id: str, result: Verification, ack_s: float = 0.002) -> None:
    """What the enrichment worker does: emit the rows, wait for the broker ack, confirm."""
    if result.snapshot is not None:
        await asyncio.sleep(ack_s)
        cache.confirm(project_id)


async def event(cache: ProjectCache, api: CountingApi, project_id: str, *, refresh: bool = False) -> Verification:
    result = await cache.verify(project_id, api.loader(project_id), refresh=refresh)
    await ack_then_confirm(cache, project_id, result)
    return result


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def start_workers(settings: CacheSettings, count: int = 3) -> list[ProjectCache]:
    caches = [make_worker(settings) for _ in range(count)]
    for cache in caches:
        await cache.start()
    return caches


@pytest.fixture
async def workers(redis_url: str) -> AsyncIterator[list[ProjectCache]]:
    """Three simulated workers sharing one Redis."""
    caches = await start_workers(settings_for(redis_url))
    yield caches
    for cache in caches:
        await cache.close()


@pytest.fixture
async def outage_workers(redis_url: str) -> AsyncIterator[list[ProjectCache]]:
    """Three workers with the short production socket timeout, for the outage tests."""
    caches = await start_workers(settings_for(redis_url, socket_timeout_s=SOCKET_TIMEOUT_S))
    yield caches
    for cache in caches:
        await cache.close()


async def test_three_workers_bursting_the_same_projects_load_each_once(workers: list[ProjectCache]) -> None:
    api = CountingApi(delay=0.01)
    projects = [f"p{i}" for i in range(100)]

    async def burst(cache: ProjectCache) -> list[Verification]:
        return await asyncio.gather(*(event(cache, api, pid) for pid in projects for _ in range(5)))

    results = await asyncio.gather(*(burst(cache) for cache in workers))
    assert api.total == 100, f"{api.total} loads for 100 projects"
    assert set(api.calls.values()) == {1}
    outcomes = [r.outcome for per_worker in results for r in per_worker]
    assert outcomes.count("loaded") == 100
    assert sum(c.stats().l2_hits for c in workers) > 0
    assert sum(c.stats().lock_waits for c in workers) > 0
    # A second round is all hits, in every worker, without touching the API.
    again = await asyncio.gather(*(burst(cache) for cache in workers))
    assert {r.outcome for per_worker in again for r in per_worker} == {"hit"}
    assert api.total == 100
    line = workers[0].stats_line()
    assert line.startswith("project_cache_size=100 hit_rate=") and "l2=" in line and "redis=up" in line


async def test_not_found_is_shared_between_workers(workers: list[ProjectCache]) -> None:
    api = CountingApi()
    api.not_found.add("gone")
    for cache in workers:
        with pytest.raises(PermanentError) as err:
            await cache.verify("gone", api.loader("gone"))
        assert err.value.error_type == "NotFound"
        await asyncio.sleep(0.05)  # the absent marker is written in the background
    assert api.calls == {"gone": 1}


async def test_waiters_load_themselves_when_the_owner_abandons(workers: list[ProjectCache]) -> None:
    api = CountingApi(delay=0.05)
    first, second = workers[0], workers[1]
    owner = asyncio.ensure_future(first.verify("p1", api.loader("p1")))
    await asyncio.sleep(0.02)  # first holds the lock and is loading
    waiter = asyncio.ensure_future(second.verify("p1", api.loader("p1")))
    assert (await owner).outcome == "loaded"
    first.abandon("p1")  # the message failed: the lock is released without an entry
    result = await waiter
    assert result.outcome == "loaded" and api.calls == {"p1": 2}


async def test_a_dead_owner_is_replaced_after_its_lease(redis_url: str) -> None:
    settings = settings_for(redis_url, lock_lease_ms=300, lock_wait_s=3.0)
    cache = make_worker(settings)
    await cache.start()
    try:
        # Another worker took the lock and died: nobody releases it.
        raw = aioredis.Redis.from_url(redis_url)
        await raw.set(f"{settings.key_prefix}:lock:p1", "dead-worker", px=settings.lock_lease_ms)
        await raw.aclose()
        api = CountingApi()
        started = time.monotonic()
        result = await cache.verify("p1", api.loader("p1"))
        waited = time.monotonic() - started
        assert result.outcome == "loaded" and api.calls == {"p1": 1}
        assert 0.2 < waited < 1.0
    finally:
        await cache.close()


async def test_invalidation_on_one_worker_reaches_the_others(workers: list[ProjectCache]) -> None:
    api = CountingApi()
    a, b, c = workers
    for cache in workers:
        await event(cache, api, "p1")
    assert api.total == 1 and all("p1" in cache for cache in workers)
    assert a.invalidate(["p1"]) == 1
    await eventually(lambda: "p1" not in b and "p1" not in c, timeout_s=2.0)
    assert (await event(b, api, "p1")).outcome == "loaded"  # the shared entry is gone too
    assert api.total == 2
    await asyncio.sleep(0.05)
    # A refresh (PROJECT_CREATED) on one worker: the others drop their entry and take the
    # fresh shared one, without loading.
    await event(c, api, "p1")
    assert (await event(a, api, "p1", refresh=True)).outcome == "loaded"
    assert api.total == 3
    await eventually(lambda: "p1" not in b and "p1" not in c, timeout_s=2.0)
    l2_before = b.stats().l2_hits
    assert (await event(b, api, "p1")).outcome == "hit"
    assert b.stats().l2_hits == l2_before + 1 and api.total == 3


async def test_invalidate_all_reaches_the_others(workers: list[ProjectCache]) -> None:
    api = CountingApi()
    for pid in ("p1", "p2", "p3"):
        for cache in workers:
            await event(cache, api, pid)
    workers[1].invalidate()
    await eventually(lambda: all(len(cache) == 0 for cache in workers), timeout_s=2.0)
    await event(workers[2], api, "p2")
    assert api.calls["p2"] == 2


async def test_redis_outage_is_routine(redis_server: RedisServer, outage_workers: list[ProjectCache]) -> None:
    workers = outage_workers
    api = CountingApi(delay=0.01)
    before = [f"before{i}" for i in range(30)]
    during = [f"during{i}" for i in range(30)]
    after = [f"after{i}" for i in range(30)]

    async def timed(cache: ProjectCache, pid: str) -> float:
        started = time.monotonic()
        await event(cache, api, pid)
        return time.monotonic() - started

    await asyncio.gather(*(timed(cache, pid) for cache in workers for pid in before))
    assert api.total == 30

    redis_server.stop()
    durations = await asyncio.gather(*(timed(cache, pid) for cache in workers for pid in during for _ in range(3)))
    # No call waits on Redis longer than about one socket timeout (plus the 10 ms load).
    assert max(durations) < SOCKET_TIMEOUT_S + 0.5, max(durations)  # one timeout (plus a loaded machine's slack), never several
    # At most one load per worker per project while the tiers are apart.
    assert all(api.calls[pid] <= 3 for pid in during)
    # Projects verified before the outage are still in-process hits.
    for cache in workers:
        assert (await cache.verify("before0", api.loader("before0"))).outcome == "hit"
    await eventually(lambda: all(c.stats().redis_state == "down" for c in workers), timeout_s=3.0)
    ready, details = workers[0].readiness()
    assert ready and details["redis"] == "down" and details["tier"] == "l1"
    metrics = generate_latest(REGISTRY).decode()
    assert 'claimx_project_cache_redis_up{cache="project"} 0.0' in metrics

    redis_server.start()  # comes back empty (no persistence)
    await eventually(lambda: all(c.stats().redis_state == "up" for c in workers), timeout_s=8.0)
    await eventually(lambda: all(c.shared_tier is not None and c.shared_tier.reconnects >= 1 for c in workers), timeout_s=5.0)
    loads_before = api.total
    await asyncio.gather(*(event(cache, api, pid) for cache in workers for pid in after for _ in range(3)))
    errors = [c.stats().l2_errors for c in workers]
    assert api.total - loads_before == 30, (errors, {p: n for p, n in api.calls.items() if p.startswith("after")})  # shared again
    # The in-process entries were treated as stale on reconnect; the group refetches once.
    loads_before = api.total
    errors = [c.stats().l2_errors for c in workers]
    await asyncio.gather(*(event(cache, api, pid) for cache in workers for pid in before))
    assert api.total - loads_before == 30, (errors, [c.stats().l2_errors for c in workers], [c.shared_tier.reconnects for c in workers])


async def test_a_hung_redis_costs_at_most_one_socket_timeout(redis_server: RedisServer, outage_workers: list[ProjectCache]) -> None:
    workers = outage_workers
    api = CountingApi(delay=0.01)
    assert redis_server.process is not None
    pid = redis_server.process.pid

    async def timed(cache: ProjectCache, project_id: str) -> float:
        started = time.monotonic()
        await event(cache, api, project_id)
        return time.monotonic() - started

    os.kill(pid, signal.SIGSTOP)  # accepts connections (kernel backlog) but never answers
    try:
        durations = await asyncio.gather(*(timed(cache, f"h{i}") for cache in workers for i in range(40)))
        assert max(durations) < SOCKET_TIMEOUT_S + 0.5, max(durations)  # one timeout (plus a loaded machine's slack), never several
        assert all(count <= 3 for count in api.calls.values())
        await eventually(lambda: all(c.stats().redis_state == "down" for c in workers), timeout_s=3.0)
        # With the circuit open nothing waits on Redis at all.
        durations = await asyncio.gather(*(timed(cache, f"k{i}") for cache in workers for i in range(40)))
        assert max(durations) < SOCKET_TIMEOUT_S / 2, max(durations)
    finally:
        os.kill(pid, signal.SIGCONT)
    await eventually(lambda: all(c.stats().redis_state == "up" for c in workers), timeout_s=8.0)
    loads_before = api.total
    await asyncio.gather(*(event(cache, api, f"after{i}") for cache in workers for i in range(20)))
    assert api.total - loads_before == 20


async def test_background_refresh_fires_once_across_workers(redis_url: str) -> None:
    clock = FakeClock()
    emitted: list[ProjectSnapshot] = []
    settings = settings_for(redis_url, ttl_s=600.0, refresh_after_s=300.0)
    caches: list[ProjectCache] = []

    def emitter(index: int) -> Callable[[ProjectSnapshot], Awaitable[None]]:
        async def emit(snapshot: ProjectSnapshot) -> None:
            await asyncio.sleep(0.005)  # produce + broker ack
            emitted.append(snapshot)

        return emit

    caches = [make_worker(settings, clock, on_background_refresh=emitter(i)) for i in range(3)]
    for cache in caches:
        await cache.start()
    try:
        api = CountingApi(delay=0.02)
        for cache in caches:
            await event(cache, api, "p1")
        assert api.total == 1
        clock.offset += 301  # stale: past refresh_after, within ttl
        results = await asyncio.gather(*(cache.verify("p1", api.loader("p1")) for cache in caches for _ in range(5)))
        assert {r.outcome for r in results} == {"hit"}
        await eventually(lambda: len(emitted) == 1, timeout_s=2.0)
        await asyncio.sleep(0.2)
        assert api.total == 2 and len(emitted) == 1
        assert emitted[0].rows["claimx_projects"][0]["status"] == "v2"
        # Every worker now sees the fresh entry; a while later nobody refreshes again.
        await eventually(lambda: all(("p1" not in c) or c.stats().background_refreshes == 1 for c in caches), timeout_s=2.0)
        for cache in caches:
            assert (await cache.verify("p1", api.loader("p1"))).outcome == "hit"
        clock.offset += 200
        for cache in caches:
            assert (await cache.verify("p1", api.loader("p1"))).outcome == "hit"
        await asyncio.sleep(0.2)
        assert api.total == 2
        assert sum(c.stats().background_refreshes for c in caches) == 1
    finally:
        for cache in caches:
            await cache.close()


async def test_warm_start_from_delta(tmp_path: pytest.TempPathFactory) -> None:
    root = str(tmp_path)
    now = datetime.now(UTC)
    recent = [f"r{i}" for i in range(20)]
    old = [f"o{i}" for i in range(5)]
    table = pa.table(
        {
            "project_id": pa.array(recent + old, pa.string()),
            "status": pa.array(["open"] * 25, pa.string()),
            "updated_at": pa.array(
                [now - timedelta(minutes=5)] * 20 + [now - timedelta(hours=3)] * 5, pa.timestamp("us", tz="UTC")
            ),
        }
    )
    write_deltalake(f"{root}/claimx_projects", table)
    settings = CacheSettings(ttl_s=1800, refresh_after_s=600, warm_from_delta=True, warm_window_s=1800)
    cache = build_project_cache(settings)
    await cache.start()
    await delta_warmer(cache, DeltaSettings(tables_root=root))(settings.warm_window_s)  # what the worker does at start
    api = CountingApi(delay=0)
    assert len(cache) == 20
    for pid in recent:
        assert (await event(cache, api, pid)).outcome == "hit"
    assert api.total == 0
    for pid in old:
        assert (await event(cache, api, pid)).outcome == "loaded"
    assert api.total == 5
    # A missing table warms nothing and is no error (first start).
    empty = ProjectCache(settings)
    assert await warm_from_delta(empty, str(tmp_path / "nowhere"), None, 1800) == 0
    await cache.close()


async def test_admin_routes(redis_url: str, tmp_path: pytest.TempPathFactory) -> None:
    root = str(tmp_path)
    write_deltalake(
        f"{root}/claimx_projects",
        pa.table({"project_id": ["w1", "w2"], "updated_at": pa.array([datetime.now(UTC)] * 2, pa.timestamp("us", tz="UTC"))}),
    )
    settings = settings_for(redis_url, admin_token="s3cret")
    cache, other = make_worker(settings), make_worker(settings)
    await cache.start()
    await other.start()
    api = CountingApi(delay=0)
    for pid in ("p1", "p2", "p3"):
        await event(cache, api, pid)
        await event(other, api, pid)
    await asyncio.sleep(0.05)
    routes = cache_routes(cache, warm_from=delta_warmer(cache, DeltaSettings(tables_root=root)))
    server = OpsServer("127.0.0.1", 0, routes=routes, readiness={"project_cache": cache.readiness})
    auth = {"Authorization": "Bearer s3cret"}
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app), base_url="http://ops") as client:
            assert (await client.get("/cache/stats")).status_code == 401
            assert (await client.get("/cache/stats", headers={"Authorization": "Bearer wrong"})).status_code == 401
            stats = (await client.get("/cache/stats", headers=auth)).json()
            assert stats["size"] == 3 and stats["redis_state"] == "up" and stats["misses"] == 3

            assert (await client.post("/cache/invalidate", json={"project_ids": ["p1"]})).status_code == 401
            bad = await client.post("/cache/invalidate", content=b"not json", headers=auth)
            assert bad.status_code == 400
            done = (await client.post("/cache/invalidate", json={"project_ids": ["p1"]}, headers=auth)).json()
            assert done == {"dropped": 1, "shared_dropped": 1, "broadcast": True}
            await eventually(lambda: "p1" not in other, timeout_s=2.0)
            everything = (await client.post("/cache/invalidate", json={"all": True}, headers=auth)).json()
            assert everything["dropped"] == 2 and everything["shared_dropped"] == 2

            warmed = (await client.post("/cache/warm", headers=auth)).json()
            assert warmed["warmed"] == 2 and "w1" in cache

            ready = (await client.get("/health/ready")).json()
            assert ready["ready"] is True and ready["checks"]["project_cache"]["tier"] == "l1+l2"
            metrics = (await client.get("/metrics")).text
            assert "claimx_project_cache_requests_total" in metrics
            assert "claimx_project_cache_load_seconds_bucket" in metrics
    finally:
        await cache.close()
        await other.close()


async def test_from_settings_without_and_with_redis(redis_url: str) -> None:
    plain = build_project_cache(CacheSettings())
    assert plain.shared_tier is None and plain.stats().redis_state == "off"
    shared = build_project_cache(settings_for(redis_url))
    assert shared.shared_tier is not None
    await shared.start()
    assert shared.stats().redis_state == "up"
    await shared.close()


async def test_start_with_redis_down_does_not_block(redis_server: RedisServer) -> None:
    port = redis_server.port
    redis_server.stop()
    try:
        cache = make_worker(settings_for(f"redis://127.0.0.1:{port}/0", socket_timeout_s=SOCKET_TIMEOUT_S))
        started = time.monotonic()
        await cache.start()
        api = CountingApi(delay=0)
        assert (await event(cache, api, "p1")).outcome == "loaded"
        assert (await event(cache, api, "p1")).outcome == "hit"
        assert time.monotonic() - started < 2 * SOCKET_TIMEOUT_S + 0.5
        await cache.close()
    finally:
        redis_server.start()


# --- what is in Redis is not trusted ----------------------------------------------------------


def _rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("claimx_project_cache_pubsub_rejected_total", {"reason": reason}) or 0.0


async def test_malformed_invalidation_messages_are_skipped_and_the_listener_lives_on(redis_url: str) -> None:
    settings = settings_for(redis_url)
    cache = make_worker(settings)
    await cache.start()
    tier = cache.shared_tier
    assert tier is not None
    raw = aioredis.Redis.from_url(redis_url)
    try:
        api = CountingApi(delay=0)
        for pid in ("p1", "p2"):
            await event(cache, api, pid)
        poison = {
            b"[1,2]": "shape",
            b'"str"': "shape",
            b'{"ids": 5}': "shape",
            b'{"origin": "x", "ids": 5}': "shape",
            b'{"origin": "x", "ids": [1, 2]}': "shape",
            b'{"origin": "x", "ids": [".."]}': "shape",
            b'{"origin": "x", "ids": ["\xff\xfe"]}': "utf8",
            b"\xc3\x28": "utf8",
            b"[" * 100_000 + b"]" * 100_000: "json",
            b"{not json": "json",
            b" " * 2_000_000: "size",
        }
        before = {reason: _rejected(reason) for reason in set(poison.values())}
        for message in poison:
            await raw.publish(tier.invalidate_channel, message)
        # a valid message sent after the poison still arrives: the listener survived all of it
        await raw.publish(tier.invalidate_channel, json.dumps({"origin": "admin", "ids": ["p1"]}))
        await eventually(lambda: "p1" not in cache, timeout_s=3.0)
        assert "p2" in cache  # no bad message dropped anything
        assert tier.messages_rejected == len(poison)
        for reason in set(poison.values()):
            expected = sum(1 for r in poison.values() if r == reason)
            assert _rejected(reason) == before[reason] + expected, reason
        assert tier.is_up and tier.listener_restarts == 0 and cache.stats().redis_state == "up"
    finally:
        await raw.aclose()
        await cache.close()


async def test_a_failing_listener_is_restarted_and_the_tier_is_not_up_meanwhile(redis_url: str) -> None:
    cache = make_worker(settings_for(redis_url))
    tier = cache.shared_tier
    assert tier is not None
    failures = {"left": 2}
    real_invalidate = cache.invalidate

    def flaky_invalidate(project_ids=None, *, broadcast: bool = True) -> int:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise RuntimeError("bug in a handler")
        return real_invalidate(project_ids, broadcast=broadcast)

    cache.invalidate = flaky_invalidate  # type: ignore[method-assign]
    await cache.start()
    raw = aioredis.Redis.from_url(redis_url)
    try:
        api = CountingApi(delay=0)
        await raw.publish(tier.invalidate_channel, json.dumps({"origin": "admin", "ids": ["p0"]}))
        await eventually(lambda: tier.listener_restarts >= 1, timeout_s=3.0)
        await eventually(lambda: tier.is_up, timeout_s=3.0)  # restarted and subscribed again
        await event(cache, api, "p1")
        assert "p1" in cache
        await raw.publish(tier.invalidate_channel, json.dumps({"origin": "admin", "ids": ["p1"]}))
        await eventually(lambda: tier.listener_restarts >= 2, timeout_s=3.0)
        await eventually(lambda: tier.is_up, timeout_s=3.0)
        await event(cache, api, "p1")
        await raw.publish(tier.invalidate_channel, json.dumps({"origin": "admin", "ids": ["p1"]}))
        await eventually(lambda: "p1" not in cache, timeout_s=3.0)  # invalidations arrive again
    finally:
        await raw.aclose()
        await cache.close()  # nothing re-raised on stop


async def test_readiness_says_down_while_the_listener_cannot_run(redis_url: str) -> None:
    cache = make_worker(settings_for(redis_url))
    tier = cache.shared_tier
    assert tier is not None

    async def broken_listen(subscribed: asyncio.Future[None], *, resumed: bool = False) -> None:
        raise RuntimeError("listener bug")

    tier._listen = broken_listen  # type: ignore[method-assign]
    await cache.start()
    try:
        await eventually(lambda: tier.listener_restarts >= 2, timeout_s=3.0)
        ready, details = cache.readiness()
        assert details["redis"] == "down" and details["tier"] == "l1" and not tier.is_up
        assert cache.stats().redis_state == "down"
    finally:
        await cache.close()  # does not raise the listener's error


@pytest.mark.parametrize(
    "stored",
    [
        '{"verified_at": Infinity, "absent": false}',
        '{"verified_at": NaN, "absent": false}',
        '{"verified_at": -Infinity, "absent": true}',
        "FUTURE",
        '{"verified_at": "0", "absent": false}',
        '{"verified_at": true, "absent": false}',
        '{"verified_at": 0, "absent": "no"}',
        "[1, 2]",
        '"str"',
        "[" * 50_000 + "]" * 50_000,
    ],
)
async def test_a_shared_entry_with_a_bad_or_future_stamp_is_a_miss(redis_url: str, stored: str) -> None:
    settings = settings_for(redis_url)
    tier = RedisTier(settings)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        if stored == "FUTURE":
            stored = json.dumps({"verified_at": time.time() + 3600, "absent": False})
        await raw.set(tier.key("p1"), stored)
        await raw.set(tier.key("p2"), json.dumps({"verified_at": time.time() - 1, "absent": False}))
        assert await tier.lookup("p1") is None
        good = await tier.lookup("p2")  # a sound entry next to it is still a hit
        assert good is not None and good.verified_age is not None and 0.5 < good.verified_age < 5
    finally:
        await raw.aclose()
        await tier.close()


async def test_admin_routes_are_bounded(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bodies are size-capped, ids and window_s checked, one warm at a time, a failure is a one-line 500."""
    from kafka_pipeline.claimx.cache import admin
    from kafka_pipeline.claimx.cache import warm as warm_module

    root = tmp_path / "tables"
    settings = CacheSettings(ttl_s=600.0, refresh_after_s=300.0)
    cache = ProjectCache(settings)
    server = OpsServer("127.0.0.1", 0, routes=admin.cache_routes(cache, warm_from=delta_warmer(cache, DeltaSettings(tables_root=str(root)))))
    release = asyncio.Event()
    real_warm = warm_module.warm_from_delta

    async def slow_warm(*args: object) -> int:
        await release.wait()
        return 0

    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app, raise_app_exceptions=False), base_url="http://ops") as client:
            huge = await client.post("/cache/invalidate", content=b'{"project_ids": ["' + b"1" * 2_000_000 + b'"]}')
            assert huge.status_code == 413
            deep = await client.post("/cache/invalidate", content=b"[" * 100_000 + b"]" * 100_000)
            assert deep.status_code == 400
            for ids in (["..", "1"], [1.5], [True], ["x" * 65], ["1"] * 10_001, [], "1", [["1"]]):
                answer = await client.post("/cache/invalidate", json={"project_ids": ids})
                assert answer.status_code == 400, ids
            assert (await client.post("/cache/invalidate", json={"project_ids": ["p1", 7]})).json()["dropped"] == 0
            for window in (0, -1, 601, 1e308, "10", True, None):
                answer = await client.post("/cache/warm", json={"window_s": window})
                assert answer.status_code == 400, window
                assert "600" in answer.json()["error"]

            monkeypatch.setattr(warm_module, "warm_from_delta", slow_warm)
            first = asyncio.create_task(client.post("/cache/warm", json={"window_s": 60}))
            await asyncio.sleep(0.1)
            second = await client.post("/cache/warm", json={"window_s": 60})
            assert second.status_code == 409 and second.json() == {"error": "a warm is already running"}
            release.set()
            assert (await first).status_code == 200
            monkeypatch.setattr(warm_module, "warm_from_delta", real_warm)

            # a damaged table: the warm fails with a one-line 500, no traceback in the answer
            log_dir = root / "claimx_projects" / "_delta_log"
            log_dir.mkdir(parents=True)
            (log_dir / "00000000000000000000.json").write_text("{not a delta log")
            failed = await client.post("/cache/warm", json={"window_s": 60})
            assert failed.status_code == 500
            assert "Traceback" not in failed.text and "\n" not in failed.json()["error"]
            assert (await client.get("/cache/stats")).status_code == 200  # the routes still answer
    finally:
        await cache.close()


def test_admin_routes_refuse_a_network_host_without_a_token() -> None:
    from kafka_pipeline.claimx.cache.admin import admin_routes, is_loopback
    from kafka_pipeline.config import ConfigError, Settings

    cache = ProjectCache(CacheSettings())
    exposed = Settings(worker={"http_host": "0.0.0.0", "http_port": 9100})
    with pytest.raises(ConfigError, match="KP_CACHE__ADMIN_TOKEN"):
        admin_routes(exposed, cache)
    assert admin_routes(Settings(worker={"http_host": "0.0.0.0", "http_port": 9100}, cache={"admin_token": "t"}), cache)
    assert admin_routes(Settings(worker={"http_host": "0.0.0.0", "http_port": 9100}, cache={"admin_routes": False}), cache) == []
    assert admin_routes(Settings(worker={"http_host": "127.0.0.1", "http_port": 9100}), cache)
    assert admin_routes(Settings(worker={"http_host": "0.0.0.0", "http_port": 0}), cache)  # no ops port: nothing exposed, no refusal
    assert is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("ops.internal") and not is_loopback("10.0.0.1")
