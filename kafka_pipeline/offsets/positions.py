"""Where partitions begin and end, and which offset a point in time is.

Every reader here is a consumer that joins no group (partitions assigned by hand), so looking
never disturbs a running consumer group.

A point in time -> offset is Kafka's ListOffsets by timestamp (`offsets_for_times`): the first
offset whose record timestamp is at or after the time, none when every record is older (the
partition's end then). Not every broker implements it: tansu answers offset 0 stamped with the
current time whatever the records hold. So every answer is checked against the record it names
(its timestamp must be the one the broker claims) and a broker that fails the check is refused
with `TimeLookupUnsupported`, never silently used.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, UnsupportedVersionError

from kafka_pipeline.config import KafkaSettings
from kafka_pipeline.errors import BrokerUnreachable
from kafka_pipeline.kafka.clients import make_consumer
from kafka_pipeline.offsets import OffsetsError, TimeLookupUnsupported
from kafka_pipeline.offsets.topic_offsets import high_watermarks

CHECK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Bounds:
    """A partition's first offset still on the broker and the offset after its last record."""

    low: int
    high: int

    def clamp(self, offset: int) -> int:
        return max(self.low, min(self.high, offset))


def unsupported_line(kafka: KafkaSettings) -> str:
    return (
        f"the broker at {kafka.bootstrap_servers} cannot look up offsets by time (ListOffsets by timestamp; "
        "tansu cannot): use offsets instead"
    )


def reader(kafka: KafkaSettings) -> AIOKafkaConsumer:
    """A consumer that joins no group: assign() only, never commits."""
    return make_consumer(kafka, group_id=None, client_id=f"kp-offsets-{uuid.uuid4().hex[:6]}")


async def start(consumer: AIOKafkaConsumer, kafka: KafkaSettings) -> None:
    try:
        await asyncio.wait_for(consumer.start(), kafka.request_timeout_ms / 1000)
    except (TimeoutError, KafkaError, OSError) as exc:
        await consumer.stop()
        raise BrokerUnreachable(f"Kafka broker unreachable at {kafka.bootstrap_servers} ({type(exc).__name__})") from None


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str, wanted: Iterable[int] | None = None) -> list[TopicPartition]:
    """The topic's partitions (only `wanted` when given); OffsetsError for a missing topic or partition."""
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer._client.force_metadata_update()  # noqa: SLF001 - aiokafka offers no public refresh
        partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise OffsetsError(f"topic {topic} does not exist")
    chosen = sorted(partitions)
    if wanted is not None:
        unknown = sorted(set(wanted) - set(partitions))
        if unknown:
            raise OffsetsError(f"topic {topic} has no partition {', '.join(map(str, unknown))} (it has 0..{max(partitions)})")
        chosen = sorted(set(wanted))
    return [TopicPartition(topic, p) for p in chosen]


async def bounds(kafka: KafkaSettings, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[int, Bounds]:
    """Low and high watermark per partition (the high one read exactly: see topic_offsets)."""
    low = await consumer.beginning_offsets(tps)
    high = await high_watermarks(kafka, tps[0].topic) if tps else {}
    return {tp.partition: Bounds(low[tp], max(low[tp], high.get(tp.partition, low[tp]))) for tp in tps}


async def offsets_at(
    kafka: KafkaSettings, consumer: AIOKafkaConsumer, tps: list[TopicPartition], when: datetime, ends: dict[int, Bounds]
) -> dict[int, int]:
    """Per partition, the first offset whose record is at or after `when` (the end when none is).

    `consumer` must not be reading these partitions (this assigns and seeks them to check).
    Raises TimeLookupUnsupported when the broker's answers do not match its records."""
    target = int(when.timestamp() * 1000)
    if target < 0:
        raise OffsetsError(f"{when.isoformat()} is before 1970")
    try:
        answers = await asyncio.wait_for(consumer.offsets_for_times(dict.fromkeys(tps, target)), kafka.request_timeout_ms / 1000)
    except UnsupportedVersionError:
        raise TimeLookupUnsupported(unsupported_line(kafka)) from None
    except (TimeoutError, KafkaError) as exc:
        raise OffsetsError(f"looking up offsets by time failed: {type(exc).__name__}") from None
    claims = {tp: (answer.offset, answer.timestamp) for tp, answer in answers.items() if answer is not None}
    await _check_claims(kafka, consumer, claims, ends)
    return {tp.partition: (claims[tp][0] if tp in claims else ends[tp.partition].high) for tp in tps}


async def _check_claims(
    kafka: KafkaSettings, consumer: AIOKafkaConsumer, claims: dict[TopicPartition, tuple[int, int]], ends: dict[int, Bounds]
) -> None:
    """Read the record each answer names: its timestamp must be the one the broker claimed."""
    pending = {tp: claim for tp, claim in claims.items() if claim[0] < ends[tp.partition].high}
    for tp, (offset, _) in claims.items():
        if tp not in pending and offset > ends[tp.partition].high:
            raise TimeLookupUnsupported(unsupported_line(kafka))
    if not pending:
        return
    consumer.assign(list(pending))
    for tp, (offset, _) in pending.items():
        consumer.seek(tp, offset)
    deadline = time.monotonic() + CHECK_TIMEOUT_S
    while pending and time.monotonic() < deadline:
        batch = await consumer.getmany(*pending, timeout_ms=200)
        for tp, records in batch.items():
            offset, claimed = pending.get(tp, (0, 0))
            first = next((r for r in records if r.offset >= offset), None) if tp in pending else None
            if first is None:
                continue
            del pending[tp]
            if first.timestamp != claimed:
                raise TimeLookupUnsupported(unsupported_line(kafka))
    if pending:
        raise OffsetsError(f"could not read the records at the offsets the broker named for {len(pending)} partition(s)")
