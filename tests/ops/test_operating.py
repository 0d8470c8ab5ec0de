"""Operating the pipeline against a running embedded stack (real broker, simulator, Redis, the three
workers as processes with their ops ports, Delta tables on disk):

- Debian's Prometheus server scrapes the workers and loads the alert rules; every expression of
  the dashboards returns data, and so does every metric selector of the dashboards and the alert
  rules (an alert's full expression is empty while it does not fire). A metric renamed in code
  without the dashboards and rules following fails here.
- `promtool check metrics` lints what the workers expose.
- `kafka-pipeline status` on the same stack, with a lagging group (the enrichment worker stopped,
  events keep arriving), dead letters, a retry waiting and a worker that does not answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.commands.run import bundled_sample
from kafka_pipeline.config import KafkaSettings, Settings
from kafka_pipeline.dead_letters.routing import RETRY_ATTEMPT, RETRY_DUE_AT, RETRY_TARGET_TOPIC
from kafka_pipeline.embedded.broker import EmbeddedBroker
from kafka_pipeline.embedded.stack import EmbeddedStack
from kafka_pipeline.kafka.clients import make_producer
from kafka_pipeline.lifecycle.processes import stop_process
from kafka_pipeline.maintenance.operations import table_row_counts
from kafka_pipeline.ops.replay import replay
from kafka_pipeline.ops.replay_sources import FileSource
from kafka_pipeline.ops.status import DlqStatus, GroupStatus, PartitionStatus, RetryStatus, Status, WorkerStatus, collect, problems
from kafka_pipeline.simulator import SimulatorProcess
from tests.fixtures.redis import RedisServer, free_port
from tests.fixtures.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "config" / "grafana" / "dashboards").glob("*.json"))
RULES = ROOT / "config" / "prometheus" / "rules" / "kafka-pipeline.rules.yml"
COMPONENTS = ("enrich", "write", "retry-scheduler")
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$worker": ".*", "$group": ".*", "$job": "kafka-pipeline", "$component": ".*"}


@dataclass
class Running:
    stack: EmbeddedStack
    settings: Settings
    ops: dict[str, str]  # component -> ops base URL
    env: dict[str, str]  # what points a command at this stack
    prometheus: str  # base URL
    dead_letters: int


def _produce(kafka: KafkaSettings, topic: str, values: list[bytes], headers: list[tuple[str, bytes]] | None = None) -> None:
    async def send() -> None:
        producer = make_producer(kafka)
        await producer.start()
        try:
            for value in values:
                await producer.send_and_wait(topic, value, key=b"k", headers=headers)
        finally:
            await producer.stop()

    asyncio.run(send())


@pytest.fixture(scope="module")
def running(broker: EmbeddedBroker, simulator: SimulatorProcess, redis_server: RedisServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("operating")
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(
        env="embedded",
        kafka=KafkaSettings(bootstrap_servers=broker.bootstrap_servers, events_topic=f"claimx.events.{suffix}",
                            entity_rows_topic=f"claimx.entity_rows.{suffix}", retry_topic=f"claimx.retry.{suffix}",
                            dlq_topic=f"claimx.dlq.{suffix}", partitions=3),
        api=simulator.api_settings(),
        delta={"tables_root": str(tmp / "delta")},
        cache={"redis_url": redis_server.url, "key_prefix": f"ops-{suffix}"},
        enrich={"group_id": f"enrich-{suffix}"},
        writer={"group_id": f"writer-{suffix}"},
        retry={"group_id": f"retry-{suffix}", "delays_s": [1, 2, 5, 30]},
    )
    stack = EmbeddedStack(settings, log_dir=tmp)
    env = {**stack.worker_env(), "KP_ENRICH__GROUP_ID": settings.enrich.group_id, "KP_WRITER__GROUP_ID": settings.writer.group_id,
           "KP_RETRY__GROUP_ID": settings.retry.group_id, "KP_RETRY__DELAYS_S": "[1, 2, 5, 30]",
           "KP_CACHE__KEY_PREFIX": settings.cache.key_prefix, "KP_ENRICH__STATS_INTERVAL_S": "5",
           "KP_API__BREAKER_FAILURE_THRESHOLD": "100000"}  # 30% errors must not open the breaker: it would stall the run
    ports = {component: free_port() for component in COMPONENTS}
    prometheus = _start_prometheus(tmp, ports)
    simulator.set_faults(error_rate=0.3)  # API errors, retries and their forwards show on the dashboards
    started = time.monotonic()
    try:
        asyncio.run(stack.create_topics())
        for component in COMPONENTS:
            stack.start_worker(component, env={**env, "KP_WORKER__HTTP_PORT": str(ports[component])})
        prometheus_url = f"http://127.0.0.1:{prometheus[1]}"
        _wait_until_scraped(prometheus_url)  # counters seen at 0 first, so increase() sees the dead letters below
        asyncio.run(replay(settings.kafka, FileSource([bundled_sample()]), progress=False))
        _produce(settings.kafka, settings.kafka.events_topic, [b"{not json"])  # dead-lettered by the enrichment worker
        _produce(settings.kafka, settings.kafka.entity_rows_topic, [b'{"rows": 1}'])  # dead-lettered by the writer
        replayed = time.monotonic()
        asyncio.run(stack.wait_until_drained(timeout_s=120, poll_s=0.5))
        print(f"stack: started and replayed in {replayed - started:.1f}s, drained {time.monotonic() - replayed:.1f}s later")
        simulator.reset_faults()
        yield Running(stack, settings, {c: f"http://127.0.0.1:{p}" for c, p in ports.items()}, env, prometheus_url, dead_letters=2)
    finally:
        simulator.reset_faults()
        stack.stop()  # the workers only: the broker and simulator are the session's
        stop_process(prometheus[0], 10)


def _start_prometheus(tmp: Path, ports: dict[str, int]) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: scripts/test.sh installs Debian's prometheus package"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "kafka-pipeline", "static_configs": [
            {"targets": [f"127.0.0.1:{port}"], "labels": {"component": component}} for component, port in ports.items()]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - the process owns it until the end of the module
    process = subprocess.Popen(
        [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=1).status_code == 200:
                return process, port
        except httpx.HTTPError:
            pass
        assert process.poll() is None, (tmp / "prometheus.log").read_text()
        time.sleep(0.2)
    raise AssertionError("prometheus did not become ready: " + (tmp / "prometheus.log").read_text())


# -- the expressions of the dashboards and rules ------------------------------------------------


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, expr) for every panel target and every variable query, Grafana variables filled in."""
    found = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                found.append((f"{path.name}: {panel['title']}", target["expr"]))
        for variable in board["templating"]["list"]:
            if variable["type"] != "query":  # the data source and the label values typed in
                continue
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["query"]["query"])
            assert match, variable
            found.append((f"{path.name}: variable {variable['name']}", match.group(1)))
    return [(where, _fill(expr)) for where, expr in found]


