"""`kafka-pipeline reset-offsets` against the real broker: the plan (--dry-run), each way to pick
the new offsets, selected partitions, the refusal while the group is active, and the DLQ purge
point (a group like any other)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import TopicPartition

from kafka_pipeline.cli import main
from kafka_pipeline.config import KafkaSettings
from kafka_pipeline.dead_letters.envelope import RecordView, dead_letter_for
from kafka_pipeline.kafka.clients import ensure_topics, make_consumer, make_producer
from kafka_pipeline.ops.dlq import purge, purge_group, read_dlq
from tests.fixtures.kafka_io import committed as committed_offsets_of

# Record timestamps near now: Apache Kafka's retention (7 days by default) deletes records
# stamped further back at its next check, which moved the log start under a test.
T0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
PER_PARTITION = 8


async def fill(kafka: KafkaSettings, topic: str) -> None:
    """PER_PARTITION records in each of the 3 partitions, record i stamped T0 + i minutes."""
    await ensure_topics(kafka, [topic])
    producer = make_producer(kafka)
    await producer.start()
    try:
        for i in range(PER_PARTITION):
            stamp = int((T0 + timedelta(minutes=i)).timestamp() * 1000)
            for partition in range(3):
                await producer.send_and_wait(topic, b"v%d" % i, partition=partition, timestamp_ms=stamp)
    finally:
        await producer.stop()


async def commit(kafka: KafkaSettings, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit as a consumer that joins nothing (so the group has no members)."""
    consumer = make_consumer(kafka, group_id=group)
    await consumer.start()
    try:
        tps = {TopicPartition(topic, p): o for p, o in offsets.items()}
        consumer.assign(list(tps))
        await consumer.commit(tps)
    finally:
        await consumer.stop()


async def committed_at(kafka: KafkaSettings, group: str, topic: str) -> dict[int, int | None]:
    return await committed_offsets_of(kafka, group, topic, range(3))


