"""OpenTelemetry traces: one event from the events topic, through its API calls, to its Delta commit.

- The enrichment worker opens a span per event (`claimx.event`, kind CONSUMER), child of the
  `traceparent` header the event may carry; the ClaimX API calls inside it are httpx client spans
  (the httpx instrumentation), which also send `traceparent` to the API; the entity-rows message
  it produces carries the event span's context in a W3C `traceparent` header.
- The entity writer's flush (`claimx.writer.flush`) is linked to the spans of every message in
  its batch (a batch has many parents: links, not a parent), and each table's merge and commits
  (`delta.write`) are children of the flush.

Off unless the standard variables ask for it: `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (or `OTEL_TRACES_EXPORTER=otlp|console`), and not
`OTEL_SDK_DISABLED=true`. Then spans go over OTLP/HTTP in batches (`OTEL_SERVICE_NAME`, default
`kafka-pipeline-<worker name>`; `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`, `OTEL_SPAN_LINK_COUNT_LIMIT`
as the SDK reads them). Off, every hook returns at its first line: the SDK is not even imported.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from kafka_pipeline.errors import ConfigError

if TYPE_CHECKING:  # imported when tracing is turned on: a worker without it does not load OpenTelemetry
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

T = TypeVar("T")
HEADER_NAMES = ("traceparent", "tracestate")
DEFAULT_LINK_LIMIT = 1024  # links of one flush span (one per message of the batch); the SDK's default is 128
_tracer: Tracer | None = None  # None: tracing is off
_provider: TracerProvider | None = None


def enabled() -> bool:
    return _tracer is not None


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Do the standard OTEL_* variables ask for traces?"""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    endpoint = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return bool(endpoint) or exporter in ("otlp", "console")


def configure_tracing(service_name: str) -> bool:
    """Turn tracing on when the environment asks for it (see the module doc); True when on."""
    if not wanted():
        return False
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415 - only when tracing is on
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter  # noqa: PLC0415

    exporter: SpanExporter
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        exporter = OTLPSpanExporter()
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or f"kafka-pipeline-{service_name}"})
    limit = os.environ.get("OTEL_SPAN_LINK_COUNT_LIMIT") or str(DEFAULT_LINK_LIMIT)
    if not limit.isdigit():
        raise ConfigError(f"config error: OTEL_SPAN_LINK_COUNT_LIMIT must be a whole number, got {ascii(limit[:40])}")
    links = int(limit)
    provider = TracerProvider(resource=resource, span_limits=SpanLimits(max_links=links))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    use_provider(provider)
    return True


def use_provider(provider: TracerProvider | None) -> None:
    """Trace into `provider` (the tests: an in-memory exporter), or turn tracing off (None).
    HTTP calls of httpx clients made from now on get client spans and a `traceparent` header."""
    global _tracer, _provider
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor  # noqa: PLC0415 - only when tracing is on

    instrumentor = HTTPXClientInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    _provider = provider
    if provider is None:
        _tracer = None
        return
    instrumentor.instrument(tracer_provider=provider)
    _tracer = provider.get_tracer("kafka_pipeline")


