"""Soak benchmark: thousands of small flushes through the writer's path with maintenance running
beside it, as a long-running deployment sees them.

    .venv/bin/python scripts/bench_soak.py                      # 5,000 flushes (issue 13's goals)
    .venv/bin/python scripts/bench_soak.py --flushes 600        # quick
    .venv/bin/python scripts/bench_soak.py --warm-hours 8       # the soak on tables with 8 h of uptime
    .venv/bin/python scripts/bench_soak.py --trickle            # issue 24's 15-minute default-policy trickle, after 8 h of uptime
    ... --trickle --warm-hours 0                                # the same trickle from empty tables (warm-up included)
    .venv/bin/python scripts/bench_soak.py --s3 --flushes 80    # object-store requests per flush
    ... --before-layout                                         # the same with the file layout before issue 24

`--trickle` runs on a simulated clock: --events-per-s (20) for --minutes (15) of simulated time,
one flush of `events/s x writer.max_latency_s` messages per `max_latency_s`, and a maintenance
pass (`run_once`, in the flush loop) after every `--maintenance-interval-s` of simulated time,
so the flush cadence and the maintenance interval are the deployment's while the run takes as
long as the machine needs. It prints the bytes written per row and the second half's bytes
against the first's (goals: <= 4 KiB, <= 1.3x), per table too.

Why the trickle starts on tables with 8 simulated hours of the same stream (`--warm-hours`,
written in flushes of 10,000 messages, then a maintenance pass; only what follows is counted):
delta-rs MERGE is copy-on-write, so a flush pays, per updated table, the files holding the rows
it updates. Task completions land on open tasks of any age, so a flush rewrites min(U, F) files
of `claimx_tasks` and of `claimx_external_links` (U: completions per flush, about 4 at 20
events/s; F: files).
From empty tables, F and the file sizes grow during the whole 15 minutes, so the second half
pays more than the first because the tables are young (2.18x), not because of uptime, and the
bytes per row are those of small tables. After 8 hours `claimx_tasks` has about 40 files near
their bound (F about 10 U: a flush touches about 95% of the distinct files it would on an
endless table), so the trickle measures what a deployment with uptime pays per row and
whether that still grows. The soak prints the bytes per row of its first
and last windows after the first compaction (goal: <= 1.3x) and of every tenth of the run: from
empty tables that ratio holds the same growth of the tables (about 1.8x), on tables with 8 hours of
uptime (`--warm-hours 8`) it is uptime's alone (1.18x, flat from flush 2,500). Bytes written are the sizes of
every data file that appeared under the root (sampled every 10 or 50 flushes). `--s3` puts the
tables on the tests' local S3 server (tests/fixtures/s3_server.py) and prints the PUT, GET and
LIST requests it served per flush, writer and maintenance together, and the GETs and PUTs by
object (commits, checkpoints, data files); `--warm-hours` works there too.

A steady trickle: --messages-per-flush entity-rows messages (20, about 50 rows) per flush, as a
stream of about 10 events/s produces with `writer.max_latency_s=2`: new projects with contacts,
media, task assignments and completions (with their shared task templates and external links;
a completion's task and link rows are whole, as the task handler fetches the assignment again),
policyholder and MFN updates of recent projects, video collaborations, and one `claimx_events`
row per event. Each flush goes the way the entity writer's does, without Kafka: the messages
become typed Arrow tables (`BatchBuilder`), and every table with rows is merged by its
`DeltaTableWriter` concurrently, app transactions included. The maintenance loop the writer
runs (`TableMaintainer.run_once`, the deployment's settings) runs in its own thread every
--maintenance-interval-s.

Printed: flush-time percentiles of the first and the last thousand flushes (or tenth, for
short runs), data files and log files per table, checkpoints, bytes written per row against the
rows' own (Arrow) size, and a full read of `claimx_events` and `claimx_projects` (deltalake, and
DuckDB's `delta_scan` when duckdb and its delta extension load: `bash scripts/bootstrap.sh dev,bench`) before and after a manual full
compaction. Goals (issue 13): p99 of the last thousand <= 1.5x the first thousand; a few hundred
data files per table at most; checkpoints exist and old log files are gone; bytes per row <= 10x
the row size; the analyst's read within 2x of the compacted read.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kafka_pipeline.claimx.entity_rows import EntityRowsMessage  # noqa: E402
from kafka_pipeline.claimx.schemas import TABLES  # noqa: E402
from kafka_pipeline.config import MaintenanceSettings, WriterSettings  # noqa: E402
from kafka_pipeline.delta.merge_rule import APP, OFFSET, SEQ  # noqa: E402
from kafka_pipeline.delta.table_writer import DeltaTableWriter, TableWriteResult, clock_table_uri, table_uri  # noqa: E402
from kafka_pipeline.maintenance.loop import TableMaintainer, table_labels  # noqa: E402
from kafka_pipeline.maintenance.operations import maintain  # noqa: E402
from kafka_pipeline.maintenance.policy import layout_properties, policy  # noqa: E402
from kafka_pipeline.maintenance.table_layout import (  # noqa: E402
    CLOCK_FILE_RATIO,
    ENTITY_FILE_BYTES,
    EVENTS_FILE_BYTES,
    table_properties,
    writer_properties,
)
from kafka_pipeline.observability.logging import configure_logging  # noqa: E402
from kafka_pipeline.workers.writer.entity_writer import app_id  # noqa: E402
from kafka_pipeline.workers.writer.row_conversion import BatchBuilder  # noqa: E402

T0 = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)
APP_ID = app_id("claimx-writer", "claimx.entity_rows", 0)
TEMPLATES = 40  # task templates are few and shared: every task event upserts one
EVENT_US = 100_000  # 10 events/s


class Stream:
    """A deterministic ClaimX-like stream of entity-rows messages."""

    def __init__(self, seed: int = 13, event_us: int = EVENT_US) -> None:
        self.rng = random.Random(seed)
        self.event_us = event_us
        self.n = 0
        self.projects = 5_000_000
        self.media = 70_000_000
        self.assignments = 900_000
        self.open_tasks: list[dict[str, Any]] = []

    def recent_project(self) -> str:
        return str(self.projects - self.rng.randrange(min(400, self.projects - 4_999_999)))

    def message(self) -> EntityRowsMessage:
        self.n += 1
        at = T0 + timedelta(microseconds=self.n * self.event_us)
        roll = self.rng.random()
        rows: dict[str, list[dict[str, Any]]]
        if roll < 0.12 or self.projects == 5_000_000:
            self.projects += 1
            kind, project = "PROJECT_CREATED", str(self.projects)
            rows = {"claimx_projects": [self.project_row(project, at)],
                    "claimx_contacts": [{"project_id": project, "contact_email": f"ph{project}@example.com", "contact_type": "POLICYHOLDER",
                                         "first_name": "Pat", "last_name": f"Holder{project}", "phone_number": "5125550100",
                                         "is_primary_contact": True},
                                        {"project_id": project, "contact_email": "adjuster@example.com", "contact_type": "CLAIM_REP",
                                         "is_primary_contact": False, "master_file_name": f"MFN-{project}"}]}
        elif roll < 0.55:
            kind, project = "PROJECT_FILE_ADDED", self.recent_project()
            rows = {"claimx_media": [self.media_row(project, at) for _ in range(self.rng.choice((1, 1, 2, 3)))]}
        elif roll < 0.75:
            kind, project = "CUSTOM_TASK_ASSIGNED", self.recent_project()
            self.assignments += 1
            assignment, template = str(self.assignments), str(100 + self.rng.randrange(TEMPLATES))
            task = {"assignment_id": assignment, "task_id": template, "task_name": f"Task {template}", "project_id": project,
                    "assignee_id": str(self.rng.randrange(500)), "assignor_email": "ops@example.com",
                    "date_assigned": at.isoformat(), "status": "ASSIGNED", "stp_enabled": False}
            self.open_tasks.append(task)
            rows = {"claimx_tasks": [task], "claimx_task_templates": [self.template_row(template, at)],
                    "claimx_external_links": [self.link_row(task)]}
        elif roll < 0.85 and self.open_tasks:
            # The task handler fetches the whole assignment again: the completion's row is the
            # assigned one with its new status and completion date.
            assigned = self.open_tasks.pop(self.rng.randrange(len(self.open_tasks)))
            kind, project, template = "CUSTOM_TASK_COMPLETED", assigned["project_id"], assigned["task_id"]
            rows = {"claimx_tasks": [{**assigned, "status": "COMPLETED", "date_completed": at.isoformat()}],
                    "claimx_task_templates": [self.template_row(template, at)], "claimx_external_links": [self.link_row(assigned)]}
        elif roll < 0.95:
            kind, project = self.rng.choice(("POLICYHOLDER_INVITED", "POLICYHOLDER_JOINED", "PROJECT_MFN_ADDED")), self.recent_project()
            column = {"POLICYHOLDER_INVITED": "policyholder_invited_at", "POLICYHOLDER_JOINED": "policyholder_joined_at"}.get(kind)
            rows = {"claimx_projects": [{"project_id": project, column: at.isoformat()} if column else
                                        {"project_id": project, "master_file_name": f"MFN-{project}-{self.n}"}]}
        else:
            kind, project = "VIDEO_COLLABORATION_COMPLETED", self.recent_project()
            rows = {"claimx_video_collab": [{"video_collaboration_id": f"V{project}", "project_id": project, "session_count": self.n % 7,
                                             "total_time_seconds": float(self.n % 3600), "claim_rep_full_name": "Ann Lee"}]}
        trace = f"{self.n:064x}"
        rows["claimx_events"] = [{"event_type": kind, "project_id": project, "ingested_at": at.isoformat(), "event_date": at.date().isoformat(),
                                  "media_id": rows["claimx_media"][0]["media_id"] if "claimx_media" in rows else None}]
        return EntityRowsMessage(trace_id=trace, event_type=kind, project_id=project, event_time=at, rows=rows)

    def project_row(self, project: str, at: datetime) -> dict[str, Any]:
        n = int(project)
        return {"project_id": project, "project_number": f"P-{n}", "master_file_name": f"MFN-{n}", "status": "OPEN",
                "created_date": at.isoformat(), "date_of_loss": (at - timedelta(days=3)).isoformat(), "type_of_loss": "WATER",
                "cause_of_loss": "PIPE", "loss_description": f"Water damage in unit {n % 90}", "year_built": 1950 + n % 70,
                "square_footage": float(900 + n % 2000), "date_received": at.isoformat(), "customer_first_name": "Pat",
                "customer_last_name": f"Holder{n}", "street1": f"{n % 9000} Main St", "city": "Austin", "state_province": "TX",
                "zip_postcode": f"78{n % 1000:03d}", "country": "US", "primary_email": f"ph{n}@example.com",
                "primary_phone": "5125550100", "company_name": "Acme Insurance"}

    def media_row(self, project: str, at: datetime) -> dict[str, Any]:
        self.media += 1
        return {"media_id": str(self.media), "project_id": project, "file_type": "jpg", "file_name": f"IMG_{self.media}.jpg",
                "latitude": 30.2 + self.rng.random() / 10, "longitude": -97.7 - self.rng.random() / 10, "taken_date": at.isoformat(),
                "full_download_link": f"https://media.example.com/{self.media}?sig={self.rng.getrandbits(64):016x}",
                "expires_at": (at + timedelta(hours=1)).isoformat()}

    def link_row(self, task: dict[str, Any]) -> dict[str, Any]:
        assignment, project = task["assignment_id"], task["project_id"]
        return {"link_id": f"L{assignment}", "assignment_id": assignment, "project_id": project, "link_code": f"C{assignment}",
                "url": f"https://x.example.com/l/{assignment}", "email": f"ph{project}@example.com"}

    def template_row(self, template: str, at: datetime) -> dict[str, Any]:
        return {"task_id": template, "comp_id": "7", "name": f"Task {template}", "form_id": f"F{template}", "enabled": True,
                "is_default": False, "modified_date": (T0 - timedelta(days=30)).isoformat()}

    def flushes(self, count: int, messages: int) -> Iterator[list[EntityRowsMessage]]:
        for _ in range(count):
            yield [self.message() for _ in range(messages)]


class Maintenance(threading.Thread):
    """The writer's maintenance loop: in a thread every `interval_s` (`start()`), or called by
    the flush loop itself at simulated times (`run_pass()`, the trickle)."""

    def __init__(self, maintainer: TableMaintainer, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.maintainer, self.interval_s = maintainer, interval_s
        self.stopped = threading.Event()
        self.compactions = self.conflicts = self.cycles = 0
        self.errors: list[str] = []
        self.flushes_done = 0  # set by the flush loop
        self.first_compaction_at: int | None = None  # flushes done when the first compaction finished

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            self.run_pass()

    def run_pass(self) -> None:
        report = self.maintainer.run_once()
        self.cycles += 1
        self.compactions += len(report.compacted)
        self.conflicts += report.conflicts
        self.errors += list(report.errors.values())
        if report.compacted and self.first_compaction_at is None:
            self.first_compaction_at = self.flushes_done


class WrittenBytes:
    """Bytes of data files written so far under a local root: every Parquet data file ever seen
    (checkpoints excluded), so files a vacuum deleted after they were seen still count."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seen: dict[Path, int] = {}

    def by_table(self) -> dict[str, int]:
        """Bytes written so far per table folder (`claimx_tasks`, `_clocks/claimx_tasks`, ...)."""
        for path in self.root.rglob("*.parquet"):
            if path not in self.seen and ".checkpoint" not in path.name and path.is_file():
                self.seen[path] = path.stat().st_size
        tables: dict[str, int] = {}
        for path, size in self.seen.items():
            folder = path.parent.relative_to(self.root).as_posix()
            tables[folder] = tables.get(folder, 0) + size
        return tables


