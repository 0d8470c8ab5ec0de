"""The README's first command: `kafka-pipeline run --until-drained` on the bundled sample, on its
default tansu broker and on Apache Kafka (`--broker kafka`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from kafka_pipeline.claimx.events import parse_event
from kafka_pipeline.claimx.handlers import handler_for
from kafka_pipeline.claimx.schemas import EVENTS, METADATA_COLUMN_NAMES, TABLES
from kafka_pipeline.commands.run import bundled_sample
from kafka_pipeline.config import load_settings
from kafka_pipeline.embedded.kafka_broker import KafkaBroker
from kafka_pipeline.maintenance.operations import table_row_counts
from kafka_pipeline.offsets.topic_offsets import high_watermarks
from kafka_pipeline.simulator.events import generate_events, write_events
from tests.fixtures.writer import table_contents


def test_run_until_drained_writes_every_table(tmp_path: Path) -> None:
    tables = tmp_path / "delta"
    result = subprocess.run(
        [sys.executable, "-m", "kafka_pipeline", "run", "--until-drained", "--timeout-s", "240",
         "--tables-root", str(tables), "--log-dir", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:] + "".join(
        p.read_text()[-2000:] for p in (tmp_path / "logs").glob("*.log"))
    counts = table_row_counts(str(tables), list(TABLES))
    assert set(counts) == set(TABLES) and all(counts.values()), counts
    for name, count in counts.items():  # the printed summary is what the tables hold
        assert any(line.split() == [name, str(count)] for line in result.stdout.splitlines()), (name, result.stdout)

    lines = bundled_sample().read_text().splitlines()
    events = [parse_event(line.encode()) for line in lines]
    handled = {e.trace_id for e in events if handler_for(e.event_type) is not None}
    assert counts["claimx_events"] == len(handled)
    assert counts["claimx_projects"] == len({e.project_id for e in events})
    assert ["dead", "letters", "0"] in [line.split() for line in result.stdout.splitlines()]


def run_embedded(tmp_path: Path, tables: Path, *args: str) -> subprocess.CompletedProcess[str]:
    logs = tmp_path / f"logs-{len(list(tmp_path.glob('logs-*')))}"
    result = subprocess.run(
        [sys.executable, "-m", "kafka_pipeline", "run", "--until-drained", "--timeout-s", "240",
         "--tables-root", str(tables), "--log-dir", str(logs), *args],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:] + "".join(p.read_text()[-2000:] for p in logs.glob("*.log"))
    return result


def handled_events(path: Path) -> tuple[int, set[str]]:
    """Events a handler takes (one claimx_events row each) and their project ids."""
    events = [parse_event(line.encode()) for line in path.read_text().splitlines()]
    handled = [e for e in events if handler_for(e.event_type) is not None]
    return len({e.trace_id for e in handled}), {e.project_id for e in events}


def test_a_second_run_on_the_same_tables_writes_every_row_of_both(tmp_path: Path) -> None:
    """Each run's tansu log starts at offset 0 again: the writer adopts it knowingly instead of
    skipping what the tables' progress of the first run covers. The same events again change nothing."""
    tables = tmp_path / "delta"
    run_embedded(tmp_path, tables)
    second = tmp_path / "second.jsonl"
    write_events(second, generate_events(300, 20, 11, first_project_id=6000001))
    result = run_embedded(tmp_path, tables, "--events", str(second))
    events_1, projects_1 = handled_events(bundled_sample())
    events_2, projects_2 = handled_events(second)
    counts = table_row_counts(str(tables), list(TABLES))
    assert counts["claimx_events"] == events_1 + events_2
    assert counts["claimx_projects"] == len(projects_1 | projects_2) == len(projects_1) + len(projects_2)
    logs = sorted(tmp_path.glob("logs-*"))[-1]
    assert "adopted a new log" in (logs / "write.log").read_text()
    assert ["dead", "letters", "0"] in [line.split() for line in result.stdout.splitlines()]

    before = entity_values(str(tables))
    run_embedded(tmp_path, tables, "--events", str(second))
    assert entity_values(str(tables)) == before


def entity_values(root: str) -> dict[str, list[dict[str, object]]]:
    """The tables' values without the lineage of the row (trace_id, event_time) outside the event
    log: which of a project's events carries its snapshot is decided by the race of its events in
    flight (the first to miss the cache), so a replay may name another event of the same project
    while every value stays the same."""
    return {
        name: [row if name == EVENTS.name else {k: v for k, v in row.items() if k not in METADATA_COLUMN_NAMES} for row in rows]
        for name, rows in table_contents(root).items()
    }


def test_run_on_apache_kafka_keeps_the_topics_on_disk(tmp_path: Path) -> None:
    """`run --broker kafka`: the same drained pipeline, and the events are still on disk after it stopped."""
    tables, data = tmp_path / "delta", tmp_path / "kafka-data"
    result = subprocess.run(
        [sys.executable, "-m", "kafka_pipeline", "run", "--broker", "kafka", "--kafka-data-dir", str(data),
         "--until-drained", "--timeout-s", "240", "--tables-root", str(tables), "--log-dir", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:] + "".join(
        p.read_text()[-2000:] for p in (tmp_path / "logs").glob("*.log"))
    assert "(kafka)" in result.stdout and ["dead", "letters", "0"] in [line.split() for line in result.stdout.splitlines()]
    lines = bundled_sample().read_text().splitlines()
    handled = {e.trace_id for e in map(parse_event, (line.encode() for line in lines)) if handler_for(e.event_type) is not None}
    assert table_row_counts(str(tables), ["claimx_events"]) == {"claimx_events": len(handled)}

    # the broker is gone; its log directory is not: a new broker on it still has every event
    with KafkaBroker(data_dir=data) as again:
        kafka = load_settings(kafka={"bootstrap_servers": again.bootstrap_servers}).kafka
        assert sum(asyncio.run(high_watermarks(kafka, kafka.events_topic)).values()) == len(lines)


def test_run_on_apache_kafka_without_java_or_jars_is_one_line(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "KAFKA_JARS_DIR")}
    no_java = {**base, "PATH": str(tmp_path)}
    no_jars = {**base, "KAFKA_JARS_DIR": str(tmp_path / "empty")}
    for env, expected in ((no_java, "Java 17+ is needed"), (no_jars, "Apache Kafka jars not found")):
        result = subprocess.run([sys.executable, "-m", "kafka_pipeline", "run", "--broker", "kafka", "--no-replay"],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("kafka-pipeline run: ") and expected in result.stderr, result.stderr
    assert "scripts/fetch-kafka-jars.sh" in result.stderr
