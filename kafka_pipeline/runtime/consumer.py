"""The consumer runtime: the one loop under every Kafka worker (see `runtime.app` for the contract).

Read top to bottom, `ConsumerRuntime.run(app, stop)`:

1. Start: the topics exist, the producer and the consumer (subscribed with the rebalance
   listener) are started, then the app, the ops server and the cycle-stats loop.
2. Loop until `stop` is set or the app reports a failure of its own:
   - pause the partitions the app has no room for, resume the others; when every partition is
     paused, wait for room (`wake`) and poll anyway: aiokafka leaves the group when `getmany`
     was not called for `max_poll_interval_ms`, and a paused partition returns nothing (what it
     had prefetched is dropped and fetched again after `resume`), so memory does not grow;
   - admit each record: track its offset, hand it to `app.add` inside the error boundary (an
     exception of any type dead-letters that record and the loop goes on); records beyond the
     app's room are handed back (`seek`) and fetched again later;
   - `app.flush()`, polling paused while it takes longer than `poll_while_busy_s`;
   - commit, per partition, up to the longest prefix of finished offsets: at once after a flush
     that finished offsets, otherwise every `commit_interval_s`.
3. Stop: `app.drain(grace)` while polling paused, commit, close everything.

Rebalances: before partitions go, `app.release` finishes or hands back their work, then what is
finished is committed and the partitions are forgotten (late `done` calls for them are ignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from prometheus_client import Counter

from kafka_pipeline.config import KafkaSettings, Settings, WorkerSettings
from kafka_pipeline.dead_letters.envelope import RecordView
from kafka_pipeline.dead_letters.sink import DeadLetterFailed, DeadLetterSink, letter_for_exception
from kafka_pipeline.dead_letters.undecodable import UNDECODABLE
from kafka_pipeline.kafka.clients import ensure_topics, make_consumer, make_producer
from kafka_pipeline.observability.logging import get_logger
from kafka_pipeline.observability.metrics import metric
from kafka_pipeline.observability.ops_server import OpsServer
from kafka_pipeline.offsets.consumer_lag import ConsumerLag
from kafka_pipeline.offsets.topic_offsets import high_watermarks
from kafka_pipeline.offsets.tracker import OffsetTracker
from kafka_pipeline.runtime.app import ConsumerApp, ConsumerSpec

log = get_logger(__name__)

T = TypeVar("T")

# The loop polls at least every poll_while_busy_s even while busy: a minute without a turn is a hang.
STALLED_AFTER_S = 60.0


@dataclass(frozen=True)
class KafkaClients:
    """How the runtime reaches the broker (a test hands in fakes)."""

    ensure_topics: Callable[[KafkaSettings, list[str]], Awaitable[None]] = ensure_topics
    make_producer: Callable[[KafkaSettings], Any] = make_producer
    make_consumer: Callable[..., Any] = make_consumer
    high_watermarks: Callable[[KafkaSettings, str], Awaitable[dict[int, int]]] = high_watermarks


class ConsumerRuntime:
    def __init__(self, kafka: KafkaSettings, worker: WorkerSettings, spec: ConsumerSpec, clients: KafkaClients | None = None) -> None:
        self.kafka = kafka
        self.worker = worker
        self.spec = spec
        self.clients = clients or KafkaClients()
        self.tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self.assigned: set[TopicPartition] = set()
        self.joined = asyncio.Event()  # set once the group gave this member its partitions
        self.running = False
        self.ops: OpsServer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._dead_letters: DeadLetterSink | None = None
        self.failure: BaseException | None = None  # the worker's own (`fail`): raised from `run`
        self.rejected = 0  # records the error boundary dead-lettered
        self._room_changed = asyncio.Event()
        self._last_turn = time.monotonic()  # the loop (or a poll while busy) last ran
        self._commit_lock = asyncio.Lock()
        self._app: ConsumerApp | None = None
        self._settling: set[TopicPartition] = set()  # assigned, their callback still running
        commits = metric(spec.registry, Counter, "kafka_pipeline_offset_commits", "Offset commits by consumer group and result", ["group", "result"])
        self._commits_ok = commits.labels(spec.group_id, "ok")
        self._commits_failed = commits.labels(spec.group_id, "failed")

    # --- what the app calls ------------------------------------------------------------------

    def done(self, tp: TopicPartition, offset: int) -> None:
        """The record at `offset` is finished: its effect is durable."""
        self.tracker.done(tp, offset)

    def wake(self) -> None:
        """The app has room again (a slot freed, a flush went through)."""
        self._room_changed.set()

    def rewind(self, tp: TopicPartition, offset: int) -> None:
        """Read `tp` again from `offset` (nothing of it may be in flight: the app gave it no room)."""
        assert self.consumer is not None, "the runtime is not started"
        self.consumer.seek(tp, offset)

    async def topics(self) -> set[str]:
        assert self.consumer is not None, "the runtime is not started"
        return set(await self.consumer.topics())

    async def skip_to(self, tp: TopicPartition, offset: int) -> int | None:
        assert self.consumer is not None, "the runtime is not started"
        if tp not in self.assigned:
            return None
        position = await self.consumer.position(tp)
        if position >= offset:
            return None
        self.tracker.skip_to(tp, offset)
        self.consumer.seek(tp, offset)
        self._room_changed.set()  # a commit is due
        return position

    @property
    def producer(self) -> AIOKafkaProducer:
        assert self._producer is not None, "the runtime is not started"
        return self._producer

    @property
    def dead_letters(self) -> DeadLetterSink:
        assert self._dead_letters is not None, "the runtime is not started"
        return self._dead_letters

    def fail(self, exc: BaseException) -> None:
        """The worker's own failure: stop consuming, commit what is done, raise it from `run`."""
        if self.failure is None:
            self.failure = exc

    def highwater(self, tp: TopicPartition) -> int | None:
        return None if self.consumer is None else self.consumer.highwater(tp)

    def paused(self) -> set[TopicPartition]:
        return set() if self.consumer is None else set(self.consumer.paused())

    @property
    def ops_port(self) -> int | None:
        return None if self.ops is None else self.ops.port

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self, app: ConsumerApp, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then drain and commit; raises the app's own failure."""
        self._app = app
        spec = self.spec
        stats_stop = asyncio.Event()
        stats_task: asyncio.Task[None] | None = None
        await self.clients.ensure_topics(self.kafka, list(spec.ensure_topics))  # the first contact: BrokerUnreachable in one line
        try:
            self._producer = self.clients.make_producer(self.kafka)
            self._dead_letters = DeadLetterSink(
                self._producer, self.kafka.dlq_topic, worker=self.worker.name, made_by=spec.made_by, registry=spec.registry
            )
            self.consumer = self.clients.make_consumer(self.kafka, group_id=spec.group_id, max_poll_records=spec.max_poll_records)
            self.consumer.subscribe(list(spec.topics), listener=_Listener(self))
            await self._producer.start()
            await app.start(self)
            await self.consumer.start()
            if self.worker.http_port:
                self.ops = OpsServer(
                    self.worker.http_host,
                    self.worker.http_port,
                    readiness={"consumer": self._consumer_ready, **app.readiness()},
                    routes=spec.routes,
                    registry=spec.registry,
                    # lag per partition, read from the consumer when /metrics is scraped
                    before_scrape=[ConsumerLag(self.consumer, spec.group_id, spec.registry).refresh, *spec.before_scrape],
                )
                await self.ops.start()
            self.running = True
            stats_task = asyncio.create_task(self._stats_loop(app, stats_stop), name="cycle-stats")
            log.info("consumer started", group=spec.group_id, topics=list(spec.topics), ops_port=self.ops.port if self.ops else None)
            await self._consume(app, stop)
            await self.while_polling(app.drain(self.worker.shutdown_grace_s))
        finally:
            self.running = False
            stats_stop.set()
            if stats_task is not None:
                await stats_task
                app.report_cycle()  # the last, partial cycle
            await self._close(app)
        if self.failure is not None:
            raise self.failure

    async def _close(self, app: ConsumerApp) -> None:
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.commit()
            await self.consumer.stop()  # leaves the group; the revoke callback finds nothing pending
        if self._producer is not None:
            await self._producer.stop()
        await app.close()
        if self.ops is not None:
            await self.ops.stop()

    # --- the loop ----------------------------------------------------------------------------

    async def _consume(self, app: ConsumerApp, stop: asyncio.Event) -> None:
        assert self.consumer is not None
        next_commit = time.monotonic() + self.worker.commit_interval_s
        while not stop.is_set() and self.failure is None:
            self._last_turn = time.monotonic()
            timeout_s = max(0.0, min(app.poll_timeout_s(), self.worker.poll_timeout_ms / 1000))
            if self._most_room(app) <= 0:
                # No room anywhere: wait for some before pausing anything (a resumed partition
                # has lost its prefetched records, so pausing for a moment costs a fetch).
                self._room_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room_changed.wait(), timeout_s)
            room = self._apply_room(app)
            try:
                if room > 0:
                    # never more than there is room for: records handed back by a seek are fetched again
                    records = await self.consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=min(room, self.spec.max_poll_records))
                else:  # still none: poll with every partition paused, so the group keeps this member
                    records = await self.consumer.getmany(timeout_ms=0)
            except UNDECODABLE:
                await self._pass_undecodable(app, timeout_s)
                records = {}
            await self._admit(app, records)
            finished = await self.while_polling(app.flush())
            if finished or time.monotonic() >= next_commit:
                await self.commit()
                next_commit = time.monotonic() + self.worker.commit_interval_s

    def _most_room(self, app: ConsumerApp) -> int:
        assert self.consumer is not None
        assignment = self.consumer.assignment()
        return max((app.room(tp) for tp in assignment), default=self.spec.max_poll_records)

    def _apply_room(self, app: ConsumerApp) -> int:
        """Pause the partitions without room, resume the others; the most room of any partition
        (a full poll's worth while nothing is assigned yet)."""
        assert self.consumer is not None
        paused = self.consumer.paused()
        assignment = self.consumer.assignment()
        most = 0 if assignment else self.spec.max_poll_records
        for tp in assignment:
            room = app.room(tp)
            most = max(most, room)
            if room > 0:
                if tp in paused:
                    self.consumer.resume(tp)
            elif tp not in paused:
                self.consumer.pause(tp)
        return most

    async def _admit(self, app: ConsumerApp, batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> None:
        """Hand fetched records to the app while it has room; seek back to the first it had none for."""
        assert self.consumer is not None
        for tp, records in batches.items():
            if tp not in self.assigned:  # fetched just before a revoke: the next owner reads it
                continue
            if tp in self._settling:  # fetched while being assigned: read again once settled
                if records:
                    self.consumer.seek(tp, records[0].offset)
                continue
            for record in records:
                if tp not in self.assigned:  # revoked while admitting (a dead letter awaited)
                    break
                if app.room(tp) <= 0:
                    self.consumer.seek(tp, record.offset)
                    break
                try:
                    self.tracker.track(tp, record.offset)
                except ValueError:  # handed out again (a fetch position reset): in flight or done already
                    log.warning("re-delivered message ignored", topic=tp.topic, partition=tp.partition, offset=record.offset)
                    continue
                try:
                    await app.add(tp, record)
                except asyncio.CancelledError:
                    raise
                except DeadLetterFailed as exc:  # the DLQ itself is gone: a failure of the worker
                    self.fail(exc)
                    return
                except Exception as exc:  # noqa: BLE001 - the error boundary: a message never stops the worker
                    await self.reject(tp, record, exc)

    async def _pass_undecodable(self, app: ConsumerApp, timeout_s: float) -> None:
        """A fetched record the client cannot decode (`runtime.undecodable`: a header name that is
        not UTF-8, a batch that does not decompress; aiokafka raises from `getmany`): find it and
        dead-letter it by position (every record of a batch that does not decompress, one by one).

        The failed `getmany` may have moved other partitions past records it never returned, so
        every partition goes back to the record after the last one admitted; then each is read
        alone, and the one that fails again is stepped through one record at a time: the
        consumer's position when it fails is the undecodable record. Its letter has the
        position and the client's error; its bytes are not reachable through the client."""
        assert self.consumer is not None
        await self._rewind()
        for tp in sorted(self.consumer.assignment() - self.consumer.paused(), key=lambda tp: (tp.topic, tp.partition)):
            while self.failure is None and tp in self.assigned and app.room(tp) > 0:
                start = await self.consumer.position(tp)
                try:
                    batch = await self.consumer.getmany(tp, timeout_ms=int(timeout_s * 1000), max_records=1)
                except UNDECODABLE as exc:
                    offset = await self.consumer.position(tp)
                    log.error("record the client cannot decode; dead-lettering it by position", topic=tp.topic, partition=tp.partition, offset=offset)
                    self.tracker.track(tp, offset)
                    await self.reject(tp, RecordView(tp.topic, tp.partition, offset, None, None), exc)
                    self.consumer.seek(tp, offset + 1)
                    break
                if not batch:
                    break
                await self._admit(app, batch)
                if await self.consumer.position(tp) <= start:
                    break

    async def _rewind(self) -> None:
        """Every assigned partition back to the record after the last one admitted (the
        committed offset when none was): what a failed `getmany` consumed unreturned is read again."""
        assert self.consumer is not None
        for tp in self.consumer.assignment():
            resume = self.tracker.next_offset(tp)
            if resume is None:
                resume = await self.consumer.committed(tp)
            if resume is None:
                await self.consumer.seek_to_beginning(tp)  # auto_offset_reset is earliest
            else:
                self.consumer.seek(tp, resume)

    async def reject(self, tp: TopicPartition, record: Any, exc: BaseException, *, trace_id: str | None = None) -> bool:
        """The error boundary: dead-letter `record` with `exc`'s type and message, mark it done.

        A dead letter the broker does not take is a failure of the worker: the record stays
        unfinished (nothing at or after it is committed), the runtime stops, and False is returned."""
        log.error("message handling raised; dead-lettering it", error_type=type(exc).__name__, partition=record.partition, offset=record.offset)
        try:
            await self.dead_letters.send([letter_for_exception(record, exc, trace_id=trace_id)], group=self.spec.group_id)
        except DeadLetterFailed as failed:
            self.fail(failed)
            return False
        self.rejected += 1
        self.done(tp, record.offset)
        return True

    async def while_polling(self, work: Awaitable[T]) -> T:
        """Await `work`; past `poll_while_busy_s`, poll with every partition paused meanwhile so
        the group keeps this member. Records returned by that poll (only a partition assigned
        between the pause and the poll has any) are handed back to be fetched again."""
        task = asyncio.ensure_future(work)
        if self.consumer is None:
            return await task
        paused = False
        while not (await asyncio.wait({task}, timeout=self.worker.poll_while_busy_s))[0]:
            self.consumer.pause(*self.consumer.assignment())
            paused = True
            self._last_turn = time.monotonic()
            try:
                fetched = await self.consumer.getmany(timeout_ms=0)
            except UNDECODABLE:  # a partition assigned meanwhile: the main loop finds the record
                await self._rewind()
                continue
            for tp, records in fetched.items():
                if records:
                    self.consumer.seek(tp, records[0].offset)
        if paused:
            self.consumer.resume(*self.consumer.assignment())
        return await task

    # --- commits and rebalances --------------------------------------------------------------

    async def commit(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Commit the finished prefix of `partitions` (default: every assigned one). A failed
        commit is logged and counted, never raised: the next owner re-reads from the last one."""
        if self.consumer is None:
            return
        async with self._commit_lock:
            chosen = self.assigned if partitions is None else set(partitions)
            positions = self.tracker.committable(chosen)
            if not positions:
                return
            try:
                await self.consumer.commit(positions)
            except (CommitFailedError, IllegalStateError, KafkaError) as exc:
                self._commits_failed.inc()
                log.warning("offset commit failed; the next owner re-reads from the last commit", error=str(exc))
                return
            self._commits_ok.inc()
            self.tracker.mark_committed(positions)

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        assert self._app is not None
        self.assigned -= revoked
        await self._app.release(revoked)
        await self.commit(revoked)
        self.tracker.drop(revoked)
        if revoked:
            log.info("partitions revoked", partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        assert self._app is not None
        self.assigned |= assigned
        self.joined.set()
        log.info("partitions assigned", partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        # nothing of these partitions reaches the app before their position is checked and the
        # app has taken them in (a fetch may return records while this callback awaits)
        self._settling |= assigned
        try:
            await self._check_committed(assigned)
            await self._app.assigned(assigned)
        finally:
            self._settling -= assigned

    async def _check_committed(self, assigned: set[TopicPartition]) -> None:
        """A committed offset outside the log (the log was truncated, recreated or went backwards)
        is said once, with both offsets, and the partition is read from the log's start: what
        Apache Kafka's reset would do silently, and what tansu would never do (it answers an
        offset past the end with nothing, forever)."""
        assert self.consumer is not None
        committed: dict[TopicPartition, int] = {}
        for tp in assigned:
            try:
                offset = await self.consumer.committed(tp)
            except KafkaError:
                continue  # nothing to compare with: the fetch position stays the broker's
            if offset is not None:
                committed[tp] = offset
        if not committed:
            return
        try:
            starts = await self.consumer.beginning_offsets(list(committed))
            ends: dict[str, dict[int, int]] = {}
            for topic in {tp.topic for tp in committed}:
                ends[topic] = await self.clients.high_watermarks(self.kafka, topic)
        except KafkaError as exc:
            log.warning("partition bounds unknown; committed offsets not checked", error=f"{type(exc).__name__}: {exc}")
            return
        for tp, offset in committed.items():
            start, end = starts[tp], ends[tp.topic].get(tp.partition, 0)
            if start <= offset <= end:
                continue
            log.warning(
                "committed offset out of range: the log " + ("went backwards" if offset > end else "no longer holds it")
                + "; reading the partition from its start",
                group=self.spec.group_id, partition=f"{tp.topic}[{tp.partition}]", committed=offset, log_start=start, log_end=end,
            )
            self.consumer.seek(tp, start)

    # --- observability -----------------------------------------------------------------------

    def _consumer_ready(self) -> tuple[bool, dict[str, Any]]:
        paused = len(self.consumer.paused()) if self.consumer is not None else 0
        stalled = time.monotonic() - self._last_turn > STALLED_AFTER_S
        ready = self.running and self.joined.is_set() and not stalled
        details = {"joined": self.joined.is_set(), "assigned_partitions": len(self.assigned), "paused_partitions": paused, "stalled": stalled}
        return ready, details

    async def _stats_loop(self, app: ConsumerApp, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.spec.stats_interval_s)
            except TimeoutError:
                app.report_cycle()


async def run_app(app: ConsumerApp, settings: Settings, stop: asyncio.Event) -> None:
    """Run `app` on a runtime of its own until `stop` is set; raises the app's own failure."""
    await ConsumerRuntime(settings.kafka, settings.worker, app.spec).run(app, stop)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, runtime: ConsumerRuntime) -> None:
        self.runtime = runtime

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.runtime._on_revoked(set(revoked))  # noqa: SLF001

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.runtime._on_assigned(set(assigned))  # noqa: SLF001
