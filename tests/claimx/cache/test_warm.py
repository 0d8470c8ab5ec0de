"""Warm start: a restarted worker primes its cache from a real `claimx_projects` Delta table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from kafka_pipeline.claimx.cache.factory import build_project_cache
from kafka_pipeline.claimx.cache.project_cache import ProjectCache
from kafka_pipeline.claimx.cache.warm import delta_warmer, warm_from_delta
from kafka_pipeline.config import CacheSettings, DeltaSettings
from tests.claimx.cache.helpers import Loader, event


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
    api = Loader(delay=0)
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
