"""DeltaTableWriter on real Delta tables: creation with the contract's schema, app transactions,
crash recovery between the two commits, concurrent writers, maintenance, the table commands."""

from __future__ import annotations

import re
import threading
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from kafka_pipeline.claimx.schemas import TABLES, TableSpec
from kafka_pipeline.cli import main
from kafka_pipeline.delta import DeltaTableWriter, TableSchemaError, clock_table_uri, merge_rule, table_uri
from kafka_pipeline.maintenance.operations import describe, maintain
from kafka_pipeline.workers.writer.entity_writer import read_table
from tests.fixtures.tables import P0, P1, T0, batch, content
from tests.fixtures.writer import read_rows


def sample_value(name: str, type_: pa.DataType, n: int) -> Any:
    if pa.types.is_string(type_):
        return n if name.endswith("_id") else f"{name}-{n}"  # ids as JSON numbers: stored as text
    if pa.types.is_int64(type_):
        return 1990 + n
    if pa.types.is_float64(type_):
        return n + 0.25
    if pa.types.is_boolean(type_):
        return n % 2 == 0
    if pa.types.is_timestamp(type_):
        return f"2024-02-0{1 + n % 9}T10:00:00+02:00"
    if pa.types.is_date32(type_):
        return f"2024-02-0{1 + n % 9}"
    raise AssertionError(type_)


def full_row(spec: TableSpec, n: int) -> dict[str, Any]:
    return {name: sample_value(name, type_, n) for name, type_ in spec.columns if name != "trace_id"}




def merge_rows(*parts: dict[str, pa.Table]) -> dict[str, pa.Table]:
    out: dict[str, list[pa.Table]] = {}
    for part in parts:
        for name, table in part.items():
            out.setdefault(name, []).append(table)
    return {name: pa.concat_tables(tables) for name, tables in out.items()}




def test_every_table_is_created_with_the_contract_schema_and_types(tmp_path) -> None:
    root = str(tmp_path)
    rows = [(name, full_row(spec, 1), 0, f"trace-{name}", i) for i, (name, spec) in enumerate(TABLES.items())]
    progress = {P0: len(rows) - 1}
    for name, table in batch(rows).items():
        DeltaTableWriter(TABLES[name], root).write(table, progress)
    for name, spec in TABLES.items():
        assert pa.schema(DeltaTable(table_uri(root, name)).schema().to_arrow()) == spec.schema, name
        data = read_table(root, name)
        assert data.schema == spec.schema, name
        [row] = data.to_pylist()
        for column, type_ in spec.columns:
            if pa.types.is_timestamp(type_):
                assert row[column] == datetime(2024, 2, 2, 8, tzinfo=UTC), column  # +02:00 -> UTC
            elif pa.types.is_date32(type_):
                assert row[column] == date(2024, 2, 2)
            elif column != "trace_id":
                expected = sample_value(column, type_, 1)
                assert row[column] == (str(expected) if pa.types.is_string(type_) else expected), column
        assert row["event_time"] == T0 and row["created_at"] == row["updated_at"]


