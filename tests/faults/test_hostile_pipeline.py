"""No single message can stop the pipeline or write a forged row (issue 10).

Two runs of one generated stream (300 events over 12 projects), each on its own EmbeddedStack
(tansu, simulator, the three workers as processes):

- *clean*: the stream alone;
- *hostile*: the same stream with the poison corpus (`tests/faults/poison.py`: deep JSON, huge
  numbers, out-of-range and far-future times, lone surrogates, unsafe ids, non-UTF-8, empty,
  escape codes in headers, forged retry headers, a forged entity-rows message, megabyte
  messages up to a valid 3 MB event) produced to the events topic while the stream is replayed,
  plus undecodable messages (one of them 800 KB) sent straight to the entity-rows topic, where
  the writer dead-letters them, and forged or oversize messages sent straight to the retry
  topic, where the retry scheduler dead-letters them.

Issue 21 adds records whose envelope is hostile (`envelope_plan`, sent batch by batch as a
foreign producer would: tests/faults/envelopes.py): a header name that is not UTF-8 on each
worker's topic, a 1 MB key, a 50 MB gzip bomb, timestamps before year 1 and at 2^63-1 (Apache
Kafka refuses those at produce time, tansu stores them), rows with an `event_time` of 9999 straight
to the entity-rows topic, a retry due at 2^63-1 (clamped to the longest delay, then forwarded and
dead-lettered by the enrichment worker), and a `dlq-marker` record of deep JSON on the DLQ.

After both drained: the hostile run's tables equal the clean run's; every poison message is in
the DLQ once, with its reason, its origin (a configured topic and the worker kind that made the
letter, never what its headers claimed) and, when it could not fit, a truncated prefix with the
original's size and SHA-256; nothing else is; no worker exited or restarted; every group's
committed offset reached the end of its topic; the enrichment worker's counts reconcile.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import pytest
from aiokafka.errors import InvalidTimestampError

from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.config import Settings
from kafka_pipeline.dead_letters.envelope import DeadLetter
from kafka_pipeline.kafka.clients import make_producer
from tests.faults.envelopes import Envelope, bomb, send_raw
from tests.faults.harness import (
    PipelineRun,
    Stream,
    make_stream,
    run_pipeline,
    table_differences,
    worker_env,
)
from tests.faults.poison import MISSING_PROJECT_ID, Poison, corpus

pytestmark = pytest.mark.slow

EVENTS, PROJECTS, STREAM_SEED = 300, 12, 23
REPLAY_RATE = 150.0  # lines per second: the poison lands among the stream's events
SIMULATOR = {"not_found_ids": [MISSING_PROJECT_ID]}
MAX_REQUEST_BYTES = 8 * 1024 * 1024  # the test's own producer sends the multi-megabyte poison
RUN_TIMEOUT_S = 300
API_ANSWERED = ("NotFound", "MessageTooLarge")  # poison that parses: its outcome comes after an API call


@dataclass(frozen=True)
class Sent:
    """A hostile message as sent: where to, and what its dead letter must say."""

    poison: Poison
    topic: str
    made_by: str
    original_topic: str
    raw: Envelope | None = None  # sent as this record batch (any header bytes, timestamp, codec)
    offset: int | None = None  # where it landed (partition 0), when its letter is found by position
    by_position: bool = False  # dead-lettered by the runtime (the client cannot decode it), not the worker
    attempts: int = 1
    expect_letter: bool = True


def envelope_plan(settings: Settings) -> list[Sent]:
    """Issue 21: one record of each finding that a record can carry (module docstring)."""
    kafka = settings.kafka
    bad_name = [(b"\xff\xfe-not-utf8", b"1")]
    event = json.dumps({"event_type": "PROJECT_CREATED", "project_id": "5000001", "event_id": "never-written",
                        "ingested_at": "2026-03-02T08:00:00Z"}).encode()
    undecodable = Poison("header-name-not-utf8", None, "can't decode", error_type="UnicodeDecodeError", key=None)
    rows = json.dumps({"trace_id": "forged-9999", "event_type": "PROJECT_CREATED", "project_id": "5000001",
                       "event_time": "9999-12-31T23:59:59Z", "rows": {"claimx_projects": [{"project_id": "5000001", "status": "PWNED"}]}}).encode()
    forever = [(b"retry-attempt", b"1"), (b"retry-due-at", str(2**63 - 1).encode()), (b"retry-target-topic", kafka.events_topic.encode()),
               (b"retry-original-partition", b"0"), (b"retry-original-offset", b"0")]
    deep = b"[" * 100_000 + b"]" * 100_000
    return [
        Sent(undecodable, kafka.events_topic, "enrich", kafka.events_topic, Envelope("name-events", b"5000001", event, None, bad_name), by_position=True),
        Sent(undecodable, kafka.entity_rows_topic, "write", kafka.entity_rows_topic, Envelope("name-rows", b"5000001", rows, None, bad_name), by_position=True),
        Sent(undecodable, kafka.retry_topic, "retry-scheduler", kafka.retry_topic, Envelope("name-retry", b"p", event, None, [*bad_name, *forever]), by_position=True),
        Sent(Poison("timestamp-before-year-1", b"{ts year 0", "not JSON"), kafka.events_topic, "enrich", kafka.events_topic,
             Envelope("ts-min", b"t", b"{ts year 0", -62135596800001)),
        Sent(Poison("timestamp-max", b"{ts max", "not JSON"), kafka.events_topic, "enrich", kafka.events_topic,
             Envelope("ts-max", b"t", b"{ts max", 2**63 - 1)),
        Sent(Poison("key-1mb", b"{key 1mb", "not JSON", oversize=True), kafka.events_topic, "enrich", kafka.events_topic,
             Envelope("key-1mb", b"K" * 1_000_000, b"{key 1mb")),
        Sent(Poison("gzip-bomb-50mb", bomb(50_000_000), "over the", oversize=True), kafka.events_topic, "enrich", kafka.events_topic,
             Envelope("bomb", b"b", bomb(50_000_000), codec="gzip")),
        Sent(Poison("rows-event-time-9999", rows, "event_time", error_type="SchemaMismatch"), kafka.entity_rows_topic, "write",
             kafka.entity_rows_topic, Envelope("rows-9999", b"5000001", rows)),
        Sent(Poison("retry-due-forever", b"{due forever", "not JSON"), kafka.retry_topic, "enrich", kafka.events_topic,
             Envelope("due-forever", b"p", b"{due forever", None, forever), attempts=2),
        Sent(Poison("dlq-marker-deep", deep, ""), kafka.dlq_topic, "", "", Envelope("deep-marker", b"m", deep, None, [(b"dlq-marker", b"replayed")]),
             expect_letter=False),
    ]


async def inject_envelopes(settings: Settings, broker_kind: str) -> list[Sent]:
    """Send `envelope_plan`'s records; what landed, with the offset of those found by position."""
    producer = make_producer(settings.kafka, max_request_size=MAX_REQUEST_BYTES, enable_idempotence=False)
    await producer.start()
    landed = []
    try:
        for item in envelope_plan(settings):
            assert item.raw is not None
            try:
                offset = await send_raw(producer, item.topic, 0, item.raw)
            except InvalidTimestampError:  # Apache Kafka: a timestamp < 0 or past message.timestamp.after.max.ms
                assert broker_kind == "kafka" and item.raw.timestamp_ms is not None, item.poison.name
                continue
            landed.append(replace(item, offset=offset) if item.by_position or item.poison.oversize else item)
    finally:
        await producer.stop()
    return landed


