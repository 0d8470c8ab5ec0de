"""Property: whatever bytes arrive on the events topic, the enrichment worker's per-message path
ends in exactly one outcome and raises nothing (issue 10).

The path, as `EnrichmentWorker._dispatch`/`_process`/`_fail` run it, without Kafka: the bytes
are parsed (`parse_event` with the configured skew); a parsed event gets its trace id, its
type label and, as a handler would answer, either an entity-rows message (serialised for the
producer) or a permanent failure (a 404) routed by `route_failure`; an unparsed one is routed by
`route_failure` at once. A routed failure must be a dead letter whose envelope fits the producer
and reads back as the original message (whole, or a prefix with the original's SHA-256).
"""

from __future__ import annotations

import hashlib
import json
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kafka_pipeline.claimx.entity_rows import EntityRowsMessage
from kafka_pipeline.claimx.events import FIELD_ALIASES, parse_event
from kafka_pipeline.config import Settings, WorkerSettings
from kafka_pipeline.dead_letters.envelope import (
    MAX_DLQ_MESSAGE_BYTES,
    DeadLetter,
    RecordView,
)
from kafka_pipeline.dead_letters.routing import trusted_retry
from kafka_pipeline.errors import PermanentError
from kafka_pipeline.workers.enrich.outcomes import route_failure, type_label

SETTINGS = Settings(worker=WorkerSettings(name="enrich-prop"))
Outcome = Literal["produced", "dead_lettered"]


def outcome_of(value: bytes | None, headers: list[tuple[str, bytes]], *, handler_fails: bool) -> Outcome:
    """The one outcome of one consumed message; any exception is a failed property."""
    record = RecordView("claimx.events", 0, 10, b"key", value, headers, 1_767_225_600_000)
    try:
        event = parse_event(value, max_future_skew_s=SETTINGS.enrich.max_future_skew_s)
    except PermanentError as exc:
        return dead_letter(record, exc, None)
    type_label(event)
    if handler_fails:
        return dead_letter(record, PermanentError(f"GET /export/project/{event.project_id}: 404", error_type="NotFound"),
                           event.trace_id)
    message = EntityRowsMessage.model_construct(trace_id=event.trace_id, event_type=event.event_type,
                                                project_id=event.project_id, event_time=event.event_time, rows={})
    assert EntityRowsMessage.from_bytes(message.to_bytes()).project_id == event.project_id
    return "produced"


def dead_letter(record: RecordView, error: PermanentError, trace_id: str | None) -> Outcome:
    route = route_failure(record, error, settings=SETTINGS, trace_id=trace_id)
    assert route.outcome == "dead_lettered" and route.topic == SETTINGS.kafka.dlq_topic
    assert route.value is not None and len(route.value) + len(route.key or b"") <= MAX_DLQ_MESSAGE_BYTES
    letter = DeadLetter.from_bytes(route.value)
    # headers that read as the scheduler's own (consistent target, attempt and earlier position) count
    trusted = trusted_retry(record.headers, record, SETTINGS.retry.delays_s)
    assert letter.original_topic == "claimx.events" and letter.attempts == (1 if trusted is None else trusted.attempt + 1)
    if letter.truncated:
        assert record.value is not None and letter.value_sha256 == hashlib.sha256(record.value).hexdigest()
    else:
        assert (letter.value.raw() if letter.value is not None else None) == record.value
    return "dead_lettered"


# --- strategies ---------------------------------------------------------------------------------

surrogates = st.integers(0xD800, 0xDFFF).map(chr)
odd_text = st.text(st.one_of(st.characters(), surrogates, st.sampled_from("\x00\x1b\x9b\u202e١٢٣.%/")), max_size=40)
huge_ints = st.integers(1_000, 4_299).map(lambda n: int("9" * n))  # below the int parser's limit (huge_number_text goes above)
ids = st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), odd_text, huge_ints,
                st.sampled_from([".", "..", "١٢٣", "5000001", "a" * 65, "a" * 64, ""]), st.booleans(), st.none())
