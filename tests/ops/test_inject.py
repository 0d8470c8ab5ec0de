"""`kafka-pipeline inject`: one event from flags, validated by the event model, sent keyed by project."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest

from kafka_pipeline.claimx.events import parse_event
from kafka_pipeline.cli import main
from kafka_pipeline.config import KafkaSettings
from tests.fixtures.kafka_io import read_topic


def test_inject_sends_one_valid_event(kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_settings.bootstrap_servers)
    topic = kafka_settings.events_topic
    assert main(["inject", "--type", "project_file_added", "--project-id", "123", "--media-id", "123004", "--topic", topic,
                 "--ingested-at", "2026-02-01T10:00:00"]) == 0
    started = datetime.now(UTC)
    assert main(["inject", "--type", "PROJECT_CREATED", "--project-id", "124", "--refresh-project", "--topic", topic]) == 0
    out = capsys.readouterr().out
    records = asyncio.run(read_topic(kafka_settings, topic))
    assert len(records) == 2
    first, second = sorted(records, key=lambda r: r.key)
    event = parse_event(first.value)
    assert (event.event_type, event.project_id, event.media_id) == ("PROJECT_FILE_ADDED", "123", "123004")
    assert event.ingested_at == datetime(2026, 2, 1, 10, tzinfo=UTC) and first.key == b"123" and not first.headers
    assert f"trace_id {event.trace_id}" in out
    created = parse_event(second.value)
    assert created.event_type == "PROJECT_CREATED" and second.key == b"124"
    assert abs((created.ingested_at - started).total_seconds()) < 30  # default: now
    assert list(second.headers) == [("refresh-project", b"1")]


def test_dry_run_prints_the_event_and_sends_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inject", "--type", "PROJECT_MFN_ADDED", "--project-id", "7", "--master-file-name", "MFN-1", "--dry-run",
                 "--bootstrap-servers", "127.0.0.1:1"]) == 0
    line, summary = capsys.readouterr().out.splitlines()
    event = parse_event(line)
    assert json.loads(line)["master_file_name"] == "MFN-1" and f"trace_id {event.trace_id}, nothing sent" in summary


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--type", "PROJECT_FILE_ADDED", "--project-id", "1"], "invalid event: PROJECT_FILE_ADDED requires media_id"),
        (["--type", "CUSTOM_TASK_ASSIGNED", "--project-id", "1"], "requires task_assignment_id"),
        (["--type", "PROJECT_EXPLODED", "--project-id", "1"], "unknown event type 'PROJECT_EXPLODED' (known: CUSTOM_TASK_ASSIGNED"),
        (["--type", "PROJECT_CREATED", "--project-id", "../etc"], "is not 1-64 ASCII letters, digits"),
        (["--type", "PROJECT_CREATED", "--project-id", " "], "missing field project_id"),
    ],
)
def test_invalid_events_are_refused_in_one_line(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    # an unreachable broker: the refusal comes before any attempt to send
    assert main(["inject", *argv, "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kafka-pipeline inject: ") and says in err, err
