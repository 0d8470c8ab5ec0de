"""docker-compose.yml, started as processes (tests/fixtures/compose_stack.py: each service's own
software, command, environment and ports; Grafana excepted), used the way the README's "Deploy
with Docker Compose" section uses it: `make-env.sh`, then the host's CLI on the published ports."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
from aiokafka.client import AIOKafkaClient

from kafka_pipeline.claimx.events import parse_event
from kafka_pipeline.claimx.handlers import handler_for
from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.commands.run import bundled_sample
from kafka_pipeline.config import load_settings
from kafka_pipeline.maintenance.operations import table_row_counts
from kafka_pipeline.offsets.topic_offsets import high_watermarks
from tests.fixtures.compose_stack import ROOT, ComposeStack, make_env_file, published_ports, read_env_file
from tests.fixtures.waiting import until

WORKERS = ("enrich", "write", "retry-scheduler")


def every(seconds: float, condition: Callable[[], bool]) -> Callable[[], bool]:
    """`condition` asked at most once per `seconds` (until() polls every 50 ms; these read S3 or run a CLI)."""
    last = [0.0]

    def paced() -> bool:
        if time.monotonic() - last[0] < seconds:
            return False
        last[0] = time.monotonic()
        return condition()

    return paced


def non_loopback_addresses() -> list[str]:
    out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    found = [line.split()[3].split("/")[0] for line in out.splitlines()]
    return [a for a in found if not ipaddress.ip_address(a).is_loopback and not ipaddress.ip_address(a).is_link_local]


def loopback(address: str) -> bool:
    """127.0.0.0/8 or ::1, also written as IPv4-mapped IPv6 (how the JVM shows its IPv4 sockets)."""
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def answers(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((address, port)) == 0


def host_cli(env_file: Path, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A kafka-pipeline command in a shell on the host, set up as the README says (host-env.sh)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KP_", "KAFKA_", "DELTA_", "REDIS_", "CLAIMX_"))}
    clean.update(extra_env or {})
    clean["PATH"] = f"{Path(sys.executable).parent}:{clean['PATH']}"
    script = f'. config/docker/host-env.sh "{env_file}" && exec kafka-pipeline "$@"'
    return subprocess.run(["bash", "-c", script, "host-cli", *args], capture_output=True, text=True, timeout=60, cwd=ROOT, env=clean)


@pytest.mark.slow
async def test_the_compose_stack_runs_and_is_closed(tmp_path: Path) -> None:
    env_file = make_env_file(tmp_path / ".env")
    values = read_env_file(env_file)
    stack = ComposeStack(tmp_path / "stack", env_file)
    try:
        await asyncio.to_thread(stack.start)
        await asyncio.to_thread(stack.wait_exit, "seed")  # the one-shot replay of the bundled sample
        sample = bundled_sample().read_text().splitlines()

        # a client on the host reaches Kafka through the published HOST listener, which advertises localhost:29092
        client = AIOKafkaClient(bootstrap_servers="localhost:29092")
        await client.bootstrap()
        try:
            assert [(b.host, b.port) for b in client.cluster.brokers()] == [("localhost", 29092)]
        finally:
            await client.close()
        kafka = load_settings(kafka={"bootstrap_servers": "localhost:29092"}).kafka
        assert sum((await high_watermarks(kafka, kafka.events_topic)).values()) == len(sample)

        # the seed events reach the tables on the bucket (read through MinIO's published port)
        storage = json.loads(host_cli_env(env_file)["KP_DELTA__STORAGE_OPTIONS"])
        root = f"s3://{values['S3_BUCKET']}/tables"
        handled = {e.trace_id for e in map(parse_event, (line.encode() for line in sample)) if handler_for(e.event_type) is not None}
        projects = {e.project_id for e in map(parse_event, (line.encode() for line in sample))}
        counts: dict[str, int] = {}

        def tables_written() -> bool:
            counts.update(table_row_counts(root, list(TABLES), storage))
            return counts.get("claimx_events") == len(handled) and counts.get("claimx_projects") == len(projects)

        await until(every(1.0, tables_written), timeout_s=60)
        assert set(counts) == set(TABLES) and all(counts.values()), counts

        # Prometheus (published on 127.0.0.1:9090) scrapes every worker
        up: dict[str, str] = {}

        def all_scraped() -> bool:
            answer = httpx.get("http://127.0.0.1:9090/api/v1/query", params={"query": 'up{job="kafka-pipeline"}'}, timeout=5).json()
            up.update({r["metric"]["component"]: r["value"][1] for r in answer["data"]["result"]})
            return set(up) == set(WORKERS) and set(up.values()) == {"1"}

        await until(every(1.0, all_scraped), timeout_s=45)

        # `kafka-pipeline status` from the host is green: groups, dead letters, tables, each worker's readiness
        ops = [f"--ops-url=http://localhost:{published_ports(stack.compose['services'][w])[0][1]}" for w in WORKERS]
        status: list[subprocess.CompletedProcess[str]] = []

        def green() -> bool:  # exit 0: no lag without members, no dead letters, every worker ready
            status.append(host_cli(env_file, "status", *ops))
            return status[-1].returncode == 0

        await until(every(2.0, green), timeout_s=45)
        report = status[-1].stdout
        assert "broker localhost:29092" in report and "claimx_events" in report, report
        assert report.count(" ready") >= len(WORKERS), report

        # closed: Redis wants its password, the simulator's fault routes are off
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=stack.services["redis"].address, port=6379).ping()
        assert redis.Redis(host=stack.services["redis"].address, port=6379, password=values["REDIS_PASSWORD"]).ping()
        simulator = httpx.get("http://127.0.0.1:8088/_faults", timeout=5)
        assert simulator.status_code == 404
        assert httpx.get("http://127.0.0.1:8088/_health", timeout=5).status_code == 200

        # nothing answers on an address other than loopback: not the published ports, not the services' own
        ports = {p for spec in stack.compose["services"].values() for _, host, container in published_ports(spec) for p in (host, container)}
        ports |= {9092, 9093, 6379, 9100}
        outside = non_loopback_addresses()
        assert outside, "this machine has no other address to try"
        reached = [(a, p) for a in outside for p in sorted(ports) if answers(a, p)]
        assert reached == []
        listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout.splitlines()
        ours = [line.split()[3] for line in listening if int(line.split()[3].rsplit(":", 1)[1]) in ports]
        assert len(ours) >= len(ports)
        assert [a for a in ours if not loopback(a.rsplit(":", 1)[0].strip("[]"))] == []
    finally:
        await asyncio.to_thread(stack.stop)


def host_cli_env(env_file: Path) -> dict[str, str]:
    """What host-env.sh exports, as a dict."""
    done = subprocess.run(["bash", "-c", f'. config/docker/host-env.sh "{env_file}" && env -0'], capture_output=True, text=True, cwd=ROOT, check=True)
    return dict(item.split("=", 1) for item in done.stdout.split("\0") if "=" in item)


async def test_the_secure_override_serves_the_host_over_sasl_ssl(tmp_path: Path) -> None:
    """config/docker/compose.secure.yml: kafka-tls makes the certificates, the broker comes up with the
    SCRAM users and its authorizer, the kafka-acls command creates the topics and ACLs, and the
    host's CLI gets in on localhost:29092 as the operator with the CA from the volume and the
    .env password, and only so (the writer's user may not send events); after a stop and a start on the same volumes, it still does. (The containers' listener `kafka:9092` is not tried: its
    certificate names `kafka`, which only Docker's DNS resolves.)"""
    env_file = make_env_file(tmp_path / ".env")
    values = read_env_file(env_file)
    stack = ComposeStack(tmp_path / "stack", env_file, ROOT / "docker-compose.yml", ROOT / "config" / "docker" / "compose.secure.yml")
    try:
        await asyncio.to_thread(stack.start, ["kafka-tls", "kafka"])
        await asyncio.to_thread(stack.wait_condition, "kafka", "service_healthy")
        ca = stack.volumes["kafka-tls"] / "ca.pem"
        secure = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": values["KAFKA_CLIENT_USER"],
                  "KAFKA_SASL_PASSWORD": values["KAFKA_CLIENT_PASSWORD"], "KAFKA_SSL_CAFILE": str(ca)}

        # the topics and every worker's ACLs, as the kafka-acls service makes them (its own command
        # line, run from the host: its certificate names `localhost`, not `kafka`)
        admin = {**secure, "KAFKA_SASL_USERNAME": "kafka-pipeline-admin", "KAFKA_SASL_PASSWORD": values["KAFKA_ADMIN_PASSWORD"]}
        applied = host_cli(env_file, *stack.compose["services"]["kafka-acls"]["command"], extra_env=admin)
        assert applied.returncode == 0 and "created" in applied.stdout, applied.stdout + applied.stderr

        sent = host_cli(env_file, "replay", "--no-progress", str(bundled_sample()), extra_env=secure)
        assert sent.returncode == 0, sent.stderr
        # the writer's user may read entity rows and write dead letters, never send events
        as_writer = {**secure, "KAFKA_SASL_USERNAME": "kafka-pipeline-writer", "KAFKA_SASL_PASSWORD": values["KAFKA_WRITER_PASSWORD"]}
        refused = host_cli(env_file, "replay", "--no-progress", str(bundled_sample()), extra_env=as_writer)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stdout + refused.stderr
        assert "TopicAuthorizationFailedError" in refused.stderr and values["KAFKA_WRITER_PASSWORD"] not in refused.stderr
        kafka = load_settings(kafka={"bootstrap_servers": "localhost:29092", "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                                     "sasl_username": "kafka-pipeline-admin", "sasl_password": values["KAFKA_ADMIN_PASSWORD"],
                                     "ssl_cafile": str(ca)}).kafka
        assert sum((await high_watermarks(kafka, kafka.events_topic)).values()) == len(bundled_sample().read_text().splitlines())

        # the operator's ACLs are enough for `status` (exit 1: the events wait, no worker runs here)
        looked: list[subprocess.CompletedProcess[str]] = []

        def status_read() -> bool:  # a new broker's group coordinator takes a moment: one line (exit 2) meanwhile
            looked.append(host_cli(env_file, "status", extra_env=secure))
            assert looked[-1].returncode in (1, 2) and "Traceback" not in looked[-1].stderr, looked[-1].stdout + looked[-1].stderr
            assert "refused the principal" not in looked[-1].stderr, looked[-1].stderr
            return looked[-1].returncode == 1

        await until(every(1.0, status_read), timeout_s=45)
        assert "has no member" in looked[-1].stdout, looked[-1].stdout
        wrong_password = host_cli(env_file, "status", extra_env={**secure, "KAFKA_SASL_PASSWORD": "not-the-password"})
        assert wrong_password.returncode == 2 and "not-the-password" not in wrong_password.stderr, wrong_password.stderr
        plaintext = host_cli(env_file, "status", extra_env={"KAFKA_REQUEST_TIMEOUT_MS": "5000"})
        assert plaintext.returncode == 2, plaintext.stdout + plaintext.stderr
        assert not any(answers(a, p) for a in non_loopback_addresses() for p in (9092, 9093, 9094, 29092))

        # stopped and started again on its volumes: the certificates, the user and the events are kept
        await asyncio.to_thread(stack.stop)
        stack = ComposeStack(tmp_path / "stack", env_file, ROOT / "docker-compose.yml", ROOT / "config" / "docker" / "compose.secure.yml")
        await asyncio.to_thread(stack.start, ["kafka-tls", "kafka"])
        await asyncio.to_thread(stack.wait_condition, "kafka", "service_healthy")
        assert "already in" in stack.services["kafka-tls"].log_tail()
        assert sum((await high_watermarks(kafka, kafka.events_topic)).values()) == len(bundled_sample().read_text().splitlines())
    finally:
        await asyncio.to_thread(stack.stop)
