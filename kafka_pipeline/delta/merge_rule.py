"""The merge rule, as Arrow computations and Delta MERGE expressions.

The rule (claimx-domain.md, section 3) for a key and a column: the table holds the value of the
row with the latest `event_time` that had a non-null value there; a null never erases; ties on
`event_time` go to the later arrival; `event_time` becomes the larger, `created_at` is kept from
the first insert, `trace_id` comes with the newest row.

Why a column clock. Deciding "newest non-null wins" per column needs the event time of the
value each column currently holds, and that is not the row's `event_time` once a newer row with
nulls has passed by: after `t=1 {status: open}` and `t=3 {status: null}`, a late `t=2
{status: closed}` must win, but `source.event_time >= target.event_time` (2 >= 3) says no. A
row-level MERGE expression therefore makes the table depend on arrival order. The contract's
table schema has no room for per-column times, so every entity table has a companion *clock
table* (same merge key, `event_time`, and one timestamp per value column) that holds them for
the keys that need them: a key whose every value came with its row's newest event (a task or
media row fetched whole) has clocks that follow from its entity row, and no clock row. The
writer reads the clocks of a batch's keys, decides per column which source values win (the
`CASE WHEN source.c IS NOT NULL AND (target.c IS NULL OR source.time_c >= target.time_c)` rule,
evaluated with per-column times), and sends the entity table a pre-resolved source whose losing
values are null, so the MERGE there is `coalesce(source.c, target.c)`.

Clock encoding, chosen so that a clock table compresses to almost nothing: a clock cell is
null when the column's value came from the row's newest event (its time is the row's
`event_time`), `NO_VALUE` when the column holds null, and the value's event time otherwise.

Everything here is pure (pyarrow in, pyarrow out) and does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

TIMESTAMP = pa.timestamp("us", tz="UTC")

# Bookkeeping columns the writer carries beside a batch's rows (never written to a table).
SEQ = "__kp_seq"  # arrival order inside a batch (Kafka offset order within a partition)
APP = "__kp_app"  # Delta app transaction id of the row's source partition
OFFSET = "__kp_offset"  # the row's Kafka offset
NEWEST = "__kp_newest"  # in a MERGE source: the source row is the key's newest event
BASIS = "resolved_against"  # clock-table column: the entity row's event_time its clocks were resolved against
TRIVIAL = "__kp_trivial"  # in a clock-table MERGE source: the key's clocks follow from its entity row
_CLOCK = "__kp_clock__"  # in a combined batch: event time (µs) of column c's value
_OLD = "__kp_old__"  # clock columns joined beside a combined batch

# Clock cell meaning "the column holds null" (0001-01-01T00:00:00Z in microseconds).
NO_VALUE_US = -62_135_596_800_000_000
NO_VALUE = datetime(1, 1, 1, tzinfo=UTC)
# Compute functions get typed scalars only: a plain Python int makes pyarrow probe for optional
# packages (a failed import per call, which adds up to seconds per flush).
_NO_VALUE_SCALAR = pa.scalar(NO_VALUE_US, pa.int64())


class TableContract(Protocol):
    """What the merge needs to know about a table (`kafka_pipeline.claimx.schemas.TableSpec`)."""

    @property
    def name(self) -> str: ...

    @property
    def merge_keys(self) -> tuple[str, ...]: ...

    @property
    def schema(self) -> pa.Schema: ...

    @property
    def value_columns(self) -> list[str]: ...

    @property
    def fixed_event_time(self) -> bool:
        """Every row of a key has the same `event_time` (an event log)."""
        ...

    @property
    def immutable(self) -> bool:
        """Every row of a key is the same row: the merge is insert-if-absent, no clocks needed."""
        ...


def has_trace_column(spec: TableContract) -> bool:
    """Whether `trace_id` is metadata (every table but the events log, where it is the key)."""
    return "trace_id" not in spec.merge_keys


def input_schema(spec: TableContract) -> pa.Schema:
    """The rows a writer accepts: keys, value columns, `trace_id`, `event_time`, bookkeeping."""
    fields = [spec.schema.field(name) for name in (*spec.merge_keys, *spec.value_columns)]
    if has_trace_column(spec):
        fields.append(pa.field("trace_id", pa.string(), nullable=False))
    fields += [
        pa.field("event_time", TIMESTAMP, nullable=False),
        pa.field(SEQ, pa.int64(), nullable=False),
        pa.field(APP, pa.string(), nullable=False),
        pa.field(OFFSET, pa.int64(), nullable=False),
    ]
    return pa.schema(fields)


def clock_schema(spec: TableContract) -> pa.Schema:
    """Schema of a table's clock table."""
    keys = [spec.schema.field(name) for name in spec.merge_keys]
    return pa.schema(
        [*keys, pa.field("event_time", TIMESTAMP, nullable=False)]
        + [pa.field(name, TIMESTAMP) for name in spec.value_columns]
        + [pa.field(BASIS, TIMESTAMP)]
    )


