"""The dead-letter envelope: one shape for every worker, everything needed to inspect or replay.

The envelope is the value of a message on the DLQ topic, keyed like the original message.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from kafka_pipeline.errors import Category


class EncodedBytes(BaseModel):
    """Bytes as text: UTF-8 when they decode, base64 otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    encoding: Literal["utf-8", "base64"]
    data: str

    @classmethod
    def of(cls, raw: bytes) -> EncodedBytes:
        try:
            return cls(encoding="utf-8", data=raw.decode("utf-8"))
        except UnicodeDecodeError:
            return cls(encoding="base64", data=base64.b64encode(raw).decode("ascii"))

    def raw(self) -> bytes:
        if self.encoding == "utf-8":
            return self.data.encode("utf-8")
        try:
            return base64.b64decode(self.data, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"dead letter holds invalid base64: {exc}") from None


class DeadLetter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    original_topic: str
    partition: int
    offset: int
    key: EncodedBytes | None
    value: EncodedBytes | None
    headers: list[tuple[str, EncodedBytes]] = Field(default_factory=list)
    timestamp: AwareDatetime | None  # the original message's broker timestamp
    error_type: str
    error_message: str
    error_category: Category
    attempts: int = Field(ge=1)
    failed_at: AwareDatetime
    worker: str
    trace_id: str | None = None

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, value: bytes) -> DeadLetter:
        return cls.model_validate_json(value)

    def original_headers(self) -> list[tuple[str, bytes]]:
        return [(name, value.raw()) for name, value in self.headers]


@dataclass(frozen=True)
class RecordView:
    """The attributes of a consumed record that `dead_letter_for` and retry routing read.

    aiokafka's ConsumerRecord has them too; this is for records rebuilt from headers or tests.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp: int | None = None  # epoch ms


def dead_letter_for(
    record: Any,
    *,
    error_type: str,
    error_message: str,
    category: Category,
    worker: str,
    attempts: int = 1,
    trace_id: str | None = None,
    original_topic: str | None = None,
) -> DeadLetter:
    """Envelope for an aiokafka ConsumerRecord (or anything with its attributes).

    `original_topic` overrides `record.topic` when the record came back through the retry
    topic and the real origin is in its headers.
    """
    timestamp = (
        datetime.fromtimestamp(record.timestamp / 1000, tz=UTC) if getattr(record, "timestamp", None) is not None else None
    )
    return DeadLetter(
        original_topic=original_topic or record.topic,
        partition=record.partition,
        offset=record.offset,
        key=EncodedBytes.of(record.key) if record.key is not None else None,
        value=EncodedBytes.of(record.value) if record.value is not None else None,
        headers=[(name, EncodedBytes.of(value or b"")) for name, value in (record.headers or ())],
        timestamp=timestamp,
        error_type=error_type,
        error_message=error_message,
        error_category=category,
        attempts=attempts,
        failed_at=datetime.now(UTC),
        worker=worker,
        trace_id=trace_id,
    )
