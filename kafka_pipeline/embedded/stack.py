"""The embedded stack: a broker + ClaimX API simulator + the three workers, one machine.

The broker is tansu (in memory, the default), Apache Kafka from its jars (`broker_kind="kafka"`,
log directory on disk), or one already running (`bootstrap_servers`: the tests' session broker).
`kafka-pipeline run` uses it; so do the end-to-end and fault-injection tests, which kill and
restart its workers. Workers run as child processes exactly as they would in production.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from kafka_pipeline.config import Settings
from kafka_pipeline.embedded.broker import EmbeddedBroker, free_port
from kafka_pipeline.embedded.kafka_broker import KafkaBroker
from kafka_pipeline.embedded.worker_process import WorkerProcess
from kafka_pipeline.kafka.clients import ensure_topics
from kafka_pipeline.offsets.topic_offsets import group_lag, high_watermarks
from kafka_pipeline.simulator.server import SimulatorProcess

WORKER_COMMANDS = ("enrich", "write", "retry-scheduler")
BrokerKind = Literal["tansu", "kafka"]


class StackBroker(Protocol):
    @property
    def bootstrap_servers(self) -> str: ...

    def stop(self) -> None: ...


@dataclass
class DrainStatus:
    events_lag: int
    entity_rows_lag: int
    retry_lag: int

    @property
    def drained(self) -> bool:
        return self.events_lag == 0 and self.entity_rows_lag == 0 and self.retry_lag == 0


@dataclass
class EmbeddedStack:
    settings: Settings
    log_dir: Path | None = None  # None: workers log to this process's stderr
    simulator_options: dict[str, object] = field(default_factory=dict)
    broker_kind: BrokerKind = "tansu"
    kafka_data_dir: Path | None = None  # broker_kind="kafka": the log directory (None: a temporary one)
    bootstrap_servers: str | None = None  # a broker already running: start none
    broker: StackBroker | None = field(default=None, init=False)
    simulator: SimulatorProcess | None = field(default=None, init=False)
    workers: dict[str, WorkerProcess] = field(default_factory=dict, init=False)

    def start_services(self) -> None:
        """Broker and simulator; points the settings at them."""
        update: dict[str, object] = {"bootstrap_servers": self.bootstrap_servers}
        if self.bootstrap_servers is None:  # our own broker: we know its kind, nothing to detect
            update = {"bootstrap_servers": self._start_broker().bootstrap_servers, "broker_kind": self.broker_kind}
        sim_log = self.log_dir / "simulator.log" if self.log_dir else None
        self.simulator = SimulatorProcess(log_path=sim_log, **self.simulator_options).start()  # type: ignore[arg-type]
        self.settings.kafka = self.settings.kafka.model_copy(update=update)
        self.settings.api = self.simulator.api_settings(
            **self.settings.api.model_dump(exclude={"url", "token", "token_file"})
        )

    def _start_broker(self) -> StackBroker:
        log = self.log_dir / f"{self.broker_kind}.log" if self.log_dir else None
        if self.broker_kind == "kafka":
            self.broker = KafkaBroker(log_path=log, data_dir=self.kafka_data_dir).start()
        else:
            self.broker = EmbeddedBroker(log_path=log).start()
        return self.broker

    def worker_env(self) -> dict[str, str]:
        """Environment that points a worker process at this stack (same names as production)."""
        kafka, api = self.settings.kafka, self.settings.api
        token = api.resolved_token()
        env = {
            "KP_ENV": self.settings.env,
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "KAFKA_BROKER_KIND": kafka.broker_kind,
            "KAFKA_EVENTS_TOPIC": kafka.events_topic,
            "KAFKA_ENTITY_ROWS_TOPIC": kafka.entity_rows_topic,
            "KAFKA_RETRY_TOPIC": kafka.retry_topic,
            "KAFKA_DLQ_TOPIC": kafka.dlq_topic,
            "KP_KAFKA__PARTITIONS": str(kafka.partitions),
            "KP_ENRICH__GROUP_ID": self.settings.enrich.group_id,
            "KP_WRITER__GROUP_ID": self.settings.writer.group_id,
            "KP_RETRY__GROUP_ID": self.settings.retry.group_id,
            "CLAIMX_API_URL": api.url,
            "CLAIMX_API_TOKEN": token.get_secret_value() if token else "",
            "DELTA_TABLES_ROOT": self.settings.delta.tables_root,
        }
        delta = self.settings.delta
        if delta.storage_options:  # JSON, as KP_DELTA__STORAGE_OPTIONS is read back
            env["KP_DELTA__STORAGE_OPTIONS"] = json.dumps(delta.storage_options)
        if delta.single_writer_acknowledged:
            env["KP_DELTA__SINGLE_WRITER_ACKNOWLEDGED"] = "true"
        if self.settings.cache.redis_url:
            env["REDIS_URL"] = self.settings.cache.redis_url.get_secret_value()
        return env

    async def create_topics(self) -> None:
        kafka = self.settings.kafka
        await ensure_topics(kafka, [kafka.events_topic, kafka.entity_rows_topic, kafka.retry_topic, kafka.dlq_topic])

    def start_worker(self, command: str, name: str | None = None, env: dict[str, str] | None = None) -> WorkerProcess:
        name = name or command
        log = self.log_dir / f"{name}.log" if self.log_dir else None
        # every worker gets an ops port (/metrics, /health): `status` and Prometheus can look at it
        ops = {"KP_WORKER__HTTP_HOST": "127.0.0.1", "KP_WORKER__HTTP_PORT": str(free_port())}
        worker = WorkerProcess(command, {**self.worker_env(), **ops, **(env or {})}, name=name, log_path=log).start()
        self.workers[name] = worker
        return worker

    @property
    def log_is_new(self) -> bool:
        """The stack started its own broker on an empty log (tansu keeps topics in memory; Apache
        Kafka without a data folder gets a temporary one): the tables' progress of an earlier run
        came from another log, and this run's writer adopts the new one knowingly."""
        return self.broker is not None and (self.broker_kind == "tansu" or self.kafka_data_dir is None)

    @property
    def ops_urls(self) -> dict[str, str]:
        """Worker name -> its ops base URL (the workers started without an ops port left out)."""
        ports = {name: worker.env.get("KP_WORKER__HTTP_PORT", "0") for name, worker in self.workers.items()}
        return {name: f"http://127.0.0.1:{port}" for name, port in ports.items() if port != "0"}

    def start_workers(self) -> None:
        for command in WORKER_COMMANDS:
            self.start_worker(command, env={"KP_WRITER__ADOPT_NEW_LOG": "true"} if command == "write" and self.log_is_new else None)

    async def drain_status(self) -> DrainStatus:
        kafka, s = self.settings.kafka, self.settings
        events, rows, retry = await asyncio.gather(
            group_lag(kafka, s.enrich.group_id, kafka.events_topic),
            group_lag(kafka, s.writer.group_id, kafka.entity_rows_topic),
            group_lag(kafka, s.retry.group_id, kafka.retry_topic),
        )
        return DrainStatus(events, rows, retry)

    async def wait_until_drained(self, *, timeout_s: float, poll_s: float = 1.0, stable_checks: int = 2) -> DrainStatus:
        """Until every topic's group caught up, `stable_checks` times in a row (a retry may be in the air)."""
        deadline = time.monotonic() + timeout_s
        stable = 0
        status = await self.drain_status()
        while time.monotonic() < deadline:
            for name, worker in self.workers.items():
                if not worker.running:
                    raise RuntimeError(f"worker {name} exited with code {worker.returncode}")
            status = await self.drain_status()
            stable = stable + 1 if status.drained else 0
            if stable >= stable_checks:
                return status
            await asyncio.sleep(poll_s)
        raise TimeoutError(f"pipeline not drained after {timeout_s:.0f}s: {status}")

    async def dead_letter_count(self) -> int:
        return sum((await high_watermarks(self.settings.kafka, self.settings.kafka.dlq_topic)).values())

    def stop(self) -> dict[str, int | None]:
        """Workers first (SIGTERM: they drain and commit), then simulator and broker."""
        codes = {name: worker.stop(self.settings.worker.shutdown_grace_s) for name, worker in self.workers.items()}
        if self.simulator is not None:
            self.simulator.stop()
        if self.broker is not None:
            self.broker.stop()
        return codes
