"""Parsing ClaimX events: both name styles, ids as strings, UTC timestamps, the trace id, and
precise reasons for malformed messages."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest

from kafka_pipeline.claimx.events import ClaimXEvent, derive_trace_id, parse_event
from kafka_pipeline.config import Settings
from kafka_pipeline.errors import PermanentError


def raw(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_snake_and_camel_case_give_the_same_event() -> None:
    snake = parse_event(raw(event_type="PROJECT_FILE_ADDED", project_id="5000001", ingested_at="2026-01-05T14:03:07Z", media_id="5000001004"))
    camel = parse_event(raw(eventType="PROJECT_FILE_ADDED", projectId=5000001, ingestedAt="2026-01-05T14:03:07Z", mediaId=5000001004))
    assert snake == camel
    assert camel.project_id == "5000001" and camel.media_id == "5000001004"
    assert camel.ingested_at == datetime(2026, 1, 5, 14, 3, 7, tzinfo=UTC)


def test_ids_are_always_strings() -> None:
    event = parse_event(raw(event_type="CUSTOM_TASK_ASSIGNED", project_id=5000001.0, ingested_at="2026-01-05T14:03:07",
                            task_assignment_id=5000001002, video_collaboration_id="  77 ", event_id=123))
    assert (event.project_id, event.task_assignment_id, event.video_collaboration_id, event.event_id) == ("5000001", "5000001002", "77", "123")


@pytest.mark.parametrize("stamp", ["2026-01-05T14:03:07", "2026-01-05T14:03:07Z", "2026-01-05T14:03:07+00:00", "2026-01-05T09:03:07-05:00"])
def test_naive_is_utc_and_every_form_of_one_instant_has_one_trace_id(stamp: str) -> None:
    event = parse_event(raw(event_type="PROJECT_CREATED", project_id=1, ingested_at=stamp))
    assert event.ingested_at == datetime(2026, 1, 5, 14, 3, 7, tzinfo=UTC)
    assert event.ingested_at.tzinfo is UTC
    expected = hashlib.sha256(b"1|PROJECT_CREATED|2026-01-05T14:03:07+00:00").hexdigest()
    assert event.trace_id == expected


def test_trace_id_appends_each_optional_id_in_contract_order() -> None:
    event = parse_event(raw(event_type="X", project_id=9, ingested_at="2026-01-05T14:03:07.25Z", media_id=1,
                            task_assignment_id=2, video_collaboration_id=3, master_file_name="TX26-1"))
    text = "9|X|2026-01-05T14:03:07.250000+00:00|media:1|task:2|video:3|file:TX26-1"
    assert event.trace_id == hashlib.sha256(text.encode()).hexdigest()
    assert derive_trace_id("9", "X", datetime(2026, 1, 5, 14, 3, 7, 250000), media_id="1", task_assignment_id="2",
                           video_collaboration_id="3", master_file_name="TX26-1") == event.trace_id


def test_trace_id_is_the_event_id_when_given_and_stable_on_replay() -> None:
    assert parse_event(raw(event_type="X", project_id=1, ingested_at="2026-01-01T00:00:00Z", event_id="evt-42")).trace_id == "evt-42"
    body = raw(event_type="PROJECT_CREATED", project_id=1, ingested_at="2026-01-01T00:00:00Z")
    assert parse_event(body).trace_id == parse_event(body).trace_id


def test_model_validate_accepts_camel_case_too() -> None:
    event = ClaimXEvent.model_validate({"eventType": "PROJECT_CREATED", "projectId": 5, "ingestedAt": "2026-01-01T00:00:00"})
    assert event.project_id == "5" and event.ingested_at.tzinfo is not None
    assert "trace_id" in event.model_dump()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON: "),
        (b"\xff\xfe", "not JSON: "),
        (None, "not JSON: empty message"),
        (b"[1, 2]", "not a JSON object: got list"),
        (raw(project_id=1, ingested_at="2026-01-01T00:00:00Z"), "missing field event_type"),
        (raw(event_type="PROJECT_CREATED", ingested_at="2026-01-01T00:00:00Z"), "missing field project_id"),
        (raw(event_type="PROJECT_CREATED", project_id="", ingested_at="2026-01-01T00:00:00Z"), "missing field project_id"),
        (raw(event_type="PROJECT_CREATED", project_id=1), "missing field ingested_at"),
        (raw(event_type="PROJECT_CREATED", project_id=1, ingested_at="x"), "ingested_at: unparseable timestamp 'x'"),
        (raw(event_type="PROJECT_CREATED", project_id=1, ingested_at=1735689600), "ingested_at: unparseable timestamp 1735689600"),
        (raw(event_type="PROJECT_CREATED", project_id=True, ingested_at="2026-01-01T00:00:00Z"), "project_id: expected an id"),
        (raw(event_type="PROJECT_CREATED", project_id=1.5, ingested_at="2026-01-01T00:00:00Z"), "project_id: expected an integer id"),
        (raw(event_type="PROJECT_FILE_ADDED", project_id=1, ingested_at="2026-01-01T00:00:00Z"), "PROJECT_FILE_ADDED requires media_id"),
        (raw(event_type="CUSTOM_TASK_COMPLETED", project_id=1, ingested_at="2026-01-01T00:00:00Z"), "CUSTOM_TASK_COMPLETED requires task_assignment_id"),
        (raw(event_type="PROJECT_MFN_ADDED", project_id=1, ingested_at="2026-01-01T00:00:00Z"), "PROJECT_MFN_ADDED requires master_file_name"),
    ],
)
def test_malformed_messages_are_permanent_with_a_precise_reason(body: bytes | None, reason: str) -> None:
    with pytest.raises(PermanentError) as raised:
        parse_event(body)
    assert str(raised.value).startswith(reason)
    assert raised.value.error_type == "MalformedEvent" and raised.value.category == "permanent"


def test_unknown_types_and_optional_video_id_parse() -> None:
    assert parse_event(raw(event_type="SOMETHING_NEW", project_id=1, ingested_at="2026-01-01T00:00:00Z")).event_type == "SOMETHING_NEW"
    video = parse_event(raw(event_type="VIDEO_COLLABORATION_COMPLETED", project_id=1, ingested_at="2026-01-01T00:00:00Z"))
    assert video.video_collaboration_id is None


# --- hostile input (issue 10): nothing but PermanentError, whatever the bytes -------------------


from tests.faults.poison import corpus  # noqa: E402

MALFORMED_POISON = [p for p in corpus(huge=False) if p.error_type == "MalformedEvent"]


@pytest.mark.parametrize("poison", MALFORMED_POISON, ids=[p.name for p in MALFORMED_POISON])
def test_every_poison_message_is_malformed_with_its_reason(poison) -> None:  # noqa: ANN001
    with pytest.raises(PermanentError) as raised:
        parse_event(poison.value)
    assert raised.value.error_type == "MalformedEvent"
    assert poison.reason in str(raised.value), str(raised.value)
    str(raised.value).encode("utf-8")  # the reason itself is valid text (it goes into logs and the DLQ)


@pytest.mark.parametrize("value", ["1", "5000001", "abc-DEF_9", "z" * 64, "-5"])
def test_ids_safe_in_an_api_path_pass(value: str) -> None:
    assert parse_event(raw(event_type="PROJECT_CREATED", project_id=value, ingested_at="2026-01-01T00:00:00Z")).project_id == value


def test_far_future_limit_is_now_plus_the_configured_skew() -> None:
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    body = raw(event_type="PROJECT_CREATED", project_id=1, ingested_at="2026-06-02T11:00:00Z")  # 23 h ahead
    assert parse_event(body, now=now).ingested_at.day == 2
    with pytest.raises(PermanentError, match="in the future"):
        parse_event(body, now=now, max_future_skew_s=3600)
    assert Settings().enrich.max_future_skew_s == 86_400  # the setting's default: one day


def test_year_1_and_9999_in_utc_are_in_range_but_9999_is_too_far_ahead() -> None:
    assert parse_event(raw(event_type="PROJECT_CREATED", project_id=1, ingested_at="0001-01-01T00:00:00Z")).ingested_at.year == 1
    with pytest.raises(PermanentError, match="in the future"):
        parse_event(raw(event_type="PROJECT_CREATED", project_id=1, ingested_at="9999-12-31T23:59:59"))


def test_derive_trace_id_never_raises_on_invalid_unicode() -> None:
    bad = derive_trace_id("1", "X\ud800", datetime(2026, 1, 1, tzinfo=UTC), media_id="\udfff", master_file_name="\ud800x")
    assert len(bad) == 64
    good = derive_trace_id("1", "X", datetime(2026, 1, 1, tzinfo=UTC))
    assert good == hashlib.sha256(b"1|X|2026-01-01T00:00:00+00:00").hexdigest()  # valid text: the same hash as before


def test_parsed_events_are_the_ones_model_construct_builds() -> None:
    """`parse_event` builds the model without `model_construct`: same fields in the same order,
    same fields set, equal, same dump, for every kind of event (absent, null and blank optional
    fields, camel case, numeric ids)."""
    from kafka_pipeline.claimx.events import _CONSTRUCT_DIRECTLY, _UNSET_OPTIONAL
    from kafka_pipeline.simulator.events import generate_events

    assert _CONSTRUCT_DIRECTLY  # else every event takes model_construct: slower, not wrong
    lines = [line.encode() for line in generate_events(300, 20, seed="construct")]
    lines += [
        b'{"eventType": "PROJECT_NOTE_ADDED", "projectId": 7, "ingestedAt": "2026-03-01T01:00:00", "mediaId": null, "masterFileName": "  "}',
        b'{"event_type": "X", "project_id": "p-1", "ingested_at": "2026-03-01T01:00:00Z", "event_id": "e", "video_collaboration_id": 9}',
    ]
    for line in lines:
        event = parse_event(line)
        values = {name: getattr(event, name) for name in event.model_fields_set}
        built = ClaimXEvent.model_construct(set(values), **{**_UNSET_OPTIONAL, **values})
        assert event == built
        assert list(event.__dict__.items()) == list(built.__dict__.items())
        assert event.model_fields_set == built.model_fields_set
        assert event.model_dump() == built.model_dump() and repr(event) == repr(built)


@pytest.mark.parametrize("keys_first", [("mediaId", "projectId"), ("projectId", "mediaId")])
def test_the_first_bad_field_named_is_the_same_whatever_the_key_order(keys_first: tuple[str, str]) -> None:
    rest = {"eventType": "PROJECT_FILE_ADDED", "ingestedAt": "2026-01-01T00:00:00Z"}
    raw = json.dumps({**dict.fromkeys(keys_first, ".."), **rest}).encode()
    with pytest.raises(PermanentError, match="^project_id: '..' is not"):
        parse_event(raw)


def test_snake_case_wins_over_camel_case_in_either_order_and_a_null_one_is_skipped() -> None:
    at = "2026-01-01T00:00:00Z"
    for obj in ({"projectId": "1", "project_id": "2"}, {"project_id": "2", "projectId": "1"}, {"project_id": None, "projectId": "2"}):
        event = parse_event(json.dumps({**obj, "event_type": "PROJECT_CREATED", "ingested_at": at}).encode())
        assert event.project_id == "2"
