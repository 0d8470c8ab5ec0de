"""The entity writer's Prometheus series (declared on the registry its ops server serves)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kafka_pipeline.observability.metrics import metric


@dataclass
class WriterMetrics:
    rows_written: Any
    rows_skipped: Any
    records_skipped: Any
    commits: Any
    conflicts: Any
    flushes: Any
    flush_seconds: Any
    messages: Any
    dead_letters: Any
    lag: Any

    @classmethod
    def on(cls, registry: CollectorRegistry) -> WriterMetrics:
        metrics = cls(
            rows_written=metric(registry, Counter, "claimx_writer_rows_written", "Entity rows merged into a Delta table", ["table"]),
            rows_skipped=metric(registry, Counter, "claimx_writer_rows_skipped", "Entity rows skipped: the table already held their offsets", ["table"]),
            records_skipped=metric(
                registry, Counter, "claimx_writer_records_skipped",
                "Entity-rows messages at or below the offset the tables already hold for their partition (a replayed range): skipped",
            ),
            commits=metric(registry, Counter, "claimx_writer_delta_commits", "Delta commits (entity and clock tables)", ["table"]),
            conflicts=metric(registry, Counter, "claimx_writer_commit_conflicts", "Delta commits redone after a concurrent commit", ["table"]),
            flushes=metric(registry, Counter, "claimx_writer_flushes", "Flushes (batches) by outcome", ["outcome"]),
            flush_seconds=metric(
                registry, Histogram, "claimx_writer_flush_duration_seconds", "Time to convert, merge and commit one batch",
                buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            ),
            messages=metric(registry, Counter, "claimx_writer_messages", "Entity-rows messages consumed"),
            dead_letters=metric(registry, Counter, "claimx_writer_dead_letters", "Messages sent to the dead-letter topic", ["error_type"]),
            lag=metric(registry, Gauge, "claimx_writer_lag_messages", "Messages behind the high watermark, all assigned partitions"),
        )
        for outcome in ("ok", "error"):  # both series exist from the start: rate() and alerts see a 0, not nothing
            metrics.flushes.labels(outcome)
        for error_type in ("InvalidMessage", "SchemaMismatch"):  # a 0 first, so increase() sees the first
            metrics.dead_letters.labels(error_type)
        return metrics
