"""Three enrichment worker processes in one consumer group sharing the ProjectCache through a
real redis-server, on the real broker and the real API simulator.

Each project's events are spread over every partition on purpose (explicit partitions), so a
burst of one project's events lands on all three workers at once: without the shared tier
every worker would fetch the project.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.config import KafkaSettings
from kafka_pipeline.embedded.broker import free_port
from kafka_pipeline.embedded.worker_process import WorkerProcess
from kafka_pipeline.kafka.clients import ensure_topics
from kafka_pipeline.maintenance.operations import table_row_counts
from kafka_pipeline.offsets.topic_offsets import high_watermarks
from kafka_pipeline.simulator.ids import project_children, project_ids
from kafka_pipeline.simulator.server import SimulatorProcess
from tests.fixtures import kafka_io
from tests.fixtures.kafka_io import Out
from tests.fixtures.waiting import wait_until

PARTITIONS = 6
START = datetime(2026, 5, 1, tzinfo=UTC)


class Workers:
    """Enrichment worker processes with an ops port each."""

    def __init__(self, kafka: KafkaSettings, api: SimulatorProcess, tmp: Path, env: dict[str, str]) -> None:
        self.kafka, self.api, self.tmp = kafka, api, tmp
        self.env = env
        self.group = f"enrich-{uuid.uuid4().hex[:6]}"
        self.procs: dict[str, WorkerProcess] = {}
        self.ports: dict[str, int] = {}

    def start(self, name: str, **extra_env: str) -> WorkerProcess:
        self.ports[name] = free_port()
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "KAFKA_EVENTS_TOPIC": self.kafka.events_topic,
            "KAFKA_ENTITY_ROWS_TOPIC": self.kafka.entity_rows_topic,
            "KAFKA_RETRY_TOPIC": self.kafka.retry_topic,
            "KAFKA_DLQ_TOPIC": self.kafka.dlq_topic,
            "KP_KAFKA__PARTITIONS": str(PARTITIONS),
            "KP_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "KP_ENRICH__GROUP_ID": self.group,
            "KP_ENRICH__STATS_INTERVAL_S": "2",
            "KP_WORKER__HTTP_PORT": str(self.ports[name]),
            "CLAIMX_API_URL": self.api.url,
            "CLAIMX_API_TOKEN": self.api.token,
            **self.env,
            **extra_env,
        }
        proc = WorkerProcess("enrich", env, name=name, log_path=self.tmp / f"{name}.log").start()
        self.procs[name] = proc
        return proc

    def ops(self, name: str, path: str, method: str = "GET", body: dict | None = None) -> dict:
        url = f"http://127.0.0.1:{self.ports[name]}{path}"
        response = httpx.request(method, url, json=body, timeout=5)
        return response.json()

    def wait_assigned(self, names: list[str], timeout_s: float = 60) -> None:
        """Until every worker owns partitions and together they own all of them."""

        def shared() -> bool:
            try:
                owned = [self.ops(n, "/health/ready")["checks"]["consumer"]["assigned_partitions"] for n in names]
            except (httpx.HTTPError, KeyError, ValueError):
                return False
            return len(owned) == len(names) and all(owned) and sum(owned) == PARTITIONS

        wait_until(shared, lambda: f"the workers sharing the partitions: {self.logs(names)}", timeout_s)

    def logs(self, names: list[str]) -> dict[str, str]:
        return {n: (self.tmp / f"{n}.log").read_text()[-1500:] for n in names}

    def stats(self, names: list[str], key: str) -> dict[str, object]:
        return {n: self.ops(n, "/cache/stats")[key] for n in names}

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop(20)


@pytest.fixture
def workers_factory(kafka_settings: KafkaSettings, api: SimulatorProcess, tmp_path: Path) -> Iterator:
    made: list[Workers] = []

    def make(**env: str) -> Workers:
        kafka = kafka_settings.model_copy(update={"partitions": PARTITIONS})
        asyncio.run(ensure_topics(kafka, [kafka.events_topic, kafka.entity_rows_topic, kafka.retry_topic, kafka.dlq_topic]))
        workers = Workers(kafka, api, tmp_path, env)
        made.append(workers)
        return workers

    yield make
    for workers in made:
        workers.stop()


def burst_events(projects: list[int], per_project: int, start: datetime) -> list[tuple[int, dict]]:
    """(partition, event) pairs: each project's events spread round-robin over every partition."""
    out = []
    for p_index, pid in enumerate(projects):
        media = project_children(pid).media_ids
        for i in range(per_project):
            at = (start + timedelta(seconds=p_index * per_project + i)).isoformat()
            kind = i % 3
            if kind == 0:
                event = {"event_type": "PROJECT_FILE_ADDED", "project_id": pid, "media_id": media[i % len(media)], "ingested_at": at}
            elif kind == 1:
                event = {"eventType": "POLICYHOLDER_INVITED", "projectId": str(pid), "ingestedAt": at}
            else:
                event = {"event_type": "PROJECT_MFN_ADDED", "project_id": pid, "master_file_name": f"MFN-{pid}-{i}", "ingested_at": at}
            out.append((i % PARTITIONS, event))
    return out


async def produce(kafka: KafkaSettings, events: list[tuple[int, dict]]) -> None:
    """(partition, event) pairs onto the events topic, keyed by project."""
    await kafka_io.produce(kafka, [
        Out(kafka.events_topic, json.dumps(e).encode(), str(e.get("project_id") or e.get("projectId")).encode(), partition=partition)
        for partition, e in events
    ])

