"""The retry scheduler: sends each message on the retry topic back to its target topic once it is due.

Runs on the consumer runtime (`kafka_pipeline.runtime.consumer`), which does the Kafka part:
polling, pausing, rebalances, commits of the finished prefix of each partition, the drain. This
module is only the scheduler's own logic: a heap of messages ordered by due time.

- It consumes the retry topic in the consumer group `settings.retry.group_id`. A message's
  retry headers (see `kafka_pipeline.dead_letters.routing`) say where it goes (`retry-target-topic`) and
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
- An offset is finished once its message was forwarded (or dead-lettered) and the broker
  acknowledged the send; the runtime commits a partition only up to its finished prefix. A crash therefore loses nothing; it
  re-sends what was forwarded after the last commit (at-least-once; the workers' merges make a
  duplicate harmless).
- A `retry-due-at` later than now plus the longest configured delay is taken as that: nothing
  the retry topic carries can hold a message, or its partition's commit, longer.
- A message whose retry headers are missing or do not parse, or whose target topic does not
  exist, goes to the dead-letter topic with the reason. A send that fails is tried again a
  second later (`retry.send_retry_backoff_s`); its offset stays uncommitted until it succeeds.
- On a rebalance the revoked partitions' finished offsets are committed and their waiting
  messages dropped from memory: the new owner reads them again from the committed offset.
- `stop_event` ends the loop; what was finished is committed before the consumer leaves.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import Counter as Tally
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from kafka_pipeline.config import Settings
from kafka_pipeline.dead_letters.routing import InvalidRetryHeaders, allowed_retry_targets, attempt_of, now_ms, parse_retry_headers
from kafka_pipeline.dead_letters.sink import Letter
from kafka_pipeline.observability.logging import get_logger
from kafka_pipeline.observability.ops_server import ReadinessCheck
from kafka_pipeline.runtime.app import ConsumerSpec, ConsumerWorker, RuntimeHandle
from kafka_pipeline.runtime.consumer import run_app
from kafka_pipeline.runtime.cycle_stats import CycleLine, CycleSnapshot
from kafka_pipeline.workers.retry.metrics import SchedulerMetrics

log = get_logger(__name__)


@dataclass(order=True)
class _Entry:
    """A consumed retry message waiting for its due time (or for a failed send to be retried)."""

    due_ms: int
    seq: int
    tp: TopicPartition = field(compare=False)
    record: Any = field(compare=False)
    target: str = field(compare=False)


@dataclass
class SchedulerStats:
    forwarded: int = 0
    dead_lettered: int = 0
    send_errors: int = 0
    waiting: int = 0
    paused_partitions: int = 0
    released_on_rebalance: int = 0  # waiting messages dropped with revoked partitions (the new owner re-reads them)


class RetryScheduler(ConsumerWorker):
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
        self.max_waiting_per_partition = max_waiting_per_partition or settings.retry.max_waiting_per_partition
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = SchedulerMetrics.on(self.registry)
        self.stats = SchedulerStats()
        self.spec = ConsumerSpec(
            group_id=settings.retry.group_id,
            topics=[self.kafka.retry_topic],
            ensure_topics=[self.kafka.retry_topic, self.kafka.dlq_topic],
            max_poll_records=settings.retry.max_poll_records,
            stats_interval_s=stats_interval_s or settings.retry.stats_interval_s,
            registry=self.registry,
            made_by="retry-scheduler",
        )
        self.joined = asyncio.Event()  # set once the consumer group gave this scheduler its partitions
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._waiting: Tally[TopicPartition] = Tally()  # entries in the heap, per partition
        self._topics: set[str] = set()
        self._topics_checked_at = 0.0

    async def run(self, stop_event: asyncio.Event) -> None:
        await run_app(self, self.settings, stop_event)

    # -- the app contract (kafka_pipeline.runtime.app) ---------------------------------------

    async def start(self, handle: RuntimeHandle) -> None:
        await super().start(handle)
        log.info("retry scheduler started", retry_topic=self.kafka.retry_topic, group=self.settings.retry.group_id)

    def room(self, tp: TopicPartition) -> int:
        return self.max_waiting_per_partition - self._waiting[tp]

    def poll_timeout_s(self) -> float:
        if not self._heap:
            return float("inf")
        return max(0.0, (self._heap[0].due_ms - now_ms()) / 1000)

    async def add(self, tp: TopicPartition, record: ConsumerRecord[Any, Any]) -> None:
        """A consumed retry message waits for its due time; one with bad headers is dead-lettered."""
        try:
            info = parse_retry_headers(record.headers)
            if info.target_topic not in allowed_retry_targets(self.kafka):
                raise InvalidRetryHeaders(f"retry-target-topic {info.target_topic!r} is not a configured retry target")
            if not await self._topic_exists(info.target_topic):
                raise InvalidRetryHeaders(f"retry-target-topic {info.target_topic!r} does not exist")
        except InvalidRetryHeaders as exc:
            # only the enrichment worker retries: its input is the origin, whatever the headers claim
            letter = Letter(record, "InvalidRetryHeaders", str(exc), attempts=max(1, attempt_of(record.headers)), original_topic=self.kafka.events_topic)
            await self.require_handle().dead_letters.send([letter], group=self.settings.retry.group_id)
            self.stats.dead_lettered += 1
            self.metrics.dead_lettered.inc()
            self.require_handle().done(tp, record.offset)
            return
        # No retry is due later than the longest delay from now: a forged `retry-due-at` of 2^63-1
        # would hold the message, and its partition's commit, for ever.
        due_at = min(info.due_at_ms, now_ms() + round(max(self.settings.retry.delays_s) * 1000))
        self._push(_Entry(due_at, next(self._seq), tp, record, info.target_topic))

    async def flush(self) -> bool:
        """Forward everything that is due; True when some of it was acknowledged."""
        now = now_ms()
        due: list[_Entry] = []
        while self._heap and self._heap[0].due_ms <= now:
            entry = heapq.heappop(self._heap)
            self._waiting[entry.tp] -= 1
            due.append(entry)
        sent = await self._send(due) if due else 0
        self._update_gauges()
        return sent > 0

    async def release(self, partitions: set[TopicPartition]) -> None:
        """Revoked partitions: their waiting messages go (the new owner reads them again)."""
        kept = [entry for entry in self._heap if entry.tp not in partitions]
        released = len(self._heap) - len(kept)
        if released:
            heapq.heapify(kept)
            self._heap = kept
            self.stats.released_on_rebalance += released
        for tp in partitions:
            self._waiting.pop(tp, None)
        if partitions:
            log.info("retry partitions released", partitions=sorted(tp.partition for tp in partitions), released=released)
        self._update_gauges()

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        self.joined.set()
        log.info("retry partitions assigned", partitions=sorted(tp.partition for tp in partitions))

    async def drain(self, grace_s: float) -> None:
        return None  # nothing in flight between loop turns: waiting messages are re-read by the next owner

    async def close(self) -> None:
        log.info("retry scheduler stopped", forwarded=self.stats.forwarded, dead_lettered=self.stats.dead_lettered)

    def readiness(self) -> Mapping[str, ReadinessCheck]:
        return {"retry_scheduler": self._readiness}

    cycle_line = CycleLine(headline="handled", unit="messages")

    def cycle_snapshot(self) -> CycleSnapshot:
        next_due_s = round((self._heap[0].due_ms - now_ms()) / 1000, 1) if self._heap else None
        return CycleSnapshot(
            parts={"forwarded": self.stats.forwarded, "dead_lettered": self.stats.dead_lettered},
            counters={"send_errors": self.stats.send_errors},
            gauges={
                "waiting": len(self._heap), "next_due_in_s": next_due_s, "paused_partitions": self.stats.paused_partitions,
                "partitions": sorted(tp.partition for tp in (self.handle.assigned if self.handle else ())),
            },
        )

    # -- sending ------------------------------------------------------------------------------

    def _push(self, entry: _Entry) -> None:
        heapq.heappush(self._heap, entry)
        self._waiting[entry.tp] += 1

    async def _send(self, entries: list[_Entry]) -> int:
        """Send all entries, wait for the acknowledgements, mark the sent ones done; a failed
        send goes back into the heap, due again after `retry.send_retry_backoff_s`."""
        producer = self.require_handle().producer
        sends: list[asyncio.Future[Any] | BaseException] = []
        for entry in entries:
            try:
                sends.append(await producer.send(entry.target, entry.record.value, key=entry.record.key,
                                                 headers=list(entry.record.headers or ())))
            except KafkaError as exc:
                sends.append(exc)
        results = await asyncio.gather(*(s for s in sends if not isinstance(s, BaseException)), return_exceptions=True)
        outcomes = iter(results)
        now = now_ms()
        sent = 0
        for entry, delivery in zip(entries, sends, strict=True):
            outcome = delivery if isinstance(delivery, BaseException) else next(outcomes)
            if isinstance(outcome, BaseException):
                self.stats.send_errors += 1
                self.metrics.send_errors.inc()
                log.warning("send failed, trying again", topic=entry.target, offset=entry.record.offset,
                            error=f"{type(outcome).__name__}: {outcome}")
                retry_at = now + int(self.settings.retry.send_retry_backoff_s * 1000)
                self._push(_Entry(retry_at, next(self._seq), entry.tp, entry.record, entry.target))
                continue
            sent += 1
            self.require_handle().done(entry.tp, entry.record.offset)
            self.stats.forwarded += 1
            self.metrics.forwarded.labels(entry.target).inc()
            self.metrics.lateness.set(max(0, now - entry.due_ms) / 1000)
        return sent

    # -- helpers ----------------------------------------------------------------------------

    async def _topic_exists(self, topic: str) -> bool:
        if topic in self._topics:
            return True
        if time.monotonic() - self._topics_checked_at >= self.settings.retry.topic_refresh_s or not self._topics:
            try:
                self._topics = await self.require_handle().topics()
            except KafkaError as exc:
                # Cannot tell now: let the send decide (a failed send is tried again, never dropped).
                log.warning("could not list topics", error=str(exc))
                return True
            self._topics_checked_at = time.monotonic()
        return topic in self._topics

    def _update_gauges(self) -> None:
        self.stats.waiting = len(self._heap)
        self.stats.paused_partitions = len(self.handle.paused()) if self.handle is not None else 0
        self.metrics.waiting.set(self.stats.waiting)
        self.metrics.paused.set(self.stats.paused_partitions)

    def _readiness(self) -> tuple[bool, dict[str, Any]]:
        return True, {"waiting": len(self._heap), "forwarded": self.stats.forwarded}

