"""The dead-letter envelope: one shape for every worker, everything needed to inspect or replay.

The envelope is the value of a message on the DLQ topic, keyed like the original message.

Oversize. A consumed message fits the broker, but its envelope may not: JSON escaping turns a
control byte into six bytes, base64 turns three into four, and the key, headers and reason come
on top. `DeadLetter.to_bytes` is the one place every worker serialises an envelope, and it keeps
the DLQ message (key plus envelope) under `MAX_DLQ_MESSAGE_BYTES`: an envelope over it keeps a
prefix of the original value (and key, if needed), their sizes and SHA-256, and
`truncated: true`; the original headers go if they still do not fit (`dropped_headers` counts
them). A truncated letter can be inspected but not replayed. The sizes come from the raw bytes,
before anything is JSON-encoded: `dead_letter_for` never copies more than `MAX_DLQ_MESSAGE_BYTES`
of a key or value into an envelope (a 100 MB decompressed value costs one SHA-256 pass, not a
100 MB JSON string), and the DLQ record's own key is `dlq_key(key)`: the key itself, or its
SHA-256 when it is longer than `MAX_DLQ_KEY_BYTES` (Kafka takes a 1 MB key; the DLQ could not).

The envelope's fields from the record's metadata are input too: a broker timestamp outside
years 1970-9999 (a producer sets any `timestamp_ms`, -2^63 included) is kept as absent.

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
# The DLQ record's key: the original key up to this size, its SHA-256 (hex) beyond.
MAX_DLQ_KEY_BYTES = 4_096
# Headers kept in an envelope (a record may carry any number; the rest are counted as dropped).
MAX_HEADERS = 1_000
# A broker timestamp is kept when it lies in 1970-01-01 .. 9999-12-31 (epoch ms).
MAX_TIMESTAMP_MS = 253_402_300_799_999
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


def safe_text(text: str, limit: int | None = None) -> str:
    """`text` as valid UTF-8 (lone surrogates backslash-escaped, never raised on), cut after
    `limit` characters with "..." when a limit is given."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if limit is None or len(text) <= limit else text[:limit] + "..."


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
        key = self.key.raw() if self.key is not None else b""
        value = self.value.raw() if self.value is not None else b""
        record_key = len(dlq_key(key) or b"")
        headers = sum(len(name) + len(v.data) for name, v in self.headers)
        # Raw sizes first: past the limit before any escaping, the whole envelope is never built.
        if record_key + len(key) + len(value) + headers <= max_message_bytes:
            data = self.model_dump_json().encode()
            if record_key + len(data) <= max_message_bytes:
                return data
        return self._cut(key, value, max_message_bytes - record_key).model_dump_json().encode()

    def _cut(self, key: bytes, value: bytes, room: int) -> DeadLetter:
        """A copy within `room` bytes of JSON: key and value prefixes (sizes and SHA-256 kept),
        the headers when they fit beside them. JSON takes at most 6 bytes per byte (a control byte escaped)."""
        cut = self.model_copy(update={
            "truncated": True, "key": None, "value": None, "headers": [],
            "dropped_headers": self.dropped_headers + len(self.headers),
        })
        if self.value is not None and cut.value_size is None:
            cut.value_size, cut.value_sha256 = len(value), hashlib.sha256(value).hexdigest()
        if self.key is not None and cut.key_size is None and len(key) * 6 > room // 4:
            cut.key_size, cut.key_sha256 = len(key), hashlib.sha256(key).hexdigest()
        room -= len(cut.model_dump_json().encode()) + 256  # the skeleton, and the fields still to come
        if self.key is not None:
            cut.key = EncodedBytes.of(key) if cut.key_size is None else _prefix(key, max(0, room // 4) // 6)
            room -= len(cut.key.model_dump_json().encode())
        headers_size = sum(len(name.encode()) + len(v.model_dump_json()) + 8 for name, v in self.headers)
        if self.headers and headers_size <= room // 2:  # headers fit beside a value prefix
            cut.headers, cut.dropped_headers = list(self.headers), self.dropped_headers
            room -= headers_size
        if self.value is not None:
            cut.value = _prefix(value, max(0, room) // 6)
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
    retry was for); `made_by` is the kind of worker making the letter. A key or value longer
    than `MAX_DLQ_MESSAGE_BYTES` is kept as a prefix with its size and SHA-256 at once.
    """
    key, key_size, key_sha = _bounded(record.key)
    headers = list(record.headers or ())
    value, value_size, value_sha = _bounded(record.value)
    return DeadLetter(
        original_topic=original_topic or record.topic,
        partition=record.partition,
        offset=record.offset,
        key=key,
        value=value,
        headers=[(header_name(name), _bounded(value or b"")[0] or EncodedBytes.of(b"")) for name, value in headers[:MAX_HEADERS]],
        timestamp=record_time(getattr(record, "timestamp", None)),
        error_type=error_type,
        error_message=error_message,
        error_category=category,
        attempts=attempts,
        failed_at=datetime.now(UTC),
        worker=worker,
        trace_id=trace_id,
        made_by=made_by,
        truncated=key_size is not None or value_size is not None,
        key_size=key_size,
        key_sha256=key_sha,
        value_size=value_size,
        value_sha256=value_sha,
        dropped_headers=max(0, len(headers) - MAX_HEADERS),
    )


def _bounded(raw: bytes | None, limit: int = MAX_DLQ_MESSAGE_BYTES) -> tuple[EncodedBytes | None, int | None, str | None]:
    """(`raw` as text, None, None), or past `limit` bytes (a prefix, its size, its SHA-256)."""
    if raw is None:
        return None, None, None
    if len(raw) <= limit:
        return EncodedBytes.of(raw), None, None
    return _prefix(raw, limit), len(raw), hashlib.sha256(raw).hexdigest()


def header_name(name: str | bytes) -> str:
    """A header name as valid text: bytes that are not UTF-8 are backslash-escaped."""
    if isinstance(name, bytes):
        return name.decode("utf-8", "backslashreplace")
    return safe_text(name)


def record_time(timestamp_ms: Any) -> datetime | None:
    """A record's broker timestamp, or None when absent or outside 1970..9999 (never raises)."""
    if not isinstance(timestamp_ms, int) or not 0 <= timestamp_ms <= MAX_TIMESTAMP_MS:
        return None
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)


def dlq_key(key: bytes | None) -> bytes | None:
    """The DLQ record's key: the original key, or its SHA-256 (hex) when over `MAX_DLQ_KEY_BYTES`."""
    if key is None or len(key) <= MAX_DLQ_KEY_BYTES:
        return key
    return hashlib.sha256(key).hexdigest().encode()
