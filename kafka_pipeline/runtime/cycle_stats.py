"""Cycle-stats log lines: every `interval_s` one line with what happened since the last one.

    Cycle 5: processed=150 (succeeded=146, failed=2, skipped=2: unknown type PROJECT_NOTE_ADDED 2) |
    48.3 events/s | project_cache_size=89 fetches_avoided=93.1% api_calls=412

The same numbers go out as structured fields (`cycle`, `processed`, `succeeded`, `failed`,
`skipped`, `skipped_by` (`{"<reason>/<event type>": n}`), `events_per_s`, ...), so a JSON log is as easy to chart as the console line is to read;
the console renderer shows the line alone (`runtime.logging`: the fields are in it already).
Counts are per cycle; `*_total` fields are since start; ratios (`fetches_avoided`, `*_rate`) are
the cache's since start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kafka_pipeline.observability.logging import IN_MESSAGE, get_logger

log = get_logger(__name__)


@dataclass
class CycleSnapshot:
    """Cumulative counters at one instant; the reporter subtracts consecutive snapshots."""

    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    api_calls: int = 0
    gauges: Mapping[str, Any] = field(default_factory=dict)  # reported as they are (cache size, hit rate, in flight)
    skipped_by: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (reason, event type) -> skipped so far

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed + self.skipped


RATIO_SUFFIXES = ("rate", "avoided")  # gauges shown as a percentage


def format_gauge(name: str, value: Any) -> str:
    if isinstance(value, float) and name.endswith(RATIO_SUFFIXES):
        return f"{name}={value:.1%}"
    if isinstance(value, float):
        return f"{name}={value:.2f}"
    return f"{name}={value}"


class CycleStats:
    """Call `tick()` every interval (or run `loop()`): logs one line per cycle and returns its fields."""

    def __init__(
        self,
        sample: Callable[[], CycleSnapshot],
        *,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        logger: Any = None,
    ) -> None:
        self.sample = sample
        self.interval_s = interval_s
        self._clock = clock
        self._log = logger or log
        self.cycle = 0
        self._last = CycleSnapshot()
        self._last_at = clock()

    def tick(self) -> dict[str, Any]:
        now = self._clock()
        current = self.sample()
        elapsed = max(now - self._last_at, 1e-9)
        self.cycle += 1
        skipped_by = {key: n - self._last.skipped_by.get(key, 0) for key, n in sorted(current.skipped_by.items())}
        skipped_by = {key: n for key, n in skipped_by.items() if n}
        fields: dict[str, Any] = {
            "cycle": self.cycle,
            "processed": current.processed - self._last.processed,
            "succeeded": current.succeeded - self._last.succeeded,
            "failed": current.failed - self._last.failed,
            "skipped": current.skipped - self._last.skipped,
            "skipped_by": {f"{reason}/{event_type}": n for (reason, event_type), n in skipped_by.items()},
            "events_per_s": round((current.processed - self._last.processed) / elapsed, 1),
            "api_calls": current.api_calls - self._last.api_calls,
            "processed_total": current.processed,
            "api_calls_total": current.api_calls,
            **current.gauges,
        }
        gauges = " ".join(format_gauge(name, value) for name, value in current.gauges.items())
        why = ", ".join(f"{reason} {event_type} {n}" for (reason, event_type), n in skipped_by.items())
        line = (
            f"Cycle {fields['cycle']}: processed={fields['processed']} (succeeded={fields['succeeded']}, "
            f"failed={fields['failed']}, skipped={fields['skipped']}{': ' + why if why else ''}) | {fields['events_per_s']:.1f} events/s"
            f" | {gauges + ' ' if gauges else ''}api_calls={fields['api_calls']}"
        )
        self._log.info(line, **fields, **{IN_MESSAGE: tuple(fields)})
        self._last, self._last_at = current, now
        return fields

    async def loop(self, stop: asyncio.Event) -> None:
        """Log a line every `interval_s` until `stop` is set."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except TimeoutError:
                self.tick()
