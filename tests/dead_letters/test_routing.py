"""Retry routing: headers, attempt numbering, the hand-over to the dead-letter topic."""

from __future__ import annotations

import pytest

from kafka_pipeline.dead_letters.envelope import DeadLetter
from kafka_pipeline.dead_letters.envelope import RecordView as Record
from kafka_pipeline.dead_letters.routing import (
    MAX_ERROR_HEADER_BYTES,
    MAX_RETRY_MESSAGE_BYTES,
    RETRY_ATTEMPT,
    RETRY_DUE_AT,
    RETRY_ERROR,
    RETRY_ERROR_CATEGORY,
    RETRY_HEADERS,
    RETRY_ORIGINAL_OFFSET,
    RETRY_ORIGINAL_PARTITION,
    RETRY_TARGET_TOPIC,
    Failure,
    InvalidRetryHeaders,
    RetryMessage,
    attempt_of,
    next_hop,
    parse_retry_headers,
    strip_retry_headers,
)
from kafka_pipeline.errors import AuthError, PermanentError, TransientError

DELAYS = [30.0, 120.0, 600.0, 1800.0]
TRANSIENT = Failure("ApiUnavailable", "503 from /export/project/17", "transient")
NOW = 1_700_000_000_000




def fresh() -> Record:
    return Record("claimx.events", 2, 41, b"17", b'{"event_type":"PROJECT_CREATED"}', [("traceparent", b"00-abc")])


def forwarded(message: RetryMessage, *, partition: int = 0, offset: int = 900) -> Record:
    """The message as the worker consumes it after the scheduler sent it back to its target."""
    return Record(message.target_topic, partition, offset, message.key, message.value, list(message.headers))


def hop(record: Record, now: int = NOW, failure: Failure = TRANSIENT) -> RetryMessage | DeadLetter:
    return next_hop(record, failure, delays_s=DELAYS, retry_topic="claimx.retry", worker="enrich-1", now=now)


def test_first_failure_schedules_attempt_one_after_the_first_delay() -> None:
    message = hop(fresh())
    assert isinstance(message, RetryMessage)
    assert message.topic == "claimx.retry"
    assert (message.key, message.value) == (b"17", b'{"event_type":"PROJECT_CREATED"}')
    assert message.attempt == 1 and message.due_at_ms == NOW + 30_000
    headers = dict(message.headers)
    assert headers["traceparent"] == b"00-abc"  # original headers preserved
    assert headers[RETRY_ATTEMPT] == b"1"
    assert headers[RETRY_DUE_AT] == str(NOW + 30_000).encode()
    assert headers[RETRY_TARGET_TOPIC] == b"claimx.events"
    assert headers[RETRY_ERROR_CATEGORY] == b"transient"
    assert headers[RETRY_ERROR] == b"ApiUnavailable: 503 from /export/project/17"
    assert (headers[RETRY_ORIGINAL_PARTITION], headers[RETRY_ORIGINAL_OFFSET]) == (b"2", b"41")
    assert attempt_of(message.headers) == 1


def test_every_delay_is_used_exactly_once_then_the_dead_letter_has_attempts_five() -> None:
    record = fresh()
    seen_delays: list[int] = []
    seen_attempts: list[int] = []
    now = NOW
    for hop_number in range(len(DELAYS)):
        assert attempt_of(record.headers) == hop_number
        message = hop(record, now=now)
        assert isinstance(message, RetryMessage), f"hop {hop_number} went to the DLQ too early"
        seen_delays.append(message.due_at_ms - now)
        seen_attempts.append(message.attempt)
        now = message.due_at_ms + 5
        record = forwarded(message, offset=1000 + hop_number)
    assert seen_delays == [30_000, 120_000, 600_000, 1_800_000]
    assert seen_attempts == [1, 2, 3, 4]

    dead = hop(record, now=now)
    assert isinstance(dead, DeadLetter)
    assert dead.attempts == 5  # the original try plus one per delay
    assert dead.original_topic == "claimx.events"
    assert (dead.partition, dead.offset) == (2, 41)  # the first failure, not the last copy
    assert dead.error_type == "ApiUnavailable" and dead.error_category == "transient"
    assert dead.key.raw() == b"17" and dead.value.raw() == b'{"event_type":"PROJECT_CREATED"}'
    assert dead.worker == "enrich-1"


