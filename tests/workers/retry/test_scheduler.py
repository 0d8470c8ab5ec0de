"""The retry scheduler against the real broker: never early, nothing lost across a kill."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kafka_pipeline.config import KafkaSettings
from kafka_pipeline.dead_letters.envelope import DeadLetter
from kafka_pipeline.dead_letters.routing import (
    RETRY_ATTEMPT,
    RETRY_DUE_AT,
    RETRY_TARGET_TOPIC,
    now_ms,
)
from kafka_pipeline.embedded.broker import free_port
from kafka_pipeline.kafka.clients import ensure_topics, make_consumer
from kafka_pipeline.offsets.topic_offsets import committed_offsets, high_watermarks
from kafka_pipeline.workers.retry.scheduler import RetryScheduler
from tests.fixtures.retry import produce, retry_message, scheduler_settings
from tests.fixtures.waiting import until

ROOT = Path(__file__).resolve().parents[3]




@dataclass
class Arrival:
    value: bytes
    headers: dict[str, bytes]
    timestamp_ms: int  # producer timestamp of the forwarded copy
    seen_ms: int  # when this test's consumer got it

    @property
    def due_ms(self) -> int:
        return int(self.headers[RETRY_DUE_AT])








async def collect(kafka: KafkaSettings, topic: str, want: int, *, timeout_s: float,
                  watch=None) -> list:  # noqa: ANN001 - a callback run on every poll
    consumer = make_consumer(kafka, topic, group_id=None)
    await consumer.start()
    got: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < want and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100)
            seen = now_ms()
            for records in batch.values():
                got.extend((record, seen) for record in records)
            if watch is not None:
                watch()
    finally:
        await consumer.stop()
    return got


def arrivals(got: list) -> list[Arrival]:
    return [Arrival(r.value, dict(r.headers), r.timestamp, seen) for r, seen in got]


def assert_never_early(found: list[Arrival]) -> None:
    early = [(a.value, a.due_ms - a.timestamp_ms) for a in found if a.timestamp_ms < a.due_ms or a.seen_ms < a.due_ms]
    assert not early, f"forwarded before due (value, ms early): {early}"


async def test_forwards_when_due_and_not_before(kafka_settings: KafkaSettings) -> None:
    kafka = kafka_settings
    await ensure_topics(kafka, [kafka.events_topic, kafka.retry_topic, kafka.dlq_topic])
    settings = scheduler_settings(kafka, [1, 2])
    settings.worker.http_port = free_port()
    scheduler = RetryScheduler(settings, stats_interval_s=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    await asyncio.wait_for(scheduler.joined.wait(), 20)
    now = now_ms()
    # One key, one retry partition: a 2 s retry written before a 1 s retry, which must pass it.
    late = retry_message(kafka, 1, delays=[1, 2], now=now, attempt=1, key=b"p")
    soon = retry_message(kafka, 2, delays=[1, 2], now=now, key=b"p")
    overdue = retry_message(kafka, 3, delays=[1, 2], now=now - 5_000, key=b"q")
    others = [retry_message(kafka, n, delays=[1, 2], now=now + (n % 5) * 100) for n in range(4, 14)]
    bad = [
        (b"no-headers", [("trace", b"x")]),
        (b"nowhere", [(RETRY_ATTEMPT, b"1"), (RETRY_DUE_AT, str(now).encode()), (RETRY_TARGET_TOPIC, b"no.such.topic")]),
    ]
    await produce(kafka, [late, soon, overdue, *others], extra=bad)
    assert late.due_at_ms > soon.due_at_ms
    try:
        got = arrivals(await collect(kafka, kafka.events_topic, 13, timeout_s=15))
        dead = await collect(kafka, kafka.dlq_topic, 2, timeout_s=5)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.worker.http_port}") as http:
            metrics = (await http.get("/metrics")).text
            ready = (await http.get("/health/ready")).json()
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)

    assert sorted(a.value for a in got) == sorted([b"event-1", b"event-2", b"event-3"] + [f"event-{n}".encode() for n in range(4, 14)])
    assert_never_early(got)
    by_value = {a.value: a for a in got}
    assert by_value[b"event-2"].seen_ms <= by_value[b"event-1"].seen_ms  # the 1 s retry was not stuck behind the 2 s one
    assert by_value[b"event-1"].seen_ms - late.due_at_ms < 1_500  # and nothing waits far past its due time
    forwarded = by_value[b"event-1"].headers
    assert forwarded["trace"] == b"t1"  # original headers kept
    assert forwarded[RETRY_ATTEMPT] == b"2" and forwarded[RETRY_TARGET_TOPIC] == kafka.events_topic.encode()

    letters = {DeadLetter.from_bytes(r.value).value.raw(): DeadLetter.from_bytes(r.value) for r, _ in dead}
    assert "missing retry header(s)" in letters[b"no-headers"].error_message
    assert "'no.such.topic' is not a configured retry target" in letters[b"nowhere"].error_message
    assert all(letter.original_topic == kafka.events_topic and letter.made_by == "retry-scheduler" for letter in letters.values())
    assert all(letter.error_type == "InvalidRetryHeaders" and letter.error_category == "permanent" for letter in letters.values())
    assert scheduler.stats.forwarded == 13 and scheduler.stats.dead_lettered == 2
    assert f'retry_scheduler_forwarded_total{{target="{kafka.events_topic}"}} 13.0' in metrics
    assert "retry_scheduler_dead_lettered_total 2.0" in metrics and "retry_scheduler_waiting 0.0" in metrics
    assert ready["ready"] is True

    # everything was committed at the stop: a restart would re-send nothing
    ends = await high_watermarks(kafka, kafka.retry_topic)
    assert await committed_offsets(kafka, settings.retry.group_id, kafka.retry_topic) == ends
    assert sum(ends.values()) == 15


async def test_memory_is_bounded_per_partition(kafka_settings: KafkaSettings) -> None:
    kafka = kafka_settings
    await ensure_topics(kafka, [kafka.events_topic, kafka.retry_topic, kafka.dlq_topic])
    settings = scheduler_settings(kafka, [1, 2])  # 2: the scheduler holds nothing longer than its longest delay
    scheduler = RetryScheduler(settings, max_waiting_per_partition=3)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    await asyncio.wait_for(scheduler.joined.wait(), 20)
    now = now_ms()
    # 12 messages on one partition, the first 4 due later: the partition fills up, the rest wait.
    messages = [retry_message(kafka, n, delays=[1], now=now + (1_000 if n < 4 else 0), key=b"one") for n in range(12)]
    await produce(kafka, messages)
    peak = 0

    def watch() -> None:
        nonlocal peak
        peak = max(peak, len(scheduler._heap))  # noqa: SLF001 - the bound under test

    try:
        got = arrivals(await collect(kafka, kafka.events_topic, 12, timeout_s=15, watch=watch))
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert sorted(a.value for a in got) == sorted(m.value for m in messages)
    assert_never_early(got)
    assert 0 < peak <= 3


@pytest.mark.timeout(120)
async def test_kill_and_restart_loses_nothing_and_is_never_early(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    kafka = kafka_settings
    await ensure_topics(kafka, [kafka.events_topic, kafka.retry_topic, kafka.dlq_topic])
    group = f"retry-kill-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KAFKA_RETRY_TOPIC": kafka.retry_topic,
        "KAFKA_EVENTS_TOPIC": kafka.events_topic,
        "KAFKA_DLQ_TOPIC": kafka.dlq_topic,
        # the messages below are due up to ~10 s out: the scheduler holds nothing past its longest delay
        "KP_RETRY__DELAYS_S": "[1,2,12]",
        "KP_RETRY__GROUP_ID": group,
        "KP_KAFKA__PARTITIONS": "3",
        "KP_KAFKA__SESSION_TIMEOUT_MS": "6000",  # tansu joins in half of it; the killed member expires soon
        "WORKER_NAME": "retry-kill-test",
    }

    def start(log_name: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / log_name, "wb")  # noqa: SIM115 - closed with the process
        return subprocess.Popen([sys.executable, "-m", "kafka_pipeline", "retry-scheduler", "--stats-interval", "1"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    async def joined(process: subprocess.Popen[bytes], log_name: str) -> None:
        deadline = time.monotonic() + 30
        while "retry partitions assigned" not in (tmp_path / log_name).read_text():
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / log_name).read_text()
            await asyncio.sleep(0.1)

    first = start("first.log")
    await joined(first, "first.log")
    now = now_ms()
    total = 60
    # attempts 1 and 2 mixed on every partition; 40 due within ~3 s, 20 due only after the restart
    messages = [retry_message(kafka, n, delays=[1, 2], now=now + (n * 30 if n < 40 else 7_000 + n * 20), attempt=n % 2)
                for n in range(total)]
    await produce(kafka, messages)
    got: list = []
    consumer = make_consumer(kafka, kafka.events_topic, group_id=None)
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while len(got) < 15 and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100)
            seen = now_ms()
            got.extend((r, seen) for records in batch.values() for r in records)
        assert first.poll() is None, (tmp_path / "first.log").read_text()
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = len(got)
        assert 0 < killed_at < total, "the kill should land mid-way"
        killed_at_ms = now_ms()

        second = start("second.log")
        try:
            deadline = time.monotonic() + 45
            while len({r.value for r, _ in got}) < total and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=100)
                seen = now_ms()
                got.extend((r, seen) for records in batch.values() for r in records)
        finally:
            second.send_signal(signal.SIGTERM)
            code = second.wait(20)
    finally:
        await consumer.stop()

    log_text = (tmp_path / "second.log").read_text()
    found = arrivals(got)
    assert {a.value for a in found} == {m.value for m in messages}, log_text
    assert_never_early(found)
    assert any(a.due_ms > killed_at_ms for a in found), "some messages should still have been waiting at the kill"
    assert code == 0, log_text
    assert re.search(r"Cycle \d+: handled=\d+ \(forwarded=\d+, dead_lettered=0\)", log_text), log_text
    ends = await high_watermarks(kafka, kafka.retry_topic)
    assert await committed_offsets(kafka, group, kafka.retry_topic) == ends


async def test_rebalance_to_a_second_scheduler_loses_nothing(kafka_settings: KafkaSettings) -> None:
    kafka = kafka_settings
    await ensure_topics(kafka, [kafka.events_topic, kafka.retry_topic, kafka.dlq_topic])
    settings = scheduler_settings(kafka, [1, 2, 8])  # due ~7 s out: within the longest delay, which bounds every hold
    first = RetryScheduler(settings)
    second = RetryScheduler(settings.model_copy(update={"worker": settings.worker.model_copy(update={"name": "second"})}))
    stop = asyncio.Event()
    first_task = asyncio.create_task(first.run(stop))
    await asyncio.wait_for(first.joined.wait(), 20)
    now = now_ms()
    # all due after the second scheduler joined: the first holds them when its partitions are revoked
    messages = [retry_message(kafka, n, delays=[1, 2], now=now + 4_500 + n * 20, attempt=n % 2) for n in range(30)]
    await produce(kafka, messages)
    await until(lambda: first.stats.waiting == 30, "the first scheduler holding all 30 messages", timeout_s=20)
    second_task = asyncio.create_task(second.run(stop))
    try:
        got = arrivals(await collect(kafka, kafka.events_topic, 30, timeout_s=25))
        assert second.joined.is_set()
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(first_task, second_task), 20)
    assert {a.value for a in got} == {m.value for m in messages}
    assert_never_early(got)
    assert first.stats.forwarded + second.stats.forwarded >= 30
    assert second.stats.forwarded > 0, "the second scheduler should have taken over some partitions"
    assert first.stats.released_on_rebalance > 0, "the rebalance should have come while messages waited"
    ends = await high_watermarks(kafka, kafka.retry_topic)
    assert await committed_offsets(kafka, settings.retry.group_id, kafka.retry_topic) == ends
