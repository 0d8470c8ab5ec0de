"""Dead-letter operations: read the DLQ topic, summarise, inspect, replay once, purge.

Reading. The DLQ is read with a consumer that joins no group (partitions assigned by hand),
from each partition's purge point up to its high watermark taken when the read starts, so a
command sees a stable snapshot while workers keep dead-lettering. The end comes from
`kafka_pipeline.offsets.topic_offsets.high_watermarks` (the broker's end offsets on Apache Kafka;
on tansu, whose `end_offsets()` may answer the last batch's base offset, the high watermark of a
fetch response: see runtime/broker_capabilities.py). If the partitions stop
delivering before the end is reached (`idle_timeout_s` without a record), the read ends there
and the snapshot says it is incomplete.

Replay once. `replay` sends each selected envelope's original key, value and headers, minus
the retry headers (the attempt count starts again), to its `original_topic`, but only to a
configured topic that can have made it (`replay_target`): the events topic, or the entity-rows
topic for a letter the entity writer made (`made_by: write`); anything else, and a truncated
letter, is refused and reported, never sent. Once the broker
acknowledged them it writes one *replay marker* per envelope onto the DLQ topic itself, in the
envelope's partition: header ``dlq-marker: replayed``, value
``{"dlq_marker": "replayed", "partition": P, "offset": O, "replayed_to": T, "replayed_at": ...}``.
Every read collects the markers and flags the envelopes they name, so a second `replay --all`
skips what was replayed. Both markers and de-duplication go by the letter's own DLQ position
(and, for one original dead-lettered twice, its identical content), never by the coordinates
an envelope claims for its original. Markers work for a selective `--trace-ids` replay too, which a
consumer-group offset could not express. A crash between the replay sends and the markers
means those envelopes are replayed again next time (at-least-once; the merges make it
harmless). Anything else reading the DLQ topic should skip records with the `dlq-marker` header.

Bounded reading. Whoever can write to the DLQ topic writes what `read_dlq` parses, so every
parse is bounded: a record over `MAX_RECORD_BYTES` is unreadable without being parsed, a marker
is read only when it is small and shallow JSON, an envelope is parsed by pydantic (whose parser
refuses nesting past its own limit), `inspect`'s decoding of values falls back to text on deep
or huge JSON, and the whole read ends after `max_read_s`. A letter is re-validated before
`replay` sends it: an entity-rows letter must be rows the writer would take (every column of the
contract, no `event_time` beyond the future skew), so a forged envelope claiming `made_by: write`
cannot put a row into a table. An events-topic letter is sent as it is (within the event size
limit): the enrichment worker parses it again, the future skew included, and a letter dead-lettered
by an older parser may be an event now.

Purge. Kafka deletes no single records, and tansu does not implement DeleteRecords (it closes
the connection), so `purge` commits the current high watermark of every DLQ partition as the
offset of the consumer group ``kafka-pipeline-dlq-purged.<dlq topic>``. Every read starts from
that group's committed offsets: purged dead letters are never listed, inspected or replayed
again, and the broker's retention removes them from disk. The group never consumes anything;
it only holds those offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from kafka_pipeline.claimx.entity_rows import EntityRowsMessage
from kafka_pipeline.claimx.events import MAX_EVENT_BYTES
from kafka_pipeline.config import KafkaSettings
from kafka_pipeline.dead_letters.envelope import MAX_DLQ_MESSAGE_BYTES, DeadLetter, EncodedBytes
from kafka_pipeline.dead_letters.routing import strip_retry_headers
from kafka_pipeline.dead_letters.undecodable import getmany_past_undecodable
from kafka_pipeline.errors import BrokerUnreachable, PermanentError
from kafka_pipeline.kafka.clients import connection_kwargs, first_contact, make_consumer, make_producer
from kafka_pipeline.offsets.topic_offsets import high_watermarks
from kafka_pipeline.ops.text import printable
from kafka_pipeline.workers.writer.row_conversion import BatchBuilder

MARKER_HEADER = "dlq-marker"
MAX_RECORD_BYTES = 2 * MAX_DLQ_MESSAGE_BYTES  # our letters are under MAX_DLQ_MESSAGE_BYTES
MAX_MARKER_BYTES = 4_096
MAX_INSPECT_JSON_BYTES = MAX_DLQ_MESSAGE_BYTES
MAX_JSON_DEPTH = 64  # nesting shown parsed by `inspect`; deeper values are shown as text
DEFAULT_MAX_READ_S = 120.0
REPLAYED = b"replayed"
PURGE_GROUP_PREFIX = "kafka-pipeline-dlq-purged."


def purge_group(topic: str) -> str:
    """The consumer group whose committed offsets say where the DLQ topic was purged up to."""
    return f"{PURGE_GROUP_PREFIX}{topic}"


@dataclass
class DlqEntry:
    """One dead letter on the DLQ topic (or a record there that is not a readable envelope)."""

    partition: int
    offset: int
    key: bytes | None
    raw: bytes | None
    letter: DeadLetter | None
    timestamp_ms: int = 0  # when it was written to the DLQ
    unreadable: str | None = None  # why `raw` is not an envelope
    replayed: bool = False


@dataclass
class DlqSnapshot:
    topic: str
    exists: bool
    start: dict[int, int] = field(default_factory=dict)  # partition -> first offset read (the purge point)
    end: dict[int, int] = field(default_factory=dict)  # partition -> high watermark when the read began
    entries: list[DlqEntry] = field(default_factory=list)  # oldest first (DLQ write time)
    markers: int = 0
    complete: bool = True

    @property
    def readable(self) -> list[DlqEntry]:
        return [e for e in self.entries if e.letter is not None]

    @property
    def pending(self) -> list[DlqEntry]:
        """Readable dead letters not replayed yet."""
        return [e for e in self.entries if e.letter is not None and not e.replayed]


async def read_dlq(kafka: KafkaSettings, topic: str, *, idle_timeout_s: float = 5.0, max_read_s: float = DEFAULT_MAX_READ_S) -> DlqSnapshot:
    """Everything on the DLQ topic after the purge point, up to its current end (partial, and
    marked incomplete, past `max_read_s`)."""
    with first_contact(kafka):
        ends = await high_watermarks(kafka, topic)
    if not ends:
        return DlqSnapshot(topic=topic, exists=False)
    snapshot = DlqSnapshot(topic=topic, exists=True, end=dict(ends))
    consumer = make_consumer(kafka, group_id=purge_group(topic))  # assigned by hand: never joins
    await _start(consumer, kafka)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(ends)]
        consumer.assign(tps)
        pending: set[TopicPartition] = set()
        read_to: dict[TopicPartition, int] = {}  # next offset to read, per partition
        for tp in tps:
            purged_to = await consumer.committed(tp) or 0
            snapshot.start[tp.partition] = min(purged_to, ends[tp.partition])
            if purged_to < ends[tp.partition]:
                consumer.seek(tp, purged_to)
                pending.add(tp)
                read_to[tp] = purged_to
        for tp in set(tps) - pending:
            consumer.pause(tp)
        replayed: set[tuple[int, int]] = set()
        idle_since = time.monotonic()
        give_up_at = time.monotonic() + max_read_s
        while pending:
            batch, undecodable = await getmany_past_undecodable(consumer, sorted(pending, key=lambda tp: tp.partition), read_to, timeout_ms=200)
            if any(batch.values()) or undecodable:
                idle_since = time.monotonic()
            for tp, offset in undecodable:
                read_to[tp] = offset + 1
                if offset < ends[tp.partition]:
                    snapshot.entries.append(DlqEntry(tp.partition, offset, None, None, None,
                                                     unreadable="the Kafka client cannot decode it (a header name that is not UTF-8)"))
            for tp, records in batch.items():
                end = ends[tp.partition]
                for record in records:
                    if record.offset >= end:
                        break
                    read_to[tp] = record.offset + 1
                    marker = _marker_target(record)
                    if marker is not None:
                        snapshot.markers += 1
                        replayed.add(marker)
                    else:
                        snapshot.entries.append(_entry(record))
                if records and records[-1].offset + 1 >= end:
                    pending.discard(tp)
                    consumer.pause(tp)
            for tp in list(pending):  # a partition whose tail is a gap (compaction, control records)
                if await consumer.position(tp) >= ends[tp.partition]:
                    pending.discard(tp)
            if pending and (time.monotonic() - idle_since > idle_timeout_s or time.monotonic() > give_up_at):
                snapshot.complete = False
                break
        for entry in snapshot.entries:
            entry.replayed = (entry.partition, entry.offset) in replayed
        snapshot.entries.sort(key=lambda e: (e.timestamp_ms, e.partition, e.offset))
        return snapshot
    finally:
        await consumer.stop()


def _marker_target(record: Any) -> tuple[int, int] | None:
    if not any(name == MARKER_HEADER for name, _ in record.headers or ()):
        return None
    nothing = (-1, -1)  # a marker that names nothing is still not a dead letter
    value = record.value
    if not isinstance(value, bytes) or len(value) > MAX_MARKER_BYTES or value.count(b"[") + value.count(b"{") > MAX_JSON_DEPTH:
        return nothing
    try:
        body = json.loads(value)
        return int(body["partition"]), int(body["offset"])
    except (TypeError, ValueError, KeyError, RecursionError):
        return nothing


def _entry(record: Any) -> DlqEntry:
    entry = DlqEntry(partition=record.partition, offset=record.offset, key=record.key, raw=record.value, letter=None,
                     timestamp_ms=record.timestamp or 0)
    if record.value is None:
        entry.unreadable = "empty value"
        return entry
    if len(record.value) > MAX_RECORD_BYTES:
        entry.unreadable = f"not a dead-letter envelope: {len(record.value)} bytes, over {MAX_RECORD_BYTES}"
        return entry
    try:
        entry.letter = DeadLetter.from_bytes(record.value)
    except RecursionError:
        entry.unreadable = "not a dead-letter envelope: nested too deeply"
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "value"
        entry.unreadable = f"not a dead-letter envelope: {where}: {first['msg']}"
    return entry


async def _start(client: Any, kafka: KafkaSettings) -> None:
    try:
        with first_contact(kafka):
            await client.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await client.stop()  # else "Unclosed AIOKafkaConsumer" after the one-line error
        raise


# -- list -----------------------------------------------------------------------------------


@dataclass
class DlqSummary:
    topic: str
    exists: bool
    total: int
    pending: int
    replayed: int
    unreadable: int
    complete: bool
    # distinct original messages among the pending ones: a worker crash between its DLQ send
    # and its offset commit dead-letters the same original again (at-least-once)
    originals: int
    # (original topic, error category, error type) -> count, over the dead letters not replayed
    groups: list[tuple[str, str, str, int]]

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "exists": self.exists,
            "total": self.total,
            "not_replayed": self.pending,
            "replayed": self.replayed,
            "unreadable": self.unreadable,
            "originals": self.originals,
            "complete": self.complete,
            "groups": [
                {"original_topic": t, "error_category": c, "error_type": e, "count": n} for t, c, e, n in self.groups
            ],
        }


def original_of(entry: DlqEntry) -> tuple[str, int, int]:
    """Which consumed message a dead letter stands for (duplicates share it)."""
    assert entry.letter is not None
    return (entry.letter.original_topic, entry.letter.partition, entry.letter.offset)


def summarize(snapshot: DlqSnapshot) -> DlqSummary:
    pending = snapshot.pending
    counts = Counter((e.letter.original_topic, e.letter.error_category, e.letter.error_type) for e in pending if e.letter)
    groups: list[tuple[str, str, str, int]] = sorted(((t, c, e, n) for (t, c, e), n in counts.items()), key=lambda g: (-g[3], g[0], g[1], g[2]))
    readable = snapshot.readable
    return DlqSummary(
        topic=snapshot.topic,
        exists=snapshot.exists,
        total=len(readable),
        pending=len(pending),
        replayed=len(readable) - len(pending),
        unreadable=len(snapshot.entries) - len(readable),
        originals=len({original_of(e) for e in pending}),
        complete=snapshot.complete,
        groups=groups,
    )


def format_summary(summary: DlqSummary) -> str:
    if not summary.exists:
        return f"DLQ topic {printable(summary.topic)} does not exist: nothing was dead-lettered"
    lines = [
        f"DLQ {printable(summary.topic)}: {summary.total} dead letters ({summary.pending} not replayed, "
        f"{summary.replayed} replayed), {summary.unreadable} unreadable records; "
        f"{summary.originals} distinct original messages not replayed"
    ]
    if not summary.complete:
        lines.append("warning: the topic stopped delivering before its end; counts are partial")
    if summary.groups:
        header = ("original topic", "category", "error type", "count")
        rows = [(printable(t), printable(c), printable(e), str(n)) for t, c, e, n in summary.groups]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
        lines.append("not replayed:")
        for row in [header, *rows]:
            lines.append("  " + "  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                                          for i, (cell, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(lines)


# -- inspect --------------------------------------------------------------------------------


def _decoded(data: EncodedBytes | None) -> Any:
    """A value as a reader wants it: parsed JSON, else text, else {"base64": ...}."""
    if data is None:
        return None
    if data.encoding == "base64":
        return {"base64": data.data}
    if len(data.data) > MAX_INSPECT_JSON_BYTES or data.data.count("[") + data.data.count("{") > 10_000:
        return data.data  # shown as text: parsing it would cost more than showing it
    try:
        return _shallow(json.loads(data.data))
    except (ValueError, RecursionError):
        return data.data


def _shallow(value: Any, depth: int = 0) -> Any:
    """`value`, with what is nested past MAX_JSON_DEPTH as JSON text (printing it cannot recurse)."""
    if isinstance(value, dict | list) and depth >= MAX_JSON_DEPTH:
        return json.dumps(value)[:10_000]
    if isinstance(value, dict):
        return {k: _shallow(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_shallow(v, depth + 1) for v in value]
    return value


def inspect_entries(snapshot: DlqSnapshot, *, trace_id: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Envelopes as JSON-ready dicts (value decoded), in DLQ order, optionally filtered by trace id."""
    shown: list[dict[str, Any]] = []
    for entry in snapshot.entries:
        if limit is not None and len(shown) >= limit:
            break
        if entry.letter is None:
            if trace_id is not None:
                continue
            shown.append({
                "dlq_partition": entry.partition,
                "dlq_offset": entry.offset,
                "unreadable": entry.unreadable,
                "raw": _decoded(EncodedBytes.of(entry.raw)) if entry.raw is not None else None,
            })
            continue
        if trace_id is not None and entry.letter.trace_id != trace_id:
            continue
        letter = json.loads(entry.letter.model_dump_json())
        letter["key"] = _decoded(entry.letter.key)
        letter["value"] = _decoded(entry.letter.value)
        letter["headers"] = {name: _decoded(value) if value.encoding == "base64" else value.data
                             for name, value in entry.letter.headers}
        shown.append({"dlq_partition": entry.partition, "dlq_offset": entry.offset, "replayed": entry.replayed, **letter})
    return shown