async def cli(*argv: str) -> int:
    """The real command line, in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(main, list(argv))


@pytest.fixture
async def topic_with_group(kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch) -> tuple[KafkaSettings, str, str]:
    topic, group = kafka_settings.events_topic, f"group-{kafka_settings.events_topic}"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_settings.bootstrap_servers)
    await fill(kafka_settings, topic)
    await commit(kafka_settings, group, topic, {0: 5, 1: 6})  # partition 2: nothing committed
    return kafka_settings, topic, group


def plan_rows(out: str) -> dict[int, tuple[str, ...]]:
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0].isdigit():
            rows[int(parts[0])] = tuple(parts[1:])
    return rows


async def test_dry_run_prints_the_plan_and_changes_nothing(topic_with_group, capsys: pytest.CaptureFixture[str]) -> None:
    kafka, topic, group = topic_with_group
    assert await cli("reset-offsets", "--group", group, "--topic", topic, "--to-offset", "2", "--dry-run") == 0
    out = capsys.readouterr().out
    assert plan_rows(out) == {0: ("5", "2", "-3"), 1: ("6", "2", "-4"), 2: ("-", "2", "-")}
    assert "dry run: nothing changed" in out and "refused" not in out
    assert await committed_at(kafka, group, topic) == {0: 5, 1: 6, 2: None}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--to-earliest"], {0: 0, 1: 0, 2: 0}),
        (["--to-latest"], {0: PER_PARTITION, 1: PER_PARTITION, 2: PER_PARTITION}),
        (["--to-offset", "3"], {0: 3, 1: 3, 2: 3}),
        (["--to-offset", "999"], {0: PER_PARTITION, 1: PER_PARTITION, 2: PER_PARTITION}),  # clamped to the end
        (["--shift-by", "-2"], {0: 3, 1: 4, 2: 0}),  # nothing committed: from the start, clamped
        (["--shift-by", "5"], {0: PER_PARTITION, 1: PER_PARTITION, 2: 5}),
        (["--to-offset", "1", "--partitions", "1,2"], {0: 5, 1: 1, 2: 1}),  # partition 0 untouched
    ],
)
async def test_reset_for_real(topic_with_group, flags: list[str], expected: dict[int, int], capsys: pytest.CaptureFixture[str]) -> None:
    kafka, topic, group = topic_with_group
    assert await cli("reset-offsets", "--group", group, "--topic", topic, *flags) == 0
    out = capsys.readouterr().out
    assert f"reset {3 if '--partitions' not in flags else 2} partition(s) of {topic}" in out
    assert await committed_at(kafka, group, topic) == expected, out  # the plan it printed


@pytest.mark.parametrize("flags", [["--to-datetime", (T0 + timedelta(minutes=3)).isoformat()], ["--by-duration", "1000d"]])
async def test_reset_by_time(topic_with_group, flags: list[str], time_lookups: bool, capsys: pytest.CaptureFixture[str]) -> None:
    kafka, topic, group = topic_with_group
    code = await cli("reset-offsets", "--group", group, "--topic", topic, *flags)
    captured = capsys.readouterr()
    if not time_lookups:
        assert code == 2 and captured.err.count("\n") == 1 and "cannot look up offsets by time" in captured.err, captured.err
        assert await committed_at(kafka, group, topic) == {0: 5, 1: 6, 2: None}
        return
    assert code == 0, captured.err
    # T0+3min is record 3 of every partition; 1000 days ago is before every record
    expected = 3 if flags[0] == "--to-datetime" else 0
    assert await committed_at(kafka, group, topic) == {0: expected, 1: expected, 2: expected}


async def test_refused_while_the_group_has_members(topic_with_group, capsys: pytest.CaptureFixture[str]) -> None:
    kafka, topic, group = topic_with_group
    member = make_consumer(kafka.model_copy(update={"session_timeout_ms": 6_000}), topic, group_id=group)
    await member.start()
    try:
        deadline = time.monotonic() + 20
        while not member.assignment() and time.monotonic() < deadline:
            await member.getmany(timeout_ms=200)
        assert member.assignment(), "the member never got its partitions"
        assert await cli("reset-offsets", "--group", group, "--topic", topic, "--to-earliest") == 2
        err = capsys.readouterr().err
        assert err == (f"kafka-pipeline reset-offsets: group {group} has 1 member(s): stop its consumers "
                       "(and let their sessions expire), then reset its offsets\n")
        assert await cli("reset-offsets", "--group", group, "--topic", topic, "--to-earliest", "--dry-run") == 0
        assert "a reset now would be refused" in capsys.readouterr().out
        assert await committed_at(kafka, group, topic) == {0: 5, 1: 6, 2: None}
    finally:
        await member.stop()


async def test_the_dlq_purge_point_is_a_group_that_resets(kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    kafka = kafka_settings
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap_servers)
    monkeypatch.setenv("KAFKA_DLQ_TOPIC", kafka.dlq_topic)
    await ensure_topics(kafka, [kafka.dlq_topic])
    producer = make_producer(kafka)
    await producer.start()
    try:
        for n in range(4):
            record = RecordView(kafka.events_topic, 0, n, b"p", b"not json %d" % n, [])
            letter = dead_letter_for(record, error_type="EventParseError", error_message="not JSON", category="permanent",
                                     worker="enrich-1", trace_id=f"t-{n}")
            await producer.send_and_wait(kafka.dlq_topic, letter.to_bytes(), key=b"p")
    finally:
        await producer.stop()
    assert len((await read_dlq(kafka, kafka.dlq_topic, idle_timeout_s=1)).entries) == 4
    await purge(kafka, kafka.dlq_topic)
    assert len((await read_dlq(kafka, kafka.dlq_topic, idle_timeout_s=1)).entries) == 0
    # the purge group is one of the pipeline's groups: its topic is known without --topic
    assert await cli("reset-offsets", "--group", purge_group(kafka.dlq_topic), "--to-earliest") == 0
    assert "reset 3 partition(s)" in capsys.readouterr().out
    assert sorted(e.letter.trace_id for e in (await read_dlq(kafka, kafka.dlq_topic, idle_timeout_s=1)).entries) == [f"t-{n}" for n in range(4)]
    await purge(kafka, kafka.dlq_topic)  # and purging still works after a reset
    assert len((await read_dlq(kafka, kafka.dlq_topic, idle_timeout_s=1)).entries) == 0


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["reset-offsets", "--group", "nobody", "--to-earliest"], "--topic is needed: nobody is not one of the pipeline's groups"),
        (["reset-offsets", "--group", "g", "--topic", "t", "--to-earliest", "--bootstrap-servers", "127.0.0.1:1"], "unreachable"),
    ],
)
def test_cli_errors_are_one_line(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err


@pytest.mark.parametrize("argv", [["--group", "g"], ["--group", "g", "--to-earliest", "--to-latest"], ["--group", "g", "--by-duration", "soon"]])
def test_cli_bad_arguments_are_rejected(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["reset-offsets", *argv])
    assert done.value.code == 2 and capsys.readouterr().err.count("\n") == 1
