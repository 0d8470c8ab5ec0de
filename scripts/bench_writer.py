"""Benchmark the entity writer's Delta merge: rows/s into a projects table that already holds rows.

    .venv/bin/python scripts/bench_writer.py [--existing-rows 1000000] [--rows 200000] [--batch-rows 20000]
    .venv/bin/python scripts/bench_writer.py --existing-rows 50000 --rows 40000     # quick
    .venv/bin/python scripts/bench_writer.py --existing-rows 20000 --rows 20000 --batch-rows 5000 \
        --tables-root s3://bucket/bench --storage-option AWS_ENDPOINT_URL=http://127.0.0.1:9000 ...
    .venv/bin/python scripts/bench_writer.py --existing-rows 20000 --rows 20000 --batch-rows 5000 --local-s3

With `--tables-root URI` (or `--local-s3`: the tests' S3 server, started for the run) the whole
benchmark runs twice, in a local folder and under that URI, and prints both figures.

1. Seeds `claimx_projects` (and its merge-clock table) with --existing-rows rows through the
   writer itself, in key order, then compacts: the layout a maintained table has.
2. Merges --rows more rows in flushes of --batch-rows (the writer's `max_rows`) exactly as the
   worker does (`DeltaTableWriter.write`: fold per key, read clocks, MERGE clocks, MERGE
   entities, app transactions in both commits). The stream: --update-fraction of the rows
   update existing projects, drawn from the newest --hot-fraction of the key space at that
   moment (claims are worked on while they are recent, so the window slides as projects are
   created; `--hot-fraction 1` is the uniform worst case), the rest are new projects;
   --minimal-fraction of the rows are minimal update rows (one column set).
3. Appends the same rows with plain `write_deltalake(mode="append")`: no merge, no read, the
   ceiling for getting these rows into Delta at all.
4. Converts one flush worth of entity-rows messages (JSON-ready dicts) to typed Arrow, the CPU
   the worker spends before the merge.

Prints rows/s merged, the ceiling, Delta commits per 100,000 rows and the file counts. Goal:
>= 30,000 rows/s merged.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kafka_pipeline.claimx.entity_rows import EntityRowsMessage  # noqa: E402
from kafka_pipeline.claimx.schemas import PROJECTS  # noqa: E402
from kafka_pipeline.commands.arguments import storage_option  # noqa: E402
from kafka_pipeline.delta import merge_rule  # noqa: E402
from kafka_pipeline.delta.storage import TableRoot, join_uri  # noqa: E402
from kafka_pipeline.delta.table_writer import DeltaTableWriter  # noqa: E402
from kafka_pipeline.maintenance.operations import maintain  # noqa: E402
from kafka_pipeline.maintenance.table_layout import CLOCK_FILE_RATIO, ENTITY_FILE_BYTES  # noqa: E402
from kafka_pipeline.workers.writer.row_conversion import BatchBuilder  # noqa: E402

GOAL_ROWS_PER_S = 30_000
T0_US = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
APP = "bench:claimx.entity_rows:0"
SEED_APP = "bench-seed:claimx.entity_rows:0"
INPUT_SCHEMA = merge_rule.input_schema(PROJECTS)


def key_of(n: int) -> str:
    return f"{n:09d}"  # fixed width: text order is numeric order, so files hold key ranges


def project_rows(numbers: list[int], *, first_offset: int, first_second: int, minimal_fraction: float, seed: int,
                 app: str = APP) -> pa.Table:
    """Rows for `numbers` (project numbers), vectorised; event times one second apart from `first_second`."""
    n = len(numbers)
    rng = random.Random(seed)
    index = pa.array(range(n), pa.int64())
    salted = pc.bit_wise_xor(index, pa.scalar(seed * 2654435761 % (1 << 31), pa.int64()))
    minimal = pa.array([rng.random() < minimal_fraction for _ in range(n)])
    sometimes_null = pc.equal(pc.bit_wise_and(salted, pa.scalar(7, pa.int64())), pa.scalar(0, pa.int64()))  # 1 in 8
    columns: dict[str, pa.Array] = {"project_id": pa.array([key_of(x) for x in numbers], pa.string())}
    for position, name in enumerate(PROJECTS.value_columns):
        type_ = PROJECTS.schema.field(name).type
        if pa.types.is_string(type_):
            values = pc.binary_join_element_wise(
                pa.scalar(name), pc.cast(pc.bit_wise_and(salted, pa.scalar(255, pa.int64())), pa.string()), pa.scalar("-")
            )
        elif pa.types.is_timestamp(type_):
            values = pc.cast(pc.add(pc.multiply(salted, pa.scalar(60_000_000, pa.int64())), pa.scalar(T0_US, pa.int64())), type_)
        elif pa.types.is_int64(type_):
            values = pc.add(pc.bit_wise_and(salted, pa.scalar(63, pa.int64())), pa.scalar(1950, pa.int64()))
        elif pa.types.is_float64(type_):
            values = pc.multiply(pc.cast(salted, pa.float64()), pa.scalar(0.5))
        else:
            values = pc.equal(pc.bit_wise_and(salted, pa.scalar(1, pa.int64())), pa.scalar(0, pa.int64()))
        keep = pc.invert(pc.or_(minimal, sometimes_null)) if name != "master_file_name" else pc.invert(sometimes_null)
        columns[name] = pc.if_else(keep, values, pa.scalar(None, type_))
        sometimes_null = pc.equal(pc.bit_wise_and(pc.add(salted, pa.scalar(position, pa.int64())), pa.scalar(7, pa.int64())), pa.scalar(0, pa.int64()))
    columns["trace_id"] = pc.binary_join_element_wise(pa.scalar(f"bench-{seed}"), pc.cast(index, pa.string()), pa.scalar("-"))
    columns["event_time"] = pc.cast(pc.add(pc.multiply(pc.add(index, pa.scalar(first_second, pa.int64())), pa.scalar(1_000_000, pa.int64())),
                                           pa.scalar(T0_US, pa.int64())), merge_rule.TIMESTAMP)
    columns[merge_rule.SEQ] = index
    columns[merge_rule.APP] = pa.repeat(pa.scalar(app, pa.string()), n)
    columns[merge_rule.OFFSET] = pc.add(index, pa.scalar(first_offset, pa.int64()))
    return pa.table(columns, schema=INPUT_SCHEMA)


def open_delta(uri: str, options: Mapping[str, str]) -> DeltaTable:
    return DeltaTable(uri, storage_options=dict(options) or None)


def table_versions(writer: DeltaTableWriter) -> int:
    return open_delta(writer.uri, writer.storage_options).version() + open_delta(writer.clock_uri, writer.storage_options).version()


def seed(writer: DeltaTableWriter, existing: int, chunk: int) -> float:
    started = time.perf_counter()
    for start in range(0, existing, chunk):
        numbers = list(range(start, min(existing, start + chunk)))
        rows = project_rows(numbers, first_offset=start, first_second=start, minimal_fraction=0.0, seed=start, app=SEED_APP)
        writer.write(rows, {SEED_APP: start + len(numbers) - 1})
    for uri in (writer.uri, writer.clock_uri):
        maintain(uri, checkpoint=True, vacuum=False, dry_run=False, storage_options=writer.storage_options)
    return time.perf_counter() - started


def stream(args: argparse.Namespace) -> list[pa.Table]:
    """The benchmark's flushes: updates of hot existing projects mixed with new ones."""
    rng = random.Random(7)
    hot = max(1, int(args.existing_rows * args.hot_fraction))
    next_new = args.existing_rows
    batches, offset, second = [], 0, args.existing_rows + 10
    for b in range(0, args.rows, args.batch_rows):
        size = min(args.batch_rows, args.rows - b)
        numbers = []
        for _ in range(size):
            if next_new and rng.random() < args.update_fraction:
                # the hot window slides: recent projects, including the ones created meanwhile
                numbers.append(next_new - 1 - rng.randrange(min(hot, next_new)))
            else:
                numbers.append(next_new)
                next_new += 1
        batches.append(project_rows(numbers, first_offset=offset, first_second=second, minimal_fraction=args.minimal_fraction, seed=b + 1))
        offset += size
        second += size
    return batches


