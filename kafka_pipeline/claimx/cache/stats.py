"""The cache's counts: plain integers bumped by its parts, read as one `CacheStats`.

The hot path (an in-process hit) only bumps an integer; metrics (`metrics.py`), the cycle-stats
line and the readiness check read `CacheStats` when asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kafka_pipeline.claimx.cache.shared import SharedTier


@dataclass
class Counters:
    """Bumped by the cache's parts as they go."""

    l1_hits: int = 0
    l2_hits: int = 0
    misses: int = 0
    coalesced: int = 0
    absent_hits: int = 0
    loads_ok: int = 0
    loads_failed: int = 0
    background_refreshes: int = 0
    background_refresh_failures: int = 0


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

    @classmethod
    def of(cls, counters: Counters, tier: SharedTier, *, size: int, pending: int, evictions: int) -> CacheStats:
        c = counters
        return cls(
            hits=c.l1_hits + c.l2_hits,
            misses=c.misses,
            coalesced=c.coalesced,
            loads_ok=c.loads_ok,
            loads_failed=c.loads_failed,
            evictions=evictions,
            size=size,
            l2_hits=c.l2_hits,
            absent_hits=c.absent_hits,
            pending=pending,
            lock_waits=tier.counters.lock_waits,
            background_refreshes=c.background_refreshes,
            background_refresh_failures=c.background_refresh_failures,
            redis_state=tier.state,
            l2_misses=tier.counters.misses,
            l2_errors=tier.counters.errors,
        )

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

    def line(self) -> str:
        """One line for the cycle-stats log: size and hit rate per tier."""
        line = f"project_cache_size={self.size} hit_rate={self.hit_rate:.1%} (l1={self.l1_hit_rate:.1%} l2={self.l2_hit_rate:.1%})"
        if self.redis_state != "off":
            line += f" redis={self.redis_state}"
        return line

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Redis being down never makes the worker unready: the worker carries on with its
        in-process tier; the details say so."""
        details: dict[str, Any] = {"size": self.size, "pending": self.pending, "redis": self.redis_state}
        details["tier"] = "l1" if self.redis_state != "up" else "l1+l2"
        return True, details
