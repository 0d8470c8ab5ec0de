"""Loads waiting for the broker alone: held, answered, settled, stale, and their shared-tier locks."""

from __future__ import annotations

from kafka_pipeline.claimx.cache.pending import PendingSnapshots
from tests.claimx.cache.helpers import FakeClock, RecordingTier, snapshot


def test_a_held_snapshot_answers_until_settled() -> None:
    tier = RecordingTier()
    pending = PendingSnapshots(tier, ttl_s=100.0, clock=FakeClock())
    loaded = snapshot("p1")
    pending.hold("p1", loaded, "t1", refresh=False)
    assert pending.current("p1") is loaded and len(pending) == 1
    taken = pending.take("p1")
    assert taken is not None and (taken.token, taken.refresh) == ("t1", False)
    assert pending.current("p1") is None and pending.take("p1") is None
    assert tier.calls == []  # a confirm hands the lock on: nothing released here


def test_dropping_releases_the_lock() -> None:
    tier = RecordingTier()
    pending = PendingSnapshots(tier, ttl_s=100.0, clock=FakeClock())
    pending.hold("p1", snapshot("p1"), "t1", refresh=False)
    pending.hold("p2", snapshot("p2"), None, refresh=False)
    assert pending.drop("p1") and pending.drop("p2") and not pending.drop("p1")
    assert tier.calls == [("release", "p1", "t1")]


def test_a_new_load_replaces_the_old_and_releases_a_different_lock() -> None:
    tier = RecordingTier()
    pending = PendingSnapshots(tier, ttl_s=100.0, clock=FakeClock())
    pending.hold("p1", snapshot("p1", 1), "t1", refresh=False)
    pending.hold("p1", snapshot("p1", 2), "t1", refresh=True)  # same lock: kept
    pending.hold("p1", snapshot("p1", 3), "t2", refresh=True)
    held = pending.current("p1")
    assert held is not None and held.rows["claimx_projects"][0]["status"] == "v3"
    assert tier.calls == [("release", "p1", "t1")]


def test_a_snapshot_never_settled_goes_stale_after_the_ttl() -> None:
    clock, tier = FakeClock(), RecordingTier()
    pending = PendingSnapshots(tier, ttl_s=100.0, clock=clock)
    pending.hold("p1", snapshot("p1"), "t1", refresh=False)
    clock.advance(100.0)
    assert pending.current("p1") is None and len(pending) == 0
    assert tier.calls == [("release", "p1", "t1")]


def test_clear_drops_everything() -> None:
    tier = RecordingTier()
    pending = PendingSnapshots(tier, ttl_s=100.0, clock=FakeClock())
    for i, token in enumerate(("t1", None, "t3")):
        pending.hold(f"p{i}", snapshot(f"p{i}"), token, refresh=False)
    assert pending.clear() == 3 and len(pending) == 0
    assert sorted(tier.calls) == [("release", "p0", "t1"), ("release", "p2", "t3")]
