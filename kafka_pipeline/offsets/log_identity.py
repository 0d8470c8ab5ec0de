"""Which log a partition is: the identity the writer's stored progress is trusted for.

An offset only means something in the log it came from. A topic deleted and recreated, a
cluster rebuilt, a fresh embedded broker or another cluster with the same topic names all
start their logs again at offset 0, and a stored "offset 291 is written" would silently skip
the first 292 records of the new log. So progress is recorded together with the identity of
the log it was read from, and a stored position is trusted only for that log:

- the cluster id (Metadata v2+): a new or another cluster;
- the topic id (Metadata v10+, KIP-516): a topic deleted and recreated in the same cluster;
  aiokafka 0.14 requests Metadata v5 at most, so the v10 request is defined here;
- a fingerprint of the record at a stored offset (a hash of its timestamp, key and value),
  checked by reading that record back while the broker still retains it: a log whose ids
  say nothing (a broker without topic ids) is still caught if its records differ.

What each broker offers is decided at run time: a field the broker leaves empty (no cluster
id, the all-zero topic id) is recorded as empty and the other checks carry the decision.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import uuid
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    AbstractType,
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

from kafka_pipeline.config import KafkaSettings
from kafka_pipeline.kafka.clients import make_consumer
from kafka_pipeline.offsets.topic_offsets import high_watermarks

NO_TOPIC_ID = "00000000-0000-0000-0000-000000000000"


class _Uuid(AbstractType[str]):
    """Kafka's UUID: 16 bytes on the wire, a canonical string here."""

    @classmethod
    def encode(cls, value: str) -> bytes:
        return uuid.UUID(value).bytes

    @classmethod
    def decode(cls, data: BytesIO) -> str:
        raw = data.read(16)
        if len(raw) != 16:
            raise ValueError("truncated UUID")
        return str(uuid.UUID(bytes=raw))


class MetadataResponse_v10(Response):  # noqa: N801 - the protocol's naming
    API_KEY = 3
    API_VERSION = 10
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("brokers", CompactArray(
            ("node_id", Int32), ("host", CompactString("utf-8")), ("port", Int32), ("rack", CompactString("utf-8")), ("tags", TaggedFields),
        )),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        ("topics", CompactArray(
            ("error_code", Int16),
            ("name", CompactString("utf-8")),
            ("topic_id", _Uuid),
            ("is_internal", Boolean),
            ("partitions", CompactArray(
                ("error_code", Int16), ("partition_index", Int32), ("leader_id", Int32), ("leader_epoch", Int32),
                ("replica_nodes", CompactArray(Int32)), ("isr_nodes", CompactArray(Int32)),
                ("offline_replicas", CompactArray(Int32)), ("tags", TaggedFields),
            )),
            ("topic_authorized_operations", Int32),
            ("tags", TaggedFields),
        )),
        ("cluster_authorized_operations", Int32),
        ("tags", TaggedFields),
    )


