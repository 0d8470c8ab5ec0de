"""The entity writer: entity-rows topic -> the eight Delta tables, exactly once.

Read top to bottom: `EntityWriter.run` consumes the entity-rows topic into a pending batch and
flushes it when `writer.max_rows` rows are pending or the oldest pending message is
`writer.max_latency_s` old. A flush (off the event loop) converts the messages to typed Arrow
tables, dead-letters the messages that do not fit the contract, merges every table that has
rows (concurrently, one MERGE per table), and only then commits the Kafka offsets. While a
flush runs, the loop keeps polling with every partition paused (`_flush`): aiokafka leaves the
group when `getmany` was not called for `max_poll_interval_ms`, so a slow Delta store slows
consumption down instead of costing this member its partitions.

Exactly once. Every Delta commit of a flush carries one app transaction per source partition
of the flush: `Transaction(f"{group}:{topic}:{partition}", last_offset_of_that_partition)`, in
every table the flush commits, whether or not that table got rows from that partition (it has
then incorporated everything of that partition up to that offset all the same). A table with no
rows in a flush is not committed. Before merging, each table drops the rows at offsets its
snapshot already records for their partition, so a flush redone after a crash between the
Delta commits and the Kafka commit writes nothing twice; the merge rule makes anything that is
written twice (a replay under another consumer group) harmless too. Kafka offsets are committed
only after all tables of a flush are committed; the dead letters of a flush are sent before.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import ValidationError

from kafka_pipeline.claimx.entity_rows import EntityRowsMessage
from kafka_pipeline.claimx.row_conversion import BatchBuilder, SchemaMismatch
from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.runtime.backoff import backoff_delay
from kafka_pipeline.config import Settings
from kafka_pipeline.runtime.dead_letter import dead_letter_for
from kafka_pipeline.delta.table_writer import DeltaTableWriter, TableWriteResult, read_delta_table, table_uri
from kafka_pipeline.runtime.kafka import ensure_topics, make_consumer, make_producer
from kafka_pipeline.runtime.logging import get_logger
from kafka_pipeline.runtime.ops_server import OpsServer
from kafka_pipeline.writer.maintenance import WriterMaintenance

log = get_logger("kafka_pipeline.entity_writer")

FETCH_MAX_RECORDS = 2_000
FLUSH_RETRY_BASE_S = 0.5
FLUSH_RETRY_MAX_S = 30.0
# While a flush runs, the consumer is polled (every partition paused) this often: far below
# the smallest max_poll_interval_ms (10 s), and flushes shorter than this never pause anything.
POLL_WHILE_FLUSHING_S = 1.0

# `delta.targetFileSize` of the tables the writer creates. Entity keys arrive roughly in id order
# (recent claims are the busy ones), and each MERGE prunes target files by the batch's key range,
# then rewrites the files holding matched keys: small files keep that rewrite small. The events
# log is keyed by hashes, nothing prunes, every MERGE scans it all: fewer, larger files scan
# faster. A clock row is about an eighth of an entity row, so its files are an eighth the size.
ENTITY_FILE_BYTES = 2 * 1024 * 1024
EVENTS_FILE_BYTES = 32 * 1024 * 1024
CLOCK_FILE_RATIO = 8


def table_properties(name: str) -> tuple[dict[str, str], dict[str, str]]:
    """Delta table properties (entity table, clock table) the writer creates table `name` with."""
    size = EVENTS_FILE_BYTES if name == "claimx_events" else ENTITY_FILE_BYTES
    return {"delta.targetFileSize": str(size)}, {"delta.targetFileSize": str(size // CLOCK_FILE_RATIO)}


def app_id(group_id: str, topic: str, partition: int) -> str:
    """The Delta app transaction id of one source partition of one consumer group."""
    return f"{group_id}:{topic}:{partition}"


def read_table(root: str, name: str, storage_options: Mapping[str, str] | None = None) -> pa.Table:
    """A whole entity table sorted by its merge key (empty with the contract's schema if absent)."""
    spec = TABLES[name]
    return read_delta_table(table_uri(root, name), list(spec.merge_keys), storage_options, schema=spec.schema)


def read_rows(root: str, name: str, storage_options: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """`read_table` as a list of dicts."""
    return read_table(root, name, storage_options).to_pylist()


@dataclass
class _Dead:
    record: Any
    error_type: str
    message: str
    trace_id: str | None = None


@dataclass
class _Batch:
    """Consumed records waiting for a flush, in consumption order."""

    messages: list[tuple[Any, EntityRowsMessage]] = field(default_factory=list)
    undecodable: list[_Dead] = field(default_factory=list)
    last_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    rows: int = 0
    started: float | None = None  # monotonic time the oldest pending record arrived

    def __len__(self) -> int:
        return len(self.messages) + len(self.undecodable)

    def add(self, record: Any) -> None:
        if self.started is None:
            self.started = time.monotonic()
        tp = TopicPartition(record.topic, record.partition)
        self.last_offsets[tp] = max(record.offset, self.last_offsets.get(tp, -1))
        try:
            if record.value is None:
                raise ValueError("message has no value")
            message = EntityRowsMessage.from_bytes(record.value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "message"
            self.undecodable.append(_Dead(record, "InvalidMessage", f"not an entity-rows message: {where}: {first['msg']}"))
            return
        except ValueError as exc:
            self.undecodable.append(_Dead(record, "InvalidMessage", f"not an entity-rows message: {_one_line(exc)}"))
            return
        self.messages.append((record, message))
        self.rows += message.row_count()

    def without(self, partitions: set[TopicPartition]) -> _Batch:
        """This batch minus the records of `partitions`."""
        kept = _Batch(started=self.started)
        for record, message in self.messages:
            if TopicPartition(record.topic, record.partition) not in partitions:
                kept.messages.append((record, message))
                kept.rows += message.row_count()
        kept.undecodable = [d for d in self.undecodable if TopicPartition(d.record.topic, d.record.partition) not in partitions]
        kept.last_offsets = {tp: o for tp, o in self.last_offsets.items() if tp not in partitions}
        return kept


@dataclass
class FlushResult:
    tables: dict[str, TableWriteResult]
    dead: list[_Dead]
    messages: int
    seconds: float = 0.0

    @property
    def rows_written(self) -> int:
        return sum(r.rows - r.skipped for r in self.tables.values())


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows_written = Counter("claimx_writer_rows_written", "Entity rows merged into a Delta table", ["table"], registry=registry)
        self.rows_skipped = Counter(
            "claimx_writer_rows_skipped", "Entity rows skipped: the table already held their offsets", ["table"], registry=registry
        )
        self.commits = Counter("claimx_writer_delta_commits", "Delta commits (entity and clock tables)", ["table"], registry=registry)
        self.conflicts = Counter("claimx_writer_commit_conflicts", "Delta commits redone after a concurrent commit", ["table"], registry=registry)
        self.flushes = Counter("claimx_writer_flushes", "Flushes (batches) by outcome", ["outcome"], registry=registry)
        self.flush_seconds = Histogram(
            "claimx_writer_flush_duration_seconds",
            "Time to convert, merge and commit one batch",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=registry,
        )
        self.messages = Counter("claimx_writer_messages", "Entity-rows messages consumed", registry=registry)
        self.dead_letters = Counter("claimx_writer_dead_letters", "Messages sent to the dead-letter topic", ["error_type"], registry=registry)
        self.lag = Gauge("claimx_writer_lag_messages", "Messages behind the high watermark, all assigned partitions", registry=registry)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, writer: EntityWriter) -> None:
        self.writer = writer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.writer._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.writer._on_assigned(set(assigned))


class EntityWriter:
    """Consumes `settings.kafka.entity_rows_topic` into the Delta tables under
    `settings.delta.tables_root`. `await run(stop)` until `stop` is set; then it flushes,
    commits and returns."""

    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.kafka = settings.kafka
        self.topic = settings.kafka.entity_rows_topic
        self.group_id = settings.writer.group_id
        self.worker = settings.worker.name
        self.registry = registry or CollectorRegistry()
        self.metrics = _Metrics(self.registry)
        self.writers = {
            name: DeltaTableWriter(
                spec,
                settings.delta.tables_root,
                storage_options=settings.delta.storage_options,
                configuration=table_properties(name)[0],
                clock_configuration=table_properties(name)[1],
            )
            for name, spec in TABLES.items()
        }
        self._pool = ThreadPoolExecutor(max_workers=len(TABLES), thread_name_prefix="delta-merge")
        self.maintenance = WriterMaintenance(settings, self.registry)
        self._lock = asyncio.Lock()
        self._batch = _Batch()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self.ops: OpsServer | None = None
        self._assigned: set[TopicPartition] = set()
        self._generation = 0  # rebalances seen (a revoke starts a new one)
        self._joined = False
        self._running = False
        self._last_flush_ok = True
        self._last_flush_error: str | None = None
        self._flush_failures = 0
        self._consumed: dict[TopicPartition, int] = {}  # next offset to consume, per partition
        # running totals (also the cycle-stats numbers)
        self.flushes = 0
        self.rows_written = 0
        self.dead_lettered = 0
        self.messages_consumed = 0

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await ensure_topics(self.kafka, [self.topic, self.kafka.dlq_topic])
        self._producer = make_producer(self.kafka)
        self._consumer = make_consumer(self.kafka, group_id=self.group_id)
        self._consumer.subscribe([self.topic], listener=_Rebalance(self))
        await self._producer.start()
        stats: asyncio.Task[None] | None = None
        try:
            await self._consumer.start()
            self._running = True
            if self.settings.worker.http_port:
                await self._start_ops()
            stats = asyncio.create_task(self._stats_loop(stop), name="writer-stats")
            self.maintenance.start(lambda: {tp.partition for tp in self._assigned})
            log.info("entity writer started", topic=self.topic, group=self.group_id, tables_root=self.settings.delta.tables_root)
            await self._consume(stop)
            await self._final_flush()
        finally:
            self._running = False
            await self.maintenance.stop()
            if stats is not None:
                stats.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stats
            await self._consumer.stop()  # leaves the group; the revoke callback finds nothing pending
            await self._producer.stop()
            if self.ops is not None:
                await self.ops.stop()
            self._pool.shutdown(wait=True)
            log.info("entity writer stopped", flushes=self.flushes, rows=self.rows_written, dlq=self.dead_lettered)

    async def _start_ops(self) -> None:
        worker = self.settings.worker
        self.ops = OpsServer(
            worker.http_host,
            worker.http_port,
            readiness={"consumer": self._consumer_ready, "flush": self._flush_ready},
            registry=self.registry,
        )
        await self.ops.start()
        log.info("ops server listening", host=worker.http_host, port=self.ops.port)

    def _consumer_ready(self) -> tuple[bool, dict[str, Any]]:
        assigned = sorted(f"{tp.topic}:{tp.partition}" for tp in self._assigned)
        return self._running and self._joined, {"running": self._running, "joined": self._joined, "assigned": assigned}

    def _flush_ready(self) -> tuple[bool, dict[str, Any]]:
        return self._last_flush_ok, {"failures": self._flush_failures, "error": self._last_flush_error, "pending_rows": self._batch.rows}

    async def _consume(self, stop: asyncio.Event) -> None:
        assert self._consumer is not None
        max_rows = self.settings.writer.max_rows
        max_latency = self.settings.writer.max_latency_s
        while not stop.is_set():
            if not self._last_flush_ok:  # a failed batch is retried before anything new is read
                await self._idle(stop, backoff_delay(self._flush_failures, FLUSH_RETRY_BASE_S, FLUSH_RETRY_MAX_S))
                if not stop.is_set():
                    await self._flush()
                if self._last_flush_ok:
                    self._consumer.resume(*self._consumer.assignment())
                continue
            waited = 0.0 if self._batch.started is None else time.monotonic() - self._batch.started
            timeout = max(0.0, min(max_latency - waited, 0.2)) if len(self._batch) else 0.2
            generation = self._generation
            for record in await self._fetch(timeout):
                if self._generation != generation:
                    # A rebalance happened during the flush below: the consumer re-reads every
                    # assigned partition from its committed offset, so the rest of this fetch goes.
                    break
                self._batch.add(record)  # after a failed flush, the batch keeps growing by this fetch
                if self._batch.rows >= max_rows and self._last_flush_ok:
                    await self._flush()
            batch = self._batch
            if len(batch) and time.monotonic() - (batch.started or 0) >= max_latency:
                await self._flush()

    async def _fetch(self, timeout_s: float) -> list[Any]:
        """The next records of the assigned partitions, in offset order per partition."""
        assert self._consumer is not None
        fetched = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=FETCH_MAX_RECORDS)
        out: list[Any] = []
        for tp, records in fetched.items():
            if tp not in self._assigned or not records:
                continue  # fetched just before a revoke: the new owner reads it again
            out.extend(records)
            self._consumed[tp] = records[-1].offset + 1
            self.messages_consumed += len(records)
            self.metrics.messages.inc(len(records))
        return out

    async def _idle(self, stop: asyncio.Event, seconds: float) -> None:
        """Wait with every partition paused, still polling so the group keeps this member."""
        assert self._consumer is not None
        deadline = time.monotonic() + seconds
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            self._consumer.pause(*self._consumer.assignment())
            for record in await self._fetch(min(left, 1.0)):
                self._batch.add(record)

    async def _final_flush(self) -> None:
        """On stop: flush what is pending (retrying a failed batch a few times), then return."""
        for attempt in range(1, 4):
            if not len(self._batch):
                return
            await self._flush()
            if self._last_flush_ok:
                return
            await asyncio.sleep(backoff_delay(attempt, FLUSH_RETRY_BASE_S, 5.0))
        if len(self._batch):
            raise FlushFailed(f"stopping with {len(self._batch)} unwritten messages: {self._last_flush_error}")

    # -- flushing ---------------------------------------------------------------------------

    async def _flush(self) -> None:
        """Write the pending batch; if that takes longer than POLL_WHILE_FLUSHING_S, poll with
        every partition paused until it is done, so the group keeps this member."""
        assert self._consumer is not None
        flush = asyncio.ensure_future(self._flush_under_lock())
        paused = False
        while not (await asyncio.wait({flush}, timeout=POLL_WHILE_FLUSHING_S))[0]:
            self._consumer.pause(*self._consumer.assignment())
            paused = True
            for tp, records in (await self._consumer.getmany(timeout_ms=0)).items():
                # Only a partition assigned between the pause and this poll returns records; the
                # batch being flushed must not grow, so they are handed back to be fetched again.
                if records:
                    self._consumer.seek(tp, records[0].offset)
        if paused:
            self._consumer.resume(*self._consumer.assignment())
        await flush

    async def _flush_under_lock(self) -> None:
        async with self._lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        """Write the pending batch; on failure keep it pending (it is retried) and pause reading."""
        batch = self._batch
        if not len(batch):  # nothing pending (a failed batch may have gone with a revoke)
            self._last_flush_ok, self._last_flush_error, self._flush_failures = True, None, 0
            return
        started = time.monotonic()
        try:
            result = await asyncio.get_running_loop().run_in_executor(None, self._write_batch, batch)
            await self._send_dead_letters(result.dead)
        except Exception as exc:  # noqa: BLE001 - every failure is retried; the batch stays pending
            self._flush_failures += 1
            self._last_flush_ok = False
            self._last_flush_error = f"{type(exc).__name__}: {_one_line(exc)}"
            self.metrics.flushes.labels("error").inc()
            log.error("flush failed; batch kept for retry", error=self._last_flush_error, messages=len(batch), failures=self._flush_failures)
            return
        self._batch = _Batch()
        await self._commit_offsets(batch.last_offsets)
        result.seconds = time.monotonic() - started
        self._record(result)
        self._last_flush_ok, self._last_flush_error, self._flush_failures = True, None, 0

    def _write_batch(self, batch: _Batch) -> FlushResult:
        """Runs in a worker thread: convert, dead-letter misfits, merge every table (concurrently)."""
        builder = BatchBuilder()
        dead = list(batch.undecodable)
        for record, message in batch.messages:
            try:
                builder.add(message, app=app_id(self.group_id, record.topic, record.partition), offset=record.offset)
            except SchemaMismatch as exc:
                dead.append(_Dead(record, "SchemaMismatch", str(exc), trace_id=message.trace_id))
        progress = {app_id(self.group_id, tp.topic, tp.partition): offset for tp, offset in batch.last_offsets.items()}
        now = datetime.now(UTC)
        futures = {name: self._pool.submit(self.writers[name].write, rows, progress, now) for name, rows in builder.tables().items()}
        results: dict[str, TableWriteResult] = {}
        errors: list[BaseException] = []
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except Exception as exc:  # noqa: BLE001 - wait for every table, then fail the flush
                errors.append(exc)
                log.error("table merge failed", table=name, error=f"{type(exc).__name__}: {_one_line(exc)}")
        if errors:
            raise errors[0]
        return FlushResult(tables=results, dead=dead, messages=len(batch))

    async def _send_dead_letters(self, dead: list[_Dead]) -> None:
        assert self._producer is not None
        for item in dead:
            envelope = dead_letter_for(
                item.record,
                error_type=item.error_type,
                error_message=item.message,
                category="permanent",
                worker=self.worker,
                trace_id=item.trace_id,
            )
            await self._producer.send_and_wait(self.kafka.dlq_topic, envelope.to_bytes(), key=item.record.key)
            self.metrics.dead_letters.labels(item.error_type).inc()
            log.warning(
                "message dead-lettered",
                error_type=item.error_type,
                error=item.message,
                partition=item.record.partition,
                offset=item.record.offset,
            )
        self.dead_lettered += len(dead)

    async def _commit_offsets(self, last_offsets: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        offsets = {tp: offset + 1 for tp, offset in last_offsets.items() if tp in self._assigned}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # The tables already record these offsets; whoever reads the partitions next skips them.
            log.warning("kafka offset commit failed after the Delta commits", error=_one_line(exc))

    def _record(self, result: FlushResult) -> None:
        self.flushes += 1
        self.rows_written += result.rows_written
        self.metrics.flushes.labels("ok").inc()
        self.metrics.flush_seconds.observe(result.seconds)
        for name, table in result.tables.items():
            self.metrics.rows_written.labels(name).inc(table.rows - table.skipped)
            self.metrics.rows_skipped.labels(name).inc(table.skipped)
            self.metrics.commits.labels(name).inc(table.commits)
            self.metrics.conflicts.labels(name).inc(table.conflicts)
        log.debug(
            "flushed",
            messages=result.messages,
            rows=result.rows_written,
            dlq=len(result.dead),
            seconds=round(result.seconds, 3),
            tables={name: r.keys_changed for name, r in result.tables.items()},
        )

    # -- rebalancing ------------------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Hand partitions over clean: flush what is pending; if that fails, drop their records
        (never committed, so the next owner reads them again)."""
        self._generation += 1
        async with self._lock:
            if len(self._batch):
                await self._flush_locked()
                if len(self._batch):
                    self._batch = self._batch.without(revoked)
            self._assigned -= revoked
            for tp in revoked:
                self._consumed.pop(tp, None)
        if revoked:
            log.info("partitions revoked", partitions=sorted(tp.partition for tp in revoked))

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._assigned |= assigned
        self._joined = True
        if not assigned:
            log.info("partitions assigned", partitions=[])
            return
        apps = [app_id(self.group_id, tp.topic, tp.partition) for tp in assigned]
        progress = await asyncio.get_running_loop().run_in_executor(None, self._table_progress, apps)
        log.info(
            "partitions assigned",
            partitions=sorted(tp.partition for tp in assigned),
            tables_hold={app.rsplit(":", 1)[-1]: offsets for app, offsets in sorted(progress.items())},
        )

    def _table_progress(self, apps: list[str]) -> dict[str, dict[str, int]]:
        """Per app id, the last offset each table already holds (tables holding none left out).
        Rows at or below these offsets are skipped by the table writers at flush time."""
        held: dict[str, dict[str, int]] = {app: {} for app in apps}
        for name, writer in self.writers.items():
            for app, version in writer.transaction_versions(apps).items():
                if version is not None:
                    held[app][name] = version
        return held

    # -- stats ------------------------------------------------------------------------------

    async def lag(self) -> int | None:
        """Messages behind the high watermark over the assigned partitions (None: unknown yet).
        Uses the fetch responses' high watermark: tansu's end_offsets() can lag by a batch."""
        if self._consumer is None:
            return None
        total, known = 0, False
        for tp in list(self._assigned):
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            position = self._consumed.get(tp)
            if position is None:
                try:
                    position = await asyncio.wait_for(self._consumer.position(tp), 2.0)
                except (asyncio.TimeoutError, KafkaError, IllegalStateError):
                    continue
            known = True
            total += max(0, highwater - position)
        return total if known else None

    async def _stats_loop(self, stop: asyncio.Event) -> None:
        interval = self.settings.writer.stats_interval_s
        cycle = 0
        last_rows, last_flushes, last_dlq, last_time = 0, 0, 0, time.monotonic()
        while not stop.is_set():
            await _wait(stop, interval)
            cycle += 1
            now = time.monotonic()
            rows = self.rows_written - last_rows
            flushes = self.flushes - last_flushes
            dlq = self.dead_lettered - last_dlq
            rate = rows / max(now - last_time, 1e-9)
            lag = await self.lag()
            if lag is not None:
                self.metrics.lag.set(lag)
            log.info(
                f"Cycle {cycle}: rows={rows} (merged) | {rate:.0f} rows/s | flushes={flushes} | dlq={dlq} | lag={'?' if lag is None else lag}",
                cycle=cycle,
                rows=rows,
                rows_per_s=round(rate, 1),
                flushes=flushes,
                dlq=dlq,
                lag=lag,
                pending_rows=self._batch.rows,
            )
            last_rows, last_flushes, last_dlq, last_time = self.rows_written, self.flushes, self.dead_lettered, now


class FlushFailed(Exception):
    """The writer stopped with a batch it could not write (it is re-read on the next start)."""


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
