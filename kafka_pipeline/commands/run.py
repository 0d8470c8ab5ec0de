"""`kafka-pipeline run`: the whole pipeline on one machine, no Docker.

Starts a broker (tansu, in memory, by default; `--broker kafka`: Apache Kafka from its jars
with the log directory on disk), the ClaimX API simulator, the enrichment worker, the entity
writer and the retry scheduler; replays the bundled sample events (or `--events FILE`); with
`--until-drained` waits until every event is written and prints a row count per table.
Every worker gets an ops port; the stack's connection details go to `data/stack.json`, which the
other commands read while this runs (`embedded.stack_file`). The last line is the summary
(`--until-drained`) or the stop line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import time
from importlib import resources
from pathlib import Path

import httpx

from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.commands.arguments import add_storage_arguments, apply_storage_arguments
from kafka_pipeline.config import load_settings
from kafka_pipeline.delta.storage import check_commit_safety, table_root
from kafka_pipeline.embedded.stack import EmbeddedStack
from kafka_pipeline.embedded.stack_file import remove_stack_file, write_stack_file
from kafka_pipeline.errors import UsageError
from kafka_pipeline.maintenance.operations import table_row_counts
from kafka_pipeline.ops.replay import replay
from kafka_pipeline.ops.replay_sources import FileSource

READY_TIMEOUT_S = 60.0  # how long `run` waits for its workers' /health/ready before going on

NAME = "run"
HELP = "Run the whole pipeline on this machine, no Docker."
DESCRIPTION = ("Run the embedded all-in-one pipeline: broker (tansu in memory, or --broker kafka: Apache Kafka "
               "on disk) + API simulator + workers + replay of sample events.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=Path, help="JSON-lines events to replay (default: the bundled sample)")
    parser.add_argument("--no-replay", action="store_true", help="start the stack without replaying anything")
    parser.add_argument("--until-drained", action="store_true",
                        help="exit once every event is processed and written, printing row counts per table")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="with --until-drained: give up after this long")
    add_storage_arguments(parser)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="simulated ClaimX API latency (default 20)")
    parser.add_argument("--log-dir", type=Path, help="write each component's log to a file here instead of the terminal")
    parser.add_argument("--broker", choices=("tansu", "kafka"), default="tansu",
                        help="tansu (default): in memory, what the workers had not consumed is lost when run stops; "
                             "kafka: Apache Kafka (needs Java 17+ and its jars: scripts/fetch-kafka-jars.sh), "
                             "topics and offsets kept in --kafka-data-dir")
    parser.add_argument("--kafka-data-dir", type=Path, default=Path("data/kafka"),
                        help="with --broker kafka: the broker's log directory, reused by the next run (default: ./data/kafka)")


def bundled_sample() -> Path:
    return Path(str(resources.files("kafka_pipeline") / "data" / "sample_events.jsonl"))


def run(args: argparse.Namespace) -> int:
    events = args.events or bundled_sample()
    if not args.no_replay and not events.is_file():
        raise UsageError(f"no such events file: {events}")
    if args.timeout_s <= 0:
        raise UsageError("--timeout-s must be > 0")
    os.environ.setdefault("KP_ENV", "embedded")
    settings = apply_storage_arguments(load_settings(), args)
    root = table_root(settings.delta)
    check_commit_safety(settings.delta.storage_options, single_writer_acknowledged=settings.delta.single_writer_acknowledged)
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    stack = EmbeddedStack(settings, log_dir=args.log_dir, simulator_options={"latency_ms": args.latency_ms},
                          broker_kind=args.broker, kafka_data_dir=args.kafka_data_dir.resolve())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C stops everything even when run was started with SIGINT ignored (a background job
    # of a script inherits that, and Python then installs no KeyboardInterrupt of its own)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    summary: list[str] = []  # printed after the stack stopped: the workers' last log lines come before it
    stopped_by = "stopped"
    try:
        stack.start_services()
        assert stack.broker is not None and stack.simulator is not None
        print(f"broker      KAFKA_BOOTSTRAP_SERVERS={stack.broker.bootstrap_servers} ({args.broker})", flush=True)
        if args.broker == "kafka":
            print(f"kafka data  {args.kafka_data_dir.resolve()}", flush=True)
        print(f"simulator   CLAIMX_API_URL={stack.simulator.url}", flush=True)
        print(f"tables      DELTA_TABLES_ROOT={root.display()}", flush=True)
        asyncio.run(stack.create_topics())
        stack.start_workers()
        for name, url in stack.ops_urls.items():
            print(f"ops         {url}/metrics  {url}/health/ready  ({name})", flush=True)
        stack_file = write_stack_file(settings, stack.ops_urls)
        print(f"stack file  {stack_file} (status, dlq, tables, replay, reset-offsets, inject use it while this runs)", flush=True)
        waiting = asyncio.run(wait_until_ready(stack.ops_urls, READY_TIMEOUT_S))
        print("workers     " + (f"not ready after {READY_TIMEOUT_S:.0f}s: {', '.join(waiting)}" if waiting else
                                f"ready: {', '.join(stack.ops_urls)}"), flush=True)
        if not args.no_replay:
            replayed = asyncio.run(replay(settings.kafka, FileSource([events]), progress=sys.stderr.isatty()))
            print(f"replayed    {replayed.total_sent} events from {events}", flush=True)
        if args.until_drained:
            asyncio.run(stack.wait_until_drained(timeout_s=args.timeout_s))
            dead = asyncio.run(stack.dead_letter_count())
            summary = summary_lines(settings.delta.tables_root, settings.delta.storage_options, dead)
            return 0
        print("running; Ctrl-C stops everything", flush=True)
        while not stop.wait(0.5):
            for name, worker in stack.workers.items():
                if not worker.running:
                    print(f"worker {name} exited with code {worker.returncode}", file=sys.stderr)
                    stopped_by = "stopped after a worker failed"
                    return 1
        stopped_by = "stopped (SIGTERM)"
        return 0
    except KeyboardInterrupt:
        stopped_by = "stopped (Ctrl-C)"
        return 0
    finally:
        remove_stack_file()
        codes = stack.stop()
        failed = {name: code for name, code in codes.items() if code not in (0, None, -signal.SIGTERM)}
        if failed:
            print(f"workers exited with errors: {failed}", file=sys.stderr)
        if summary:
            print("\n".join(summary), flush=True)
        elif stack.workers:
            print(f"{stopped_by}: workers, simulator and broker; tables kept in {root.display()}", flush=True)


async def wait_until_ready(ops_urls: dict[str, str], timeout_s: float) -> list[str]:
    """Poll each worker's /health/ready until all answer 200; the names still not ready at the deadline."""
    waiting = dict(ops_urls)
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=1.0) as client:
        while waiting and time.monotonic() < deadline:
            for name, url in list(waiting.items()):
                try:
                    if (await client.get(url + "/health/ready")).status_code == 200:
                        del waiting[name]
                except httpx.HTTPError:
                    pass  # not listening yet
            if waiting:
                await asyncio.sleep(0.25)
    return list(waiting)


def summary_lines(root: str, storage_options: dict[str, str], dead_letters: int) -> list[str]:
    counts = table_row_counts(root, list(TABLES), storage_options)
    width = max(len(name) for name in TABLES)
    lines = ["drained: rows per table"]
    lines += [f"  {name:<{width}}  {counts.get(name, 0):>8}" for name in TABLES]
    lines.append(f"  {'dead letters':<{width}}  {dead_letters:>8}")
    return lines
