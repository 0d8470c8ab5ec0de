"""Where a topic ends and how far a consumer group got: the numbers behind lag and "drained".

On Apache Kafka the end is the broker's own end offset (ListOffsets, `end_offsets()`). Where
`end_offsets()` can answer the base offset of the last record batch instead (tansu, see
runtime/broker_capabilities.py), the high watermark is read by fetching that last batch: one
batch per partition, exact.

Reading offsets never probes the broker (`resolve_capabilities` asks for a producer id, which
tansu answers with an error it logs in red): without a known profile the fetch path is used,
exact on every broker.
"""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition

from kafka_pipeline.config import KafkaSettings
from kafka_pipeline.kafka.capabilities import known_capabilities
from kafka_pipeline.kafka.clients import make_consumer


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    """The topic's partitions, asking the broker when this client has no metadata for it yet
    (on Apache Kafka a fresh consumer that subscribed to nothing may know no topics yet)."""
    partitions = consumer.partitions_for_topic(topic)
    if partitions is None:
        await consumer._client.force_metadata_update()  # noqa: SLF001 - aiokafka offers no public refresh
        partitions = consumer.partitions_for_topic(topic)
    return sorted(partitions or ())


async def high_watermarks(kafka: KafkaSettings, topic: str, *, timeout_s: float = 5.0) -> dict[int, int]:
    """Partition -> offset after the last record (0 for an empty partition)."""
    capabilities = known_capabilities(kafka)
    consumer = make_consumer(kafka, group_id=None, client_id=f"hw-{uuid.uuid4().hex[:6]}")
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()  # a consumer that failed to start still holds a client to close
        raise
    try:
        tps = [TopicPartition(topic, p) for p in await topic_partitions(consumer, topic)]
        if not tps:
            return {}
        consumer.assign(tps)
        reported = await consumer.end_offsets(tps)
        marks = {tp.partition: reported[tp] for tp in tps}
        if capabilities.end_offsets_are_high_watermarks:
            return marks
        pending = set()
        for tp in tps:
            if reported[tp] > 0:
                consumer.seek(tp, reported[tp] - 1)
                pending.add(tp)
            else:
                consumer.pause(tp)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while pending and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(*pending, timeout_ms=200)
            for tp, records in batch.items():
                if records:
                    marks[tp.partition] = max(marks[tp.partition], records[-1].offset + 1)
            for tp in list(pending):
                # the fetch response carries the true high watermark
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    marks[tp.partition] = max(marks[tp.partition], highwater)
                    pending.discard(tp)
        return marks
    finally:
        await consumer.stop()


async def committed_offsets(kafka: KafkaSettings, group_id: str, topic: str) -> dict[int, int]:
    """Partition -> the group's committed offset (0 where it committed nothing)."""
    consumer = make_consumer(kafka, group_id=group_id, client_id=f"lag-{uuid.uuid4().hex[:6]}")
    await consumer.start()
    try:
        result: dict[int, int] = {}
        for partition in await topic_partitions(consumer, topic):
            committed = await consumer.committed(TopicPartition(topic, partition))
            result[partition] = committed or 0
        return result
    finally:
        await consumer.stop()


async def group_lag(kafka: KafkaSettings, group_id: str, topic: str) -> int:
    """Records in `topic` the group has not committed yet."""
    marks, committed = await asyncio.gather(high_watermarks(kafka, topic), committed_offsets(kafka, group_id, topic))
    return sum(max(0, end - committed.get(partition, 0)) for partition, end in marks.items())