def rule_expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def _fill(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf", "nan"}


def selectors(expr: str) -> list[str]:
    """The vector selectors of a PromQL expression (`name{matchers}`), without range or functions."""
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    found = []
    for match in re.finditer(r"(?P<name>[A-Za-z_:][\w:]*)\s*(?P<labels>\{[^}]*\})?(?P<call>\s*\()?", text):
        name = match.group("name")
        if match.group("call") or name.lower() in NOT_METRICS:
            continue
        found.append(name + (match.group("labels") or ""))
    return found


def test_selectors_are_extracted() -> None:
    expr = 'sum by (group) (kafka_consumer_lag_messages{group=~"a"}) > 0 and on () sum(rate(x_total[5m])) > 0 or vector(0)'
    assert selectors(expr) == ['kafka_consumer_lag_messages{group=~"a"}', "x_total"]


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    return _query_all(prometheus, [expr])[expr]


def _query_all(prometheus: str, exprs: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each distinct expression's result vector, queried concurrently."""
    async def query(client: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
        body = (await client.get(f"{prometheus}/api/v1/query", params={"query": expr})).json()
        assert body.get("status") == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def run() -> dict[str, list[dict[str, Any]]]:
        unique = list(dict.fromkeys(exprs))
        async with httpx.AsyncClient(timeout=30) as client:
            results = await asyncio.gather(*(query(client, expr) for expr in unique))
        return dict(zip(unique, results, strict=True))

    return asyncio.run(run())


def _wait_until_scraped(prometheus: str, timeout_s: float = 60) -> None:
    """Every worker scraped (up == 1) at least twice in the last 3 s."""
    wait_until(lambda: len(_query(prometheus, 'count_over_time(up{job="kafka-pipeline"}[3s]) >= 2 and up == 1')) == len(COMPONENTS),
               lambda: f"every worker scraped: {_query(prometheus, 'up')}", timeout_s, poll_s=0.5)


def test_every_dashboard_and_alert_expression_returns_data(running: Running) -> None:
    _wait_until_scraped(running.prometheus)  # again: the last values since the pipeline drained
    panels = dashboard_expressions()
    every = panels + rule_expressions()
    wanted = [(where, expr) for where, expr in panels] + [(where, sel) for where, expr in every for sel in selectors(expr)]
    results = _query_all(running.prometheus, [expr for _, expr in wanted])
    missing = sorted({f"{where}: {expr}" for where, expr in wanted if not results[expr]})
    assert not missing, "no data for:\n" + "\n".join(missing)
    assert len(every) > 60 and len(results) > 50  # the dashboards and rules were found


def test_prometheus_loads_the_alert_rules(running: Running) -> None:
    groups = httpx.get(f"{running.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == len(rule_expressions())
    assert all(rule["health"] in ("ok", "unknown") for rule in rules), [r for r in rules if r["health"] not in ("ok", "unknown")]
    firing = {alert["labels"]["alertname"] for alert in httpx.get(f"{running.prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]}
    assert "KafkaPipelineDeadLetters" in firing  # the two dead letters of the run


def test_promtool_accepts_the_workers_metrics(running: Running) -> None:
    for component, url in running.ops.items():
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        result = subprocess.run(["promtool", "check", "metrics"], input=metrics, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{component}: {result.stdout}{result.stderr}"


# -- kafka-pipeline status --------------------------------------------------------------------


def _status(running: Running, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **running.env, "WORKER_NAME": "status"}
    command = [sys.executable, "-m", "kafka_pipeline", "status", *args,
               *(arg for url in running.ops.values() for arg in ("--ops-url", url))]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)


def test_status_of_a_healthy_then_lagging_stack(running: Running) -> None:
    settings, kafka = running.settings, running.settings.kafka
    healthy = _status(running, "--json")
    report = json.loads(healthy.stdout)
    assert all(group["lag"] == 0 and group["members"] for group in report["groups"]), report["groups"]
    assert all(worker["ready"] for worker in report["workers"]), report["workers"]
    writer = next(w for w in report["workers"] if w["url"] == running.ops["write"])
    assert writer["notes"] == ["0 records skipped as already written"], writer  # the writer's progress check, in words
    assert report["dlq"] == {"topic": kafka.dlq_topic, "not_replayed": 2, "by_category": {"permanent": 2}, "complete": True}
    counts = table_row_counts(settings.delta.tables_root, list(TABLES))
    assert {t["table"]: t["rows"] for t in report["tables"]} == counts and all(counts.values())
    assert all(t["version"] >= 1 and t["freshness_s"] < 300 for t in report["tables"])
    assert all(t["disk_bytes"] > t["live_bytes"] > 0 for t in report["tables"]), report["tables"]  # the log is on disk too
    assert healthy.returncode == 1 and report["problems"] == [f"2 dead letters on {kafka.dlq_topic} (kafka-pipeline dlq list)"]

    running.stack.workers["enrich"].stop(30)  # leaves its group: the events below wait
    events = bundled_sample().read_text().splitlines()[:12]
    _produce(kafka, kafka.events_topic, [line.encode() for line in events])
    due_ms = int(time.time() * 1000) + 3_600_000
    _produce(kafka, kafka.retry_topic, [b"{}"], headers=[
        (RETRY_ATTEMPT, b"1"), (RETRY_DUE_AT, str(due_ms).encode()), (RETRY_TARGET_TOPIC, kafka.events_topic.encode())])
    # the retry scheduler takes the retry in (it waits, uncommitted, for the longest delay)
    wait_until(lambda: "retry_scheduler_waiting 1.0" in httpx.get(running.ops["retry-scheduler"] + "/metrics", timeout=5).text,
               "the retry scheduler to take the retry in", 30, poll_s=0.1)

    lagging = _status(running)
    print(lagging.stdout)
    assert lagging.returncode == 1, lagging.stderr
    assert re.findall(r"^\s+total\s+(\d+)$", lagging.stdout, re.M) == ["12", "0", "1"]  # enrich, writer, retry groups
    # due in an hour, beyond the longest delay (30 s): shown, and held, as at most that
    assert "retry backlog" in lagging.stdout and "1 waiting, next due" in lagging.stdout
    assert 0 <= int(re.findall(r"next due .*\(in (\d+)s\)", lagging.stdout)[0]) <= 30, lagging.stdout
    assert f"worker {running.ops['enrich']} not ready: no answer (ConnectError)" in lagging.stdout
    report = asyncio.run(collect(settings, list(running.ops.values()))).to_json()
    enrich = next(g for g in report["groups"] if g["group"] == settings.enrich.group_id)
    assert enrich["lag"] == 12  # (tansu keeps a departed member listed, so "no member" is not seen here; see below)
    assert sum(p["end"] - (p["committed"] or 0) for p in enrich["partitions"]) == 12
    assert report["retry"]["waiting"] == 1
    assert datetime.fromisoformat(report["retry"]["next_due_at"]).timestamp() <= time.time() + 30 < due_ms / 1000


def test_a_group_with_lag_and_no_member_is_a_problem() -> None:
    now = datetime.now(UTC)
    groups = [GroupStatus("enrich", "events", "Empty", [], [PartitionStatus(0, 5, 17, 12)]),
              GroupStatus("writer", "rows", "Stable", ["w@h"], [PartitionStatus(0, 3, 9, 6)])]
    status = Status(now, "b:9092", "/t", groups, DlqStatus("dlq", 0, {}, True), RetryStatus("retry", 1, now - timedelta(minutes=5), 1),
                    [], [WorkerStatus("http://w:9100", True)], [])
    assert problems(status) == ["group enrich has no member and 12 messages of events wait",
                                "retries overdue since " + f"{now - timedelta(minutes=5):%H:%M:%S}" + ": is the retry scheduler running?"]


def test_status_when_the_broker_is_unreachable(running: Running) -> None:
    result = _status(running, "--bootstrap-servers", f"127.0.0.1:{free_port()}")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0 and "Kafka broker unreachable" in result.stderr