def _typed_null(type_: pa.DataType) -> pa.Scalar:
    return pa.scalar(None, type_)


def combine(spec: TableContract, rows: pa.Table) -> pa.Table:
    """Fold a batch's rows into one row per key by the merge rule.

    `rows` has the columns of `input_schema(spec)` (bookkeeping beyond `SEQ` is ignored). The
    result has the keys, every value column with its newest non-null value, `_CLOCK + c` with
    that value's event time in microseconds (null when every row had null), `event_time` (µs,
    the newest) and `trace_id` (of the newest row; ties go to the later arrival). Keys that
    occur once pass straight through; only repeated keys are aggregated.
    """
    keys = list(spec.merge_keys)
    event_us = pc.cast(rows["event_time"], pa.int64())
    null_us = _typed_null(pa.int64())
    columns: dict[str, pa.ChunkedArray | pa.Array] = {key: rows[key] for key in keys}
    for name in spec.value_columns:
        columns[name] = rows[name]
        columns[_CLOCK + name] = pc.if_else(pc.is_valid(rows[name]), event_us, null_us)
    columns["event_time"] = event_us
    if has_trace_column(spec):
        columns["trace_id"] = rows["trace_id"]
    columns[SEQ] = rows[SEQ]
    table = pa.table(columns)
    carried = [name for name in table.column_names if name not in keys and name != SEQ]

    repeated = _repeated_keys(spec, table)
    if not pc.any(repeated).as_py():
        return table.select(keys + carried)
    single = table.filter(pc.invert(repeated)).select(keys + carried)
    ordered = table.filter(repeated).sort_by([("event_time", "ascending"), (SEQ, "ascending")])
    # `last` skips nulls, and the input is in (event_time, arrival) order: per key it picks the
    # newest non-null value of each column, and beside it that value's event time.
    folded = ordered.group_by(keys, use_threads=False).aggregate([(name, "last") for name in carried])
    folded = folded.rename_columns([name.removesuffix("_last") for name in folded.column_names])
    return pa.concat_tables([single, folded.select(keys + carried).cast(single.schema)])


def _repeated_keys(spec: TableContract, table: pa.Table) -> pa.ChunkedArray:
    """Per row: does its key occur more than once in `table`?"""
    key = key_text(spec, table)
    counts = pc.value_counts(key)
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), pa.scalar(1, pa.int64())))
    return pc.is_in(key, value_set=repeated)


@dataclass(frozen=True)
class Resolution:
    """A combined batch resolved against the clocks the tables already hold.

    `clock_rows`: the clock table's new rows for the keys that change (clock-table schema).
    `source`: the entity-table MERGE source for the same keys: losing values are null, so the
    update is `coalesce(source.c, target.c)` (see `merge_expressions`).
    """

    clock_rows: pa.Table
    source: pa.Table


