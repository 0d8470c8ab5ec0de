"""`kafka-pipeline status`: the one view an operator looks at first.

Everything is read, nothing is joined or committed, and the parts are read concurrently:

- per consumer group (enrich, writer, retry scheduler): its members, and per partition of the
  topic it consumes the committed offset, the end offset (high watermark) and the lag;
- the DLQ since its purge point, by error category (`kafka_pipeline.ops.dlq`);
- the retry backlog: the messages after the retry group's committed offsets, and when the
  first of them is due;
- per Delta table: version, last commit, freshness, and the row count from the add actions'
  `numRecords` statistics (the log is read, no data file); its bytes, with its merge-clock
  table's: live (the current version's data files) and on disk (one listing of each table's
  location: what the storage bills; above live by the files vacuum has not deleted yet);
- given ops URLs, each worker's `/health/ready` and a few of its `/metrics` (`KEY_METRICS`).

What is read is bounded, whoever wrote it: the DLQ read ends after `DLQ_READ_S`, a retry
message's `retry-due-at` is taken only up to now plus the longest configured delay (what the
scheduler itself clamps it to), and an ops URL's answer must come within `READY_TIMEOUT_S` in
all, be at most `MAX_READY_BYTES`, nest at most `MAX_READY_DEPTH` deep and have the readiness
shape; anything else is a worker that did not answer properly.

`problems` lists what needs a person: a group with lag and no member, dead letters, a retry
overdue by more than `OVERDUE_S` (the scheduler is not forwarding), a worker not ready or not
answering. The command exits 1 when there is any.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError
from prometheus_client.parser import text_string_to_metric_families

from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.config import KafkaSettings, Settings
from kafka_pipeline.dead_letters.routing import InvalidRetryHeaders, now_ms, parse_retry_headers
from kafka_pipeline.dead_letters.undecodable import getmany_past_undecodable
from kafka_pipeline.delta.storage import storage_error
from kafka_pipeline.delta.table_writer import clock_table_uri, table_uri
from kafka_pipeline.kafka.clients import BrokerUnreachable, connection_kwargs, make_consumer, quiet
from kafka_pipeline.maintenance.operations import describe, disk_bytes
from kafka_pipeline.offsets.topic_offsets import high_watermarks
from kafka_pipeline.ops import dlq as dlq_ops
from kafka_pipeline.ops.text import ago_text, size_text

CONNECT_TIMEOUT_S = 3.0
READY_TIMEOUT_S = 1.0
OVERDUE_S = 60.0  # a retry this late means the scheduler does not forward
MAX_RETRY_SCAN = 100_000  # retry messages read to find the next due time (the count is exact anyway)
# the few series `status` shows per worker (summed over their labels): sample name -> what it counts
KEY_METRICS = {
    "claimx_enrich_events_total": "events",
    "claimx_api_calls_total": "api calls",
    "claimx_writer_rows_written_total": "rows written",
    "claimx_writer_delta_commits_total": "commits",
    "retry_scheduler_forwarded_total": "retries forwarded",
    "retry_scheduler_waiting": "retries waiting",
    "kafka_pipeline_dead_letters_total": "dead letters",
}
DLQ_READ_S = 10.0
MAX_READY_BYTES = 65_536  # a /health/ready answer is a few hundred bytes
MAX_READY_DEPTH = 8
MAX_METRICS_BYTES = 8 * 1024 * 1024  # a worker's /metrics: tens of KB; more is not an exposition of ours


@dataclass
class PartitionStatus:
    partition: int
    committed: int | None  # None: the group committed nothing on this partition
    end: int
    lag: int


@dataclass
class GroupStatus:
    group: str
    topic: str
    state: str
    members: list[str]  # client id @ host (the member id where the broker gives neither)
    partitions: list[PartitionStatus]

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)


@dataclass
class DlqStatus:
    topic: str
    not_replayed: int
    by_category: dict[str, int]
    complete: bool


@dataclass
class RetryStatus:
    topic: str
    waiting: int
    next_due_at: datetime | None
    scanned: int  # messages read for next_due_at (all of them unless MAX_RETRY_SCAN was reached)


@dataclass
class TableStatus:
    table: str
    exists: bool
    version: int | None = None
    last_commit_at: datetime | None = None
    freshness_s: float | None = None
    rows: int | None = None
    live_bytes: int | None = None  # data files of the current version, the merge-clock table's included
    disk_bytes: int | None = None  # everything stored under the table and its merge-clock table
    error: str | None = None  # the store could not be read (one line)


@dataclass
class WorkerStatus:
    url: str
    ready: bool
    failing: list[str] = field(default_factory=list)  # readiness checks that fail, or why it did not answer
    name: str = ""  # the worker's name when known (the stack file of `run`), else ""
    metrics: dict[str, float] = field(default_factory=dict)  # KEY_METRICS it exports, by what they count
    notes: list[str] = field(default_factory=list)  # what a writer says of its progress (records skipped, partitions refused)


@dataclass
class Status:
    at: datetime
    bootstrap_servers: str
    tables_root: str
    groups: list[GroupStatus]
    dlq: DlqStatus
    retry: RetryStatus
    tables: list[TableStatus]
    workers: list[WorkerStatus]
    problems: list[str]
    seconds: float = 0.0  # how long collecting took

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for group, raw in zip(self.groups, data["groups"], strict=True):
            raw["lag"] = group.lag
        return _iso(data)


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _iso(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_iso(v) for v in value]
    return value


async def collect(settings: Settings, ops_urls: Sequence[str] | Mapping[str, str] = ()) -> Status:
    """Read everything concurrently; BrokerUnreachable (one line) when the broker does not answer.
    `ops_urls`: the workers' ops base URLs, or worker name -> URL."""
    workers_by_name = list(ops_urls.items()) if isinstance(ops_urls, Mapping) else [("", url) for url in ops_urls]
    started = time.monotonic()
    kafka = settings.kafka
    admin = AIOKafkaAdminClient(**connection_kwargs(kafka))
    try:
        with quiet(logging.getLogger("aiokafka")):
            await asyncio.wait_for(admin.start(), CONNECT_TIMEOUT_S)
    except (KafkaConnectionError, KafkaError, asyncio.TimeoutError, OSError) as exc:
        await _close(admin)
        raise BrokerUnreachable(f"Kafka broker unreachable at {kafka.bootstrap_servers} ({type(exc).__name__})") from None
    try:
        pairs = [
            (settings.enrich.group_id, kafka.events_topic),
            (settings.writer.group_id, kafka.entity_rows_topic),
            (settings.retry.group_id, kafka.retry_topic),
        ]
        ends = dict(zip([t for _, t in pairs], await asyncio.gather(*(high_watermarks(kafka, t) for _, t in pairs)), strict=True))
        groups, dlq, tables, workers = await asyncio.gather(
            asyncio.gather(*(_group(admin, group, topic, ends[topic]) for group, topic in pairs)),
            _dlq(kafka),
            asyncio.get_running_loop().run_in_executor(None, table_statuses, settings),
            asyncio.gather(*(_worker(url, name) for name, url in workers_by_name)),
        )
    finally:
        await _close(admin)
    retry_group = groups[2]
    retry = await _retry(kafka, retry_group, max_delay_s=max(settings.retry.delays_s))
    status = Status(
        at=datetime.now(UTC),
        bootstrap_servers=kafka.bootstrap_servers,
        tables_root=settings.delta.tables_root,
        groups=list(groups),
        dlq=dlq,
        retry=retry,
        tables=tables,
        workers=list(workers),
        problems=[],
    )
    status.problems = problems(status)
    status.seconds = round(time.monotonic() - started, 2)
    return status


