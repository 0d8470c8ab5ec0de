"""The one cycle-stats mechanism: each worker's line, its fields, and counts per cycle."""

from __future__ import annotations

import structlog

from kafka_pipeline.runtime.cycle_stats import CycleLine, CycleSnapshot, CycleStats


def test_the_enrichment_line_splits_the_processed_count_and_shows_gauges() -> None:
    now = [0.0]
    snapshot = CycleSnapshot()
    stats = CycleStats(lambda: snapshot, interval_s=10, clock=lambda: now[0])
    snapshot = CycleSnapshot(
        parts={"succeeded": 148, "failed": 2, "skipped": 0}, counters={"api_calls": 412}, gauges={"project_cache_size": 89, "hit_rate": 0.931},
    )
    now[0] = 3.105
    with structlog.testing.capture_logs() as logs:
        fields = stats.tick()
    assert logs[0]["event"] == (
        "Cycle 1: processed=150 (succeeded=148, failed=2, skipped=0) | 48.3 events/s | api_calls=412 | project_cache_size=89 hit_rate=93.1%"
    )
    assert fields["processed"] == 150 and fields["events_per_s"] == 48.3 and logs[0]["hit_rate"] == 0.931
    assert fields["processed_total"] == 150 and fields["api_calls_total"] == 412
    snapshot = CycleSnapshot(parts={"succeeded": 150, "failed": 2, "skipped": 1}, counters={"api_calls": 420})
    now[0] = 4.105
    fields = stats.tick()
    assert (fields["processed"], fields["skipped"], fields["api_calls"]) == (3, 1, 8)  # per cycle, not since start


def test_skips_are_counted_per_reason_and_type_per_cycle() -> None:
    snapshot = CycleSnapshot(parts={"skipped": 3}, skipped_by={("unknown type", "PROJECT_NOTE_ADDED"): 2, ("unknown type", "X_Y"): 1})
    stats = CycleStats(lambda: snapshot, interval_s=10)
    with structlog.testing.capture_logs() as logs:
        fields = stats.tick()
    assert "processed=3 (skipped=3: unknown type PROJECT_NOTE_ADDED 2, unknown type X_Y 1)" in logs[0]["event"]
    assert fields["skipped_by"] == {"unknown type/PROJECT_NOTE_ADDED": 2, "unknown type/X_Y": 1}
    snapshot = CycleSnapshot(parts={"skipped": 4}, skipped_by={("unknown type", "PROJECT_NOTE_ADDED"): 3, ("unknown type", "X_Y"): 1})
    with structlog.testing.capture_logs() as logs:
        fields = stats.tick()
    assert "skipped=1: unknown type PROJECT_NOTE_ADDED 1)" in logs[0]["event"] and fields["skipped_by"] == {"unknown type/PROJECT_NOTE_ADDED": 1}


def test_the_writer_and_scheduler_lines_name_their_own_count_and_unit() -> None:
    now = [0.0]
    writer = CycleSnapshot()
    stats = CycleStats(lambda: writer, interval_s=10, line=CycleLine(headline="rows", unit="rows"), clock=lambda: now[0])
    writer = CycleSnapshot(parts={"rows": 300}, counters={"flushes": 2, "dlq": 0, "skipped": 0}, gauges={"lag": None, "pending_rows": 12})
    now[0] = 2.0
    with structlog.testing.capture_logs() as logs:
        fields = stats.tick()
    assert logs[0]["event"] == "Cycle 1: rows=300 | 150.0 rows/s | flushes=2 dlq=0 skipped=0 | lag=? pending_rows=12"
    assert fields["rows_per_s"] == 150.0 and fields["rows_total"] == 300 and fields["lag"] is None and "skipped_by" not in fields

    scheduler = CycleSnapshot(parts={"forwarded": 10, "dead_lettered": 0}, counters={"send_errors": 0}, gauges={"waiting": 5})
    stats = CycleStats(lambda: scheduler, interval_s=10, line=CycleLine(headline="handled", unit="messages"), clock=lambda: 5.0)
    with structlog.testing.capture_logs() as logs:
        stats.tick()
    assert logs[0]["event"].startswith("Cycle 1: handled=10 (forwarded=10, dead_lettered=0) | ") and "send_errors=0 | waiting=5" in logs[0]["event"]
