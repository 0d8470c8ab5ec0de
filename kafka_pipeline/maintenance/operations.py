"""Table maintenance: describe, compact (optionally sorted by the merge key), checkpoint, vacuum.

Merges rewrite the files they touch and inserts add small ones; compaction keeps the file count
down so every MERGE scans less, and sorting by the merge key (`z_order` on the key) keeps each
file to a narrow key range, so a MERGE's key-range pruning skips most files. Maintenance commits
are ordinary Delta commits: run next to a live writer, one of the two may see a conflict and
retry (the writer does so by itself).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.fs import DeltaStorageHandler

from kafka_pipeline.delta.table_writer import open_table, table_uri
from kafka_pipeline.maintenance.table_layout import writer_properties

DEFAULT_RETENTION_HOURS = 168  # Delta's default: time travel and slow readers keep working for a week
TARGET_SIZE_PROPERTY = "delta.targetFileSize"
DEFAULT_TARGET_BYTES = 100 * 1024 * 1024  # delta-rs's default target size


@dataclass
class TableDescription:
    uri: str
    version: int
    rows: int
    files: int
    size_bytes: int
    last_commit_at: datetime | None
    last_operation: str | None
    samples: list[dict[str, Any]] = field(default_factory=list)


def describe(uri: str, *, samples: int = 0, storage_options: Mapping[str, str] | None = None) -> TableDescription | None:
    """Version, row count, files, last commit and `samples` rows of the table (None if absent)."""
    table = open_table(uri, storage_options)
    if table is None:
        return None
    actions = pa.table(table.get_add_actions(flatten=True))
    rows = int(pc.sum(actions["num_records"]).as_py() or 0) if actions.num_rows else 0
    size = int(pc.sum(actions["size_bytes"]).as_py() or 0) if actions.num_rows else 0
    history = table.history(1)
    last = history[0] if history else {}
    committed = datetime.fromtimestamp(last["timestamp"] / 1000, tz=UTC) if "timestamp" in last else None
    sample_rows = table.to_pyarrow_dataset().head(samples).to_pylist() if samples and rows else []
    return TableDescription(
        uri=uri,
        version=table.version(),
        rows=rows,
        files=actions.num_rows,
        size_bytes=size,
        last_commit_at=committed,
        last_operation=last.get("operation"),
        samples=sample_rows,
    )


def disk_bytes(uri: str, storage_options: Mapping[str, str] | None = None) -> int:
    """Bytes of everything stored under the table's location: live data files, files removed
    but not vacuumed yet, files no commit names, the log. What the storage bills for the table
    (one listing of its prefix)."""
    storage = pafs.PyFileSystem(DeltaStorageHandler(uri, options=dict(storage_options or {})))
    return sum(info.size or 0 for info in storage.get_file_info(pafs.FileSelector("", recursive=True)) if info.type == pafs.FileType.File)


@dataclass
class CompactionPlan:
    """What a compaction would rewrite: the files below the target size (every file when sorting)."""

    files: int
    size_bytes: int
    sort_by: tuple[str, ...] = ()


@dataclass
class MaintenanceReport:
    uri: str
    compacted: dict[str, Any] | None = None
    checkpoint_version: int | None = None
    vacuumed: list[str] = field(default_factory=list)
    vacuum_dry_run: bool = True
    error: str | None = None
    # dry run: what would be done (nothing was)
    compaction_plan: CompactionPlan | None = None
    checkpoint_plan_version: int | None = None


def maintain(
    uri: str,
    *,
    compact: bool = True,
    sort_by: Sequence[str] = (),
    checkpoint: bool = True,
    vacuum: bool = True,
    retention_hours: int = DEFAULT_RETENTION_HOURS,
    dry_run: bool = True,
    storage_options: Mapping[str, str] | None = None,
) -> MaintenanceReport | None:
    """Compact (or sort by `sort_by`), checkpoint and vacuum one table (None if absent).

    Vacuum deletes files no longer in the table and older than `retention_hours`, whether a
    commit removed them or none ever named them (a failed commit's): it lists the storage,
    which the writer's own vacuum pass does not. With `dry_run` nothing is changed: the report
    holds the plan (files a compaction would rewrite, the version a checkpoint would be written
    at, the files vacuum would delete).
    """
    table = open_table(uri, storage_options)
    if table is None:
        return None
    report = MaintenanceReport(uri=uri, vacuum_dry_run=dry_run)
    if compact and dry_run:
        report.compaction_plan = _compaction_plan(table, sort_by)
    elif compact:
        report.compacted = _compact(table, sort_by)
    if checkpoint and dry_run:
        report.checkpoint_plan_version = table.version()
    elif checkpoint:
        table.update_incremental()
        table.create_checkpoint()
        report.checkpoint_version = table.version()
    if vacuum:
        report.vacuumed = table.vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False, full=True)
    return report


def _compaction_plan(table: DeltaTable, sort_by: Sequence[str]) -> CompactionPlan:
    """`optimize.compact` bin-packs the files below the target size; `z_order` rewrites every file."""
    sizes = pa.table(table.get_add_actions(flatten=True))["size_bytes"].to_pylist()
    if not sort_by:
        target = int(table.metadata().configuration.get(TARGET_SIZE_PROPERTY) or DEFAULT_TARGET_BYTES)
        sizes = [size for size in sizes if size < target]
    return CompactionPlan(len(sizes), sum(sizes), tuple(sort_by))


def _compact(table: DeltaTable, sort_by: Sequence[str]) -> dict[str, Any]:
    if sort_by:
        return table.optimize.z_order(list(sort_by), writer_properties=writer_properties())
    return table.optimize.compact(writer_properties=writer_properties())  # zstd, as the writer writes


def table_row_counts(root: str, names: Sequence[str], storage_options: Mapping[str, str] | None = None) -> dict[str, int]:
    """Rows per existing table under `root` (tables not created yet are left out)."""
    counts: dict[str, int] = {}
    for name in names:
        description = describe(table_uri(root, name), storage_options=storage_options)
        if description is not None:
            counts[name] = description.rows
    return counts
