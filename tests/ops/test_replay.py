"""`kafka-pipeline replay` through the real broker: each source (files, a topic range, the
tables' event log), each filter, the summary, and the one-line refusals."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kafka_pipeline.claimx import transforms
from kafka_pipeline.claimx.entity_rows import EntityRowsMessage
from kafka_pipeline.claimx.events import ClaimXEvent, parse_event
from kafka_pipeline.claimx.schemas import EVENTS
from kafka_pipeline.cli import main
from kafka_pipeline.commands.arguments import duration, point_in_time
from kafka_pipeline.config import DeltaSettings, KafkaSettings
from kafka_pipeline.delta.table_writer import DeltaTableWriter
from kafka_pipeline.kafka.clients import ensure_topics, make_producer
from kafka_pipeline.offsets import TimeLookupUnsupported
from kafka_pipeline.ops.replay import UNREADABLE, key_of, replay
from kafka_pipeline.ops.replay_sources import (
    EventFilter,
    FileSource,
    TableSource,
    TopicRange,
    TopicSource,
    event_from_row,
)
from kafka_pipeline.workers.writer.row_conversion import BatchBuilder
from tests.fixtures.kafka_io import read_topic

# Record timestamps near now: Apache Kafka's retention (7 days by default) deletes records
# stamped further back at its next check, which moved the log start under a test.
T0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)


def write_events(path: Path, count: int) -> list[bytes]:
    lines = []
    for i in range(count):
        field = "projectId" if i % 2 else "project_id"
        kind = "PROJECT_CREATED" if i % 3 else "POLICYHOLDER_INVITED"
        lines.append(json.dumps({"event_type": kind, field: 100 + i % 4, "ingested_at": "2026-01-01T00:00:00Z"}))
    lines.insert(3, "this is not json")
    path.write_text("\n".join(lines) + "\n\n")
    return [line.encode() for line in lines]


def event_json(project: int, kind: str, at: datetime, **extra: object) -> bytes:
    return json.dumps({"event_type": kind, "project_id": project, "ingested_at": at.isoformat(), **extra}).encode()


async def fill_source_topic(kafka: KafkaSettings, topic: str) -> dict[int, list[bytes]]:
    """Six events per partition of a 3-partition topic, record i stamped T0 + i minutes."""
    await ensure_topics(kafka, [topic])
    producer = make_producer(kafka)
    await producer.start()
    sent: dict[int, list[bytes]] = {0: [], 1: [], 2: []}
    try:
        for i in range(6):
            for partition in sent:
                at = T0 + timedelta(minutes=i)
                value = event_json(10 * partition + i % 2, "PROJECT_CREATED" if i % 2 else "PROJECT_MFN_ADDED", at,
                                   master_file_name=f"mfn-{partition}-{i}")
                await producer.send_and_wait(topic, value, key=b"k", partition=partition, timestamp_ms=int(at.timestamp() * 1000))
                sent[partition].append(value)
    finally:
        await producer.stop()
    return sent


def summary_rows(out: str) -> dict[str, tuple[int, ...]]:
    """The summary table printed by the command: event type -> (read, matched, sent)."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and all(p.isdigit() for p in parts[-3:]):
            rows[" ".join(parts[:-3])] = tuple(int(p) for p in parts[-3:])
    return rows


# --- files -----------------------------------------------------------------------------------


def test_key_is_project_id_in_either_spelling() -> None:
    assert key_of(b'{"project_id": 5}') == b"5"
    assert key_of(b'{"projectId": "abc"}') == b"abc"
    assert key_of(b"[1, 2]") is None
    assert key_of(b"not json") is None