async def _close(admin: AIOKafkaAdminClient) -> None:
    try:
        await admin.close()
    except Exception:  # noqa: BLE001 - closing a client that never connected
        pass


async def _group(admin: AIOKafkaAdminClient, group: str, topic: str, ends: dict[int, int]) -> GroupStatus:
    described, offsets = await asyncio.gather(
        admin.describe_consumer_groups([group]),
        admin.list_consumer_group_offsets(group, partitions=[TopicPartition(topic, p) for p in sorted(ends)]),
    )
    state, members = "Unknown", []
    for response in described:
        for entry in response.groups:
            # (error_code, group_id, state, protocol_type, protocol, members[, authorized_operations])
            state = entry[2] or "Empty"
            # (member_id, client_id, client_host, ...): tansu leaves client id and host empty
            members = sorted(f"{m[1]}@{m[2].lstrip('/')}" if m[1] else _short(m[0]) for m in entry[5])
    partitions = []
    for partition, end in sorted(ends.items()):
        found = offsets.get(TopicPartition(topic, partition))
        committed = found.offset if found is not None and found.offset >= 0 else None
        partitions.append(PartitionStatus(partition, committed, end, max(0, end - (committed or 0))))
    return GroupStatus(group, topic, state, members, partitions)


def _short(member_id: str) -> str:
    """`client-<uuid>` as `client-<first 8 of the uuid>`: enough to tell members apart."""
    return re.sub(r"(-[0-9a-f]{8})-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", r"\1", member_id)