@dataclasses.dataclass(frozen=True)
class Sample:
    flushes: int
    rows: int
    data_bytes: int
    table_bytes: dict[str, int] = dataclasses.field(default_factory=dict)  # bytes written so far per table folder
    live: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # (trickle, middle and end) live (files, bytes)


def live_files(root: Path) -> dict[str, tuple[int, int]]:
    """Per table folder under a local root, its live data files and their bytes."""
    live: dict[str, tuple[int, int]] = {}
    for log in root.rglob("_delta_log"):
        actions = pa.table(DeltaTable(str(log.parent)).get_add_actions(flatten=True))
        live[log.parent.relative_to(root).as_posix()] = (actions.num_rows, int(pc.sum(actions["size_bytes"]).as_py() or 0))
    return live


def window_rate(samples: list[Sample], start: int, end: int) -> tuple[float, int, int]:
    """Bytes per row written between the samples at flush `start` and flush `end` (both must be
    sample points): (bytes per row, bytes, rows)."""
    at = {sample.flushes: sample for sample in samples}
    first, last = at[start], at[end]
    written, rows = last.data_bytes - first.data_bytes, last.rows - first.rows
    return written / max(rows, 1), written, rows


def request_kind(method: str, path: str) -> str:
    """PUT, GET, LIST, ... of one logged request (a GET with `list-type` is a LIST)."""
    return "LIST" if method == "GET" and "list-type=" in path else method