def resolve(spec: TableContract, combined: pa.Table, clocks: pa.Table | None, now: datetime) -> Resolution:
    """Decide per key and column which of `combined`'s values win over the stored `clocks`.

    `clocks` holds clock-table rows for (some of) `combined`'s keys; a key without one is new.
    A source value wins when it is non-null and the stored column is null or not newer (ties go
    to the source: across batches the later one wins). Keys where nothing changes are dropped,
    so replaying rows the tables already hold older values for is a no-op.
    """
    keys = list(spec.merge_keys)
    null_us = _typed_null(pa.int64())
    src_row_us = combined["event_time"]
    clock_columns: dict[str, pa.ChunkedArray] = {}
    source_columns: dict[str, pa.ChunkedArray] = {}
    all_new = clocks is None or clocks.num_rows == 0
    if all_new:
        # No key has a history: every non-null value wins and every key changes (the same
        # result as the general rule below with all stored clocks null, in a third of the work).
        newest = pa.chunked_array([pa.repeat(pa.scalar(True), combined.num_rows)])
        new_row_us = src_row_us
        any_taken = newest
        basis = pa.nulls(combined.num_rows, TIMESTAMP)
        for name in spec.value_columns:
            src_us = combined[_CLOCK + name]
            clock_columns[name] = pc.if_else(
                pc.is_null(src_us), _NO_VALUE_SCALAR, pc.if_else(pc.equal(src_us, new_row_us), null_us, src_us)
            )
            source_columns[name] = combined[name]
    else:
        stored = aligned_clocks(spec, combined, clocks)  # row i: the stored clocks of combined's key i
        old_row_us = pc.cast(stored["event_time"], pa.int64())  # null: a new key
        basis = stored[BASIS]
        newest = pc.or_kleene(pc.is_null(old_row_us), pc.greater_equal(src_row_us, old_row_us))
        new_row_us = pc.max_element_wise(src_row_us, old_row_us)  # skips the null of a new key
        any_taken = newest
        for name in spec.value_columns:
            cell = pc.cast(stored[name], pa.int64())
            # The stored value's event time: null when the key is new or the column holds null.
            old_us = pc.if_else(pc.is_null(cell), old_row_us, pc.if_else(pc.equal(cell, _NO_VALUE_SCALAR), null_us, cell))
            src_us = combined[_CLOCK + name]
            # never null: a null source is False, a null stored value is True
            taken = pc.and_kleene(pc.is_valid(src_us), pc.or_kleene(pc.is_null(old_us), pc.greater_equal(src_us, old_us)))
            any_taken = pc.or_(any_taken, taken)
            new_us = pc.if_else(taken, src_us, old_us)
            clock_columns[name] = pc.if_else(
                pc.is_null(new_us), _NO_VALUE_SCALAR, pc.if_else(pc.equal(new_us, new_row_us), null_us, new_us)
            )
            source_columns[name] = pc.if_else(taken, combined[name], _typed_null(combined.schema.field(name).type))

    def keep(column: pa.ChunkedArray) -> pa.ChunkedArray:
        return column if all_new else pc.filter(column, any_taken)

    changed_keys = {key: keep(combined[key]) for key in keys}
    clock_rows = pa.table(
        {
            **changed_keys,
            "event_time": pc.cast(keep(new_row_us), TIMESTAMP),
            **{name: pc.cast(keep(clock_columns[name]), TIMESTAMP) for name in spec.value_columns},
            BASIS: keep(basis),
        },
        schema=clock_schema(spec),
    )

    count = clock_rows.num_rows
    now_column = pc.cast(pa.repeat(pa.scalar(int(now.timestamp() * 1_000_000), pa.int64()), count), TIMESTAMP)
    source: dict[str, pa.ChunkedArray | pa.Array] = dict(changed_keys)
    for name in spec.value_columns:
        source[name] = keep(source_columns[name])
    if has_trace_column(spec):
        source["trace_id"] = keep(combined["trace_id"])
    source["event_time"] = pc.cast(keep(src_row_us), TIMESTAMP)
    source["created_at"] = now_column
    source["updated_at"] = now_column
    source[NEWEST] = keep(newest)
    return Resolution(clock_rows=clock_rows, source=pa.table(source))


def key_text(spec: TableContract, table: pa.Table) -> pa.ChunkedArray | pa.Array:
    """One value per row identifying its merge key (composite keys joined by a unit separator)."""
    if len(spec.merge_keys) == 1:
        return table[spec.merge_keys[0]]
    parts = [pc.fill_null(table[k], pa.scalar("", pa.string())) for k in spec.merge_keys]
    return pc.binary_join_element_wise(*parts, pa.scalar("\x1f", pa.string()))


def aligned_clocks(spec: TableContract, combined: pa.Table, clocks: pa.Table | None) -> pa.Table:
    """For each row of `combined`, the clock row of its key (all null where there is none)."""
    if clocks is None or clocks.num_rows == 0:
        return pa.table({f.name: pa.nulls(combined.num_rows, f.type) for f in clock_schema(spec)})
    positions = pc.index_in(key_text(spec, combined), value_set=key_text(spec, clocks))
    return clocks.take(positions)


def stored_clocks(spec: TableContract, entity: pa.Table, held: pa.Table) -> pa.Table:
    """The clocks of the keys the tables hold (clock-table schema, `BASIS` the entity row's
    `event_time`), from the entity rows of those keys (`entity`: keys, `event_time`, value
    columns) and the clock rows the clock table holds for them (`held`).

    The clock table keeps a row only for a key with a value older than its row's newest event
    (`clock_changes`); any other key's clocks follow from its entity row: each value is as old
    as the row (clock null), each null column holds no value (`NO_VALUE`). A held row counts
    when it describes the entity row: committed with it (same `event_time`), or committed just
    before it, after a crash between the two commits (resolved against the entity row as it
    still is: `BASIS`; the replayed batch ties with it). Any other held row was committed by a
    writer that then lost the entity commit to a concurrent one: the entity row decides.
    """
    schema = clock_schema(spec)
    no_value = pa.scalar(NO_VALUE_US, pa.int64()).cast(TIMESTAMP)
    columns: dict[str, pa.ChunkedArray | pa.Array] = {key: entity[key] for key in spec.merge_keys}
    columns["event_time"] = entity["event_time"]
    for name in spec.value_columns:
        columns[name] = pc.if_else(pc.is_valid(entity[name]), _typed_null(TIMESTAMP), no_value)
    columns[BASIS] = entity["event_time"]
    derived = pa.table(columns, schema=schema)
    if held.num_rows == 0:
        return derived
    entity_time = aligned_clocks(spec, held, derived)["event_time"]  # per held row; null: no entity row
    with_row = pc.equal(held["event_time"], entity_time)
    before_row = pc.if_else(pc.is_null(entity_time), pc.is_null(held[BASIS]), pc.equal(held[BASIS], entity_time))
    counts = pc.or_(pc.fill_null(with_row, False), pc.fill_null(before_row, False))
    used = held.filter(counts).cast(schema)
    used = used.set_column(used.schema.get_field_index(BASIS), BASIS, entity_time.filter(counts))
    rest = derived.filter(pc.invert(pc.is_in(key_text(spec, derived), value_set=key_text(spec, used))))
    return pa.concat_tables([used, rest])


