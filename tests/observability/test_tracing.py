"""Traces: one event followed from the events topic through its API calls to its Delta commit, on a
real broker, the simulator over HTTP and Delta tables, with the SDK's in-memory exporter; the
`traceparent` header across Kafka and HTTP; nothing at all while the OTEL_* variables are unset."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from kafka_pipeline.commands.run import bundled_sample
from kafka_pipeline.config import KafkaSettings, load_settings
from kafka_pipeline.delta.table_writer import table_uri
from kafka_pipeline.embedded.broker import free_port
from kafka_pipeline.kafka.clients import ensure_topics, make_producer
from kafka_pipeline.observability import tracing
from kafka_pipeline.ops.inject import build_event
from kafka_pipeline.simulator import SimulatorProcess
from kafka_pipeline.workers.enrich.worker import EnrichmentWorker
from kafka_pipeline.workers.writer.entity_writer import EntityWriter

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_provider(None)


def written(root: str, trace_id: str) -> bool:
    try:
        table = DeltaTable(table_uri(root, "claimx_events"))
    except Exception:  # noqa: BLE001 - not created yet
        return False
    return table.to_pyarrow_table(filters=[("trace_id", "=", trace_id)]).num_rows == 1


async def test_one_event_is_followed_from_the_topic_through_its_api_calls_to_its_delta_commit(
    kafka_settings: KafkaSettings, api: SimulatorProcess, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    root = str(tmp_path / "delta")
    settings = load_settings(
        kafka={**kafka_settings.model_dump(), "session_timeout_ms": 6000},
        api={"url": api.url, "token": api.token, "timeout_s": 5},
        delta={"tables_root": root},
        enrich={"group_id": f"enrich-{uuid.uuid4().hex[:8]}"},
        writer={"group_id": f"writer-{uuid.uuid4().hex[:8]}", "max_latency_s": 0.3},
        worker={"name": "traced", "shutdown_grace_s": 15},
    )
    kafka = settings.kafka
    raw, event = build_event("PROJECT_FILE_ADDED", "4711", media_id="4711001")
    upstream_tracer = TracerProvider().get_tracer("upstream")  # whoever published the event, in its own process
    with upstream_tracer.start_as_current_span("claimx publish") as upstream:
        await ensure_topics(kafka, [kafka.events_topic, kafka.entity_rows_topic, kafka.retry_topic, kafka.dlq_topic])
        tracing_headers = [("traceparent", f"00-{upstream.get_span_context().trace_id:032x}-"
                                           f"{upstream.get_span_context().span_id:016x}-01".encode())]
    producer = make_producer(kafka)
    await producer.start()
    try:
        await producer.send_and_wait(kafka.events_topic, raw, key=event.project_id.encode(), headers=tracing_headers)
    finally:
        await producer.stop()

    stop = asyncio.Event()
    tasks = [asyncio.create_task(EnrichmentWorker(settings).run(stop)), asyncio.create_task(EntityWriter(settings).run(stop))]
    try:
        deadline = time.monotonic() + 60
        while not await asyncio.to_thread(written, root, event.trace_id):
            assert time.monotonic() < deadline, "the event never reached claimx_events"
            assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)

    finished: list[ReadableSpan] = list(spans.get_finished_spans())
    upstream_context = upstream.get_span_context()
    # 1. the event's span: a child of the publisher's span, from the traceparent header on the events topic
    (event_span,) = [s for s in finished if s.name == "claimx.event" and s.attributes and s.attributes["claimx.trace_id"] == event.trace_id]
    assert event_span.context is not None and event_span.parent is not None and event_span.attributes is not None
    assert event_span.context.trace_id == upstream_context.trace_id and event_span.parent.span_id == upstream_context.span_id
    assert event_span.kind == SpanKind.CONSUMER and event_span.attributes["messaging.destination.name"] == kafka.events_topic
    assert event_span.attributes["claimx.outcome"] == "succeeded" and event_span.attributes["claimx.project_id"] == "4711"
    # 2. its ClaimX API calls: httpx client spans inside it
    calls = [s for s in finished if s.kind == SpanKind.CLIENT and s.parent is not None and s.parent.span_id == event_span.context.span_id]
    urls = sorted(str((s.attributes or {}).get("url.full") or (s.attributes or {}).get("http.url")) for s in calls)
    assert any("/export/project/4711" in url for url in urls) and any("media" in url for url in urls), urls
    # 3. the writer's flush, linked to the event's span through the entity-rows message's traceparent
    (flush,) = [s for s in finished if s.name == "claimx.writer.flush"
                and any(link.context.span_id == event_span.context.span_id for link in s.links)]
    assert flush.context is not None and flush.context.trace_id != 0
    # 4. the Delta commits of the tables the event's rows went to: children of the flush
    commits = {str((s.attributes or {})["delta.table"]): s for s in finished
               if s.name == "delta.write" and s.parent is not None and s.parent.span_id == flush.context.span_id}
    assert {"claimx_events", "claimx_projects", "claimx_media"} <= set(commits), sorted(commits)
    events_commit = commits["claimx_events"].attributes or {}
    assert events_commit["delta.commits"] >= 1 and events_commit["delta.rows"] == 1
    table = DeltaTable(table_uri(root, "claimx_events"))
    assert events_commit["delta.version"] == table.version()
    assert pc.sum(pc.equal(table.to_pyarrow_table()["trace_id"], event.trace_id)).as_py() == 1


async def test_api_calls_carry_traceparent_over_http(spans: InMemorySpanExporter) -> None:
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            seen.append(self.headers.get("traceparent"))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tracer = TracerProvider().get_tracer("test")
        async with httpx.AsyncClient() as client:
            with tracer.start_as_current_span("an event"):
                await client.get(f"http://127.0.0.1:{server.server_address[1]}/export/project/1")
    finally:
        server.shutdown()
        server.server_close()
    (call,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert call.context is not None
    assert len(seen) == 1 and str(seen[0]).startswith(f"00-{call.context.trace_id:032x}-{call.context.span_id:016x}-")


def test_kafka_headers_carry_the_current_span_and_replace_an_older_one(spans: InMemorySpanExporter) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("event") as span:
        headers = tracing.with_trace_headers([("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"), ("retry", b"1")])
    context = span.get_span_context()
    assert headers is not None and headers[0] == ("retry", b"1") and [name for name, _ in headers] == ["retry", "traceparent"]
    assert headers[1][1].startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-".encode())
    extracted = tracing.context_of(headers)
    assert extracted is not None


def test_off_unless_the_otel_variables_ask_and_then_the_hooks_do_nothing() -> None:
    assert not tracing.wanted({})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"})
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"})
    assert not tracing.enabled()
    headers = [("a", b"1")]
    assert tracing.with_trace_headers(headers) is headers and tracing.carry(len) is len and tracing.context_of(headers) is None
    # a worker without OTEL_* loads neither the tracing SDK nor the httpx instrumentation (redis-py
    # imports OpenTelemetry's metrics API for its own observability: not ours)
    probe = ("import sys; from kafka_pipeline.lifecycle.signals import run_worker; "
             "from kafka_pipeline.workers.enrich.worker import EnrichmentWorker; "
             "from kafka_pipeline.workers.writer.entity_writer import EntityWriter; from kafka_pipeline.observability.tracing import configure_tracing; "
             "assert not configure_tracing('w'); "
             "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace', 'opentelemetry.instrumentation'))))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True, env=env)
    assert loaded.stdout.strip() == "[]", loaded.stdout


def test_a_run_exports_its_spans_over_otlp_when_the_variables_say_so(tmp_path: Path) -> None:
    """`kafka-pipeline run` with OTEL_EXPORTER_OTLP_ENDPOINT set: every worker process exports its
    spans over OTLP/HTTP (to scripts/otlp_sink.py standing in for a collector)."""
    port, counts = free_port(), tmp_path / "spans.json"
    sink = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "otlp_sink.py"), "--port", str(port), "--out", str(counts)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None and sink.stdout.readline().startswith("otlp sink on")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KAFKA_", "DELTA_", "KP_"))}
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}", OTEL_BSP_SCHEDULE_DELAY="200")
        run = subprocess.run([sys.executable, "-m", "kafka_pipeline", "run", "--until-drained", "--log-dir", "logs"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
    finally:
        sink.terminate()
        sink.wait(timeout=30)
    exported = json.loads(counts.read_text())
    events = len(bundled_sample().read_text().splitlines())
    assert exported["kafka-pipeline-enrich claimx.event"] == events, exported  # one span per event, each exported once
    assert exported.get("kafka-pipeline-enrich GET", 0) > 0, exported  # the API calls (httpx client spans)
    assert exported["kafka-pipeline-write claimx.writer.flush"] >= 1 and exported["kafka-pipeline-write delta.write"] >= 8, exported


def test_a_bad_otel_setting_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_SPAN_LINK_COUNT_LIMIT": "lots",
           "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    done = subprocess.run([sys.executable, "-m", "kafka_pipeline", "write"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr == "kafka-pipeline write: config error: OTEL_SPAN_LINK_COUNT_LIMIT must be a whole number, got 'lots'\n"