def test_app_transactions_record_each_partition_and_replays_are_skipped(tmp_path) -> None:
    root = str(tmp_path)
    projects = DeltaTableWriter(TABLES["claimx_projects"], root)
    media = DeltaTableWriter(TABLES["claimx_media"], root)
    first = merge_rows(
        batch([("claimx_projects", {"project_id": "1", "status": "open"}, 1, "a", 9),
               ("claimx_media", {"media_id": "m1", "project_id": "1"}, 1, "a", 10)], app=P0),
        batch([("claimx_projects", {"project_id": "2", "status": "new"}, 1, "b", 20)], app=P1),
    )
    progress = {P0: 10, P1: 20}
    # rows that come whole from one event: no clock rows, one commit each
    assert projects.write(first["claimx_projects"], progress).commits == 1
    assert media.write(first["claimx_media"], progress).commits == 1
    for uri in (projects.uri, media.uri):
        table = DeltaTable(uri)
        # every partition of the flush, also in media, which got no rows from partition 1
        assert (table.transaction_version(P0), table.transaction_version(P1)) == (10, 20), uri
    assert DeltaTable(projects.uri).version() == 1
    assert not DeltaTable.is_deltatable(table_uri(root, "claimx_tasks"))  # no rows, no table, no commit

    # The same flush again (a crash after the Delta commits, before the Kafka commit): nothing written.
    again = projects.write(first["claimx_projects"], progress)
    assert (again.skipped, again.commits, DeltaTable(projects.uri).version()) == (2, 0, 1)

    # A flush overlapping what the table holds: only the offsets past it are written, and the
    # recorded offset of partition 1 never goes backwards.
    overlap = batch([("claimx_projects", {"project_id": "1", "city": "Old"}, 0, "c", 9),
                     ("claimx_projects", {"project_id": "1", "city": "New"}, 2, "d", 11)], app=P0)
    result = projects.write(overlap["claimx_projects"], {P0: 11, P1: 15})
    assert (result.skipped, result.keys_changed) == (1, 1)
    table = DeltaTable(projects.uri)
    assert (table.transaction_version(P0), table.transaction_version(P1)) == (11, 20)
    assert {r["project_id"]: r["city"] for r in read_rows(root, "claimx_projects")} == {"1": "New", "2": None}
    assert projects.transaction_versions([P0, P1, "other"]) == {P0: 11, P1: 20, "other": None}


class CrashBeforeEntityCommit(DeltaTableWriter):
    """Dies right after the clock table's commit, like a SIGKILL between the two commits."""

    def _merge_entities(self, *args: Any, **kwargs: Any) -> dict[str, object]:
        raise SystemExit("killed")


def test_a_crash_between_the_two_commits_converges(tmp_path) -> None:
    spec = TABLES["claimx_projects"]
    b1 = batch([("claimx_projects", {"project_id": "1", "status": "open", "city": "A"}, 1, "t1", 0)])["claimx_projects"]
    b2 = batch([("claimx_projects", {"project_id": "1", "status": None, "city": "B"}, 3, "t3", 1),
                ("claimx_projects", {"project_id": "2", "status": "x"}, 1, "t4", 2)])["claimx_projects"]
    b3 = batch([("claimx_projects", {"project_id": "1", "status": "closed"}, 2, "t2", 3)])["claimx_projects"]

    clean = DeltaTableWriter(spec, str(tmp_path / "clean"))
    for b, last in ((b1, 0), (b2, 2), (b3, 3)):
        clean.write(b, {P0: last})

    crashed_root = str(tmp_path / "crashed")
    DeltaTableWriter(spec, crashed_root).write(b1, {P0: 0})
    with pytest.raises(SystemExit):
        CrashBeforeEntityCommit(spec, crashed_root).write(b2, {P0: 2})
    assert DeltaTable(clock_table_uri(crashed_root, spec.name)).transaction_version(P0) == 2
    assert DeltaTable(table_uri(crashed_root, spec.name)).transaction_version(P0) == 0
    # Restarted: the re-read batch now also holds b3 (flush boundaries differ after a restart).
    restarted = DeltaTableWriter(spec, crashed_root)
    result = restarted.write(pa.concat_tables([b2, b3]), {P0: 3})
    assert result.skipped == 0  # the entity table had none of b2
    assert content(read_rows(crashed_root, spec.name)) == content(read_rows(str(tmp_path / "clean"), spec.name))
    [p1, _] = read_rows(crashed_root, spec.name)
    assert (p1["status"], p1["city"], p1["trace_id"]) == ("closed", "B", "t3")


