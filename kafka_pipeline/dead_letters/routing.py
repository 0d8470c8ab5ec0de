"""Delayed retries: the retry headers and the one function that decides a failed message's next hop.

A worker whose in-process retries could not get past a transient failure hands the consumed
record to `next_hop`. The answer is either a `RetryMessage` for the retry topic (the retry
scheduler sends it back to its target topic once it is due) or a `DeadLetter` for the DLQ topic,
after every configured delay was used once.

Attempt numbering, with `delays_s = [30, 120, 600, 1800]`:

=========================  =======================================================
message being processed    on a transient failure
=========================  =======================================================
fresh (no retry headers)   retry attempt 1, due now + 30 s
attempt 1                  retry attempt 2, due now + 120 s
attempt 2                  retry attempt 3, due now + 600 s
attempt 3                  retry attempt 4, due now + 1800 s
attempt 4                  dead letter, ``attempts = 5`` (processing attempts made)
=========================  =======================================================

A permanent failure goes to the dead-letter topic at once, whatever the attempt. An `auth`
failure is never routed (the worker pauses and reports), so `next_hop` refuses it.

Headers (values are ASCII/UTF-8 bytes) added to the message on the retry topic. The retry
scheduler forwards the message with these headers intact, so the worker that consumes it from
the target topic reads its attempt number with `attempt_of(record.headers)`:

- ``retry-attempt``: the attempt this message is scheduled for, 1 for the first retry
- ``retry-due-at``: epoch milliseconds before which it must not be re-sent
- ``retry-target-topic``: the topic to send it back to (the first failure's topic, kept across hops)
- ``retry-error-category``: category of the last failure
- ``retry-error``: type and message of the last failure, truncated
- ``retry-original-partition`` / ``retry-original-offset``: where the first failure was consumed

The original headers are preserved; retry headers from an earlier hop are replaced.

Headers are not trusted. Anyone who can produce to the events topic can set them, so:

- the target of a retry (and the `original_topic` of a dead letter) is always the topic the
  failed message was consumed from, a configured topic; `retry-target-topic` is only written;
- the attempt number and the first failure's coordinates are taken from the headers only when
  they read as a message the retry scheduler sent back (`trusted_retry`): every retry header
  present and valid, the target header naming the topic the message was consumed from, an
  attempt within the configured delays and an original position before this one. Otherwise
  the message counts as fresh (attempt 0, its own coordinates). A forger who builds a complete,
  consistent set can only change the retries of its own message; the DLQ tools de-duplicate by
  DLQ position, never by these coordinates;
- the retry scheduler forwards only to `allowed_retry_targets` (the events topic).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kafka_pipeline.dead_letters.envelope import (
    MAX_DLQ_MESSAGE_BYTES,
    DeadLetter,
    Maker,
    RecordView,
    dead_letter_for,
)
from kafka_pipeline.errors import Category, PipelineError

RETRY_ATTEMPT = "retry-attempt"
RETRY_DUE_AT = "retry-due-at"
RETRY_TARGET_TOPIC = "retry-target-topic"
RETRY_ERROR_CATEGORY = "retry-error-category"
RETRY_ERROR = "retry-error"
RETRY_ORIGINAL_PARTITION = "retry-original-partition"
RETRY_ORIGINAL_OFFSET = "retry-original-offset"

RETRY_HEADERS: frozenset[str] = frozenset(
    {
        RETRY_ATTEMPT,
        RETRY_DUE_AT,
        RETRY_TARGET_TOPIC,
        RETRY_ERROR_CATEGORY,
        RETRY_ERROR,
        RETRY_ORIGINAL_PARTITION,
        RETRY_ORIGINAL_OFFSET,
    }
)

# The `retry-error` header holds at most this many UTF-8 bytes.
MAX_ERROR_HEADER_BYTES = 1024
# A message bigger than this (key, value, headers) cannot take the retry topic: with the retry
# headers it would exceed the producer's limit, so a transient failure of it is dead-lettered.
MAX_RETRY_MESSAGE_BYTES = MAX_DLQ_MESSAGE_BYTES - 4 * MAX_ERROR_HEADER_BYTES

Headers = Sequence[tuple[str, bytes]]


class InvalidRetryHeaders(ValueError):
    """A message on the retry topic lacks a retry header or has one that does not parse."""


@dataclass(frozen=True)
class Failure:
    """What went wrong, as the routing needs it."""

    error_type: str
    message: str
    category: Category

    @classmethod
    def of(cls, exc: BaseException, *, default_category: Category = "permanent") -> Failure:
        """A `PipelineError` keeps its own type and category; anything else gets `default_category`."""
        if isinstance(exc, PipelineError):
            return cls(exc.error_type, str(exc), exc.category)
        return cls(type(exc).__name__, str(exc), default_category)


@dataclass(frozen=True)
class RetryMessage:
    """A message for the retry topic: send `key`, `value`, `headers` to `topic`."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    attempt: int
    due_at_ms: int
    target_topic: str


