"""Where replayed events come from: JSON-lines files, a range of a topic, or the tables' event log.

Each source yields `ReplayRecord`s (the bytes to send, the key, and the event type and project id
read from them for filtering and the summary). `total` is known after `open()` when the source
can tell how much it will read (the progress bar's length).

- `FileSource`: non-blank lines of the files, in order. A line that is not an event is sent too
  (unkeyed when no project id can be read) so the enrichment worker dead-letters it with its
  reason: a replay never loses input. Such a line matches no project or type filter.
- `TopicSource`: a range of each partition of a topic, read without joining any group (assign,
  not subscribe), so it disturbs no consumer group. The range's end is fixed when the source
  opens, so replaying a topic into itself ends. Keys are kept; headers are not (a replayed
  event starts with no retry history).
- `TableSource`: the `claimx_events` table under the tables root. Each row is rebuilt into the
  event that produced it: the same fields, the same `ingested_at`, hence the same `trace_id`.
  The table has no `event_id` column, and needs none: `trace_id` is the event's `event_id`
  whenever it had one, so a stored `trace_id` that differs from the one derived from the other
  columns is the `event_id`, and the rebuilt event carries it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from aiokafka import AIOKafkaConsumer, TopicPartition

from kafka_pipeline.claimx.events import (
    FIELD_ALIASES,
    coerce_id,
    derive_trace_id,
    to_utc,
)
from kafka_pipeline.claimx.schemas import EVENTS, TIMESTAMP
from kafka_pipeline.config import DeltaSettings, KafkaSettings
from kafka_pipeline.delta.table_writer import open_table, table_uri
from kafka_pipeline.errors import UserError
from kafka_pipeline.offsets import positions


class SourceError(UserError):
    """A source cannot be read (no events table, ...); one line for the user."""


EVENT_COLUMNS = ["trace_id", "event_type", "project_id", "ingested_at", "media_id", "task_assignment_id",
                 "video_collaboration_id", "master_file_name"]
OPTIONAL_IDS = ("media_id", "task_assignment_id", "video_collaboration_id", "master_file_name")


@dataclass(frozen=True, slots=True)
class ReplayRecord:
    value: bytes
    key: bytes | None
    event_type: str | None  # None: not an event (not JSON, or no type)
    project_id: str | None


def describe(value: bytes | None) -> tuple[str | None, str | None]:
    """The event type and project id of a message, read leniently (either spelling, id as number
    or string); None for what cannot be read. Full validation is the enrichment worker's."""
    try:
        obj = json.loads(value) if value is not None else None
    except (ValueError, UnicodeDecodeError, RecursionError):  # not JSON, or nested too deep: read as nothing
        return None, None
    if not isinstance(obj, dict):
        return None, None
    return _first_text(obj, "event_type"), _first_id(obj, "project_id")


def _first_text(obj: Mapping[str, Any], field: str) -> str | None:
    for name in FIELD_ALIASES[field]:
        value = obj.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _first_id(obj: Mapping[str, Any], field: str) -> str | None:
    for name in FIELD_ALIASES[field]:
        try:
            value = coerce_id(obj.get(name), field)
        except ValueError:
            continue
        if value:
            return value
    return None


def record_of(value: bytes, key: bytes | None = None) -> ReplayRecord:
    """A record for `value`, keyed by `key` or else by the project id read from it."""
    event_type, project_id = describe(value)
    if key is None and project_id is not None:
        key = project_id.encode()
    return ReplayRecord(value, key, event_type, project_id)


@dataclass(frozen=True)
class EventFilter:
    """Project ids and event types to keep (None: any)."""

    project_ids: frozenset[str] | None = None
    event_types: frozenset[str] | None = None

    def matches(self, record: ReplayRecord) -> bool:
        if self.project_ids is not None and record.project_id not in self.project_ids:
            return False
        return self.event_types is None or record.event_type in self.event_types


class Source(Protocol):
    description: str

    async def open(self) -> int | None:
        """Get ready; returns how many records `records()` will yield, when known."""

    def records(self) -> AsyncIterator[ReplayRecord]: ...

    async def close(self) -> None: ...


# --- files -----------------------------------------------------------------------------------


class FileSource:
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.description = ", ".join(str(p) for p in paths)

    async def open(self) -> int | None:
        return None

    async def records(self) -> AsyncIterator[ReplayRecord]:
        for path in self.paths:
            with path.open("rb") as handle:
                for line in handle:
                    line = line.strip()
                    if line:
                        yield record_of(line)

    async def close(self) -> None:
        return None


# --- a topic range ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicRange:
    """What to read: offsets `[from_offset, to_offset)` or records stamped `[since, until)`,
    per partition; an open end is the partition's first or last record."""

    topic: str
    partitions: tuple[int, ...] | None = None
    from_offset: int | None = None
    to_offset: int | None = None
    since: datetime | None = None
    until: datetime | None = None