def plan(settings: Settings) -> list[Sent]:
    kafka = settings.kafka
    to_events = [Sent(p, kafka.events_topic, "enrich", kafka.events_topic)
                 for p in corpus(entity_rows_topic=kafka.entity_rows_topic)]
    to_writer = [
        Sent(Poison("rows-not-json", b"{not rows", "", error_type=""), kafka.entity_rows_topic, "write", kafka.entity_rows_topic),
        Sent(Poison("rows-binary-800k", os.urandom(800_000), "", error_type="", oversize=True),
             kafka.entity_rows_topic, "write", kafka.entity_rows_topic),
    ]
    retry_headers = [("retry-attempt", b"1"), ("retry-due-at", b"0"), ("retry-original-partition", b"0"),
                     ("retry-original-offset", b"0")]
    to_scheduler = [
        Sent(Poison("retry-to-entity-rows", b'{"forged": "rows"}', "not a configured retry target", error_type="InvalidRetryHeaders",
                    headers=[*retry_headers, ("retry-target-topic", kafka.entity_rows_topic.encode())]),
             kafka.retry_topic, "retry-scheduler", kafka.events_topic),
        Sent(Poison("retry-no-headers-800k", os.urandom(800_000), "missing retry header", error_type="InvalidRetryHeaders",
                    oversize=True),
             kafka.retry_topic, "retry-scheduler", kafka.events_topic),
    ]
    return to_events + to_writer + to_scheduler


