"""The counts read as one CacheStats: rates, the cycle-stats line, readiness."""

from __future__ import annotations

from kafka_pipeline.claimx.cache.shared import LocalTier
from kafka_pipeline.claimx.cache.stats import CacheStats, Counters
from tests.claimx.cache.helpers import RecordingTier


def test_stats_of_the_counters_and_the_tier() -> None:
    counters = Counters(l1_hits=6, l2_hits=2, misses=1, coalesced=1, absent_hits=0, loads_ok=1)
    tier = RecordingTier()
    tier.counters.lock_waits, tier.counters.misses, tier.counters.errors = 3, 4, 5
    stats = CacheStats.of(counters, tier, size=7, pending=1, evictions=2)
    assert (stats.hits, stats.l2_hits, stats.lookups, stats.size, stats.pending, stats.evictions) == (8, 2, 10, 7, 1, 2)
    assert (stats.lock_waits, stats.l2_misses, stats.l2_errors, stats.redis_state) == (3, 4, 5, "up")
    assert (stats.hit_rate, stats.l1_hit_rate, stats.l2_hit_rate, stats.fetches_avoided) == (0.8, 0.6, 0.2, 0.9)


def test_no_lookups_no_rates() -> None:
    stats = CacheStats.of(Counters(), LocalTier(), size=0, pending=0, evictions=0)
    assert (stats.hit_rate, stats.fetches_avoided, stats.redis_state) == (0.0, 0.0, "off")


def test_the_line_names_redis_only_when_there_is_a_shared_tier() -> None:
    counters = Counters(l1_hits=3, misses=1)
    local = CacheStats.of(counters, LocalTier(), size=1, pending=0, evictions=0)
    assert local.line() == "project_cache_size=1 hit_rate=75.0% (l1=75.0% l2=0.0%)"
    shared = CacheStats.of(counters, RecordingTier(), size=1, pending=0, evictions=0)
    assert shared.line().endswith(" redis=up")


def test_readiness_is_never_lost_to_redis() -> None:
    down = CacheStats(size=2, pending=1, redis_state="down")
    assert down.readiness() == (True, {"size": 2, "pending": 1, "redis": "down", "tier": "l1"})
    assert CacheStats(redis_state="up").readiness()[1]["tier"] == "l1+l2"
