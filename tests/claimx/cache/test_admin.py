"""The `/cache/*` admin routes on a real OpsServer: stats, invalidate, warm; bounded and guarded."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from kafka_pipeline.claimx.cache import admin
from kafka_pipeline.claimx.cache import warm as warm_module
from kafka_pipeline.claimx.cache.admin import admin_routes, cache_routes, is_loopback
from kafka_pipeline.claimx.cache.project_cache import ProjectCache
from kafka_pipeline.claimx.cache.warm import delta_warmer
from kafka_pipeline.config import CacheSettings, ConfigError, DeltaSettings, Settings
from kafka_pipeline.observability.ops_server import OpsServer
from tests.claimx.cache.helpers import Loader, event, make_worker, settings_for, tier_of
from tests.fixtures.waiting import until


async def shared_entries(cache: ProjectCache, project_ids: list[str]) -> bool:
    tier = tier_of(cache)
    return all([await tier.lookup(project_id) is not None for project_id in project_ids])


async def test_admin_routes(redis_url: str, tmp_path: pytest.TempPathFactory) -> None:
    root = str(tmp_path)
    write_deltalake(
        f"{root}/claimx_projects",
        pa.table({"project_id": ["w1", "w2"], "updated_at": pa.array([datetime.now(UTC)] * 2, pa.timestamp("us", tz="UTC"))}),
    )
    settings = settings_for(redis_url, admin_token="s3cret")
    cache, other = make_worker(settings), make_worker(settings)
    await cache.start()
    await other.start()
    api = Loader(delay=0)
    for pid in ("p1", "p2", "p3"):
        await event(cache, api, pid)
        await event(other, api, pid)
    await until(lambda: shared_entries(cache, ["p1", "p2", "p3"]), "the confirms written to Redis")
    routes = cache_routes(cache, warm_from=delta_warmer(cache, DeltaSettings(tables_root=root)))
    server = OpsServer("127.0.0.1", 0, routes=routes, readiness={"project_cache": cache.readiness})
    auth = {"Authorization": "Bearer s3cret"}
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app), base_url="http://ops") as client:
            assert (await client.get("/cache/stats")).status_code == 401
            assert (await client.get("/cache/stats", headers={"Authorization": "Bearer wrong"})).status_code == 401
            stats = (await client.get("/cache/stats", headers=auth)).json()
            assert stats["size"] == 3 and stats["redis_state"] == "up" and stats["misses"] == 3

            assert (await client.post("/cache/invalidate", json={"project_ids": ["p1"]})).status_code == 401
            bad = await client.post("/cache/invalidate", content=b"not json", headers=auth)
            assert bad.status_code == 400
            done = (await client.post("/cache/invalidate", json={"project_ids": ["p1"]}, headers=auth)).json()
            assert done == {"dropped": 1, "shared_dropped": 1, "broadcast": True}
            await until(lambda: "p1" not in other, timeout_s=2.0)
            everything = (await client.post("/cache/invalidate", json={"all": True}, headers=auth)).json()
            assert everything["dropped"] == 2 and everything["shared_dropped"] == 2

            warmed = (await client.post("/cache/warm", headers=auth)).json()
            assert warmed["warmed"] == 2 and "w1" in cache

            ready = (await client.get("/health/ready")).json()
            assert ready["ready"] is True and ready["checks"]["project_cache"]["tier"] == "l1+l2"
            metrics = (await client.get("/metrics")).text
            assert "claimx_project_cache_requests_total" in metrics
            assert "claimx_project_cache_load_seconds_bucket" in metrics
    finally:
        await cache.close()
        await other.close()


async def test_admin_routes_are_bounded(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bodies are size-capped, ids and window_s checked, one warm at a time, a failure is a one-line 500."""
    root = tmp_path / "tables"
    settings = CacheSettings(ttl_s=600.0, refresh_after_s=300.0)
    cache = ProjectCache(settings)
    server = OpsServer("127.0.0.1", 0, routes=admin.cache_routes(cache, warm_from=delta_warmer(cache, DeltaSettings(tables_root=str(root)))))
    release = asyncio.Event()
    real_warm = warm_module.warm_from_delta

    warming = asyncio.Event()

    async def slow_warm(*args: object) -> int:
        warming.set()
        await release.wait()
        return 0

    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app, raise_app_exceptions=False), base_url="http://ops") as client:
            huge = await client.post("/cache/invalidate", content=b'{"project_ids": ["' + b"1" * 2_000_000 + b'"]}')
            assert huge.status_code == 413
            deep = await client.post("/cache/invalidate", content=b"[" * 100_000 + b"]" * 100_000)
            assert deep.status_code == 400
            for ids in (["..", "1"], [1.5], [True], ["x" * 65], ["1"] * 10_001, [], "1", [["1"]]):
                answer = await client.post("/cache/invalidate", json={"project_ids": ids})
                assert answer.status_code == 400, ids
            assert (await client.post("/cache/invalidate", json={"project_ids": ["p1", 7]})).json()["dropped"] == 0
            for window in (0, -1, 601, 1e308, "10", True, None):
                answer = await client.post("/cache/warm", json={"window_s": window})
                assert answer.status_code == 400, window
                assert "600" in answer.json()["error"]

            monkeypatch.setattr(warm_module, "warm_from_delta", slow_warm)
            first = asyncio.create_task(client.post("/cache/warm", json={"window_s": 60}))
            await asyncio.wait_for(warming.wait(), 5.0)
            second = await client.post("/cache/warm", json={"window_s": 60})
            assert second.status_code == 409 and second.json() == {"error": "a warm is already running"}
            release.set()
            assert (await first).status_code == 200
            monkeypatch.setattr(warm_module, "warm_from_delta", real_warm)

            # a damaged table: the warm fails with a one-line 500, no traceback in the answer
            log_dir = root / "claimx_projects" / "_delta_log"
            log_dir.mkdir(parents=True)
            (log_dir / "00000000000000000000.json").write_text("{not a delta log")
            failed = await client.post("/cache/warm", json={"window_s": 60})
            assert failed.status_code == 500
            assert "Traceback" not in failed.text and "\n" not in failed.json()["error"]
            assert (await client.get("/cache/stats")).status_code == 200  # the routes still answer
    finally:
        await cache.close()


def test_admin_routes_refuse_a_network_host_without_a_token() -> None:
    cache = ProjectCache(CacheSettings())
    exposed = Settings(worker={"http_host": "0.0.0.0", "http_port": 9100})
    with pytest.raises(ConfigError, match="KP_CACHE__ADMIN_TOKEN"):
        admin_routes(exposed, cache)
    assert admin_routes(Settings(worker={"http_host": "0.0.0.0", "http_port": 9100}, cache={"admin_token": "t"}), cache)
    assert admin_routes(Settings(worker={"http_host": "0.0.0.0", "http_port": 9100}, cache={"admin_routes": False}), cache) == []
    assert admin_routes(Settings(worker={"http_host": "127.0.0.1", "http_port": 9100}), cache)
    assert admin_routes(Settings(worker={"http_host": "0.0.0.0", "http_port": 0}), cache)  # no ops port: nothing exposed, no refusal
    assert is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("ops.internal") and not is_loopback("10.0.0.1")