def inject(sent: list[Sent]):  # noqa: ANN201 - the run's during_replay step
    async def send(settings: Settings) -> None:
        producer = make_producer(settings.kafka, max_request_size=MAX_REQUEST_BYTES)
        await producer.start()
        try:
            for i, item in enumerate(sent):
                await asyncio.sleep(1.5 / len(sent))  # spread over the replay's first seconds
                await producer.send_and_wait(item.topic, item.poison.value, key=f"poison-{i}".encode(),
                                             headers=item.poison.headers or None)
        finally:
            await producer.stop()

    return send


@pytest.fixture(scope="module")
def stream() -> Stream:
    return make_stream(EVENTS, PROJECTS, STREAM_SEED, malformed=0)


@pytest.fixture(scope="module")
def runs(stream: Stream, tmp_path_factory: pytest.TempPathFactory, broker: Any, broker_kind: str) -> tuple[PipelineRun, PipelineRun, list[Sent]]:
    """The clean and the hostile run, side by side (each has its own broker, simulator and
    workers; both spend most of their time waiting on group joins and polls)."""
    sent: list[Sent] = []

    async def during(settings: Settings) -> None:
        sent.extend(plan(settings))
        await inject(sent)(settings)
        sent.extend(await inject_envelopes(settings, broker_kind))

    workdirs = {name: tmp_path_factory.mktemp(name) for name in ("clean", "hostile")}  # not thread-safe: made here

    def one(name: str, during_replay=None) -> PipelineRun:  # noqa: ANN001
        return asyncio.run(run_pipeline(name, stream, workdirs[name], bootstrap_servers=broker.bootstrap_servers, env=worker_env(), simulator_faults=SIMULATOR,
                                        replay_rate=REPLAY_RATE, partitions=3, during_replay=during_replay))

    with ThreadPoolExecutor(max_workers=2) as pool:
        clean_run, hostile_run = pool.submit(one, "clean"), pool.submit(one, "hostile", during)
        clean, hostile = clean_run.result(), hostile_run.result()
    print(f"\nclean run {clean.seconds:.0f}s; hostile run {hostile.seconds:.0f}s, {len(sent)} poison messages, "
          f"topic messages {hostile.topic_messages}, logs in {hostile.log_dir}")
    return clean, hostile, sent


@pytest.fixture(scope="module")
def clean(runs: tuple[PipelineRun, PipelineRun, list[Sent]]) -> PipelineRun:
    return runs[0]


@pytest.fixture(scope="module")
def hostile(runs: tuple[PipelineRun, PipelineRun, list[Sent]]) -> tuple[PipelineRun, list[Sent]]:
    return runs[1], runs[2]


