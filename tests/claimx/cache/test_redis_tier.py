"""The ProjectCache across workers: several caches (one per simulated worker) sharing a real Redis
through the RedisTier: one load per group, invalidations, outages, and distrust of what is in Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY, generate_latest

from kafka_pipeline.claimx.cache.project_cache import ProjectCache, ProjectSnapshot, Verification
from kafka_pipeline.claimx.cache.redis_tier import RedisTier
from kafka_pipeline.errors import PermanentError
from tests.claimx.cache.helpers import SOCKET_TIMEOUT_S, Loader, ShiftedClock, event, make_worker, settings_for, tier_of
from tests.fixtures.redis import RedisServer
from tests.fixtures.waiting import until


async def test_three_workers_bursting_the_same_projects_load_each_once(workers: list[ProjectCache]) -> None:
    api = Loader(delay=0.01)
    projects = [f"p{i}" for i in range(100)]

    async def burst(cache: ProjectCache) -> list[Verification]:
        return await asyncio.gather(*(event(cache, api, pid) for pid in projects for _ in range(5)))

    results = await asyncio.gather(*(burst(cache) for cache in workers))
    assert api.total == 100, f"{api.total} loads for 100 projects"
    assert set(api.counts.values()) == {1}
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
    api = Loader(delay=0.01)
    api.not_found.add("gone")
    for cache in workers:
        with pytest.raises(PermanentError) as err:
            await cache.verify("gone", api.for_project("gone"))
        assert err.value.error_type == "NotFound"
        await until(lambda: tier_of(cache).lookup("gone"), "the absent marker written in the background")
    assert api.counts == {"gone": 1}


async def test_waiters_load_themselves_when_the_owner_abandons(workers: list[ProjectCache]) -> None:
    api = Loader(delay=0.05)
    first, second = workers[0], workers[1]
    owner = asyncio.ensure_future(first.verify("p1", api.for_project("p1")))
    await until(lambda: api.counts == {"p1": 1}, "the first worker loading under the lock")
    waiter = asyncio.ensure_future(second.verify("p1", api.for_project("p1")))
    loaded = await owner
    assert loaded.outcome == "loaded"
    loaded.abandon()  # the message failed: the lock is released without an entry
    result = await waiter
    assert result.outcome == "loaded" and api.counts == {"p1": 2}


async def test_a_dead_owner_is_replaced_after_its_lease(redis_url: str) -> None:
    settings = settings_for(redis_url, lock_lease_ms=300, lock_wait_s=3.0)
    cache = make_worker(settings)
    await cache.start()
    try:
        # Another worker took the lock and died: nobody releases it.
        raw = aioredis.Redis.from_url(redis_url)
        await raw.set(f"{settings.key_prefix}:lock:p1", "dead-worker", px=settings.lock_lease_ms)
        await raw.aclose()
        api = Loader(delay=0.01)
        started = time.monotonic()
        result = await cache.verify("p1", api.for_project("p1"))
        waited = time.monotonic() - started
        assert result.outcome == "loaded" and api.counts == {"p1": 1}
        assert 0.2 < waited < 1.0
    finally:
        await cache.close()


async def test_invalidation_on_one_worker_reaches_the_others(workers: list[ProjectCache]) -> None:
    api = Loader(delay=0.01)
    a, b, c = workers
    for cache in workers:
        await event(cache, api, "p1")
    assert api.total == 1 and all("p1" in cache for cache in workers)
    assert a.invalidate(["p1"]) == 1
    await until(lambda: "p1" not in b and "p1" not in c, timeout_s=2.0)
    assert (await event(b, api, "p1")).outcome == "loaded"  # the shared entry is gone too
    assert api.total == 2
    await until(lambda: tier_of(b).lookup("p1"), "b's entry written to Redis")
    # A refresh (PROJECT_CREATED) on one worker: the others drop their entry and take the
    # fresh shared one, without loading.
    await event(c, api, "p1")
    assert (await event(a, api, "p1", refresh=True)).outcome == "loaded"
    assert api.total == 3
    await until(lambda: "p1" not in b and "p1" not in c, timeout_s=2.0)
    l2_before = b.stats().l2_hits
    assert (await event(b, api, "p1")).outcome == "hit"
    assert b.stats().l2_hits == l2_before + 1 and api.total == 3


async def test_invalidate_all_reaches_the_others(workers: list[ProjectCache]) -> None:
    api = Loader(delay=0.01)
    for pid in ("p1", "p2", "p3"):
        for cache in workers:
            await event(cache, api, pid)
    workers[1].invalidate()
    await until(lambda: all(len(cache) == 0 for cache in workers), timeout_s=2.0)
    await event(workers[2], api, "p2")
    assert api.counts["p2"] == 2


async def test_redis_outage_is_routine(redis_server: RedisServer, outage_workers: list[ProjectCache]) -> None:
    workers = outage_workers
    api = Loader(delay=0.01)
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
    assert all(api.counts[pid] <= 3 for pid in during)
    # Projects verified before the outage are still in-process hits.
    for cache in workers:
        assert (await cache.verify("before0", api.for_project("before0"))).outcome == "hit"
    await until(lambda: all(c.stats().redis_state == "down" for c in workers), timeout_s=3.0)
    ready, details = workers[0].readiness()
    assert ready and details["redis"] == "down" and details["tier"] == "l1"
    metrics = generate_latest(REGISTRY).decode()
    assert 'claimx_project_cache_redis_up{cache="project"} 0.0' in metrics

    redis_server.start()  # comes back empty (no persistence)
    await until(lambda: all(c.stats().redis_state == "up" for c in workers), timeout_s=8.0)
    await until(lambda: all(c.shared_tier is not None and c.shared_tier.reconnects >= 1 for c in workers), timeout_s=5.0)
    loads_before = api.total
    await asyncio.gather(*(event(cache, api, pid) for cache in workers for pid in after for _ in range(3)))
    errors = [c.stats().l2_errors for c in workers]
    assert api.total - loads_before == 30, (errors, {p: n for p, n in api.counts.items() if p.startswith("after")})  # shared again
    # The in-process entries were treated as stale on reconnect; the group refetches once.
    loads_before = api.total
    errors = [c.stats().l2_errors for c in workers]
    await asyncio.gather(*(event(cache, api, pid) for cache in workers for pid in before))
    assert api.total - loads_before == 30, (errors, [c.stats().l2_errors for c in workers], [c.shared_tier.reconnects for c in workers])


async def test_a_hung_redis_costs_at_most_one_socket_timeout(redis_server: RedisServer, outage_workers: list[ProjectCache]) -> None:
    workers = outage_workers
    api = Loader(delay=0.01)
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
        assert all(count <= 3 for count in api.counts.values())
        await until(lambda: all(c.stats().redis_state == "down" for c in workers), timeout_s=3.0)
        # With the circuit open nothing waits on Redis at all.
        durations = await asyncio.gather(*(timed(cache, f"k{i}") for cache in workers for i in range(40)))
        assert max(durations) < SOCKET_TIMEOUT_S / 2, max(durations)
    finally:
        os.kill(pid, signal.SIGCONT)
    await until(lambda: all(c.stats().redis_state == "up" for c in workers), timeout_s=8.0)
    loads_before = api.total
    await asyncio.gather(*(event(cache, api, f"after{i}") for cache in workers for i in range(20)))
    assert api.total - loads_before == 20


async def test_background_refresh_fires_once_across_workers(redis_url: str) -> None:
    clock = ShiftedClock()
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
        api = Loader(delay=0.02)
        for cache in caches:
            await event(cache, api, "p1")
        assert api.total == 1
        clock.offset += 301  # stale: past refresh_after, within ttl
        results = await asyncio.gather(*(cache.verify("p1", api.for_project("p1")) for cache in caches for _ in range(5)))
        assert {r.outcome for r in results} == {"hit"}
        await until(lambda: len(emitted) == 1, "one worker's refresh emitted", timeout_s=2.0)
        # Every worker now sees the fresh entry: the others dropped theirs on the refresher's notice.
        await until(lambda: all(("p1" not in c) or c.stats().background_refreshes == 1 for c in caches), "the notice", timeout_s=2.0)
        # The others found the refresher's lock (and backed off) or its fresh entry (and adopted it).
        assert api.total == 2 and len(emitted) == 1
        assert emitted[0].rows["claimx_projects"][0]["status"] == "v2"
        for cache in caches:
            assert (await cache.verify("p1", api.for_project("p1"))).outcome == "hit"
        assert sum(c.stats().background_refreshes for c in caches) == 1 and api.total == 2
    finally:
        for cache in caches:
            await cache.close()


async def test_start_with_redis_down_does_not_block(redis_server: RedisServer) -> None:
    port = redis_server.port
    redis_server.stop()
    try:
        cache = make_worker(settings_for(f"redis://127.0.0.1:{port}/0", socket_timeout_s=SOCKET_TIMEOUT_S))
        started = time.monotonic()
        await cache.start()
        api = Loader(delay=0)
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
        api = Loader(delay=0)
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
        await until(lambda: "p1" not in cache, timeout_s=3.0)
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
        api = Loader(delay=0)
        await raw.publish(tier.invalidate_channel, json.dumps({"origin": "admin", "ids": ["p0"]}))
        await until(lambda: tier.listener_restarts >= 1, timeout_s=3.0)
        await until(lambda: tier.is_up, timeout_s=3.0)  # restarted and subscribed again
        await event(cache, api, "p1")
        assert "p1" in cache
        await raw.publish(tier.invalidate_channel, json.dumps({"origin": "admin", "ids": ["p1"]}))
        await until(lambda: tier.listener_restarts >= 2, timeout_s=3.0)
        await until(lambda: tier.is_up, timeout_s=3.0)
        await event(cache, api, "p1")
        await raw.publish(tier.invalidate_channel, json.dumps({"origin": "admin", "ids": ["p1"]}))
        await until(lambda: "p1" not in cache, timeout_s=3.0)  # invalidations arrive again
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
        await until(lambda: tier.listener_restarts >= 2, timeout_s=3.0)
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