def clock_changes(spec: TableContract, clock_rows: pa.Table, held: pa.Table) -> pa.Table:
    """What a `resolve()`d batch changes in the clock table: the rows of keys that have a value
    older than their row's newest event (upserted), and of keys the table holds a row for whose
    clocks now follow from the entity row (`TRIVIAL`: deleted). Keys with neither need no row:
    for a table whose rows come whole from one event (most of them, most of the time) the clock
    table stays empty and a flush is one commit."""
    trivial = pa.chunked_array([pa.repeat(pa.scalar(True), clock_rows.num_rows)])
    for name in spec.value_columns:
        cell = pc.cast(clock_rows[name], pa.int64())
        trivial = pc.and_(trivial, pc.fill_null(pc.equal(cell, _NO_VALUE_SCALAR), True))
    wanted = pc.invert(trivial)
    if held.num_rows:
        wanted = pc.or_(wanted, pc.is_in(key_text(spec, clock_rows), value_set=key_text(spec, held)))
        # a row the table already holds as it is (a batch redone after its entity commit lost
        # a race, or replayed after a crash) needs no commit
        stored = aligned_clocks(spec, clock_rows, held)
        same = pc.invert(trivial)
        for name in clock_rows.column_names:
            equal = pc.fill_null(pc.equal(clock_rows[name], stored[name]), False)
            same = pc.and_(same, pc.or_(equal, pc.and_(pc.is_null(clock_rows[name]), pc.is_null(stored[name]))))
        wanted = pc.and_(wanted, pc.invert(same))
    return clock_rows.append_column(TRIVIAL, trivial).filter(wanted)


@dataclass(frozen=True)
class MergeExpressions:
    predicate: str
    updates: dict[str, str]
    inserts: dict[str, str]


SOURCE_ALIAS = "s"
TARGET_ALIAS = "t"


def merge_expressions(spec: TableContract) -> MergeExpressions:
    """The entity-table MERGE for a `resolve()`d source.

    Per value column `coalesce(s.c, t.c)`: the source holds a value only where it wins, so a
    null never erases and an older value only fills a null. `event_time` becomes the larger,
    `trace_id` follows the newest row, `created_at` is never updated, `updated_at` is the write.
    """
    s, t = SOURCE_ALIAS, TARGET_ALIAS
    predicate = match_predicate(spec)
    updates = {name: f"coalesce({s}.{name}, {t}.{name})" for name in spec.value_columns}
    if has_trace_column(spec):
        updates["trace_id"] = f"CASE WHEN {s}.{NEWEST} THEN {s}.trace_id ELSE {t}.trace_id END"
    updates["event_time"] = f"CASE WHEN {s}.event_time > {t}.event_time THEN {s}.event_time ELSE {t}.event_time END"
    updates["updated_at"] = f"{s}.updated_at"
    inserts = {name: f"{s}.{name}" for name in spec.schema.names}
    return MergeExpressions(predicate=predicate, updates=updates, inserts=inserts)


def match_predicate(spec: TableContract) -> str:
    """The MERGE condition of a table and of its clock table: the merge key, and for a table
    with `fixed_event_time` the `event_time` too. The key alone decides the match either way
    (a key has one event time there); the time is what lets delta-rs prune: it turns the
    source's range of every matched column into a file filter, and a hashed key's range is
    everything, while a batch's event times span seconds to minutes of a table's months."""
    columns = [*spec.merge_keys, "event_time"] if spec.fixed_event_time else list(spec.merge_keys)
    return " AND ".join(f"{TARGET_ALIAS}.{name} = {SOURCE_ALIAS}.{name}" for name in columns)


def key_table(spec: TableContract, table: pa.Table) -> pa.Table:
    """The distinct keys of a `combine()`d `table`, with the range of their event times
    (`event_time_min`, `event_time_max`, µs)."""
    keys = list(spec.merge_keys)
    return table.select([*keys, "event_time"]).group_by(keys, use_threads=False).aggregate(
        [("event_time", "min"), ("event_time", "max")]
    )