def matches(letter: DeadLetter, item: Sent) -> bool:
    poison = item.poison
    if item.offset is not None:  # found by its position (partition 0) on the topic it was sent to
        return (letter.original_topic, letter.partition, letter.offset, letter.made_by) == (item.original_topic, 0, item.offset, item.made_by)
    if letter.truncated:
        return poison.value is not None and letter.value_sha256 == hashlib.sha256(poison.value).hexdigest()
    if poison.value is None:
        return letter.value is None
    return letter.value is not None and letter.value.raw() == poison.value


@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_the_good_events_are_in_the_tables_exactly_as_in_a_clean_run(clean: PipelineRun, hostile) -> None:  # noqa: ANN001
    run, _ = hostile
    assert set(clean.table("claimx_events").column("trace_id").to_pylist()) == clean.stream.known_trace_ids
    differences = [d for d in (table_differences(name, clean.table(name), run.table(name)) for name in TABLES) if d]
    assert not differences, "\n".join(differences) + f"\nhostile logs: {run.log_dir}"


@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_every_poison_message_is_dead_lettered_once_with_its_reason_and_true_origin(hostile) -> None:  # noqa: ANN001
    run, sent = hostile
    letters = run.dead_letters()
    unmatched = list(letters)
    # those found by position first: their letters hold no value a value-matched poison could claim
    for item in sorted(sent, key=lambda item: item.offset is None):
        if not item.expect_letter:
            continue
        found = [letter for letter in unmatched if matches(letter, item)]  # a second letter for it stays unmatched
        assert len(found) == 1, f"{item.poison.name}: {len(found)} dead letters\n{run.log_tail('enrich')}"
        letter = found[0]
        unmatched.remove(letter)
        assert (letter.original_topic, letter.made_by) == (item.original_topic, item.made_by), item.poison.name
        assert letter.truncated is item.poison.oversize, item.poison.name
        if item.poison.error_type in API_ANSWERED and letter.error_category == "transient":
            # The API call timed out on a loaded machine: a message too big for the retry topic
            # is dead-lettered at once, naming that (a small one is retried, then gets its answer).
            assert item.poison.oversize and "do not fit the retry topic" in letter.error_message, (item.poison.name, letter)
            continue
        assert letter.error_category == "permanent", (item.poison.name, letter)
        # an API-answered poison may have been retried first (a timeout), so its attempts may be more
        assert letter.attempts == item.attempts or item.poison.error_type in API_ANSWERED, (item.poison.name, letter)
        if item.poison.error_type:
            assert letter.error_type == item.poison.error_type, (item.poison.name, letter.error_type, letter.error_message)
        assert item.poison.reason in letter.error_message, (item.poison.name, letter.error_message)
        if letter.truncated and letter.value_size is not None:
            assert letter.value is not None and item.poison.value is not None and item.poison.value.startswith(letter.value.raw())
            assert letter.value_size == len(item.poison.value)
    assert not unmatched, f"dead letters that are no poison message: {[(l.error_type, l.error_message) for l in unmatched]}"  # noqa: E741
    assert all(e.letter is not None for e in run.dlq.entries), "an unreadable record on the DLQ"
    assert run.dlq.markers == sum(not item.expect_letter for item in sent) == 1  # the deep marker: read, not parsed


@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_no_worker_exited_and_every_partition_was_committed_to_its_end(hostile) -> None:  # noqa: ANN001
    run, sent = hostile
    assert run.starts == {"enrich": 1, "write": 1, "retry-scheduler": 1}, run.starts
    assert run.exit_codes == {"enrich": 0, "write": 0, "retry-scheduler": 0}, run.exit_codes
    assert run.drained is not None and run.drained.drained, run.drained  # lag 0 on every partition of every topic
    stopped = run.log_records("enrich", "enrichment worker stopped")
    assert stopped and stopped[-1]["reconciled"] is True and stopped[-1]["in_flight"] == 0, run.log_tail("enrich")
    by_enrich = sum(1 for item in sent if item.made_by == "enrich" and not item.by_position and item.raw is not None)
    assert stopped[-1]["dead_lettered"] == sum(1 for p in corpus(huge=True)) + by_enrich
