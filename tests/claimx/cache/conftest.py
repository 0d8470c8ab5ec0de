"""Fixtures of the cache tests: simulated workers sharing the session's redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kafka_pipeline.claimx.cache.project_cache import ProjectCache
from tests.claimx.cache.helpers import SOCKET_TIMEOUT_S, settings_for, start_workers


@pytest.fixture
async def workers(redis_url: str) -> AsyncIterator[list[ProjectCache]]:
    """Three workers' caches on one Redis, with a timeout a busy machine does not trip."""
    caches = await start_workers(settings_for(redis_url))
    yield caches
    for cache in caches:  # bounded: a close that hangs fails the test here instead of holding the suite
        await asyncio.wait_for(cache.close(), 30)


@pytest.fixture
async def outage_workers(redis_url: str) -> AsyncIterator[list[ProjectCache]]:
    """Three workers with the short production socket timeout, for the outage tests."""
    caches = await start_workers(settings_for(redis_url, socket_timeout_s=SOCKET_TIMEOUT_S))
    yield caches
    for cache in caches:  # bounded: a close that hangs fails the test here instead of holding the suite
        await asyncio.wait_for(cache.close(), 30)