@dataclass(frozen=True)
class RetryInfo:
    """The retry headers of a message that came through the retry topic, parsed."""

    attempt: int
    due_at_ms: int
    target_topic: str
    original_partition: int | None = None
    original_offset: int | None = None
    error_category: str | None = None
    error: str | None = None


def now_ms() -> int:
    return int(time.time() * 1000)


def _header(headers: Iterable[tuple[str, bytes]] | None, name: str) -> bytes | None:
    found = None
    for key, value in headers or ():
        if key == name:
            found = value  # the last one wins, as a later hop appends
    return found


def _int_header(headers: Iterable[tuple[str, bytes]] | None, name: str) -> int | None:
    raw = _header(headers, name)
    if raw is None:
        return None
    try:
        return int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidRetryHeaders(f"header {name}={raw[:40]!r} is not an integer") from None


def attempt_of(headers: Iterable[tuple[str, bytes]] | None) -> int:
    """The retry attempt a consumed message is on: 0 for a fresh message, 1 for the first retry, ...

    A malformed `retry-attempt` header counts as 0: the next hop writes a valid one, so a
    foreign or corrupted header cannot wedge the message.
    """
    try:
        attempt = _int_header(headers, RETRY_ATTEMPT)
    except InvalidRetryHeaders:
        return 0
    return attempt if attempt is not None and attempt > 0 else 0


def allowed_retry_targets(kafka: Any) -> frozenset[str]:
    """The topics a retry may go back to: only the enrichment worker's input, the events topic."""
    return frozenset({kafka.events_topic})


def trusted_retry(headers: Headers, record: Any, delays_s: Sequence[float]) -> RetryInfo | None:
    """The retry headers of `record` when they read as the scheduler's (module docstring), else None."""
    try:
        info = parse_retry_headers(headers)
    except InvalidRetryHeaders:
        return None
    if info.target_topic != record.topic or info.attempt > len(delays_s):
        return None
    if info.original_partition is None or info.original_offset is None or info.original_offset < 0:
        return None
    if info.original_partition == record.partition and info.original_offset >= record.offset:
        return None
    return info


def parse_retry_headers(headers: Iterable[tuple[str, bytes]] | None) -> RetryInfo:
    """Read the retry headers the retry scheduler needs; InvalidRetryHeaders names what is wrong."""
    headers = list(headers or ())
    attempt = _int_header(headers, RETRY_ATTEMPT)
    due_at = _int_header(headers, RETRY_DUE_AT)
    target = _header(headers, RETRY_TARGET_TOPIC)
    missing = [
        name
        for name, value in ((RETRY_ATTEMPT, attempt), (RETRY_DUE_AT, due_at), (RETRY_TARGET_TOPIC, target))
        if value is None
    ]
    if missing:
        raise InvalidRetryHeaders(f"missing retry header(s): {', '.join(missing)}")
    assert attempt is not None and due_at is not None and target is not None
    if attempt < 1:
        raise InvalidRetryHeaders(f"header {RETRY_ATTEMPT}={attempt} must be 1 or more")
    if due_at < 0:
        raise InvalidRetryHeaders(f"header {RETRY_DUE_AT}={due_at} is negative")
    try:
        target_topic = target.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidRetryHeaders(f"header {RETRY_TARGET_TOPIC} is not UTF-8") from None
    if not target_topic:
        raise InvalidRetryHeaders(f"header {RETRY_TARGET_TOPIC} is empty")
    category = _header(headers, RETRY_ERROR_CATEGORY)
    error = _header(headers, RETRY_ERROR)
    return RetryInfo(
        attempt=attempt,
        due_at_ms=due_at,
        target_topic=target_topic,
        original_partition=_int_header(headers, RETRY_ORIGINAL_PARTITION),
        original_offset=_int_header(headers, RETRY_ORIGINAL_OFFSET),
        error_category=category.decode("utf-8", "replace") if category is not None else None,
        error=error.decode("utf-8", "replace") if error is not None else None,
    )


