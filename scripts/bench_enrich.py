#!/usr/bin/env python
"""Benchmark the enrichment worker against the API simulator, next to the naive baseline.

    python scripts/bench_enrich.py                       # defaults: under a minute
    python scripts/bench_enrich.py --events 30000 --projects 1500 --latency-ms 50

Starts the embedded tansu broker and the ClaimX API simulator (`--latency-ms` per request) and
runs the same `EnrichmentWorker` twice on a generated event stream:

- optimized: `max_in_flight` events at once (default 256), the ProjectCache (single-flight
  project verification), per-project media batching;
- naive: one event in flight and a cache that never caches (`NoCache`: every event fetches its
  project), i.e. one event after another with every API call it needs (an event's project
  fetch still overlaps its own child fetch: it is the same worker code).

The naive run processes the first `--naive-events` events of the same stream (it is slow; its
events/s is steady after a few events). Both runs use the same API bounds: the default
`max_concurrency` (64) and `--api-rate` requests per second (default 5000: the simulator has no
quota, and the production default of 500/s would make the rate limit, not the worker, the
thing measured). Timing starts at the first consumed event (after the consumer group join) and
ends when the last event is finished (its rows acknowledged).
Export calls are read from the simulator's `/_stats`.

Tracing: off unless the OTEL_* variables ask (as in a worker); `--otlp-sink` turns it on and
exports every span over OTLP/HTTP to `scripts/otlp_sink.py`, started for the run on this
machine, and prints how many spans it received: `--otlp-sink` against no flag is the cost of
tracing.

CPU: the broker and the simulator are processes of their own, so this process's CPU time
(`time.process_time()`, every thread) over the timed window is the worker's; "µs/event" is that
divided by the events, the figure that decides how many events one core can enrich. Wall time
depends on what else the machine runs, CPU time much less. The goal (`CPU_GOAL_US_PER_EVENT`)
is the optimized run's: at the real API's bound of about 500 requests/s (about 1,600 events/s
with the cache) a worker at 150 µs/event uses a quarter of a core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka_pipeline.claimx.cache.project_cache import NoCache
from kafka_pipeline.config import Settings, load_settings
from kafka_pipeline.embedded.broker import EmbeddedBroker, free_port
from kafka_pipeline.kafka.clients import ensure_topics, make_producer
from kafka_pipeline.lifecycle import event_loop
from kafka_pipeline.lifecycle.garbage_collector import tune_for_long_running
from kafka_pipeline.observability import tracing
from kafka_pipeline.observability.logging import configure_logging
from kafka_pipeline.simulator import SimulatorProcess
from kafka_pipeline.simulator.events import generate_events
from kafka_pipeline.workers.enrich.worker import EnrichmentWorker

CPU_GOAL_US_PER_EVENT = 150.0
POLL_S = 0.02  # how often the bench looks at the worker's counters (its own CPU is in the figure)


@dataclass
class Result:
    mode: str
    events: int
    max_in_flight: int
    cache: str
    seconds: float
    cpu_seconds: float
    export_calls: int
    unique_projects: int
    api_calls: int

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_seconds / self.events * 1e6

    @property
    def exports_per_project(self) -> float:
        return self.export_calls / self.unique_projects if self.unique_projects else 0.0


def _project_of(line: str) -> str | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    value = obj.get("project_id", obj.get("projectId"))
    return None if value is None else str(value)


async def _produce(settings: Settings, lines: list[str]) -> None:
    kafka = settings.kafka
    await ensure_topics(kafka, [kafka.events_topic, kafka.entity_rows_topic, kafka.dlq_topic])
    producer = make_producer(kafka)
    await producer.start()
    try:
        for line in lines:
            key = _project_of(line)
            await producer.send(kafka.events_topic, line.encode(), key=key.encode() if key else None)
        await producer.flush()
    finally:
        await producer.stop()


async def _run(
    mode: str, broker: EmbeddedBroker, sim: SimulatorProcess, lines: list[str], *, max_in_flight: int, naive: bool, api_rate: float
) -> Result:
    suffix = uuid.uuid4().hex[:8]
    settings = load_settings(
        kafka={
            "bootstrap_servers": broker.bootstrap_servers,
            "events_topic": f"bench.events.{suffix}",
            "entity_rows_topic": f"bench.rows.{suffix}",
            "dlq_topic": f"bench.dlq.{suffix}",
            "retry_topic": f"bench.retry.{suffix}",
            "partitions": 6,
            "session_timeout_ms": 6000,
        },
        api={"url": sim.url, "token": sim.token, "max_requests_per_s": api_rate},
        enrich={"group_id": f"bench-{suffix}", "max_in_flight": max_in_flight, "stats_interval_s": 3600},
        worker={"name": f"bench-{mode}", "http_port": 0},
    )
    await _produce(settings, lines)
    sim.reset_stats()
    worker = EnrichmentWorker(settings, cache=NoCache() if naive else None)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        while worker.counts.consumed == 0:
            if task.done():
                task.result()
            await asyncio.sleep(0.001)
        started, cpu_started = time.perf_counter(), time.process_time()
        while worker.counts.processed < len(lines):
            if task.done():
                task.result()
            await asyncio.sleep(POLL_S)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        stop.set()
        await task
    stats = sim.stats()
    if worker.counts.dead_lettered:
        print(f"warning: {mode}: {worker.counts.dead_lettered} events dead-lettered", file=sys.stderr)
    return Result(
        mode=mode,
        events=len(lines),
        max_in_flight=max_in_flight,
        cache="none (NoCache)" if naive else "ProjectCache",
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        export_calls=stats["project"],
        unique_projects=len({p for p in map(_project_of, lines) if p}),
        api_calls=stats["total"],
    )


def _table(results: list[Result]) -> str:
    header = (f"{'mode':<10} {'events':>7} {'in flight':>9} {'cache':<15} {'seconds':>8} {'events/s':>9} {'µs/event':>9} "
              f"{'API calls':>9} {'exports':>8} {'exports/project':>15}")
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.mode:<10} {r.events:>7} {r.max_in_flight:>9} {r.cache:<15} {r.seconds:>8.2f} {r.events_per_s:>9.1f} {r.cpu_us_per_event:>9.1f} "
            f"{r.api_calls:>9} {r.export_calls:>8} {r.exports_per_project:>15.2f}"
        )
    return "\n".join(lines)


async def bench(args: argparse.Namespace) -> list[Result]:
    lines = generate_events(args.events, args.projects, seed=args.seed)
    naive_lines = lines[: args.naive_events]
    with EmbeddedBroker() as broker, SimulatorProcess(seed=args.seed, latency_ms=args.latency_ms) as sim:
        optimized = await _run("optimized", broker, sim, lines, max_in_flight=args.max_in_flight, naive=False, api_rate=args.api_rate)
        naive = await _run("naive", broker, sim, naive_lines, max_in_flight=1, naive=True, api_rate=args.api_rate)
    return [optimized, naive]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_enrich.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=_positive, default=10000, help="events in the stream (default: 10000)")
    parser.add_argument("--projects", type=_positive, default=500, help="distinct projects (default: 500)")
    parser.add_argument("--naive-events", type=_positive, default=300,
                        help="events the naive baseline processes: the stream's first N (default: 300)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="simulated API latency per request (default: 20)")
    parser.add_argument("--max-in-flight", type=_positive, default=256, help="events in flight, optimized run (default: 256)")
    parser.add_argument("--api-rate", type=float, default=5000.0,
                        help="the client's max_requests_per_s for both runs (default: 5000; the simulator has no quota, "
                             "while the production default of 500/s would cap the optimized run near 500 / API calls per event)")
    parser.add_argument("--seed", default="7", help="event stream and simulator data seed (default: 7)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--otlp-sink", action="store_true",
                        help="trace every event and export the spans over OTLP/HTTP to scripts/otlp_sink.py (started here)")
    return parser


def start_sink(folder: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """scripts/otlp_sink.py on a free port; OTEL_EXPORTER_OTLP_ENDPOINT points at it."""
    port, counts = free_port(), folder / "spans.json"
    sink = subprocess.Popen([sys.executable, str(Path(__file__).with_name("otlp_sink.py")), "--port", str(port), "--out", str(counts)],
                            stdout=subprocess.DEVNULL)
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
    return sink, counts


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.events < args.projects:
        print("bench_enrich.py: error: --events must be at least --projects", file=sys.stderr)
        return 2
    configure_logging("bench", level="WARNING")
    with tempfile.TemporaryDirectory() as folder:
        sink, counts = start_sink(Path(folder)) if args.otlp_sink else (None, None)
        try:
            traced = tracing.configure_tracing("bench")
            tune_for_long_running()  # as `kafka-pipeline enrich` does before its loop runs
            results = event_loop.run(bench(args))  # the loop `kafka-pipeline enrich` runs on
            tracing.shutdown()  # every span exported before the sink's count is read
        finally:
            if sink is not None:
                sink.terminate()
                sink.wait()
        exported = sum(json.loads(counts.read_text()).values()) if counts is not None and counts.exists() else 0
    print(f"tracing: {'on, ' + str(exported) + ' spans exported over OTLP' if traced else 'off'}", file=sys.stderr)
    optimized, naive = results
    speedup = optimized.events_per_s / naive.events_per_s
    if args.json:
        out: dict[str, Any] = {
            r.mode: {**r.__dict__, "events_per_s": r.events_per_s, "cpu_us_per_event": r.cpu_us_per_event, "exports_per_project": r.exports_per_project}
            for r in results
        }
        print(json.dumps({**out, "speedup": speedup, "latency_ms": args.latency_ms, "cpu_goal_us_per_event": CPU_GOAL_US_PER_EVENT,
                          "cpu_goal_met": optimized.cpu_us_per_event <= CPU_GOAL_US_PER_EVENT}, indent=2))
    else:
        print(f"enrichment worker vs simulator at {args.latency_ms:g} ms API latency "
              f"({args.projects} projects, API bound {args.api_rate:g} requests/s)\n")
        print(_table(results))
        print(f"\nspeed-up: {speedup:.1f}x the naive baseline's events/s; "
              f"export calls per unique project: {optimized.exports_per_project:.2f} (optimized) vs {naive.exports_per_project:.2f} (naive)")
        verdict = "meets" if optimized.cpu_us_per_event <= CPU_GOAL_US_PER_EVENT else "misses"
        print(f"CPU: {optimized.cpu_us_per_event:.1f} µs/event (worker process CPU / events, optimized run; "
              f"{optimized.cpu_seconds / optimized.api_calls * 1e6:.1f} µs per API call); goal <= {CPU_GOAL_US_PER_EVENT:g}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
