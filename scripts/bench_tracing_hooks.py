#!/usr/bin/env python
"""What the tracing hooks cost per event, off (no OTEL_* variables) and on (an SDK provider whose
spans go to a processor that drops them: the cost of making spans, not of exporting them).

    python scripts/bench_tracing_hooks.py [--events 200000]

Times the enrichment worker's per-event hooks alone: the `traced_consume` wrapper around an
event's processing and `with_trace_headers` on the message it produces, against the same
coroutine undecorated. Prints nanoseconds per event for each; `scripts/bench_enrich.py
[--otlp-sink]` gives the whole worker's events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from kafka_pipeline.observability import tracing


@dataclass
class Record:
    topic: str = "claimx.events"
    partition: int = 0
    offset: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class Event:
    event_type: str = "PROJECT_CREATED"
    project_id: str = "4711"
    trace_id: str = "t" * 64


class Dropping(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class Worker:
    async def plain(self, record: Record, event: Event) -> str:
        tracing.with_trace_headers(None)
        return "succeeded"

    @tracing.traced_consume("claimx.event", fields=("event_type", "project_id", "trace_id"))
    async def traced(self, record: Record, event: Event) -> str:
        tracing.with_trace_headers(None)
        return "succeeded"


async def per_event_ns(call: Callable[[Record, Event], Awaitable[str]], events: int) -> float:
    record, event = Record(), Event()
    started = time.perf_counter_ns()
    for _ in range(events):
        await call(record, event)
    return (time.perf_counter_ns() - started) / events


async def measure(events: int) -> dict[str, float]:
    worker = Worker()
    tracing.use_provider(None)
    await per_event_ns(worker.traced, 1000)  # warm up
    results = {"undecorated": await per_event_ns(worker.plain, events), "off": await per_event_ns(worker.traced, events)}
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Dropping()))
    tracing.use_provider(provider)
    try:
        results["on"] = await per_event_ns(worker.traced, events)
    finally:
        tracing.use_provider(None)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench_tracing_hooks.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per measurement (default: 200000)")
    args = parser.parse_args()
    results = asyncio.run(measure(args.events))
    for name, ns in results.items():
        print(f"{name:<12} {ns:8.0f} ns per event")
    print(f"tracing off costs {results['off'] - results['undecorated']:.0f} ns per event; on (spans made, not exported) "
          f"{results['on'] - results['undecorated']:.0f} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
