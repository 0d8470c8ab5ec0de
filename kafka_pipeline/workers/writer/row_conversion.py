"""Entity-rows messages -> Arrow tables typed by the table contract.

Every value is checked against its column's Arrow type in `kafka_pipeline.claimx.schemas`; a
value that does not fit (or a column the table does not have) fails the whole message with a
`SchemaMismatch` naming the table, column and value, so nothing is ever silently dropped.

Conversions (strict, the only ones there are):

- string: str; an int is turned into its decimal text (ids may arrive as JSON numbers).
- int64: int (not bool). float64: float or int (not bool). bool: bool.
- timestamp[us, UTC]: an ISO-8601 string; naive means UTC; other offsets are converted.
- date32: an ISO date (`2024-05-01`) or an ISO timestamp (its UTC date).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa

from kafka_pipeline.claimx.entity_rows import EntityRowsMessage
from kafka_pipeline.claimx.events import DEFAULT_MAX_FUTURE_SKEW_S, check_not_future, to_utc
from kafka_pipeline.claimx.schemas import METADATA_COLUMN_NAMES, TABLES, TableSpec
from kafka_pipeline.delta import merge_rule
from kafka_pipeline.errors import PermanentError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class SchemaMismatch(PermanentError):
    """A row does not fit its table's contract; the message goes to the dead-letter topic."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _mismatch(table: str, column: str, expected: str, value: Any) -> SchemaMismatch:
    return SchemaMismatch(f"{table}.{column}: expected {expected}, got {_shown(value)}")


def parse_timestamp(value: str) -> datetime:
    """ISO-8601 text -> aware UTC datetime (naive = UTC)."""
    return to_utc(datetime.fromisoformat(value))


def _string(value: Any) -> str:
    if type(value) is str:
        return value
    if type(value) is int:
        return str(value)
    raise TypeError


def _int64(value: Any) -> int:
    if type(value) is int and INT64_MIN <= value <= INT64_MAX:
        return value
    raise TypeError


def _float64(value: Any) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise TypeError


def _bool(value: Any) -> bool:
    if type(value) is bool:
        return value
    raise TypeError


def _timestamp(value: Any) -> datetime:
    if type(value) is str:
        return parse_timestamp(value)
    raise TypeError


def _date(value: Any) -> date:
    if type(value) is str:
        if len(value) == 10:
            return date.fromisoformat(value)
        return parse_timestamp(value).date()
    raise TypeError


def _converter(type_: pa.DataType) -> tuple[Any, str]:
    if pa.types.is_string(type_):
        return _string, "string"
    if pa.types.is_int64(type_):
        return _int64, "int64"
    if pa.types.is_float64(type_):
        return _float64, "float64"
    if pa.types.is_boolean(type_):
        return _bool, "bool"
    if pa.types.is_timestamp(type_):
        return _timestamp, "ISO-8601 timestamp"
    if pa.types.is_date32(type_):
        return _date, "ISO-8601 date"
    raise ValueError(f"no converter for Arrow type {type_}")


