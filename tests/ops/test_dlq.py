"""`kafka-pipeline dlq` against the real broker: list, inspect, replay once, purge."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from kafka_pipeline.cli import main
from kafka_pipeline.config import KafkaSettings
from kafka_pipeline.dead_letters.envelope import DeadLetter, EncodedBytes, dead_letter_for
from kafka_pipeline.dead_letters.envelope import RecordView as Record
from kafka_pipeline.dead_letters.routing import RETRY_ATTEMPT, Failure, RetryMessage, next_hop
from kafka_pipeline.kafka.clients import ensure_topics, make_consumer, make_producer
from kafka_pipeline.ops.dlq import MARKER_HEADER, read_dlq


@pytest.fixture(autouse=True)
def configured_topics(kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dlq replay` sends only to the configured topics, read from the environment as in production."""
    monkeypatch.setenv("KAFKA_EVENTS_TOPIC", kafka_settings.events_topic)
    monkeypatch.setenv("KAFKA_ENTITY_ROWS_TOPIC", kafka_settings.entity_rows_topic)


def parse_failure(kafka: KafkaSettings, n: int) -> DeadLetter:
    record = Record(kafka.events_topic, 0, n, f"p{n}".encode(), f"not json {n}".encode(), [("source", b"sim")])
    return dead_letter_for(record, error_type="EventParseError", error_message="not JSON", category="permanent",
                           worker="enrich-1", trace_id=f"t-{n}")


def exhausted_retries(kafka: KafkaSettings, n: int) -> DeadLetter:
    """A transient failure that used its one retry: the envelope carries the retry headers."""
    value = json.dumps({"event_type": "PROJECT_CREATED", "project_id": str(n)}).encode()
    record = Record(kafka.events_topic, 1, n, f"p{n}".encode(), value, [("source", b"sim")])
    failure = Failure("ApiUnavailable", "503", "transient")
    first = next_hop(record, failure, delays_s=[1], retry_topic=kafka.retry_topic, worker="enrich-1")
    assert isinstance(first, RetryMessage)
    again = Record(kafka.events_topic, 2, 500 + n, first.key, first.value, first.headers)
    letter = next_hop(again, failure, delays_s=[1], retry_topic=kafka.retry_topic, worker="enrich-1", trace_id=f"t-{n}")
    assert isinstance(letter, DeadLetter) and letter.attempts == 2
    return letter


async def seed(kafka: KafkaSettings, letters: list[DeadLetter], *, garbage: bool = False) -> None:
    await ensure_topics(kafka, [kafka.events_topic, kafka.dlq_topic])
    producer = make_producer(kafka)
    await producer.start()
    try:
        for letter in letters:
            await producer.send_and_wait(kafka.dlq_topic, letter.to_bytes(), key=letter.key.raw() if letter.key else None)
        if garbage:
            await producer.send_and_wait(kafka.dlq_topic, b"\xff not an envelope", key=b"x")
    finally:
        await producer.stop()


