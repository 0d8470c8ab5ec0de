"""Table freshness: seconds since the writer's last commit to each entity table.

The writer reports every committed table (`committed`); before its first commit, the
timestamps come from the tables' own Delta history (`load_from_tables`, once, off the event
loop), so a restarted writer does not report a stale table as fresh. The value is computed at
scrape time, so it keeps growing while nothing is committed: that is what the "table not
updated while input flows" alert watches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kafka_pipeline.delta.table_writer import table_uri
from kafka_pipeline.maintenance.operations import describe


class TableFreshness(Collector):
    def __init__(self, registry: CollectorRegistry, root: str, tables: Iterable[str], storage_options: Mapping[str, str]) -> None:
        self.root = root
        self.tables = list(tables)
        self.storage_options = dict(storage_options)
        self.last_commit: dict[str, float] = {}  # table -> epoch seconds
        self._loaded = False
        registry.register(self)

    def committed(self, tables: Iterable[str], at: float | None = None) -> None:
        now = time.time() if at is None else at
        for name in tables:
            self.last_commit[name] = now

    async def load_from_tables(self) -> None:
        """The last commit time of every existing table from its Delta log (first call only)."""
        if self._loaded:
            return
        self._loaded = True
        found = await asyncio.get_running_loop().run_in_executor(None, self._read_history)
        for name, at in found.items():
            self.last_commit.setdefault(name, at)  # a commit of this process is newer

    def _read_history(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for name in self.tables:
            description = describe(table_uri(self.root, name), storage_options=self.storage_options)
            if description is not None and description.last_commit_at is not None:
                found[name] = description.last_commit_at.timestamp()
        return found

    def describe(self) -> Iterator[Metric]:
        yield from self._families({}, 0.0)

    def collect(self) -> Iterator[Metric]:
        yield from self._families(dict(self.last_commit), time.time())

    @staticmethod
    def _families(last_commit: dict[str, float], now: float) -> Iterator[Metric]:
        stamp = GaugeMetricFamily(
            "claimx_writer_table_last_commit_timestamp_seconds", "When the table was last committed (Unix time).", labels=["table"]
        )
        age = GaugeMetricFamily("claimx_writer_table_freshness_seconds", "Seconds since the table was last committed.", labels=["table"])
        for name, at in sorted(last_commit.items()):
            stamp.add_metric([name], at)
            age.add_metric([name], max(0.0, now - at))
        yield stamp
        yield age
