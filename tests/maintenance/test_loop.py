"""The maintenance loop on real Delta tables: what it schedules, that a compaction racing a
writer's flush, in either order, loses no row, no commit and no app-transaction version, and that
vacuum brings the disk back to the live files once the retention has passed, and not before."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from prometheus_client import CollectorRegistry

from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.config import KafkaSettings, MaintenanceSettings, load_settings
from kafka_pipeline.delta import DeltaTableWriter, clock_table_uri, table_uri
from kafka_pipeline.errors import ConfigError
from kafka_pipeline.maintenance.loop import MaintenancePolicy, TableMaintainer, run_maintenance, table_labels
from kafka_pipeline.maintenance.operations import disk_bytes
from kafka_pipeline.ops.status import table_statuses
from kafka_pipeline.workers.writer.entity_writer import EntityWriter
from tests.fixtures.tables import P0, batch, content
from tests.fixtures.waiting import until
from tests.fixtures.writer import build_stream, encoded, produce, read_rows, table_contents, wait_committed, writer_settings
from tests.fixtures.writer import reference as reference_tables

SPEC = TABLES["claimx_projects"]


def flush(i: int, keys: range) -> pa.Table:
    """Flush `i`: every key in `keys` gets status s<i>, city c<i> (even flushes only), at hour i,
    after a row of hour i - 1 with county k<i>: the county is older than the row's newest event,
    so every key of every flush has a clock row (a table updated by partial rows)."""
    rows = []
    for n, k in enumerate(keys):
        rows.append(("claimx_projects", {"project_id": f"{k:03d}", "county": f"k{i}"}, i - 1, f"t{i}-{k}-old", i * 100 + 2 * n))
        rows.append(("claimx_projects", {"project_id": f"{k:03d}", "status": f"s{i}", "city": f"c{i}" if i % 2 == 0 else None},
                     i, f"t{i}-{k}", i * 100 + 2 * n + 1))
    return batch(rows)["claimx_projects"]


FLUSHES = [(i, range(i * 3, i * 3 + 3)) for i in range(6)] + [(6, range(0, 2)), (7, range(1, 9, 3)), (8, range(0, 18))]


def last_offset(i: int, keys: range) -> int:
    return i * 100 + 2 * len(keys) - 1


def maintainer(root: str, registry: CollectorRegistry | None = None, **policy: Any) -> TableMaintainer:
    labels = table_labels([SPEC.name], lambda n: table_uri(root, n), lambda n: clock_table_uri(root, n))
    return TableMaintainer(labels, MaintenancePolicy(**{"backoff_base_s": 0.01, **policy}), registry=registry)


def reference(tmp_path: Path, flushes: list[tuple[int, range]] = FLUSHES) -> list[dict[str, Any]]:
    """The table after `flushes`, written without any maintenance."""
    writer = DeltaTableWriter(SPEC, str(tmp_path / "reference"))
    for i, keys in flushes:
        writer.write(flush(i, keys), {P0: last_offset(i, keys)})
    return content(read_rows(str(tmp_path / "reference"), SPEC.name))


class CompactsBeforeItsEntityCommit(DeltaTableWriter):
    """A writer whose entity MERGE runs on a snapshot that a compaction then changes, once."""

    def __init__(self, *args: Any, tables: TableMaintainer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tables = tables
        self.raced = 0

    def _merge_entities(self, *args: Any, **kwargs: Any) -> dict[str, object]:
        if not self.raced:
            self.raced += 1
            state = self.tables.assess(SPEC.name)
            assert state is not None and state.compact
            assert self.tables.compact(state) > 1
        return super()._merge_entities(*args, **kwargs)


def test_a_compaction_racing_a_flush_loses_nothing_in_either_order(tmp_path: Path) -> None:
    root = str(tmp_path / "raced")
    tables = maintainer(root, compact_small_files=2)
    writer = CompactsBeforeItsEntityCommit(SPEC, root, tables=tables, backoff_base_s=0.01)
    *before, (i6, k6), (i7, k7), (i8, k8) = FLUSHES
    for i, keys in before:
        DeltaTableWriter(SPEC, root).write(flush(i, keys), {P0: last_offset(i, keys)})

    # 1. The compaction commits between the writer's snapshot and its entity commit: the
    #    writer's MERGE conflicts and is redone on the compacted snapshot.
    first = writer.write(flush(i6, k6), {P0: last_offset(i6, k6)})
    assert writer.raced == 1 and first.conflicts == 1

    # 2. The writer commits between the compaction's look at the table and its commit: the
    #    compaction conflicts (the flush rewrote files it was packing) and is planned again.
    stale = tables.assess(f"{SPEC.name}/clocks")  # the clock table was not compacted in step 1
    assert stale is not None and stale.compact
    DeltaTableWriter(SPEC, root).write(flush(i7, k7), {P0: last_offset(i7, k7)})
    report_conflicts = tables.metrics.conflicts.labels(stale.label)
    assert tables.compact(stale) > 1
    assert report_conflicts._value.get() == 1  # noqa: SLF001 - the counter's value

    DeltaTableWriter(SPEC, root).write(flush(i8, k8), {P0: last_offset(i8, k8)})
    tables.run_once()
    assert content(read_rows(root, SPEC.name)) == reference(tmp_path)
    for uri in (table_uri(root, SPEC.name), clock_table_uri(root, SPEC.name)):
        table = DeltaTable(uri)
        assert table.transaction_version(P0) == last_offset(i8, k8), uri
        assert len(table.file_uris()) <= 2, uri
        operations = [entry["operation"] for entry in table.history()]
        assert operations.count("MERGE") == len(FLUSHES) and "OPTIMIZE" in operations, uri


def test_the_loop_compacts_by_need_checkpoints_and_cleans_the_log(tmp_path: Path) -> None:
    root = str(tmp_path)
    registry = CollectorRegistry()
    tables = maintainer(root, registry, compact_small_files=5, compact_after_commits=1000, checkpoint_after_commits=4,
                        log_retention_hours=0)
    writer = DeltaTableWriter(SPEC, root)
    for i, keys in FLUSHES[:4]:
        writer.write(flush(i, keys), {P0: last_offset(i, keys)})
    quiet = tables.run_once()
    assert quiet.compacted == {} and not quiet.errors  # 4 small files: below the threshold
    assert quiet.checkpointed == [SPEC.name, f"{SPEC.name}/clocks"]  # 4 commits since table creation
    assert registry.get_sample_value("delta_table_files", {"table": SPEC.name}) == 4

    for i, keys in FLUSHES[4:6]:  # new keys only: each flush adds a file
        writer.write(flush(i, keys), {P0: last_offset(i, keys)})
    busy = tables.run_once()
    assert busy.compacted[SPEC.name] >= 5 and busy.compacted[f"{SPEC.name}/clocks"] >= 5
    assert registry.get_sample_value("delta_compactions_total", {"table": SPEC.name}) == 1
    assert registry.get_sample_value("delta_table_files", {"table": SPEC.name}) == 6  # as assessed, before compacting

    for uri in (table_uri(root, SPEC.name), clock_table_uri(root, SPEC.name)):
        log_dir = Path(uri) / "_delta_log"
        commits = sorted(log_dir.glob("*.json"))
        table = DeltaTable(uri)
        # everything before the last checkpoint is gone; a fresh reader starts from it
        assert list(log_dir.glob("*.checkpoint.parquet")) and len(commits) <= 2, [c.name for c in commits]
        assert table.transaction_version(P0) == last_offset(*FLUSHES[5]), uri
    assert content(read_rows(root, SPEC.name)) == reference(tmp_path, FLUSHES[:6])

    # a table not created yet is skipped; a table with fewer small files than the threshold is left alone
    assert tables.run_once().compacted == {}


async def test_run_maintenance_runs_only_while_owning_and_stops(tmp_path: Path) -> None:
    root = str(tmp_path)
    writer = DeltaTableWriter(SPEC, root)
    for i, keys in FLUSHES[:3]:
        writer.write(flush(i, keys), {P0: last_offset(i, keys)})
    tables = maintainer(root, compact_small_files=2)
    owner = False
    asked: list[bool] = []

    def should_run() -> bool:
        asked.append(owner)
        return owner

    stop = asyncio.Event()
    task = asyncio.create_task(run_maintenance(tables, stop, interval_s=0.05, should_run=should_run))
    await until(lambda: len(asked) >= 3, "the loop to ask three times whether it owns the tables")
    assert len(DeltaTable(table_uri(root, SPEC.name)).file_uris()) == 3  # not the owner: nothing done
    owner = True
    await until(lambda: len(DeltaTable(table_uri(root, SPEC.name)).file_uris()) == 1, "the owner's compaction", timeout_s=10)
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_the_entity_writer_compacts_its_tables_while_it_writes(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    """Maintenance is on by default in the writer; here with thresholds low enough to run at once."""
    stream = build_stream(seed=3, events=120)
    ends = await produce(kafka_settings, encoded(stream))
    settings = writer_settings(kafka_settings, str(tmp_path), f"writer-{uuid.uuid4().hex[:8]}")
    assert settings.maintenance.enabled
    settings.maintenance = MaintenanceSettings(interval_s=0.2, compact_small_files=3, checkpoint_after_commits=5)
    writer = EntityWriter(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    compactions = lambda: sum(  # noqa: E731
        writer.registry.get_sample_value("delta_compactions_total", {"table": label}) or 0
        for name in TABLES for label in (name, f"{name}/clocks"))
    try:
        await wait_committed(kafka_settings, settings.writer.group_id, ends)
        for _ in range(150):
            if compactions() >= 2:
                break
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    assert compactions() >= 2 and writer.flushes >= 3
    assert table_contents(str(tmp_path)) == reference_tables(stream)


def data_bytes(uri: str) -> tuple[int, int]:
    """(bytes of the current version's data files, bytes of every data file on disk)."""
    live = sum(action["size_bytes"] for action in pa.table(DeltaTable(uri).get_add_actions(flatten=True)).to_pylist())
    on_disk = sum(path.stat().st_size for path in Path(uri).rglob("*.parquet") if "_delta_log" not in path.parts)
    return live, on_disk


async def test_vacuum_returns_the_disk_to_the_live_files_after_the_retention_and_spares_younger_snapshots(tmp_path: Path) -> None:
    root = str(tmp_path)
    retention_s = 4.0
    registry = CollectorRegistry()
    tables = maintainer(root, registry, compact_small_files=4, vacuum_retention_hours=retention_s / 3600)
    writer = DeltaTableWriter(SPEC, root)
    flushes = FLUSHES[:8]  # six flushes of new keys (a file each), then two that update rows: their MERGEs rewrite files
    for i, keys in flushes:
        writer.write(flush(i, keys), {P0: last_offset(i, keys)})
    uris = {SPEC.name: table_uri(root, SPEC.name), f"{SPEC.name}/clocks": clock_table_uri(root, SPEC.name)}
    reader = DeltaTable(uris[SPEC.name])  # holds the snapshot before the compaction
    snapshot = sorted(reader.to_pyarrow_table().to_pylist(), key=lambda row: row["project_id"])

    first = tables.run_once()
    compacted_at = time.monotonic()
    assert first.compacted[SPEC.name] >= 4 and not first.errors
    for label, uri in uris.items():
        live, on_disk = data_bytes(uri)
        assert on_disk > 2 * live, (label, live, on_disk)  # every flush and the compaction left files behind
    # inside the retention the reader still finds every file of its (now replaced) snapshot
    assert sorted(reader.to_pyarrow_table().to_pylist(), key=lambda row: row["project_id"]) == snapshot

    vacuumed: dict[str, int] = {}

    def vacuumed_both() -> bool:
        for label, deleted in tables.run_once().vacuumed.items():
            vacuumed[label] = vacuumed.get(label, 0) + deleted
        return all(label in vacuumed for label in uris) and time.monotonic() - compacted_at > retention_s

    await until(vacuumed_both, timeout_s=60)
    for label, uri in uris.items():
        live, on_disk = data_bytes(uri)
        assert on_disk <= 2 * live, (label, live, on_disk)
        assert registry.get_sample_value("delta_vacuumed_files_total", {"table": label}) == vacuumed[label] >= first.compacted[label]
        assert registry.get_sample_value("delta_table_bytes", {"table": label}) == live
    assert content(read_rows(root, SPEC.name)) == reference(tmp_path, flushes)  # nothing live was deleted
    assert DeltaTable(uris[SPEC.name]).transaction_version(P0) == last_offset(*flushes[-1])

    # the pass after a vacuum checkpointed: its tombstones are gone, so nothing more, and no commit
    versions = {label: DeltaTable(uri).version() for label, uri in uris.items()}
    tables._vacuum_checked_at.clear()  # look for expired files at once, not a quarter of the retention later
    assert tables.run_once().vacuumed == {}
    assert {label: DeltaTable(uri).version() for label, uri in uris.items()} == versions

    # `kafka-pipeline status` shows the table's bytes: live, and on disk with the log
    settings = load_settings(delta={"tables_root": root})
    status = next(t for t in table_statuses(settings) if t.table == SPEC.name)
    live_total = sum(data_bytes(uri)[0] for uri in uris.values())
    assert status.live_bytes == live_total and status.disk_bytes is not None
    assert status.disk_bytes == disk_bytes(uris[SPEC.name]) + disk_bytes(uris[f"{SPEC.name}/clocks"]) > live_total


def test_a_zero_vacuum_retention_needs_the_single_writer_acknowledgement() -> None:
    with pytest.raises(ConfigError, match="vacuum_retention_hours 0 deletes files") as refused:
        load_settings(maintenance={"vacuum_retention_hours": 0})
    assert "\n" not in str(refused.value) and "single_writer_acknowledged" in str(refused.value)
    acknowledged = load_settings(maintenance={"vacuum_retention_hours": 0}, delta={"single_writer_acknowledged": True})
    assert acknowledged.maintenance.vacuum_retention_hours == 0
    assert load_settings(maintenance={"vacuum_retention_hours": 0.25}).maintenance.vacuum_retention_hours == 0.25
    with pytest.raises(ConfigError, match="greater than or equal to 0"):
        load_settings(maintenance={"vacuum_retention_hours": -1})