class TopicSource:
    def __init__(self, kafka: KafkaSettings, spec: TopicRange) -> None:
        self.kafka = kafka
        self.spec = spec
        self.description = spec.topic
        self.ranges: dict[int, tuple[int, int]] = {}  # partition -> [start, end), fixed by open()
        self._consumer: AIOKafkaConsumer | None = None

    async def open(self) -> int | None:
        spec = self.spec
        consumer = positions.reader(self.kafka)
        await positions.start(consumer, self.kafka)
        self._consumer = consumer  # close() stops it, also when the rest of open() fails
        tps = await positions.topic_partitions(consumer, spec.topic, spec.partitions)
        ends = await positions.bounds(self.kafka, consumer, tps)
        starts = {p: b.clamp(spec.from_offset) if spec.from_offset is not None else b.low for p, b in ends.items()}
        stops = {p: b.clamp(spec.to_offset) if spec.to_offset is not None else b.high for p, b in ends.items()}
        if spec.since is not None:
            starts = await positions.offsets_at(self.kafka, consumer, tps, spec.since, ends)
        if spec.until is not None:
            stops = await positions.offsets_at(self.kafka, consumer, tps, spec.until, ends)
        self.ranges = {p: (starts[p], max(starts[p], stops[p])) for p in ends}
        self.description = f"{spec.topic} " + " ".join(f"p{p}[{a}:{b})" for p, (a, b) in self.ranges.items())
        return sum(b - a for a, b in self.ranges.values())

    async def records(self) -> AsyncIterator[ReplayRecord]:
        consumer = self._consumer
        assert consumer is not None, "open() first"
        unread = {TopicPartition(self.spec.topic, p): r for p, r in self.ranges.items() if r[0] < r[1]}
        consumer.assign(list(unread))
        for tp, (start, _) in unread.items():
            consumer.seek(tp, start)
        while unread:
            batch = await consumer.getmany(*unread, timeout_ms=500)
            for tp, records in batch.items():
                if tp not in unread:
                    continue
                stop = unread[tp][1]
                for record in records:
                    if record.offset >= stop:
                        break
                    if record.value is not None:
                        yield record_of(record.value, record.key)
            for tp in list(unread):
                # the position, not the last record: offsets without a record (transaction
                # markers, compacted away) still move it to the end
                if await consumer.position(tp) >= unread[tp][1]:
                    del unread[tp]
                    consumer.pause(tp)

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


# --- the tables' event log -------------------------------------------------------------------


def event_from_row(row: Mapping[str, Any]) -> bytes:
    """The event a `claimx_events` row was written for, as JSON bytes (same `trace_id`)."""
    ingested_at = to_utc(row["ingested_at"])
    fields: dict[str, Any] = {"event_type": row["event_type"], "project_id": row["project_id"], "ingested_at": ingested_at.isoformat()}
    optional = {name: row[name] for name in OPTIONAL_IDS if row.get(name) is not None}
    fields.update(optional)
    if derive_trace_id(row["project_id"], row["event_type"], ingested_at, **optional) != row["trace_id"]:
        fields["event_id"] = row["trace_id"]  # the trace id of an event that had an event_id is that id
    return json.dumps(fields, separators=(",", ":")).encode()


class TableSource:
    """`claimx_events` rows with `ingested_at` in `[since, until)`, of the filter's projects and
    types, oldest first."""

    def __init__(
        self, delta: DeltaSettings, selection: EventFilter, since: datetime | None = None, until: datetime | None = None
    ) -> None:
        self.delta = delta
        self.selection = selection
        self.since = since
        self.until = until
        self.uri = table_uri(delta.tables_root, EVENTS.name)
        self.description = self.uri
        self._rows: list[dict[str, Any]] = []

    def _time_window(self) -> pc.Expression | None:
        condition: pc.Expression | None = None
        if self.since is not None:
            condition = pc.field("ingested_at") >= pa.scalar(to_utc(self.since), type=TIMESTAMP)
        if self.until is not None:
            before = pc.field("ingested_at") < pa.scalar(to_utc(self.until), type=TIMESTAMP)
            condition = before if condition is None else condition & before
        return condition

    async def open(self) -> int | None:
        table = open_table(self.uri, self.delta.storage_options)
        if table is None:
            raise SourceError(f"no events table at {self.uri} (check the tables root)")
        # Only the time window goes into the scan: a string predicate there fails on the
        # string_view statistics deltalake writes (pyarrow has no string/string_view kernel).
        data = table.to_pyarrow_dataset().to_table(columns=EVENT_COLUMNS, filter=self._time_window())
        if self.selection.project_ids is not None:
            data = data.filter(pc.is_in(data["project_id"], pa.array(sorted(self.selection.project_ids), pa.string())))
        if self.selection.event_types is not None:
            data = data.filter(pc.is_in(data["event_type"], pa.array(sorted(self.selection.event_types), pa.string())))
        data = data.sort_by([("ingested_at", "ascending"), ("trace_id", "ascending")])
        self._rows = data.to_pylist()
        return len(self._rows)

    async def records(self) -> AsyncIterator[ReplayRecord]:
        for row in self._rows:
            yield ReplayRecord(event_from_row(row), row["project_id"].encode(), row["event_type"], row["project_id"])

    async def close(self) -> None:
        self._rows = []


def read_project_ids(path: Path) -> Iterable[str]:
    """Project ids from a file: one or more per line (commas or spaces), `#` starts a comment."""
    for line in path.read_text().splitlines():
        yield from line.split("#", 1)[0].replace(",", " ").split()
