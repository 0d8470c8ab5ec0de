"""Maintenance that runs by itself beside a writer: compaction, vacuum, checkpoints, log cleanup.

Every `interval_s` the loop looks at each table (cheap: the Delta log's file list, already in
memory after an incremental update) and does what the table needs:

- **compact**, in size tiers: the tiers' sizes are the table's `delta.targetFileSize` divided
  by 8, 64, ... (down to `MIN_TIER_BYTES`). When `compact_small_files` files are below half
  of a tier's size, those files are bin-packed into files of that size (`optimize.compact`
  with that target), the smallest such tier first. Flushes add small files; they are packed
  into tier files, tier files into the next tier, up to the target size, and a file is never
  rewritten by compaction once it is past half of the largest tier. So every row is rewritten
  about once per tier (not on every compaction, as when every small file is packed into one
  growing file), and the newest rows, which the next flushes update most, sit in small files
  that a MERGE rewrites cheaply. After `compact_after_commits` commits since the last
  compaction, the small files of every tier are packed. Small files are consecutive flushes,
  so a compacted file still spans a short stretch of event time and of key range: the layout
  the writer's MERGE pruning relies on survives.
- **checkpoint** once `checkpoint_after_commits` commits (or a compaction) happened since the
  last one, then **clean up the log**: JSON commits older than the table's
  `delta.logRetentionDuration` (set from `log_retention_hours`) and older than the checkpoint
  go. App transactions (the writer's exactly-once progress) are log actions: a checkpoint keeps
  the latest version of each, so dropping old commits never loses one.
- **vacuum**: data files that a commit removed (a MERGE rewrote them, a compaction packed
  them) more than `vacuum_retention_hours` ago are deleted, then the table is checkpointed so
  their tombstones leave the log. Without it the disk grows with every flush for ever: a MERGE
  rewrites the files holding the rows it updates. The retention is the table's
  `delta.deletedFileRetentionDuration` (so other Delta tools agree, and fractional hours work);
  a reader holding a snapshot younger than the retention still finds every file of it. Only
  the log is read ("lite" vacuum): files a failed commit left behind, which the log never
  names, stay for `kafka-pipeline maintain --apply`, which lists the storage. Finding the
  expired files reads the checkpoint's tombstones, so a table is looked at every quarter of
  the retention, an hour at most: a file outlives its retention by that much at worst.

Exactly once. Compaction commits are ordinary Delta commits with `dataChange=false`; they carry
no app transaction and keep the ones in the log. A compaction that loses a race with a
writer's commit (delta-rs raises `CommitFailedError`) is planned again on the new snapshot,
after a backoff; a writer whose MERGE loses against a compaction retries its own step the same
way. Neither commit is lost, whichever order they land in.

The loop does not run when `should_run()` says another member does (the entity writer runs it
on the member owning partition 0 of its topic); that only saves duplicate work: two
compactions of one table are two optimistic commits, and the second conflicts and retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, WriterProperties
from deltalake.exceptions import CommitFailedError
from prometheus_client import CollectorRegistry

from kafka_pipeline.delta.table_writer import open_table
from kafka_pipeline.maintenance.metrics import MaintenanceMetrics
from kafka_pipeline.maintenance.operations import DEFAULT_TARGET_BYTES, TARGET_SIZE_PROPERTY
from kafka_pipeline.observability.logging import get_logger
from kafka_pipeline.resilience.backoff import backoff_delay

log = get_logger("kafka_pipeline.maintenance.operations")

LOG_RETENTION_PROPERTY = "delta.logRetentionDuration"
DELETED_FILE_RETENTION_PROPERTY = "delta.deletedFileRetentionDuration"
TIER_RATIO = 8
MIN_TIER_BYTES = 64 * 1024  # below this a file is mostly Parquet footer: no tier smaller
VACUUM_CHECK_MAX_S = 3600.0


def tier_sizes(target_bytes: int) -> list[int]:
    """Compaction tiers of a table, smallest first: the target size, /8, /64, ... >= 64 KiB."""
    sizes = [target_bytes]
    while sizes[-1] // TIER_RATIO >= MIN_TIER_BYTES:
        sizes.append(sizes[-1] // TIER_RATIO)
    return sizes[::-1]


def interval_value(hours: float) -> str:
    """A retention property's value for `hours` (Delta's interval syntax): whole seconds, or
    milliseconds when that is not a whole number of seconds."""
    milliseconds = round(hours * 3_600_000)
    return f"interval {milliseconds // 1000} seconds" if milliseconds % 1000 == 0 else f"interval {milliseconds} milliseconds"


@dataclass(frozen=True)
class MaintenancePolicy:
    compact_small_files: int = 16
    compact_after_commits: int = 200
    checkpoint_after_commits: int = 10
    log_retention_hours: float = 168.0
    vacuum_retention_hours: float = 168.0
    max_conflict_retries: int = 10
    backoff_base_s: float = 0.1
    backoff_max_s: float = 5.0


@dataclass
class TableState:
    """One look at a table: its snapshot and what it needs."""

    label: str
    table: DeltaTable
    version: int
    files: int
    small_files: int
    size_bytes: int
    target_bytes: int
    compact_to: int | None  # compact the files below half of this size into files of it
    checkpoint: bool

    @property
    def compact(self) -> bool:
        return self.compact_to is not None


@dataclass
class CycleReport:
    """What one pass over the tables did."""

    compacted: dict[str, int] = field(default_factory=dict)  # label -> files removed
    vacuumed: dict[str, int] = field(default_factory=dict)  # label -> files deleted
    checkpointed: list[str] = field(default_factory=list)
    conflicts: int = 0
    errors: dict[str, str] = field(default_factory=dict)


class TableMaintainer:
    """Decides and runs maintenance for a fixed set of tables (`label -> uri`). One thread."""

    def __init__(
        self,
        tables: Mapping[str, str],
        policy: MaintenancePolicy,
        *,
        storage_options: Mapping[str, str] | None = None,
        registry: CollectorRegistry | None = None,
        properties: Mapping[str, Mapping[str, str]] | None = None,
        writer_properties: WriterProperties | None = None,
    ) -> None:
        """`properties`: per label, table properties the table must have (its file layout, such
        as `delta.targetFileSize`): set on a table that lacks them (one metadata commit, before
        it is compacted), so tables created before a layout change take it up.
        `writer_properties`: how compaction encodes the files it writes."""
        self.uris = dict(tables)
        self.policy = policy
        self.storage_options = dict(storage_options or {})
        self.properties = {label: dict(wanted) for label, wanted in (properties or {}).items()}
        self.writer_properties = writer_properties
        self.metrics = MaintenanceMetrics.on(registry or CollectorRegistry())
        self._tables: dict[str, DeltaTable] = {}
        self._compacted_at: dict[str, int] = {}  # label -> table version of our last compaction
        self._checkpointed_at: dict[str, int] = {}  # label -> version of our last checkpoint
        self._vacuum_checked_at: dict[str, float] = {}  # label -> monotonic time of our last look for expired files
        self._vacuum_check_s = min(VACUUM_CHECK_MAX_S, policy.vacuum_retention_hours * 3600 / 4)

    def run_once(self) -> CycleReport:
        """One pass: every existing table is assessed and maintained. Never raises for one table."""
        report = CycleReport()
        for label in self.uris:
            try:
                state = self.assess(label)
                if state is None:
                    continue
                if state.compact:
                    removed = self.compact(state, report)
                    report.compacted[label] = removed
                deleted = self.vacuum(label)
                if deleted:
                    report.vacuumed[label] = deleted
                if state.compact or state.checkpoint or deleted:  # after a vacuum: drops its tombstones from the log
                    self.checkpoint(label)
                    report.checkpointed.append(label)
            except Exception as exc:  # noqa: BLE001 - one table's failure must not stop the others
                text = str(exc).strip().splitlines()
                report.errors[label] = f"{type(exc).__name__}: {text[0] if text else ''}"
                self.metrics.errors.labels(label).inc()
                log.warning("table maintenance failed; retried next cycle", table=label, error=report.errors[label])
        return report

    def assess(self, label: str) -> TableState | None:
        """The table's current snapshot and what it needs (None: not created yet)."""
        table = self._open(label)
        if table is None:
            return None
        table.update_incremental()
        self._ensure_properties(table, self.properties.get(label, {}))
        version = table.version()
        target = int(table.metadata().configuration.get(TARGET_SIZE_PROPERTY) or DEFAULT_TARGET_BYTES)
        sizes = pa.table(table.get_add_actions(flatten=False)).column("size_bytes")
        files = len(sizes)

        def below(size: int) -> int:
            return int(pc.sum(pc.less(sizes, pa.scalar(size, pa.int64()))).as_py() or 0) if files else 0

        small = below(target)
        size_bytes = int(pc.sum(sizes).as_py() or 0) if files else 0
        self.metrics.files.labels(label).set(files)
        self.metrics.bytes.labels(label).set(size_bytes)
        self.metrics.small_files.labels(label).set(small)
        since_compaction = version - self._compacted_at.setdefault(label, version)
        since_checkpoint = version - self._checkpointed_at.get(label, -1)
        tier = next((size for size in tier_sizes(target) if below(size // 2) >= self.policy.compact_small_files), None)
        if tier is None and since_compaction >= self.policy.compact_after_commits and below(target // 2) > 1:
            tier = target
        return TableState(
            label=label,
            table=table,
            version=version,
            files=files,
            small_files=small,
            size_bytes=size_bytes,
            target_bytes=target,
            compact_to=tier,
            checkpoint=since_checkpoint >= self.policy.checkpoint_after_commits,
        )

    def compact(self, state: TableState, report: CycleReport | None = None) -> int:
        """Bin-pack the files of `state`'s table below its tier (`state.compact_to`, default the
        target size) into files of that size; on a conflicting commit plan again on the new
        snapshot. Returns the number of files removed."""
        started = time.monotonic()
        table, attempt = state.table, 0
        while True:
            try:
                metrics = table.optimize.compact(target_size=state.compact_to or state.target_bytes, writer_properties=self.writer_properties)
                break
            except CommitFailedError:
                attempt += 1
                self.metrics.conflicts.labels(state.label).inc()
                if report is not None:
                    report.conflicts += 1
                if attempt > self.policy.max_conflict_retries:
                    raise
                time.sleep(backoff_delay(attempt, self.policy.backoff_base_s, self.policy.backoff_max_s))
                table.update_incremental()
        table.update_incremental()
        self._compacted_at[state.label] = table.version()
        self.metrics.compactions.labels(state.label).inc()
        self.metrics.compaction_seconds.labels(state.label).observe(time.monotonic() - started)
        removed = int(metrics.get("numFilesRemoved", 0))
        log.info("table compacted", table=state.label, tier_bytes=state.compact_to, files_removed=removed, files_added=metrics.get("numFilesAdded", 0),
                 seconds=round(time.monotonic() - started, 3), conflicts=attempt)
        return removed

    def vacuum(self, label: str) -> int:
        """Delete the data files removed from the table longer ago than the retention; the
        number deleted. Reads the log only; commits (VACUUM START/END) only when there is
        something to delete."""
        now = time.monotonic()
        if now - self._vacuum_checked_at.get(label, -math.inf) < self._vacuum_check_s:
            return 0
        self._vacuum_checked_at[label] = now
        table = self._tables[label]
        self._ensure_retention(table)
        if not table.vacuum(dry_run=True, full=False):
            return 0
        started, attempt = time.monotonic(), 0
        while True:
            try:
                deleted = len(table.vacuum(dry_run=False, full=False))
                break
            except CommitFailedError:  # its START or END commit lost a race: files deleted twice are no harm
                attempt += 1
                if attempt > self.policy.max_conflict_retries:
                    raise
                time.sleep(backoff_delay(attempt, self.policy.backoff_base_s, self.policy.backoff_max_s))
                table.update_incremental()
        self.metrics.vacuumed_files.labels(label).inc(deleted)
        log.info("table vacuumed", table=label, files_deleted=deleted, retention_hours=self.policy.vacuum_retention_hours,
                 seconds=round(time.monotonic() - started, 3))
        return deleted

    def checkpoint(self, label: str) -> None:
        """Checkpoint the table's current version, then drop log entries past the retention."""
        table = self._tables[label]
        table.update_incremental()
        self._ensure_retention(table)
        table.create_checkpoint()
        table.cleanup_metadata()
        self._checkpointed_at[label] = table.version()
        self.metrics.checkpoints.labels(label).inc()

    def _ensure_retention(self, table: DeltaTable) -> None:
        """The table's retention properties say what the policy says: set once per table and
        change of setting (a metadata commit)."""
        self._ensure_properties(table, {
            LOG_RETENTION_PROPERTY: interval_value(self.policy.log_retention_hours),
            DELETED_FILE_RETENTION_PROPERTY: interval_value(self.policy.vacuum_retention_hours),
        })

    def _ensure_properties(self, table: DeltaTable, wanted: Mapping[str, str]) -> None:
        """Set `wanted` on the table where it differs (a metadata commit; none when it agrees)."""
        configuration = table.metadata().configuration
        if all(configuration.get(name) == value for name, value in wanted.items()):
            return
        for attempt in range(1, self.policy.max_conflict_retries + 1):
            try:
                table.alter.set_table_properties(dict(wanted))
                return
            except CommitFailedError:
                time.sleep(backoff_delay(attempt, self.policy.backoff_base_s, self.policy.backoff_max_s))
                table.update_incremental()
        table.alter.set_table_properties(dict(wanted))

    def _open(self, label: str) -> DeltaTable | None:
        table = self._tables.get(label)
        if table is None:
            table = open_table(self.uris[label], self.storage_options)
            if table is not None:
                self._tables[label] = table
        return table


async def run_maintenance(
    maintainer: TableMaintainer,
    stop: asyncio.Event,
    *,
    interval_s: float,
    should_run: Callable[[], bool] = lambda: True,
) -> None:
    """Call `maintainer.run_once` every `interval_s` in a thread of its own (the flush path's
    threads and locks are never used), while `should_run()`, until `stop` is set."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="delta-maintenance") as pool:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            if stop.is_set() or not should_run():
                continue
            report = await loop.run_in_executor(pool, maintainer.run_once)
            if report.compacted or report.vacuumed or report.errors:
                # one line: `table=files` pairs and the error count, not the raw dicts (each error was logged already)
                compacted = " ".join(f"{label}={removed}" for label, removed in sorted(report.compacted.items()))
                vacuumed = " ".join(f"{label}={deleted}" for label, deleted in sorted(report.vacuumed.items()))
                log.info("maintenance cycle", compacted=compacted or "none", vacuumed=vacuumed or "none",
                         checkpointed=len(report.checkpointed), conflicts=report.conflicts, errors=len(report.errors))


def table_labels(names: Sequence[str], uri_of: Callable[[str], str], clock_uri_of: Callable[[str], str]) -> dict[str, str]:
    """`label -> uri` for tables and their clock tables (`<name>` and `<name>/clocks`)."""
    labels: dict[str, str] = {}
    for name in names:
        labels[name] = uri_of(name)
        labels[f"{name}/clocks"] = clock_uri_of(name)
    return labels
