"""The platform pieces: configuration, the embedded broker, the CLI surface."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from kafka_pipeline.cli import command_modules, main
from kafka_pipeline.config import load_settings
from kafka_pipeline.errors import BrokerUnreachable, ConfigError
from kafka_pipeline.kafka.clients import ensure_topics, make_consumer, make_producer


def test_env_overrides_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("CLAIMX_API_TOKEN", "dXNlcjpwYXNz")
    monkeypatch.setenv("KP_ENRICH__MAX_IN_FLIGHT", "17")
    monkeypatch.setenv("KP_RETRY__DELAYS_S", "[1, 2]")
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.api.resolved_token().get_secret_value() == "dXNlcjpwYXNz"
    assert "dXNlcjpwYXNz" not in repr(settings)
    assert settings.enrich.max_in_flight == 17
    assert settings.retry.delays_s == [1.0, 2.0]
    assert settings.kafka.events_topic == "claimx.events"  # from config/default.yaml


def test_bad_setting_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KP_ENRICH__MAX_IN_FLIGHT", "lots")
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert "enrich.max_in_flight" in message and "\n" not in message


def test_unknown_environment_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KP_ENV", "nowhere")
    with pytest.raises(ConfigError, match="nowhere"):
        load_settings()


async def test_produce_and_consume_through_the_broker(kafka_settings) -> None:
    await ensure_topics(kafka_settings, [kafka_settings.events_topic])
    producer = make_producer(kafka_settings)
    await producer.start()
    try:
        for i in range(30):
            await producer.send_and_wait(kafka_settings.events_topic, value=f"v{i}".encode(), key=f"p{i % 3}".encode(),
                                         headers=[("h", b"1")])
    finally:
        await producer.stop()
    consumer = make_consumer(kafka_settings, kafka_settings.events_topic, group_id=f"g-{uuid.uuid4().hex}")
    await consumer.start()
    seen: list[tuple[bytes, bytes]] = []
    try:
        while len(seen) < 30:
            batch = await consumer.getmany(timeout_ms=2000)
            for records in batch.values():
                seen.extend((r.key, r.value) for r in records)
        await consumer.commit()
    finally:
        await consumer.stop()
    assert sorted(v for _, v in seen) == sorted(f"v{i}".encode() for i in range(30))
    by_key = {}
    for key, value in seen:  # one key's messages keep their order
        by_key.setdefault(key, []).append(int(value[1:]))
    assert all(values == sorted(values) for values in by_key.values())


async def test_unreachable_broker_is_a_clear_error(kafka_settings) -> None:
    settings = kafka_settings.model_copy(update={"bootstrap_servers": "127.0.0.1:1"})
    with pytest.raises(BrokerUnreachable, match="127.0.0.1:1"):
        await ensure_topics(settings, ["x"], timeout_s=3)


def test_every_subcommand_has_help() -> None:
    names = [m.NAME for m in command_modules()]
    assert "broker" in names
    for name in names:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0


def test_bad_option_is_one_line_and_non_zero() -> None:
    result = subprocess.run([sys.executable, "-m", "kafka_pipeline", "broker", "--port", "notaport"],
                            capture_output=True, text=True, env={**os.environ})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--port" in result.stderr


@pytest.mark.parametrize("command", ["enrich", "write", "retry-scheduler", "replay"])
def test_worker_with_unreachable_broker_says_one_line(command: str, tmp_path) -> None:
    events = tmp_path / "e.jsonl"
    events.write_text('{"event_type": "PROJECT_CREATED", "project_id": 1, "ingested_at": "2026-01-01T00:00:00Z"}\n')
    argv = [command, str(events)] if command == "replay" else [command]
    result = subprocess.run([sys.executable, "-m", "kafka_pipeline", *argv], capture_output=True, text=True, timeout=90,
                            env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "DELTA_TABLES_ROOT": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"kafka-pipeline {command}: Kafka broker unreachable at 127.0.0.1:1 (KafkaConnectionError)"]
