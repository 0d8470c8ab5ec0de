"""Issue 21 on the real broker: records whose envelope is hostile (a header name that is not
UTF-8, a timestamp before year 1, a 1 MB key, a gzip bomb) and a forged `retry-due-at` of
2^63-1. No worker stops, each record is dead-lettered once with its reason, and every group's
committed offsets reach the end of its topic."""

from __future__ import annotations

import asyncio
import json

from aiokafka.errors import InvalidTimestampError

from kafka_pipeline.config import KafkaSettings
from kafka_pipeline.dead_letters.envelope import DeadLetter, RecordView, dead_letter_for
from kafka_pipeline.dead_letters.routing import RETRY_ATTEMPT, RETRY_DUE_AT, RETRY_ORIGINAL_OFFSET, RETRY_ORIGINAL_PARTITION, RETRY_TARGET_TOPIC, now_ms
from kafka_pipeline.kafka.clients import ensure_topics, make_producer
from kafka_pipeline.offsets.topic_offsets import committed_offsets, high_watermarks
from kafka_pipeline.ops import status as status_module
from kafka_pipeline.ops.dlq import inspect_entries, read_dlq, summarize
from kafka_pipeline.simulator import SimulatorProcess
from kafka_pipeline.workers.enrich.worker import EnrichmentWorker
from kafka_pipeline.workers.retry.scheduler import RetryScheduler
from tests.faults.envelopes import Envelope, bomb, send_raw
from tests.fixtures.enrich import committed, running, worker_settings
from tests.fixtures.kafka_io import read_topic
from tests.fixtures.retry import scheduler_settings
from tests.fixtures.waiting import until

BAD_NAME = b"\xff\xfe-not-utf8"


def event(project_id: str, n: int) -> bytes:
    return json.dumps({"event_type": "PROJECT_CREATED", "project_id": project_id, "event_id": f"env-{n}",
                       "ingested_at": "2026-03-02T08:00:00Z"}).encode()


def hostile_envelopes() -> list[tuple[Envelope, str]]:
    """(record, what its dead letter's error must say)."""
    return [
        # a valid event: were its header skipped rather than the record dead-lettered, it would be written
        (Envelope("header-name-not-utf8", key=b"5000001", value=event("5000001", 90), headers=[(BAD_NAME, b"v")]), "UnicodeDecodeError"),
        (Envelope("timestamp-before-year-1", value=b"{not json", timestamp_ms=-62135596800001), "not JSON"),
        (Envelope("timestamp-max", value=b"{not json", timestamp_ms=2**63 - 1), "not JSON"),
        (Envelope("key-1mb", key=b"K" * 1_000_000, value=b"{not json"), "not JSON"),
        (Envelope("gzip-bomb-50mb", value=bomb(50_000_000), codec="gzip"), "over the"),
    ]


async def test_no_envelope_stops_the_enrichment_worker(kafka_settings: KafkaSettings, api: SimulatorProcess, broker_kind: str) -> None:
    settings = worker_settings(kafka_settings, api)
    kafka = settings.kafka
    await ensure_topics(kafka, [kafka.events_topic, kafka.entity_rows_topic, kafka.retry_topic, kafka.dlq_topic])
    hostile = hostile_envelopes()
    producer = make_producer(kafka, max_request_size=4 * 1024 * 1024, enable_idempotence=False)
    await producer.start()
    offsets: dict[str, int] = {}
    try:  # all on partition 0, good events around them: what follows a hostile record is read too
        for n in range(3):
            await send_raw(producer, kafka.events_topic, 0, Envelope(f"good-{n}", key=b"5000001", value=event("5000001", n)))
        for record, reason in list(hostile):
            try:
                offsets[record.name] = await send_raw(producer, kafka.events_topic, 0, record)
            except InvalidTimestampError:
                # Apache Kafka refuses a timestamp < 0 or past message.timestamp.after.max.ms; tansu stores it
                assert broker_kind == "kafka" and record.timestamp_ms is not None
                hostile.remove((record, reason))
        for n in range(3, 6):
            await send_raw(producer, kafka.events_topic, 0, Envelope(f"good-{n}", key=b"5000002", value=event("5000002", n)))
    finally:
        await producer.stop()
    ends = await high_watermarks(kafka, kafka.events_topic)
    worker = EnrichmentWorker(settings)
    async with running(worker) as task:
        await until(lambda: worker.counts.processed + (worker.handle.rejected if worker.handle else 0) >= 6 + len(hostile), task=task)
        dead = [DeadLetter.from_bytes(r.value) for r in await read_topic(kafka, kafka.dlq_topic, len(hostile))]
        await until(lambda: not task.done() and worker.handle.tracker.committable() == {}, task=task)
        positions = await committed(kafka, settings.enrich.group_id)
        assert not task.done()  # no record stopped the worker
    assert task.exception() is None
    by_offset = {d.offset: d for d in dead}
    assert len(dead) == len(hostile) and len(by_offset) == len(hostile)  # each once
    for record, reason in hostile:
        letter = by_offset[offsets[record.name]]
        assert reason in letter.error_message, (record.name, letter.error_message)
        assert letter.original_topic == kafka.events_topic and letter.made_by == "enrich"
        if record.timestamp_ms is not None:
            assert letter.timestamp is None  # out of range: absent
    assert by_offset[offsets["key-1mb"]].key_size == 1_000_000
    assert by_offset[offsets["gzip-bomb-50mb"]].value_size == 50_000_000
    assert worker.counts.succeeded == 6  # the good events around them all went through
    assert positions.get(0) == ends[0] and all(positions.get(p, 0) == end for p, end in ends.items())


