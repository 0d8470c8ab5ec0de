"""The entity writer: entity-rows topic -> the eight Delta tables, exactly once.

Runs on the consumer runtime (`kafka_pipeline.runtime.consumer`), which does the Kafka part
(polling, pausing, rebalances, commits, polling while a flush runs so a slow Delta store never
costs this member its partitions). The writer's own logic: `add` puts each consumed message in
the pending batch; `flush` writes it once `should_flush` says so (`writer.max_rows` rows
pending, or the oldest pending message `writer.max_latency_s` old). A flush (off the event loop)
converts the messages to typed Arrow tables, dead-letters the messages that do not fit the
contract, merges every table that has rows (concurrently, one MERGE per table), and only then
marks the batch's offsets done, which the runtime commits. A flush that fails is kept and
retried after a backoff, with consumption paused (`room` is 0) meanwhile.

Exactly once. Every Delta commit of a flush carries one app transaction per source partition
of the flush: `Transaction(f"{group}:{topic}:{partition}", last_offset_of_that_partition)`, in
every table the flush commits, whether or not that table got rows from that partition (it has
then incorporated everything of that partition up to that offset all the same). A table with no
rows in a flush is not committed. Before merging, each table drops the rows at offsets its
snapshot already records for their partition, so a flush redone after a crash between the
Delta commits and the Kafka commit writes nothing twice; the merge rule makes anything that is
written twice (a replay under another consumer group) harmless too. Kafka offsets are committed
only after all tables of a flush are committed; the dead letters of a flush are sent before.

Those offsets are trusted only for the log they were read from: each commit also records the
log's identity and a fingerprint of the partition's last record, and a newly assigned partition
is consumed only once `writer.log_progress` found its stored progress to come from the log the
broker serves (another log is refused, or adopted with `writer.adopt_new_log`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from kafka_pipeline.claimx.entity_rows import EntityRowsMessage
from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.config import Settings
from kafka_pipeline.dead_letters.envelope import safe_text
from kafka_pipeline.dead_letters.sink import MESSAGE_LIMIT, Letter
from kafka_pipeline.delta.storage import STORE_ERRORS, check_commit_safety, storage_error
from kafka_pipeline.delta.table_writer import DeltaTableWriter, TableWriteResult, read_delta_table, table_uri
from kafka_pipeline.errors import WorkerFailed
from kafka_pipeline.maintenance.policy import WriterMaintenance
from kafka_pipeline.maintenance.table_layout import table_properties, writer_properties
from kafka_pipeline.observability.logging import get_logger
from kafka_pipeline.observability.ops_server import ReadinessCheck
from kafka_pipeline.observability.tracing import carry, linked_span
from kafka_pipeline.offsets.log_identity import record_fingerprint
from kafka_pipeline.resilience.backoff import backoff_delay
from kafka_pipeline.runtime.app import ConsumerSpec, ConsumerWorker, RuntimeHandle
from kafka_pipeline.runtime.consumer import run_app
from kafka_pipeline.runtime.cycle_stats import CycleLine, CycleSnapshot
from kafka_pipeline.workers.writer.log_progress import LOG_METADATA_KEY, LogProgress, Verdict, app_id, log_description, progress_ids
from kafka_pipeline.workers.writer.metrics import WriterMetrics
from kafka_pipeline.workers.writer.row_conversion import BatchBuilder, SchemaMismatch
from kafka_pipeline.workers.writer.table_freshness import TableFreshness

log = get_logger("kafka_pipeline.entity_writer")


def table_writers(settings: Settings) -> dict[str, DeltaTableWriter]:
    """One writer per table of the contract, creating tables with the writer's properties."""
    return {
        name: DeltaTableWriter(
            spec,
            settings.delta.tables_root,
            storage_options=settings.delta.storage_options,
            writer_properties=writer_properties(),
            configuration=table_properties(name)[0],
            clock_configuration=table_properties(name)[1],
        )
        for name, spec in TABLES.items()
    }


