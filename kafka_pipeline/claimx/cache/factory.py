"""The one place that builds the ProjectCache the settings describe."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry

from kafka_pipeline.claimx.cache.metrics import CacheMetrics
from kafka_pipeline.claimx.cache.project_cache import ProjectCache, RefreshCallback
from kafka_pipeline.claimx.cache.redis_tier import RedisTier
from kafka_pipeline.config import CacheSettings


def build_project_cache(
    settings: CacheSettings,
    *,
    registry: CollectorRegistry = REGISTRY,
    on_background_refresh: RefreshCallback | None = None,
    name: str = "project",
    clock: Callable[[], float] = time.monotonic,
) -> ProjectCache:
    """In-process tier, plus the Redis tier when `redis_url` is set; its metrics on `registry`."""
    metrics = CacheMetrics.on(registry)
    shared = RedisTier(settings) if settings.redis_url else None
    cache = ProjectCache(
        settings, clock=clock, shared_tier=shared, on_background_refresh=on_background_refresh, name=name, observer=metrics.observe_load
    )
    metrics.track(cache)
    return cache
