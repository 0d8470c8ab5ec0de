"""The dead-letter envelope under hostile input: it is always built, always valid JSON, always
small enough for the producer (cut to a prefix with size, SHA-256 and `truncated: true`), and the
failure path of the enrichment worker never raises on a poison message."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from kafka_pipeline.claimx.events import parse_event
from kafka_pipeline.config import KafkaSettings, Settings, WorkerSettings
from kafka_pipeline.dead_letters.envelope import (
    MAX_DLQ_MESSAGE_BYTES,
    DeadLetter,
    EncodedBytes,
    RecordView,
    dead_letter_for,
    dlq_key,
)
from kafka_pipeline.errors import PermanentError
from kafka_pipeline.kafka.clients import ensure_topics, make_producer
from kafka_pipeline.ops.dlq import DlqEntry, DlqSnapshot, inspect_entries
from kafka_pipeline.workers.enrich.worker import route_failure
from tests.faults.poison import corpus

SETTINGS = Settings(worker=WorkerSettings(name="enrich-test"))


def letter_for(value: bytes | None, *, key: bytes | None = b"k", headers: list[tuple[str, bytes]] | None = None) -> DeadLetter:
    record = RecordView("claimx.events", 3, 77, key, value, headers or [("h", b"v")], 1_767_225_600_000)
    return dead_letter_for(record, error_type="MalformedEvent", error_message="not JSON", category="permanent",
                           worker="w", made_by="enrich")


def message_size(letter: DeadLetter) -> int:
    return len(dlq_key(letter.key.raw() if letter.key else None) or b"") + len(letter.to_bytes())


@pytest.mark.parametrize(
    "value",
    [bytes([1]) * 300_000, os.urandom(800_000), json.dumps({"pad": "p" * 3_000_000}).encode(), "é".encode() * 600_000],
    ids=["control-bytes-300k", "binary-800k", "valid-json-3mb", "multibyte-1.2mb"],
)
def test_an_envelope_over_the_limit_keeps_a_prefix_its_size_and_sha256(value: bytes) -> None:
    letter = letter_for(value)
    assert len(EncodedBytes.of(value).model_dump_json().encode()) > MAX_DLQ_MESSAGE_BYTES  # whole, it would not fit
    assert message_size(letter) <= MAX_DLQ_MESSAGE_BYTES
    back = DeadLetter.from_bytes(letter.to_bytes())
    assert back.truncated is True
    assert back.value_size == len(value) and back.value_sha256 == hashlib.sha256(value).hexdigest()
    assert back.value is not None and len(back.value.raw()) > 10_000 and value.startswith(back.value.raw())
    assert back.headers == [("h", letter.headers[0][1])] and back.dropped_headers == 0
    assert (back.original_topic, back.partition, back.offset, back.error_message) == ("claimx.events", 3, 77, "not JSON")


def test_a_small_envelope_is_whole() -> None:
    letter = letter_for(b"{bad")
    back = DeadLetter.from_bytes(letter.to_bytes())
    assert back == letter and back.truncated is False and back.value_sha256 is None


def test_a_huge_key_and_huge_headers_are_cut_too() -> None:
    key = b"K" * 700_000
    letter = letter_for(b"v" * 200_000, key=key, headers=[("big", b"\x00" * 200_000)])
    assert message_size(letter) <= MAX_DLQ_MESSAGE_BYTES
    back = DeadLetter.from_bytes(letter.to_bytes())
    assert back.truncated and back.key_size == len(key) and back.key_sha256 == hashlib.sha256(key).hexdigest()
    assert back.headers == [] and back.dropped_headers == 1


def test_text_that_is_not_valid_unicode_is_escaped_never_raised() -> None:
    record = RecordView("claimx.events", 0, 1, None, b"x", [("\udc80name", b"v")])
    letter = dead_letter_for(record, error_type="X\ud800", error_message="bad \udfff" + "m" * 10_000, category="permanent",
                             worker="w", trace_id="\ud800")
    back = DeadLetter.from_bytes(letter.to_bytes())
    assert back.trace_id == "\\ud800" and back.error_type == "X\\ud800" and back.headers[0][0] == "\\udc80name"
    assert back.error_message.startswith("bad \\udfff") and len(back.error_message) <= 4_003


@pytest.mark.parametrize("poison", corpus(), ids=lambda p: p.name)
def test_the_failure_path_never_raises_on_a_poison_message(poison) -> None:  # noqa: ANN001
    """parse -> route_failure -> envelope bytes, as the enrichment worker's `_fail` does it."""
    record = RecordView("claimx.events", 1, 5, poison.key, poison.value, list(poison.headers), 1_767_225_600_000)
    try:
        event = parse_event(poison.value)
        error = PermanentError(poison.reason, error_type=poison.error_type)  # what its handler raises (a 404)
    except PermanentError as exc:
        event, error = None, exc
    route = route_failure(record, error, settings=SETTINGS, trace_id=event.trace_id if event else None)
    assert route.outcome == "dead_lettered" and route.topic == SETTINGS.kafka.dlq_topic
    assert route.value is not None and len(route.value) + len(route.key or b"") <= MAX_DLQ_MESSAGE_BYTES
    letter = DeadLetter.from_bytes(route.value)
    assert letter.original_topic == "claimx.events"  # never the topic a header names
    assert (letter.partition, letter.offset, letter.attempts) == (1, 5, 1)  # forged coordinates and attempt ignored
    assert letter.made_by == "enrich" and poison.reason in letter.error_message
    assert letter.truncated is poison.oversize


def test_inspect_shows_a_truncated_letter() -> None:
    value = os.urandom(800_000)
    letter = letter_for(value)
    snapshot = DlqSnapshot(topic="dlq", exists=True, entries=[DlqEntry(0, 9, b"k", letter.to_bytes(), DeadLetter.from_bytes(letter.to_bytes()))])
    [shown] = inspect_entries(snapshot)
    assert shown["truncated"] is True and shown["value_size"] == 800_000
    assert shown["value_sha256"] == hashlib.sha256(value).hexdigest() and "base64" in shown["value"]


async def test_the_producer_takes_every_cut_envelope(kafka_settings: KafkaSettings) -> None:
    """The limit holds against aiokafka's own size check (max_request_size) and the broker."""
    await ensure_topics(kafka_settings, [kafka_settings.dlq_topic])
    producer = make_producer(kafka_settings)
    await producer.start()
    try:
        for value in (bytes([1]) * 300_000, os.urandom(800_000), b"p" * 3_000_000):
            letter = letter_for(value, key=b"K" * 50_000)
            metadata = await producer.send_and_wait(kafka_settings.dlq_topic, letter.to_bytes(), key=dlq_key(letter.key.raw() if letter.key else None))
            assert metadata.offset >= 0
    finally:
        await producer.stop()