offsets = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
times = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59), timezones=st.one_of(st.none(), offsets))
    .map(lambda d: d.isoformat()),
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    odd_text, st.integers(), st.none(),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | odd_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(odd_text, children, max_size=4),
    max_leaves=20,
)
names = [name for aliases in FIELD_ALIASES.values() for name in aliases]
event_types = st.one_of(st.sampled_from(["PROJECT_CREATED", "PROJECT_FILE_ADDED", "CUSTOM_TASK_ASSIGNED", "PROJECT_MFN_ADDED",
                                         "VIDEO_COLLABORATION_COMPLETED", "SOMETHING_NEW"]), odd_text, ids)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """Event-shaped objects: the known fields under either name, odd values, extra junk."""
    obj: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(names), max_size=len(names), unique=True)):
        if "ingested" in name.lower():
            obj[name] = draw(times)
        elif "type" in name.lower():
            obj[name] = draw(event_types)
        else:
            obj[name] = draw(ids)
    obj.update(draw(st.dictionaries(odd_text, json_values, max_size=3)))
    return obj


def encode(obj: Any) -> bytes:
    """JSON text with surrogates kept as escapes, huge ints written out (json.dumps would refuse)."""
    return json.dumps(obj, default=str).encode()


deep = st.tuples(st.integers(1, 120_000), st.sampled_from(["[]", "{}"])).map(
    lambda t: ('{"a":' * t[0] + "1" + "}" * t[0]).encode() if t[1] == "{}" else ("[" * t[0] + "]" * t[0]).encode()
)
huge_number_text = st.integers(4_280, 5_000).map(
    lambda n: f'{{"event_type":"PROJECT_CREATED","project_id":1,"ingested_at":"2026-01-01T00:00:00Z","n":{"7" * n}}}'.encode()
)
raw_values = st.one_of(
    st.none(), st.binary(max_size=3_000), events().map(encode), json_values.map(encode), deep, huge_number_text,
    st.binary(min_size=1, max_size=50).map(lambda b: b * 20_000),  # up to 1 MB, escapes and base64 included
)
header_lists = st.lists(st.tuples(st.text(st.sampled_from(string.printable + "\x1b"), max_size=20),
                                  st.one_of(st.binary(max_size=30), st.sampled_from([b"4", b"claimx.entity_rows", b"-1", b"0"]))),
                        max_size=6)
retry_headers = st.lists(st.tuples(st.sampled_from(["retry-attempt", "retry-due-at", "retry-target-topic", "retry-original-partition",
                                                    "retry-original-offset"]),
                                   st.sampled_from([b"4", b"1", b"0", b"-3", b"claimx.entity_rows", b"claimx.events", b"\xff"])),
                         max_size=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(value=raw_values, headers=st.one_of(header_lists, retry_headers), handler_fails=st.booleans())
def test_bytes_end_in_exactly_one_outcome_and_never_raise(value: bytes | None, headers: list[tuple[str, bytes]],
                                                          handler_fails: bool) -> None:
    assert outcome_of(value, headers, handler_fails=handler_fails) in ("produced", "dead_lettered")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=events())
def test_a_parsed_event_is_safe_to_use(obj: dict[str, Any]) -> None:
    """What parses has ids safe in an API path, valid text, and a time not beyond now + skew."""
    try:
        event = parse_event(encode(obj))
    except PermanentError:
        return
    for name in ("project_id", "media_id", "task_assignment_id", "video_collaboration_id"):
        value = getattr(event, name)
        assert value is None or (value.isascii() and 1 <= len(value) <= 64 and all(c.isalnum() or c in "-_" for c in value))
    for text in (event.event_type, event.master_file_name, event.event_id, event.trace_id):
        assert text is None or text.encode("utf-8")
    assert event.ingested_at <= datetime.now(UTC) + timedelta(seconds=SETTINGS.enrich.max_future_skew_s)
    assert event.ingested_at.tzinfo is not None
