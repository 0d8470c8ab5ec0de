"""The contract between the consumer runtime and a worker (a `ConsumerApp`), one way.

The runtime owns everything Kafka: the clients, the poll loop, pausing, rebalances, offset
tracking, commits, the drain on stop, the dead-letter sink, the ops server and the cycle-stats
loop. A worker owns only its logic. It tells the runtime what to consume (`spec`), and the
runtime calls it, in the spirit of a sink with a checkpoint (add -> flush -> commit only what the
flush made durable):

- `start(handle)`: the clients are up; `handle` (a `RuntimeHandle`) is all of the runtime the
  worker may use from now on.
- `room(tp)`: how many more records of `tp` the worker takes now; 0 pauses the partition.
- `add(tp, record)`: take one record. The runtime tracked its offset before; the worker calls
  `handle.done(tp, offset)` once the record's effect is durable. An exception raised here is the
  record's failure, never the worker's: the runtime dead-letters the record and goes on.
- `flush()`: called once per loop turn; make durable what is due. True when it finished
  offsets (the runtime then commits at once).
- `assigned(partitions)` / `release(partitions)`: partitions arrive / are being taken away
  (finish their work or leave it undone: the next owner reads it again).
- `drain(grace_s)`, `close()`: stopping.

A failure of the worker itself (broker gone, storage down for good, a log that is not the
tables') goes the other way through `handle.fail(exc)`: the runtime stops consuming, commits
what is done and raises it from `run`. The runtime never writes into the worker, and the worker
never touches the Kafka clients beyond the producer the handle lends it.

`ConsumerWorker` is the base class with the defaults every worker shares.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry
from starlette.routing import BaseRoute

from kafka_pipeline.dead_letters.envelope import Maker
from kafka_pipeline.dead_letters.sink import DeadLetterSink
from kafka_pipeline.observability.ops_server import ReadinessCheck
from kafka_pipeline.runtime.cycle_stats import CycleLine, CycleSnapshot, CycleStats


@dataclass(frozen=True)
class ConsumerSpec:
    """What the runtime consumes for one worker, and how."""

    group_id: str
    topics: Sequence[str]  # subscribed
    ensure_topics: Sequence[str]  # created when missing (the subscribed ones, the outputs, the DLQ)
    max_poll_records: int
    stats_interval_s: float
    registry: CollectorRegistry
    made_by: Maker  # which worker's dead letters these are (dlq replay targets depend on it)
    routes: Sequence[BaseRoute] = ()  # extra ops routes (the cache admin)
    before_scrape: Sequence[Callable[[], Awaitable[None]]] = ()  # refreshed before /metrics renders (table freshness)


class RuntimeHandle(Protocol):
    """All of the runtime a worker may use."""

    @property
    def assigned(self) -> set[TopicPartition]: ...

    @property
    def producer(self) -> AIOKafkaProducer: ...

    @property
    def dead_letters(self) -> DeadLetterSink: ...

    def done(self, tp: TopicPartition, offset: int) -> None:
        """The record at `offset` is finished: its effect is durable."""

    def wake(self) -> None:
        """The worker has room again (a slot freed, a flush went through)."""

    async def reject(self, tp: TopicPartition, record: Any, exc: BaseException, *, trace_id: str | None = None) -> bool:
        """Dead-letter `record` with `exc` as its reason and mark it done (the error boundary).
        False when the dead letter itself was refused: the runtime then stops (`fail`)."""

    def fail(self, exc: BaseException) -> None:
        """The worker's own failure: the runtime stops, commits what is done and raises it."""

    def rewind(self, tp: TopicPartition, offset: int) -> None:
        """Read `tp` again from `offset` (nothing of it may be in flight)."""

    async def topics(self) -> set[str]:
        """The topics the broker has now (one metadata request)."""

    async def skip_to(self, tp: TopicPartition, offset: int) -> int | None:
        """Everything of `tp` below `offset` is durable already: read on from `offset` (and commit
        it) unless the position is there already. Returns the position skipped from (None: none).
        Nothing of `tp` may be in flight (the worker gave it no room)."""

    def highwater(self, tp: TopicPartition) -> int | None:
        """The partition's high watermark from the last fetch response (None: none yet)."""

    def paused(self) -> set[TopicPartition]:
        """The partitions paused now (no room)."""

    @property
    def ops_port(self) -> int | None:
        """The port the ops server listens on (None: no ops server)."""


class ConsumerApp(Protocol):
    spec: ConsumerSpec

    async def start(self, handle: RuntimeHandle) -> None: ...

    def room(self, tp: TopicPartition) -> int: ...

    async def add(self, tp: TopicPartition, record: ConsumerRecord[Any, Any]) -> None: ...

    async def flush(self) -> bool: ...

    def poll_timeout_s(self) -> float:
        """How long the next poll may wait for records (a flush or a due time comes sooner)."""
        ...

    async def assigned(self, partitions: set[TopicPartition]) -> None: ...

    async def release(self, partitions: set[TopicPartition]) -> None: ...

    async def drain(self, grace_s: float) -> None: ...

    async def close(self) -> None:
        """Release what the worker holds besides the Kafka clients (API client, cache, pools)."""

    def readiness(self) -> Mapping[str, ReadinessCheck]: ...

    def report_cycle(self) -> None:
        """Log the cycle-stats line (the runtime calls it every stats interval and at stop)."""


class ConsumerWorker:
    """The defaults of a `ConsumerApp`: a worker overrides what it does differently. Until
    `start`, `handle` is None (the runtime is not running the worker).

    The cycle-stats line is shared: a worker says what it counts in `cycle_snapshot()` and how
    its line reads in `cycle_line`."""

    spec: ConsumerSpec
    handle: RuntimeHandle | None = None
    cycle_line = CycleLine()
    _cycle_stats: CycleStats | None = None

    async def start(self, handle: RuntimeHandle) -> None:
        self.handle = handle
        self._cycle_stats = CycleStats(self.cycle_snapshot, interval_s=self.spec.stats_interval_s, line=self.cycle_line)

    @property
    def ops_port(self) -> int | None:
        """Where /metrics and /health answer while the runtime runs this worker."""
        return None if self.handle is None else self.handle.ops_port

    def require_handle(self) -> RuntimeHandle:
        assert self.handle is not None, "the runtime is not running this worker"
        return self.handle

    def room(self, tp: TopicPartition) -> int:
        return self.spec.max_poll_records

    async def flush(self) -> bool:
        return False

    def poll_timeout_s(self) -> float:
        return float("inf")

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        return None

    async def release(self, partitions: set[TopicPartition]) -> None:
        return None

    async def drain(self, grace_s: float) -> None:
        return None

    async def close(self) -> None:
        return None

    def readiness(self) -> Mapping[str, ReadinessCheck]:
        return {}

    def cycle_snapshot(self) -> CycleSnapshot:
        """The worker's cumulative counts and its gauges, for the cycle-stats line."""
        return CycleSnapshot()

    def report_cycle(self) -> None:
        if self._cycle_stats is not None:
            self._cycle_stats.tick()
