"""The writer's stored progress is trusted only for the log it came from (writer/log_progress.py).

On the session broker (Apache Kafka unless KP_TEST_BROKER=tansu): a topic deleted and
recreated, a stored offset past the log's end, a record that is not the one the tables wrote,
a second cluster with the same topic names, each refused in one line and nothing skipped;
adoption writes the whole new log; a replayed range is counted as skipped, not written twice.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from kafka_pipeline.config import KafkaSettings, Settings
from kafka_pipeline.embedded.broker import EmbeddedBroker
from kafka_pipeline.embedded.kafka_broker import KafkaBroker
from kafka_pipeline.kafka.clients import ensure_topics, make_consumer
from kafka_pipeline.kafka.connection import connection_kwargs
from kafka_pipeline.offsets.log_identity import describe_partitions
from kafka_pipeline.ops.reset_offsets import ResetTarget, apply_reset, plan_reset
from kafka_pipeline.workers.writer.entity_writer import EntityWriter, LogChanged, table_writers
from kafka_pipeline.workers.writer.log_progress import LogProgress, progress_ids
from tests.fixtures.waiting import until
from tests.fixtures.writer import build_stream, committed, encoded, produce, reference, run_until_committed, table_contents, wait_committed, writer_settings

REPO = Path(__file__).resolve().parents[3]


def settings_for(kafka: KafkaSettings, root: Path, group: str, **writer: Any) -> Settings:
    return writer_settings(kafka.model_copy(update={"partitions": 2}), str(root), group, **writer)


async def run_until_refused(settings: Settings, timeout_s: float = 60.0) -> tuple[str, EntityWriter]:
    """Run the writer until it stops on its own; it must stop with LogChanged."""
    writer = EntityWriter(settings)
    with pytest.raises(LogChanged) as refused:
        await asyncio.wait_for(writer.run(asyncio.Event()), timeout_s)
    return str(refused.value), writer


async def recreate_topic(kafka: KafkaSettings, topic: str, timeout_s: float = 30.0) -> None:
    """Delete `topic`, wait until the broker no longer lists it, create it again."""
    admin = AIOKafkaAdminClient(**connection_kwargs(kafka))
    await admin.start()
    try:
        await admin.delete_topics([topic])
        deadline = time.monotonic() + timeout_s
        while topic in await admin.list_topics():
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic} still listed {timeout_s}s after its deletion")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    deadline = time.monotonic() + timeout_s
    while True:  # a deleted topic's name may be refused for a moment while its log is removed
        try:
            await ensure_topics(kafka, [topic])
            ends = await describe_partitions(kafka, topic, [0, 1])
            if all(log.end == 0 for log in ends.values()):
                return
        except Exception:  # noqa: BLE001 - retried until the deadline below
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.3)


def write_command(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "KAFKA_ENTITY_ROWS_TOPIC": settings.kafka.entity_rows_topic,
        "KAFKA_DLQ_TOPIC": settings.kafka.dlq_topic,
        "KP_KAFKA__PARTITIONS": str(settings.kafka.partitions),
        "KP_WRITER__GROUP_ID": settings.writer.group_id,
        "DELTA_TABLES_ROOT": settings.delta.tables_root,
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run([sys.executable, "-m", "kafka_pipeline", "write", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=REPO)


async def test_a_recreated_topic_is_refused_then_adopted_and_written_whole(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    settings = settings_for(kafka_settings, tmp_path / "delta", f"g-{uuid.uuid4().hex[:6]}")
    kafka = settings.kafka
    stream = build_stream(seed=19, events=80)
    first, second = stream[:50], stream[50:]
    await run_until_committed(settings, await produce(kafka, encoded(first)))
    assert table_contents(settings.delta.tables_root) == reference(first)

    await recreate_topic(kafka, kafka.entity_rows_topic)
    ends = await produce(kafka, encoded(second))  # offsets from 0 again: below what the tables hold
    line, writer = await run_until_refused(settings)
    assert "\n" not in line and "refused" in line and "another log" in line and "--adopt-new-log" in line
    assert f"{kafka.entity_rows_topic}[" in line and "topic id" in line
    assert writer.messages_consumed == 0 and writer.rows_written == 0
    assert table_contents(settings.delta.tables_root) == reference(first)  # nothing skipped, nothing written

    plan = write_command(settings, "--dry-run", "--adopt-new-log")
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.count("would be ADOPTED") >= 1 and "REFUSED" not in plan.stdout, plan.stdout

    adopting = settings.model_copy(update={"writer": settings.writer.model_copy(update={"adopt_new_log": True})})
    await run_until_committed(adopting, ends)
    assert table_contents(settings.delta.tables_root) == reference(stream)  # = a clean run of both halves

    # adopted is recorded: a plain writer (no flag) resumes the new log without refusing
    more = build_stream(seed=20, events=10)
    for message in more:
        message.project_id = "7000"  # keys already in the tables
    ends = await produce(kafka, encoded(more))
    await run_until_committed(settings, ends)
    assert table_contents(settings.delta.tables_root) == reference(stream + more)


async def test_a_stored_offset_past_the_end_or_another_record_is_refused(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    settings = settings_for(kafka_settings, tmp_path / "delta", f"g-{uuid.uuid4().hex[:6]}")
    kafka = settings.kafka
    ends = await produce(kafka, encoded(build_stream(seed=3, events=30)))
    await run_until_committed(settings, ends)
    writers = table_writers(settings)
    progress = LogProgress(kafka, settings.writer.group_id, kafka.entity_rows_topic, writers)
    assert all(v.trusted and v.stored_offset == ends[v.partition] - 1 for v in await progress.check([0, 1]))
    identity = progress.identity
    assert identity is not None and identity.known

    # the tables claim more of this very log than it holds (a log that went backwards)
    ids = progress_ids(settings.writer.group_id, kafka.entity_rows_topic, 0)
    projects = writers["claimx_projects"]
    projects.record_transactions([projects.uri, projects.clock_uri], {ids.offset: 1000, ids.log(identity): 1000, ids.record: 7}, {})
    # ... and on partition 1, a record at the stored offset that is not the one written
    ids1 = progress_ids(settings.writer.group_id, kafka.entity_rows_topic, 1)
    last = ends[1] - 1
    for writer in writers.values():
        writer.record_transactions([writer.uri, writer.clock_uri], {ids1.offset: last, ids1.log(identity): last, ids1.record: 12345}, {})
    verdicts = {v.partition: v for v in await progress.check([0, 1])}
    assert not verdicts[0].trusted and f"ends at offset {ends[0]}" in verdicts[0].refusal
    assert not verdicts[1].trusted and "not the one the tables wrote" in verdicts[1].refusal

    line, _ = await run_until_refused(settings)
    assert "refused" in line and "--adopt-new-log" in line
    plan = write_command(settings, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.count("REFUSED") == 2 and "2 of 2 partitions from another log" in plan.stdout, plan.stdout


async def test_progress_from_before_log_identities_is_taken_as_this_logs(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    """Tables written by a version that recorded offsets only: resumed (said in the log), not refused."""
    settings = settings_for(kafka_settings, tmp_path / "delta", f"g-{uuid.uuid4().hex[:6]}")
    kafka = settings.kafka
    ends = await produce(kafka, encoded(build_stream(seed=5, events=20)))
    legacy = table_writers(settings)
    events = legacy["claimx_events"]
    events.ensure()
    ids = progress_ids(settings.writer.group_id, kafka.entity_rows_topic, 0)
    events.record_transactions([events.uri, events.clock_uri], {ids.offset: 0}, {})  # an offset, no identity, no fingerprint
    (verdict,) = await LogProgress(kafka, settings.writer.group_id, kafka.entity_rows_topic, legacy).check([0])
    assert verdict.trusted and verdict.legacy and verdict.stored_offset == 0
    with structlog.testing.capture_logs() as logs:
        await run_until_committed(settings, ends)
    assert any(e["event"].startswith("stored progress predates log identities") and e["partition"] == 0 for e in logs)


async def test_a_second_cluster_with_the_same_topic_names_is_refused(kafka_settings: KafkaSettings, broker_kind: str, tmp_path: Path) -> None:
    settings = settings_for(kafka_settings, tmp_path / "delta", f"g-{uuid.uuid4().hex[:6]}")
    await run_until_committed(settings, await produce(settings.kafka, encoded(build_stream(seed=7, events=30))))
    other_broker = KafkaBroker(log_path=tmp_path / "other.log") if broker_kind == "kafka" else EmbeddedBroker(log_path=tmp_path / "other.log")
    with other_broker as other:
        elsewhere = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"bootstrap_servers": other.bootstrap_servers})})
        await produce(elsewhere.kafka, encoded(build_stream(seed=8, events=30)))
        line, writer = await run_until_refused(elsewhere)
        assert "refused" in line and "another log" in line and writer.rows_written == 0
        progress = LogProgress(elsewhere.kafka, settings.writer.group_id, settings.kafka.entity_rows_topic, table_writers(settings))
        assert {v.trusted for v in await progress.check([0, 1])} == {False}


async def test_a_replayed_range_is_counted_as_skipped_not_written_twice(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    settings = settings_for(kafka_settings, tmp_path / "delta", f"g-{uuid.uuid4().hex[:6]}")
    kafka = settings.kafka
    stream = build_stream(seed=11, events=40)
    ends = await produce(kafka, encoded(stream))
    await run_until_committed(settings, ends)
    before = table_contents(settings.delta.tables_root)

    # replay: the group's offsets back to the start, as `kafka-pipeline reset-offsets --to-earliest` does
    await apply_reset(kafka, await plan_reset(kafka, settings.writer.group_id, kafka.entity_rows_topic, ResetTarget("earliest")))
    writer = EntityWriter(settings)
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(writer.run(stop))
        try:
            await wait_committed(kafka, settings.writer.group_id, ends)
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)
    assert writer.records_skipped == len(stream)
    assert writer.registry.get_sample_value("claimx_writer_records_skipped_total") == len(stream)
    assert table_contents(settings.delta.tables_root) == before
    # most of the range is not even read: the writer seeks past what every table holds (the last
    # flush's records are read, each table skipping what it has)
    seeks = [entry for entry in logs if "are in every table already" in entry["event"]]
    assert seeks and sum(entry["skipped"] for entry in seeks) > 0, [entry["event"] for entry in logs]
    assert writer.messages_consumed < len(stream)


async def test_a_committed_offset_the_log_no_longer_holds_is_said_once(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    """The broker resets such a group to the earliest offset; the runtime (every worker's) says so."""
    settings = settings_for(kafka_settings, tmp_path / "delta", f"g-{uuid.uuid4().hex[:6]}")
    kafka = settings.kafka
    ends = await produce(kafka, encoded(build_stream(seed=13, events=10)))
    consumer = make_consumer(kafka, group_id=settings.writer.group_id)  # assigned by hand: never joins
    await consumer.start()
    try:
        offsets = {TopicPartition(kafka.entity_rows_topic, p): 500 for p in ends}
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()
    writer = EntityWriter(settings)
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(writer.run(stop))
        try:
            await until(lambda: writer.messages_consumed == sum(ends.values()) and writer.flushes > 0, task=task)
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)
    assert await committed(kafka, settings.writer.group_id, ends) == ends  # committed from the log's start again
    resets = [e for e in logs if e["event"].startswith("committed offset out of range")]
    assert sorted(e["partition"] for e in resets) == sorted(f"{kafka.entity_rows_topic}[{p}]" for p in ends)
    assert all(e["committed"] == 500 and e["log_start"] == 0 and "went backwards" in e["event"] for e in resets)
