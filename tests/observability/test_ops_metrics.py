"""Metrics worth graphing: consumer lag per partition, table freshness, project fetches avoided,
and the cycle-stats line shown once on the console (its fields kept in JSON logs)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest
import structlog
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from kafka_pipeline.claimx.cache.project_cache import ProjectCache, ProjectSnapshot
from kafka_pipeline.config import CacheSettings, KafkaSettings
from kafka_pipeline.kafka.clients import ensure_topics, make_consumer, make_producer
from kafka_pipeline.observability.logging import configure_logging, get_logger
from kafka_pipeline.offsets.consumer_lag import ConsumerLag
from kafka_pipeline.runtime.cycle_stats import CycleSnapshot, CycleStats
from kafka_pipeline.workers.writer.table_freshness import TableFreshness


@pytest.fixture
def restore_logging() -> object:
    yield None
    structlog.reset_defaults()


def _tick(log_format: str, capsys: pytest.CaptureFixture[str]) -> str:
    configure_logging("enrich-1", log_format=log_format)
    snapshot = CycleSnapshot(parts={"succeeded": 90, "failed": 2, "skipped": 0}, counters={"api_calls": 92}, gauges={"fetches_avoided": 0.931})
    stats = CycleStats(lambda: snapshot, interval_s=10, logger=get_logger("test"))
    stats.tick()
    return capsys.readouterr().err.strip()


def test_console_shows_the_cycle_line_once(capsys: pytest.CaptureFixture[str], restore_logging: object) -> None:
    line = _tick("console", capsys)
    assert line.count("api_calls=92") == 1, line
    assert "fetches_avoided=93.1%" in line and "api_calls_total" not in line and "_fields_in_message" not in line
    assert "worker=enrich-1" in line  # context fields are still shown


def test_json_log_keeps_the_cycle_fields(capsys: pytest.CaptureFixture[str], restore_logging: object) -> None:
    record = json.loads(_tick("json", capsys))
    assert record["api_calls"] == 92 and record["api_calls_total"] == 92 and record["processed"] == 92
    assert record["fetches_avoided"] == 0.931 and "_fields_in_message" not in record


async def test_fetches_avoided_credits_coalesced_events() -> None:
    """20 concurrent events of one project share one fetch: no hit, yet 95% of fetches avoided."""
    cache = ProjectCache(CacheSettings(), name=f"test-{uuid.uuid4().hex[:6]}")
    started = asyncio.Event()

    async def load() -> ProjectSnapshot:
        started.set()
        await asyncio.sleep(0.05)
        return ProjectSnapshot("p1", {"claimx_projects": [{"project_id": "p1"}]})

    results = await asyncio.gather(*(cache.verify("p1", load) for _ in range(20)))
    assert [r.outcome for r in results].count("loaded") == 1
    stats = cache.stats()
    assert stats.hit_rate == 0.0
    assert stats.fetches_avoided == pytest.approx(0.95)


def test_table_freshness_grows_until_the_next_commit(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    freshness = TableFreshness(registry, str(tmp_path), ["claimx_projects"], {})
    assert registry.get_sample_value("claimx_writer_table_freshness_seconds", {"table": "claimx_projects"}) is None
    freshness.committed(["claimx_projects"], at=time.time() - 120)
    age = registry.get_sample_value("claimx_writer_table_freshness_seconds", {"table": "claimx_projects"})
    assert age is not None and 119 < age < 130
    freshness.committed(["claimx_projects"])
    age = registry.get_sample_value("claimx_writer_table_freshness_seconds", {"table": "claimx_projects"})
    assert age is not None and age < 5


async def test_consumer_lag_per_partition_from_the_committed_offset(kafka_settings: KafkaSettings) -> None:
    topic, group = kafka_settings.events_topic, f"lag-{uuid.uuid4().hex[:6]}"
    await ensure_topics(kafka_settings, [topic])
    producer = make_producer(kafka_settings)
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, b"x", partition=i % 2)  # 5 on partition 0, 5 on 1
    finally:
        await producer.stop()
    registry = CollectorRegistry()
    consumer = make_consumer(kafka_settings, topic, group_id=group)
    await consumer.start()
    try:
        lag = ConsumerLag(consumer, group, registry)
        deadline = time.monotonic() + 20
        consumed = 0
        while consumed < 10 and time.monotonic() < deadline:
            consumed += sum(len(r) for r in (await consumer.getmany(timeout_ms=500)).values())
        assert consumed == 10
        await consumer.commit({TopicPartition(topic, 0): 2})  # partition 0: 3 left; partition 1: nothing committed
        await lag.refresh()
        value = lambda name, p: registry.get_sample_value(name, {"group": group, "topic": topic, "partition": str(p)})  # noqa: E731
        assert value("kafka_consumer_lag_messages", 0) == 3
        assert value("kafka_consumer_committed_offset", 0) == 2 and value("kafka_consumer_end_offset", 0) == 5
        assert value("kafka_consumer_lag_messages", 1) == 0  # nothing committed yet: counted from the position
        consumer.unsubscribe()  # owns nothing now: its series go (the next owner reports them)
        await lag.refresh()
        assert value("kafka_consumer_lag_messages", 0) is None and value("kafka_consumer_end_offset", 1) is None
    finally:
        await consumer.stop()
