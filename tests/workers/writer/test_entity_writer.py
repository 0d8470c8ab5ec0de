"""The entity writer through the real broker into real Delta tables.

The stream used here has rows for every table, overlapping keys (task templates shared across
projects, i.e. across partitions), event times out of order, nulls, minimal update rows and
duplicated messages. Every event time is unique, so the expected tables follow from the merge
rule alone (`reference`), whatever the arrival order.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from kafka_pipeline.claimx.entity_rows import EntityRowsMessage
from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.config import KafkaSettings, WorkerSettings
from kafka_pipeline.dead_letters.envelope import DeadLetter
from kafka_pipeline.delta import table_uri
from kafka_pipeline.kafka.clients import make_consumer
from kafka_pipeline.workers.writer.entity_writer import EntityWriter, app_id
from kafka_pipeline.workers.writer.row_conversion import BatchBuilder, SchemaMismatch
from tests.fixtures.ports import free_port
from tests.fixtures.waiting import until
from tests.fixtures.writer import (
    REPO,
    T0,
    _start_writer,
    _wait_for_log,
    _writer_env,
    build_stream,
    committed,
    encoded,
    message,
    produce,
    read_rows,
    reference,
    rows_to_arrow,
    run_until_committed,
    table_contents,
    wait_committed,
    writer_settings,
)

# -- conversion ---------------------------------------------------------------------------------








def test_conversion_types_rows_by_the_contract() -> None:
    tables = rows_to_arrow(message({
        "claimx_media": [{"media_id": 501, "project_id": 1, "latitude": 30, "longitude": -97.5,
                          "taken_date": "2024-04-30T22:15:00", "expires_at": "2024-05-01T01:00:00-05:00"}],
        "claimx_events": [{"event_type": "PROJECT_FILE_ADDED", "project_id": "1", "event_date": "2024-05-01",
                           "ingested_at": "2024-05-01T08:00:00Z"}],
        "claimx_video_collab": [{"video_collaboration_id": "v1", "session_count": 3, "total_time_seconds": 12}],
    }), app="g:t:0", offset=7)
    media = tables["claimx_media"].to_pylist()[0]
    assert (media["media_id"], media["project_id"], media["latitude"], media["longitude"]) == ("501", "1", 30.0, -97.5)
    assert media["taken_date"] == datetime(2024, 4, 30, 22, 15, tzinfo=UTC)  # naive = UTC
    assert media["expires_at"] == datetime(2024, 5, 1, 6, tzinfo=UTC)
    assert (media["trace_id"], media["event_time"], media["__kp_offset"], media["__kp_app"]) == ("t-1", T0, 7, "g:t:0")
    event = tables["claimx_events"].to_pylist()[0]
    assert (event["trace_id"], event["event_date"]) == ("t-1", date(2024, 5, 1))  # the event's own trace is its key
    video = tables["claimx_video_collab"].to_pylist()[0]
    assert (video["session_count"], video["total_time_seconds"]) == (3, 12.0)
    for name, table in tables.items():
        for field in TABLES[name].schema:
            if field.name not in ("created_at", "updated_at"):
                assert table.schema.field(field.name).type == field.type, (name, field.name)


@pytest.mark.parametrize(
    ("row", "error"),
    [
        ({"media_id": "m", "latitude": "abc"}, "claimx_media.latitude: expected float64, got 'abc'"),
        ({"media_id": "m", "latitude": True}, "claimx_media.latitude: expected float64, got True"),
        ({"media_id": "m", "taken_date": "yesterday"}, "claimx_media.taken_date: expected ISO-8601 timestamp, got 'yesterday'"),
        ({"media_id": "m", "taken_date": 1714550400}, "claimx_media.taken_date: expected ISO-8601 timestamp, got 1714550400"),
        ({"media_id": 1.5}, "claimx_media.media_id: expected string, got 1.5"),
        ({"media_id": "m", "gps": "x"}, "claimx_media.gps: column not in the table's schema"),
        ({"media_id": "m", "created_at": "2024-01-01T00:00:00Z"}, "claimx_media.created_at: metadata column is set by the writer"),
        ({"latitude": 1.0}, "claimx_media.media_id: merge key is missing or null"),
    ],
)
def test_conversion_never_drops_a_misfit_silently(row: dict[str, Any], error: str) -> None:
    with pytest.raises(SchemaMismatch) as raised:
        rows_to_arrow(message({"claimx_media": [row]}))
    assert str(raised.value).startswith(error)


def test_a_bad_message_adds_nothing_and_the_batch_goes_on() -> None:
    builder = BatchBuilder()
    builder.add(message({"claimx_projects": [{"project_id": "1", "year_built": 1990}]}), app="a", offset=0)
    with pytest.raises(SchemaMismatch, match=r"claimx_projects.year_built: expected int64, got 1990.5"):
        builder.add(message({"claimx_events": [{"event_type": "X"}], "claimx_projects": [{"project_id": "2", "year_built": 1990.5}]}),
                    app="a", offset=1)
    with pytest.raises(SchemaMismatch, match="claimx_nope: no such table"):
        builder.add(message({"claimx_nope": [{}]}), app="a", offset=2)
    builder.add(message({"claimx_projects": [{"project_id": "3", "xa_autolink_fail": False}]}), app="a", offset=3)
    tables = builder.tables()
    assert list(tables) == ["claimx_projects"]  # the bad message's events row is not there
    assert tables["claimx_projects"].column("project_id").to_pylist() == ["1", "3"]


# -- a stream and what the tables must hold afterwards -----------------------------------------










# -- broker helpers -----------------------------------------------------------------------------
















# -- the worker ---------------------------------------------------------------------------------


async def test_writer_merges_the_stream_and_dead_letters_misfits(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    stream = build_stream(seed=1, events=120)
    bad_latitude = message({"claimx_media": [{"media_id": "bad-1", "latitude": "abc"}], "claimx_events": [{"event_type": "X"}]}, trace="bad-1")
    unknown_column = message({"claimx_projects": [{"project_id": "7001", "favourite_colour": "red"}]}, trace="bad-2")
    values = encoded(stream)
    values.insert(30, (b"7001", bad_latitude.to_bytes()))
    values.insert(60, (b"7001", unknown_column.to_bytes()))
    values.insert(90, (b"7002", b"{not json"))
    ends = await produce(kafka_settings, values)

    port = free_port()
    group = f"writer-{uuid.uuid4().hex[:8]}"
    settings = writer_settings(kafka_settings, str(tmp_path), group, worker=WorkerSettings(name="writer-e2e", http_port=port))
    writer = EntityWriter(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    try:
        await wait_committed(kafka_settings, group, ends)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            ready = await http.get("/health/ready")
            metrics = (await http.get("/metrics")).text
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

    assert table_contents(str(tmp_path)) == reference(stream)
    assert ready.status_code == 200 and ready.json()["checks"]["flush"]["ready"] is True
    assert 'claimx_writer_rows_written_total{table="claimx_projects"}' in metrics
    assert 'claimx_writer_dead_letters_total{error_type="SchemaMismatch"} 2.0' in metrics
    rows = sum(m.row_count() for m in stream)
    assert writer.rows_written == rows and writer.dead_lettered == 3
    assert writer.flushes >= rows // 40  # max_rows=40: many small merges, not one big one

    consumer = make_consumer(kafka_settings, kafka_settings.dlq_topic, group_id=None)
    await consumer.start()
    try:
        letters: list[DeadLetter] = []
        while len(letters) < 3:
            batch = await consumer.getmany(timeout_ms=5000)
            assert batch, "dead letters missing"
            letters += [DeadLetter.from_bytes(r.value) for records in batch.values() for r in records]
    finally:
        await consumer.stop()
    by_trace = {letter.trace_id: letter for letter in letters}
    assert by_trace["bad-1"].error_type == "SchemaMismatch"
    assert by_trace["bad-1"].error_message == "claimx_media.latitude: expected float64, got 'abc'"
    assert by_trace["bad-1"].value is not None and EntityRowsMessage.from_bytes(by_trace["bad-1"].value.raw()) == bad_latitude
    assert by_trace["bad-2"].error_message == "claimx_projects.favourite_colour: column not in the table's schema"
    assert by_trace[None].error_type == "InvalidMessage" and by_trace[None].value.data == "{not json"
    assert {letter.error_category for letter in letters} == {"permanent"} and {letter.worker for letter in letters} == {"writer-e2e"}
    assert {letter.made_by for letter in letters} == {"write"}  # dlq replay may send these back to the entity-rows topic
    assert read_rows(str(tmp_path), "claimx_media") and "bad-1" not in {r["media_id"] for r in read_rows(str(tmp_path), "claimx_media")}


async def test_a_failing_table_keeps_the_batch_and_commits_nothing_until_it_heals(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    stream = build_stream(seed=5, events=60)
    ends = await produce(kafka_settings, encoded(stream))
    root = str(tmp_path)
    blocker = Path(table_uri(root, "claimx_media"))
    write_deltalake(str(blocker), pa.table({"media_id": ["x"], "latitude": ["not the contract"]}))  # refused by the writer
    group = f"heal-{uuid.uuid4().hex[:8]}"
    writer = EntityWriter(writer_settings(kafka_settings, root, group, max_rows=1000))
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    try:
        await until(lambda: writer._retry.failures >= 2, timeout_s=30, task=task)
        ready, details = writer._flush_ready()
        assert not ready and "claimx_media" in details["error"] and details["pending_rows"] > 0
        assert set((await committed(kafka_settings, group, ends)).values()) == {-1}  # nothing committed
        assert read_rows(root, "claimx_projects")  # the other tables of the batch were written
        shutil.rmtree(blocker)  # the operator moves the bad table away
        await wait_committed(kafka_settings, group, ends)
        assert writer._flush_ready()[0]
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert table_contents(root) == reference(stream)


async def test_two_writers_split_the_partitions_through_a_rebalance(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    stream = build_stream(seed=2, events=120)
    half = len(stream) // 2
    ends = await produce(kafka_settings, encoded(stream[:half]))
    group = f"writer-{uuid.uuid4().hex[:8]}"
    first = EntityWriter(writer_settings(kafka_settings, str(tmp_path), group, max_rows=30))
    second = EntityWriter(writer_settings(kafka_settings, str(tmp_path), group, max_rows=30))
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(first.run(stop_first))]
    try:
        while first.flushes < 3:  # the first writer is mid-stream when the second one joins
            await asyncio.sleep(0.05)
        tasks.append(asyncio.create_task(second.run(stop_second)))
        # the second half goes out once the group has rebalanced: part of it is the second writer's
        await until(lambda: second._assigned and first._assigned and not (first._assigned & second._assigned),
                    lambda: f"the rebalance (first {first._assigned}, second {second._assigned})", task=tasks[-1])
        more = await produce(kafka_settings, encoded(stream[half:]))
        ends = {p: max(ends.get(p, 0), more.get(p, 0)) for p in {*ends, *more}}
        await wait_committed(kafka_settings, group, ends, timeout_s=90)
        assert first._assigned and second._assigned and not (first._assigned & second._assigned)
    finally:
        stop_first.set()
        stop_second.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert second.rows_written > 0
    assert table_contents(str(tmp_path)) == reference(stream)








@pytest.mark.slow
async def test_sigkill_at_random_points_then_replay_changes_nothing(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    stream = build_stream(seed=3, events=150)
    expected = reference(stream)
    ends = await produce(kafka_settings, encoded(stream))
    total = sum(ends.values())

    # An uninterrupted run (in-process, its own group and tables) to compare with.
    clean_root = str(tmp_path / "clean")
    await run_until_committed(writer_settings(kafka_settings, clean_root, f"clean-{uuid.uuid4().hex[:8]}", max_rows=100), ends)
    assert table_contents(clean_root) == expected

    # The same stream through `kafka-pipeline write`, SIGKILLed three times at random points.
    root = str(tmp_path / "killed")
    group = f"killed-{uuid.uuid4().hex[:8]}"
    env = _writer_env(kafka_settings, root, group)
    log = tmp_path / "writer.log"
    rng = random.Random(20240501)
    progress_at_kill = []
    for _ in range(3):
        start = len(log.read_text()) if log.exists() else 0
        proc = _start_writer(env, log)
        await _wait_for_log(log, "partitions assigned", start, proc)
        await asyncio.sleep(rng.uniform(0.2, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        progress_at_kill.append(sum(max(0, o) for o in (await committed(kafka_settings, group, ends)).values()))
    assert progress_at_kill[0] < total, "the first kill came after the stream was done"

    start = len(log.read_text())
    proc = _start_writer(env, log)
    try:
        await wait_committed(kafka_settings, group, ends, timeout_s=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[start:]
    after_kills = read_rows_all(root)
    assert table_contents(root) == table_contents(clean_root) == expected
    assert any("Cycle " in json.loads(line)["event"] for line in log.read_text().splitlines() if line.startswith("{"))

    # Replay the whole topic from offset 0 under a new group into the same tables: nothing changes
    # (not even created_at); at most updated_at moves.
    await run_until_committed(writer_settings(kafka_settings, root, f"replay-{uuid.uuid4().hex[:8]}", max_rows=100), ends)
    replayed = read_rows_all(root)
    for name in TABLES:
        assert [{k: v for k, v in r.items() if k != "updated_at"} for r in replayed[name]] == [
            {k: v for k, v in r.items() if k != "updated_at"} for r in after_kills[name]
        ], name
        assert all(new["updated_at"] >= old["updated_at"] for new, old in zip(replayed[name], after_kills[name]))


def read_rows_all(root: str) -> dict[str, list[dict[str, Any]]]:
    return {name: read_rows(root, name) for name in TABLES}


async def test_sigterm_flushes_what_is_pending_and_exits_zero(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    stream = build_stream(seed=4, events=30)
    ends = await produce(kafka_settings, encoded(stream))
    root = str(tmp_path)
    group = f"term-{uuid.uuid4().hex[:8]}"
    # Nothing would be flushed for a minute or 10,000 rows: only the SIGTERM flush writes.
    env = _writer_env(kafka_settings, root, group, KP_WRITER__MAX_ROWS="10000", KP_WRITER__MAX_LATENCY_S="60")
    log = tmp_path / "writer.log"
    proc = _start_writer(env, log, "--tables-root", root)
    await _wait_for_log(log, "partitions assigned", 0, proc)
    deadline = time.monotonic() + 20
    while '"pending_rows": 0' in (log.read_text().splitlines() or [""])[-1] or "pending_rows" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        await asyncio.sleep(0.2)  # until a cycle line reports rows pending
    assert not Path(table_uri(root, "claimx_events")).exists()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log.read_text()
    assert table_contents(root) == reference(stream)
    assert await committed(kafka_settings, group, ends) == ends
    assert app_id(group, kafka_settings.entity_rows_topic, 0) == f"{group}:{kafka_settings.entity_rows_topic}:0"


def test_write_command_rejects_bad_arguments_in_one_line() -> None:
    for args, needle in ((["--max-rows", "0"], "--max-rows"), (["--max-latency-s", "soon"], "--max-latency-s")):
        done = subprocess.run([sys.executable, "-m", "kafka_pipeline", "write", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and needle in done.stderr and done.stderr.strip().count("\n") == 0
