"""Consumer lag per group and partition, as Prometheus gauges, refreshed at scrape time.

Every worker hands `ConsumerLag(consumer, group, registry).refresh` to its OpsServer, which
awaits it before rendering `/metrics`; nothing runs between scrapes and nothing is left to
stop. Per assigned partition of the worker:

- `kafka_consumer_end_offset{group,topic,partition}`: the high watermark of the last fetch
  response (what the broker said the partition holds);
- `kafka_consumer_committed_offset{group,topic,partition}`: the group's committed offset, the
  point a replacement would restart from (the consumed position before the first commit);
- `kafka_consumer_lag_messages{group,topic,partition}`: end minus committed, never negative.

Lag is counted from the committed offset, not the consumed position: a message in flight is
still owed, and an operator comparing with `kafka-pipeline status` sees the same number.
Partitions a worker gave away drop out of its series on the next scrape (the new owner reports
them), so the labels stay bounded by the topics' partition counts.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from kafka_pipeline.observability.metrics import metric

LABELS = ["group", "topic", "partition"]
COMMITTED_TIMEOUT_S = 1.0  # a scrape must answer quickly; a slow coordinator costs one stale value


@dataclass(frozen=True)
class _Gauges:
    lag: Gauge
    committed: Gauge
    end: Gauge




def _gauges(registry: CollectorRegistry) -> _Gauges:
    return _Gauges(
        lag=metric(registry, Gauge, "kafka_consumer_lag_messages", "Messages after the group's committed offset, per partition.", LABELS),
        committed=metric(registry, Gauge, "kafka_consumer_committed_offset", "The group's committed offset, per partition.", LABELS),
        end=metric(registry, Gauge, "kafka_consumer_end_offset", "The partition's high watermark at the last fetch.", LABELS),
    )


class ConsumerLag:
    """Sets the lag gauges of `consumer` (a member of `group`) for the partitions it owns."""

    def __init__(self, consumer: AIOKafkaConsumer, group: str, registry: CollectorRegistry = REGISTRY) -> None:
        self.consumer = consumer
        self.group = group
        self.gauges = _gauges(registry)
        self._reported: set[TopicPartition] = set()
        self.last: dict[TopicPartition, int] = {}  # lag per partition at the last refresh

    async def refresh(self) -> None:
        try:
            assigned = sorted(self.consumer.assignment())
        except IllegalStateError:
            assigned = []
        committed = await asyncio.gather(*(self._committed(tp) for tp in assigned))
        current: dict[TopicPartition, tuple[int, int]] = {}
        for tp, done in zip(assigned, committed, strict=True):
            end = self.consumer.highwater(tp)
            if end is not None and done is not None:
                current[tp] = (done, end)
        # no await from here on: a concurrent scrape never sees a half-updated set
        for tp in self._reported - current.keys():
            for gauge in (self.gauges.lag, self.gauges.committed, self.gauges.end):
                with contextlib.suppress(KeyError):
                    gauge.remove(*self._labels(tp))
        for tp, (done, end) in current.items():
            labels = self._labels(tp)
            self.gauges.committed.labels(*labels).set(done)
            self.gauges.end.labels(*labels).set(end)
            self.gauges.lag.labels(*labels).set(max(0, end - done))
        self._reported = set(current)
        self.last = {tp: max(0, end - done) for tp, (done, end) in current.items()}

    async def _committed(self, tp: TopicPartition) -> int | None:
        """The committed offset; the consumed position when the group committed nothing yet."""
        try:
            done: Any = await asyncio.wait_for(self.consumer.committed(tp), COMMITTED_TIMEOUT_S)
            if done is None:
                done = await asyncio.wait_for(self.consumer.position(tp), COMMITTED_TIMEOUT_S)
        except (asyncio.TimeoutError, KafkaError, IllegalStateError):
            return None
        return int(done)

    def _labels(self, tp: TopicPartition) -> tuple[str, str, str]:
        return (self.group, tp.topic, str(tp.partition))