def test_a_crash_keeps_the_older_clocks_a_replayed_batch_was_resolved_against(tmp_path) -> None:
    """The clock row committed before a crash describes the entity row as it still is (its
    basis): the replay resolves against it, not against clocks derived from the entity row,
    which would date `status` at hour 5 and let it refuse the hour-3 value."""
    spec = TABLES["claimx_projects"]
    b1 = batch([("claimx_projects", {"project_id": "1", "status": "open", "city": "A"}, 1, "t1", 0)])["claimx_projects"]
    b2 = batch([("claimx_projects", {"project_id": "1", "status": None, "city": "B"}, 5, "t5", 1)])["claimx_projects"]
    b3 = batch([("claimx_projects", {"project_id": "1", "city": "C"}, 7, "t7", 2)])["claimx_projects"]
    b4 = batch([("claimx_projects", {"project_id": "1", "status": "closed"}, 3, "t3", 3)])["claimx_projects"]
    clean = DeltaTableWriter(spec, str(tmp_path / "clean"))
    for b, last in ((b1, 0), (b2, 1), (b3, 2), (b4, 3)):
        clean.write(b, {P0: last})
    crashed_root = str(tmp_path / "crashed")
    writer = DeltaTableWriter(spec, crashed_root)
    writer.write(b1, {P0: 0})
    writer.write(b2, {P0: 1})
    with pytest.raises(SystemExit):
        CrashBeforeEntityCommit(spec, crashed_root).write(b3, {P0: 2})
    DeltaTableWriter(spec, crashed_root).write(pa.concat_tables([b3, b4]), {P0: 3})
    [row] = read_rows(crashed_root, spec.name)
    assert (row["status"], row["city"], row["trace_id"]) == ("closed", "C", "t7")
    assert content(read_rows(crashed_root, spec.name)) == content(read_rows(str(tmp_path / "clean"), spec.name))


def test_rows_fetched_whole_need_no_clock_rows_and_a_single_commit(tmp_path) -> None:
    """A key whose every value came with its newest event has no clock row: full task rows are
    one commit per flush and leave the clock table empty; a newer row without a value the key
    holds adds a clock row, and the next whole row removes it again."""
    spec = TABLES["claimx_tasks"]
    root = str(tmp_path)
    tasks = DeltaTableWriter(spec, root)
    whole = {"status": "ASSIGNED", "task_name": "Roof", "project_id": "p1"}

    def clock_rows() -> list[dict[str, Any]]:
        return DeltaTable(clock_table_uri(root, spec.name)).to_pyarrow_table().to_pylist()

    first = tasks.write(batch([("claimx_tasks", {"assignment_id": f"a{n}", **whole}, 1, f"t{n}", n) for n in range(3)])["claimx_tasks"], {P0: 2})
    again = tasks.write(batch([("claimx_tasks", {"assignment_id": "a1", **whole, "status": "COMPLETED"}, 2, "t3", 3)])["claimx_tasks"], {P0: 3})
    assert (first.commits, first.keys_changed, again.commits, again.keys_changed) == (1, 3, 1, 1)
    assert clock_rows() == []
    partial = tasks.write(batch([("claimx_tasks", {"assignment_id": "a1", "status": "CANCELLED"}, 3, "t4", 4)])["claimx_tasks"], {P0: 4})
    assert partial.commits == 2
    [clock] = clock_rows()
    assert (clock["assignment_id"], clock["task_name"], clock["status"]) == ("a1", T0 + timedelta(hours=2), None)
    # an older row fills nothing and loses `status`; a whole newer row makes the clock row go
    older = tasks.write(batch([("claimx_tasks", {"assignment_id": "a1", "status": "IN_PROGRESS", "task_name": "Old"}, 0, "t5", 5)])["claimx_tasks"], {P0: 5})
    assert older.commits == 0
    tasks.write(batch([("claimx_tasks", {"assignment_id": "a1", **whole, "task_name": "Roof 2"}, 4, "t6", 6)])["claimx_tasks"], {P0: 6})
    assert clock_rows() == []
    rows = {row["assignment_id"]: row for row in read_rows(root, spec.name)}
    assert (rows["a1"]["status"], rows["a1"]["task_name"], rows["a1"]["trace_id"]) == ("ASSIGNED", "Roof 2", "t6")
    assert DeltaTable(table_uri(root, spec.name)).transaction_version(P0) == 6


