"""Prometheus metrics of the ProjectCache.

The hot path (an in-process hit) only bumps a plain integer; a collector reads the typed
`stats()` of every cache it was given at scrape time, so metrics cost nothing per hit. Load
durations go to a regular histogram, fed through the cache's load observer (a load is slow
anyway). Every series carries a `cache` label (the cache's name), so several caches in one
process stay apart. `CacheMetrics.on(registry)` is one set per registry.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kafka_pipeline.claimx.cache.project_cache import ProjectCache
from kafka_pipeline.claimx.cache.stats import CacheStats
from kafka_pipeline.observability.metrics import metric

PREFIX = "claimx_project_cache"


class _CacheCollector(Collector):
    def __init__(self) -> None:
        self.caches: weakref.WeakSet[ProjectCache] = weakref.WeakSet()

    def describe(self) -> Iterator[Metric]:
        yield from _families([])

    def collect(self) -> Iterator[Metric]:
        yield from _families([(cache.name, cache.stats()) for cache in list(self.caches)])


def _families(caches: list[tuple[str, CacheStats]]) -> Iterator[Metric]:
    requests = CounterMetricFamily(f"{PREFIX}_requests", "verify() calls by how they were answered.", labels=["cache", "result"])
    misses = CounterMetricFamily(
        f"{PREFIX}_misses",
        "verify() calls a tier could not answer (l1: went past the in-process tier; l2: Redis had no entry).",
        labels=["cache", "tier"],
    )
    lock_waits = CounterMetricFamily(f"{PREFIX}_lock_waits", "Waits for another worker's load of the same project.", labels=["cache"])
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
    by_name: dict[str, list[CacheStats]] = {}
    for name, stats in caches:
        by_name.setdefault(name, []).append(stats)
    for name, group in by_name.items():  # caches sharing a name (rare: tests) are summed

        def total(pick: Any, group: list[CacheStats] = group) -> float:
            return float(sum(pick(s) for s in group))

        requests.add_metric([name, "hit_l1"], total(lambda s: s.hits - s.l2_hits))
        requests.add_metric([name, "hit_l2"], total(lambda s: s.l2_hits))
        requests.add_metric([name, "miss"], total(lambda s: s.misses))
        requests.add_metric([name, "coalesced"], total(lambda s: s.coalesced))
        requests.add_metric([name, "absent"], total(lambda s: s.absent_hits))
        misses.add_metric([name, "l1"], total(lambda s: s.l2_hits + s.misses + s.coalesced))
        misses.add_metric([name, "l2"], total(lambda s: s.l2_misses))
        lock_waits.add_metric([name], total(lambda s: s.lock_waits))
        loads.add_metric([name, "ok"], total(lambda s: s.loads_ok))
        loads.add_metric([name, "failed"], total(lambda s: s.loads_failed))
        evictions.add_metric([name], total(lambda s: s.evictions))
        refreshes.add_metric([name, "ok"], total(lambda s: s.background_refreshes))
        refreshes.add_metric([name, "failed"], total(lambda s: s.background_refresh_failures))
        redis_errors.add_metric([name], total(lambda s: s.l2_errors))
        size.add_metric([name], total(lambda s: s.size))
        pending.add_metric([name], total(lambda s: s.pending))
        tiers = [s.redis_state for s in group if s.redis_state != "off"]
        if tiers:
            redis_up.add_metric([name], 1.0 if all(state == "up" for state in tiers) else 0.0)
    yield from (requests, misses, lock_waits, loads, evictions, refreshes, redis_errors, size, pending, redis_up)


@dataclass
class CacheMetrics:
    load_seconds: Histogram
    collector: _CacheCollector

    @classmethod
    def on(cls, registry: CollectorRegistry) -> CacheMetrics:
        with _lock:
            found = _per_registry.get(registry)
            if found is None:
                collector = _CacheCollector()
                registry.register(collector)
                found = _per_registry[registry] = cls(
                    load_seconds=metric(
                        registry, Histogram, f"{PREFIX}_load_seconds", "Duration of project loads (export calls) started by the cache.",
                        ["cache", "result"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
                    ),
                    collector=collector,
                )
            return found

    def track(self, cache: ProjectCache) -> None:
        self.collector.caches.add(cache)

    def observe_load(self, cache_name: str, seconds: float, ok: bool) -> None:
        self.load_seconds.labels(cache_name, "ok" if ok else "failed").observe(seconds)


_per_registry: weakref.WeakKeyDictionary[CollectorRegistry, CacheMetrics] = weakref.WeakKeyDictionary()
_lock = threading.Lock()