class _TableConverter:
    """Converts and accumulates one table's rows as columns."""

    def __init__(self, spec: TableSpec) -> None:
        self.spec = spec
        self.has_trace = merge_rule.has_trace_column(spec)
        self.schema = merge_rule.input_schema(spec)
        # Columns a row may carry: the table's own (the events log's key `trace_id` included).
        own = [name for name, _ in spec.columns]
        self.converters = {name: _converter(spec.schema.field(name).type) for name in own}
        self.columns: dict[str, list[Any]] = {name: [] for name in self.schema.names}

    def convert(self, rows: list[dict[str, Any]], message: EntityRowsMessage) -> list[dict[str, Any]]:
        """The rows with converted values; raises SchemaMismatch on the first misfit."""
        name = self.spec.name
        converted: list[dict[str, Any]] = []
        for row in rows:
            if not isinstance(row, dict):
                raise SchemaMismatch(f"{name}: a row must be a JSON object, got {_shown(row)}")
            out: dict[str, Any] = {}
            for column, value in row.items():
                entry = self.converters.get(column)
                if entry is None:
                    if column in METADATA_COLUMN_NAMES:
                        raise SchemaMismatch(f"{name}.{column}: metadata column is set by the writer, not by rows")
                    raise SchemaMismatch(f"{name}.{column}: column not in the table's schema")
                if value is None:
                    continue
                convert, expected = entry
                try:
                    out[column] = convert(value)
                except (TypeError, ValueError, OverflowError):
                    raise _mismatch(name, column, expected, value) from None
            if not self.has_trace and out.get("trace_id") is None:
                out["trace_id"] = message.trace_id  # the events log row of this very event
            for key in self.spec.merge_keys:
                if out.get(key) is None:
                    raise SchemaMismatch(f"{name}.{key}: merge key is missing or null")
            converted.append(out)
        return converted

    def append(self, rows: list[dict[str, Any]], message: EntityRowsMessage, seq: int, app: str, offset: int) -> int:
        """Append converted rows; `seq` numbers them in arrival order. Returns the next seq."""
        event_time = message.event_time.astimezone(UTC)
        for row in rows:
            for column in self.converters:
                self.columns[column].append(row.get(column))
            if self.has_trace:
                self.columns["trace_id"].append(message.trace_id)
            self.columns["event_time"].append(event_time)
            self.columns[merge_rule.SEQ].append(seq)
            seq += 1
            self.columns[merge_rule.APP].append(app)
            self.columns[merge_rule.OFFSET].append(offset)
        return seq

    @property
    def row_count(self) -> int:
        return len(self.columns["event_time"])

    def to_arrow(self) -> pa.Table:
        return pa.table({n: pa.array(self.columns[n], self.schema.field(n).type) for n in self.schema.names}, schema=self.schema)


class BatchBuilder:
    """Collects the rows of many entity-rows messages, per table, in arrival order.

    `add` is all-or-nothing per message: a message with one bad row adds nothing and raises
    `SchemaMismatch`, so the caller can dead-letter it and go on with the rest of the batch.

    A message whose `event_time` is later than now + `max_future_skew_s` is refused too: it would
    win every newest-wins merge of its keys for ever. The enrichment worker refuses such an
    `ingested_at` already; this holds for whatever else reaches the entity-rows topic.
    """

    def __init__(self, tables: Iterable[TableSpec] = TABLES.values(), *, max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S) -> None:
        self._tables = {spec.name: _TableConverter(spec) for spec in tables}
        self._seq = 0
        self.max_future_skew_s = max_future_skew_s

    def add(self, message: EntityRowsMessage, *, app: str, offset: int) -> int:
        """Add one message's rows (tagged with their partition's app id and offset); returns the row count."""
        try:
            check_not_future(message.event_time.astimezone(UTC), "event_time", self.max_future_skew_s)
        except OverflowError:
            raise SchemaMismatch(f"event_time: {message.event_time.isoformat()} is out of range in UTC") from None
        except ValueError as exc:
            raise SchemaMismatch(str(exc)) from None
        converted: list[tuple[_TableConverter, list[dict[str, Any]]]] = []
        for name, rows in message.rows.items():
            table = self._tables.get(name)
            if table is None:
                raise SchemaMismatch(f"{name}: no such table (known: {', '.join(sorted(self._tables))})")
            converted.append((table, table.convert(rows, message)))
        start = self._seq
        for table, rows in converted:
            self._seq = table.append(rows, message, self._seq, app, offset)
        return self._seq - start

    def tables(self) -> dict[str, pa.Table]:
        """Per table with rows: an Arrow table with the columns of `merge_rule.input_schema`."""
        return {name: table.to_arrow() for name, table in self._tables.items() if table.row_count}

    @property
    def row_count(self) -> int:
        return sum(table.row_count for table in self._tables.values())

