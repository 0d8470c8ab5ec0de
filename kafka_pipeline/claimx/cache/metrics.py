"""Prometheus metrics of the ProjectCache.

The hot path (an in-process hit) only bumps a plain integer; a collector reads the counters
of every live cache at scrape time, so metrics cost nothing per hit. Load durations go to a
regular histogram (a load is slow anyway). Every series carries a `cache` label (the cache's
name), so several caches in one process stay apart.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from kafka_pipeline.claimx.cache.project_cache import ProjectCache

PREFIX = "claimx_project_cache"

LOAD_SECONDS = Histogram(
    f"{PREFIX}_load_seconds",
    "Duration of project loads (export calls) started by the cache.",
    ["cache", "result"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

_caches: weakref.WeakSet[ProjectCache] = weakref.WeakSet()


def track(cache: ProjectCache) -> None:
    _caches.add(cache)


def observe_load(cache: ProjectCache, seconds: float, *, ok: bool) -> None:
    LOAD_SECONDS.labels(cache.name, "ok" if ok else "failed").observe(seconds)


class _CacheCollector(Collector):
    def describe(self) -> Iterator[Metric]:
        yield from self._families([])

    def collect(self) -> Iterator[Metric]:
        yield from self._families(list(_caches))

    @staticmethod
    def _families(caches: list[ProjectCache]) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            f"{PREFIX}_requests", "verify() calls by how they were answered.", labels=["cache", "result"]
        )
        misses = CounterMetricFamily(
            f"{PREFIX}_misses",
            "verify() calls a tier could not answer (l1: went past the in-process tier; l2: Redis had no entry).",
            labels=["cache", "tier"],
        )
        lock_waits = CounterMetricFamily(
            f"{PREFIX}_lock_waits", "Waits for another worker's load of the same project.", labels=["cache"]
        )
        loads = CounterMetricFamily(f"{PREFIX}_loads", "Project loads by result.", labels=["cache", "result"])
        evictions = CounterMetricFamily(f"{PREFIX}_evictions", "Entries evicted (least recently used).", labels=["cache"])
        refreshes = CounterMetricFamily(
            f"{PREFIX}_stale_refreshes", "Background reloads of entries older than refresh_after_s.", labels=["cache", "result"]
        )
        redis_errors = CounterMetricFamily(f"{PREFIX}_redis_errors", "Redis calls that failed or timed out.", labels=["cache"])
        size = GaugeMetricFamily(f"{PREFIX}_size", "Entries in the in-process tier.", labels=["cache"])
        pending = GaugeMetricFamily(f"{PREFIX}_pending", "Loaded projects waiting for the broker ack.", labels=["cache"])
        redis_up = GaugeMetricFamily(
            f"{PREFIX}_redis_up", "1 while the shared Redis tier is usable, 0 while the worker runs on its in-process tier.", labels=["cache"]
        )
        by_name: dict[str, list[ProjectCache]] = {}
        for cache in caches:
            by_name.setdefault(cache.name, []).append(cache)
        for name, group in by_name.items():  # caches sharing a name (rare: tests) are summed

            def total(field: str, group: list[ProjectCache] = group) -> float:
                return float(sum(getattr(cache.counters, field) for cache in group))

            for result, field in (
                ("hit_l1", "l1_hits"),
                ("hit_l2", "l2_hits"),
                ("miss", "misses"),
                ("coalesced", "coalesced"),
                ("absent", "absent_hits"),
            ):
                requests.add_metric([name, result], total(field))
            misses.add_metric([name, "l1"], total("l2_hits") + total("misses") + total("coalesced"))
            misses.add_metric([name, "l2"], total("l2_misses"))
            lock_waits.add_metric([name], total("lock_waits"))
            loads.add_metric([name, "ok"], total("loads_ok"))
            loads.add_metric([name, "failed"], total("loads_failed"))
            evictions.add_metric([name], total("evictions"))
            refreshes.add_metric([name, "ok"], total("background_refreshes"))
            refreshes.add_metric([name, "failed"], total("background_refresh_failures"))
            redis_errors.add_metric([name], total("l2_errors"))
            size.add_metric([name], float(sum(len(cache) for cache in group)))
            pending.add_metric([name], float(sum(cache.stats().pending for cache in group)))
            tiers = [cache.shared_tier for cache in group if cache.shared_tier is not None]
            if tiers:
                redis_up.add_metric([name], 1.0 if all(tier.is_up for tier in tiers) else 0.0)
        yield from (requests, misses, lock_waits, loads, evictions, refreshes, redis_errors, size, pending, redis_up)


REGISTRY.register(_CacheCollector())
