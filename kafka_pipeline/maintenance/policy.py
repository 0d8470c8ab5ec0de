"""The entity writer's table maintenance: the maintenance loop (compaction, vacuum, checkpoints)
over the eight tables and their clock tables, run by the one writer of the group that owns partition 0 of the entity-rows topic.

Why partition 0: the consumer group already elects exactly one owner per partition, and a
revoke completes before the next assignment, so there is no lease to build, expire or lose.
While a rebalance moves partition 0, a compaction of the old owner may still be finishing when
the new owner starts one: both are optimistic Delta commits, the later one conflicts and is
planned again, so that window costs work, never data.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from kafka_pipeline.claimx.schemas import TABLES
from kafka_pipeline.config import MaintenanceSettings, Settings
from kafka_pipeline.delta.table_writer import clock_table_uri, table_uri
from kafka_pipeline.maintenance.loop import MaintenancePolicy, TableMaintainer, run_maintenance, table_labels
from kafka_pipeline.maintenance.table_layout import table_properties, writer_properties

MAINTENANCE_PARTITION = 0


def policy(settings: MaintenanceSettings) -> MaintenancePolicy:
    return MaintenancePolicy(
        compact_small_files=settings.compact_small_files,
        compact_after_commits=settings.compact_after_commits,
        checkpoint_after_commits=settings.checkpoint_after_commits,
        log_retention_hours=settings.log_retention_hours,
        vacuum_retention_hours=settings.vacuum_retention_hours,
    )


def maintainer_for(settings: Settings, registry: CollectorRegistry | None = None) -> TableMaintainer:
    """A maintainer of every entity table and clock table under `settings.delta.tables_root`."""
    root = settings.delta.tables_root
    labels = table_labels(list(TABLES), lambda name: table_uri(root, name), lambda name: clock_table_uri(root, name))
    return TableMaintainer(labels, policy(settings.maintenance), storage_options=settings.delta.storage_options, registry=registry,
                           properties=layout_properties(list(TABLES)), writer_properties=writer_properties())


def layout_properties(names: list[str]) -> dict[str, dict[str, str]]:
    """Per maintenance label (`table_labels`), the table properties of the writer's file layout."""
    properties: dict[str, dict[str, str]] = {}
    for name in names:
        properties[name], properties[f"{name}/clocks"] = table_properties(name)
    return properties


class WriterMaintenance:
    """Starts and stops the maintenance loop of one entity writer (nothing when disabled)."""

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.settings = settings.maintenance
        self.maintainer = maintainer_for(settings, registry) if self.settings.enabled else None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, assigned_partitions: Callable[[], set[int]]) -> None:
        if self.maintainer is None:
            return
        self._stop.clear()
        self._task = asyncio.create_task(
            run_maintenance(
                self.maintainer,
                self._stop,
                interval_s=self.settings.interval_s,
                should_run=lambda: MAINTENANCE_PARTITION in assigned_partitions(),
            ),
            name="writer-maintenance",
        )

    async def stop(self) -> None:
        """Waits for a running maintenance step to finish (a compaction is not interrupted)."""
        if self._task is None:
            return
        self._stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
