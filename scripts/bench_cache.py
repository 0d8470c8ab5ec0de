"""Benchmark the ProjectCache: the cost of a hit, the memory per entry, and export calls per project.

    .venv/bin/python scripts/bench_cache.py [--redis-url redis://host:6379/0] [--projects 300]

1. The cost of an in-process hit (`await cache.verify(...)`) beside a plain dict lookup and a
   `cachetools.LRUCache` lookup (both synchronous, so they are the floor, not rivals).
2. Bytes per cached project at 100,000 entries (tracemalloc; the id strings are counted).
3. Export calls (loads) per unique project for 1 and for 3 cache instances ("workers"), with
   and without the Redis tier, plus the no-cache baseline. Loads are simulated with a small
   sleep, events arrive shuffled with bounded concurrency per worker, and each loaded snapshot
   is confirmed after a simulated broker ack. Without --redis-url a redis-server subprocess is
   started on a free port (needs `redis-server` on PATH).

Goals: <= 2 us per hit, <= 300 bytes per entry, 1.00 load per project with Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import cachetools

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kafka_pipeline.claimx.cache.project_cache import NoCache, ProjectCache, ProjectSnapshot  # noqa: E402
from kafka_pipeline.claimx.cache.redis_tier import RedisTier  # noqa: E402
from kafka_pipeline.config import CacheSettings  # noqa: E402
from kafka_pipeline.observability.logging import configure_logging  # noqa: E402

HIT_GOAL_US = 2.0
BYTES_GOAL = 300.0


# ---------------------------------------------------------------------------- 1. hit cost


async def _noop_load() -> ProjectSnapshot:
    return ProjectSnapshot("x", {})


async def bench_hits(n: int = 500_000, keys: int = 1_000) -> dict[str, float]:
    ids = [str(5_000_000 + i) for i in range(keys)]
    cache = ProjectCache(CacheSettings(ttl_s=3600, refresh_after_s=1800, ttl_jitter_s=0))
    for project_id in ids:
        cache.prime(project_id)
    plain = dict.fromkeys(ids, time.monotonic())
    lru: cachetools.LRUCache[str, float] = cachetools.LRUCache(maxsize=100_000)
    for project_id in ids:
        lru[project_id] = time.monotonic()
    lookups = [ids[i % keys] for i in range(n)]

    verify = cache.verify
    started = time.perf_counter()
    for project_id in lookups:
        await verify(project_id, _noop_load)
    cache_us = (time.perf_counter() - started) / n * 1e6
    assert cache.stats().hits == n

    get = plain.get
    started = time.perf_counter()
    for project_id in lookups:
        get(project_id)
    dict_us = (time.perf_counter() - started) / n * 1e6

    started = time.perf_counter()
    for project_id in lookups:
        lru[project_id]
    lru_us = (time.perf_counter() - started) / n * 1e6
    return {"ProjectCache.verify (await, hit)": cache_us, "dict.get": dict_us, "cachetools.LRUCache[key]": lru_us}


# ---------------------------------------------------------------------------- 2. memory


def _measure(build: Callable[[list[str]], object], count: int) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ids = [str(5_000_000 + i) for i in range(count)]  # the cache keeps the id strings alive
    holder = build(ids)
    del ids
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del holder
    return (after - before) / count


def bench_memory(count: int = 100_000) -> dict[str, float]:
    def project_cache(ids: list[str]) -> object:
        cache = ProjectCache(CacheSettings(max_entries=count, ttl_jitter_s=0))
        for project_id in ids:
            cache.prime(project_id)
        assert len(cache) == count
        return cache

    def plain_dict(ids: list[str]) -> object:
        now = time.monotonic()
        return {project_id: now + i for i, project_id in enumerate(ids)}

    def lru_cache(ids: list[str]) -> object:
        lru: cachetools.LRUCache[str, float] = cachetools.LRUCache(maxsize=count)
        now = time.monotonic()
        for i, project_id in enumerate(ids):
            lru[project_id] = now + i
        return lru

    return {
        "ProjectCache": _measure(project_cache, count),
        "dict[str, float]": _measure(plain_dict, count),
        "cachetools.LRUCache": _measure(lru_cache, count),
    }


# ---------------------------------------------------------------------------- 3. loads per project


class SimulatedApi:
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.calls = 0

    def loader(self, project_id: str) -> Callable[[], Awaitable[ProjectSnapshot]]:
        async def load() -> ProjectSnapshot:
            self.calls += 1
            await asyncio.sleep(self.delay_s * random.uniform(0.5, 1.5))
            return ProjectSnapshot(project_id, {"claimx_projects": [{"project_id": project_id}]})

        return load


async def run_workers(
    caches: list[ProjectCache] | list[NoCache],
    projects: int,
    events_per_project: int,
    in_flight: int,
    load_s: float,
    ack_s: float,
) -> float:
    """Each worker sees every project's events (as after rebalances or with per-event
    partitioning by other keys); returns loads per unique project."""
    api = SimulatedApi(load_s)
    ids = [f"bench-{uuid.uuid4().hex[:6]}-{i}" for i in range(projects)]

    async def worker(cache: ProjectCache | NoCache) -> None:
        events = [project_id for project_id in ids for _ in range(events_per_project)]
        random.shuffle(events)
        slots = asyncio.Semaphore(in_flight)

        async def handle(project_id: str) -> None:
            async with slots:
                result = await cache.verify(project_id, api.loader(project_id))
                if result.carries_project:
                    with result:  # produce the rows, wait for the broker ack: confirmed
                        await asyncio.sleep(ack_s)

        await asyncio.gather(*(handle(project_id) for project_id in events))

    await asyncio.gather(*(worker(cache) for cache in caches))
    return api.calls / projects


class RedisProcess:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server not found: pass --redis-url or install it (apt-get install -y redis-server)")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit("redis-server did not start")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


async def bench_loads(redis_url: str, args: argparse.Namespace) -> list[tuple[str, float]]:
    rows: list[tuple[str, float]] = []
    params = dict(projects=args.projects, events_per_project=args.events, in_flight=args.in_flight, load_s=args.load_ms / 1000, ack_s=0.002)

    for workers in (1, 3):
        baseline = [NoCache(CacheSettings()) for _ in range(workers)]
        rows.append((f"{workers} worker(s), no cache", await run_workers(baseline, **params)))
        local = [ProjectCache(CacheSettings()) for _ in range(workers)]
        rows.append((f"{workers} worker(s), in-process only", await run_workers(local, **params)))
        settings = CacheSettings(redis_url=redis_url, key_prefix=f"bench-{uuid.uuid4().hex[:8]}:v1")
        shared = [ProjectCache(settings, shared_tier=RedisTier(settings)) for _ in range(workers)]
        for cache in shared:
            await cache.start()
        try:
            rows.append((f"{workers} worker(s), with Redis", await run_workers(shared, **params)))
            if any(cache.stats().redis_state != "up" for cache in shared):
                rows[-1] = (rows[-1][0] + " (REDIS WAS DOWN)", rows[-1][1])
        finally:
            for cache in shared:
                await cache.close()
    return rows


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="use this Redis instead of starting a redis-server subprocess")
    parser.add_argument("--projects", type=int, default=300, help="unique projects (default 300)")
    parser.add_argument("--events", type=int, default=10, help="events per project per worker (default 10)")
    parser.add_argument("--in-flight", type=int, default=64, help="events in flight per worker (default 64)")
    parser.add_argument("--load-ms", type=float, default=20.0, help="mean simulated export latency (default 20 ms)")
    args = parser.parse_args()
    configure_logging("bench-cache", level="WARNING")

    print("1. cost of a hit (1,000 hot projects, 500,000 lookups)")
    hits = await bench_hits()
    for name, us in hits.items():
        print(f"   {name:<36} {us:7.3f} us")
    hit_ok = hits["ProjectCache.verify (await, hit)"] <= HIT_GOAL_US

    print("2. memory at 100,000 cached projects (tracemalloc, id strings included)")
    memory = bench_memory()
    for name, per_entry in memory.items():
        print(f"   {name:<36} {per_entry:7.1f} bytes/entry")
    memory_ok = memory["ProjectCache"] <= BYTES_GOAL

    print(
        f"3. export calls per unique project ({args.projects} projects x {args.events} events per worker, "
        f"{args.in_flight} in flight per worker, ~{args.load_ms:g} ms per load)"
    )
    server = None if args.redis_url else RedisProcess()
    try:
        rows = await bench_loads(args.redis_url or server.url, args)  # type: ignore[union-attr]
    finally:
        if server is not None:
            server.stop()
    for name, per_project in rows:
        print(f"   {name:<36} {per_project:7.2f} loads/project")
    redis_ok = all(per_project == 1.0 for name, per_project in rows if "with Redis" in name)

    print(
        f"goals: hit <= {HIT_GOAL_US} us: {'met' if hit_ok else 'MISSED'}; "
        f"<= {BYTES_GOAL:g} bytes/entry: {'met' if memory_ok else 'MISSED'}; "
        f"1.00 load/project with Redis: {'met' if redis_ok else 'MISSED'}"
    )
    return 0 if hit_ok and memory_ok and redis_ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
