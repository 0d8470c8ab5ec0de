"""The workers and the DLQ tools over SASL_SSL (SCRAM-SHA-512) on Apache Kafka, hostname verified.

The session's Apache Kafka broker also listens on SASL_SSL, advertised as localhost, with a
certificate for that name signed by a CA the fixture made; the clients trust that CA through
KAFKA_SSL_CAFILE and check the host name (aiokafka's default context). Everything is
configured through the environment names a deployment uses.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from kafka_pipeline.config import KafkaSettings
from kafka_pipeline.embedded.kafka_broker import SCRAM_MECHANISM, KafkaBroker, make_certificates
from kafka_pipeline.embedded.worker_process import WorkerProcess
from kafka_pipeline.kafka.clients import BrokerUnreachable, ensure_topics
from kafka_pipeline.maintenance.operations import table_row_counts
from kafka_pipeline.ops.replay import replay
from kafka_pipeline.ops.replay_sources import FileSource
from kafka_pipeline.simulator.events import generate_events, write_events
from kafka_pipeline.simulator.server import SimulatorProcess
from tests.fixtures.broker import unique_topics
from tests.fixtures.enrich import handled_trace_ids
from tests.fixtures.secure import cli, secure_env
from tests.fixtures.writer import until_events_written

EVENTS, PROJECTS, MALFORMED = 40, 5, 3


def secure_settings(broker: KafkaBroker, *, password: str | None = None, cafile: Path | None = None) -> KafkaSettings:
    assert broker.tls is not None
    return unique_topics(broker.sasl_ssl_bootstrap_servers).model_copy(update={
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": SCRAM_MECHANISM,
        "sasl_username": broker.scram_username,
        "sasl_password": SecretStr(password or broker.scram_password),
        "ssl_cafile": str(cafile or broker.tls.ca_file),
        "session_timeout_ms": 6000,
    })






def failed_authentications(broker: KafkaBroker) -> int:
    assert broker.log_path is not None
    return broker.log_path.read_text(errors="replace").count("Failed authentication")


async def test_enrich_write_and_dlq_list_over_sasl_ssl(kafka_broker: KafkaBroker, api: SimulatorProcess, tmp_path: Path) -> None:
    kafka = secure_settings(kafka_broker)
    lines = generate_events(EVENTS, PROJECTS, seed=31, malformed=MALFORMED)
    events_file = tmp_path / "events.jsonl"
    write_events(events_file, lines)
    known = handled_trace_ids(lines)
    tables = tmp_path / "delta"
    env = {
        **secure_env(kafka),
        "CLAIMX_API_URL": api.url,
        "CLAIMX_API_TOKEN": api.token,
        "DELTA_TABLES_ROOT": str(tables),
        "KP_WRITER__MAX_LATENCY_S": "0.3",
        "LOG_FORMAT": "json",
    }
    await ensure_topics(kafka, [kafka.events_topic, kafka.entity_rows_topic, kafka.retry_topic, kafka.dlq_topic])
    summary = await replay(kafka, FileSource([events_file]), progress=False)
    assert summary.total_sent == len(lines)

    workers = [WorkerProcess(command, env, log_path=tmp_path / f"{command}.log").start() for command in ("enrich", "write")]
    try:
        await until_events_written(str(tables), len(known), workers, tmp_path)
    finally:
        codes = [worker.stop(15) for worker in workers]
    assert codes == [0, 0]
    assert table_row_counts(str(tables), ["claimx_events"]) == {"claimx_events": len(known)}

    listed = await asyncio.to_thread(cli, env, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    dlq = json.loads(listed.stdout)
    assert dlq["originals"] == MALFORMED and dlq["complete"] is True, dlq
    assert {group["error_category"] for group in dlq["groups"]} == {"permanent"}
    for name in ("enrich", "write"):  # the workers' own logs never hold the password
        assert kafka_broker.scram_password not in (tmp_path / f"{name}.log").read_text()


async def test_a_wrong_password_is_one_line_without_the_password(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    wrong = "not-the-password-0451"
    kafka = secure_settings(kafka_broker, password=wrong)
    env = {**secure_env(kafka), "DELTA_TABLES_ROOT": str(tmp_path / "delta"), "CLAIMX_API_TOKEN": "dXNlcjpwYXNz"}
    for argv in (["enrich"], ["write"], ["dlq", "list"]):
        before = failed_authentications(kafka_broker)
        started = time.monotonic()
        done = await asyncio.to_thread(cli, env, *argv)
        took = time.monotonic() - started
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, (argv, done.stderr[-3000:])
        assert "rejected the SCRAM-SHA-512 credentials of user 'kafka-pipeline'" in lines[0], lines
        assert wrong not in done.stderr + done.stdout
        assert took < 30, (argv, took)
        await asyncio.sleep(0.5)  # the broker logs the failure as it closes the connection
        # one refused handshake per attempt at first contact, not a retry storm
        assert failed_authentications(kafka_broker) - before <= 3, (argv, failed_authentications(kafka_broker) - before)


async def test_a_certificate_from_another_ca_is_refused_in_one_line(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    stranger = make_certificates(tmp_path / "other-ca")
    kafka = secure_settings(kafka_broker, cafile=stranger.ca_file)
    with pytest.raises(BrokerUnreachable, match="not trusted by .*other-ca/ca.pem") as refused:
        await ensure_topics(kafka, [kafka.events_topic], timeout_s=10)
    assert "\n" not in str(refused.value)


async def test_the_host_name_is_checked(kafka_broker: KafkaBroker) -> None:
    """The certificate names localhost only: the same listener reached as 127.0.0.1 is refused."""
    kafka = secure_settings(kafka_broker).model_copy(update={"bootstrap_servers": f"127.0.0.1:{kafka_broker.sasl_ssl_port}"})
    with pytest.raises(BrokerUnreachable, match="not trusted by .*ca.pem: IP address mismatch") as refused:
        await ensure_topics(kafka, [kafka.events_topic], timeout_s=10)
    assert "\n" not in str(refused.value)