# -- replay ---------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    replayed: Counter[str] = field(default_factory=Counter)  # target topic -> count
    already_replayed: int = 0
    missing_topic: Counter[str] = field(default_factory=Counter)  # topic that does not exist -> count
    refused: Counter[str] = field(default_factory=Counter)  # why a letter may not be replayed -> count
    unmatched_trace_ids: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def total(self) -> int:
        return sum(self.replayed.values())


def select_for_replay(snapshot: DlqSnapshot, *, trace_ids: Iterable[str] | None, replay_all: bool,
                      include_replayed: bool = False) -> tuple[list[DlqEntry], int, list[str]]:
    """(entries to replay, how many were skipped as already replayed, trace ids that matched nothing)."""
    wanted = set(trace_ids or ())
    if not replay_all and not wanted:
        raise ValueError("choose --all or at least one trace id")
    chosen: list[DlqEntry] = []
    skipped = 0
    matched: set[str] = set()
    for entry in snapshot.readable:
        assert entry.letter is not None
        if not replay_all and entry.letter.trace_id not in wanted:
            continue
        if entry.letter.trace_id is not None:
            matched.add(entry.letter.trace_id)
        if entry.replayed and not include_replayed:
            skipped += 1
            continue
        chosen.append(entry)
    return chosen, skipped, sorted(wanted - matched)


