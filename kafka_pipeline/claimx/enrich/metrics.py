"""The enrichment worker's Prometheus series (declared on the registry its ops server serves)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kafka_pipeline.runtime.metrics import LabelCache, metric


@dataclass
class EnrichMetrics:
    events: LabelCache
    api_calls: LabelCache
    api_latency: LabelCache
    in_flight: Any
    awaiting_ack: Any

    @classmethod
    def on(cls, registry: CollectorRegistry, *, worker: str) -> EnrichMetrics:
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
        )

    def event(self, outcome: str, event_type: str) -> None:
        self.events(outcome, event_type).inc()

    def observe_api_call(self, kind: str, outcome: str, seconds: float) -> None:
        self.api_calls(kind, outcome).inc()
        if outcome != "circuit_open":
            self.api_latency(kind).observe(seconds)

    def watch(self, worker: str, *, in_flight: Callable[[], float], awaiting_ack: Callable[[], float]) -> None:
        """Gauges read at scrape time."""
        self.in_flight.labels(worker).set_function(in_flight)
        self.awaiting_ack.labels(worker).set_function(awaiting_ack)

    def forget(self, worker: str) -> None:
        for gauge in (self.in_flight, self.awaiting_ack):
            with contextlib.suppress(KeyError):
                gauge.remove(worker)
