"""The retry scheduler's Prometheus series (declared on the registry its ops server serves)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from kafka_pipeline.observability.metrics import metric


@dataclass
class SchedulerMetrics:
    forwarded: Any
    dead_lettered: Any
    send_errors: Any
    waiting: Any
    paused: Any
    lateness: Any

    @classmethod
    def on(cls, registry: CollectorRegistry) -> SchedulerMetrics:
        return cls(
            forwarded=metric(registry, Counter, "retry_scheduler_forwarded", "Retry messages sent back to their target topic", ["target"]),
            dead_lettered=metric(registry, Counter, "retry_scheduler_dead_lettered", "Retry messages sent to the dead-letter topic"),
            send_errors=metric(registry, Counter, "retry_scheduler_send_errors", "Failed sends, tried again"),
            waiting=metric(registry, Gauge, "retry_scheduler_waiting", "Retry messages held until they are due"),
            paused=metric(registry, Gauge, "retry_scheduler_paused_partitions", "Retry partitions paused: too many waiting"),
            lateness=metric(registry, Gauge, "retry_scheduler_last_forward_lateness_seconds", "How long after its due time the last message was forwarded"),
        )