async def replay(
    kafka: KafkaSettings,
    topic: str,
    *,
    trace_ids: Iterable[str] | None = None,
    replay_all: bool = False,
    include_replayed: bool = False,
    dry_run: bool = False,
) -> ReplayResult:
    """Send the chosen dead letters' original messages back to their topics, then mark them replayed."""
    snapshot = await read_dlq(kafka, topic)
    chosen, skipped, unmatched = select_for_replay(snapshot, trace_ids=trace_ids, replay_all=replay_all,
                                                   include_replayed=include_replayed)
    result = ReplayResult(already_replayed=skipped, unmatched_trace_ids=unmatched, dry_run=dry_run)
    if not chosen:
        return result
    existing = await _existing_topics(kafka)
    sendable = []
    for entry in chosen:
        assert entry.letter is not None
        refusal = replay_refusal(entry.letter, kafka)
        if refusal is not None:
            result.refused[refusal] += 1
        elif entry.letter.original_topic in existing:
            sendable.append(entry)
        else:
            result.missing_topic[entry.letter.original_topic] += 1
    if dry_run:
        result.replayed.update(e.letter.original_topic for e in sendable if e.letter)
        return result
    producer = make_producer(kafka)
    await _start(producer, kafka)
    try:
        sends = []
        for entry in {_identity(e): e for e in sendable}.values():  # a twice dead-lettered original once
            letter = entry.letter
            assert letter is not None
            sends.append(await producer.send(
                letter.original_topic,
                letter.value.raw() if letter.value is not None else None,
                key=letter.key.raw() if letter.key is not None else None,
                headers=strip_retry_headers(letter.original_headers()),
            ))
        await asyncio.gather(*sends)  # every replayed message acknowledged before any marker
        now = datetime.now(UTC).isoformat()
        markers = []
        for entry in sendable:
            assert entry.letter is not None
            body = {"dlq_marker": "replayed", "partition": entry.partition, "offset": entry.offset,
                    "replayed_to": entry.letter.original_topic, "replayed_at": now}
            markers.append(await producer.send(topic, json.dumps(body).encode(), key=entry.key,
                                               partition=entry.partition, headers=[(MARKER_HEADER, REPLAYED)]))
            result.replayed[entry.letter.original_topic] += 1
        await asyncio.gather(*markers)
    finally:
        await producer.stop()
    return result