async def _dlq(kafka: KafkaSettings) -> DlqStatus:
    snapshot = await dlq_ops.read_dlq(kafka, kafka.dlq_topic, idle_timeout_s=1.0, max_read_s=DLQ_READ_S)
    by_category = Counter(e.letter.error_category for e in snapshot.pending if e.letter is not None)
    return DlqStatus(kafka.dlq_topic, sum(by_category.values()), dict(sorted(by_category.items())), snapshot.complete)


async def _retry(kafka: KafkaSettings, group: GroupStatus, *, max_delay_s: float) -> RetryStatus:
    """The retry group's backlog, read from its committed offsets to the end for the next due time
    (a due time beyond now + `max_delay_s` counts as that: the scheduler clamps it the same way)."""
    waiting = group.lag
    if not waiting:
        return RetryStatus(group.topic, 0, None, 0)
    consumer = make_consumer(kafka, group_id=None)
    await consumer.start()
    due: int | None = None
    scanned = 0
    try:
        lagging = {TopicPartition(group.topic, p.partition): p for p in group.partitions if p.lag}
        consumer.assign(list(lagging))
        read_to = {tp: part.committed or 0 for tp, part in lagging.items()}
        for tp, offset in read_to.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + 2.0
        while lagging and scanned < MAX_RETRY_SCAN and time.monotonic() < deadline:
            batch, undecodable = await getmany_past_undecodable(consumer, list(lagging), read_to, timeout_ms=200)
            for tp, offset in undecodable:  # the scheduler dead-letters it as soon as it reads it
                read_to[tp] = offset + 1
                scanned += 1
                if read_to[tp] >= lagging[tp].end and not batch.get(tp):
                    consumer.pause(tp)
                    del lagging[tp]
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= lagging[tp].end:
                        break
                    read_to[tp] = record.offset + 1
                    scanned += 1
                    try:
                        at = parse_retry_headers(record.headers).due_at_ms
                    except InvalidRetryHeaders:
                        continue  # the scheduler dead-letters it as soon as it reads it
                    at = min(at, now_ms() + round(max_delay_s * 1000))
                    due = at if due is None else min(due, at)
                if records and records[-1].offset + 1 >= lagging[tp].end:
                    consumer.pause(tp)
                    del lagging[tp]
    finally:
        await consumer.stop()
    next_due = datetime.fromtimestamp(due / 1000, tz=UTC) if due is not None else None
    return RetryStatus(group.topic, waiting, next_due, scanned)