async def test_files_send_every_line_keyed(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    lines = write_events(tmp_path / "events.jsonl", 20)
    summary = await replay(kafka_settings, FileSource([tmp_path / "events.jsonl"]), progress=False)
    assert summary.total_sent == 21 and summary.without_key == 1
    assert summary.sent == {"PROJECT_CREATED": 13, "POLICYHOLDER_INVITED": 7, UNREADABLE: 1}
    records = await read_topic(kafka_settings, kafka_settings.events_topic, 21, timeout_s=20, settle_s=0)
    assert sorted(r.value for r in records) == sorted(lines)
    for record in records:
        assert record.key == key_of(record.value) and not record.headers
    assert {r.key for r in records if r.key is not None} == {b"100", b"101", b"102", b"103"}


async def test_limit_rate_and_dry_run(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", 50)
    dry = await replay(kafka_settings, FileSource([tmp_path / "events.jsonl"]), dry_run=True, progress=False)
    assert sum(dry.read.values()) == sum(dry.matched.values()) == 51 and dry.total_sent == 0
    started = time.monotonic()
    summary = await replay(kafka_settings, FileSource([tmp_path / "events.jsonl"]), limit=10, rate=20, progress=False)
    assert summary.total_sent == 10
    assert time.monotonic() - started >= 0.4  # 10 events at 20/s take at least ~0.45 s
    records = await read_topic(kafka_settings, kafka_settings.events_topic, 10, timeout_s=20, settle_s=0.5)
    assert len(records) == 10  # the dry run sent nothing


def test_cli_filters_projects_from_a_file_and_types_and_headers(
    kafka_settings: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = write_events(tmp_path / "events.jsonl", 24)
    (tmp_path / "projects.txt").write_text("# the projects to backfill\n101, 102\n")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_settings.bootstrap_servers)
    code = main(["replay", str(tmp_path / "events.jsonl"), "--topic", kafka_settings.events_topic, "--no-progress",
                 "--project-ids-file", str(tmp_path / "projects.txt"), "--event-type", "project_created", "--refresh-projects"])
    assert code == 0
    expected = [line for line in lines
                if line[:1] == b"{" and parse_event(line).project_id in ("101", "102") and parse_event(line).event_type == "PROJECT_CREATED"]
    out = capsys.readouterr().out
    assert summary_rows(out) == {"PROJECT_CREATED": (16, len(expected), len(expected)), "POLICYHOLDER_INVITED": (8, 0, 0),
                                 UNREADABLE: (1, 0, 0), "total": (25, len(expected), len(expected))}
    assert f"sent {len(expected)} events" in out and "asking for project refetch" in out
    records = asyncio.run(read_topic(kafka_settings, kafka_settings.events_topic, len(expected), timeout_s=20, settle_s=0.5))
    assert sorted(r.value for r in records) == sorted(expected)
    assert all(list(r.headers) == [("refresh-project", b"1")] for r in records)


# --- a topic range ---------------------------------------------------------------------------


async def test_topic_range_by_offsets_and_partitions(kafka_settings: KafkaSettings) -> None:
    source_topic = f"{kafka_settings.events_topic}.source"
    sent = await fill_source_topic(kafka_settings, source_topic)
    spec = TopicRange(source_topic, partitions=(1, 2), from_offset=2, to_offset=5)
    summary = await replay(kafka_settings, TopicSource(kafka_settings, spec), selection=EventFilter(project_ids=frozenset({"11", "21"})),
                           progress=False)
    # partitions 1 and 2, offsets 2, 3, 4: projects 10/11 and 20/21 alternate with the offset
    expected = [sent[p][o] for p in (1, 2) for o in (2, 3, 4) if o % 2]
    assert sum(summary.read.values()) == 6 and summary.total_sent == len(expected) == 2
    records = await read_topic(kafka_settings, kafka_settings.events_topic, len(expected), timeout_s=20, settle_s=0.5)
    assert sorted(r.value for r in records) == sorted(expected)
    assert {r.key for r in records} == {b"k"}  # the original key is kept
    # an open range is each partition's whole content; the source topic itself is untouched
    everything = await replay(kafka_settings, TopicSource(kafka_settings, TopicRange(source_topic)), dry_run=True, progress=False)
    assert sum(everything.matched.values()) == 18 and everything.matched == {"PROJECT_CREATED": 9, "PROJECT_MFN_ADDED": 9}


async def test_topic_range_by_time(kafka_settings: KafkaSettings, time_lookups: bool) -> None:
    source_topic = f"{kafka_settings.events_topic}.source"
    sent = await fill_source_topic(kafka_settings, source_topic)
    spec = TopicRange(source_topic, since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=4))
    if not time_lookups:
        with pytest.raises(TimeLookupUnsupported, match="cannot look up offsets by time"):
            await replay(kafka_settings, TopicSource(kafka_settings, spec), progress=False)
        return
    summary = await replay(kafka_settings, TopicSource(kafka_settings, spec), progress=False)
    expected = [sent[p][o] for p in sent for o in (2, 3)]  # stamped T0+2min and T0+3min
    assert summary.total_sent == len(expected)
    records = await read_topic(kafka_settings, kafka_settings.events_topic, len(expected), timeout_s=20, settle_s=0.5)
    assert sorted(r.value for r in records) == sorted(expected)


def test_cli_time_range_answers_in_one_line(kafka_settings: KafkaSettings, time_lookups: bool, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    source_topic = f"{kafka_settings.events_topic}.source"
    asyncio.run(fill_source_topic(kafka_settings, source_topic))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_settings.bootstrap_servers)
    code = main(["replay", "--from-topic", source_topic, "--since", (T0 + timedelta(minutes=5)).isoformat(), "--no-progress",
                 "--topic", kafka_settings.events_topic])
    captured = capsys.readouterr()
    if not time_lookups:
        assert code == 2 and captured.err.count("\n") == 1
        assert captured.err.startswith("kafka-pipeline replay: the broker at") and "cannot look up offsets by time" in captured.err
        return
    assert code == 0 and "sent 3 events" in captured.out  # one record per partition at T0+5min


# --- the tables' event log -------------------------------------------------------------------


def write_event_log(root: str, events: list[ClaimXEvent]) -> None:
    """The claimx_events rows of `events`, written by the real table writer."""
    builder = BatchBuilder()
    for offset, event in enumerate(events):
        message = EntityRowsMessage(trace_id=event.trace_id, event_type=event.event_type, project_id=event.project_id,
                                    event_time=event.event_time, rows=transforms.event_row(event))
        builder.add(message, app="test-0", offset=offset)
    DeltaTableWriter(EVENTS, root).write(builder.tables()[EVENTS.name], {"test-0": len(events) - 1})


def logged_events() -> list[ClaimXEvent]:
    raw = [
        event_json(1, "PROJECT_CREATED", T0),
        event_json(1, "PROJECT_FILE_ADDED", T0 + timedelta(hours=1, microseconds=250), mediaId=77),
        event_json(2, "CUSTOM_TASK_ASSIGNED", T0 + timedelta(hours=2), task_assignment_id="9001"),
        event_json(2, "PROJECT_MFN_ADDED", T0 + timedelta(hours=3), master_file_name="MFN-2", event_id="evt-abc"),
        event_json(3, "VIDEO_COLLABORATION_COMPLETED", T0 + timedelta(hours=4), video_collaboration_id="v-5"),
        event_json(3, "POLICYHOLDER_JOINED", T0 + timedelta(hours=5)),
    ]
    return [parse_event(value) for value in raw]


async def test_table_source_rebuilds_each_event_exactly(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    events = logged_events()
    write_event_log(str(tmp_path), events)
    delta = DeltaSettings(tables_root=str(tmp_path))
    summary = await replay(kafka_settings, TableSource(delta, EventFilter()), progress=False)
    assert summary.total_sent == 6
    records = await read_topic(kafka_settings, kafka_settings.events_topic, 6, timeout_s=20, settle_s=0.5)
    rebuilt = {parse_event(r.value).trace_id: (parse_event(r.value), r.key) for r in records}
    assert set(rebuilt) == {e.trace_id for e in events}  # hence the same rows, merged onto themselves
    for event in events:
        again, key = rebuilt[event.trace_id]
        assert again == event and key == event.project_id.encode()  # every field, ingested_at to the microsecond
    assert rebuilt["evt-abc"][0].event_id == "evt-abc"  # the event id is the stored trace id


async def test_table_source_filters(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    events = logged_events()
    write_event_log(str(tmp_path), events)
    delta = DeltaSettings(tables_root=str(tmp_path))

    async def traces(selection: EventFilter, since: datetime | None = None, until: datetime | None = None) -> list[str]:
        summary = await replay(kafka_settings, TableSource(delta, selection, since, until), dry_run=True, progress=False)
        assert summary.total_sent == 0
        return [t for t, n in summary.matched.items() for _ in range(n)]

    assert sorted(await traces(EventFilter(project_ids=frozenset({"2", "3"})))) == sorted(e.event_type for e in events[2:])
    assert await traces(EventFilter(event_types=frozenset({"PROJECT_CREATED", "POLICYHOLDER_JOINED"}))) == [
        "PROJECT_CREATED", "POLICYHOLDER_JOINED"]
    # [since, until) on ingested_at, combined with a project filter
    window = await traces(EventFilter(project_ids=frozenset({"1", "2"})), T0 + timedelta(hours=1), T0 + timedelta(hours=3))
    assert sorted(window) == ["CUSTOM_TASK_ASSIGNED", "PROJECT_FILE_ADDED"]


def test_table_rows_rebuild_without_an_event_id_column() -> None:
    [event] = [e for e in logged_events() if e.event_id]
    row = {**transforms.event_row(event)[EVENTS.name][0], "ingested_at": event.ingested_at}
    assert parse_event(event_from_row(row)) == event
    plain = logged_events()[1]
    row = {**transforms.event_row(plain)[EVENTS.name][0], "ingested_at": plain.ingested_at}
    assert "event_id" not in json.loads(event_from_row(row)) and parse_event(event_from_row(row)) == plain


def test_cli_from_table_without_a_table_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--from-table", "--tables-root", str(tmp_path), "--dry-run", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no events table" in err


# --- bad arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["replay"], "give exactly one source"),
        (["replay", "--from-table", "--from-topic", "t"], "got --from-topic and --from-table"),
        (["replay", "--from-table", "--from-offset", "3"], "--from-offset needs --from-topic"),
        (["replay", "--from-topic", "t", "--from-offset", "9", "--to-offset", "3"], "--from-offset must not be after --to-offset"),
        (["replay", "--from-table", "--since", "1h", "--until", "2h"], "--since must be before --until"),
        (["replay", "/nonexistent/events.jsonl"], "no such file"),
        (["replay", "--from-table", "--project-ids-file", "/nonexistent/ids"], "no such file"),
    ],
)
def test_cli_bad_combinations_are_one_line(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err


@pytest.mark.parametrize(("flag", "value"), [("--rate", "-3"), ("--since", "yesterday"), ("--partitions", "1,x"), ("--to-offset", "-1")])
def test_cli_bad_values_are_rejected(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["replay", "--from-topic", "t", flag, value])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err


def test_cli_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", 3)
    result = subprocess.run(
        [sys.executable, "-m", "kafka_pipeline", "replay", str(tmp_path / "events.jsonl"), "--bootstrap-servers", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "unreachable" in result.stderr


def test_times_are_iso_or_a_duration_ago() -> None:
    assert duration("12h") == timedelta(hours=12) and duration("1d12h") == timedelta(days=1, hours=12)
    assert duration("90m") == timedelta(minutes=90) and duration("2w") == timedelta(weeks=2)
    assert point_in_time("2026-03-03T06:00:00") == datetime(2026, 3, 3, 6, tzinfo=UTC)  # naive = UTC
    assert point_in_time("2026-03-03T08:00:00+02:00") == datetime(2026, 3, 3, 6, tzinfo=UTC)
    assert abs((datetime.now(UTC) - timedelta(hours=12)) - point_in_time("12h")) < timedelta(seconds=5)
    for bad in ("12", "h", "12x", "1h 2m", "tuesday"):
        with pytest.raises(argparse.ArgumentTypeError):
            point_in_time(bad)
