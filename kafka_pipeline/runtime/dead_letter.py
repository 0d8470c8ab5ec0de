"""The dead-letter envelope: one shape for every worker, everything needed to inspect or replay.

The envelope is the value of a message on the DLQ topic, keyed like the original message.

Oversize. A consumed message fits the broker, but its envelope may not: JSON escaping turns a
control byte into six bytes, base64 turns three into four, and the key, headers and reason come
on top. `DeadLetter.to_bytes` is the one place every worker serialises an envelope, and it keeps
the DLQ message (key plus envelope) under `MAX_DLQ_MESSAGE_BYTES`: an envelope over it keeps a
prefix of the original value (and key, if needed), their sizes and SHA-256, and
`truncated: true`; the original headers go if they still do not fit (`dropped_headers` counts
them). A truncated letter can be inspected but not replayed.

Hostile text. Every text field is made valid UTF-8 (a lone surrogate becomes `\\udxxx`) and the
reason is bounded, so building and serialising an envelope never raises on what a message held.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from kafka_pipeline.errors import Category

# The DLQ message (key + envelope) stays below this: aiokafka's default max_request_size and
# Kafka's default message.max.bytes are 1 MiB, and the record batch adds its own overhead.
MAX_DLQ_MESSAGE_BYTES = 1_000_000
MAX_ERROR_MESSAGE_CHARS = 4_000
# The worker kinds that make dead letters (the CLI commands that run them).
Maker = Literal["enrich", "write", "retry-scheduler"]


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


def safe_text(text: str) -> str:
    """`text`, with anything that is not valid Unicode (lone surrogates) backslash-escaped."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _prefix(raw: bytes, limit: int) -> EncodedBytes:
    """The first `limit` bytes at most, not cut inside a UTF-8 character when the bytes are text."""
    head = raw[:limit]
    for back in range(4):  # a UTF-8 character is at most 4 bytes
        candidate = head[: len(head) - back]
        try:
            candidate.decode("utf-8")
        except UnicodeDecodeError:
            continue
        return EncodedBytes.of(candidate)
    return EncodedBytes.of(head)


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
    # Which kind of worker made this letter: `dlq replay` sends a letter back to the entity-rows
    # topic only when the writer made it (None: an older letter, replayed to the events topic only).
    made_by: Maker | None = None
    truncated: bool = False  # the key and/or value below are prefixes (see the module docstring)
    value_size: int | None = None  # the original value's size in bytes, when truncated
    value_sha256: str | None = None
    key_size: int | None = None  # the same for the key, when it had to be cut too
    key_sha256: str | None = None
    dropped_headers: int = 0

    @field_validator("original_topic", "error_type", "error_message", "worker", "trace_id", mode="before")
    @classmethod
    def _valid_text(cls, value: Any) -> Any:
        return safe_text(value) if isinstance(value, str) else value

    @field_validator("error_message")
    @classmethod
    def _bounded(cls, value: str) -> str:
        return value if len(value) <= MAX_ERROR_MESSAGE_CHARS else value[:MAX_ERROR_MESSAGE_CHARS] + "..."

    def to_bytes(self, max_message_bytes: int = MAX_DLQ_MESSAGE_BYTES) -> bytes:
        """The envelope as the DLQ message's value, cut to fit (see the module docstring)."""
        data = self.model_dump_json().encode()
        key_bytes = len(self.key.raw()) if self.key is not None else 0  # the DLQ record's key
        if key_bytes + len(data) <= max_message_bytes:
            return data
        return self._cut(max_message_bytes).model_dump_json().encode()

    def _cut(self, max_message_bytes: int) -> DeadLetter:
        key = self.key.raw() if self.key is not None else b""
        value = self.value.raw() if self.value is not None else b""
        cut = self.model_copy(update={"truncated": True, "value": None, "headers": [], "dropped_headers": len(self.headers)})
        if self.value is not None:
            cut.value_size, cut.value_sha256 = len(value), hashlib.sha256(value).hexdigest()
        room = max_message_bytes - len(key) - len(cut.model_dump_json().encode()) - 64
        if room < len(key) * 6 + 64 and self.key is not None:  # the key's own copy must shrink too
            cut.key, cut.key_size, cut.key_sha256 = None, len(key), hashlib.sha256(key).hexdigest()
            room = max_message_bytes - len(key) - len(cut.model_dump_json().encode()) - 64
            cut.key = _prefix(key, room // 3)
            room -= len(cut.key.model_dump_json().encode())
        headers_size = sum(len(name.encode()) + len(v.model_dump_json()) + 8 for name, v in self.headers)
        if self.headers and headers_size <= room // 2:  # headers fit beside a value prefix
            cut.headers, cut.dropped_headers = list(self.headers), 0
            room -= headers_size
        if self.value is not None:
            cut.value = _prefix(value, max(0, room) // 6)  # JSON escaping: at most 6 bytes per byte
        return cut

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
    made_by: Maker | None = None,
) -> DeadLetter:
    """Envelope for an aiokafka ConsumerRecord (or anything with its attributes).

    `original_topic` overrides `record.topic` (the retry scheduler's letters name the topic the
    retry was for); `made_by` is the kind of worker making the letter.
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
        headers=[(safe_text(name), EncodedBytes.of(value or b"")) for name, value in (record.headers or ())],
        timestamp=timestamp,
        error_type=error_type,
        error_message=error_message,
        error_category=category,
        attempts=attempts,
        failed_at=datetime.now(UTC),
        worker=worker,
        trace_id=trace_id,
        made_by=made_by,
    )
