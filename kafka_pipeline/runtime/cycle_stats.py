"""Cycle-stats log lines, one mechanism for every worker: every `interval_s` one line with what
happened since the last one.

    Cycle 5: processed=150 (succeeded=146, failed=2, skipped=2: unknown type PROJECT_NOTE_ADDED 2) |
    48.3 events/s | api_calls=412 | project_cache_size=89 fetches_avoided=93.1%
    Cycle 5: rows=300 | 150.0 rows/s | flushes=2 dlq=0 skipped=0 | lag=0 pending_rows=12
    Cycle 5: handled=10 (forwarded=10, dead_lettered=0) | 2.0 messages/s | send_errors=0 | waiting=5 next_due_in_s=3.2

A worker describes itself with a `CycleSnapshot` of cumulative counts: `parts` (the headline
count is their sum, its rate the line's `/s`), other `counters`, and `gauges` shown as they are.
The same numbers go out as structured fields (`cycle`, the headline name, each part and counter,
`<unit>_per_s`, `<name>_total` since start, `skipped_by` as `{"<reason>/<event type>": n}`, the
gauges), so a JSON log is as easy to chart as the console line is to read; the console renderer
shows the line alone (`observability.logging`: the fields are in it already). Ratios (`*_rate`,
`*_avoided`) print as percentages.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kafka_pipeline.observability.logging import IN_MESSAGE, get_logger

log = get_logger(__name__)


@dataclass
class CycleSnapshot:
    """Cumulative counts at one instant; the reporter subtracts consecutive snapshots."""

    parts: Mapping[str, int] = field(default_factory=dict)  # the headline count, split (one part: no split shown)
    counters: Mapping[str, int] = field(default_factory=dict)  # other counts, shown per cycle
    gauges: Mapping[str, Any] = field(default_factory=dict)  # shown as they are (cache size, hit rate, lag)
    skipped_by: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (reason, event type) -> skipped so far

    @property
    def total(self) -> int:
        return sum(self.parts.values())


RATIO_SUFFIXES = ("rate", "avoided")  # gauges shown as a percentage


def format_gauge(name: str, value: Any) -> str:
    if value is None:
        return f"{name}=?"
    if isinstance(value, float) and name.endswith(RATIO_SUFFIXES):
        return f"{name}={value:.1%}"
    if isinstance(value, float):
        return f"{name}={value:.2f}"
    return f"{name}={value}"


@dataclass(frozen=True)
class CycleLine:
    """How a worker's line reads: `headline` names the sum of the parts, `unit` its rate."""

    headline: str = "processed"
    unit: str = "events"


class CycleStats:
    """`tick()` every interval (the runtime calls the worker's `report_cycle`): logs one line per cycle and returns its fields."""

    def __init__(
        self,
        sample: Callable[[], CycleSnapshot],
        *,
        interval_s: float,
        line: CycleLine = CycleLine(),
        clock: Callable[[], float] = time.monotonic,
        logger: Any = None,
    ) -> None:
        self.sample = sample
        self.interval_s = interval_s
        self.line = line
        self._clock = clock
        self._log = logger or log
        self.cycle = 0
        self._last = CycleSnapshot()
        self._last_at = clock()

    def tick(self) -> dict[str, Any]:
        now = self._clock()
        current, last = self.sample(), self._last
        elapsed = max(now - self._last_at, 1e-9)
        self.cycle += 1
        headline, unit = self.line.headline, self.line.unit
        parts = {name: n - last.parts.get(name, 0) for name, n in current.parts.items()}
        counters = {name: n - last.counters.get(name, 0) for name, n in current.counters.items()}
        skipped_by = {key: n - last.skipped_by.get(key, 0) for key, n in sorted(current.skipped_by.items())}
        skipped_by = {key: n for key, n in skipped_by.items() if n}
        count = current.total - last.total
        fields: dict[str, Any] = {
            "cycle": self.cycle,
            headline: count,
            **parts,
            f"{unit}_per_s": round(count / elapsed, 1),
            **counters,
            f"{headline}_total": current.total,
            **{f"{name}_total": n for name, n in current.counters.items()},
            **current.gauges,
        }
        if current.skipped_by:
            fields["skipped_by"] = {f"{reason}/{event_type}": n for (reason, event_type), n in skipped_by.items()}
        why = ", ".join(f"{reason} {event_type} {n}" for (reason, event_type), n in skipped_by.items())
        split = ", ".join(f"{name}={n}" for name, n in parts.items()) + (f": {why}" if why else "")
        sections = [
            f"Cycle {self.cycle}: {headline}={count}" + (f" ({split})" if len(parts) > 1 or why else ""),
            f"{fields[f'{unit}_per_s']:.1f} {unit}/s",
            " ".join(f"{name}={n}" for name, n in counters.items()),
            " ".join(format_gauge(name, value) for name, value in current.gauges.items()),
        ]
        self._log.info(" | ".join(s for s in sections if s), **fields, **{IN_MESSAGE: tuple(fields)})
        self._last, self._last_at = current, now
        return fields
