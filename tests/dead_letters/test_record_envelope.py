"""Issue 21: a record is more than its value. The envelope's own fields (timestamp, key size,
header names, decompressed size) and what internal topics and ops answers carry are bounded;
each finding has its check here (the broker-facing ones are in tests/dead_letters/test_envelope_broker.py).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client import CollectorRegistry

from kafka_pipeline.argument_types import duration, point_in_time
from kafka_pipeline.claimx.api.client import ClaimXApiClient
from kafka_pipeline.claimx.entity_rows import MAX_MESSAGE_BYTES, EntityRowsMessage
from kafka_pipeline.claimx.events import MAX_EVENT_BYTES, parse_event
from kafka_pipeline.claimx.handlers.base import RefreshLimit
from kafka_pipeline.cli import main
from kafka_pipeline.config import ApiSettings, KafkaSettings, Settings, load_settings
from kafka_pipeline.dead_letters.envelope import (
    MAX_DLQ_KEY_BYTES,
    MAX_DLQ_MESSAGE_BYTES,
    DeadLetter,
    EncodedBytes,
    RecordView,
    dead_letter_for,
    dlq_key,
)
from kafka_pipeline.errors import ConfigError, PermanentError
from kafka_pipeline.ops import status as status_module
from kafka_pipeline.ops.dlq import DlqEntry, DlqSnapshot, _entry, _marker_target, inspect_entries, replay_refusal
from kafka_pipeline.workers.enrich.metrics import EnrichMetrics
from kafka_pipeline.workers.enrich.worker import EnrichmentWorker
from kafka_pipeline.workers.writer.row_conversion import BatchBuilder, SchemaMismatch
from tests.faults.envelopes import bomb
from tests.fixtures.api import TOKEN, Recorder, Sleeps

KAFKA = KafkaSettings()
NOW_MS = 1_767_225_600_000


def letter(record: RecordView, made_by: str = "enrich") -> DeadLetter:
    return dead_letter_for(record, error_type="MalformedEvent", error_message="not JSON", category="permanent",
                           worker="w", made_by=made_by)  # type: ignore[arg-type]


def dlq_message_size(built: DeadLetter, key: bytes | None) -> int:
    return len(dlq_key(key) or b"") + len(built.to_bytes())


# -- 1. record timestamps out of range ---------------------------------------------------------


@pytest.mark.parametrize("timestamp_ms", [-62135596800001, -(2**63), 2**63 - 1, -1, 253402300800000])
def test_a_record_timestamp_out_of_range_is_absent_in_the_dead_letter(timestamp_ms: int) -> None:
    built = letter(RecordView("claimx.events", 0, 1, b"k", b"{bad", [], timestamp_ms))
    back = DeadLetter.from_bytes(built.to_bytes())
    assert back.timestamp is None and back.offset == 1


def test_a_record_timestamp_in_range_is_kept() -> None:
    built = letter(RecordView("claimx.events", 0, 1, b"k", b"{bad", [], NOW_MS))
    assert built.timestamp == datetime(2026, 1, 1, tzinfo=UTC)


# -- 3. a megabyte key ---------------------------------------------------------------------------


@pytest.mark.parametrize("key_size", [MAX_DLQ_KEY_BYTES + 1, 300_000, 1_000_000, 3_000_000])
def test_a_huge_key_makes_a_dead_letter_that_fits(key_size: int) -> None:
    key = b"\x01" * key_size  # control bytes: six bytes each in JSON
    built = letter(RecordView("claimx.events", 2, 9, key, b"v" * 900_000, [("h", b"\x00" * 100_000)], NOW_MS))
    assert dlq_message_size(built, key) <= MAX_DLQ_MESSAGE_BYTES
    assert dlq_key(key) == hashlib.sha256(key).hexdigest().encode()
    back = DeadLetter.from_bytes(built.to_bytes())
    assert back.truncated and back.value_size == 900_000 and back.key is not None
    if key_size * 6 < MAX_DLQ_MESSAGE_BYTES // 8:  # small beside the limit: the envelope keeps it whole
        assert back.key.raw() == key and back.key_size is None
    else:
        assert back.key_size == key_size and back.key_sha256 == hashlib.sha256(key).hexdigest()
        assert key.startswith(back.key.raw()) and len(back.key.raw()) < key_size


def test_a_small_key_is_the_dlq_records_key() -> None:
    assert dlq_key(b"5000001") == b"5000001" and dlq_key(None) is None


# -- 4. decompression blow-up ------------------------------------------------------------------


def test_a_decompressed_100mb_value_costs_no_copy_of_itself_in_the_dead_letter() -> None:
    value = bomb(100_000_000)
    record = RecordView("claimx.events", 0, 3, b"k", value, [], NOW_MS)
    tracemalloc.start()
    try:
        with pytest.raises(PermanentError, match="over the"):
            parse_event(value)  # bounded before json.loads
        data = letter(record).to_bytes()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16_000_000, f"dead-lettering a 100 MB value allocated {peak} bytes"
    back = DeadLetter.from_bytes(data)
    assert len(data) <= MAX_DLQ_MESSAGE_BYTES and back.value_size == len(value)
    assert back.value_sha256 == hashlib.sha256(value).hexdigest()


def test_values_are_bounded_before_they_are_parsed() -> None:
    with pytest.raises(PermanentError, match=f"over the {MAX_EVENT_BYTES} bytes"):
        parse_event(b" " * (MAX_EVENT_BYTES + 1))
    with pytest.raises(ValueError, match=f"over the {MAX_MESSAGE_BYTES} bytes"):
        EntityRowsMessage.from_bytes(b" " * (MAX_MESSAGE_BYTES + 1))


# -- 6. future event times, and dlq replay re-validates -----------------------------------------


def rows_message(event_time: str) -> bytes:
    return json.dumps({"trace_id": "t-1", "event_type": "PROJECT_CREATED", "project_id": "1", "event_time": event_time,
                       "rows": {"claimx_projects": [{"project_id": "1", "status": "PWNED"}]}}).encode()


@pytest.mark.parametrize("event_time", ["9999-12-31T23:59:59+00:00", "9999-12-31T23:00:00-05:00"])
def test_the_writer_refuses_an_event_time_beyond_the_skew(event_time: str) -> None:
    with pytest.raises(SchemaMismatch, match="event_time"):
        BatchBuilder().add(EntityRowsMessage.from_bytes(rows_message(event_time)), app="a", offset=0)
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert BatchBuilder().add(EntityRowsMessage.from_bytes(rows_message(soon)), app="a", offset=0) == 1
    with pytest.raises(SchemaMismatch, match="in the future"):
        BatchBuilder(max_future_skew_s=60).add(EntityRowsMessage.from_bytes(rows_message(soon)), app="a", offset=0)


def test_dlq_replay_refuses_a_forged_write_letter_with_a_future_event_time() -> None:
    forged = letter(RecordView(KAFKA.entity_rows_topic, 0, 1, b"1", rows_message("9999-12-31T23:59:59+00:00")), made_by="write")
    refusal = replay_refusal(forged, KAFKA)
    assert refusal is not None and refusal.startswith("not valid entity rows") and "event_time" in refusal
    genuine = letter(RecordView(KAFKA.entity_rows_topic, 0, 1, b"1", rows_message("2026-01-01T00:00:00+00:00")), made_by="write")
    assert replay_refusal(genuine, KAFKA) is None


def test_dlq_replay_sends_events_letters_to_the_worker_that_parses_them_again() -> None:
    # the enrichment worker is their validator (a far-future ingested_at is refused there)
    bad = letter(RecordView(KAFKA.events_topic, 0, 1, None, b'{"event_type": "PROJECT_CREATED"}'))
    assert replay_refusal(bad, KAFKA) is None
    # and only what fits what the worker reads is sent (a letter can be forged whole)
    forged = bad.model_copy(update={"value": EncodedBytes.of(b" " * (MAX_EVENT_BYTES + 1))})
    assert "over the" in (replay_refusal(forged, KAFKA) or "")
    future = json.dumps({"event_type": "PROJECT_CREATED", "project_id": "1", "ingested_at": "9999-01-01T00:00:00Z"}).encode()
    with pytest.raises(PermanentError, match="in the future"):
        parse_event(future)


# -- 8. deep JSON on the DLQ topic -------------------------------------------------------------


def dlq_record(value: bytes, headers: list[tuple[str, bytes]] | None = None) -> RecordView:
    return RecordView(KAFKA.dlq_topic, 0, 7, b"k", value, headers or [], NOW_MS)


def test_a_deep_marker_or_envelope_on_the_dlq_is_unreadable_not_a_crash() -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    assert _marker_target(dlq_record(deep, [("dlq-marker", b"replayed")])) == (-1, -1)
    deep_marker = b'{"partition": 0, "offset": ' + b"[" * 100 + b"1" + b"]" * 100 + b"}"
    assert _marker_target(dlq_record(deep_marker, [("dlq-marker", b"replayed")])) == (-1, -1)
    entry = _entry(dlq_record(deep))
    assert entry.letter is None and entry.unreadable is not None
    huge = _entry(dlq_record(b"{" + b" " * (3 * MAX_DLQ_MESSAGE_BYTES)))
    assert huge.letter is None and "bytes, over" in (huge.unreadable or "")


def test_inspect_shows_a_deep_value_as_text() -> None:
    deep_value = b"[" * 50_000 + b"]" * 50_000
    built = letter(RecordView(KAFKA.events_topic, 0, 1, None, deep_value))
    nested_value = ("[" * 90 + "1" + "]" * 90).encode()  # parses, but deeper than inspect shows parsed
    nested = letter(RecordView(KAFKA.events_topic, 0, 2, None, nested_value))
    snapshot = DlqSnapshot("dlq", True, entries=[DlqEntry(0, 1, None, built.to_bytes(), built), DlqEntry(0, 2, None, None, nested)])
    shown = inspect_entries(snapshot)
    assert shown[0]["value"] == deep_value.decode()
    assert isinstance(shown[1]["value"], list) and json.dumps(shown)  # printable without recursion


# -- 9. status --ops-url believes nothing --------------------------------------------------------


@asynccontextmanager
async def http_answer(body: bytes, *, chunk_delay_s: float = 0.0, chunks: int = 1) -> AsyncIterator[str]:
    """A real HTTP server on loopback answering every request with `body` (in `chunks` pieces)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
        step = max(1, len(body) // chunks)
        try:
            for start in range(0, len(body), step):
                writer.write(body[start:start + step])
                await writer.drain()
                if chunk_delay_s:
                    await asyncio.sleep(chunk_delay_s)
        except (ConnectionError, OSError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


@pytest.mark.parametrize(
    ("body", "chunks", "delay", "reason"),
    [
        (b"[1, 2]", 1, 0.0, "not a readiness report"),
        (b'{"ready": true, "checks": []}', 1, 0.0, "not a readiness report"),
        (b'{"ready": true, "checks": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", 1, 0.0, "nested deeper"),
        (b'{"ready": true, "pad": "' + b"x" * 50_000_000 + b'"}', 50, 0.0, "bytes"),
        (b'{"ready": true, "checks": {}}' + b" " * 100, 100, 0.05, "no answer (TimeoutError)"),
        (b'{"ready": "yes", "checks": {"a": {"ready": 1}}}', 1, 0.0, "a"),
    ],
    ids=["list", "checks-list", "deep", "400mb-like", "slow", "truthy-not-true"],
)
async def test_status_ops_url_answers_are_bounded(body: bytes, chunks: int, delay: float, reason: str) -> None:
    async with http_answer(body, chunk_delay_s=delay, chunks=chunks) as url:
        started = time.monotonic()
        worker = await status_module._worker(url)
    assert time.monotonic() - started < status_module.READY_TIMEOUT_S + 1.0
    assert worker.ready is False and any(reason in f for f in worker.failing), worker.failing


async def test_status_ops_url_a_good_answer_is_ready() -> None:
    async with http_answer(b'{"ready": true, "checks": {"consumer": {"ready": true}}}') as url:
        worker = await status_module._worker(url)
    assert worker.ready is True and worker.failing == []


# -- 5. Retry-After capped and visible -----------------------------------------------------------


async def test_a_retry_after_of_decades_pauses_the_limiter_for_the_cap_only() -> None:
    settings = ApiSettings(url="http://claimx.test/service/cxedirest", token=TOKEN, retries=0, max_retry_after_s=120)
    recorder = Recorder(httpx.Response(429, headers={"Retry-After": "1000000000"}))
    api = ClaimXApiClient(settings, transport=httpx.MockTransport(recorder), sleep=Sleeps())
    registry = CollectorRegistry()
    metrics = EnrichMetrics.on(registry)
    metrics.watch("w", in_flight=lambda: 0, awaiting_ack=lambda: 0, breaker_open=lambda: 0, credentials_rejected=lambda: 0,
                  rate_limit_paused=api.rate_limit_paused_s)
    async with api:
        with pytest.raises(Exception, match="rate limited"):
            await api.get_project("1")
        paused = api.rate_limit_paused_s()
    assert 110 < paused <= 120
    gauge = registry.get_sample_value("claimx_api_rate_limit_paused_seconds", {"worker": "w"})
    assert gauge is not None and 110 < gauge <= 120


# -- 10. refresh-project from anyone: once per project per interval -------------------------------


def test_refresh_header_is_honoured_once_per_project_per_interval() -> None:
    now = [0.0]
    limit = RefreshLimit(60, max_projects=3, clock=lambda: now[0])
    assert [limit.allow("1") for _ in range(5)] == [True, False, False, False, False]
    assert limit.allow("2") and limit.allow("3") and not limit.allow("4")  # bounded memory: no grant past it
    now[0] = 61
    assert limit.allow("1") and limit.allow("4")


# -- 11. time arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parse", "text"),
    [(point_in_time, "0001-01-01T00:00:00+05:00"), (point_in_time, "999999999w"), (duration, "99999999999d"),
     (point_in_time, "9999-12-31T23:00:00-05:00"), (point_in_time, "1969-12-31T23:59:59Z"), (duration, "9" * 400 + "s")],
)
def test_time_arguments_out_of_range_are_one_line_errors(parse: object, text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse(text)  # type: ignore[operator]


@pytest.mark.parametrize(
    "argv",
    [["replay", "--from-topic", "t", "--since", "0001-01-01T00:00:00+05:00"], ["replay", "--from-topic", "t", "--since", "999999999w"],
     ["reset-offsets", "--group", "g", "--topic", "t", "--by-duration", "99999999999d"],
     ["inject", "--type", "PROJECT_CREATED", "--project-id", "1", "--ingested-at", "0001-01-01T00:00:00+05:00"]],
)
def test_time_arguments_out_of_range_exit_2_without_a_traceback(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err and "error:" in err


# -- 12, 13. settings ----------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["", "   "])
def test_a_blank_admin_token_is_refused(token: str) -> None:
    with pytest.raises(ConfigError, match="cache.admin_token: .*must not be blank"):
        load_settings(cache={"admin_token": token})


def test_storage_options_never_show_their_values() -> None:
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
    settings = Settings(delta={"storage_options": {"AWS_SECRET_ACCESS_KEY": secret}})
    assert secret not in repr(settings) and secret not in str(settings) and secret not in repr(settings.delta)
    with pytest.raises(ConfigError) as error:
        load_settings(delta={"storage_options": {"AWS_SECRET_ACCESS_KEY": [secret]}})
    assert secret not in str(error.value) and "delta.storage_options" in str(error.value)


# -- 14. an answer without projectId ---------------------------------------------------------------


async def test_a_project_answer_without_project_id_is_invalid() -> None:
    settings = ApiSettings(url="http://claimx.test/service/cxedirest", token=TOKEN, retries=0)
    recorder = Recorder(httpx.Response(200, json={"project": {"projectName": "someone else's"}, "teamMembers": []}))
    async with ClaimXApiClient(settings, transport=httpx.MockTransport(recorder), sleep=Sleeps()) as api:
        with pytest.raises(PermanentError, match="no projectId") as error:
            await api.get_project("5000001")
    assert error.value.error_type == "InvalidResponse"


async def test_a_long_rate_limit_pause_shows_in_the_enrichment_workers_readiness() -> None:
    settings = load_settings(api={"url": "http://claimx.test/service/cxedirest", "token": TOKEN, "backoff_max_s": 2},
                             worker={"name": "ready-test"})
    worker = EnrichmentWorker(settings)
    try:
        ready, details = worker._api_ready()
        assert ready and details["rate_limit_paused_s"] == 0
        worker.api._bucket.pause(1.0)  # within an in-process backoff: still ready
        assert worker._api_ready()[0]
        worker.api._bucket.pause(250.0)  # a Retry-After, capped: the API asked us to stop
        ready, details = worker._api_ready()
        assert not ready and 240 < details["rate_limit_paused_s"] <= 250
    finally:
        await worker.api.aclose()


def test_status_names_an_unreachable_table_store_in_one_line_without_its_secrets() -> None:
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
    settings = Settings(delta={"tables_root": "s3://bucket/tables", "storage_options": {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": secret}})
    tables = status_module.table_statuses(settings)
    assert tables and all(not t.exists and t.error == "storage unreachable at s3://bucket/tables (cannot connect)" for t in tables)
    assert all(secret not in (t.error or "") for t in tables)
