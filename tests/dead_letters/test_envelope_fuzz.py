"""The envelope fuzzer (issue 21): whole records, not just values, through each worker's decode
and failure path.

A record is built as a producer outside the pipeline could build it (key up to megabytes,
header names and values of any bytes, timestamps over the whole int64 range, any value size,
every codec including a gzip bomb, and batches whose compression is broken or unknown), encoded
as a Kafka record batch and decoded by aiokafka's own reader, as the consumer does. Then, for
the enrichment worker, the entity writer and the retry scheduler, what the worker does with it
ends in exactly one outcome, nothing raises, and every dead letter fits the DLQ's limit.
"""

from __future__ import annotations

import struct
from typing import Any, cast

from aiokafka.record.default_records import DefaultRecordBatch, _DefaultRecordBatchBuilderPy
from aiokafka.record.util import calc_crc32c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from kafka_pipeline.claimx.entity_rows import EntityRowsMessage
from kafka_pipeline.claimx.events import parse_event
from kafka_pipeline.config import Settings, WorkerSettings
from kafka_pipeline.dead_letters.envelope import MAX_DLQ_MESSAGE_BYTES, DeadLetter, RecordView, dlq_key
from kafka_pipeline.dead_letters.routing import InvalidRetryHeaders, allowed_retry_targets, now_ms, parse_retry_headers
from kafka_pipeline.dead_letters.sink import DeadLetterSink, Letter, letter_for_exception
from kafka_pipeline.dead_letters.undecodable import UNDECODABLE
from kafka_pipeline.errors import PermanentError, TransientError
from kafka_pipeline.workers.enrich.outcomes import route_failure
from kafka_pipeline.workers.writer.row_conversion import BatchBuilder, SchemaMismatch
from tests.faults.envelopes import CODECS, RawName

SETTINGS = Settings(worker=WorkerSettings(name="fuzz"))
KAFKA = SETTINGS.kafka
MAX_DELAY_MS = round(max(SETTINGS.retry.delays_s) * 1000)
ATTRIBUTES_AT, CRC_AT, CRC_FROM = 21, 17, 21  # the v2 batch header (KIP-98)

EVENT = b'{"event_type": "PROJECT_CREATED", "project_id": "5000001", "ingested_at": "2026-03-02T08:00:00Z"}'
ROWS = (b'{"trace_id": "t", "event_type": "PROJECT_CREATED", "project_id": "1", "event_time": "9999-12-31T23:59:59Z",'
        b' "rows": {"claimx_projects": [{"project_id": "1", "status": "PWNED"}]}}')
NAMES = [b"retry-attempt", b"retry-due-at", b"retry-target-topic", b"retry-original-partition", b"retry-original-offset",
         b"retry-error", b"refresh-project", b"dlq-marker", b"trace", b""]
BAD_NAMES = [b"\xff\xfe", b"\xed\xa0\x80", b"ok\xc3"]  # not UTF-8: aiokafka raises while decoding
HEADER_VALUES = [b"1", b"0", b"-1", b"9223372036854775807", b"99999999999999999999", KAFKA.events_topic.encode(),
                 KAFKA.entity_rows_topic.encode(), b"\xff"]


def big(sizes: list[int]) -> st.SearchStrategy[bytes]:
    return st.builds(lambda n, b: bytes([b]) * n, st.sampled_from(sizes), st.sampled_from([0, 1, 0x7B, 0xFF]))


keys = st.one_of(st.none(), st.binary(max_size=40), big([5_000, 1_000_000, 3_000_000]))
values = st.one_of(st.none(), st.binary(max_size=200), st.sampled_from([EVENT, ROWS, b"[" * 50_000 + b"]" * 50_000]),
                   big([1_500_000, 20_000_000]))  # 20 MB of zeros: a gzip bomb of ~20 KB
header_values = st.one_of(st.none(), st.sampled_from(HEADER_VALUES), st.binary(max_size=20))
# mostly decodable names, so that the workers' own paths see most records; sometimes any bytes
headers = st.one_of(
    st.lists(st.tuples(st.sampled_from(NAMES), header_values), max_size=10),
    st.lists(st.tuples(st.one_of(st.sampled_from(NAMES), st.sampled_from(BAD_NAMES), st.binary(max_size=12)), header_values), max_size=4),
)
timestamps = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.sampled_from([-62135596800001, -1, 0, 253402300800000]))
codecs = st.sampled_from(sorted(CODECS))
broken = st.sampled_from([None, "garbage", 5, 6, 7])  # compressed data that does not decompress, or an unknown codec id