def bench_merge(writer: DeltaTableWriter, batches: list[pa.Table]) -> dict[str, float]:
    versions_before = table_versions(writer)
    seconds: list[float] = []
    changed = files_added = 0
    for batch in batches:
        started = time.perf_counter()
        result = writer.write(batch, {APP: batch[merge_rule.OFFSET][-1].as_py()})
        seconds.append(time.perf_counter() - started)
        changed += result.keys_changed
        files_added += result.files_added
    rows = sum(b.num_rows for b in batches)
    commits = table_versions(writer) - versions_before
    merge_ms = {name: sum(h["operationMetrics"].get("execution_time_ms", 0)
                          for h in open_delta(uri, writer.storage_options).history(len(batches)))
                for name, uri in (("entity", writer.uri), ("clock", writer.clock_uri))}
    return {
        "entity_merge_s": merge_ms["entity"] / 1000,
        "clock_merge_s": merge_ms["clock"] / 1000,
        "rows": rows,
        "seconds": sum(seconds),
        "rows_per_s": rows / sum(seconds),
        "flush_p50_s": statistics.median(seconds),
        "flush_max_s": max(seconds),
        "commits_per_100k": commits / rows * 100_000,
        "commits_per_flush": commits / len(batches),
        "files_added_per_flush": files_added / len(batches),
        "keys_changed": changed,
    }


