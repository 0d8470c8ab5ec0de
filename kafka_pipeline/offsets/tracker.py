"""Which input offsets may be committed when messages finish out of order.

Per partition the tracker keeps the offsets handed out (in increasing order) and which of them
are finished. The committable position is the offset just after the longest finished prefix:
a message is never committed while an earlier one of its partition is still in flight, so a
crash replays everything not yet done (at-least-once) and nothing more than that.

Offsets need not be contiguous (compacted topics, transaction markers): only offsets that were
`track`ed matter.

    tracker.track(tp, 10); tracker.track(tp, 11); tracker.track(tp, 12)
    tracker.done(tp, 11)          # 10 still in flight -> nothing to commit
    tracker.done(tp, 10)          # 10 and 11 finished -> commit 12
    tracker.committable()         # {tp: 12}
    tracker.mark_committed({tp: 12})
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)


@dataclass
class _PartitionState:
    pending: deque[int] = field(default_factory=deque)  # tracked offsets, increasing, not yet passed
    finished: set[int] = field(default_factory=set)  # finished offsets still in `pending`
    position: int | None = None  # next offset to commit (one past the finished prefix)
    committed: int | None = None  # last position committed


class OffsetTracker(Generic[P]):
    def __init__(self) -> None:
        self._partitions: dict[P, _PartitionState] = {}

    def track(self, partition: P, offset: int) -> None:
        """A message was handed out for processing; offsets of one partition must increase."""
        state = self._partitions.setdefault(partition, _PartitionState())
        last = state.pending[-1] if state.pending else (state.position - 1 if state.position is not None else None)
        if last is not None and offset <= last:
            raise ValueError(f"offset {offset} of {partition} is not above {last}")
        state.pending.append(offset)

    def done(self, partition: P, offset: int) -> bool:
        """The message is finished; False when the partition is no longer tracked (revoked)."""
        state = self._partitions.get(partition)
        if state is None:
            return False
        if not state.pending or offset < state.pending[0]:
            return True  # already passed
        state.finished.add(offset)
        while state.pending and state.pending[0] in state.finished:
            head = state.pending.popleft()
            state.finished.discard(head)
            state.position = head + 1
        return True

    def skip_to(self, partition: P, offset: int) -> None:
        """Everything of `partition` below `offset` is durable already (nothing of it is in flight):
        the position moves there, so the next commit says so."""
        state = self._partitions.setdefault(partition, _PartitionState())
        if state.pending:
            raise ValueError(f"{partition} has offsets in flight: {state.pending[0]}..{state.pending[-1]}")
        if state.position is None or offset > state.position:
            state.position = offset

    def committable(self, partitions: Iterable[P] | None = None) -> dict[P, int]:
        """Positions that moved past the last commit: partition -> next offset to consume."""
        chosen = self._partitions if partitions is None else {p: self._partitions[p] for p in partitions if p in self._partitions}
        return {
            p: s.position
            for p, s in chosen.items()
            if s.position is not None and (s.committed is None or s.position > s.committed)
        }

    def mark_committed(self, positions: Mapping[P, int]) -> None:
        for partition, position in positions.items():
            state = self._partitions.get(partition)
            if state is not None and (state.committed is None or position > state.committed):
                state.committed = position

    def in_flight(self, partition: P | None = None) -> int:
        """Tracked offsets not yet passed (finished ones waiting behind an earlier one included)."""
        if partition is not None:
            state = self._partitions.get(partition)
            return len(state.pending) if state else 0
        return sum(len(s.pending) for s in self._partitions.values())

    def next_offset(self, partition: P) -> int | None:
        """One past the last offset tracked on `partition` (None: nothing tracked since assigned)."""
        state = self._partitions.get(partition)
        if state is None:
            return None
        return state.pending[-1] + 1 if state.pending else state.position

    def drop(self, partitions: Iterable[P]) -> None:
        """Forget partitions (revoked): late `done` calls for them are ignored."""
        for partition in partitions:
            self._partitions.pop(partition, None)