def read_table(root: str, name: str, storage_options: Mapping[str, str] | None = None) -> pa.Table:
    """A whole entity table sorted by its merge key (empty with the contract's schema if absent)."""
    spec = TABLES[name]
    return read_delta_table(table_uri(root, name), list(spec.merge_keys), storage_options, schema=spec.schema)


@dataclass
class _Batch:
    """Consumed records waiting for a flush, in consumption order."""

    messages: list[tuple[Any, EntityRowsMessage]] = field(default_factory=list)
    undecodable: list[Letter] = field(default_factory=list)
    offsets: dict[TopicPartition, list[int]] = field(default_factory=dict)  # every offset of the batch
    last: dict[TopicPartition, Any] = field(default_factory=dict)  # the last record of each partition
    rows: int = 0
    started: float | None = None  # monotonic time the oldest pending record arrived

    def __len__(self) -> int:
        return len(self.messages) + len(self.undecodable)

    def last_offsets(self) -> dict[TopicPartition, int]:
        return {tp: offsets[-1] for tp, offsets in self.offsets.items() if offsets}

    def add(self, record: Any) -> None:
        if self.started is None:
            self.started = time.monotonic()
        tp = TopicPartition(record.topic, record.partition)
        self.offsets.setdefault(tp, []).append(record.offset)
        self.last[tp] = record
        try:
            if record.value is None:
                raise ValueError("message has no value")
            message = EntityRowsMessage.from_bytes(record.value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "message"
            self.undecodable.append(Letter(record, "InvalidMessage", f"not an entity-rows message: {where}: {first['msg']}"))
            return
        except ValueError as exc:
            self.undecodable.append(Letter(record, "InvalidMessage", f"not an entity-rows message: {_one_line(exc)}"))
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
        kept.offsets = {tp: o for tp, o in self.offsets.items() if tp not in partitions}
        kept.last = {tp: r for tp, r in self.last.items() if tp not in partitions}
        return kept


@dataclass
class FlushResult:
    tables: dict[str, TableWriteResult]
    dead: list[Letter]
    messages: int
    seconds: float = 0.0

    @property
    def rows_written(self) -> int:
        return sum(r.rows - r.skipped for r in self.tables.values())


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return safe_text(text[0], MESSAGE_LIMIT) if text else type(exc).__name__


@dataclass
class FlushRetry:
    """A failed flush: kept pending and tried again after a growing backoff; consumption waits
    meanwhile (`failing`: no room, the poll waits until the retry is due)."""

    base_s: float
    max_s: float
    failures: int = 0
    error: str | None = None
    retry_at: float = 0.0  # monotonic time the failed batch is tried again

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def failed(self, error: str) -> None:
        self.failures += 1
        self.error = error
        self.retry_at = time.monotonic() + backoff_delay(self.failures, self.base_s, self.max_s, floor=0.5)

    def succeeded(self) -> bool:
        """Back to normal; True when it was failing (consumption can resume)."""
        was_failing = self.failing
        self.failures, self.error = 0, None
        return was_failing

    def wait_s(self) -> float:
        return max(0.0, self.retry_at - time.monotonic())


def should_flush(batch: _Batch, *, max_rows: int, max_latency_s: float, now: float) -> bool:
    """The flush policy: enough rows pending, or the oldest pending message old enough."""
    if not len(batch):
        return False
    return batch.rows >= max_rows or now - (batch.started or now) >= max_latency_s


class EntityWriter(ConsumerWorker):
    """Consumes `settings.kafka.entity_rows_topic` into the Delta tables under
    `settings.delta.tables_root`. `await run(stop)` until `stop` is set; then it flushes,
    commits and returns (FlushFailed if the last batch could not be written)."""

    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        check_commit_safety(settings.delta.storage_options, single_writer_acknowledged=settings.delta.single_writer_acknowledged)
        self.settings = settings
        self.kafka = settings.kafka
        self.topic = settings.kafka.entity_rows_topic
        self.group_id = settings.writer.group_id
        self.registry = registry or CollectorRegistry()
        self.metrics = WriterMetrics.on(self.registry)
        self.freshness = TableFreshness(self.registry, settings.delta.tables_root, TABLES, settings.delta.storage_options)
        self.spec = ConsumerSpec(
            group_id=self.group_id,
            topics=[self.topic],
            ensure_topics=[self.topic, self.kafka.dlq_topic],
            max_poll_records=settings.writer.max_poll_records,
            stats_interval_s=settings.writer.stats_interval_s,
            registry=self.registry,
            made_by="write",
            before_scrape=[self.freshness.load_from_tables],
        )
        self.writers = table_writers(settings)
        self.progress = LogProgress(settings.kafka, self.group_id, self.topic, self.writers)
        self._unverified: set[TopicPartition] = set()  # assigned, progress not checked against the log yet
        self._refused: set[TopicPartition] = set()  # progress from another log: never consumed
        self._stored: dict[TopicPartition, int] = {}  # the highest offset the tables hold, per trusted partition
        self._verify_at = 0.0  # monotonic time an unverified partition is checked again
        self._verify_failures = 0
        self._verify_error: str | None = None  # why the last check could not be made
        self._verify_lock = asyncio.Lock()
        self._pool = ThreadPoolExecutor(max_workers=len(TABLES), thread_name_prefix="delta-merge")
        self.maintenance = WriterMaintenance(settings, self.registry)  # compaction, checkpoints, log cleanup
        self._lock = asyncio.Lock()  # a flush vs. the rebalance listener's flush
        self._batch = _Batch()
        self._retry = FlushRetry(settings.writer.flush_retry_base_s, settings.writer.flush_retry_max_s)
        self._consumed: dict[TopicPartition, int] = {}  # next offset to consume, per partition (for the lag)
        # running totals (also the cycle-stats counts)
        self.flushes = 0
        self.rows_written = 0
        self.dead_lettered = 0
        self.messages_consumed = 0
        self.records_skipped = 0

    @property
    def _assigned(self) -> set[TopicPartition]:
        return set() if self.handle is None else self.handle.assigned

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await run_app(self, self.settings, stop)
        finally:
            self._pool.shutdown(wait=True)

    # -- the app contract (kafka_pipeline.runtime.app) ---------------------------------------

    async def start(self, handle: RuntimeHandle) -> None:
        await super().start(handle)
        # maintenance runs in the member that owns partition 0 (one per group, no lease needed)
        self.maintenance.start(lambda: {tp.partition for tp in self._assigned})
        log.info("entity writer started", topic=self.topic, group=self.group_id, tables_root=self.settings.delta.tables_root)

    def room(self, tp: TopicPartition) -> int:
        """Nothing new while a failed batch waits for its retry, or once the batch is full; nothing
        of a partition whose stored progress is not (yet) known to come from the log it serves."""
        if self._retry.failing or tp in self._unverified or tp in self._refused:
            return 0
        return max(0, self.settings.writer.max_rows - self._batch.rows)

    async def add(self, tp: TopicPartition, record: ConsumerRecord[Any, Any]) -> None:
        self._consumed[tp] = record.offset + 1
        if record.offset <= self._stored.get(tp, -1):  # a replayed range: the tables skip its rows
            self.records_skipped += 1
            self.metrics.records_skipped.inc()
        self._batch.add(record)
        self.messages_consumed += 1
        self.metrics.messages.inc()

    def poll_timeout_s(self) -> float:
        if self._unverified:
            return max(0.0, self._verify_at - time.monotonic())
        if self._retry.failing:
            return self._retry.wait_s()
        if self._batch.started is None:
            return float("inf")
        return max(0.0, self.settings.writer.max_latency_s - (time.monotonic() - self._batch.started))

    async def flush(self) -> bool:
        """Write the pending batch when the policy says so (or a failed one once its backoff passed)."""
        now = time.monotonic()
        if self._unverified and now >= self._verify_at:
            await self._verify()
        if not self._retry.failing:
            writer = self.settings.writer
            if not should_flush(self._batch, max_rows=writer.max_rows, max_latency_s=writer.max_latency_s, now=now):
                return False
        elif self._retry.wait_s() > 0:
            return False
        async with self._lock:
            return await self._flush_locked()

    async def release(self, partitions: set[TopicPartition]) -> None:
        """Hand partitions over clean: flush what is pending; if that fails, drop their records
        (never committed, so the next owner reads them again)."""
        async with self._lock:
            if len(self._batch):
                await self._flush_locked()
                if len(self._batch):
                    self._batch = self._batch.without(partitions)
        for tp in partitions:
            self._consumed.pop(tp, None)
        self._unverified -= partitions
        self._refused -= partitions
        for tp in partitions:
            self._stored.pop(tp, None)

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        """Nothing of a new partition is consumed before its stored progress is checked against
        the log the broker serves (`writer.log_progress`)."""
        self._unverified |= partitions
        self._verify_at = 0.0
        if partitions:
            await self._verify()

    async def _verify(self) -> None:
        """Check the unverified partitions: resume the trusted ones, adopt or refuse the others.
        A broker or store that cannot answer now is asked again after a backoff. One check at a
        time (the rebalance listener and the loop both call it)."""
        if self._verify_lock.locked():
            return
        async with self._verify_lock:
            await self._verify_locked()

    async def _verify_locked(self) -> None:
        pending = sorted(self._unverified, key=lambda tp: tp.partition)
        if not pending:
            return
        adopt = self.settings.writer.adopt_new_log
        loop = asyncio.get_running_loop()
        try:
            verdicts = await self.progress.check([tp.partition for tp in pending])
            refused = [v for v in verdicts if not v.trusted]
            # the log the tables came from, as their commits name it: read before an adoption names the new one
            previous = await loop.run_in_executor(None, lambda: [self.progress.stored_log(v) for v in refused])
            if refused and adopt:
                identity = self.progress.identity
                assert identity is not None
                await loop.run_in_executor(None, self.progress.adopt, refused, identity)
        except Exception as exc:  # noqa: BLE001 - the partitions stay paused and are checked again
            self._verify_failures += 1
            writer = self.settings.writer  # equal jitter, as a failed flush: never in a tight loop
            self._verify_at = time.monotonic() + backoff_delay(self._verify_failures, writer.flush_retry_base_s, writer.flush_retry_max_s, floor=0.5)
            plain = storage_error(exc, self.settings.delta.tables_root)
            self._verify_error = f"{type(plain or exc).__name__}: {_one_line(plain or exc)}"
            log.warning("stored progress not checked yet; partitions wait", partitions=[tp.partition for tp in pending],
                        error=self._verify_error, attempts=self._verify_failures)
            return
        self._verify_failures, self._verify_error = 0, None
        self._unverified -= set(pending)
        for verdict, stored_log in zip(refused, previous, strict=True):
            if adopt:
                # from the log's first record, whatever the group committed on the log it replaced
                self.require_handle().rewind(TopicPartition(self.topic, verdict.partition), verdict.log.start)
                log.warning(f"adopted a new log (--adopt-new-log): {self.progress.mismatch(verdict, stored_log)}; its records are written "
                            "from the first", partition=verdict.partition)
                continue
            line = self.progress.refusal_line(verdict, stored_log)
            self._refused.add(TopicPartition(self.topic, verdict.partition))
            log.error(line)
            self.require_handle().fail(LogChanged(line))
        for verdict in verdicts:
            if verdict.trusted and verdict.stored_offset is not None:
                self._stored[TopicPartition(self.topic, verdict.partition)] = verdict.stored_offset
        _log_resumed([v for v in verdicts if v.trusted], self.topic)
        for verdict in verdicts:
            if verdict.trusted and verdict.written_through is not None:
                await self._skip_written(TopicPartition(self.topic, verdict.partition), verdict.written_through)
        self.require_handle().wake()

    async def _skip_written(self, tp: TopicPartition, written_through: int) -> None:
        """Read on after what every table holds already instead of reading it to skip it."""
        try:
            skipped_from = await self.require_handle().skip_to(tp, written_through + 1)
        except KafkaError as exc:  # the position is not known now: the records are read and skipped one by one
            log.warning("position unknown; records the tables hold are read and skipped", partition=tp.partition, error=str(exc))
            return
        if skipped_from is not None:
            skipped = written_through + 1 - skipped_from
            self.records_skipped += skipped
            self.metrics.records_skipped.inc(skipped)
            log.info(f"{tp.topic}[{tp.partition}]: offsets {skipped_from}..{written_through} are in every table already; read on from {written_through + 1}",
                     partition=tp.partition, skipped=skipped)

    async def drain(self, grace_s: float) -> None:
        """On stop: flush what is pending (retrying a failed batch a few times)."""
        for attempt in range(1, 4):
            if not len(self._batch):
                return
            async with self._lock:
                await self._flush_locked()
            if not self._retry.failing:
                return
            await asyncio.sleep(backoff_delay(attempt, self.settings.writer.flush_retry_base_s, 5.0))
        if len(self._batch):
            self.require_handle().fail(FlushFailed(f"stopping with {len(self._batch)} unwritten messages: {self._retry.error}"))

    async def close(self) -> None:
        await self.maintenance.stop()
        # the merge pool is shut down by run, after the runtime stopped
        log.info("entity writer stopped", flushes=self.flushes, rows=self.rows_written, dlq=self.dead_lettered)

    def readiness(self) -> Mapping[str, ReadinessCheck]:
        return {"flush": self._flush_ready, "progress": self._progress_ready}

    def _progress_ready(self) -> tuple[bool, dict[str, Any]]:
        """Every assigned partition resumes on the log its stored progress came from."""
        details = {
            "refused_partitions": sorted(tp.partition for tp in self._refused),
            "unchecked_partitions": sorted(tp.partition for tp in self._unverified),
            "records_skipped": self.records_skipped,
            "error": self._verify_error,
        }
        return not self._refused and not self._unverified, details

    def _flush_ready(self) -> tuple[bool, dict[str, Any]]:
        return not self._retry.failing, {"failures": self._retry.failures, "error": self._retry.error, "pending_rows": self._batch.rows}

    # -- flushing ---------------------------------------------------------------------------

    async def _flush_locked(self) -> bool:
        """Write the pending batch and mark its offsets done; on failure keep it pending (it is
        retried after a backoff, consumption paused meanwhile). True when offsets were finished."""
        batch = self._batch
        if not len(batch):  # nothing pending (a failed batch may have gone with a revoke)
            self._retry.succeeded()
            return False
        started = time.monotonic()
        try:
            with linked_span("claimx.writer.flush", (record.headers for record, _ in batch.messages)):  # linked to the events' spans
                result = await asyncio.get_running_loop().run_in_executor(None, carry(self._write_batch), batch)
            if result.dead:
                await self.require_handle().dead_letters.send(result.dead, group=self.group_id)
        except Exception as exc:  # noqa: BLE001 - every failure is retried; the batch stays pending
            self._retry.failed(f"{type(exc).__name__}: {_one_line(exc)}")
            self.metrics.flushes.labels("error").inc()
            log.error("flush failed; batch kept for retry", error=self._retry.error, messages=len(batch), failures=self._retry.failures)
            return False
        self._batch = _Batch()
        for tp, offsets in batch.offsets.items():
            for offset in offsets:
                self.require_handle().done(tp, offset)
        result.seconds = time.monotonic() - started
        self._record(result)
        if self._retry.succeeded():
            self.require_handle().wake()
        return True

    def _write_batch(self, batch: _Batch) -> FlushResult:
        """Runs in a worker thread: convert, dead-letter misfits, merge every table (concurrently)."""
        builder = BatchBuilder(max_future_skew_s=self.settings.enrich.max_future_skew_s)
        dead = list(batch.undecodable)
        for record, message in batch.messages:
            try:
                builder.add(message, app=app_id(self.group_id, record.topic, record.partition), offset=record.offset)
            except SchemaMismatch as exc:
                dead.append(Letter(record, "SchemaMismatch", str(exc), trace_id=message.trace_id))
            except Exception as exc:  # noqa: BLE001 - one message's rows never fail the batch: it is dead-lettered
                dead.append(Letter(record, type(exc).__name__, f"{type(exc).__name__}: {_one_line(exc)}", trace_id=message.trace_id))
        progress = {app_id(self.group_id, tp.topic, tp.partition): offset for tp, offset in batch.last_offsets().items()}
        companions, metadata = self._log_record(batch)
        now = datetime.now(UTC)
        futures = {
            name: self._pool.submit(carry(self.writers[name].write), rows, progress, now, companions=companions, metadata=metadata)
            for name, rows in builder.tables().items()
        }
        results: dict[str, TableWriteResult] = {}
        errors: list[BaseException] = []
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except Exception as exc:  # noqa: BLE001 - wait for every table, then fail the flush
                errors.append(exc)
                if not isinstance(exc, STORE_ERRORS):  # the store's own failure: the flush line says it once
                    log.error("table merge failed", table=name, error=f"{type(exc).__name__}: {_one_line(exc)}")
        if errors:
            raise errors[0]
        return FlushResult(tables=results, dead=dead, messages=len(batch))

    def _log_record(self, batch: _Batch) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
        """What each commit records with a partition's offset: the offset again under the log's
        identity, the fingerprint of the record at it, and the offset every table holds the
        partition through (`workers.writer.log_progress`)."""
        identity = self.progress.identity
        if identity is None:  # no partition was checked: nothing of the batch can be from a known log
            return {}, {}
        companions = {}
        for tp, record in batch.last.items():
            ids = progress_ids(self.group_id, tp.topic, tp.partition)
            companions[ids.offset] = {
                ids.log(identity): record.offset,
                ids.record: record_fingerprint(record.timestamp, record.key, record.value),
                ids.written: min(batch.offsets[tp]) - 1,
            }
        return companions, {LOG_METADATA_KEY: log_description(self.topic, identity)}

    def _record(self, result: FlushResult) -> None:
        self.flushes += 1
        self.rows_written += result.rows_written
        self.dead_lettered += len(result.dead)
        self.metrics.flushes.labels("ok").inc()
        self.metrics.flush_seconds.observe(result.seconds)
        self.freshness.committed(name for name, table in result.tables.items() if table.commits)
        for letter in result.dead:
            self.metrics.dead_letters.labels(letter.error_type).inc()
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

    # -- stats ------------------------------------------------------------------------------

    def lag(self) -> int | None:
        """Messages behind the high watermark over the assigned partitions (None: unknown yet),
        from the fetch responses' high watermark (tansu's end_offsets() can lag by a batch)."""
        if self.handle is None:
            return None
        total, known = 0, False
        for tp in list(self.handle.assigned):
            highwater = self.handle.highwater(tp)
            consumed = self._consumed.get(tp)
            if highwater is None or consumed is None:
                continue
            known = True
            total += max(0, highwater - consumed)
        return total if known else None

    cycle_line = CycleLine(headline="rows", unit="rows")

    def cycle_snapshot(self) -> CycleSnapshot:
        lag = self.lag()
        if lag is not None:
            self.metrics.lag.set(lag)
        return CycleSnapshot(
            parts={"rows": self.rows_written},
            counters={"flushes": self.flushes, "dlq": self.dead_lettered, "skipped": self.records_skipped},
            gauges={"lag": lag, "pending_rows": self._batch.rows},
        )


def _log_resumed(verdicts: list[Verdict], topic: str) -> None:
    """One line for the partitions the tables resume (or start) on the log served now."""
    if not verdicts:
        return
    held = ", ".join(f"{v.partition}@{'-' if v.stored_offset is None else v.stored_offset}" for v in verdicts)
    log.info(f"tables resume {topic} (partition@offset held): {held}", log=log_description(topic, verdicts[0].log.identity))
    for verdict in verdicts:
        if verdict.legacy:
            log.warning("stored progress predates log identities: taken as read from the log served now",
                        partition=verdict.partition, offset=verdict.stored_offset)


class LogChanged(WorkerFailed):
    """A partition's stored progress came from another log than the one the broker serves."""


class FlushFailed(WorkerFailed):
    """The writer stopped with a batch it could not write (it is re-read on the next start)."""