class MetadataRequest_v10(RequestStruct):  # noqa: N801 - the protocol's naming
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 10
    RESPONSE_TYPE = MetadataResponse_v10
    SCHEMA = Schema(
        ("topics", CompactArray(("topic_id", _Uuid), ("name", CompactString("utf-8")), ("tags", TaggedFields))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class TopicMetadataRequest(Request[MetadataRequest_v10]):
    """Metadata of named topics at v10, the first version that answers topic ids."""

    API_KEY = 3

    def __init__(self, topics: list[str]) -> None:
        self._topics = topics

    def build(self, request_struct_class: type[MetadataRequest_v10]) -> MetadataRequest_v10:
        return request_struct_class([(NO_TOPIC_ID, name, {}) for name in self._topics], False, False, False, {})


@dataclass(frozen=True)
class LogIdentity:
    """The identity of one topic's log: "" where the broker offers no such id."""

    cluster_id: str
    topic_id: str

    def __str__(self) -> str:
        return f"cluster {self.cluster_id or '(none)'}, topic id {self.topic_id or '(none)'}"

    @property
    def token(self) -> str:
        """A short stable name of this identity (part of a Delta app transaction id)."""
        return hashlib.blake2b(f"{self.cluster_id}/{self.topic_id}".encode(), digest_size=8).hexdigest()

    @property
    def known(self) -> bool:
        return bool(self.cluster_id or self.topic_id)


async def read_log_identity(client: AIOKafkaClient, topic: str) -> LogIdentity:
    """The cluster id and the topic id of `topic`, as far as the broker offers them."""
    cluster_id = ""
    node_id = client.get_random_node()
    if node_id is None:
        return LogIdentity(cluster_id, "")
    try:
        response: Any = await client.send(node_id, TopicMetadataRequest([topic]))
    except (KafkaError, NotImplementedError, ValueError):  # a broker without Metadata v10
        return LogIdentity(cluster_id, "")
    topic_id = ""
    for error_code, name, tid, *_ in response.topics:
        if name == topic and error_code == 0 and tid != NO_TOPIC_ID:
            topic_id = tid
    return LogIdentity(response.cluster_id or cluster_id, topic_id)


def record_fingerprint(timestamp: int | None, key: bytes | None, value: bytes | None) -> int:
    """63 bits of a hash of a record's timestamp, key and value (a Delta app transaction's
    version is a signed 64-bit number; the fingerprint is stored as one)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(struct.pack(">q", timestamp if timestamp is not None else -1))
    for part in (key, value):
        digest.update(struct.pack(">i", -1 if part is None else len(part)))
        digest.update(part or b"")
    return int.from_bytes(digest.digest(), "big") >> 1


@dataclass(frozen=True)
class PartitionLog:
    """What the broker says of one partition now: its log's identity and offset bounds."""

    identity: LogIdentity
    start: int  # first offset still retained
    end: int  # the offset after the last record (the high watermark)


async def describe_partitions(kafka: KafkaSettings, topic: str, partitions: list[int], *, timeout_s: float = 10.0) -> dict[int, PartitionLog]:
    """The identity and bounds of the partitions of `topic`, read by consumers without a group."""
    consumer = make_consumer(kafka, group_id=None, client_id=f"log-identity-{uuid.uuid4().hex[:6]}")
    await consumer.start()
    try:
        identity = await asyncio.wait_for(read_log_identity(consumer._client, topic), timeout_s)  # noqa: SLF001 - raw request
        tps = [TopicPartition(topic, p) for p in partitions]
        starts = await asyncio.wait_for(consumer.beginning_offsets(tps), timeout_s)
    finally:
        await consumer.stop()
    ends = await high_watermarks(kafka, topic, timeout_s=timeout_s)
    return {tp.partition: PartitionLog(identity, starts[tp], ends.get(tp.partition, 0)) for tp in tps}


async def read_fingerprints(kafka: KafkaSettings, topic: str, offsets: dict[int, int], *, timeout_s: float = 10.0) -> dict[int, int]:
    """Partition -> fingerprint of the record at the given offset, for those still retained
    and found at exactly that offset (a compacted-away or transaction-marker offset has none)."""
    if not offsets:
        return {}
    consumer = make_consumer(kafka, group_id=None, client_id=f"log-fingerprint-{uuid.uuid4().hex[:6]}", max_poll_records=1)
    await consumer.start()
    found: dict[int, int] = {}
    try:
        tps = {TopicPartition(topic, p): offset for p, offset in offsets.items()}
        consumer.assign(list(tps))
        for tp, offset in tps.items():
            consumer.seek(tp, offset)
        pending = set(tps)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while pending and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(*pending, timeout_ms=200)
            for tp, records in batch.items():
                if not records:
                    continue
                pending.discard(tp)
                consumer.pause(tp)
                first = records[0]
                if first.offset == tps[tp]:
                    found[tp.partition] = record_fingerprint(first.timestamp, first.key, first.value)
        return found
    finally:
        await consumer.stop()
