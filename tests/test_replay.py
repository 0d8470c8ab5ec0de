"""Event replay through the real broker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from kafka_pipeline.claimx.replay import key_of, replay
from kafka_pipeline.cli import main
from kafka_pipeline.runtime.kafka import make_consumer


def write_events(path: Path, count: int) -> list[bytes]:
    lines = []
    for i in range(count):
        field = "projectId" if i % 2 else "project_id"
        lines.append(json.dumps({"event_type": "PROJECT_CREATED", field: 100 + i % 4, "ingested_at": "2026-01-01T00:00:00Z"}))
    lines.insert(3, "this is not json")
    path.write_text("\n".join(lines) + "\n\n")
    return [line.encode() for line in lines]


async def consume_all(kafka_settings, topic: str, expected: int) -> list:
    consumer = make_consumer(kafka_settings, topic, group_id=f"check-{uuid.uuid4().hex}")
    await consumer.start()
    records = []
    try:
        deadline = time.monotonic() + 20
        while len(records) < expected and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


def test_key_is_project_id_in_either_spelling() -> None:
    assert key_of(b'{"project_id": 5}') == b"5"
    assert key_of(b'{"projectId": "abc"}') == b"abc"
    assert key_of(b"[1, 2]") is None
    assert key_of(b"not json") is None


async def test_replay_sends_every_line_keyed(kafka_settings, tmp_path: Path) -> None:
    lines = write_events(tmp_path / "events.jsonl", 20)
    summary = await replay(kafka_settings, [tmp_path / "events.jsonl"], progress=False)
    assert summary.sent == 21 and summary.without_key == 1
    records = await consume_all(kafka_settings, kafka_settings.events_topic, 21)
    assert sorted(r.value for r in records) == sorted(lines)
    for record in records:
        assert record.key == key_of(record.value)
    by_key = {r.key for r in records if r.key is not None}
    assert by_key == {b"100", b"101", b"102", b"103"}


async def test_limit_rate_and_dry_run(kafka_settings, tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", 50)
    dry = await replay(kafka_settings, [tmp_path / "events.jsonl"], dry_run=True, progress=False)
    assert dry.sent == 51
    started = time.monotonic()
    summary = await replay(kafka_settings, [tmp_path / "events.jsonl"], limit=10, rate=20, progress=False)
    assert summary.sent == 10
    assert time.monotonic() - started >= 0.4  # 10 events at 20/s take at least ~0.45 s
    records = await consume_all(kafka_settings, kafka_settings.events_topic, 10)
    assert len(records) == 10  # the dry run sent nothing


def test_cli_missing_file_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "/nonexistent/events.jsonl"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err


def test_cli_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", 3)
    result = subprocess.run(
        [sys.executable, "-m", "kafka_pipeline", "replay", str(tmp_path / "events.jsonl"), "--bootstrap-servers", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "unreachable" in result.stderr


def test_cli_bad_rate_is_rejected(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as done:
        main(["replay", str(tmp_path / "x.jsonl"), "--rate", "-3"])
    assert done.value.code == 2
    assert "--rate" in capsys.readouterr().err