def test_a_clock_table_from_before_sparse_clocks_gains_its_column(tmp_path) -> None:
    """A clock table written by an older version (a row for every key, no `resolved_against`)
    is upgraded in place and its rows still count."""
    spec = TABLES["claimx_projects"]
    root = str(tmp_path)
    b1 = batch([("claimx_projects", {"project_id": "1", "status": "open", "city": "A"}, 1, "t1", 0)])["claimx_projects"]
    b2 = batch([("claimx_projects", {"project_id": "1", "city": "B"}, 5, "t5", 1)])["claimx_projects"]
    DeltaTableWriter(spec, root).write(pa.concat_tables([b1, b2]), {P0: 1})
    clocks = DeltaTable(clock_table_uri(root, spec.name)).to_pyarrow_table()
    legacy = clocks.drop_columns([merge_rule.BASIS])
    legacy_root = str(tmp_path / "legacy")
    write_deltalake(table_uri(legacy_root, spec.name), read_table(root, spec.name))
    write_deltalake(clock_table_uri(legacy_root, spec.name), legacy)
    DeltaTableWriter(spec, legacy_root).write(
        batch([("claimx_projects", {"project_id": "1", "status": "closed"}, 3, "t3", 2)])["claimx_projects"], {P0: 2})
    assert DeltaTable(clock_table_uri(legacy_root, spec.name)).schema().to_arrow().names[-1] == merge_rule.BASIS
    [row] = read_rows(legacy_root, spec.name)
    assert (row["status"], row["city"], row["trace_id"]) == ("closed", "B", "t5")  # status dated hour 1 by the legacy row


class LosesItsFirstStore(DeltaTableWriter):
    """Its first MERGE finds a file of its snapshot gone (as when a log cleanup or a vacuum
    raced it)."""

    failed = False

    def _merge_entities(self, *args: Any, **kwargs: Any) -> dict[str, object]:
        if not self.failed:
            self.failed = True
            raise FileNotFoundError("Object at location _delta_log/00000000000000000001.json not found")
        return super()._merge_entities(*args, **kwargs)


def test_a_failed_write_opens_the_tables_again(tmp_path) -> None:
    spec = TABLES["claimx_tasks"]
    writer = LosesItsFirstStore(spec, str(tmp_path))
    rows = batch([("claimx_tasks", {"assignment_id": "a1", "status": "ASSIGNED"}, 1, "t1", 0)])["claimx_tasks"]
    with pytest.raises(OSError):
        writer.write(rows, {P0: 0})
    assert writer._table is None  # noqa: SLF001 - the stale snapshot is dropped
    assert writer.write(rows, {P0: 0}).keys_changed == 1
    assert [row["assignment_id"] for row in read_rows(str(tmp_path), spec.name)] == ["a1"]