def replay_refusal(letter: DeadLetter, kafka: KafkaSettings) -> str | None:
    """Why `letter` may not be replayed, or None: its target must be a configured topic that can
    have made it (the envelope's topic may come from a forged message), and it must be whole."""
    if letter.truncated:
        return "truncated: only a prefix of the original is kept"
    value = letter.value.raw() if letter.value is not None else None
    if letter.original_topic == kafka.events_topic:
        # the enrichment worker parses it again (a fixed parser may now take what it refused);
        # only its size is checked here, so that what is sent fits what the worker reads
        if value is not None and len(value) > MAX_EVENT_BYTES:
            return f"value of {len(value)} bytes is over the {MAX_EVENT_BYTES} bytes an event may have"
        return None
    if letter.original_topic == kafka.entity_rows_topic:
        if letter.made_by != "write":
            return f"names {kafka.entity_rows_topic} but was not made by the entity writer"
        try:
            BatchBuilder().add(EntityRowsMessage.from_bytes(value or b""), app="dlq-replay", offset=0)
        except (ValueError, PermanentError) as exc:
            return f"not valid entity rows: {str(exc).splitlines()[0][:120]}"
        return None
    return "original topic is not a configured replay target"


def _identity(entry: DlqEntry) -> tuple[Any, ...]:
    """What makes two dead letters the same original: the claimed coordinates and the content,
    so a forged envelope naming a genuine letter's coordinates cannot stand in for it."""
    letter = entry.letter
    assert letter is not None
    raw = (letter.key.raw() if letter.key else None, letter.value.raw() if letter.value else None)
    return (*original_of(entry), *raw, tuple(letter.original_headers()))


