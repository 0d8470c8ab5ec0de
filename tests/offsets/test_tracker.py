"""OffsetTracker: commit only up to the highest offset below which everything is done."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kafka_pipeline.offsets.tracker import OffsetTracker


def test_out_of_order_completion_commits_only_the_finished_prefix() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    for offset in (10, 11, 12):
        tracker.track("p0", offset)
    assert tracker.committable() == {}
    tracker.done("p0", 11)
    assert tracker.committable() == {}  # 10 still in flight
    tracker.done("p0", 10)
    assert tracker.committable() == {"p0": 12}
    tracker.mark_committed({"p0": 12})
    assert tracker.committable() == {}  # nothing new
    tracker.done("p0", 12)
    assert tracker.committable() == {"p0": 13}
    assert tracker.in_flight() == 0


def test_partitions_are_independent_and_gaps_are_fine() -> None:
    tracker: OffsetTracker[int] = OffsetTracker()
    for offset in (0, 5, 9):  # gaps: compacted topic or transaction markers
        tracker.track(0, offset)
    tracker.track(1, 100)
    tracker.done(0, 0)
    tracker.done(0, 5)
    tracker.done(1, 100)
    assert tracker.committable() == {0: 6, 1: 101}
    assert tracker.committable([1]) == {1: 101}
    assert tracker.in_flight(0) == 1


def test_offsets_must_increase() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.track("p", 3)
    with pytest.raises(ValueError):
        tracker.track("p", 3)
    tracker.done("p", 3)
    with pytest.raises(ValueError):
        tracker.track("p", 2)


def test_dropped_partitions_ignore_late_completions() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.track("p", 1)
    tracker.drop(["p"])
    assert tracker.done("p", 1) is False
    assert tracker.committable() == {}
    tracker.track("p", 1)  # assigned again later: starts over from what the consumer hands out
    tracker.done("p", 1)
    assert tracker.committable() == {"p": 2}


@given(st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=60), st.randoms(use_true_random=False))
def test_committable_is_one_past_the_longest_finished_prefix(gaps: list[int], rnd) -> None:
    offsets, current = [], 0
    for gap in gaps:
        current += gap + 1
        offsets.append(current)
    tracker: OffsetTracker[str] = OffsetTracker()
    for offset in offsets:
        tracker.track("p", offset)
    order = offsets[:]
    rnd.shuffle(order)
    finished: set[int] = set()
    for offset in order[: rnd.randint(0, len(order))]:
        tracker.done("p", offset)
        finished.add(offset)
        prefix = 0
        while prefix < len(offsets) and offsets[prefix] in finished:
            prefix += 1
        expected = {"p": offsets[prefix - 1] + 1} if prefix else {}
        assert tracker.committable() == expected


def test_skip_to_moves_the_position_over_durable_offsets_only_when_nothing_is_in_flight() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.skip_to("p", 10)
    assert tracker.committable() == {"p": 10}
    tracker.skip_to("p", 5)  # never backwards
    assert tracker.committable() == {"p": 10}
    tracker.track("p", 10)
    with pytest.raises(ValueError):
        tracker.skip_to("p", 20)
    tracker.done("p", 10)
    assert tracker.committable() == {"p": 11}
