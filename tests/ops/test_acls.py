"""Least-privilege ACLs on Apache Kafka's StandardAuthorizer, over SASL_SSL.

The session broker authorizes (tests/fixtures/kafka_broker.py): no ACL, no access. The test
grants exactly `pipeline_acls` (what `kafka-pipeline acls --apply` creates) to one SCRAM user
per role, runs the three workers each as its own user, and checks that the pipeline works with
those ACLs alone while any other principal is refused on every internal topic.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

from aiokafka.errors import KafkaError, TopicAuthorizationFailedError
from pydantic import SecretStr

from kafka_pipeline.config import KafkaSettings, load_settings
from kafka_pipeline.embedded.kafka_broker import KafkaBroker
from kafka_pipeline.embedded.worker_process import WorkerProcess
from kafka_pipeline.kafka.clients import ensure_topics, make_producer
from kafka_pipeline.maintenance.operations import table_row_counts
from kafka_pipeline.ops.acls import acl_lines, apply_acls, pipeline_acls
from kafka_pipeline.ops.replay import replay
from kafka_pipeline.ops.replay_sources import FileSource
from kafka_pipeline.simulator.events import generate_events, write_events
from kafka_pipeline.simulator.server import SimulatorProcess
from tests.fixtures.broker import unique_topics
from tests.fixtures.enrich import handled_trace_ids
from tests.fixtures.secure import cli, secure_env
from tests.fixtures.writer import until_events_written

EVENTS, PROJECTS, MALFORMED = 30, 4, 2
PRINCIPALS = {"enrich": "User:kp-enrich", "writer": "User:kp-writer", "retry-scheduler": "User:kp-retry",
              "operator": "User:kp-operator", "source": "User:kp-source"}


def as_user(broker: KafkaBroker, plain: KafkaSettings, user: str) -> KafkaSettings:
    """`plain`'s topics over SASL_SSL as `user`."""
    assert broker.tls is not None
    return plain.model_copy(update={
        "bootstrap_servers": broker.sasl_ssl_bootstrap_servers, "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": user, "sasl_password": SecretStr(broker.scram_password),
        "ssl_cafile": str(broker.tls.ca_file), "session_timeout_ms": 6000,
    })


async def refused(kafka: KafkaSettings, topic: str) -> bool:
    """Does the broker refuse `kafka`'s principal a write to `topic`? (Not idempotent: a principal
    with no Write anywhere is refused before any topic, ClusterAuthorizationFailed on InitProducerId.)"""
    producer = make_producer(kafka, request_timeout_ms=10_000, enable_idempotence=False)
    await producer.start()
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, b'{"forged": true}'), 20)
    except TopicAuthorizationFailedError:
        return True
    except (KafkaError, TimeoutError) as exc:
        raise AssertionError(f"{topic}: not an authorization failure: {type(exc).__name__}: {exc}") from None
    finally:
        await producer.stop()
    return False


