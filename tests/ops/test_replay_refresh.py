"""A backfill that corrects the tables: events replayed from the tables' own event log with
`--refresh-projects` make the enrichment worker refetch their projects instead of trusting its
cache, and the corrected values reach the table (the replay has the original event_time; the tie
goes to the later arrival). Without the flag the cached project is trusted and nothing changes.

Real parts throughout: tansu, the ClaimX API simulator over HTTP (restarted on the same port with
another data seed: "the API's data was corrected"), the enrichment worker, the entity writer and
Delta tables, and the `kafka-pipeline inject` / `replay` command lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from kafka_pipeline.claimx.api.client import ClaimXApiClient
from kafka_pipeline.claimx.cache.project_cache import ProjectCache
from kafka_pipeline.claimx.events import parse_event
from kafka_pipeline.claimx.handlers import HandlerContext, MediaBatcher, handler_for
from kafka_pipeline.claimx.handlers.base import refresh_requested
from kafka_pipeline.cli import main
from kafka_pipeline.config import (
    ApiSettings,
    CacheSettings,
    KafkaSettings,
    Settings,
    load_settings,
)
from kafka_pipeline.delta.table_writer import read_delta_table, table_uri
from kafka_pipeline.offsets.topic_offsets import group_lag
from kafka_pipeline.simulator import SimulatorProcess
from kafka_pipeline.workers.enrich.worker import EnrichmentWorker
from kafka_pipeline.workers.writer.entity_writer import EntityWriter
from tests.fixtures.waiting import until

PROJECT = 5_000_003  # its projectNumber differs between seeds 7 and 8
OTHER = 5_000_004


def settings_for(kafka: KafkaSettings, sim: SimulatorProcess, root: str) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    return load_settings(
        kafka={**kafka.model_dump(), "session_timeout_ms": 6000},  # tansu joins take half a session
        api={"url": sim.url, "token": sim.token, "retries": 2, "backoff_base_s": 0.05, "timeout_s": 5},
        delta={"tables_root": root},
        enrich={"group_id": f"enrich-{suffix}", "stats_interval_s": 5},
        writer={"group_id": f"writer-{suffix}", "max_latency_s": 0.2, "stats_interval_s": 5},
        worker={"name": "refresh-test", "shutdown_grace_s": 10},
    )


def api_project_number(sim: SimulatorProcess, project: int) -> str:
    """What the API says now, from its raw JSON (not through the pipeline's transforms)."""
    body = httpx.get(f"{sim.url}/export/project/{project}", headers=sim.headers, timeout=5).json()
    return str(body.get("data", body)["project"]["projectNumber"])


def table_project_numbers(root: str) -> dict[str, str]:
    rows = read_delta_table(table_uri(root, "claimx_projects"), ["project_id"]).to_pylist()
    return {row["project_id"]: row["project_number"] for row in rows}


@contextlib.asynccontextmanager
async def pipeline(settings: Settings) -> AsyncIterator[EnrichmentWorker]:
    """The enrichment worker and the entity writer, running until the block ends."""
    worker, writer = EnrichmentWorker(settings), EntityWriter(settings)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(worker.run(stop)), asyncio.create_task(writer.run(stop))]
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)


async def settled(settings: Settings, worker: EnrichmentWorker, succeeded: int) -> None:
    """The worker handled `succeeded` events and the writer committed every message it produced."""
    await until(lambda: asyncio.sleep(0, worker.counts.succeeded >= succeeded), f"{succeeded} events enriched")
    kafka = settings.kafka

    async def written() -> bool:
        return await group_lag(kafka, settings.writer.group_id, kafka.entity_rows_topic) == 0

    await until(written, "the writer to commit")


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def test_refresh_projects_replay_from_the_event_log_corrects_the_table(
    kafka_settings: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(tmp_path / "tables")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_settings.bootstrap_servers)
    monkeypatch.setenv("KAFKA_EVENTS_TOPIC", kafka_settings.events_topic)
    monkeypatch.setenv("DELTA_TABLES_ROOT", root)
    wrong = SimulatorProcess(seed=7, log_path=tmp_path / "sim-7.log").start()
    port = wrong.port
    right: SimulatorProcess | None = None
    try:
        settings = settings_for(kafka_settings, wrong, root)
        before, other_before = api_project_number(wrong, PROJECT), api_project_number(wrong, OTHER)
        for project in (PROJECT, OTHER):
            assert await cli("inject", "--type", "POLICYHOLDER_INVITED", "--project-id", str(project),
                             "--ingested-at", "2026-02-01T10:00:00Z") == 0
        async with pipeline(settings) as worker:
            await settled(settings, worker, 2)
            assert table_project_numbers(root)[str(PROJECT)] == before

            # the API's data is corrected: same address, new data
            wrong.stop()
            right = SimulatorProcess(seed=8, port=port, log_path=tmp_path / "sim-8.log").start()
            after = api_project_number(right, PROJECT)
            assert after != before
            right.reset_stats()

            # a replay that trusts the cache: the worker has the project, nothing is refetched
            assert await cli("replay", "--from-table", "--project-id", str(PROJECT), "--no-progress") == 0
            await settled(settings, worker, 3)
            assert right.stats()["project"] == 0
            assert table_project_numbers(root)[str(PROJECT)] == before

            # the backfill that refetches
            assert await cli("replay", "--from-table", "--project-id", str(PROJECT), "--refresh-projects", "--no-progress") == 0
            await settled(settings, worker, 4)
            assert right.stats()["project_by_id"] == {str(PROJECT): 1}
            numbers = table_project_numbers(root)
            assert numbers[str(PROJECT)] == after  # corrected
            assert numbers[str(OTHER)] == other_before != api_project_number(right, OTHER)  # not replayed: untouched
        out = capsys.readouterr().out
        assert "sent 1 events" in out and "asking for project refetch" in out
    finally:
        wrong.stop()
        if right is not None:
            right.stop()


async def test_the_handler_refetches_a_cached_project_when_asked() -> None:
    """The unit under the end-to-end test: a confirmed project is a hit, unless the event asks."""
    exports: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        exports.append(request.url.path)
        return httpx.Response(200, json={"data": {"project": {"projectId": 42, "projectNumber": f"N-{len(exports)}"}}})

    settings = ApiSettings(url="http://claimx.test", token="dXNlcjpwYXNz", retries=0)
    async with ClaimXApiClient(settings, transport=httpx.MockTransport(api)) as client:
        ctx = HandlerContext(api=client, cache=ProjectCache(CacheSettings()), media=MediaBatcher(client))
        event = parse_event(b'{"event_type": "POLICYHOLDER_INVITED", "project_id": 42, "ingested_at": "2026-02-01T10:00:00Z"}')
        handler = handler_for(event.event_type)
        assert handler is not None
        first = await handler.handle(event, ctx)
        assert first.carries_project and first.rows["claimx_projects"][0]["project_number"] == "N-1"
        ctx.cache.confirm("42")
        cached = await handler.handle(event, ctx)
        assert not cached.carries_project and len(exports) == 1  # trusted the cache
        refreshed = await handler.handle(event, ctx, refresh=True)
        assert refreshed.carries_project and len(exports) == 2
        assert [r["project_number"] for r in refreshed.rows["claimx_projects"] if r.get("project_number")] == ["N-2"]


def test_only_the_refresh_header_asks_for_a_refetch() -> None:
    assert refresh_requested([("x", b"y"), ("refresh-project", b"1")])
    assert not refresh_requested([("refresh-project", b"0")]) and not refresh_requested(None) and not refresh_requested([])
