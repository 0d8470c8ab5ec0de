"""Move a consumer group's committed offsets on one topic: plan, check, commit.

The plan says, per partition, the committed offset now, the new one and the difference (records
the group will read again when negative, skip when positive). New offsets are clamped to what
the partition holds, as Kafka's own tool does. A reset is refused while the group has active
members: a running consumer would overwrite the new offsets with its next commit (and the
broker rejects a commit from outside the generation anyway). The commit is made by a consumer
that is given the group id but joins nothing (assign, not subscribe), the way the DLQ purge
point is stored, so resetting the purge group moves the purge point like any other group.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CommitFailedError, KafkaError

from kafka_pipeline.config import KafkaSettings
from kafka_pipeline.errors import BrokerUnreachable
from kafka_pipeline.kafka.clients import connection_kwargs, make_consumer
from kafka_pipeline.offsets import OffsetsError, positions

Mode = Literal["earliest", "latest", "offset", "datetime", "shift"]


@dataclass(frozen=True)
class ResetTarget:
    mode: Mode
    offset: int = 0  # for "offset" (absolute) and "shift" (relative, may be negative)
    when: datetime | None = None  # for "datetime"


@dataclass(frozen=True)
class PartitionReset:
    partition: int
    current: int | None  # None: the group committed nothing here
    new: int

    @property
    def difference(self) -> int | None:
        return None if self.current is None else self.new - self.current


@dataclass(frozen=True)
class ResetPlan:
    group: str
    topic: str
    partitions: list[PartitionReset]

    def lines(self) -> list[str]:
        rows = [f"{'partition':>9}  {'current':>10}  {'new':>10}  {'difference':>10}"]
        for p in self.partitions:
            current = "-" if p.current is None else str(p.current)
            difference = "-" if p.difference is None else f"{p.difference:+d}"
            rows.append(f"{p.partition:>9}  {current:>10}  {p.new:>10}  {difference:>10}")
        return rows


async def active_members(kafka: KafkaSettings, group: str) -> int:
    """How many members the group has now (describe_groups)."""
    admin = AIOKafkaAdminClient(**connection_kwargs(kafka))
    try:
        await asyncio.wait_for(admin.start(), kafka.request_timeout_ms / 1000)
    except (TimeoutError, KafkaError, OSError) as exc:
        await admin.close()
        raise BrokerUnreachable(f"Kafka broker unreachable at {kafka.bootstrap_servers} ({type(exc).__name__})") from None
    try:
        responses = await admin.describe_consumer_groups([group])
    except KafkaError as exc:
        raise OffsetsError(f"could not describe group {group}: {type(exc).__name__}") from None
    finally:
        await admin.close()
    members = 0
    for response in responses:
        for described in response.groups:
            # (error_code, group_id, state, protocol_type, protocol, members, ...): an unknown
            # group answers an error code or the state "Dead" with no members.
            members += len(described[5])
    return members


def refusal(group: str, members: int) -> str:
    return f"group {group} has {members} member(s): stop its consumers (and let their sessions expire), then reset its offsets"


async def plan_reset(
    kafka: KafkaSettings, group: str, topic: str, target: ResetTarget, partitions: list[int] | None = None
) -> ResetPlan:
    """Current and new offsets per partition; nothing is changed."""
    reader = positions.reader(kafka)
    await positions.start(reader, kafka)
    committed_reader = make_consumer(kafka, group_id=group, client_id="kp-reset-offsets")
    try:
        tps = await positions.topic_partitions(reader, topic, partitions)
        ends = await positions.bounds(kafka, reader, tps)
        await positions.start(committed_reader, kafka)
        current = {tp.partition: await committed_reader.committed(tp) for tp in tps}
        if target.mode == "datetime":
            assert target.when is not None
            at = await positions.offsets_at(kafka, reader, tps, target.when, ends)
        plan = []
        for tp in tps:
            p, bound = tp.partition, ends[tp.partition]
            if target.mode == "earliest":
                new = bound.low
            elif target.mode == "latest":
                new = bound.high
            elif target.mode == "offset":
                new = bound.clamp(target.offset)
            elif target.mode == "shift":
                base = current[p] if current[p] is not None else bound.low
                new = bound.clamp(base + target.offset)
            else:
                new = at[p]
            plan.append(PartitionReset(p, current[p], new))
        return ResetPlan(group, topic, plan)
    finally:
        await reader.stop()
        await committed_reader.stop()


async def apply_reset(kafka: KafkaSettings, plan: ResetPlan) -> None:
    """Commit the plan's offsets for the group; OffsetsError when the group has members."""
    members = await active_members(kafka, plan.group)
    if members:
        raise OffsetsError(refusal(plan.group, members))
    consumer = make_consumer(kafka, group_id=plan.group, client_id="kp-reset-offsets")  # assigned by hand: never joins
    await positions.start(consumer, kafka)
    try:
        offsets = {TopicPartition(plan.topic, p.partition): p.new for p in plan.partitions}
        consumer.assign(list(offsets))
        try:
            await consumer.commit(offsets)
        except CommitFailedError:  # a member joined between the check and the commit
            raise OffsetsError(refusal(plan.group, max(1, await active_members(kafka, plan.group)))) from None
        except KafkaError as exc:
            raise OffsetsError(f"could not commit the offsets of group {plan.group}: {type(exc).__name__}") from None
    finally:
        await consumer.stop()
