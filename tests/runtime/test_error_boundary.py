"""The runtime's error boundary, for each of the three workers on the real broker: a message whose
handling raises any exception is dead-lettered with the exception's type and message, the worker
goes on, and the committed offsets reach the end of the partitions."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from kafka_pipeline.claimx.events import ClaimXEvent
from kafka_pipeline.claimx.handlers.base import HandlerContext, HandlerResult
from kafka_pipeline.config import KafkaSettings
from kafka_pipeline.dead_letters.envelope import DeadLetter
from kafka_pipeline.dead_letters.routing import now_ms
from kafka_pipeline.kafka.clients import ensure_topics, make_consumer, make_producer
from kafka_pipeline.simulator import SimulatorProcess
from kafka_pipeline.simulator.events import generate_events
from kafka_pipeline.workers.enrich import worker as enrich_module
from kafka_pipeline.workers.enrich.worker import EnrichmentWorker
from kafka_pipeline.workers.retry import scheduler as scheduler_module
from kafka_pipeline.workers.retry.scheduler import RetryScheduler
from kafka_pipeline.workers.writer import entity_writer as writer_module
from kafka_pipeline.workers.writer.entity_writer import EntityWriter
from tests.fixtures.enrich import all_committed, committed, produce, running, worker_settings
from tests.fixtures.kafka_io import read_topic
from tests.fixtures.retry import produce as produce_retries
from tests.fixtures.retry import retry_message, scheduler_settings
from tests.fixtures.waiting import until
from tests.fixtures.writer import build_stream, encoded, reference, table_contents, wait_committed, writer_settings
from tests.fixtures.writer import produce as produce_rows

# What a handler raises for these projects: the usual suspects of a buggy handler or a hostile value.
INJECTED: dict[str, BaseException] = {
    "7001": RecursionError("maximum recursion depth exceeded while decoding a JSON object"),
    "7002": OverflowError("date value out of range"),
    "7003": KeyError("projectId"),
    "7004": UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
}


async def produce_keyless(kafka: KafkaSettings, lines: list[str]) -> None:
    producer = make_producer(kafka)
    await producer.start()
    try:
        for line in lines:
            await producer.send_and_wait(kafka.events_topic, line.encode())
    finally:
        await producer.stop()


def letters(records: list[Any]) -> list[DeadLetter]:
    return [DeadLetter.from_bytes(r.value) for r in records]


async def test_enrichment_worker_dead_letters_whatever_an_event_raises(
    kafka_settings: KafkaSettings, api: SimulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_handler_for = enrich_module.handler_for

    class Raising:
        def __init__(self, handler: Any) -> None:
            self.handler = handler

        async def handle(self, event: ClaimXEvent, context: HandlerContext, **options: Any) -> HandlerResult:
            if event.project_id in INJECTED:
                raise INJECTED[event.project_id]
            result: HandlerResult = await self.handler.handle(event, context, **options)
            return result

    def handler_for(event_type: str) -> Any:
        handler = real_handler_for(event_type)
        return None if handler is None else Raising(handler)

    real_route = enrich_module.route_failure

    def route_failure(record: Any, error: Any, **kwargs: Any) -> Any:
        if b'"7005"' in record.value:  # the failure path itself raises
            raise UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")
        return real_route(record, error, **kwargs)

    monkeypatch.setattr(enrich_module, "handler_for", handler_for)
    monkeypatch.setattr(enrich_module, "route_failure", route_failure)

    good = generate_events(30, 5, seed=11)
    poison = [json.dumps({"event_type": "PROJECT_CREATED", "project_id": pid, "ingested_at": "2026-03-02T08:00:00Z"}) for pid in INJECTED]
    poison.append(json.dumps({"event_type": "PROJECT_CREATED", "project_id": "7005", "ingested_at": "not a time"}))
    poison.append("[" * 100_000 + "]" * 100_000)  # a real RecursionError in the JSON parser
    poison.append('{"event_type": "PROJECT_CREATED", "project_id": ' + "9" * 5000 + "}")  # a real ValueError (int digits limit)
    lines = good + poison
    settings = worker_settings(kafka_settings, api)
    await produce(settings.kafka, good)
    await produce_keyless(settings.kafka, poison)
    worker = EnrichmentWorker(settings)
    async with running(worker) as task:
        await until(lambda: worker.counts.processed >= len(lines), task=task)
        dead = letters(await read_topic(settings.kafka, settings.kafka.dlq_topic, len(poison)))
        group = settings.enrich.group_id
        await until(lambda: all_committed(settings.kafka, group, len(lines)), "every offset committed", task=task)
    assert task.done() and task.exception() is None  # the worker went on and stopped cleanly
    assert worker.counts.dead_lettered == len(poison) and worker.counts.reconciles()
    by_type = Counter(d.error_type for d in dead)
    for pid, exc in INJECTED.items():
        letter = next(d for d in dead if d.value is not None and f'"{pid}"' in d.value.data)
        assert letter.error_type == type(exc).__name__ and type(exc).__name__ in letter.error_message
    assert len(dead) == len(poison) and by_type["UnicodeEncodeError"] == 2  # 7004 from the handler, 7005 from the failure path
    assert sum((await committed(settings.kafka, settings.enrich.group_id)).values()) == len(lines)


async def test_entity_writer_dead_letters_whatever_a_message_raises(
    kafka_settings: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = build_stream(seed=5, events=60)
    raised = (OverflowError("int too big to convert"), KeyError("claimx_media"), RecursionError("deep"))
    poison = {m.trace_id: exc for m, exc in zip(stream[5:8], raised, strict=True)}
    real_add = writer_module.BatchBuilder.add

    def add(self: Any, message: Any, **kwargs: Any) -> int:
        if message.trace_id in poison:
            raise poison[message.trace_id]
        return real_add(self, message, **kwargs)

    real_from_bytes = writer_module.EntityRowsMessage.from_bytes

    def from_bytes(value: bytes) -> Any:
        if value.startswith(b"boom"):
            raise RecursionError("maximum recursion depth exceeded")
        return real_from_bytes(value)

    monkeypatch.setattr(writer_module.BatchBuilder, "add", add)
    monkeypatch.setattr(writer_module.EntityRowsMessage, "from_bytes", staticmethod(from_bytes))
    values = encoded(stream)
    values.insert(20, (b"7001", b"boom: raised while decoding"))
    ends = await produce_rows(kafka_settings, values)
    group = f"writer-{uuid.uuid4().hex[:8]}"
    settings = writer_settings(kafka_settings, str(tmp_path), group)
    writer = EntityWriter(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    try:
        await wait_committed(kafka_settings, group, ends)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    dead = letters(await read_topic(kafka_settings, kafka_settings.dlq_topic, sum(m.trace_id in poison for m in stream) + 1))
    expected = Counter(type(poison[m.trace_id]).__name__ for m in stream if m.trace_id in poison) + Counter({"RecursionError": 1})
    assert Counter(d.error_type for d in dead) == expected
    assert all(d.error_type in d.error_message for d in dead)
    assert table_contents(str(tmp_path)) == reference(m for m in stream if m.trace_id not in poison)


async def test_retry_scheduler_dead_letters_whatever_a_message_raises(kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    kafka = kafka_settings
    await ensure_topics(kafka, [kafka.events_topic, kafka.retry_topic, kafka.dlq_topic])
    messages = [retry_message(kafka, n, delays=[1], now=now_ms() - 2_000) for n in range(12)]
    raising = {b"event-3": KeyError("retry-due-at"), b"event-7": OverflowError("timestamp out of range")}
    real_parse = scheduler_module.parse_retry_headers
    current: dict[str, bytes] = {}

    async def add(self: RetryScheduler, tp: Any, record: Any) -> None:
        current["value"] = record.value
        await real_add(self, tp, record)

    def parse(headers: Any) -> Any:
        if current.get("value") in raising:
            raise raising[current["value"]]
        return real_parse(headers)

    real_add = RetryScheduler.add
    monkeypatch.setattr(RetryScheduler, "add", add)
    monkeypatch.setattr(scheduler_module, "parse_retry_headers", parse)
    settings = scheduler_settings(kafka, [1])
    scheduler = RetryScheduler(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    try:
        await asyncio.wait_for(scheduler.joined.wait(), 20)
        await produce_retries(kafka, messages)
        forwarded = await read_topic(kafka, kafka.events_topic, len(messages) - len(raising))
        dead = letters(await read_topic(kafka, kafka.dlq_topic, len(raising)))
        rejected = lambda: scheduler.registry.get_sample_value(  # noqa: E731 - the error boundary's dead letters
            "kafka_pipeline_dead_letters_total", {"group": settings.retry.group_id, "error_type": "KeyError"}
        ) == 1 and scheduler.registry.get_sample_value(
            "kafka_pipeline_dead_letters_total", {"group": settings.retry.group_id, "error_type": "OverflowError"}
        ) == 1
        await until(rejected, task=task)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert sorted(r.value for r in forwarded) == sorted(m.value for m in messages if m.value not in raising)
    assert Counter(d.error_type for d in dead) == {"KeyError": 1, "OverflowError": 1}
    positions = await scheduler_committed(kafka, settings.retry.group_id)
    assert sum(positions.values()) == len(messages)


async def scheduler_committed(kafka: KafkaSettings, group: str) -> dict[int, int]:
    consumer = make_consumer(kafka, group_id=group)
    await consumer.start()
    try:
        out = {}
        for partition in range(kafka.partitions):
            offset = await consumer.committed(TopicPartition(kafka.retry_topic, partition))
            if offset is not None:
                out[partition] = offset
        return out
    finally:
        await consumer.stop()
