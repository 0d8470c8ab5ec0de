"""The retry scheduler: sends each message on the retry topic back to its target topic once it is due.

Read top to bottom: `RetryScheduler.run` is the whole worker.

- It consumes the retry topic in the consumer group `settings.retry.group_id`. A message's
  retry headers (see `kafka_pipeline.retry.routing`) say where it goes (`retry-target-topic`) and
  not before when (`retry-due-at`, epoch ms). The message is forwarded with its key, value and
  *all* its headers, retry headers included: the worker that consumes it from the target topic
  reads its attempt number with `attempt_of(record.headers)`.
- Messages that are not due yet wait in a heap ordered by due time. One retry partition holds
  messages with different delays, so it is only roughly ordered by due time; the heap lets a
  30 s retry pass a 1800 s one that was written before it. Memory is bounded: a partition with
  `max_waiting_per_partition` messages waiting takes no more (the consumer seeks back to the
  first one it did not take) and is paused until some of them were forwarded; aiokafka drops
  what it prefetched for a paused partition. When a partition is full of far-off messages, a
  sooner one behind them waits for them (it is late, never early).
- An offset is committed only when it and every earlier offset of its partition were forwarded
  (or dead-lettered) and the broker acknowledged the send. A crash therefore loses nothing; it
  re-sends what was forwarded after the last commit (at-least-once; the workers' merges make a
  duplicate harmless).
- A message whose retry headers are missing or do not parse, or whose target topic does not
  exist, goes to the dead-letter topic with the reason. A send that fails is tried again a
  second later; its offset stays uncommitted until it succeeds.
- On a rebalance the revoked partitions' finished offsets are committed and their waiting
  messages dropped from memory: the new owner reads them again from the committed offset.
- `stop_event` ends the loop; what was finished is committed before the consumer leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge

from kafka_pipeline.config import Settings
from kafka_pipeline.runtime.dead_letter import DeadLetter, dead_letter_for
from kafka_pipeline.runtime.kafka import connection_kwargs, ensure_topics, make_consumer, make_producer
from kafka_pipeline.runtime.logging import get_logger
from kafka_pipeline.runtime.consumer_lag import ConsumerLag
from kafka_pipeline.runtime.ops_server import OpsServer
from kafka_pipeline.retry.routing import InvalidRetryHeaders, attempt_of, now_ms, parse_retry_headers

log = get_logger(__name__)

SEND_RETRY_BACKOFF_MS = 1_000  # a failed forward or dead-letter send is tried again after this
MAX_POLL_WAIT_MS = 500  # longest wait in one poll, so a stop or a due message is noticed quickly
TOPIC_REFRESH_S = 10.0  # an unknown target topic is looked up again at most this often


@dataclass(order=True)
class _Entry:
    """A consumed retry message waiting for its due time (or for a failed send to be retried)."""

    due_ms: int
    seq: int
    tp: TopicPartition = field(compare=False)
    record: Any = field(compare=False)
    target: str = field(compare=False)
    dead_letter: DeadLetter | None = field(default=None, compare=False)  # set: goes to the DLQ


@dataclass
class _PartitionProgress:
    """Which consumed offsets of one partition are finished, and so how far it may commit."""

    outstanding: deque[int] = field(default_factory=deque)  # read, in offset order
    finished: set[int] = field(default_factory=set)  # read and finished, still in `outstanding`
    next_offset: int | None = None  # one past the last offset read
    committed: int | None = None  # last offset committed by this process
    waiting: int = 0  # entries in the heap

    def read(self, offset: int) -> bool:
        """Record a consumed offset; False for one seen already (a re-fetch after a rebalance)."""
        if self.next_offset is not None and offset < self.next_offset:
            return False
        self.outstanding.append(offset)
        self.next_offset = offset + 1
        return True

    def finish(self, offset: int) -> None:
        self.finished.add(offset)

    def commit_point(self) -> int | None:
        """The offset to commit: everything below it is finished."""
        while self.outstanding and self.outstanding[0] in self.finished:
            self.finished.discard(self.outstanding.popleft())
        if self.outstanding:
            return self.outstanding[0]
        return self.next_offset


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.forwarded = Counter("retry_scheduler_forwarded", "Retry messages sent back to their target topic",
                                 ["target"], registry=registry)
        self.dead_lettered = Counter("retry_scheduler_dead_lettered", "Retry messages sent to the dead-letter topic",
                                     registry=registry)
        self.send_errors = Counter("retry_scheduler_send_errors", "Failed sends, tried again", registry=registry)
        self.waiting = Gauge("retry_scheduler_waiting", "Retry messages held until they are due", registry=registry)
        self.paused = Gauge("retry_scheduler_paused_partitions", "Retry partitions paused: too many waiting",
                            registry=registry)
        self.lateness = Gauge("retry_scheduler_last_forward_lateness_seconds",
                              "How long after its due time the last message was forwarded", registry=registry)


@dataclass
class SchedulerStats:
    forwarded: int = 0
    dead_lettered: int = 0
    send_errors: int = 0
    waiting: int = 0
    paused_partitions: int = 0
    released_on_rebalance: int = 0  # waiting messages dropped with revoked partitions (the new owner re-reads them)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, scheduler: RetryScheduler) -> None:
        self.scheduler = scheduler

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.scheduler._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("retry partitions assigned", partitions=sorted(tp.partition for tp in assigned))
        self.scheduler.joined.set()


class RetryScheduler:
    """Forwards due retry messages; `await RetryScheduler(settings).run(stop_event)`."""

    def __init__(
        self,
        settings: Settings,
        *,
        max_waiting_per_partition: int | None = None,
        stats_interval_s: float | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """The keyword arguments override `settings.retry` (tests use small ones)."""
        if max_waiting_per_partition is not None and max_waiting_per_partition < 1:
            raise ValueError("max_waiting_per_partition must be at least 1")
        self.settings = settings
        self.kafka = settings.kafka
        self.worker = settings.worker.name
        self.max_waiting_per_partition = max_waiting_per_partition or settings.retry.max_waiting_per_partition
        self.stats_interval_s = stats_interval_s or settings.retry.stats_interval_s
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = _Metrics(self.registry)
        self.stats = SchedulerStats()
        self.ops: OpsServer | None = None
        self.joined = asyncio.Event()  # set once the consumer group gave this scheduler its partitions
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._progress: dict[TopicPartition, _PartitionProgress] = {}
        self._lock = asyncio.Lock()  # the main loop's batch vs. the rebalance listener
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._topics: set[str] = set()
        self._topics_checked_at = 0.0
        self._last_loop = 0.0
        self._running = False

    # -- the worker -------------------------------------------------------------------------

    async def run(self, stop_event: asyncio.Event) -> None:
        await ensure_topics(self.kafka, [self.kafka.retry_topic, self.kafka.dlq_topic])
        self._producer = make_producer(self.kafka)
        self._consumer = make_consumer(self.kafka, group_id=self.settings.retry.group_id, max_poll_records=500)
        self._admin = AIOKafkaAdminClient(**connection_kwargs(self.kafka))
        try:
            await self._producer.start()
            await self._admin.start()
            self._consumer.subscribe([self.kafka.retry_topic], listener=_Rebalance(self))
            await self._consumer.start()
            if self.settings.worker.http_port:
                self.ops = OpsServer(self.settings.worker.http_host, self.settings.worker.http_port,
                                     readiness={"retry_scheduler": self._readiness}, registry=self.registry,
                                     before_scrape=[ConsumerLag(self._consumer, self.settings.retry.group_id, self.registry).refresh])
                await self.ops.start()
            self._running = True
            log.info("retry scheduler started", retry_topic=self.kafka.retry_topic, group=self.settings.retry.group_id,
                     ops_port=self.ops.port if self.ops else None)
            next_stats = time.monotonic() + self.stats_interval_s
            while not stop_event.is_set():
                self._last_loop = time.monotonic()
                self._apply_backpressure()
                batch = await self._consumer.getmany(timeout_ms=self._poll_wait_ms(), max_records=500)
                # No await between getmany and taking the lock: the records belong to the current
                # assignment (aiokafka holds records back while a rebalance is in progress).
                async with self._lock:
                    await self._handle(batch)
                if time.monotonic() >= next_stats:
                    self._log_stats()
                    next_stats = time.monotonic() + self.stats_interval_s
        finally:
            self._running = False
            await self._shutdown()

    async def _handle(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Take in a batch, send everything that is due, commit what is finished."""
        assert self._consumer is not None
        now = now_ms()
        assigned = self._assignment()
        for tp, records in batch.items():
            if tp not in assigned:
                continue
            progress = self._progress.setdefault(tp, _PartitionProgress())
            for record in records:
                if progress.waiting >= self.max_waiting_per_partition:
                    # Full: read this record again once the partition is resumed.
                    self._consumer.seek(tp, record.offset)
                    break
                if progress.read(record.offset):
                    await self._admit(tp, record, now)
        due: list[_Entry] = []
        while self._heap and self._heap[0].due_ms <= now:
            entry = heapq.heappop(self._heap)
            self._progress[entry.tp].waiting -= 1
            due.append(entry)
        if due:
            await self._send(due)
        await self._commit(self._progress.keys())
        self._update_gauges()

    async def _admit(self, tp: TopicPartition, record: Any, now: int) -> None:
        """Decide what a consumed retry message is: waiting, or (bad headers) a dead letter."""
        try:
            info = parse_retry_headers(record.headers)
            if info.target_topic == self.kafka.retry_topic:
                raise InvalidRetryHeaders(f"retry-target-topic is the retry topic {self.kafka.retry_topic} itself")
            if not await self._topic_exists(info.target_topic):
                raise InvalidRetryHeaders(f"retry-target-topic {info.target_topic!r} does not exist")
        except InvalidRetryHeaders as exc:
            target = _header_text(record.headers, "retry-target-topic") or record.topic
            letter = dead_letter_for(
                record, error_type="InvalidRetryHeaders", error_message=str(exc), category="permanent",
                worker=self.worker, attempts=max(1, attempt_of(record.headers)), original_topic=target,
            )
            log.warning("retry message dead-lettered", partition=tp.partition, offset=record.offset, reason=str(exc))
            self._push(_Entry(now, next(self._seq), tp, record, self.kafka.dlq_topic, letter))
            return
        self._push(_Entry(info.due_at_ms, next(self._seq), tp, record, info.target_topic))

    def _push(self, entry: _Entry) -> None:
        heapq.heappush(self._heap, entry)
        self._progress[entry.tp].waiting += 1

    async def _send(self, entries: list[_Entry]) -> None:
        """Send all entries, wait for the acknowledgements, mark the sent ones finished."""
        assert self._producer is not None
        sends: list[asyncio.Future[Any] | BaseException] = []
        for entry in entries:
            try:
                if entry.dead_letter is not None:
                    sends.append(await self._producer.send(entry.target, entry.dead_letter.to_bytes(), key=entry.record.key))
                else:
                    sends.append(await self._producer.send(entry.target, entry.record.value, key=entry.record.key,
                                                           headers=list(entry.record.headers or ())))
            except KafkaError as exc:
                sends.append(exc)
        results = await asyncio.gather(*(s for s in sends if not isinstance(s, BaseException)), return_exceptions=True)
        outcomes = iter(results)
        now = now_ms()
        for entry, sent in zip(entries, sends, strict=True):
            outcome = sent if isinstance(sent, BaseException) else next(outcomes)
            if isinstance(outcome, BaseException):
                self.stats.send_errors += 1
                self.metrics.send_errors.inc()
                log.warning("send failed, trying again", topic=entry.target, offset=entry.record.offset,
                            error=f"{type(outcome).__name__}: {outcome}")
                self._push(_Entry(now + SEND_RETRY_BACKOFF_MS, next(self._seq), entry.tp, entry.record,
                                  entry.target, entry.dead_letter))
                continue
            progress = self._progress.get(entry.tp)
            if progress is not None:
                progress.finish(entry.record.offset)
            if entry.dead_letter is not None:
                self.stats.dead_lettered += 1
                self.metrics.dead_lettered.inc()
            else:
                self.stats.forwarded += 1
                self.metrics.forwarded.labels(entry.target).inc()
                self.metrics.lateness.set(max(0, now - entry.due_ms) / 1000)

    async def _commit(self, partitions: Iterable[TopicPartition]) -> None:
        assert self._consumer is not None
        offsets: dict[TopicPartition, int] = {}
        for tp in list(partitions):
            progress = self._progress.get(tp)
            point = progress.commit_point() if progress is not None else None
            if progress is not None and point is not None and point != progress.committed:
                offsets[tp] = point
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced under us: the new owner re-reads from the last commit.
            log.warning("commit failed after a rebalance", error=str(exc))
            return
        for tp, offset in offsets.items():
            self._progress[tp].committed = offset

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:
            with contextlib.suppress(KafkaError):
                await self._commit(tp for tp in revoked if tp in self._progress)
            for tp in revoked:
                self._progress.pop(tp, None)
            kept = [entry for entry in self._heap if entry.tp not in revoked]
            released = len(self._heap) - len(kept)
            if released:
                heapq.heapify(kept)
                self._heap = kept
                self.stats.released_on_rebalance += released
            if revoked:
                log.info("retry partitions revoked", partitions=sorted(tp.partition for tp in revoked), released=released)
            self._update_gauges()

    async def _shutdown(self) -> None:
        async with self._lock:
            if self._consumer is not None:
                try:
                    await self._commit(self._progress.keys())
                except KafkaError as exc:
                    log.warning("final commit failed", error=str(exc))
        self._log_stats()
        for closer in (self._consumer, self._producer, self._admin):
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer.close() if isinstance(closer, AIOKafkaAdminClient) else await closer.stop()
        if self.ops is not None:
            await self.ops.stop()
        log.info("retry scheduler stopped", forwarded=self.stats.forwarded, dead_lettered=self.stats.dead_lettered)

    # -- helpers ----------------------------------------------------------------------------

    def _assignment(self) -> set[TopicPartition]:
        assert self._consumer is not None
        return set(self._consumer.assignment())

    def _apply_backpressure(self) -> None:
        assert self._consumer is not None
        paused = self._consumer.paused()
        for tp in self._assignment():
            progress = self._progress.get(tp)
            full = progress is not None and progress.waiting >= self.max_waiting_per_partition
            if full and tp not in paused:
                self._consumer.pause(tp)
            elif not full and tp in paused:
                self._consumer.resume(tp)

    def _poll_wait_ms(self) -> int:
        if not self._heap:
            return MAX_POLL_WAIT_MS
        return max(0, min(MAX_POLL_WAIT_MS, self._heap[0].due_ms - now_ms()))

    async def _topic_exists(self, topic: str) -> bool:
        if topic in self._topics:
            return True
        if time.monotonic() - self._topics_checked_at >= TOPIC_REFRESH_S or not self._topics:
            assert self._admin is not None
            try:
                self._topics = set(await self._admin.list_topics())
            except KafkaError as exc:
                # Cannot tell now: let the send decide (a failed send is tried again, never dropped).
                log.warning("could not list topics", error=str(exc))
                return True
            self._topics_checked_at = time.monotonic()
        return topic in self._topics

    def _update_gauges(self) -> None:
        self.stats.waiting = len(self._heap)
        self.stats.paused_partitions = len(self._consumer.paused()) if self._consumer is not None else 0
        self.metrics.waiting.set(self.stats.waiting)
        self.metrics.paused.set(self.stats.paused_partitions)

    def _readiness(self) -> tuple[bool, dict[str, Any]]:
        stalled = time.monotonic() - self._last_loop > 60
        details = {"joined": self.joined.is_set(), "waiting": len(self._heap), "forwarded": self.stats.forwarded}
        return self._running and self.joined.is_set() and not stalled, details

    def _log_stats(self) -> None:
        next_due_s = round((self._heap[0].due_ms - now_ms()) / 1000, 1) if self._heap else None
        log.info("retry scheduler stats", forwarded=self.stats.forwarded, dead_lettered=self.stats.dead_lettered,
                 waiting=len(self._heap), next_due_in_s=next_due_s, paused_partitions=self.stats.paused_partitions,
                 send_errors=self.stats.send_errors,
                 partitions=sorted(tp.partition for tp in self._progress))


def _header_text(headers: Iterable[tuple[str, bytes]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name and value:
            with contextlib.suppress(UnicodeDecodeError):
                return value.decode("utf-8").strip() or None
    return None
