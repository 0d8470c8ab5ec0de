"""The maintenance loop's Prometheus series (declared on the registry the writer's ops server serves)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kafka_pipeline.observability.metrics import metric


@dataclass
class MaintenanceMetrics:
    files: Any
    bytes: Any
    small_files: Any
    vacuumed_files: Any
    compactions: Any
    compaction_seconds: Any
    conflicts: Any
    checkpoints: Any
    errors: Any

    @classmethod
    def on(cls, registry: CollectorRegistry) -> MaintenanceMetrics:
        return cls(
            files=metric(registry, Gauge, "delta_table_files", "Data files in the table's current version", ["table"]),
            bytes=metric(registry, Gauge, "delta_table_bytes", "Bytes of the data files in the table's current version", ["table"]),
            small_files=metric(registry, Gauge, "delta_table_small_files", "Data files below the table's target file size", ["table"]),
            vacuumed_files=metric(
                registry, Counter, "delta_vacuumed_files", "Data files deleted by vacuum (removed from the table longer ago than the retention)",
                ["table"],
            ),
            compactions=metric(registry, Counter, "delta_compactions", "Compactions committed", ["table"]),
            compaction_seconds=metric(
                registry, Histogram, "delta_compaction_duration_seconds", "Time of one compaction, retries included", ["table"],
                buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            ),
            conflicts=metric(
                registry, Counter, "delta_compaction_conflicts", "Compaction commits that lost to a concurrent commit and were redone", ["table"],
            ),
            checkpoints=metric(registry, Counter, "delta_checkpoints", "Checkpoints written (followed by log cleanup)", ["table"]),
            errors=metric(registry, Counter, "delta_maintenance_errors", "Maintenance steps that failed (retried next cycle)", ["table"]),
        )