def table_statuses(settings: Settings) -> list[TableStatus]:
    """Each table: version, freshness, rows, bytes live and on disk (with its merge-clock table)."""
    now = datetime.now(UTC)
    found = []
    root, options = settings.delta.tables_root, settings.delta.storage_options
    unreachable: str | None = None  # the store did not answer: the other tables are not tried (each try takes seconds)
    for name in TABLES:
        uri = table_uri(root, name)
        if unreachable is not None:
            found.append(TableStatus(name, exists=False, error=unreachable))
            continue
        try:
            description = describe(uri, storage_options=options)
        except Exception as exc:  # noqa: BLE001 - delta-rs raises its own types: shown as one line, never a traceback
            known = storage_error(exc, root)
            error = str(known) if known else f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
            unreachable = error if known else None
            found.append(TableStatus(name, exists=False, error=error))
            continue
        if description is None:
            found.append(TableStatus(name, exists=False))
            continue
        at = description.last_commit_at
        clocks = describe(clock_table_uri(root, name), storage_options=options)
        live = description.size_bytes + (clocks.size_bytes if clocks is not None else 0)
        disk = disk_bytes(table_uri(root, name), options) + (disk_bytes(clock_table_uri(root, name), options) if clocks is not None else 0)
        found.append(TableStatus(
            name, True, description.version, at, round((now - at).total_seconds(), 1) if at else None, description.rows, live, disk
        ))
    return found


async def _worker(url: str, name: str = "") -> WorkerStatus:
    base = url.rstrip("/")
    try:
        async with asyncio.timeout(READY_TIMEOUT_S), httpx.AsyncClient(timeout=READY_TIMEOUT_S) as client:
            (status, raw), (metrics_status, exposition) = await asyncio.gather(
                _bounded_get(client, base + "/health/ready", MAX_READY_BYTES), _bounded_get(client, base + "/metrics", MAX_METRICS_BYTES)
            )
        if raw is None:
            return WorkerStatus(url, False, [f"answer over {MAX_READY_BYTES} bytes"], name)
        if _depth(raw) > MAX_READY_DEPTH:
            return WorkerStatus(url, False, [f"answer nested deeper than {MAX_READY_DEPTH}"], name)
        body = json.loads(raw)
    except (httpx.HTTPError, ValueError, TimeoutError) as exc:
        return WorkerStatus(url, False, [f"no answer ({type(exc).__name__})"], name)
    if not isinstance(body, dict) or not isinstance(body.get("checks", {}), dict):
        return WorkerStatus(url, False, ["answer is not a readiness report"], name)
    checks = body.get("checks", {})
    failing = sorted(str(check_name)[:80] for check_name, check in checks.items() if not (isinstance(check, dict) and check.get("ready") is True))
    metrics = key_metrics(exposition.decode(errors="replace")) if metrics_status == 200 and exposition is not None else {}
    ready = status == 200 and body.get("ready") is True
    return WorkerStatus(url, ready, failing[:20], name, metrics, _progress_notes(checks.get("progress")))


async def _bounded_get(client: httpx.AsyncClient, target: str, limit: int) -> tuple[int, bytes | None]:
    """The answer's status and body; None for a body over `limit` bytes (read no further)."""
    async with client.stream("GET", target) as response:
        raw = bytearray()
        async for chunk in response.aiter_bytes():
            raw += chunk
            if len(raw) > limit:
                return response.status_code, None
        return response.status_code, bytes(raw)


def _depth(raw: bytes) -> int:
    """How deep JSON text nests (brackets inside strings count too: an over-estimate, never under)."""
    depth = deepest = 0
    for byte in raw:
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


def key_metrics(exposition: str) -> dict[str, float]:
    """The KEY_METRICS found in a Prometheus text exposition, each summed over its labels."""
    found: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(exposition):
            for sample in family.samples:
                if sample.name in KEY_METRICS:
                    label = KEY_METRICS[sample.name]
                    found[label] = found.get(label, 0.0) + sample.value
    except ValueError:  # not an exposition: show none
        return {}
    return found


def _progress_notes(check: Any) -> list[str]:
    """The writer's `progress` readiness check, in words (nothing for the other workers)."""
    if not isinstance(check, dict):
        return []
    notes = []
    skipped = check.get("records_skipped")
    if isinstance(skipped, int) and not isinstance(skipped, bool):
        notes.append(f"{skipped} records skipped as already written")
    for key, words in (("refused_partitions", "partitions refused (another log: kafka-pipeline write --adopt-new-log --dry-run)"),
                       ("unchecked_partitions", "partitions waiting for their progress check")):
        partitions = check.get(key)
        if isinstance(partitions, list) and partitions:
            notes.append(f"{words}: {', '.join(str(p) for p in partitions[:16] if isinstance(p, int))}")
    return notes


