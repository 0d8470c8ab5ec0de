"""The contract between the consumer runtime and a worker (a `ConsumerApp`).

The runtime owns everything Kafka: the clients, the poll loop, pausing, rebalances, offset
tracking, commits, the drain on stop, the dead-letter sink, the ops server and the cycle-stats
loop. A worker owns only its logic, through five calls, in the spirit of a sink with a
checkpoint (add -> flush -> commit only what the flush made durable):

- `room(tp)`: how many more records of `tp` the worker takes now; 0 pauses the partition.
- `add(tp, record)`: take one record. The runtime tracked its offset before; the worker calls
  `runtime.done(tp, offset)` once the record's effect is durable (its output acknowledged by
  the broker, its rows in the Delta commit). An exception raised here is the record's failure,
  never the worker's: the runtime dead-letters the record and goes on.
- `flush()`: called once per loop turn; make durable what is due. True when it finished
  offsets (the runtime then commits at once); a flush that raises commits nothing.
- `release(partitions)`: the partitions are being taken away (rebalance): finish their work
  or hand it back (leave it undone: the next owner reads it again).
- `drain(grace_s)`: stopping: finish what can be finished within `grace_s`.

A failure of the worker itself (broker gone, storage down for good) is reported through
`failure`: the runtime stops consuming, commits what is done and raises it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from aiokafka import ConsumerRecord, TopicPartition

from kafka_pipeline.runtime.ops_server import ReadinessCheck

if TYPE_CHECKING:
    from kafka_pipeline.runtime.consumer import ConsumerRuntime


class ConsumerApp(Protocol):
    failure: BaseException | None

    async def start(self, runtime: ConsumerRuntime) -> None:
        """Clients are started and the group is being joined; nothing was polled yet."""

    def room(self, tp: TopicPartition) -> int: ...

    async def add(self, tp: TopicPartition, record: ConsumerRecord[Any, Any]) -> None: ...

    async def flush(self) -> bool: ...

    def poll_timeout_s(self) -> float:
        """How long the next poll may wait for records (a flush or a due time comes sooner)."""
        ...

    async def release(self, partitions: set[TopicPartition]) -> None: ...

    async def assigned(self, partitions: set[TopicPartition]) -> None: ...

    async def drain(self, grace_s: float) -> None: ...

    async def close(self) -> None:
        """Release what the worker holds besides the Kafka clients (API client, cache, pools)."""

    def readiness(self) -> Mapping[str, ReadinessCheck]: ...

    def report_cycle(self) -> None:
        """Log the cycle-stats line (the runtime calls it every stats interval and at stop)."""
