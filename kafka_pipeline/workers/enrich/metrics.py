"""The enrichment worker's Prometheus series (declared on the registry its ops server serves)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from kafka_pipeline.claimx.transforms import VALUES_NULLED
from kafka_pipeline.observability.metrics import LabelCache, collector, metric


class _ValuesNulled(Collector):
    """`transforms.VALUES_NULLED` as a Prometheus counter."""

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "claimx_api_values_nulled",
            "API values that did not fit their column's type (unreadable or out of range) and were written as null.",
            labels=["table", "column"],
        )
        for (table, column), count in list(VALUES_NULLED.items()):
            family.add_metric([table, column], count)
        yield family


@dataclass
class EnrichMetrics:
    events: LabelCache
    api_calls: LabelCache
    api_latency: LabelCache
    in_flight: Any
    awaiting_ack: Any
    breaker_open: Any
    credentials_rejected: Any
    rate_limit_paused: Any

    @classmethod
    def on(cls, registry: CollectorRegistry) -> EnrichMetrics:
        collector(registry, "claimx_api_values_nulled", _ValuesNulled)
        return cls(
            events=LabelCache(metric(registry, Counter, "claimx_enrich_events", "Consumed events by outcome and event type.", ["outcome", "event_type"])),
            api_calls=LabelCache(
                metric(registry, Counter, "claimx_api_calls", "ClaimX API requests by kind and outcome (status code or error).", ["kind", "outcome"])
            ),
            api_latency=LabelCache(
                metric(
                    registry, Histogram, "claimx_api_latency_seconds", "ClaimX API request latency by kind.", ["kind"],
                    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
                )
            ),
            in_flight=metric(registry, Gauge, "claimx_enrich_in_flight", "Events being processed (holding an in-flight slot).", ["worker"]),
            awaiting_ack=metric(registry, Gauge, "claimx_enrich_awaiting_ack", "Events whose message waits for the broker's acknowledgement.", ["worker"]),
            breaker_open=metric(registry, Gauge, "claimx_api_breaker_open", "1 while the ClaimX API circuit breaker is open.", ["worker"]),
            credentials_rejected=metric(
                registry, Gauge, "claimx_api_credentials_rejected", "1 while the ClaimX API rejects our credentials (401).", ["worker"]
            ),
            rate_limit_paused=metric(
                registry, Gauge, "claimx_api_rate_limit_paused_seconds",
                "Seconds every ClaimX API request still waits on a 429's Retry-After (capped by api.max_retry_after_s).", ["worker"],
            ),
        )

    def start_at_zero(self, outcomes: Iterable[str], event_types: Iterable[str]) -> None:
        """Every (outcome, type) series from the start: increase() misses a series' first value."""
        types = list(event_types)
        for outcome in outcomes:
            for event_type in types:
                self.events(outcome, event_type)

    def event(self, outcome: str, event_type: str) -> None:
        self.events(outcome, event_type).inc()

    def observe_api_call(self, kind: str, outcome: str, seconds: float) -> None:
        self.api_calls(kind, outcome).inc()
        if outcome != "circuit_open":
            self.api_latency(kind).observe(seconds)

    def watch(
        self,
        worker: str,
        *,
        in_flight: Callable[[], float],
        awaiting_ack: Callable[[], float],
        breaker_open: Callable[[], float],
        credentials_rejected: Callable[[], float],
        rate_limit_paused: Callable[[], float] = lambda: 0.0,
    ) -> None:
        """Gauges read at scrape time."""
        self.in_flight.labels(worker).set_function(in_flight)
        self.awaiting_ack.labels(worker).set_function(awaiting_ack)
        self.breaker_open.labels(worker).set_function(breaker_open)
        self.credentials_rejected.labels(worker).set_function(credentials_rejected)
        self.rate_limit_paused.labels(worker).set_function(rate_limit_paused)

    def forget(self, worker: str) -> None:
        for gauge in (self.in_flight, self.awaiting_ack, self.breaker_open, self.credentials_rejected, self.rate_limit_paused):
            with contextlib.suppress(KeyError):
                gauge.remove(worker)