def bench_append(uri: str, batches: list[pa.Table], options: Mapping[str, str]) -> float:
    started = time.perf_counter()
    for batch in batches:
        data = batch.drop_columns([merge_rule.SEQ, merge_rule.APP, merge_rule.OFFSET])
        write_deltalake(uri, data, mode="append", storage_options=dict(options) or None)
    return sum(b.num_rows for b in batches) / (time.perf_counter() - started)


def bench_conversion(rows: int) -> float:
    """JSON-ready entity-rows messages -> typed Arrow (what a flush does before merging)."""
    rng = random.Random(3)
    at = datetime(2024, 6, 1, tzinfo=UTC)
    messages = []
    for i in range(rows):
        row = {"project_id": 9_000_000 + rng.randrange(50_000), "status": "OPEN", "city": "Austin", "street1": f"{i} Main St",
               "year_built": 1990, "square_footage": 1200.5, "date_of_loss": "2024-05-30T10:00:00Z", "date_received": "2024-05-31T08:00:00",
               "customer_first_name": "Ann", "customer_last_name": "Lee", "primary_email": "ann@example.com", "company_name": "Acme",
               "xa_autolink_fail": None, "policyholder_invited_at": None}
        messages.append(EntityRowsMessage(trace_id=f"t{i}", event_type="PROJECT_CREATED", project_id=str(row["project_id"]),
                                          event_time=at + timedelta(seconds=i), rows={"claimx_projects": [row]}))
    started = time.perf_counter()
    builder = BatchBuilder()
    for offset, message in enumerate(messages):
        builder.add(message, app=APP, offset=offset)
    builder.tables()
    return rows / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--existing-rows", type=int, default=1_000_000, help="rows in the table before the benchmark (default 1,000,000)")
    parser.add_argument("--rows", type=int, default=200_000, help="rows to merge (default 200,000)")
    parser.add_argument("--batch-rows", type=int, default=20_000, help="rows per flush, the writer's max_rows (default 20,000)")
    parser.add_argument("--update-fraction", type=float, default=0.5, help="share of rows that update existing projects (default 0.5)")
    parser.add_argument("--hot-fraction", type=float, default=0.05,
                        help="updates hit the newest this share of projects (default 0.05, a sliding window; 1 = uniform)")
    parser.add_argument("--minimal-fraction", type=float, default=0.2, help="share of minimal update rows (default 0.2)")
    default_mb = ENTITY_FILE_BYTES / 1024 / 1024
    parser.add_argument("--target-file-mb", type=float, default=default_mb,
                        help=f"delta.targetFileSize of the entity table, MiB (default {default_mb:g}: the writer's)")
    parser.add_argument("--clock-file-mb", type=float,
                        help=f"delta.targetFileSize of the clock table, MiB (default: the entity size / {CLOCK_FILE_RATIO})")
    parser.add_argument("--streamed-exec", action="store_true", help="MERGE with streamed_exec=True (no source-derived file pruning)")
    parser.add_argument("--seed-chunk", type=int, default=250_000, help="rows per seeding write (default 250,000)")
    parser.add_argument("--root", help="folder for the local tables (default: a temporary folder, removed afterwards)")
    parser.add_argument("--tables-root", metavar="URI",
                        help="also run the benchmark under this URI (e.g. s3://bucket/prefix; a fresh sub-prefix per run)")
    parser.add_argument("--storage-option", dest="storage_options", type=storage_option, action="append", default=[],
                        metavar="KEY=VALUE", help="a deltalake storage option for --tables-root (repeatable)")
    parser.add_argument("--local-s3", action="store_true",
                        help="also run it on the tests' local S3 server (moto, started for the run; needs the dev extra)")
    args = parser.parse_args()
    if min(args.rows, args.batch_rows, args.seed_chunk) < 1 or args.existing_rows < 0:
        parser.error("--rows, --batch-rows and --seed-chunk must be at least 1, --existing-rows at least 0")
    if not (0 <= args.update_fraction <= 1 and 0 < args.hot_fraction <= 1 and 0 <= args.minimal_fraction <= 1):
        parser.error("fractions must lie in [0, 1] (--hot-fraction above 0)")

    if args.local_s3 and args.tables_root:
        parser.error("--local-s3 and --tables-root: one or the other")
    clock_mb = args.clock_file_mb if args.clock_file_mb is not None else args.target_file_mb / CLOCK_FILE_RATIO
    local = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="bench-writer-"))
    figures: dict[str, float] = {}
    try:
        figures["local folder"] = bench_root(args, TableRoot(str(local)), clock_mb)
        with remote_root(args) as remote:
            if remote is not None:
                figures[remote.uri] = bench_root(args, remote, clock_mb)
    finally:
        if not args.root:
            shutil.rmtree(local, ignore_errors=True)
    if len(figures) > 1:
        print("rows/s merged, same stream: " + " | ".join(f"{where}: {rate:,.0f}" for where, rate in figures.items()))
    return 0