def test_concurrent_writers_retry_conflicts_and_lose_nothing(tmp_path) -> None:
    """Two writers (two consumers owning different partitions) merge the same keys at once."""
    root = str(tmp_path)
    spec = TABLES["claimx_task_templates"]  # task templates are shared by projects in any partition
    rounds = 6
    gate = threading.Barrier(2)
    results: dict[str, list[Any]] = {P0: [], P1: []}

    def run(app: str, parity: int) -> None:
        writer = DeltaTableWriter(spec, root, backoff_base_s=0.01, backoff_max_s=0.2)
        for i in range(rounds):
            hour = 2 * i + parity  # unique event time per row, interleaved between the writers
            rows = [("claimx_task_templates", {"task_id": f"T{k}", "name": f"{app}-{i}", "comp_id": None if parity else f"c{i}"},
                     hour, f"{app}-{i}", i) for k in range(3)]
            gate.wait()
            results[app].append(writer.write(batch(rows, app=app)["claimx_task_templates"], {app: i}))

    threads = [threading.Thread(target=run, args=(app, parity)) for parity, app in enumerate((P0, P1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rows = read_rows(root, spec.name)
    assert [r["task_id"] for r in rows] == ["T0", "T1", "T2"]
    last = rounds - 1
    for row in rows:
        # newest row overall is P1's last (odd hour); comp_id only ever came from P0's rows
        assert (row["name"], row["comp_id"], row["trace_id"]) == (f"{P1}-{last}", f"c{last}", f"{P1}-{last}")
    table = DeltaTable(table_uri(root, spec.name))
    assert (table.transaction_version(P0), table.transaction_version(P1)) == (last, last)
    assert sum(r.conflicts for rs in results.values() for r in rs) > 0  # the barrier makes them collide


def test_an_existing_table_with_another_schema_is_refused(tmp_path) -> None:
    root = str(tmp_path)
    write_deltalake(table_uri(root, "claimx_media"), pa.table({"media_id": ["m1"], "latitude": ["not a float"]}))
    writer = DeltaTableWriter(TABLES["claimx_media"], root)
    rows = batch([("claimx_media", {"media_id": "m2", "latitude": 1.5}, 0, "t", 0)])["claimx_media"]
    with pytest.raises(TableSchemaError, match="claimx_media"):
        writer.write(rows, {P0: 0})
    assert DeltaTable(table_uri(root, "claimx_media")).version() == 0  # untouched


def write_some(root: str, flushes: int = 4) -> DeltaTableWriter:
    writer = DeltaTableWriter(TABLES["claimx_projects"], root)
    for i in range(flushes):
        rows = [("claimx_projects", {"project_id": f"{i * 5 + k:03d}", "status": f"s{i}"}, i, f"t{i}", i * 10 + k) for k in range(5)]
        writer.write(batch(rows)["claimx_projects"], {P0: i * 10 + 4})
    return writer


def test_maintenance_compacts_checkpoints_and_vacuums_without_losing_progress(tmp_path) -> None:
    root = str(tmp_path)
    writer = write_some(root)
    before = read_rows(root, "claimx_projects")
    info = describe(writer.uri, samples=2)
    assert info is not None
    assert (info.rows, info.files, info.version, info.last_operation, len(info.samples)) == (20, 4, 4, "MERGE", 2)

    dry = maintain(writer.uri, retention_hours=0, dry_run=True)  # a plan: nothing is changed
    assert dry is not None and dry.compacted is None and dry.checkpoint_version is None and dry.vacuum_dry_run
    assert dry.compaction_plan is not None and dry.compaction_plan.files == 4 and dry.checkpoint_plan_version == 4
    parquet_files = lambda: len(list((tmp_path / "claimx_projects").glob("*.parquet")))  # noqa: E731
    assert parquet_files() == 4 and DeltaTable(writer.uri).version() == 4
    applied = maintain(writer.uri, retention_hours=0, dry_run=False)
    assert applied is not None and applied.compacted is not None and applied.compacted["numFilesRemoved"] == 4
    assert applied.checkpoint_version == 5 and len(applied.vacuumed) == 4 and parquet_files() == 1
    assert read_rows(root, "claimx_projects") == before
    fresh = DeltaTable(writer.uri)  # loads from the checkpoint
    assert fresh.transaction_version(P0) == 34
    assert len(fresh.file_uris()) == 1
    # writing on after maintenance still skips what is written
    result = DeltaTableWriter(TABLES["claimx_projects"], root).write(
        batch([("claimx_projects", {"project_id": "000", "status": "late"}, 9, "x", 30)])["claimx_projects"], {P0: 30}
    )
    assert result.skipped == 1 and result.commits == 0
    assert maintain(table_uri(root, "claimx_tasks")) is None  # not created yet


def test_tables_and_maintain_commands(tmp_path, capsys) -> None:
    root = str(tmp_path)
    write_some(root, flushes=2)
    assert main(["tables", "--tables-root", root, "--samples", "1"]) == 0
    out = capsys.readouterr().out
    assert "claimx_projects: version 2, 10 rows, 2 files" in out and re.search(r"\(MERGE, \d+s ago\)", out), out  # freshness
    assert "merge clocks: version 0, 0 rows, 0 files" in out, out  # every value came with its row's newest event
    assert "claimx_media: not created yet" in out
    assert '"project_id": ' in out  # a sample row
    assert main(["tables", "--tables-root", root]) == 0
    assert '"project_id"' not in capsys.readouterr().out  # counts only: samples need --samples N

    assert main(["maintain", "--tables-root", root, "--table", "claimx_projects"]) == 0  # no --apply: a plan per table
    out = capsys.readouterr().out
    assert "claimx_projects (plan): would compact 2 files below the target size" in out and "would checkpoint at version 2" in out
    assert "vacuum would delete 0 files" in out and "claimx_projects (merge clocks) (plan): nothing to compact" in out, out
    assert out.rstrip().endswith("dry run: nothing changed; add --apply to do it")
    assert DeltaTable(table_uri(root, "claimx_projects")).version() == 2  # nothing committed

    assert main(["maintain", "--tables-root", root, "--table", "claimx_projects", "--apply"]) == 0
    out = capsys.readouterr().out
    assert "claimx_projects: compacted 2 files into 1, checkpoint at version 3, vacuum deleted 0 files" in out

    assert main(["maintain", "--tables-root", root, "--table", "claimx_projects", "--retention-hours", "0", "--apply",
                 "--skip-compact", "--skip-checkpoint"]) == 0
    assert "vacuum deleted" in capsys.readouterr().out

    assert main(["maintain", "--retention-hours", "-1"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    with pytest.raises(SystemExit) as exit_:
        main(["tables", "--table", "claimx_nope"])
    assert exit_.value.code == 2
    assert main(["tables", "--samples", "-2"]) == 2
    assert "--samples" in capsys.readouterr().err


def test_an_immutable_table_is_insert_if_absent_in_one_commit_without_clocks(tmp_path) -> None:
    """claimx_events: a key's row is the event's own fields, so the merge rule is insert-if-absent:
    one commit per flush, no clock table; a replayed or redelivered row changes nothing."""
    spec = TABLES["claimx_events"]
    assert spec.immutable and not any(s.immutable for name, s in TABLES.items() if name != "claimx_events")
    root = str(tmp_path)
    events = DeltaTableWriter(spec, root)
    first = batch([("claimx_events", full_row(spec, n), n, f"trace-{n}", n) for n in range(4)])["claimx_events"]
    result = events.write(first, {P0: 3})
    assert (result.commits, result.keys_changed) == (1, 4)
    assert DeltaTable(table_uri(root, "claimx_events")).version() == 1  # created, then one MERGE
    with pytest.raises(Exception):  # noqa: B017 - no clock table was ever created
        DeltaTable(clock_table_uri(root, "claimx_events"))
    again = batch([("claimx_events", full_row(spec, n), n, f"trace-{n}", 4 + i) for i, n in enumerate((2, 3, 4))])["claimx_events"]
    result = events.write(again, {P0: 6})
    assert (result.commits, result.keys_changed) == (1, 1)  # trace-4 only: trace-2 and trace-3 are held
    stored = read_rows(root, "claimx_events")
    assert [row["trace_id"] for row in stored] == [f"trace-{n}" for n in range(5)]
    assert all(row["created_at"] == row["updated_at"] for row in stored)
    assert events.write(again, {P0: 6}).commits == 0  # offsets already held: skipped whole
    assert events.transaction_versions([P0]) == {P0: 6}