def problems(status: Status) -> list[str]:
    found = []
    for group in status.groups:
        if group.lag and not group.members:
            found.append(f"group {group.group} has no member and {group.lag} messages of {group.topic} wait")
    if status.dlq.not_replayed:
        found.append(f"{status.dlq.not_replayed} dead letters on {status.dlq.topic} (kafka-pipeline dlq list)")
    if status.retry.next_due_at is not None and (status.at - status.retry.next_due_at).total_seconds() > OVERDUE_S:
        found.append(f"retries overdue since {status.retry.next_due_at:%H:%M:%S}: is the retry scheduler running?")
    for table in status.tables:
        if table.error:
            found.append(f"table {table.table} unreadable: {table.error}")
    for worker in status.workers:
        if not worker.ready:
            found.append(f"worker {worker.name or worker.url} not ready: {', '.join(worker.failing) or 'unknown'}")
    return found


# -- the readable form ------------------------------------------------------------------------


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
            for r in [header, *rows]]


def _ago(seconds: float | None) -> str:
    return "-" if seconds is None else ago_text(seconds)


def format_status(status: Status) -> str:
    lines = [f"kafka-pipeline status at {status.at:%Y-%m-%d %H:%M:%S} UTC (broker {status.bootstrap_servers}, {status.seconds:.2f}s)", ""]
    lines.append("consumer groups")
    rows: list[tuple[str, ...]] = []
    for g in status.groups:
        members = ", ".join(g.members) if g.members else "none"
        for i, p in enumerate(g.partitions):
            first = i == 0
            rows.append((g.group if first else "", g.topic if first else "", f"{g.state}: {members}" if first else "",
                         str(p.partition), "-" if p.committed is None else str(p.committed), str(p.end), str(p.lag)))
        rows.append(("", "", "", "total", "", "", str(g.lag)))
    lines += _table(("group", "topic", "members", "partition", "committed", "end", "lag"), rows, {3, 4, 5, 6})
    lines.append("")
    by_category = ", ".join(f"{c} {n}" for c, n in status.dlq.by_category.items())
    lines.append(f"dead letters  {status.dlq.topic}: {status.dlq.not_replayed} since the purge point, not replayed"
                 + (f" ({by_category})" if by_category else "") + ("" if status.dlq.complete else " (partial read)"))
    retry = status.retry
    due = "-"
    if retry.next_due_at is not None:
        delta = (retry.next_due_at - status.at).total_seconds()
        due = f"{retry.next_due_at:%H:%M:%S} UTC (" + (f"in {_ago(delta)}" if delta >= 0 else f"{_ago(-delta)} overdue") + ")"
    lines.append(f"retry backlog {retry.topic}: {retry.waiting} waiting, next due {due}")
    lines.append("")
    lines.append(f"tables ({status.tables_root}; bytes count each table with its merge clocks)")
    rows = [(t.table, "-" if t.version is None else str(t.version),
             f"{t.last_commit_at:%Y-%m-%d %H:%M:%S}" if t.last_commit_at else "-", _ago(t.freshness_s),
             "-" if t.rows is None else str(t.rows), "-" if t.live_bytes is None else size_text(t.live_bytes),
             "-" if t.disk_bytes is None else size_text(t.disk_bytes)) for t in status.tables]
    lines += _table(("table", "version", "last commit (UTC)", "freshness", "rows", "live", "on disk"), rows, {1, 3, 4, 5, 6})
    if status.workers:
        lines.append("")
        lines.append("workers")
        rows = [(w.name or "-", w.url, "ready" if w.ready else "NOT READY: " + (", ".join(w.failing) or "unknown"),
                 ", ".join(f"{label} {value:.0f}" for label, value in w.metrics.items()) or "-", "; ".join(w.notes)) for w in status.workers]
        lines += _table(("worker", "ops url", "readiness", "metrics", "notes"), rows, set())
    lines.append("")
    if status.problems:
        lines.append(f"{len(status.problems)} problem(s):")
        lines += [f"  - {p}" for p in status.problems]
    else:
        lines.append("no problems")
    return "\n".join(lines)