async def cli(*argv: str) -> int:
    """The real command line, in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(main, list(argv))


def dlq_args(kafka: KafkaSettings) -> list[str]:
    return ["--bootstrap-servers", kafka.bootstrap_servers, "--topic", kafka.dlq_topic]


async def consume(kafka: KafkaSettings, topic: str, *, quiet_s: float = 1.5) -> list:
    """Everything on `topic`, read until it stays quiet for `quiet_s`."""
    consumer = make_consumer(kafka, topic, group_id=None)
    await consumer.start()
    records: list = []
    try:
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
                last = time.monotonic()
    finally:
        await consumer.stop()
    return records


async def test_list_and_inspect(kafka_settings: KafkaSettings, capsys: pytest.CaptureFixture[str]) -> None:
    kafka = kafka_settings
    await seed(kafka, [parse_failure(kafka, n) for n in range(3)] + [exhausted_retries(kafka, n) for n in range(3, 5)],
               garbage=True)

    assert await cli("dlq", "list", *dlq_args(kafka)) == 0
    text = capsys.readouterr().out
    assert f"DLQ {kafka.dlq_topic}: 5 dead letters (5 not replayed, 0 replayed), 1 unreadable records" in text
    lines = [line.split() for line in text.splitlines()]
    assert [kafka.events_topic, "permanent", "EventParseError", "3"] in lines
    assert [kafka.events_topic, "transient", "ApiUnavailable", "2"] in lines

    assert await cli("dlq", "list", "--json", *dlq_args(kafka)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["total"] == 5 and summary["unreadable"] == 1 and summary["complete"] is True
    assert {(g["error_type"], g["error_category"], g["original_topic"], g["count"]) for g in summary["groups"]} == {
        ("EventParseError", "permanent", kafka.events_topic, 3),
        ("ApiUnavailable", "transient", kafka.events_topic, 2),
    }

    assert await cli("dlq", "inspect", "--limit", "2", *dlq_args(kafka)) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [s["trace_id"] for s in shown] == ["t-0", "t-1"]
    assert shown[0]["value"] == "not json 0" and shown[0]["key"] == "p0"

    assert await cli("dlq", "inspect", "--trace-id", "t-4", *dlq_args(kafka)) == 0
    (letter,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert letter["value"] == {"event_type": "PROJECT_CREATED", "project_id": "4"}  # decoded JSON
    assert letter["attempts"] == 2 and letter["error_type"] == "ApiUnavailable" and letter["replayed"] is False
    assert letter["headers"][RETRY_ATTEMPT] == "1" and letter["headers"]["source"] == "sim"

    assert await cli("dlq", "inspect", *dlq_args(kafka)) == 0
    everything = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(everything) == 6 and "not a dead-letter envelope" in everything[-1]["unreadable"]


async def test_replay_sends_each_dead_letter_once(kafka_settings: KafkaSettings, capsys: pytest.CaptureFixture[str]) -> None:
    kafka = kafka_settings
    letters = [parse_failure(kafka, 0), exhausted_retries(kafka, 1), exhausted_retries(kafka, 2), parse_failure(kafka, 3)]
    await seed(kafka, letters)

    assert await cli("dlq", "replay", "--all", "--dry-run", *dlq_args(kafka)) == 0
    assert f"would replay 4 dead letters (4 to {kafka.events_topic})" in capsys.readouterr().out

    assert await cli("dlq", "replay", "--trace-ids", "t-1", "t-9", *dlq_args(kafka)) == 0
    out = capsys.readouterr().out
    assert f"replayed 1 dead letters (1 to {kafka.events_topic})" in out
    assert "no dead letter for trace id(s): t-9" in out

    assert await cli("dlq", "replay", "--all", "--json", *dlq_args(kafka)) == 0
    outcome = json.loads(capsys.readouterr().out)
    assert outcome["replayed"] == 3 and outcome["already_replayed"] == 1

    assert await cli("dlq", "replay", "--all", *dlq_args(kafka)) == 0
    out = capsys.readouterr().out
    assert "replayed 0 dead letters" in out and "skipped 4 replayed before" in out

    replayed = await consume(kafka, kafka.events_topic)
    # each exactly once, with its original key
    assert sorted((r.key, r.value) for r in replayed) == sorted((l.key.raw(), l.value.raw()) for l in letters)  # noqa: E741
    for record in replayed:
        assert list(record.headers) == [("source", b"sim")], "retry headers must go: the attempt count restarts"

    assert await cli("dlq", "list", "--json", *dlq_args(kafka)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["total"], summary["replayed"], summary["not_replayed"], summary["groups"]) == (4, 4, 0, [])
    snapshot = await read_dlq(kafka, kafka.dlq_topic)
    assert snapshot.markers == 4 and all(entry.replayed for entry in snapshot.entries)

    # --include-replayed sends again on purpose
    assert await cli("dlq", "replay", "--trace-ids", "t-0", "--include-replayed", *dlq_args(kafka)) == 0
    assert "replayed 1 dead letters" in capsys.readouterr().out


async def test_purge(kafka_settings: KafkaSettings, capsys: pytest.CaptureFixture[str]) -> None:
    kafka = kafka_settings
    await seed(kafka, [parse_failure(kafka, n) for n in range(4)], garbage=True)

    assert await cli("dlq", "purge", *dlq_args(kafka)) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "--yes" in captured.err
    assert (await read_dlq(kafka, kafka.dlq_topic)).pending  # nothing was purged

    assert await cli("dlq", "purge", "--yes", *dlq_args(kafka)) == 0
    assert f"purged 5 records from {kafka.dlq_topic}" in capsys.readouterr().out
    assert await cli("dlq", "list", "--json", *dlq_args(kafka)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["total"], summary["unreadable"]) == (0, 0)

    # a dead letter written after the purge is visible, and only it is replayed
    await seed(kafka, [parse_failure(kafka, 7)])
    assert await cli("dlq", "inspect", *dlq_args(kafka)) == 0
    assert [json.loads(line)["trace_id"] for line in capsys.readouterr().out.splitlines()] == ["t-7"]
    assert await cli("dlq", "replay", "--all", *dlq_args(kafka)) == 0
    assert "replayed 1 dead letters" in capsys.readouterr().out
    assert [r.value for r in await consume(kafka, kafka.events_topic)] == [b"not json 7"]
    marker_count = sum(1 for r in await consume(kafka, kafka.dlq_topic, quiet_s=0.5) if MARKER_HEADER in dict(r.headers))
    assert marker_count == 1


async def test_missing_topic_and_bad_arguments(kafka_settings: KafkaSettings, capsys: pytest.CaptureFixture[str]) -> None:
    kafka = kafka_settings
    missing = f"claimx.dlq.none.{uuid.uuid4().hex[:6]}"
    assert await cli("dlq", "list", "--bootstrap-servers", kafka.bootstrap_servers, "--topic", missing) == 0
    assert "does not exist: nothing was dead-lettered" in capsys.readouterr().out
    assert await cli("dlq", "inspect", "--limit", "0", *dlq_args(kafka)) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err
    assert await cli("dlq", "list", "--bootstrap-servers", "127.0.0.1:1", "--topic", missing) == 2
    err = capsys.readouterr().err
    assert "unreachable at 127.0.0.1:1" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["dlq", "replay", *dlq_args(kafka)])  # neither --all nor --trace-ids
    assert exit_info.value.code == 2


async def test_a_twice_dead_lettered_original_is_counted_and_replayed_once(kafka_settings: KafkaSettings, capsys) -> None:
    """A worker killed between its DLQ send and its offset commit dead-letters the message again."""
    kafka = kafka_settings
    letter = parse_failure(kafka, 7)
    await seed(kafka, [letter, letter.model_copy(update={"worker": "enrich-2"}), parse_failure(kafka, 8)])
    assert await cli("dlq", "list", "--json", *dlq_args(kafka)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["not_replayed"] == 3 and summary["originals"] == 2
    assert await cli("dlq", "replay", "--all", *dlq_args(kafka)) == 0
    replayed = await consume(kafka, kafka.events_topic)
    assert sorted(r.value for r in replayed) == [b"not json 7", b"not json 8"]


# --- hostile letters (issue 10) ------------------------------------------------------------------


VALID_ROWS = json.dumps({"trace_id": "t-1", "event_type": "PROJECT_CREATED", "project_id": "1",
                         "event_time": "2026-01-01T00:00:00Z", "rows": {}}).encode()


def letter_of(kafka: KafkaSettings, n: int, *, topic: str, made_by, **update) -> DeadLetter:  # noqa: ANN001
    record = Record(topic, 0, n, f"p{n}".encode(), f"value {n}".encode(), [])
    letter = dead_letter_for(record, error_type="SchemaMismatch", error_message="x", category="permanent",
                             worker="w", trace_id=f"t-{n}", made_by=made_by)
    return letter.model_copy(update=update)


async def test_replay_goes_only_to_configured_topics_that_can_have_made_the_letter(kafka_settings: KafkaSettings, capsys) -> None:
    kafka = kafka_settings
    await ensure_topics(kafka, [kafka.entity_rows_topic, kafka.retry_topic])
    # What the enrichment worker makes of a forged entity-rows message with retry headers naming
    # the entity-rows topic: a letter for the events topic, whatever the headers said.
    forged_value = json.dumps({"trace_id": "f", "project_id": "1", "event_time": "2099-01-01T00:00:00Z", "rows": {}}).encode()
    forged = Record(kafka.events_topic, 0, 5, b"1", forged_value, [("retry-target-topic", kafka.entity_rows_topic.encode())])
    from_worker = next_hop(forged, Failure("MalformedEvent", "missing field ingested_at", "permanent"), delays_s=[1],
                           retry_topic=kafka.retry_topic, worker="enrich-1", trace_id="t-forged", made_by="enrich")
    assert isinstance(from_worker, DeadLetter) and from_worker.original_topic == kafka.events_topic
    letters = [
        from_worker,
        # the writer's own, rows the writer takes now: may go back (rows it refuses are not sent)
        letter_of(kafka, 1, topic=kafka.entity_rows_topic, made_by="write", value=EncodedBytes.of(VALID_ROWS)),
        letter_of(kafka, 2, topic=kafka.entity_rows_topic, made_by="enrich"),  # forged envelope
        letter_of(kafka, 3, topic=kafka.entity_rows_topic, made_by=None),  # older or forged: no maker
        letter_of(kafka, 4, topic=kafka.retry_topic, made_by="retry-scheduler"),  # not a replay target
        letter_of(kafka, 5, topic=kafka.events_topic, made_by="enrich", truncated=True, value_size=9, value_sha256="0" * 64),
    ]
    await seed(kafka, letters)
    assert await cli("dlq", "replay", "--all", *dlq_args(kafka)) == 0
    out = capsys.readouterr().out
    assert f"replayed 2 dead letters (1 to {kafka.entity_rows_topic}, 1 to {kafka.events_topic})" in out
    assert f"refused 2: names {kafka.entity_rows_topic} but was not made by the entity writer" in out
    assert "refused 1: original topic is not a configured replay target" in out
    assert "refused 1: truncated: only a prefix of the original is kept" in out
    assert [r.value for r in await consume(kafka, kafka.entity_rows_topic, quiet_s=0.5)] == [VALID_ROWS]
    assert [r.value for r in await consume(kafka, kafka.events_topic, quiet_s=0.5)] == [forged_value]


async def test_replay_marks_and_deduplicates_by_dlq_position_not_claimed_coordinates(kafka_settings: KafkaSettings, capsys) -> None:
    kafka = kafka_settings
    genuine = parse_failure(kafka, 7)
    # A forged letter claiming the genuine one's original coordinates, with other content.
    forged = genuine.model_copy(update={"value": genuine.value.model_copy(update={"data": "forged"}), "trace_id": "t-forged"})
    await seed(kafka, [genuine, forged])
    assert await cli("dlq", "replay", "--trace-ids", "t-forged", *dlq_args(kafka)) == 0
    assert "replayed 1 dead letters" in capsys.readouterr().out
    snapshot = await read_dlq(kafka, kafka.dlq_topic)
    assert {e.letter.trace_id: e.replayed for e in snapshot.entries} == {"t-7": False, "t-forged": True}
    assert await cli("dlq", "replay", "--all", *dlq_args(kafka)) == 0
    assert "replayed 1 dead letters" in capsys.readouterr().out
    assert sorted(r.value for r in await consume(kafka, kafka.events_topic)) == [b"forged", b"not json 7"]


async def test_list_and_inspect_escape_control_characters(kafka_settings: KafkaSettings, capsys) -> None:
    kafka = kafka_settings
    record = Record(kafka.events_topic, 0, 1, b"k", b"\x1b[2J\x9b31m value", [("\x1b[1mname", b"\x1b]0;title\x07"), ("c1", "\x9b1m".encode())])
    letter = dead_letter_for(record, error_type="Bad\x1b[31mType", error_message="\x1b[2J wiped \u202e", category="permanent",
                             worker="w\ud800", trace_id="t-esc")
    await seed(kafka, [letter])
    assert await cli("dlq", "list", *dlq_args(kafka)) == 0
    listed = capsys.readouterr().out
    assert "Bad\\u001b[31mType" in listed
    assert await cli("dlq", "inspect", *dlq_args(kafka)) == 0
    inspected = capsys.readouterr().out
    for out in (listed, inspected):
        assert not any(not ch.isprintable() and ch not in " \n" for ch in out), repr(out)
    shown = json.loads(inspected)  # still one valid JSON document per line
    assert shown["error_message"] == "\x1b[2J wiped \u202e" and shown["headers"]["\x1b[1mname"] == "\x1b]0;title\x07"