async def _existing_topics(kafka: KafkaSettings) -> set[str]:
    admin = AIOKafkaAdminClient(**connection_kwargs(kafka))
    await _start(admin, kafka)
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


# -- purge ----------------------------------------------------------------------------------


@dataclass
class PurgeResult:
    exists: bool
    purged: int = 0  # dead letters (and unreadable records) removed from view
    up_to: dict[int, int] = field(default_factory=dict)  # partition -> new start offset


async def purge(kafka: KafkaSettings, topic: str) -> PurgeResult:
    """Move the purge point of every DLQ partition to its current high watermark."""
    snapshot = await read_dlq(kafka, topic)
    if not snapshot.exists:
        return PurgeResult(exists=False)
    consumer = make_consumer(kafka, group_id=purge_group(topic))
    await _start(consumer, kafka)
    try:
        tps = {TopicPartition(topic, p): end for p, end in snapshot.end.items()}
        consumer.assign(list(tps))
        try:
            await consumer.commit({tp: end for tp, end in tps.items() if end > snapshot.start.get(tp.partition, 0)})
        except KafkaError as exc:
            raise BrokerUnreachable(f"could not commit the purge offsets of group {purge_group(topic)}: {exc}") from None
    finally:
        await consumer.stop()
    return PurgeResult(exists=True, purged=len(snapshot.entries), up_to=dict(snapshot.end))
