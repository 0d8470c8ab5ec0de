"""Records whose envelope is hostile, sent as a producer outside the pipeline could send them.

aiokafka's producer only builds well-formed records (header names are `str`, encoded as UTF-8,
and its C record builder takes nothing else), so `send_raw` builds the batch with aiokafka's
pure-Python builder and a header name that encodes to any bytes. The broker stores what it gets:
Kafka checks a batch's CRC and sizes, not the text of header names.
"""

from __future__ import annotations

import asyncio
import gzip
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


class RawName(str):
    """A header name whose encoding is the given bytes (UTF-8 or not)."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawName:
        name = super().__new__(cls, raw.decode("latin-1"))
        name.raw = raw
        return name

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:  # noqa: ARG002 - the builder asks for UTF-8
        return self.raw


@dataclass(frozen=True)
class Envelope:
    """One record as sent: any key, value, timestamp, header names and values, compression."""

    name: str
    key: bytes | None = b"k"
    value: bytes | None = b"{}"
    timestamp_ms: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    codec: str = "none"


def bomb(size: int) -> bytes:
    """`size` zero bytes: gzip (or any codec) makes them a thousand times smaller on the wire."""
    return bytes(size)


def gzip_ratio(value: bytes) -> float:
    return len(value) / max(1, len(gzip.compress(value)))


async def send_raw(producer: AIOKafkaProducer, topic: str, partition: int, record: Envelope) -> int:
    """Send `record` as a batch of its own; the offset it got. `producer` must not be idempotent
    (aiokafka stamps producer state only into its own C-built batches)."""
    batch = producer.create_batch()
    batch._builder = _DefaultRecordBatchBuilderPy(  # noqa: SLF001 - the C builder refuses non-UTF-8 names
        2, CODECS[record.codec], 0, -1, -1, 0, max(16_384, len(record.value or b"") + len(record.key or b"") + 4096)
    )
    headers = [(RawName(name), value) for name, value in record.headers]
    batch._builder.append(0, timestamp=record.timestamp_ms, key=record.key, value=record.value, headers=headers)  # noqa: SLF001
    batch._relative_offset = 1  # noqa: SLF001 - the record count aiokafka keeps (an empty batch is never sent)
    batch.close()
    delivery = await producer.send_batch(batch, topic, partition=partition)
    metadata = await asyncio.wait_for(delivery, 30)
    return int(metadata.offset)