async def test_a_forged_due_time_is_clamped_and_a_bad_header_name_dead_lettered(kafka_settings: KafkaSettings) -> None:
    kafka = kafka_settings
    await ensure_topics(kafka, [kafka.events_topic, kafka.retry_topic, kafka.dlq_topic])
    settings = scheduler_settings(kafka, [1.0])
    headers = [(RETRY_ATTEMPT.encode(), b"1"), (RETRY_DUE_AT.encode(), str(2**63 - 1).encode()),
               (RETRY_TARGET_TOPIC.encode(), kafka.events_topic.encode()), (RETRY_ORIGINAL_PARTITION.encode(), b"0"),
               (RETRY_ORIGINAL_OFFSET.encode(), b"0")]
    producer = make_producer(kafka, enable_idempotence=False)
    await producer.start()
    try:
        await send_raw(producer, kafka.retry_topic, 0, Envelope("forever", key=b"p", value=b"forged-forever", headers=headers))
        bad = await send_raw(producer, kafka.retry_topic, 0, Envelope("bad-name", key=b"p", value=b"x", headers=[(BAD_NAME, b"1"), *headers]))
    finally:
        await producer.stop()
    # status reads the backlog before the scheduler runs: a due time of 2^63-1 is shown as at most the longest delay
    retry_group = status_module.GroupStatus(settings.retry.group_id, kafka.retry_topic, "Empty", [],
                                            [status_module.PartitionStatus(0, None, 2, 2)])
    backlog = await status_module._retry(kafka, retry_group, max_delay_s=1.0)
    assert backlog.next_due_at is not None and backlog.next_due_at.timestamp() * 1000 <= now_ms() + 1_000
    scheduler = RetryScheduler(settings, stats_interval_s=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    try:
        forwarded = await read_topic(kafka, kafka.events_topic, 1, timeout_s=20)
        dead = [DeadLetter.from_bytes(r.value) for r in await read_topic(kafka, kafka.dlq_topic, 1, timeout_s=20)]
        ends = await high_watermarks(kafka, kafka.retry_topic)
        await until(lambda: scheduler.handle.tracker.committable() == {} and scheduler.stats.forwarded == 1, task=task, timeout_s=20)
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert [r.value for r in forwarded] == [b"forged-forever"]
    assert len(dead) == 1 and dead[0].offset == bad and dead[0].error_type == "UnicodeDecodeError"
    assert await committed_offsets(kafka, settings.retry.group_id, kafka.retry_topic) == ends


async def test_the_dlq_tools_read_past_hostile_records(kafka_settings: KafkaSettings) -> None:
    kafka = kafka_settings
    await ensure_topics(kafka, [kafka.dlq_topic])
    genuine = dead_letter_for(RecordView(kafka.events_topic, 0, 5, b"k", b"{bad"), error_type="MalformedEvent",
                              error_message="not JSON", category="permanent", worker="w", made_by="enrich")
    deep = b"[" * 100_000 + b"]" * 100_000
    producer = make_producer(kafka, enable_idempotence=False)
    await producer.start()
    try:
        for record in (Envelope("bad-name", value=genuine.to_bytes(), headers=[(BAD_NAME, b"x")]),
                       Envelope("deep-marker", value=deep, headers=[(b"dlq-marker", b"replayed")]),
                       Envelope("deep-letter", value=deep),
                       Envelope("genuine", value=genuine.to_bytes())):
            await send_raw(producer, kafka.dlq_topic, 0, record)
    finally:
        await producer.stop()
    snapshot = await read_dlq(kafka, kafka.dlq_topic)
    summary = summarize(snapshot)
    assert snapshot.complete and snapshot.markers == 1
    assert (summary.total, summary.unreadable) == (1, 2)
    assert sum("cannot decode" in (e.unreadable or "") for e in snapshot.entries) == 1
    assert len(inspect_entries(snapshot)) == 3
