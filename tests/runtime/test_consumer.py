"""The consumer runtime alone (runtime/consumer.py), with a fake app and fake Kafka clients:
the order of records, the committed prefix, room and pausing, the error boundary, the app's own
failure, and partitions that arrive while records are being fetched."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from prometheus_client import CollectorRegistry

from kafka_pipeline.config import KafkaSettings, WorkerSettings
from kafka_pipeline.runtime.app import ConsumerSpec, ConsumerWorker, RuntimeHandle
from kafka_pipeline.runtime.consumer import ConsumerRuntime, KafkaClients

TOPIC = "in"
P0 = TopicPartition(TOPIC, 0)


def record(offset: int, value: bytes, partition: int = 0) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(TOPIC, partition, offset, 0, 0, b"k", value, None, 1, len(value), ())


@dataclass
class FakeConsumer:
    """The part of AIOKafkaConsumer the runtime uses, over in-memory logs."""

    logs: dict[TopicPartition, list[bytes]]
    gate: asyncio.Event | None = None  # the group assigns the partitions only once set
    listener: ConsumerRebalanceListener | None = None
    assigned: set[TopicPartition] = field(default_factory=set)
    positions: dict[TopicPartition, int] = field(default_factory=dict)
    stopped_pause: set[TopicPartition] = field(default_factory=set)
    committed_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    commits: int = 0  # commit calls
    fetches: int = 0  # getmany calls that returned records
    _assigning: asyncio.Task[None] | None = None

    def subscribe(self, topics: list[str], listener: ConsumerRebalanceListener) -> None:
        self.listener = listener

    async def start(self) -> None:
        self._assigning = asyncio.create_task(self._assign())

    async def _assign(self) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.assigned = set(self.logs)
        self.positions = {tp: self.committed_offsets.get(tp, 0) for tp in self.logs}
        assert self.listener is not None
        await self.listener.on_partitions_assigned(set(self.logs))

    async def stop(self) -> None:
        if self._assigning is not None:
            self._assigning.cancel()

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def paused(self) -> set[TopicPartition]:
        return set(self.stopped_pause)

    def pause(self, *tps: TopicPartition) -> None:
        self.stopped_pause |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.stopped_pause -= set(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.logs[tp])

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        batches: dict[TopicPartition, list[Any]] = {}
        budget = max_records or 1_000
        for tp in sorted(self.assigned - self.stopped_pause):
            start = self.positions[tp]
            values = self.logs[tp][start:start + budget]
            if values:
                batches[tp] = [record(start + i, v, tp.partition) for i, v in enumerate(values)]
                self.positions[tp] = start + len(values)
                budget -= len(values)
        if batches:
            self.fetches += 1
        else:
            await asyncio.sleep(min(timeout_ms, 20) / 1000)
        return batches

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed_offsets.update(offsets)
        self.commits += 1

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.committed_offsets.get(tp)

    async def beginning_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 0 for tp in tps}


@dataclass
class FakeProducer:
    sent: list[tuple[str, bytes]] = field(default_factory=list)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None) -> asyncio.Future[None]:
        self.sent.append((topic, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class FakeApp(ConsumerWorker):
    """Takes records while it has room; `bad` values raise, the `fatal` value fails the worker,
    offsets listed in `hold` stay unfinished until released."""

    def __init__(self, *, room: int = 100, hold: Iterable[int] = (), assigned_gate: asyncio.Event | None = None) -> None:
        self.spec = ConsumerSpec(group_id="g", topics=[TOPIC], ensure_topics=[TOPIC], max_poll_records=50, stats_interval_s=60,
                                 registry=CollectorRegistry(), made_by="enrich")
        self.limit = room
        self.hold = set(hold)
        self.held: list[tuple[TopicPartition, int]] = []
        self.added: list[int] = []
        self.assigned_gate = assigned_gate
        self.assigned_done = False
        self.added_before_assigned = 0
        self.flushes = 0

    def room(self, tp: TopicPartition) -> int:
        return self.limit - len(self.held)

    async def add(self, tp: TopicPartition, record: ConsumerRecord[Any, Any]) -> None:
        if not self.assigned_done:
            self.added_before_assigned += 1
        self.added.append(record.offset)
        if record.value == b"bad":
            raise ValueError("a bad record")
        if record.value == b"fatal":
            self.require_handle().fail(RuntimeError("the worker's own failure"))
            return
        if record.offset in self.hold:
            self.held.append((tp, record.offset))
            return
        self.require_handle().done(tp, record.offset)

    def release_held(self) -> None:
        handle: RuntimeHandle = self.require_handle()
        for tp, offset in self.held:
            handle.done(tp, offset)
        self.held.clear()
        handle.wake()

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        if self.assigned_gate is not None:
            await self.assigned_gate.wait()
        self.assigned_done = True


@dataclass
class Harness:
    runtime: ConsumerRuntime
    consumer: FakeConsumer
    producer: FakeProducer
    app: FakeApp
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def until(self, condition: Any, timeout_s: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not condition():
            if self.task.done():
                self.task.result()
                raise AssertionError("the runtime stopped early")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("timed out waiting")
            await asyncio.sleep(0.01)

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 10)


def start(app: FakeApp, logs: dict[TopicPartition, list[bytes]], *, gate: asyncio.Event | None = None) -> Harness:
    consumer = FakeConsumer(logs, gate=gate)
    producer = FakeProducer()

    async def no_topics(kafka: KafkaSettings, topics: list[str]) -> None:
        return None

    async def ends(kafka: KafkaSettings, topic: str) -> dict[int, int]:
        return {tp.partition: len(values) for tp, values in logs.items() if tp.topic == topic}

    clients = KafkaClients(ensure_topics=no_topics, make_producer=lambda kafka: producer,
                           make_consumer=lambda kafka, **options: consumer, high_watermarks=ends)
    worker = WorkerSettings(name="fake", commit_interval_s=0.05, poll_timeout_ms=20, shutdown_grace_s=1)
    runtime = ConsumerRuntime(KafkaSettings(dlq_topic="dlq"), worker, app.spec, clients)
    stop = asyncio.Event()
    return Harness(runtime, consumer, producer, app, stop, asyncio.create_task(runtime.run(app, stop)))


async def test_records_reach_the_app_in_order_and_only_the_finished_prefix_is_committed() -> None:
    app = FakeApp(hold=[2])
    h = start(app, {P0: [b"a", b"b", b"c", b"d", b"e"]})
    await h.until(lambda: app.added == [0, 1, 2, 3, 4] and h.consumer.committed_offsets.get(P0) == 2)
    commits = h.consumer.commits
    await h.until(lambda: h.runtime.tracker.committable() == {} and h.consumer.commits == commits)  # nothing more to commit
    assert h.consumer.committed_offsets[P0] == 2  # the unfinished offset 2 holds the commit back
    app.release_held()
    await h.until(lambda: h.consumer.committed_offsets.get(P0) == 5)
    await h.finish()


async def test_a_record_whose_add_raises_is_dead_lettered_and_the_loop_goes_on() -> None:
    app = FakeApp()
    h = start(app, {P0: [b"a", b"bad", b"c"]})
    await h.until(lambda: h.consumer.committed_offsets.get(P0) == 3)
    await h.finish()
    assert app.added == [0, 1, 2]
    assert [topic for topic, _ in h.producer.sent] == ["dlq"] and b"a bad record" in h.producer.sent[0][1]
    assert h.runtime.rejected == 1


async def test_a_partition_without_room_is_paused_and_its_records_are_read_again_later() -> None:
    app = FakeApp(room=2, hold=range(10))
    h = start(app, {P0: [bytes([65 + i]) for i in range(6)]})
    await h.until(lambda: len(app.held) == 2 and P0 in h.consumer.paused())
    assert app.added == [0, 1]  # nothing beyond the room, and what was fetched beyond it is handed back
    app.release_held()
    await h.until(lambda: app.added == [0, 1, 2, 3])
    app.release_held()
    await h.until(lambda: app.added == [0, 1, 2, 3, 4, 5])
    app.release_held()
    await h.until(lambda: h.consumer.committed_offsets.get(P0) == 6)
    await h.finish()


async def test_the_apps_own_failure_stops_the_runtime_and_is_raised_after_committing_what_is_done() -> None:
    app = FakeApp()
    h = start(app, {P0: [b"a", b"b", b"fatal", b"d"]})
    with pytest.raises(RuntimeError, match="the worker's own failure"):
        await asyncio.wait_for(h.task, 10)
    assert h.consumer.committed_offsets == {P0: 2}  # the failed offset and what follows it are read again


async def test_records_fetched_while_the_app_takes_a_partition_in_wait_for_it() -> None:
    gate, assigned_gate = asyncio.Event(), asyncio.Event()
    app = FakeApp(assigned_gate=assigned_gate)
    h = start(app, {P0: [b"a", b"b", b"c"]}, gate=gate)
    gate.set()  # the group assigns P0; the app's `assigned` is still busy (checking its stored progress)
    await h.until(lambda: h.consumer.fetches >= 2)  # the loop polls meanwhile: what it fetched of P0 is handed back
    assert app.added == [] and h.consumer.positions[P0] == 0
    assigned_gate.set()
    await h.until(lambda: app.added == [0, 1, 2])
    assert app.added_before_assigned == 0
    await h.finish()