def s3_requests(server: Any, since: int = 0) -> dict[str, int]:
    """Requests the local S3 server served from its `since`-th on, by kind."""
    counts: dict[str, int] = {}
    for method, path, _status in server.requests()[since:]:
        kind = request_kind(method, path)
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def object_kind(path: str) -> str:
    """What a request's object is: a commit, a checkpoint, `_last_checkpoint`, a data file."""
    name = path.partition("?")[0].rsplit("/", 1)[-1]
    if "/_delta_log/" not in path:
        return "data file" if name.endswith(".parquet") else f"other ({name})"
    if name == "_last_checkpoint":
        return "_last_checkpoint"
    return "checkpoint" if ".checkpoint" in name else "commit (json)" if name.endswith(".json") else f"log other ({name})"


def print_s3_objects(logged: list[tuple[str, str, int]], flushes: int) -> None:
    """Per flush, the GETs and PUTs by object kind, and how many distinct data files were read
    (a Parquet read is several ranged GETs: footer, then column chunks)."""
    counts: dict[tuple[str, str], int] = {}
    data_files: set[str] = set()
    for method, path, status in logged:
        kind = request_kind(method, path)
        if kind not in ("GET", "PUT", "HEAD"):
            continue
        what = object_kind(path) + ("" if status < 300 else f" ({status})")  # a 404 GET: a commit not there (yet)
        counts[kind, what] = counts.get((kind, what), 0) + 1
        if kind == "GET" and what == "data file":
            data_files.add(path.partition("?")[0])
    for (kind, what), count in sorted(counts.items(), key=lambda item: -item[1]):
        print(f"  {kind:4} {what:26} {count / flushes:8.1f} per flush")
    reads = counts.get(("GET", "data file"), 0)
    print(f"  data-file GETs: {reads:,} on {len(data_files):,} distinct files ({reads / max(len(data_files), 1):.1f} GETs per file read)")


