"""Benchmark merge cost against table size: rows/s of new rows and the writer's peak memory
into `claimx_events` and `claimx_projects` holding --sizes rows, side by side in one run.

    .venv/bin/python scripts/bench_table_size.py                                  # 1 M and 10 M
    .venv/bin/python scripts/bench_table_size.py --sizes 100000 1000000 --flushes 3   # quick

For each table and size:

1. A child process builds the base table and its merge-clock table in one bulk `write_deltalake`
   each (no flushes): rows in event-time order, as a stream writes them (events at a steady
   rate, --rows-per-s; projects with key-ordered ids), resolved by the merge rule's own pure
   functions so the clocks are exactly what the writer would have written; the writer's table
   properties (file sizes); then a checkpoint.
2. A fresh child process merges --flushes flushes of --batch-rows rows through
   `DeltaTableWriter.write` (the writer's path: fold, read clocks, MERGE clocks, MERGE entities,
   app transactions). Events: new events (new trace ids, event times just after the table's).
   Projects: new projects (the next ids), or with --project-updates that share of the rows
   updating the newest 5% of projects (bench_writer.py's stream). Its peak RSS (`ru_maxrss`) is the writer's peak memory.

Goals (issue 13): events at the largest size >= 30,000 rows/s and within 20% of the smallest;
projects >= 60,000 rows/s at the largest; peak memory at the largest within 1.5x of the smallest
and under 1.5 GB.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_writer  # noqa: E402

from kafka_pipeline.claimx.schemas import EVENTS, PROJECTS, TABLES  # noqa: E402
from kafka_pipeline.delta import merge_rule  # noqa: E402
from kafka_pipeline.delta.table_writer import DeltaTableWriter, clock_table_uri, table_uri  # noqa: E402
from kafka_pipeline.maintenance.table_layout import table_properties  # noqa: E402

T0_US = bench_writer.T0_US
APP = "bench:claimx.entity_rows:0"
CHUNK = 250_000
GOALS = {"events_rows_per_s": 30_000, "events_ratio": 0.8, "projects_rows_per_s": 60_000, "memory_ratio": 1.5, "memory_gb": 1.5}


def trace_ids(numbers: pa.Array, salt: str) -> pa.Array:
    """Hex SHA-256 trace ids, as the enrichment worker derives them: their order is random."""
    return pa.array([hashlib.sha256(f"{salt}{n}".encode()).hexdigest() for n in numbers.to_pylist()], pa.string())


def event_rows(first: int, count: int, *, first_offset: int, us_per_row: int, salt: str) -> pa.Table:
    """`count` events numbered from `first`, `us_per_row` apart in event time (input schema)."""
    index = pa.array(range(first, first + count), pa.int64())
    at_us = pc.add(pc.multiply(index, pa.scalar(us_per_row, pa.int64())), pa.scalar(T0_US, pa.int64()))
    at = pc.cast(at_us, merge_rule.TIMESTAMP)
    kinds = pa.array(["PROJECT_FILE_ADDED", "CUSTOM_TASK_ASSIGNED", "PROJECT_CREATED", "POLICYHOLDER_INVITED"])
    project = pc.cast(pc.add(pc.divide(index, pa.scalar(40, pa.int64())), pa.scalar(5_000_000, pa.int64())), pa.string())
    media = pc.if_else(pc.equal(pc.bit_wise_and(index, pa.scalar(3, pa.int64())), pa.scalar(0, pa.int64())),
                       pc.cast(index, pa.string()), pa.scalar(None, pa.string()))
    none = pa.nulls(count, pa.string())
    columns = {
        "trace_id": trace_ids(index, salt),
        "event_type": kinds.take(pc.bit_wise_and(index, pa.scalar(3, pa.int64()))),
        "project_id": project,
        "media_id": media,
        "task_assignment_id": none,
        "video_collaboration_id": none,
        "master_file_name": none,
        "ingested_at": at,
        "event_date": pc.cast(at, pa.date32()),
        "event_time": at,
        merge_rule.SEQ: pc.subtract(index, pa.scalar(first, pa.int64())),
        merge_rule.APP: pa.repeat(pa.scalar(APP, pa.string()), count),
        merge_rule.OFFSET: pc.add(pc.subtract(index, pa.scalar(first, pa.int64())), pa.scalar(first_offset, pa.int64())),
    }
    return pa.table(columns, schema=merge_rule.input_schema(EVENTS))


def base_rows(name: str, first: int, count: int, us_per_row: int) -> pa.Table:
    if name == EVENTS.name:
        return event_rows(first, count, first_offset=first, us_per_row=us_per_row, salt="base")
    rows = bench_writer.project_rows(list(range(first, first + count)), first_offset=first, first_second=first,
                                     minimal_fraction=0.0, seed=first)
    return rows


def build(name: str, root: str, size: int, us_per_row: int) -> float:
    """Child process: the base table and its clocks, one bulk write each."""
    spec = TABLES[name]
    started = time.perf_counter()
    now = datetime.now(UTC)
    entity_schema, clock_schema = spec.schema, merge_rule.clock_schema(spec)

    def resolved(part: str) -> Iterator[pa.RecordBatch]:
        for first in range(0, size, CHUNK):
            rows = base_rows(name, first, min(CHUNK, size - first), us_per_row)
            resolution = merge_rule.resolve(spec, merge_rule.combine(spec, rows), None, now)
            table = resolution.clock_rows if part == "clock" else resolution.source.select(entity_schema.names)
            yield from table.cast(clock_schema if part == "clock" else entity_schema).to_batches()

    entity_props, clock_props = table_properties(name)
    for part, uri, schema, props in (("entity", table_uri(root, name), entity_schema, entity_props),
                                     ("clock", clock_table_uri(root, name), clock_schema, clock_props)):
        reader = pa.RecordBatchReader.from_batches(schema, resolved(part))
        write_deltalake(uri, reader, mode="append", configuration=props, target_file_size=int(props["delta.targetFileSize"]))
        DeltaTable(uri).create_checkpoint()
    return time.perf_counter() - started


def merge(name: str, root: str, size: int, flushes: int, batch_rows: int, us_per_row: int, updates: float) -> dict[str, float]:
    """Child process: `flushes` flushes of new rows through the writer; its peak memory."""
    spec = TABLES[name]
    entity_props, clock_props = table_properties(name)
    writer = DeltaTableWriter(spec, root, configuration=entity_props, clock_configuration=clock_props)
    if name == EVENTS.name:
        batches = [event_rows(size + i * batch_rows, batch_rows, first_offset=i * batch_rows, us_per_row=us_per_row, salt="new")
                   for i in range(flushes)]
    else:
        args = argparse.Namespace(existing_rows=size, rows=flushes * batch_rows, batch_rows=batch_rows, update_fraction=updates,
                                  hot_fraction=0.05, minimal_fraction=0.2)
        batches = bench_writer.stream(args)
    writer.ensure()  # a long-running writer opens its tables once, not per flush
    seconds = []
    for batch in batches:
        started = time.perf_counter()
        writer.write(batch, {bench_writer.APP: batch[merge_rule.OFFSET][-1].as_py()})
        seconds.append(time.perf_counter() - started)
    rows = sum(b.num_rows for b in batches)
    files = len(DeltaTable(writer.uri).file_uris())
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rows_per_s": rows / sum(seconds), "flush_max_s": max(seconds), "peak_mb": peak_kb / 1024, "files": files}


def in_child(function: Callable[..., object], *args: object) -> object:
    """Run `function` in a fresh process (its peak memory is its own)."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000], help="rows in the table before merging")
    parser.add_argument("--flushes", type=int, default=5, help="flushes merged per table and size (default 5)")
    parser.add_argument("--batch-rows", type=int, default=20_000, help="rows per flush (default 20,000)")
    parser.add_argument("--rows-per-s", type=float, default=10.0, help="event rate of the base event log (default 10/s)")
    parser.add_argument("--project-updates", type=float, default=0.0,
                        help="share of project rows updating recent projects (default 0: new rows, as the goals are set)")
    parser.add_argument("--tables", nargs="+", default=[EVENTS.name, PROJECTS.name], choices=[EVENTS.name, PROJECTS.name])
    parser.add_argument("--root", help="folder for the tables (default: a temporary folder, removed afterwards)")
    args = parser.parse_args()
    if min(args.sizes) < 1 or args.flushes < 1 or args.batch_rows < 1 or args.rows_per_s <= 0:
        parser.error("--sizes, --flushes, --batch-rows and --rows-per-s must be positive")
    us_per_row = int(1_000_000 / args.rows_per_s)
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="bench-table-size-"))
    results: dict[tuple[str, int], dict[str, float]] = {}
    try:
        for name in args.tables:
            for size in args.sizes:
                where = str(root / f"{name}-{size}")
                built = in_child(build, name, where, size, us_per_row)
                result = in_child(merge, name, where, size, args.flushes, args.batch_rows, us_per_row, args.project_updates)
                assert isinstance(result, dict)
                results[(name, size)] = result
                print(f"{name:16} {size:>11,} rows (built in {built:.0f} s): {result['rows_per_s']:>8,.0f} rows/s, "
                      f"flush max {result['flush_max_s']:.2f} s, peak {result['peak_mb']:,.0f} MB, {result['files']} files", flush=True)
                shutil.rmtree(where, ignore_errors=True)
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)

    small, large = min(args.sizes), max(args.sizes)
    print(f"\n{'':16} " + "".join(f"{size:>24,}" for size in args.sizes))
    for name in args.tables:
        print(f"{name:16} " + "".join(f"{results[(name, s)]['rows_per_s']:>16,.0f} rows/s" for s in args.sizes))
        print(f"{'  peak memory':16} " + "".join(f"{results[(name, s)]['peak_mb']:>19,.0f} MB" for s in args.sizes))
    goals = []
    if EVENTS.name in args.tables:
        e_small, e_large = results[(EVENTS.name, small)], results[(EVENTS.name, large)]
        goals.append((f"events at {large:,} >= {GOALS['events_rows_per_s']:,} rows/s", e_large["rows_per_s"] >= GOALS["events_rows_per_s"]))
        goals.append((f"events at {large:,} within 20% of {small:,}", e_large["rows_per_s"] >= GOALS["events_ratio"] * e_small["rows_per_s"]))
    if PROJECTS.name in args.tables:
        p_large = results[(PROJECTS.name, large)]
        goals.append((f"projects at {large:,} >= {GOALS['projects_rows_per_s']:,} rows/s", p_large["rows_per_s"] >= GOALS["projects_rows_per_s"]))
    for name in args.tables:
        m_small, m_large = results[(name, small)]["peak_mb"], results[(name, large)]["peak_mb"]
        goals.append((f"{name} peak memory at {large:,} <= 1.5x of {small:,} and < 1.5 GB ({m_large / m_small:.2f}x)",
                       m_large <= GOALS["memory_ratio"] * m_small and m_large < GOALS["memory_gb"] * 1024))
    for text, met in goals:
        print(f"goal: {text} -> {'meets' if met else 'misses'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
