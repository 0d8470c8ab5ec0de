"""The factory builds the cache the settings describe: in-process alone, or with the Redis tier."""

from __future__ import annotations

from kafka_pipeline.claimx.cache.factory import build_project_cache
from kafka_pipeline.config import CacheSettings
from tests.claimx.cache.helpers import settings_for


async def test_from_settings_without_and_with_redis(redis_url: str) -> None:
    plain = build_project_cache(CacheSettings())
    assert plain.shared_tier is None and plain.stats().redis_state == "off"
    shared = build_project_cache(settings_for(redis_url))
    assert shared.shared_tier is not None
    await shared.start()
    assert shared.stats().redis_state == "up"
    await shared.close()