def before_layout(name: str) -> tuple[dict[str, str], dict[str, str]]:
    """Table properties before issue 24 point 3: one file size for every entity table."""
    size = EVENTS_FILE_BYTES if name == "claimx_events" else ENTITY_FILE_BYTES
    return {"delta.targetFileSize": str(size)}, {"delta.targetFileSize": str(size // CLOCK_FILE_RATIO)}


TRICKLE_WARM_HOURS = 8.0  # see the module docstring: why the trickle starts on tables with uptime
WARM_BATCH = 10_000  # messages per warm-up flush: few large MERGEs, so hours of stream take minutes


def write_flush(writers: dict[str, DeltaTableWriter], pool: ThreadPoolExecutor, messages: list[EntityRowsMessage],
                offset: int) -> tuple[dict[str, pa.Table], list[TableWriteResult], int]:
    """One flush the way the entity writer does it: typed Arrow tables, every table merged
    concurrently with the app transaction. Returns the tables, their results and the next offset."""
    builder = BatchBuilder()
    for message in messages:
        builder.add(message, app=APP_ID, offset=offset)
        offset += 1
    tables = builder.tables()
    progress = {APP_ID: offset - 1}
    for attempt in itertools.count(1):
        now = datetime.now(UTC)
        futures = [pool.submit(writers[name].write, data, progress, now) for name, data in tables.items()]
        try:
            return tables, [future.result() for future in futures], offset
        except Exception as exc:  # noqa: BLE001 - as the entity writer does: the whole flush again (the tables that have it skip it)
            wait([f for f in futures if not f.done()])
            if attempt == FLUSH_ATTEMPTS:
                raise
            FLUSH_RETRIES.append(str(exc))
    raise AssertionError("unreachable")


FLUSH_ATTEMPTS = 5
FLUSH_RETRIES: list[str] = []  # the transient errors flushes were retried after


def warm_up(stream: Stream, writers: dict[str, DeltaTableWriter], pool: ThreadPoolExecutor, maintainer: TableMaintainer,
            hours: float) -> int:
    """Writes `hours` of `stream` (at its event rate) through the writer's path in flushes of
    WARM_BATCH messages, then runs one maintenance pass: the tables of a deployment with that
    uptime. Returns the next offset."""
    started = time.perf_counter()
    messages = round(hours * 3600 * 1_000_000 / stream.event_us)
    offset = 0
    while offset < messages:
        _, _, offset = write_flush(writers, pool, [stream.message() for _ in range(min(WARM_BATCH, messages - offset))], offset)
    maintainer.run_once()
    print(f"warm-up: {hours:g} simulated hours ({offset:,} messages in flushes of {WARM_BATCH:,}, then a maintenance pass) "
          f"in {time.perf_counter() - started:.0f} s; the figures below count only what follows", flush=True)
    return offset


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def tree_bytes(path: Path, pattern: str) -> int:
    return sum(f.stat().st_size for f in path.rglob(pattern) if f.is_file())


ANALYST_TABLES = ("claimx_events", "claimx_projects", "claimx_tasks")  # read most; the last two are the updated tables


def analyst_reads(root: str) -> dict[str, float]:
    """Seconds of a full read of the two tables an analyst reads most (best of two)."""
    times: dict[str, float] = {}
    for name in ANALYST_TABLES:
        best = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            DeltaTable(table_uri(root, name)).to_pyarrow_table()
            best = min(best, time.perf_counter() - started)
        times[f"deltalake {name}"] = best
    duck = duckdb_connection()
    if duck is not None:
        for name in ANALYST_TABLES:
            best = float("inf")
            for _ in range(2):
                started = time.perf_counter()
                duck.execute(f"SELECT * FROM delta_scan('{table_uri(root, name)}')").arrow()
                best = min(best, time.perf_counter() - started)
            times[f"duckdb    {name}"] = best
    return times


def duckdb_connection() -> Any:
    """DuckDB with its Delta extension: from PyPI (`bootstrap.sh dev,bench`), else downloaded."""
    try:
        import duckdb  # noqa: PLC0415 - optional: only the benchmark reads through DuckDB

        connection = duckdb.connect()
        try:
            import duckdb_extension_delta  # noqa: PLC0415 - the extension binary, as a wheel

            folder = Path(duckdb_extension_delta.__file__).parent / "extensions" / f"v{duckdb.__version__}"
            connection.execute(f"LOAD '{folder / 'delta.duckdb_extension'}'")
        except ImportError:
            connection.execute("INSTALL delta; LOAD delta;")
        return connection
    except Exception as exc:  # noqa: BLE001 - no duckdb or no delta extension: report and go on
        print(f"(duckdb's delta reader unavailable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        return None


def main() -> int:
    defaults = MaintenanceSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flushes", type=int, default=5_000, help="flushes (default 5,000)")
    parser.add_argument("--messages-per-flush", type=int, default=20, help="entity-rows messages per flush (default 20, ~50 rows)")
    parser.add_argument("--maintenance-interval-s", type=float, default=defaults.interval_s,
                        help=f"seconds between maintenance passes (default {defaults.interval_s:g}, the setting's)")
    parser.add_argument("--log-retention-hours", type=float, default=0.05,
                        help="log retention of the tables (default 0.05 h = 3 min, so the run shows the cleanup; the setting's default is 168)")
    parser.add_argument("--checkpoint-after-commits", type=int, default=defaults.checkpoint_after_commits,
                        help=f"the maintenance setting (default {defaults.checkpoint_after_commits}, the setting's): each flush reads every "
                             "commit since the last checkpoint to find the writer's transaction versions")
    parser.add_argument("--no-maintenance", action="store_true", help="run without the maintenance loop (the 'before')")
    parser.add_argument("--events-with-clocks", action="store_true",
                        help="merge claimx_events through a clock table like the updated tables (the layout before issue 24: the 'before')")
    parser.add_argument("--before-layout", action="store_true",
                        help="the file layout before issue 24 point 3 (the 'before'): every entity table 2 MiB files, clock tables "
                             "256 KiB, snappy; without it: the writer's layout (kafka_pipeline/maintenance/table_layout.py)")
    parser.add_argument("--trickle", action="store_true",
                        help="the default-policy trickle instead of the soak: --events-per-s for --minutes, a flush every "
                             "writer.max_latency_s of simulated time, maintenance every --maintenance-interval-s of simulated time")
    parser.add_argument("--events-per-s", type=float, default=20.0, help="--trickle: event rate (default 20)")
    parser.add_argument("--minutes", type=float, default=15.0, help="--trickle: simulated minutes (default 15)")
    parser.add_argument("--warm-hours", type=float, default=None,
                        help="simulated hours of the same stream written (in large flushes, then a maintenance pass) before the measured "
                             f"part starts (default: {TRICKLE_WARM_HOURS:g} with --trickle, else 0)")
    parser.add_argument("--s3", action="store_true",
                        help="tables on the tests' local S3 server (tests/fixtures/s3_server.py); prints object-store requests per flush")
    parser.add_argument("--root", help="folder for the tables (default: a temporary folder, removed afterwards)")
    args = parser.parse_args()
    if args.flushes < 2 or args.messages_per_flush < 1 or args.maintenance_interval_s <= 0 or args.log_retention_hours < 0:
        parser.error("--flushes >= 2, --messages-per-flush >= 1, --maintenance-interval-s > 0, --log-retention-hours >= 0")
    if args.checkpoint_after_commits < 1:
        parser.error("--checkpoint-after-commits >= 1")
    if args.events_per_s <= 0 or args.minutes <= 0:
        parser.error("--events-per-s > 0, --minutes > 0")
    if args.warm_hours is None:
        args.warm_hours = TRICKLE_WARM_HOURS if args.trickle else 0.0
    if args.warm_hours < 0:
        parser.error("--warm-hours >= 0")
    if args.s3 and args.root:
        parser.error("--s3 and --root exclude each other")

    latency_s = WriterSettings().max_latency_s
    event_us = EVENT_US
    maintenance_every = 0  # trickle: a maintenance pass after this many flushes (simulated time)
    if args.trickle:
        args.messages_per_flush = max(1, round(args.events_per_s * latency_s))
        args.flushes = max(2, round(args.minutes * 60 / latency_s))
        event_us = round(1_000_000 / args.events_per_s)
        maintenance_every = max(1, round(args.maintenance_interval_s / latency_s))

    configure_logging("bench-soak", level="WARNING")
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    root_path = Path(args.root) if args.root else work
    root = str(root_path)
    server: Any = None
    storage: dict[str, str] = {}
    if args.s3:
        from tests.fixtures.s3 import S3Server  # noqa: PLC0415 - the tests' server, only for --s3

        server = S3Server(work)
        server.start()
        root = f"s3://{server.new_bucket()}/tables"
        storage = server.storage_options()
    try:
        specs = {name: dataclasses.replace(spec, immutable=False) if args.events_with_clocks else spec for name, spec in TABLES.items()}
        layout = before_layout if args.before_layout else table_properties
        encoding = None if args.before_layout else writer_properties()
        writers = {name: DeltaTableWriter(spec, root, storage_options=storage, writer_properties=encoding,
                                          configuration=layout(name)[0], clock_configuration=layout(name)[1])
                   for name, spec in specs.items()}
        settings = MaintenanceSettings(log_retention_hours=args.log_retention_hours, checkpoint_after_commits=args.checkpoint_after_commits)
        maintainer = TableMaintainer(table_labels(list(TABLES), lambda n: table_uri(root, n), lambda n: clock_table_uri(root, n)),
                                     policy(settings), storage_options=storage, writer_properties=encoding,
                                     properties=None if args.before_layout else layout_properties(list(TABLES)))
        maintenance = Maintenance(maintainer, args.maintenance_interval_s)
        if not args.no_maintenance and not args.trickle:
            maintenance.start()
        written = None if args.s3 else WrittenBytes(root_path)
        sample_every = 10 if args.trickle else 50
        middle = round(args.flushes / 2 / sample_every) * sample_every  # the trickle's halves meet at a sample point
        samples = [Sample(0, 0, 0)]
        pool = ThreadPoolExecutor(max_workers=len(TABLES), thread_name_prefix="delta-merge")
        seconds: list[float] = []
        rows = row_bytes = json_bytes = offset = conflicts = commits = files_added = 0
        stream = Stream(event_us=event_us)
        if args.warm_hours:
            offset = warm_up(stream, writers, pool, maintainer, args.warm_hours)
        if written is not None:
            table_bytes = written.by_table()  # the measured part starts here: what the warm-up wrote is not counted
            samples = [Sample(0, 0, sum(table_bytes.values()), table_bytes)]
        logged_before = len(server.requests()) if server is not None else 0
        started_all = time.perf_counter()
        for number, messages in enumerate(stream.flushes(args.flushes, args.messages_per_flush)):
            started = time.perf_counter()
            json_bytes += sum(len(json.dumps(row, separators=(",", ":"))) for m in messages for table_rows in m.rows.values() for row in table_rows)
            tables, results, offset = write_flush(writers, pool, messages, offset)
            seconds.append(time.perf_counter() - started)
            conflicts += sum(r.conflicts for r in results)
            commits += sum(r.commits for r in results)
            files_added += sum(r.files_added for r in results)
            for data in tables.values():
                rows += data.num_rows
                row_bytes += data.drop_columns([SEQ, APP, OFFSET]).nbytes
            maintenance.flushes_done = number + 1
            if maintenance_every and not args.no_maintenance and (number + 1) % maintenance_every == 0:
                maintenance.run_pass()
            if written is not None and ((number + 1) % sample_every == 0 or number + 1 == args.flushes):
                table_bytes = written.by_table()
                live = live_files(root_path) if args.trickle and number + 1 in (middle, args.flushes) else {}
                samples.append(Sample(number + 1, rows, sum(table_bytes.values()), table_bytes, live))
            if (number + 1) % 500 == 0:
                print(f"  {number + 1:>6} flushes, {rows:,} rows, last 500 p50 {statistics.median(seconds[-500:]):.3f} s "
                      f"({time.perf_counter() - started_all:.0f} s so far)", flush=True)
        pool.shutdown()
        maintenance.stopped.set()
        if maintenance.is_alive():
            maintenance.join()
        total_s = time.perf_counter() - started_all
        requests = s3_requests(server, logged_before) if server is not None else {}

        window = min(1000, args.flushes // 2)
        first, last = seconds[:window], seconds[-window:]
        shape = (f"trickle: {args.events_per_s:g} events/s for {args.minutes:g} simulated minutes = {args.flushes:,} flushes of "
                 f"{args.messages_per_flush} messages (writer.max_latency_s {latency_s:g}), maintenance every "
                 f"{args.maintenance_interval_s:g} simulated s" if args.trickle else
                 f"soak: {args.flushes:,} flushes of {args.messages_per_flush} messages, maintenance "
                 f"{'off' if args.no_maintenance else f'every {args.maintenance_interval_s:g} s'}")
        shape += "; layout before issue 24 point 3" if args.before_layout else "; the writer's layout (table_layout.py)"
        print(f"\n{shape}; {rows:,} rows ({rows / args.flushes:.1f} per flush), {total_s:.0f} s; tables on {'local S3 server' if args.s3 else 'local disk'}")
        print(f"flush time, first {window:,}: p50 {statistics.median(first):.3f} s, p99 {percentile(first, 99):.3f} s, max {max(first):.3f} s")
        print(f"flush time, last  {window:,}: p50 {statistics.median(last):.3f} s, p99 {percentile(last, 99):.3f} s, max {max(last):.3f} s")
        print(f"writer commits: {commits / args.flushes:.2f} Delta commits and {files_added / args.flushes:.2f} data files added per flush "
              f"(entity and clock tables; claimx_events {'through a clock table' if args.events_with_clocks else 'insert-if-absent, no clock table'})")
        print(f"maintenance: {maintenance.cycles} passes, {maintenance.compactions} compactions (first after flush "
              f"{maintenance.first_compaction_at}), {maintenance.conflicts} compaction conflicts, "
              f"{len(maintenance.errors)} errors; writer commit conflicts {conflicts}")
        for error in maintenance.errors[:3]:
            print(f"  maintenance error: {error}")
        print(f"flushes retried: {len(FLUSH_RETRIES)}" + "".join(f"\n  after: {error[:200]}" for error in FLUSH_RETRIES[:3]))

        goals: list[tuple[str, bool]] = []
        if server is not None:
            goals += report_s3(server, root, requests, args.flushes, rows)
            print_s3_objects(server.requests()[logged_before:], args.flushes)
        else:
            goals += report_local(root_path, root, args, samples, maintenance, rows, row_bytes, json_bytes)
        if not args.trickle:
            p99_ratio = percentile(last, 99) / percentile(first, 99)
            goals.insert(0, (f"p99 of the last {window:,} flushes <= 1.5x the first {window:,} ({p99_ratio:.2f}x)", p99_ratio <= 1.5))
        for text, met in goals:
            print(f"goal: {text} -> {'meets' if met else 'misses'}")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report_s3(server: Any, root: str, requests: dict[str, int], flushes: int, rows: int) -> list[tuple[str, bool]]:
    """Object-store requests per flush (writer and maintenance together) and what the bucket holds."""
    kinds = ("PUT", "GET", "LIST", "HEAD", "DELETE", "POST")
    print("\nobject-store requests per flush (writer + maintenance): "
          + ", ".join(f"{kind} {requests.get(kind, 0) / flushes:.1f}" for kind in kinds if kind in requests or kind in ("PUT", "GET", "LIST"))
          + f"; {sum(requests.values()) / flushes:.1f} in all")
    bucket, _, prefix = root.removeprefix("s3://").partition("/")
    stored = 0
    for page in server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        stored += sum(item["Size"] for item in page.get("Contents", []))
    print(f"bucket holds {stored / 2**20:,.1f} MiB ({stored / rows:,.0f} bytes per row) after {flushes:,} flushes")
    return []


def print_halves_by_table(samples: list[Sample], middle: int) -> None:
    """Per table, the bytes each half wrote and the live files at its end: a table whose flush
    writes about its whole live size rewrites itself on every flush (copy-on-write MERGE)."""
    at = {sample.flushes: sample for sample in samples}
    first, mid, last = samples[0], at[middle], samples[-1]
    halves = (middle - first.flushes, last.flushes - middle)
    print(f"\n{'table':34} {'MiB 1st half':>12} {'MiB 2nd half':>12} {'2nd/1st':>7} {'KiB/flush 2nd':>13} "
          f"{'live files mid/end':>18} {'live KiB mid/end':>17}")
    for folder in sorted(last.table_bytes, key=lambda name: -last.table_bytes[name]):
        one = mid.table_bytes.get(folder, 0) - first.table_bytes.get(folder, 0)
        two = last.table_bytes[folder] - mid.table_bytes.get(folder, 0)
        files_mid, bytes_mid = mid.live.get(folder, (0, 0))
        files_end, bytes_end = last.live.get(folder, (0, 0))
        print(f"{folder:34} {one / 2**20:>12,.2f} {two / 2**20:>12,.2f} {two / max(one, 1):>7.2f} {two / halves[1] / 1024:>13,.1f} "
              f"{f'{files_mid}/{files_end}':>18} {f'{bytes_mid // 1024:,}/{bytes_end // 1024:,}':>17}")


def soak_windows(samples: list[Sample], maintenance: Maintenance, warm_hours: float) -> list[tuple[str, bool]]:
    """Bytes per row of the soak's last window against its first after the first compaction.
    From empty tables the ratio also holds the tables' growth: the files holding updated rows
    fill toward their bound and open tasks spread over more files (table age, not uptime)."""
    points = [sample.flushes for sample in samples]
    start = next((point for point in points if maintenance.first_compaction_at is not None and point >= maintenance.first_compaction_at), None)
    if start is not None and points[-1] - start >= 2 * 50:
        span = min(1000, (points[-1] - start) // 2 // 50 * 50)
        early_rate, _, _ = window_rate(samples, start, start + span)
        late_rate, _, _ = window_rate(samples, points[-1] - span, points[-1])
        ratio = late_rate / max(early_rate, 1e-9)
        print(f"bytes per row after the first compaction: flushes {start + 1}-{start + span}: {early_rate:,.0f}; "
              f"last {span:,} flushes: {late_rate:,.0f} ({ratio:.2f}x)"
              + ("" if warm_hours else "; from empty tables, so this includes their growth (--warm-hours 8: the same on tables with uptime)"))
        return [(f"bytes per row of the last {span:,} flushes <= 1.3x the first {span:,} after the first compaction ({ratio:.2f}x)",
                 ratio <= 1.3)]
    print("bytes per row after the first compaction: too few flushes after it to compare two windows")
    return []


def stale_log_files(log_dir: Path, retention_hours: float) -> list[Path]:
    """Commit files the newest checkpoint's cleanup should have deleted: older than the log
    retention when it ran and before the newest checkpoint that was itself that old (the
    versions inside the retention are rebuilt from it). Counting files against the version
    would judge the run's length instead: a run shorter than the retention removes nothing."""
    checkpoints = sorted(log_dir.glob("*.checkpoint*.parquet"), key=lambda path: int(path.name.split(".")[0]))
    if not checkpoints:  # nothing could clean up: every commit older than the retention stayed
        return [path for path in log_dir.glob("*.json") if path.stat().st_mtime < time.time() - retention_hours * 3600]
    cutoff = checkpoints[-1].stat().st_mtime - retention_hours * 3600
    expired = [int(path.name.split(".")[0]) for path in checkpoints if path.stat().st_mtime < cutoff]
    if not expired:
        return []
    return [path for path in log_dir.glob("*.json") if int(path.stem) < expired[-1] and path.stat().st_mtime < cutoff]


def print_window_series(samples: list[Sample]) -> None:
    """Bytes per row in consecutive windows of the run (a tenth of it, 50 to 1,000 flushes):
    whether the cost keeps growing with uptime or levels off once the files holding the
    updated rows reach their size bound."""
    points = [sample.flushes for sample in samples]
    span = max(50, min(1000, points[-1] // 10 // 50 * 50))
    series = [(start, window_rate(samples, start, start + span)[0]) for start in range(0, points[-1] - span + 1, span)
              if start in points and start + span in points]
    print(f"bytes per row by window of {span:,} flushes: " + ", ".join(f"{start + 1}-{start + span}: {rate:,.0f}" for start, rate in series))


def report_local(root_path: Path, root: str, args: argparse.Namespace, samples: list[Sample], maintenance: Maintenance,
                 rows: int, row_bytes: int, json_bytes: int) -> list[tuple[str, bool]]:
    """Files per table, bytes written (overall and in windows), analyst reads: the goals' figures."""
    print(f"\n{'table':34} {'data files':>10} {'log json':>9} {'checkpoints':>11} {'rows':>9} {'MiB written':>11}")
    max_files = live_bytes = 0
    checkpoints_everywhere, logs_bounded = True, True
    stale_total = removed_total = 0
    for name in TABLES:
        for label, uri in ((name, table_uri(root, name)), (f"{name} (clocks)", clock_table_uri(root, name))):
            if not DeltaTable.is_deltatable(uri):
                continue
            table = DeltaTable(uri)
            files = len(table.file_uris())
            log_dir = Path(uri) / "_delta_log"
            logs = len(list(log_dir.glob("*.json")))
            checkpoints = len(list(log_dir.glob("*.checkpoint*.parquet")))
            actions = pa.table(table.get_add_actions(flatten=True))
            count = int(pc.sum(actions["num_records"]).as_py() or 0)
            live_bytes += int(pc.sum(actions["size_bytes"]).as_py() or 0)
            max_files = max(max_files, files)
            if table.version() >= args.checkpoint_after_commits:  # a clock table with fewer commits needs no checkpoint
                checkpoints_everywhere &= checkpoints > 0 or args.no_maintenance
                stale = stale_log_files(log_dir, args.log_retention_hours)
                logs_bounded &= not stale
                stale_total += len(stale)
                removed_total += table.version() + 1 - logs
            folder = Path(uri).relative_to(root_path).as_posix()
            table_bytes = samples[-1].table_bytes.get(folder, 0) - samples[0].table_bytes.get(folder, 0)
            print(f"{label:34} {files:>10,} {logs:>9,} {checkpoints:>11,} {count:>9,} {table_bytes / 2**20:>11,.1f}")

    data_bytes = samples[-1].data_bytes - samples[0].data_bytes
    log_bytes = tree_bytes(root_path, "*.json") + tree_bytes(root_path, "*.checkpoint*.parquet")
    row_size = row_bytes / rows
    per_row = data_bytes / rows
    json_size = json_bytes / rows
    print(f"\nlive data files: {live_bytes / 2**20:,.1f} MiB"
          + (f" (after {args.warm_hours:g} hours of warm-up)" if args.warm_hours else f" ({live_bytes / rows:,.0f} bytes per row written)"))
    print(f"bytes written: {data_bytes / 2**20:,.1f} MiB of data files, {log_bytes / 2**20:,.1f} MiB of log (on disk now); "
          f"{per_row:,.0f} data bytes per row written; a row's own size: {row_size:,.0f} bytes in Arrow ({per_row / row_size:.1f}x), "
          f"{json_size:,.0f} bytes as JSON in its message ({per_row / json_size:.1f}x)")
    goals: list[tuple[str, bool]] = []
    points = [sample.flushes for sample in samples]
    if args.trickle:
        middle = next(sample.flushes for sample in samples[1:] if sample.live)
        first_rate, first_bytes, first_rows = window_rate(samples, 0, middle)
        second_rate, second_bytes, second_rows = window_rate(samples, middle, points[-1])
        halves = second_bytes / max(first_bytes, 1)
        print(f"first half (flushes 1-{middle}): {first_bytes / 2**20:,.1f} MiB for {first_rows:,} rows ({first_rate:,.0f} bytes per row); "
              f"second half: {second_bytes / 2**20:,.1f} MiB for {second_rows:,} rows ({second_rate:,.0f} bytes per row)")
        print_halves_by_table(samples, middle)
        goals += [(f"bytes written per row <= 4 KiB ({per_row:,.0f} bytes)", per_row <= 4096),
                  (f"second half writes <= 1.3x the bytes of the first ({halves:.2f}x)", halves <= 1.3)]
    else:
        print_window_series(samples)
        goals += soak_windows(samples, maintenance, args.warm_hours)

    before = analyst_reads(root)
    compact_started = time.perf_counter()
    for name in ANALYST_TABLES:
        maintain(table_uri(root, name), compact=True, checkpoint=True, vacuum=False, dry_run=False)
    compact_s = time.perf_counter() - compact_started
    after = analyst_reads(root)
    print(f"\nfull read ({'; '.join(f'{DeltaTable(table_uri(root, n)).version()} versions of {n}' for n in ANALYST_TABLES)}), "
          f"manual compaction took {compact_s:.1f} s:")
    read_ratio = 0.0
    for key in before:
        ratio = before[key] / max(after[key], 1e-9)
        read_ratio = max(read_ratio, ratio)
        print(f"  {key:32} {before[key]:.3f} s as left by the writer, {after[key]:.3f} s after a full compaction ({ratio:.1f}x)")
    goals += [
        (f"data files per table bounded (max {max_files})", max_files <= 300),
        (f"checkpoints exist, old log files gone ({removed_total:,} removed, {stale_total:,} older than the retention left)",
         checkpoints_everywhere and logs_bounded),
        (f"bytes per row <= 10x the row's Arrow size ({per_row / row_size:.1f}x)", per_row <= 10 * row_size),
        (f"analyst read within 2x of compacted ({read_ratio:.1f}x)", read_ratio <= 2.0),
    ]
    return goals


if __name__ == "__main__":
    sys.exit(main())