def test_single_delay_means_two_attempts() -> None:
    first = next_hop(fresh(), TRANSIENT, delays_s=[5], retry_topic="r", worker="w", now=NOW)
    assert isinstance(first, RetryMessage) and first.due_at_ms == NOW + 5_000
    dead = next_hop(forwarded(first), TRANSIENT, delays_s=[5], retry_topic="r", worker="w", now=NOW)
    assert isinstance(dead, DeadLetter) and dead.attempts == 2


def test_target_topic_and_first_failure_survive_every_hop() -> None:
    message = hop(fresh())
    assert isinstance(message, RetryMessage)
    # a later hop: consumed from the target topic at another partition/offset
    second = hop(forwarded(message, partition=5, offset=7777))
    assert isinstance(second, RetryMessage)
    headers = dict(second.headers)
    assert headers[RETRY_TARGET_TOPIC] == b"claimx.events"
    assert (headers[RETRY_ORIGINAL_PARTITION], headers[RETRY_ORIGINAL_OFFSET]) == (b"2", b"41")
    # retry headers are replaced, never duplicated
    names = [name for name, _ in second.headers]
    assert all(names.count(name) == 1 for name in RETRY_HEADERS)
    assert names.count("traceparent") == 1


def test_permanent_failure_goes_to_the_dlq_at_once_with_attempts_made() -> None:
    dead = hop(fresh(), failure=Failure.of(PermanentError("404 task 9", error_type="NotFound")))
    assert isinstance(dead, DeadLetter)
    assert dead.attempts == 1 and dead.error_category == "permanent" and dead.error_type == "NotFound"
    message = hop(fresh())
    assert isinstance(message, RetryMessage)
    dead = hop(forwarded(message), failure=Failure("NotFound", "404", "permanent"))
    assert isinstance(dead, DeadLetter) and dead.attempts == 2 and dead.original_topic == "claimx.events"


def test_exceptions_are_described_by_their_category() -> None:
    message = next_hop(fresh(), TransientError("timeout"), delays_s=DELAYS, retry_topic="r", worker="w", now=NOW)
    assert isinstance(message, RetryMessage)
    assert dict(message.headers)[RETRY_ERROR] == b"TransientError: timeout"
    dead = next_hop(fresh(), KeyError("x"), delays_s=DELAYS, retry_topic="r", worker="w", now=NOW)
    assert isinstance(dead, DeadLetter) and dead.error_category == "permanent" and dead.error_type == "KeyError"
    with pytest.raises(ValueError, match="auth"):
        next_hop(fresh(), AuthError("401"), delays_s=DELAYS, retry_topic="r", worker="w", now=NOW)


def test_long_error_is_truncated_to_valid_utf8() -> None:
    message = hop(fresh(), failure=Failure("Boom", "é" * 5000, "transient"))
    assert isinstance(message, RetryMessage)
    error = dict(message.headers)[RETRY_ERROR]
    assert len(error) <= MAX_ERROR_HEADER_BYTES
    assert error.decode("utf-8").endswith("...")


def test_attempt_of_fresh_and_malformed() -> None:
    assert attempt_of(None) == 0
    assert attempt_of([]) == 0
    assert attempt_of([("other", b"3")]) == 0
    assert attempt_of([(RETRY_ATTEMPT, b"3")]) == 3
    assert attempt_of([(RETRY_ATTEMPT, b"three")]) == 0
    assert attempt_of([(RETRY_ATTEMPT, b"-2")]) == 0


def test_parse_retry_headers_names_what_is_wrong() -> None:
    message = hop(fresh())
    assert isinstance(message, RetryMessage)
    info = parse_retry_headers(message.headers)
    assert (info.attempt, info.due_at_ms, info.target_topic) == (1, NOW + 30_000, "claimx.events")
    assert (info.original_partition, info.original_offset) == (2, 41)
    with pytest.raises(InvalidRetryHeaders, match="retry-due-at, retry-target-topic"):
        parse_retry_headers([(RETRY_ATTEMPT, b"1")])
    with pytest.raises(InvalidRetryHeaders, match="retry-due-at"):
        parse_retry_headers([(RETRY_ATTEMPT, b"1"), (RETRY_DUE_AT, b"soon"), (RETRY_TARGET_TOPIC, b"t")])
    with pytest.raises(InvalidRetryHeaders, match="empty"):
        parse_retry_headers([(RETRY_ATTEMPT, b"1"), (RETRY_DUE_AT, b"1"), (RETRY_TARGET_TOPIC, b" ")])
    with pytest.raises(InvalidRetryHeaders, match="1 or more"):
        parse_retry_headers([(RETRY_ATTEMPT, b"0"), (RETRY_DUE_AT, b"1"), (RETRY_TARGET_TOPIC, b"t")])


