"""One Delta table (and its clock table): created on first write, merged with app transactions.

`DeltaTableWriter.write(rows, progress)` is the whole write path for one table and one flush:

1. Load both snapshots (entity table first, then clocks) and drop the rows at offsets the table
   already holds: each Delta commit carries `Transaction(app_id, last_offset)` per source
   partition, so `transaction_version(app_id)` says how far that partition got into this table.
2. Fold the rows per key (`merge_rule.combine`), read the clocks of those keys (the clock
   table's rows, and the entity rows that make the others derivable:
   `merge_rule.stored_clocks`), resolve which values win (`merge_rule.resolve`), and MERGE into
   the clock table only what changes there (`merge_rule.clock_changes`): keys with a value
   older than their row's newest event. Rows that come whole from one event need no clock row,
   so most flushes of most tables skip this commit.
3. MERGE the resolved rows into the entity table with `coalesce(source.c, target.c)`.

When there is a clock commit it carries the same app transactions and comes first: if the
process dies between the two commits, the clock table already has the batch and the entity
table does not; on replay the entity table re-applies the batch, whose values tie with the
clocks they set and therefore win, so the tables converge to the same state. A concurrent
commit by another writer makes delta-rs reject ours (`CommitFailedError`); the step is redone
on fresh snapshots after a jittered backoff.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.fs as pa_fs
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.fs import DeltaStorageHandler
from deltalake.schema import Field, PrimitiveType
from deltalake.table import TableMerger

from kafka_pipeline.delta import merge_rule
from kafka_pipeline.delta.merge_rule import APP, OFFSET, TableContract
from kafka_pipeline.delta.storage import CLOCKS_DIR, join_uri, storage_error
from kafka_pipeline.errors import PermanentError, TransientError
from kafka_pipeline.observability.tracing import traced_call
from kafka_pipeline.resilience.backoff import backoff_delay


class TableSchemaError(PermanentError):
    """An existing table's schema is not the contract's: the writer refuses to touch it."""


class CommitConflict(TransientError):
    """Concurrent writers kept winning: the commit was retried and gave up."""


def table_uri(root: str, name: str) -> str:
    return join_uri(root, name)


def clock_table_uri(root: str, name: str) -> str:
    return join_uri(root, CLOCKS_DIR, name)


def open_table(uri: str, storage_options: Mapping[str, str] | None = None) -> DeltaTable | None:
    """The table at `uri`, or None when there is none yet."""
    try:
        return DeltaTable(uri, storage_options=dict(storage_options or {}) or None)
    except TableNotFoundError:
        return None


def read_delta_table(
    uri: str, sort_keys: list[str], storage_options: Mapping[str, str] | None = None, schema: pa.Schema | None = None
) -> pa.Table:
    """A whole table, sorted by `sort_keys`; empty (with `schema`) when it does not exist."""
    table = open_table(uri, storage_options)
    if table is None:
        if schema is None:
            raise TableNotFoundError(f"no Delta table at {uri}")
        return schema.empty_table()
    data = table.to_pyarrow_dataset().to_table()
    return data.sort_by([(key, "ascending") for key in sort_keys])


@dataclass
class TableWriteResult:
    table: str
    rows: int = 0  # rows offered
    skipped: int = 0  # rows at offsets the entity table already held
    keys_changed: int = 0  # keys inserted or updated in the entity table
    commits: int = 0  # Delta commits (entity + clock table)
    conflicts: int = 0  # commits rejected by a concurrent writer and redone
    files_added: int = 0  # data files the commits added (entity + clock table)
    version: int | None = None  # entity table version after the write
    seconds: float = 0.0


@dataclass(frozen=True)
class _ProgressRecord:
    """What every commit of one write records besides its data."""

    offsets: Mapping[str, int]  # app id -> last offset of the flush
    companions: Mapping[str, Mapping[str, int]]  # app id -> app transactions recorded with it
    metadata: Mapping[str, str]  # custom commitInfo fields

    def commit_properties(self, versions: Mapping[str, int | None]) -> CommitProperties:
        """Every partition of the flush (with its companions), but never moving a table's
        recorded offset backwards."""
        transactions = []
        for app, offset in self.offsets.items():
            held = versions.get(app)
            if held is None or offset > held:
                transactions.append(Transaction(app, offset))
                transactions.extend(Transaction(other, version) for other, version in self.companions.get(app, {}).items())
        return CommitProperties(app_transactions=transactions, custom_metadata=dict(self.metadata) or None)


@dataclass
class _Snapshot:
    table: DeltaTable
    versions: dict[str, int | None] = field(default_factory=dict)


class DeltaTableWriter:
    """Merges batches into one entity table and its clock table. Not thread-safe: one flush at
    a time per instance (different tables may be written from different threads)."""

    def __init__(
        self,
        spec: TableContract,
        root: str,
        *,
        storage_options: Mapping[str, str] | None = None,
        writer_properties: WriterProperties | None = None,
        max_conflict_retries: int = 30,
        backoff_base_s: float = 0.05,
        backoff_max_s: float = 2.0,
        streamed_exec: bool = False,
        configuration: Mapping[str, str] | None = None,
        clock_configuration: Mapping[str, str] | None = None,
    ) -> None:
        """`streamed_exec=False` (the default) lets delta-rs derive a pruning predicate from the
        source's key range, so a MERGE only scans and rewrites the files that range overlaps.
        `configuration` / `clock_configuration`: Delta table properties of the entity / clock
        table when this writer creates them (for instance `delta.targetFileSize`; clock rows are
        a tenth of an entity row's size, so their files can be smaller for the same row count).
        The clock table gets `configuration` when `clock_configuration` is not given."""
        self.spec = spec
        self.uri = table_uri(root, spec.name)
        self.clock_uri = clock_table_uri(root, spec.name)
        self.storage_options = dict(storage_options or {})
        self.writer_properties = writer_properties
        self.max_conflict_retries = max_conflict_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.streamed_exec = streamed_exec
        self.configuration = dict(configuration or {})
        self.clock_configuration = dict(self.configuration if clock_configuration is None else clock_configuration)
        self._clock_schema = merge_rule.clock_schema(spec)
        self._expressions = merge_rule.merge_expressions(spec)
        self._table: DeltaTable | None = None
        self._clocks: DeltaTable | None = None

    # -- tables -----------------------------------------------------------------------------

    def ensure(self) -> None:
        """Open both tables (an immutable table has no clock table), creating them with the
        contract's schema when missing."""
        if self._table is None:
            self._table = self._open_or_create(self.uri, self.spec.schema, self.configuration)
        if self._clocks is None and not self.spec.immutable:
            self._clocks = self._open_or_create(self.clock_uri, self._clock_schema, self.clock_configuration)

    def _open_or_create(self, uri: str, schema: pa.Schema, configuration: Mapping[str, str]) -> DeltaTable:
        table = open_table(uri, self.storage_options)
        if table is None:
            try:
                table = DeltaTable.create(
                    uri,
                    schema=schema,
                    storage_options=self.storage_options or None,
                    name=uri.rsplit("/", 1)[-1],
                    configuration=dict(configuration) or None,
                )
            except DeltaError as exc:
                if "already exists" not in str(exc):
                    raise
                table = open_table(uri, self.storage_options)  # another writer created it first
                assert table is not None
        actual = pa.schema(table.schema().to_arrow())
        if merge_rule.BASIS in schema.names and actual.equals(schema.remove(schema.get_field_index(merge_rule.BASIS))):
            # a clock table from before sparse clocks: it gains the column (its rows, all of them
            # committed with their entity rows, read as such: null)
            table.alter.add_columns(Field(merge_rule.BASIS, PrimitiveType("timestamp"), nullable=True))
            table = DeltaTable(uri, storage_options=self.storage_options or None)
            actual = pa.schema(table.schema().to_arrow())
        if not actual.equals(schema):
            raise TableSchemaError(f"{uri}: schema differs from the contract: {_schema_diff(schema, actual)}")
        return table

    def transaction_versions(self, app_ids: list[str]) -> dict[str, int | None]:
        """Per app id the last offset the entity table holds (None: nothing yet); the clock table
        commits only the flushes that change it. Creates nothing."""
        table = open_table(self.uri, self.storage_options)
        return {app: None if table is None else table.transaction_version(app) for app in app_ids}

    def stored_transactions(self, app_ids: list[str]) -> dict[str, dict[str, int | None]]:
        """Per existing table (entity table, clock table) the version of each app id. Creates
        nothing; a table this writer has open is brought up to date instead of opened again."""
        found: dict[str, dict[str, int | None]] = {}
        for uri, held in ((self.uri, self._table), (self.clock_uri, self._clocks)):
            table = held if held is not None else open_table(uri, self.storage_options)
            if table is None:
                continue
            if held is not None:
                table.update_incremental()
            found[uri] = {app: table.transaction_version(app) for app in app_ids}
        return found

    def record_transactions(self, uris: list[str], transactions: Mapping[str, int], metadata: Mapping[str, str]) -> int:
        """Commit `transactions` (app id -> version) to the tables at `uris` (this writer's entity
        and/or clock table) in a commit that changes no data. Returns the commits made."""
        commits = 0
        for uri in uris:
            table = open_table(uri, self.storage_options)
            if table is None:
                continue
            table.create_write_transaction(
                [],
                mode="append",
                schema=table.schema(),
                commit_properties=CommitProperties(
                    app_transactions=[Transaction(app, version) for app, version in transactions.items()],
                    custom_metadata=dict(metadata),
                ),
            )
            commits += 1
        self._table = self._clocks = None  # open again on the next write, at the new version
        return commits

    # -- writing ----------------------------------------------------------------------------

    @traced_call("delta.write", result_prefix="delta")  # a span per table write, child of the writer's flush span
    def write(
        self,
        rows: pa.Table,
        progress: Mapping[str, int],
        now: datetime | None = None,
        *,
        companions: Mapping[str, Mapping[str, int]] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> TableWriteResult:
        """Merge `rows` (columns of `merge_rule.input_schema`) and record `progress`
        (app id -> last offset of the flush) in both tables' commits. `companions[app]`: more app
        transactions recorded exactly when `app`'s offset is (the log it was read from, a
        fingerprint of its record); `metadata`: custom commit metadata (Delta commitInfo)."""
        started = time.monotonic()
        now = now or datetime.now(UTC)
        result = TableWriteResult(self.spec.name, rows=rows.num_rows)
        record = _ProgressRecord(progress, companions or {}, dict(metadata or {}))
        try:
            self._write_retrying(rows, record, now, result)
        except (OSError, DeltaError) as exc:
            if isinstance(exc, FileNotFoundError):
                # the snapshot names a log or data file the store no longer has: the next
                # attempt opens both tables afresh (an unreachable store keeps them)
                self._table = self._clocks = None
            # The store is down or refuses the credentials: one clear line instead of delta-rs's
            # multi-line chain (the caller keeps the batch and retries).
            plain = storage_error(exc, self.uri)
            if plain is None:
                raise
            raise plain from exc
        assert self._table is not None
        result.version = self._table.version()
        result.seconds = time.monotonic() - started
        return result

    def _write_retrying(self, rows: pa.Table, progress: _ProgressRecord, now: datetime, result: TableWriteResult) -> None:
        self.ensure()
        write_once = self._insert_absent if self.spec.immutable else self._write_once
        attempt = 0
        while True:
            try:
                write_once(rows, progress, now, result)
                break
            except CommitFailedError as exc:
                attempt += 1
                result.conflicts += 1
                if attempt > self.max_conflict_retries:
                    raise CommitConflict(f"{self.spec.name}: gave up after {attempt} conflicting commits: {exc}") from exc
                time.sleep(backoff_delay(attempt, self.backoff_base_s, self.backoff_max_s))

    def _write_once(self, rows: pa.Table, progress: _ProgressRecord, now: datetime, result: TableWriteResult) -> None:
        assert self._table is not None and self._clocks is not None
        apps = list(progress.offsets)
        # Entity snapshot before clock snapshot: a concurrent writer commits clocks first, so any
        # entity change we can see has its clocks visible to the read below.
        main = self._snapshot(self._table, apps)
        clocks = self._snapshot(self._clocks, apps)
        fresh = _unwritten(rows, main.versions)
        result.skipped = rows.num_rows - fresh.num_rows
        if fresh.num_rows == 0:
            return
        combined = merge_rule.combine(self.spec, fresh)
        held, stored = self._stored_clocks(main.table, clocks.table, merge_rule.key_table(self.spec, combined))
        resolution = merge_rule.resolve(self.spec, combined, stored, now)
        if resolution.source.num_rows == 0:
            return
        changes = merge_rule.clock_changes(self.spec, resolution.clock_rows, held)
        if changes.num_rows:
            result.files_added += _files_added(self._merge_clocks(clocks, changes, progress))
            result.commits += 1
        metrics = self._merge_entities(main, resolution.source, progress)
        result.commits += 1
        result.files_added += _files_added(metrics)
        result.keys_changed = int(metrics.get("num_target_rows_inserted", 0)) + int(metrics.get("num_target_rows_updated", 0))  # type: ignore[call-overload]

    def _insert_absent(self, rows: pa.Table, progress: _ProgressRecord, now: datetime, result: TableWriteResult) -> None:
        """An immutable table: the rows of keys it does not hold yet are inserted, in one commit.
        (The merge rule gives the same table: a held key's row is this very row.)"""
        assert self._table is not None
        main = self._snapshot(self._table, list(progress.offsets))
        fresh = _unwritten(rows, main.versions)
        result.skipped = rows.num_rows - fresh.num_rows
        if fresh.num_rows == 0:
            return
        # one row per key, with the columns an insert takes (no key has clocks: all of it is new)
        source = merge_rule.resolve(self.spec, merge_rule.combine(self.spec, fresh), None, now).source
        metrics = self._merger(main, source, progress).when_not_matched_insert(self._expressions.inserts).execute()
        result.commits += 1
        result.files_added += _files_added(metrics)
        result.keys_changed = int(str(metrics.get("num_target_rows_inserted", 0)))

    def _merge_clocks(self, clocks: _Snapshot, changes: pa.Table, progress: _ProgressRecord) -> dict[str, object]:
        """`merge_rule.clock_changes`: a key whose clocks became derivable is deleted, any other
        is upserted."""
        s, trivial = merge_rule.SOURCE_ALIAS, merge_rule.TRIVIAL
        names = self._clock_schema.names
        updates = {name: f"{s}.{name}" for name in names if name not in self.spec.merge_keys}
        inserts = {name: f"{s}.{name}" for name in names}
        merger = self._merger(clocks, changes, progress).when_matched_delete(predicate=f"{s}.{trivial}")
        return merger.when_matched_update(updates).when_not_matched_insert(inserts, predicate=f"NOT {s}.{trivial}").execute()

    def _merge_entities(self, main: _Snapshot, source: pa.Table, progress: _ProgressRecord) -> dict[str, object]:
        expressions = self._expressions
        merger = self._merger(main, source, progress, expressions.predicate)
        return merger.when_matched_update(expressions.updates).when_not_matched_insert(expressions.inserts).execute()

    def _merger(self, snapshot: _Snapshot, source: pa.Table, progress: _ProgressRecord, predicate: str | None = None) -> TableMerger:
        """A MERGE of `source` into the snapshot's table (matched on the key, and for an event
        log on its time), committing `progress` (its clauses are the caller's)."""
        return snapshot.table.merge(
            source,
            predicate or merge_rule.match_predicate(self.spec),
            source_alias=merge_rule.SOURCE_ALIAS,
            target_alias=merge_rule.TARGET_ALIAS,
            streamed_exec=self.streamed_exec,
            writer_properties=self.writer_properties,
            commit_properties=progress.commit_properties(snapshot.versions),
        )

    def _snapshot(self, table: DeltaTable, apps: list[str]) -> _Snapshot:
        table.update_incremental()
        return _Snapshot(table, {app: table.transaction_version(app) for app in apps})

    def _stored_clocks(self, table: DeltaTable, clocks: DeltaTable, keys: pa.Table) -> tuple[pa.Table, pa.Table]:
        """The clock rows the clock table holds for `keys` (`merge_rule.key_table`), and the
        clocks of every such key the tables hold (`merge_rule.stored_clocks`): read from the
        clock table where it has a row, derived from the entity row where it has none."""
        held = self._read_keys(clocks, self._clock_schema, keys)
        entity = self._read_keys(table, self.spec.schema, keys, columns=[*self.spec.merge_keys, "event_time", *self.spec.value_columns])
        return held, merge_rule.stored_clocks(self.spec, entity, held)

    def _read_keys(self, table: DeltaTable, schema: pa.Schema, keys: pa.Table, columns: list[str] | None = None) -> pa.Table:
        """The rows of `keys` (`merge_rule.key_table`: merge-key columns, event time range) in
        `table`, with `columns` (default: all of `schema`).

        Only files that can hold the keys are read: pruned by the first key column's min/max in
        the Delta log and, for a table with `fixed_event_time`, by the keys' event time range
        (a hashed key prunes nothing; a batch's event times prune all but the newest files).
        The key match itself is a join in Arrow. (Two things avoided on purpose:
        `to_pyarrow_dataset` turns every statistic of every file into a pyarrow expression, and
        a pyarrow filter is pushed into the scan, where delta-rs-written files carry
        `string_view` columns that pyarrow will not compare with the dataset's `string`.)
        """
        names = columns or schema.names
        empty = pa.schema([schema.field(name) for name in names]).empty_table()
        if keys.num_rows == 0:
            return empty
        actions = pa.table(table.get_add_actions(flatten=True))
        if actions.num_rows == 0:
            return empty
        key_names = list(self.spec.merge_keys)
        first = keys[key_names[0]]
        ranges = [(key_names[0], pc.min(first), pc.max(first))]
        if self.spec.fixed_event_time:
            # the log's timestamp statistics are truncated to milliseconds: a file's true max
            # may lie up to 1 ms above its recorded one
            low = pc.cast(pc.subtract(pc.min(keys["event_time_min"]), pa.scalar(1000, pa.int64())), merge_rule.TIMESTAMP)
            high = pc.cast(pc.max(keys["event_time_max"]), merge_rule.TIMESTAMP)
            ranges.append(("event_time", low, high))
        for column, low, high in ranges:
            min_col, max_col = f"min.{column}", f"max.{column}"
            if min_col in actions.column_names and max_col in actions.column_names:
                overlaps = pc.and_(pc.greater_equal(actions[max_col], low), pc.less_equal(actions[min_col], high))
                actions = actions.filter(pc.fill_null(overlaps, True))  # no stats: read the file
        if actions.num_rows == 0:
            return empty
        paths = actions["path"].to_pylist()
        sizes = dict(zip(paths, actions["size_bytes"].to_pylist(), strict=True))
        filesystem = pa_fs.PyFileSystem(DeltaStorageHandler(table.table_uri, self.storage_options or None, sizes))
        dataset = pds.dataset(paths, schema=schema, format="parquet", filesystem=filesystem)
        candidates = dataset.to_table(columns=names)
        wanted = pc.is_in(merge_rule.key_text(self.spec, candidates), value_set=merge_rule.key_text(self.spec, keys))
        return candidates.filter(wanted)


def _files_added(merge_metrics: Mapping[str, object]) -> int:
    return int(str(merge_metrics.get("num_target_files_added", 0)))


def _unwritten(rows: pa.Table, versions: Mapping[str, int | None]) -> pa.Table:
    """The rows at offsets past what the table recorded for their partition."""
    keep = None
    for app, version in versions.items():
        if version is None:
            continue
        already = pc.and_(pc.equal(rows[APP], pa.scalar(app, pa.string())), pc.less_equal(rows[OFFSET], pa.scalar(version, pa.int64())))
        keep = pc.invert(already) if keep is None else pc.and_(keep, pc.invert(already))
    return rows if keep is None else rows.filter(keep)


def _schema_diff(expected: pa.Schema, actual: pa.Schema) -> str:
    for field_ in expected:
        if field_.name not in actual.names:
            return f"column {field_.name} missing"
        other = actual.field(field_.name)
        if not other.type.equals(field_.type):
            return f"column {field_.name} is {other.type}, expected {field_.type}"
        if other.nullable != field_.nullable:
            return f"column {field_.name} nullable={other.nullable}, expected {field_.nullable}"
    extra = [name for name in actual.names if name not in expected.names]
    if extra:
        return f"unexpected columns {', '.join(extra)}"
    return "column order differs"