def encoded(key: bytes | None, value: bytes | None, header_list: list[tuple[bytes, bytes | None]], timestamp: int | None,
            codec: str, breakage: str | int | None) -> bytes:
    builder = _DefaultRecordBatchBuilderPy(2, CODECS[codec], 0, -1, -1, 0, 64 * 1024 * 1024)
    builder.append(0, timestamp=timestamp, key=key, value=value, headers=[(RawName(n), v) for n, v in header_list])
    batch = bytearray(builder.build())
    if breakage is not None:
        attributes = struct.unpack_from(">h", batch, ATTRIBUTES_AT)[0]
        struct.pack_into(">h", batch, ATTRIBUTES_AT, (attributes & ~7) | (1 if breakage == "garbage" else int(breakage)))
        if breakage == "garbage":
            batch[61:] = b"\x00 not compressed data"
            struct.pack_into(">i", batch, 8, len(batch) - 12)
        struct.pack_into(">I", batch, CRC_AT, calc_crc32c(bytes(batch[CRC_FROM:])))
    return bytes(batch)


def envelope_fits(sink: DeadLetterSink, letter: Letter) -> None:
    data = sink.envelope(letter).to_bytes()
    assert len(dlq_key(letter.record.key) or b"") + len(data) <= MAX_DLQ_MESSAGE_BYTES
    back = DeadLetter.from_bytes(data)
    assert back.offset == letter.record.offset and back.error_message


def enrich_outcome(record: RecordView, sink: DeadLetterSink) -> str:
    try:
        event = parse_event(record.value, max_future_skew_s=SETTINGS.enrich.max_future_skew_s)
    except PermanentError as exc:
        route = route_failure(record, exc, settings=SETTINGS, trace_id=None)
        assert route.outcome == "dead_lettered" and route.value is not None
        assert len(route.value) + len(route.key or b"") <= MAX_DLQ_MESSAGE_BYTES
        return "dead_lettered"
    # an API failure of a parsed event: the retry topic or the DLQ, whatever the headers claim
    route = route_failure(record, TransientError("GET /export/project: 503", error_type="Http503"), settings=SETTINGS,
                          trace_id=event.trace_id)
    assert route.outcome in ("retried", "dead_lettered") and route.value is not None
    if route.outcome == "dead_lettered":
        assert len(route.value) + len(route.key or b"") <= MAX_DLQ_MESSAGE_BYTES
    return "parsed"


def writer_outcome(record: RecordView, sink: DeadLetterSink) -> str:
    try:
        if record.value is None:
            raise ValueError("message has no value")
        message = EntityRowsMessage.from_bytes(record.value)
        BatchBuilder().add(message, app="fuzz", offset=record.offset)
    except (ValueError, SchemaMismatch) as exc:  # pydantic's ValidationError is a ValueError
        envelope_fits(sink, Letter(record, "InvalidMessage", str(exc)))
        return "dead_lettered"
    return "batched"


def scheduler_outcome(record: RecordView, sink: DeadLetterSink) -> str:
    try:
        info = parse_retry_headers(record.headers)
        if info.target_topic not in allowed_retry_targets(KAFKA):
            raise InvalidRetryHeaders("not a configured retry target")
    except InvalidRetryHeaders as exc:
        envelope_fits(sink, Letter(record, "InvalidRetryHeaders", str(exc), original_topic=KAFKA.events_topic))
        return "dead_lettered"
    due = min(info.due_at_ms, now_ms() + MAX_DELAY_MS)  # the scheduler's clamp
    assert due <= now_ms() + MAX_DELAY_MS
    return "waiting"


WORKERS = {"enrich": (KAFKA.events_topic, enrich_outcome), "write": (KAFKA.entity_rows_topic, writer_outcome),
           "retry-scheduler": (KAFKA.retry_topic, scheduler_outcome)}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(key=keys, value=values, header_list=headers, timestamp=timestamps, codec=codecs, breakage=broken)
def test_every_record_ends_in_exactly_one_outcome_in_every_worker(
    key: bytes | None, value: bytes | None, header_list: list[tuple[bytes, bytes | None]], timestamp: int | None,
    codec: str, breakage: str | int | None,
) -> None:
    raw = encoded(key, value, header_list, timestamp, codec, breakage)
    for made_by, (topic, outcome_of) in WORKERS.items():
        sink = DeadLetterSink(cast(Any, None), KAFKA.dlq_topic, worker="fuzz", made_by=made_by,  # type: ignore[arg-type]
                              registry=CollectorRegistry())
        try:
            decoded = list(DefaultRecordBatch(raw))  # what aiokafka's fetcher does with the batch
        except UNDECODABLE as exc:
            # the runtime finds the record by position and dead-letters it (runtime.consumer)
            envelope_fits(sink, letter_for_exception(RecordView(topic, 0, 7, None, None), exc))
            outcome = "dead_lettered_by_position"
        else:
            assert len(decoded) == 1 and breakage is None
            got = decoded[0]
            record = RecordView(topic, 0, 7, got.key, got.value, list(got.headers), got.timestamp)
            try:
                outcome = outcome_of(record, sink)
            except Exception as exc:  # noqa: BLE001 - the runtime's error boundary: a letter all the same
                envelope_fits(sink, letter_for_exception(record, exc))
                raise AssertionError(f"{made_by} raised {type(exc).__name__}: {exc}") from exc
        assert outcome in {"dead_lettered_by_position", "dead_lettered", "parsed", "batched", "waiting"}
        if breakage is not None:
            assert outcome == "dead_lettered_by_position"