async def test_the_pipeline_works_with_exactly_its_acls_and_nobody_else_writes_internal_topics(
    kafka_broker: KafkaBroker, api: SimulatorProcess, tmp_path: Path
) -> None:
    plain = unique_topics(kafka_broker.bootstrap_servers)  # PLAINTEXT: a super user (the administrator)
    suffix = uuid.uuid4().hex[:8]
    groups = {"enrich": f"enrich-{suffix}", "writer": f"writer-{suffix}", "retry": f"retry-{suffix}"}
    settings = load_settings(kafka=plain.model_dump(), enrich={"group_id": groups["enrich"]},
                             writer={"group_id": groups["writer"]}, retry={"group_id": groups["retry"]})
    await ensure_topics(plain, [plain.events_topic, plain.entity_rows_topic, plain.retry_topic, plain.dlq_topic])
    acls = pipeline_acls(settings, PRINCIPALS)  # type: ignore[arg-type]
    assert await apply_acls(settings, acls) == len(acls) == len(acl_lines(acls, bootstrap_servers="b"))

    lines = generate_events(EVENTS, PROJECTS, seed=41, malformed=MALFORMED)
    events_file = tmp_path / "events.jsonl"
    write_events(events_file, lines)
    known = handled_trace_ids(lines)
    summary = await replay(as_user(kafka_broker, plain, "kp-source"), FileSource([events_file]), progress=False)
    assert summary.total_sent == len(lines)

    tables = tmp_path / "delta"
    common = {"CLAIMX_API_URL": api.url, "CLAIMX_API_TOKEN": api.token, "DELTA_TABLES_ROOT": str(tables),
              "KP_WRITER__MAX_LATENCY_S": "0.3", "LOG_FORMAT": "json", "KP_ENRICH__GROUP_ID": groups["enrich"],
              "KP_WRITER__GROUP_ID": groups["writer"], "KP_RETRY__GROUP_ID": groups["retry"]}
    users = {"enrich": "kp-enrich", "write": "kp-writer", "retry-scheduler": "kp-retry"}
    workers = [WorkerProcess(command, {**secure_env(as_user(kafka_broker, plain, user)), **common},
                             log_path=tmp_path / f"{command}.log").start() for command, user in users.items()]
    try:
        await until_events_written(str(tables), len(known), workers, tmp_path)
        operator = {**secure_env(as_user(kafka_broker, plain, "kp-operator")), **common}
        listed = await asyncio.to_thread(cli, operator, "dlq", "list", "--json")
        status = await asyncio.to_thread(cli, operator, "status", "--json")
    finally:
        codes = [worker.stop(15) for worker in workers]
    assert codes == [0, 0, 0]
    assert table_row_counts(str(tables), ["claimx_events"]) == {"claimx_events": len(known)}
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["originals"] == MALFORMED
    assert status.returncode in (0, 1), status.stderr  # 1: the malformed events' dead letters are a listed problem
    seen = json.loads(status.stdout)
    assert {g["group"]: g["lag"] for g in seen["groups"]} == {groups["enrich"]: 0, groups["writer"]: 0, groups["retry"]: 0}

    internal = (plain.entity_rows_topic, plain.retry_topic, plain.dlq_topic)
    stranger = as_user(kafka_broker, plain, "kp-stranger")
    source = as_user(kafka_broker, plain, "kp-source")
    for topic in (*internal, plain.events_topic):
        assert await refused(stranger, topic), topic
    for topic in internal:  # the events' own producer writes events, nothing else
        assert await refused(source, topic), topic
    for user, topic in (("kp-enrich", plain.dlq_topic), ("kp-writer", plain.dlq_topic)):
        assert not await refused(as_user(kafka_broker, plain, user), topic)  # the granted writes do go through


def test_who_may_write_and_read_each_topic() -> None:
    settings = load_settings()
    k = settings.kafka
    acls = pipeline_acls(settings, PRINCIPALS)  # type: ignore[arg-type]
    role_of = {principal: role for role, principal in PRINCIPALS.items()}

    def roles(topic: str, operation: str) -> set[str]:
        return {role_of[a.principal] for a in acls if a.resource == "topic" and a.name == topic and a.operation == operation}

    assert roles(k.events_topic, "Write") == {"source", "retry-scheduler", "operator"}
    assert roles(k.entity_rows_topic, "Write") == {"enrich", "operator"}
    assert roles(k.retry_topic, "Write") == {"enrich"}
    assert roles(k.dlq_topic, "Write") == {"enrich", "writer", "retry-scheduler", "operator"}
    # the operator reads every topic (status finds where each ends; replay --from-topic); consumers read only their own
    assert roles(k.events_topic, "Read") == {"enrich", "operator"} and roles(k.entity_rows_topic, "Read") == {"writer", "operator"}
    assert roles(k.retry_topic, "Read") == {"retry-scheduler", "operator"} and roles(k.dlq_topic, "Read") == {"operator"}
    groups = {(role_of[a.principal], a.name) for a in acls if a.resource == "group"}
    assert {("enrich", settings.enrich.group_id), ("writer", settings.writer.group_id), ("retry-scheduler", settings.retry.group_id)} <= groups
    assert {role for role, _ in groups} == {"enrich", "writer", "retry-scheduler", "operator"}
