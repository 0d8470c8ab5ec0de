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
from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.commands.run import bundled_sample
from kafka_pipeline.config import load_settings
from kafka_pipeline.delta.maintenance import table_row_counts
from kafka_pipeline.embedded.kafka_broker import KafkaBroker
from kafka_pipeline.runtime.topic_offsets import high_watermarks


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
