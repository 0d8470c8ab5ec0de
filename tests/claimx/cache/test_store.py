"""The in-process entries alone: TTL, LRU, absent entries, priming, the expiry jitter."""

from __future__ import annotations

import random

import pytest

from kafka_pipeline.claimx.cache.store import Absent, EntryStore, entry_jitter_s
from tests.claimx.cache.helpers import FakeClock, local_settings


def test_a_confirmed_entry_is_fresh_until_its_ttl() -> None:
    clock = FakeClock()
    store = EntryStore(local_settings(ttl_s=100.0), clock)
    assert store.fresh_age("p1") is None
    store.confirm("p1")
    clock.advance(99.9)
    assert store.fresh_age("p1") == pytest.approx(99.9)
    clock.advance(0.1)
    assert store.fresh_age("p1") is None
    assert store.live("p1") is None and len(store) == 0  # the expired entry is dropped


def test_an_absent_entry_lives_for_its_remaining_time() -> None:
    clock = FakeClock()
    store = EntryStore(local_settings(), clock)
    store.prime_absent("p404", 10.0)
    store.prime_absent("p0", 0.0)  # nothing left: not recorded
    assert isinstance(store.live("p404"), Absent) and store.fresh_age("p404") is None
    assert len(store) == 1
    clock.advance(10.0)
    assert store.live("p404") is None and len(store) == 0


def test_the_least_recently_used_entry_is_evicted() -> None:
    store = EntryStore(local_settings(max_entries=3), FakeClock())
    for project_id in ("a", "b", "c"):
        store.confirm(project_id)
    assert store.fresh_age("a") is not None  # a is now the newest
    store.confirm("d")
    assert store.evictions == 1 and len(store) == 3
    assert store.live("b") is None and store.live("a") is not None


def test_prime_keeps_the_fresher_entry_and_refuses_an_expired_one() -> None:
    clock = FakeClock()
    store = EntryStore(local_settings(ttl_s=100.0), clock)
    assert store.prime("p1", age_s=30.0)
    assert not store.prime("p1", age_s=40.0)  # older than what is there
    assert store.prime("p1", age_s=10.0)
    assert store.live("p1") == 10.0
    assert not store.prime("p2", age_s=100.0) and len(store) == 1


def test_drop_and_clear_say_how_many_went() -> None:
    store = EntryStore(local_settings(), FakeClock())
    store.confirm("a")
    store.prime_absent("b", 5.0)
    assert store.drop("a") and not store.drop("a")
    store.confirm("c")
    assert store.clear() == 2 and len(store) == 0


def test_the_jitter_is_capped_at_half_the_refresh_window() -> None:
    rng = random.Random(7)
    settings = local_settings(ttl_jitter_s=1_000.0, refresh_after_s=50.0)
    draws = [entry_jitter_s(settings, rng) for _ in range(2_000)]
    assert 0.0 <= min(draws) and max(draws) < 25.0 and max(draws) > 20.0  # spread over the whole cap
    assert entry_jitter_s(local_settings(ttl_jitter_s=0.0)) == 0.0


def test_confirm_stamps_the_entry_older_by_the_jitter() -> None:
    clock = FakeClock()
    store = EntryStore(local_settings(ttl_s=100.0, refresh_after_s=50.0, ttl_jitter_s=1_000.0), clock)
    for i in range(200):
        store.confirm(f"p{i}")
    ages = [store.live(f"p{i}") for i in range(200)]
    assert all(isinstance(age, float) and 0.0 <= age < 25.0 for age in ages)
    assert len(set(ages)) > 100  # spread, not one stamp for all