def written(kafka: KafkaSettings, topic: str) -> int:
    return sum(asyncio.run(high_watermarks(kafka, topic)).values())


def wait_for_messages(kafka: KafkaSettings, topic: str, expected: int, timeout_s: float = 120) -> int:
    """Until `topic` holds `expected` messages; then how many it holds (a replay may add some)."""
    wait_until(lambda: written(kafka, topic) >= expected, lambda: f"{expected} messages on {topic} (found {written(kafka, topic)})", timeout_s)
    return written(kafka, topic)


def exports(api: SimulatorProcess, projects: list[int]) -> dict[int, int]:
    by_id = api.stats()["project_by_id"]
    return {pid: int(by_id.get(str(pid), 0)) for pid in projects}


@pytest.mark.slow
def test_three_workers_fetch_each_project_once_and_survive_a_redis_outage(workers_factory, api, redis_server, redis_url) -> None:
    # 2 s socket timeout: on a loaded 2-core machine a starved event loop must not look like an outage
    workers = workers_factory(REDIS_URL=redis_url, KP_CACHE__SOCKET_TIMEOUT_S="2")
    names = ["w1", "w2", "w3"]
    for name in names:
        workers.start(name)
    workers.wait_assigned(names)
    kafka = workers.kafka
    all_projects = project_ids(100)
    before, during, after = all_projects[:60], all_projects[60:85], all_projects[85:]

    # 1. Redis up: 60 projects x 18 events, every project on all six partitions at once.
    events = burst_events(before, 18, START)
    asyncio.run(produce(kafka, events))
    assert wait_for_messages(kafka, kafka.entity_rows_topic, len(events)) == len(events)
    assert exports(api, before) == dict.fromkeys(before, 1)

    # 2. Redis stopped: the workers go on with their in-process tier, at most one fetch each.
    redis_server.stop()
    outage = burst_events(during, 18, START + timedelta(days=1))
    asyncio.run(produce(kafka, outage))
    total = len(events) + len(outage)
    assert wait_for_messages(kafka, kafka.entity_rows_topic, total) == total  # nothing lost
    counts = exports(api, during)
    assert all(1 <= n <= len(names) for n in counts.values()), counts
    states = workers.stats(names, "redis_state")
    assert set(states.values()) <= {"down"}, states

    # 3. Redis back: the shared tier is used again (one fetch per project across the group).
    redis_server.start()
    wait_until(
        lambda: set(workers.stats(names, "redis_state").values()) == {"up"},
        lambda: f"the workers returning to the shared tier: {workers.stats(names, 'redis_state')}",
        timeout_s=60,
    )
    back = burst_events(after, 18, START + timedelta(days=2))
    asyncio.run(produce(kafka, back))
    total += len(back)
    assert wait_for_messages(kafka, kafka.entity_rows_topic, total) == total
    assert exports(api, after) == dict.fromkeys(after, 1)
    assert sum(asyncio.run(high_watermarks(kafka, kafka.dlq_topic)).values()) == 0

    # 4. An invalidation on one worker reaches the others through Redis pub/sub.
    sizes = {n: workers.ops(n, "/cache/stats")["size"] for n in names}
    assert all(size > 0 for size in sizes.values()), sizes
    answer = workers.ops("w1", "/cache/invalidate", "POST", {"all": True})
    assert answer["broadcast"] is True
    wait_until(lambda: workers.stats(names, "size") == dict.fromkeys(names, 0), lambda: f"every cache empty: {workers.stats(names, 'size')}", 10)


@pytest.mark.slow
def test_restarted_worker_warm_starts_from_delta(workers_factory, api, tmp_path: Path) -> None:
    tables = tmp_path / "delta"
    workers = workers_factory(DELTA_TABLES_ROOT=str(tables), KP_CACHE__WARM_FROM_DELTA="true")
    kafka = workers.kafka
    writer = WorkerProcess("write", {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KAFKA_ENTITY_ROWS_TOPIC": kafka.entity_rows_topic,
        "KAFKA_DLQ_TOPIC": kafka.dlq_topic,
        "KP_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "KP_WRITER__GROUP_ID": f"writer-{uuid.uuid4().hex[:6]}",
        "KP_WRITER__MAX_LATENCY_S": "0.5",
        "DELTA_TABLES_ROOT": str(tables),
    }, name="writer", log_path=tmp_path / "writer.log").start()
    try:
        workers.start("w1")
        workers.wait_assigned(["w1"])
        projects = project_ids(12)
        events = burst_events(projects, 6, START)
        asyncio.run(produce(kafka, events))
        assert wait_for_messages(kafka, kafka.entity_rows_topic, len(events)) == len(events)
        assert exports(api, projects) == dict.fromkeys(projects, 1)
        wait_until(
            lambda: table_row_counts(str(tables), list(TABLES)).get("claimx_projects", 0) == len(projects),
            lambda: f"the writer's {len(projects)} projects rows in Delta",
            timeout_s=60,
        )

        workers.procs["w1"].stop(20)
        workers.start("w1")
        workers.wait_assigned(["w1"])
        assert workers.ops("w1", "/cache/stats")["size"] >= len(projects)
        more = burst_events(projects, 6, START + timedelta(days=1))
        asyncio.run(produce(kafka, more))
        assert wait_for_messages(kafka, kafka.entity_rows_topic, len(events) + len(more)) == len(events) + len(more)
        assert exports(api, projects) == dict.fromkeys(projects, 1)  # no new export after the restart
    finally:
        writer.stop(20)
