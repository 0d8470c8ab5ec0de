"""Reading past records the Kafka client cannot decode, for the readers that assign partitions
by hand (`dlq`, `status`).

aiokafka decodes header names as UTF-8 while it unpacks a fetch and raises `UnicodeDecodeError`
from `getmany`; it raises the codec's own error for a compressed batch that does not decompress
and `UnsupportedCodecError` for a codec id it does not know (Apache Kafka refuses both at produce
time; tansu stores them). Anyone who can produce to a topic can write such a record. `getmany_past_undecodable`
answers like `getmany` and, when that happens, finds the record: the partitions go back to
`resume_at` (what the caller has read up to), each is read one record at a time until the one that
fails, whose offset is the consumer's position then; it is skipped (`seek` past it) and reported.
(The consumer runtime does the same for the workers, with dead letters: `runtime.consumer`.)
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from gzip import BadGzipFile
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CorruptRecordException, UnsupportedCodecError
from cramjam import DecompressionError

# What `getmany` raises while it unpacks a record it cannot decode (never a broker or network error).
UNDECODABLE = (UnicodeDecodeError, BadGzipFile, EOFError, zlib.error, DecompressionError, UnsupportedCodecError, CorruptRecordException)


async def getmany_past_undecodable(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], resume_at: Mapping[TopicPartition, int], *, timeout_ms: int
) -> tuple[dict[TopicPartition, list[Any]], list[tuple[TopicPartition, int]]]:
    """(records by partition, the (partition, offset) of each record skipped as undecodable)."""
    try:
        return await consumer.getmany(*partitions, timeout_ms=timeout_ms), []
    except UNDECODABLE:
        pass
    records: dict[TopicPartition, list[Any]] = {}
    skipped: list[tuple[TopicPartition, int]] = []
    for tp in partitions:
        if tp in resume_at:
            consumer.seek(tp, resume_at[tp])
    for tp in partitions:
        while True:
            start = await consumer.position(tp)
            try:
                batch = await consumer.getmany(tp, timeout_ms=timeout_ms, max_records=1)
            except UNDECODABLE:
                offset = await consumer.position(tp)
                skipped.append((tp, offset))
                consumer.seek(tp, offset + 1)
                break
            if not batch.get(tp) or await consumer.position(tp) <= start:
                break
            records.setdefault(tp, []).extend(batch[tp])
            if len(records[tp]) >= 500:  # enough for one call: the rest comes with the next one
                break
    return records, skipped
