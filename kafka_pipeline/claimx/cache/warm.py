"""Warm start: a restarted worker primes its ProjectCache from the `claimx_projects` Delta table.

Projects whose row changed within `warm_window_s` become confirmed entries aged by their
`updated_at`, so they expire (and refresh) as if they had been verified then. `updated_at` is
the last time the writer merged any projects row, which can be a minimal row (mfn,
policyholder, XA) rather than a full export: the entry may be older than it looks by at most
one refresh window, which the background refresh then catches up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from kafka_pipeline.claimx.schemas import PROJECTS
from kafka_pipeline.config import DeltaSettings
from kafka_pipeline.delta.storage import TableRoot
from kafka_pipeline.observability.logging import get_logger

if TYPE_CHECKING:
    from kafka_pipeline.claimx.cache.project_cache import ProjectCache

log = get_logger(__name__)

# Prime a cache from the projects table for a window (seconds); returns the entries added.
Warmer = Callable[[float], Awaitable[int]]


def recent_project_ids(
    tables_root: str,
    storage_options: dict[str, str] | None,
    window_s: float,
    *,
    now: datetime | None = None,
) -> dict[str, float]:
    """{project_id: seconds since its row's updated_at} for rows updated within `window_s`.

    Empty when the table does not exist yet. Reads two columns, pruning files by statistics.
    """
    root = TableRoot(tables_root, storage_options or {})
    if not root.has_table(PROJECTS.name):
        return {}
    now = now or datetime.now(UTC)
    dataset = DeltaTable(root.table_uri(PROJECTS.name), storage_options=root.options).to_pyarrow_dataset()
    updated_type = dataset.schema.field("updated_at").type
    cutoff = pa.scalar(now - timedelta(seconds=window_s), type=pa.timestamp("us", tz="UTC")).cast(updated_type)
    table = dataset.to_table(columns=["project_id", "updated_at"], filter=pc.field("updated_at") >= cutoff)
    ages: dict[str, float] = {}
    for project_id, updated_at in zip(table["project_id"].to_pylist(), table["updated_at"].to_pylist(), strict=True):
        if project_id is None or updated_at is None:
            continue
        if updated_at.tzinfo is None:
            updated_at = updated_at.replace(tzinfo=UTC)
        age = max(0.0, (now - updated_at).total_seconds())
        key = str(project_id)
        ages[key] = min(age, ages.get(key, age))
    return ages


async def warm_from_delta(
    cache: ProjectCache,
    tables_root: str,
    storage_options: dict[str, str] | None,
    window_s: float,
) -> int:
    """Prime `cache` with the recently updated projects; returns how many entries were added.

    The Delta read runs in a thread so the event loop (heartbeats, health) stays live.
    """
    ages = await asyncio.to_thread(recent_project_ids, tables_root, storage_options, window_s)
    primed = sum(1 for project_id, age in ages.items() if cache.prime(project_id, age))
    log.info("project_cache_warmed", entries=primed, candidates=len(ages), window_s=window_s)
    return primed


def delta_warmer(cache: ProjectCache, delta: DeltaSettings) -> Warmer:
    """Warm `cache` from the projects table under `delta.tables_root`."""

    async def warm(window_s: float) -> int:
        return await warm_from_delta(cache, delta.tables_root, delta.storage_options, window_s)

    return warm
