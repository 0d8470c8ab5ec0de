"""Failures are routine: the enrichment worker (and the entity writer) when the API, the
credentials or the clock do not cooperate. Real broker, real simulator, real Delta tables.

- an API that keeps failing opens the circuit breaker: events take the retry route, readiness
  reports the open circuit, and the breaker half-opens and closes once the API answers again;
- rejected credentials (401) dead-letter nothing: the worker holds the events, pauses, reports
  `auth_failed`, probes, and resumes once the token file holds a working token;
- SIGTERM with a slow API: exit 0, committed offsets cover only finished events, a restart
  (stopped with SIGINT) processes the rest;
- a slow API or a slow Delta store slows consumption down (paused partitions, still polled)
  instead of costing the consumer its group membership (`max_poll_interval_ms`).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import structlog

from kafka_pipeline.claimx.entity_rows import EntityRowsMessage
from kafka_pipeline.claimx.events import parse_event
from kafka_pipeline.claimx.handlers import handler_for
from kafka_pipeline.config import KafkaSettings
from kafka_pipeline.simulator import SimulatorProcess
from kafka_pipeline.simulator.app import make_token
from kafka_pipeline.simulator.events import generate_events
from kafka_pipeline.simulator.ids import project_ids
from kafka_pipeline.workers.enrich.worker import EnrichmentWorker
from kafka_pipeline.workers.writer.entity_writer import EntityWriter
from tests.fixtures import writer as writer_tests
from tests.fixtures.enrich import all_committed, committed, produce, running, start_enrich_process, worker_settings
from tests.fixtures.kafka_io import read_topic
from tests.fixtures.ports import free_port
from tests.fixtures.waiting import until

# Lower than the settings allow (10 s), so a test can outlast it in seconds; model_copy does not
# validate. aiokafka leaves the group when getmany was not called for this long.
SHORT_POLL_INTERVAL_MS = 2_000


def event_line(pid: int, kind: str, second: int) -> str:
    return json.dumps({"event_type": kind, "project_id": pid, "ingested_at": f"2026-05-01T00:00:{second:02d}Z"})


async def ready(worker: EnrichmentWorker) -> httpx.Response:
    assert worker.ops_port is not None
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.ops_port}") as ops:
        return await ops.get("/health/ready")


def revocations(logs: list[dict[str, Any]]) -> int:
    """Partitions taken away (the first join revokes an empty set, which does not count)."""
    return sum(1 for entry in logs if entry["event"] == "partitions revoked" and entry["partitions"])


# --- the circuit breaker -----------------------------------------------------------------------


async def test_an_open_circuit_routes_events_to_retry_and_readiness_follows_the_breaker(
    kafka_settings: KafkaSettings, api: SimulatorProcess
) -> None:
    settings = worker_settings(
        kafka_settings, api,
        api={"retries": 0, "breaker_failure_threshold": 3, "breaker_cooldown_s": 2.0},
        enrich={"max_in_flight": 1},  # one event at a time: the breaker sees each failure before the next call
        retry={"delays_s": [60]},
        worker={"http_port": free_port()},
    )
    pids = project_ids(9, first=5_001_100)
    api.set_faults(error_rate=1.0)
    await produce(settings.kafka, [event_line(pid, "PROJECT_CREATED", i) for i, pid in enumerate(pids[:8])])
    worker = EnrichmentWorker(settings)
    async with running(worker) as task:
        await until(lambda: worker.counts.processed >= 8, task=task)
        assert (worker.counts.retried, worker.counts.dead_lettered) == (8, 0)
        assert api.stats()["project"] == 3  # after three failures the circuit kept the rest off the API
        unready = await ready(worker)
        assert unready.status_code == 503
        assert unready.json()["checks"]["claimx_api"] == {"ready": False, "breaker": "open", "auth_failed": False, "rate_limit_paused_s": 0.0}
        retries = await read_topic(settings.kafka, settings.kafka.retry_topic, 8)
        assert len(retries) == 8 and {dict(r.headers)["retry-error-category"] for r in retries} == {b"transient"}
        assert sum(b"CircuitOpen" in dict(r.headers)["retry-error"] for r in retries) == 5

        api.reset_faults()
        await until(lambda: worker.api.breaker.state == "half_open", task=task, timeout_s=5)  # after the 2 s cooldown
        half_open = await ready(worker)
        assert half_open.status_code == 200 and half_open.json()["checks"]["claimx_api"]["breaker"] == "half_open"
        await produce(settings.kafka, [event_line(pids[8], "PROJECT_CREATED", 30)])
        await until(lambda: worker.counts.processed >= 9, task=task)
        assert worker.counts.succeeded == 1 and worker.api.breaker.state == "closed"  # the trial call closed it
        closed = await ready(worker)
        assert closed.status_code == 200 and closed.json()["checks"]["claimx_api"]["breaker"] == "closed"
    assert worker.counts.reconciles()


# --- rejected credentials -------------------------------------------------------------------------


async def test_rejected_credentials_pause_consumption_until_the_token_file_is_fixed(
    kafka_settings: KafkaSettings, api: SimulatorProcess, tmp_path: Path
) -> None:
    token_file = tmp_path / "claimx-token"
    wrong_token = make_token(api.user, "not-the-password")
    token_file.write_text(wrong_token)
    settings = worker_settings(
        kafka_settings, api,
        api={"token": None, "token_file": str(token_file), "auth_probe_interval_s": 0.3},
        enrich={"max_in_flight": 4},
        worker={"http_port": free_port(), "shutdown_grace_s": 15},
    )
    pids = project_ids(8, first=5_001_200)
    lines = [event_line(pid, kind, i) for i, pid in enumerate(pids)
             for kind in ("PROJECT_CREATED", "POLICYHOLDER_INVITED", "PROJECT_AUTO_XA_LINKING_UNSUCCESSFUL")]
    await produce(settings.kafka, lines)

    # 1. Rejected: the first events are held, nothing more is consumed, nothing is dead-lettered.
    first = EnrichmentWorker(settings)
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(first.run(stop))
        await until(lambda: first.auth_failed, task=task)
        # a few probes go by: the held events' calls were answered 401, then at least two probes
        await until(lambda: api.stats()["status"].get("401", 0) >= first.counts.consumed + 2, "two probes after the 401s", task=task)
        rejected = await ready(first)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{first.ops_port}") as ops:
            metrics = (await ops.get("/metrics")).text
        statuses = api.stats()["status"]
        assert 0 < first.counts.consumed <= 4 and first.counts.processed == 0  # paused at the first 401s
        assert statuses.get("401", 0) <= 4 + 6 and set(statuses) == {"401"}  # the held events' calls, then probes
        stop.set()
        await asyncio.wait_for(task, 5)  # held events are handed back at once, not after the 15 s grace
    assert rejected.status_code == 503
    checks = rejected.json()["checks"]
    assert checks["claimx_api"]["auth_failed"] is True and checks["consumer"]["paused_partitions"] == checks["consumer"]["assigned_partitions"] > 0
    assert any("401" in entry["event"] and entry["log_level"] == "error" for entry in logs)
    assert not any(wrong_token in str(entry) for entry in logs)  # the token is never logged
    assert 'claimx_api_calls_total{kind="project",outcome="401"}' in metrics
    assert first.counts.handed_back == first.counts.consumed and first.counts.reconciles()
    assert await committed(settings.kafka, settings.enrich.group_id) == {}  # nothing finished, nothing committed

    # 2. A new worker still gets 401s; the operator rotates the token file; it resumes without a restart.
    second = EnrichmentWorker(settings)
    with structlog.testing.capture_logs() as logs:
        async with running(second) as task:
            await until(lambda: second.auth_failed, task=task)
            token_file.write_text(api.token)
            await until(lambda: second.counts.processed >= len(lines), task=task)
            healthy = await ready(second)
    assert healthy.status_code == 200, healthy.json()
    assert (second.counts.succeeded, second.counts.retried, second.counts.dead_lettered) == (len(lines), 0, 0)
    assert any("accepts our credentials again" in entry["event"] for entry in logs)
    assert await read_topic(settings.kafka, settings.kafka.dlq_topic, 0, timeout_s=1) == []
    messages = [EntityRowsMessage.from_bytes(r.value) for r in await read_topic(settings.kafka, settings.kafka.entity_rows_topic, len(lines))]
    assert sorted(m.trace_id for m in messages) == sorted(parse_event(line.encode()).trace_id for line in lines)
    assert sum((await committed(settings.kafka, settings.enrich.group_id)).values()) == len(lines)


# --- shutdown -------------------------------------------------------------------------------------


async def test_sigterm_with_a_slow_api_commits_only_finished_events_and_a_restart_loses_nothing(
    kafka_settings: KafkaSettings, api: SimulatorProcess
) -> None:
    api.set_faults(latency_ms=300)
    lines = generate_events(60, 12, seed=8)
    settings = worker_settings(kafka_settings, api)
    kafka = settings.kafka
    await produce(kafka, lines)
    env = {"KP_ENRICH__MAX_IN_FLIGHT": "8", "KP_WORKER__SHUTDOWN_GRACE_S": "0.5"}
    proc = start_enrich_process(settings, api, WORKER_NAME="slow-sigterm", **env)
    try:
        async def five_written() -> bool:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            return len(await read_topic(kafka, kafka.entity_rows_topic, 5, timeout_s=1)) >= 5

        await until(five_written, "five events written", timeout_s=60)
        # From now on every call takes 8 s, far beyond the 0.5 s grace: once the calls under way
        # (300 ms) are answered, the events in flight at the SIGTERM cannot finish in time.
        api.set_faults(latency_ms=8000)
        await asyncio.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    (summary,) = [json.loads(line) for line in stderr.splitlines() if '"enrichment worker stopped"' in line]
    assert summary["reconciled"] is True and summary["pending"] == 0 and summary["peak_in_flight"] <= 8
    assert summary["handed_back"] > 0, summary  # in flight at the SIGTERM, unfinished after the grace

    # The committed offsets cover finished events only: every event below them has its message.
    written = {EntityRowsMessage.from_bytes(r.value).trace_id for r in await read_topic(kafka, kafka.entity_rows_topic, summary["succeeded"])}
    positions = await committed(kafka, settings.enrich.group_id)
    covered = [r for r in await read_topic(kafka, kafka.events_topic, len(lines)) if r.offset < positions.get(r.partition, 0)]
    assert 0 < len(covered) < len(lines)
    for record in covered:
        event = parse_event(record.value)
        assert handler_for(event.event_type) is None or event.trace_id in written, f"offset {record.offset} committed unfinished"

    # A restart (stopped with SIGINT) processes the rest: every event's message is there.
    api.set_faults(latency_ms=100)
    proc = start_enrich_process(settings, api, WORKER_NAME="slow-restart", **env)
    try:
        async def finished() -> bool:
            assert proc.poll() is None, "the restarted worker exited"
            return await all_committed(kafka, settings.enrich.group_id, len(lines))

        await until(finished, "the restarted worker to commit every event", timeout_s=90)
        proc.send_signal(signal.SIGINT)
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    known = {e.trace_id for e in map(parse_event, (line.encode() for line in lines)) if handler_for(e.event_type) is not None}
    messages = await read_topic(kafka, kafka.entity_rows_topic, len(known))
    assert {EntityRowsMessage.from_bytes(r.value).trace_id for r in messages} == known


# --- back-pressure --------------------------------------------------------------------------------


async def test_a_slow_api_pauses_consumption_and_keeps_the_assignment(kafka_settings: KafkaSettings, api: SimulatorProcess) -> None:
    # Every call takes 3 s, longer than the 2 s poll interval: a worker that stopped polling
    # while its two slots are taken would be evicted from the group and rebalanced.
    api.set_faults(latency_ms=3000)
    settings = worker_settings(kafka_settings, api, enrich={"max_in_flight": 2})
    settings.kafka = settings.kafka.model_copy(update={"max_poll_interval_ms": SHORT_POLL_INTERVAL_MS})
    lines = [event_line(pid, "POLICYHOLDER_INVITED", i) for i, pid in enumerate(project_ids(8, first=5_001_300))]
    await produce(settings.kafka, lines)
    worker = EnrichmentWorker(settings)
    with structlog.testing.capture_logs() as logs:
        async with running(worker) as task:
            await until(lambda: worker.counts.consumed > 0, task=task)
            started = time.monotonic()
            await until(lambda: worker.counts.processed >= len(lines), task=task)
            elapsed = time.monotonic() - started
            revoked_while_running = revocations(logs)
    assert elapsed > 3 * SHORT_POLL_INTERVAL_MS / 1000  # the run outlasted the poll interval several times
    assert revoked_while_running == 0  # never evicted, never rebalanced
    assert worker.counts.peak_in_flight == 2  # the bound held
    assert (worker.counts.consumed, worker.counts.succeeded) == (len(lines), len(lines))  # each event once
    messages = await read_topic(settings.kafka, settings.kafka.entity_rows_topic, len(lines))
    assert len(messages) == len(lines)


async def test_a_slow_flush_keeps_the_writer_in_its_group(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    stream = writer_tests.build_stream(seed=6, events=40)
    ends = await writer_tests.produce(kafka_settings, writer_tests.encoded(stream))
    group = f"slow-flush-{uuid.uuid4().hex[:8]}"
    settings = writer_tests.writer_settings(kafka_settings, str(tmp_path), group, max_rows=1000, max_latency_s=0.2)
    settings.kafka = settings.kafka.model_copy(update={"max_poll_interval_ms": SHORT_POLL_INTERVAL_MS})
    writer = EntityWriter(settings)
    write_batch = writer._write_batch

    def slow_write_batch(batch: Any) -> Any:  # a Delta store that takes 3 s per flush
        time.sleep(3)
        return write_batch(batch)

    writer._write_batch = slow_write_batch  # type: ignore[method-assign]
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(writer.run(stop))
        try:
            await writer_tests.wait_committed(kafka_settings, group, ends, timeout_s=30)
            revoked_while_running = revocations(logs)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    assert revoked_while_running == 0  # the 3 s flushes never cost the writer its partitions
    assert writer_tests.table_contents(str(tmp_path)) == writer_tests.reference(stream)