def test_strip_retry_headers_resets_the_attempt_count() -> None:
    message = hop(fresh())
    assert isinstance(message, RetryMessage)
    stripped = strip_retry_headers(message.headers)
    assert stripped == [("traceparent", b"00-abc")]
    assert attempt_of(stripped) == 0
    again = hop(Record("claimx.events", 0, 1, b"17", b"v", stripped))
    assert isinstance(again, RetryMessage) and again.attempt == 1


# --- headers from the events topic are not trusted (issue 10) ---------------------------------


def forged(*headers: tuple[str, bytes], offset: int = 41) -> Record:
    return Record("claimx.events", 2, offset, b"17", b"{}", list(headers))


def test_a_forged_target_topic_is_ignored_the_record_topic_is_the_target() -> None:
    record = forged((RETRY_TARGET_TOPIC, b"claimx.entity_rows"))
    message = hop(record)
    assert isinstance(message, RetryMessage) and message.target_topic == "claimx.events"
    assert dict(message.headers)[RETRY_TARGET_TOPIC] == b"claimx.events"
    dead = hop(record, failure=Failure("NotFound", "404", "permanent"))
    assert isinstance(dead, DeadLetter) and dead.original_topic == "claimx.events" and dead.made_by is None


@pytest.mark.parametrize(
    "headers",
    [
        [(RETRY_ATTEMPT, b"4")],  # the bare attempt
        [(RETRY_ATTEMPT, b"4"), (RETRY_DUE_AT, b"0"), (RETRY_TARGET_TOPIC, b"claimx.entity_rows"),
         (RETRY_ORIGINAL_PARTITION, b"0"), (RETRY_ORIGINAL_OFFSET, b"0")],  # a foreign target
        [(RETRY_ATTEMPT, b"40"), (RETRY_DUE_AT, b"0"), (RETRY_TARGET_TOPIC, b"claimx.events"),
         (RETRY_ORIGINAL_PARTITION, b"0"), (RETRY_ORIGINAL_OFFSET, b"0")],  # beyond the configured delays
        [(RETRY_ATTEMPT, b"4"), (RETRY_DUE_AT, b"0"), (RETRY_TARGET_TOPIC, b"claimx.events")],  # no original position
        [(RETRY_ATTEMPT, b"4"), (RETRY_DUE_AT, b"0"), (RETRY_TARGET_TOPIC, b"claimx.events"),
         (RETRY_ORIGINAL_PARTITION, b"2"), (RETRY_ORIGINAL_OFFSET, b"41")],  # "originally" this very message
        [(RETRY_ATTEMPT, b"4"), (RETRY_DUE_AT, b"0"), (RETRY_TARGET_TOPIC, b"claimx.events"),
         (RETRY_ORIGINAL_PARTITION, b"2"), (RETRY_ORIGINAL_OFFSET, b"99")],  # a later position
    ],
    ids=["bare-attempt", "foreign-target", "attempt-beyond-delays", "no-original", "self-original", "later-original"],
)
def test_retry_headers_that_do_not_read_as_the_schedulers_count_as_a_fresh_message(headers) -> None:  # noqa: ANN001
    message = hop(forged(*headers))
    assert isinstance(message, RetryMessage) and message.attempt == 1, "forged headers skipped retries"
    assert (dict(message.headers)[RETRY_ORIGINAL_PARTITION], dict(message.headers)[RETRY_ORIGINAL_OFFSET]) == (b"2", b"41")
    dead = hop(forged(*headers), failure=Failure("NotFound", "404", "permanent"))
    assert isinstance(dead, DeadLetter) and (dead.partition, dead.offset, dead.attempts) == (2, 41, 1)


def test_a_message_too_big_for_the_retry_topic_is_dead_lettered_not_retried() -> None:
    big = Record("claimx.events", 2, 41, b"17", b"x" * MAX_RETRY_MESSAGE_BYTES, [])
    dead = hop(big, failure=Failure("Timeout", "GET /export/project/17: timed out", "transient"))
    assert isinstance(dead, DeadLetter) and dead.attempts == 1 and dead.error_category == "transient"
    assert "not retried" in dead.error_message and "do not fit the retry topic" in dead.error_message
    assert len(dead.to_bytes()) + 2 <= 1_000_000  # and its envelope is cut to fit the DLQ
    assert isinstance(hop(Record("claimx.events", 2, 41, b"17", b"x" * 1000, [])), RetryMessage)