@contextmanager
def remote_root(args: argparse.Namespace) -> Iterator[TableRoot | None]:
    """The object-store root to benchmark besides the local folder (a fresh prefix per run)."""
    if args.local_s3:
        from tests.fixtures.s3 import S3Server  # noqa: PLC0415 - dev extra (moto) only when asked for

        server = S3Server(Path(tempfile.mkdtemp(prefix="bench-s3-")))
        server.start()
        try:
            yield TableRoot(f"s3://{server.new_bucket()}/bench", server.storage_options())
        finally:
            server.stop()
    elif args.tables_root:
        yield TableRoot(join_uri(args.tables_root, f"bench-{uuid.uuid4().hex[:8]}"), dict(args.storage_options))
    else:
        yield None


def bench_root(args: argparse.Namespace, root: TableRoot, clock_mb: float) -> float:
    """The whole benchmark under `root`; prints its figures, returns rows/s merged."""
    print(f"== {root.display()}")
    options = dict(root.storage_options)
    writer = DeltaTableWriter(
        PROJECTS,
        join_uri(root.uri, "merge"),
        storage_options=options,
        streamed_exec=args.streamed_exec,
        configuration={"delta.targetFileSize": str(int(args.target_file_mb * 1024 * 1024))},
        clock_configuration={"delta.targetFileSize": str(int(clock_mb * 1024 * 1024))},
    )
    seed_s = seed(writer, args.existing_rows, args.seed_chunk) if args.existing_rows else 0.0
    files_before = len(open_delta(writer.uri, options).file_uris()) if args.existing_rows else 0
    print(f"seeded {args.existing_rows:,} rows in {seed_s:.1f} s ({files_before} files after compaction)")

    batches = stream(args)
    merged = bench_merge(writer, batches)
    files_after = len(open_delta(writer.uri, options).file_uris())
    ceiling = bench_append(root.table_uri("append"), batches, options)
    conversion = bench_conversion(min(args.batch_rows, 20_000))

    print(f"stream: {args.rows:,} rows in flushes of {args.batch_rows:,}; {args.update_fraction:.0%} updates of the newest "
          f"{args.hot_fraction:.0%} of projects, {args.minimal_fraction:.0%} minimal rows; streamed_exec={args.streamed_exec}")
    print(f"merge  : {merged['rows_per_s']:>10,.0f} rows/s   (flush p50 {merged['flush_p50_s']:.2f} s, max {merged['flush_max_s']:.2f} s; "
          f"{merged['keys_changed']:,.0f} keys changed)")
    print(f"append : {ceiling:>10,.0f} rows/s   (plain write_deltalake append of the same rows: the ceiling)")
    other = merged["seconds"] - merged["entity_merge_s"] - merged["clock_merge_s"]
    print(f"time   : entity MERGE {merged['entity_merge_s']:.1f} s, clock MERGE {merged['clock_merge_s']:.1f} s, "
          f"fold/read/resolve {other:.1f} s, of {merged['seconds']:.1f} s")
    print(f"commits: {merged['commits_per_100k']:.1f} Delta commits per 100,000 rows (entity + clock table); per flush "
          f"{merged['commits_per_flush']:.2f} commits, {merged['files_added_per_flush']:.1f} data files added")
    print(f"files  : {files_before} -> {files_after} in the entity table")
    print(f"convert: {conversion:>10,.0f} rows/s   (entity-rows messages -> typed Arrow, one thread)")
    verdict = "meets" if merged["rows_per_s"] >= GOAL_ROWS_PER_S else "misses"
    print(f"goal   : {GOAL_ROWS_PER_S:,} rows/s merged -> {verdict}")
    return float(merged["rows_per_s"])


if __name__ == "__main__":
    sys.exit(main())