def strip_retry_headers(headers: Iterable[tuple[str, bytes]] | None) -> list[tuple[str, bytes]]:
    """The headers without the retry headers: a replayed message starts again at attempt 0."""
    return [(name, value) for name, value in headers or () if name not in RETRY_HEADERS]


def _truncate(text: str, limit: int = MAX_ERROR_HEADER_BYTES) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return raw
    return raw[: limit - 3].decode("utf-8", "ignore").encode("utf-8") + b"..."


def next_hop(
    record: Any,
    failure: Failure | BaseException,
    *,
    delays_s: Sequence[float],
    retry_topic: str,
    worker: str,
    now: int | None = None,
    trace_id: str | None = None,
    made_by: Maker | None = None,
) -> RetryMessage | DeadLetter:
    """Where a failed record goes next: the retry topic, or the dead-letter topic.

    `record` is the consumed aiokafka `ConsumerRecord` (or anything with `topic`, `partition`,
    `offset`, `key`, `value`, `headers`, `timestamp`). `now` is epoch milliseconds (default: the
    clock). A transient failure on attempt `n` (0 = fresh) schedules attempt `n + 1`, due
    `now + delays_s[n]`, while a delay is left; otherwise, and for a permanent failure, the
    answer is the dead letter with `attempts = n + 1` and `original_topic` = the topic the record
    was consumed from. `n` and the first failure's coordinates come from `trusted_retry`.
    An exception is described with `Failure.of` (a non-pipeline exception counts as permanent).
    """
    if isinstance(failure, BaseException):
        failure = Failure.of(failure)
    if failure.category == "auth":
        raise ValueError("auth failures are not retried or dead-lettered: pause the worker and report")
    if not delays_s:
        raise ValueError("delays_s must hold at least one delay")
    headers = list(record.headers or ())
    target_topic = record.topic  # never a header: see the module docstring
    retry = trusted_retry(headers, record, delays_s)
    failed_attempt = retry.attempt if retry is not None else 0
    if retry is not None and retry.original_partition is not None and retry.original_offset is not None:
        original_partition, original_offset = retry.original_partition, retry.original_offset
    else:
        original_partition, original_offset = record.partition, record.offset
    size = len(record.key or b"") + len(record.value or b"") + sum(len(n.encode()) + len(v or b"") for n, v in headers)
    if failure.category == "transient" and failed_attempt < len(delays_s) and size > MAX_RETRY_MESSAGE_BYTES:
        failure = Failure(failure.error_type, f"{failure.message} (not retried: {size} bytes do not fit the retry topic)", "transient")
    elif failure.category == "transient" and failed_attempt < len(delays_s):
        current = now_ms() if now is None else now
        attempt = failed_attempt + 1
        due_at = current + round(delays_s[failed_attempt] * 1000)
        retry_headers = [
            (RETRY_ATTEMPT, str(attempt).encode()),
            (RETRY_DUE_AT, str(due_at).encode()),
            (RETRY_TARGET_TOPIC, target_topic.encode()),
            (RETRY_ERROR_CATEGORY, failure.category.encode()),
            (RETRY_ERROR, _truncate(f"{failure.error_type}: {failure.message}")),
            (RETRY_ORIGINAL_PARTITION, str(original_partition).encode()),
            (RETRY_ORIGINAL_OFFSET, str(original_offset).encode()),
        ]
        return RetryMessage(
            topic=retry_topic,
            key=record.key,
            value=record.value,
            headers=[*strip_retry_headers(headers), *retry_headers],
            attempt=attempt,
            due_at_ms=due_at,
            target_topic=target_topic,
        )
    first_failure = RecordView(  # the first failure's coordinates
        topic=target_topic,
        partition=original_partition,
        offset=original_offset,
        key=record.key,
        value=record.value,
        headers=headers,
        timestamp=getattr(record, "timestamp", None),
    )
    return dead_letter_for(
        first_failure,
        error_type=failure.error_type,
        error_message=failure.message,
        category=failure.category,
        worker=worker,
        attempts=failed_attempt + 1,
        trace_id=trace_id,
        original_topic=target_topic,
        made_by=made_by,
    )