def traced_transport(transport: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
    """`transport` with a client span and a `traceparent` header per request when tracing is on
    (the httpx instrumentation patches httpx's own transport only; the API client has its own)."""
    if _tracer is None:
        return transport
    from opentelemetry.instrumentation.httpx import AsyncOpenTelemetryTransport  # noqa: PLC0415 - only when tracing is on

    return AsyncOpenTelemetryTransport(transport, tracer_provider=_provider)


def shutdown() -> None:
    """Export what is still buffered (a worker calls it as it stops)."""
    if _provider is not None:
        _provider.shutdown()


# -- Kafka headers ----------------------------------------------------------------------------


def _header_getter(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in headers or ():
        if name in HEADER_NAMES and value is not None:
            found[name] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return found


def context_of(headers: Sequence[tuple[str, bytes]] | None) -> Context | None:
    """The span context a message's `traceparent` header carries (None: none, or tracing off)."""
    if _tracer is None:
        return None
    carrier = _header_getter(headers)
    return _propagator().extract(carrier) if carrier else None


@functools.cache
def _propagator() -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator  # noqa: PLC0415 - tracing is on

    return TraceContextTextMapPropagator()


def with_trace_headers(headers: list[tuple[str, bytes]] | None) -> list[tuple[str, bytes]] | None:
    """`headers` with the current span's `traceparent` (an older one replaced); unchanged when off."""
    if _tracer is None:
        return headers
    from opentelemetry import trace  # noqa: PLC0415 - tracing is on

    if not trace.get_current_span().get_span_context().is_valid:
        return headers
    carrier: dict[str, str] = {}
    _propagator().inject(carrier)
    kept = [(name, value) for name, value in headers or () if name not in HEADER_NAMES]
    return kept + [(name, value.encode("latin-1")) for name, value in carrier.items()]


# -- hooks ------------------------------------------------------------------------------------


def traced_consume(name: str, fields: Sequence[str] = (), prefix: str = "claimx") -> Callable[
        [Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """For `async def handle(self, record, item, ...)`: a span per record (kind CONSUMER), child of
    its `traceparent` header; `item`'s `fields` become `<prefix>.<field>` attributes and the result
    `<prefix>.outcome`."""

    def decorate(handle: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(handle)
        def traced_or_not(self: Any, record: Any, item: Any, *args: Any, **kwargs: Any) -> Awaitable[T]:
            if _tracer is None:  # the handler's own coroutine: no second one around it per record
                return handle(self, record, item, *args, **kwargs)
            return traced(self, record, item, *args, **kwargs)

        async def traced(self: Any, record: Any, item: Any, *args: Any, **kwargs: Any) -> T:
            assert _tracer is not None
            from opentelemetry.trace import SpanKind  # noqa: PLC0415 - tracing is on

            attributes: dict[str, Any] = {
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": record.topic,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset,
            }
            attributes.update({f"{prefix}.{field}": str(getattr(item, field)) for field in fields if getattr(item, field, None) is not None})
            with _tracer.start_as_current_span(name, context=context_of(record.headers), kind=SpanKind.CONSUMER,
                                               attributes=attributes) as span:
                result = await handle(self, record, item, *args, **kwargs)
                span.set_attribute(f"{prefix}.outcome", str(result))
                return result

        return traced_or_not

    return decorate


@contextlib.contextmanager
def linked_span(name: str, headers_of_each: Iterable[Sequence[tuple[str, bytes]] | None], **attributes: Any) -> Iterator[None]:
    """A span linked to the span context of each message (their `traceparent` headers): the
    writer's flush, which many events' rows end in."""
    if _tracer is None:
        yield
        return
    from opentelemetry import trace  # noqa: PLC0415 - tracing is on

    links = []
    for headers in headers_of_each:
        parent = context_of(headers)
        if parent is not None:
            span_context = trace.get_current_span(parent).get_span_context()
            if span_context.is_valid:
                links.append(trace.Link(span_context))
    with _tracer.start_as_current_span(name, links=links, attributes={"messaging.batch.message_count": len(links), **attributes}):
        yield


def traced_call(name: str, result_prefix: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """For a method run in a thread (a Delta table's write): a child span of the caller's span
    (carried into the thread by `carry`); the scalar fields of the dataclass it returns become
    `<result_prefix>.<field>` attributes."""

    def decorate(call: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(call)
        def traced(self: Any, *args: Any, **kwargs: Any) -> T:
            if _tracer is None:
                return call(self, *args, **kwargs)
            with _tracer.start_as_current_span(name) as span:
                result = call(self, *args, **kwargs)
                if dataclasses.is_dataclass(result):
                    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
                    span.set_attributes({f"{result_prefix}.{key}": value for key, value in fields.items()
                                         if isinstance(value, (str, int, float, bool))})
                return result

        return traced

    return decorate


def carry(call: Callable[..., T]) -> Callable[..., T]:
    """`call` run in the current trace context wherever it runs (an executor thread does not
    inherit context variables); `call` itself when tracing is off."""
    if _tracer is None:
        return call
    current = contextvars.copy_context()
    return functools.partial(current.run, call)
