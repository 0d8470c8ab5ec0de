"""The in-process entries: verified projects for `ttl_s`, absent ones (404) for a while, LRU-bounded.

A verified entry is the monotonic time from which it counts as verified (a bare float: the
cache holds up to `max_entries` of them, so each costs as little as a dict slot can); an absent
entry is an `Absent` with the time it ends. The least recently used entry goes beyond
`max_entries`.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable

from kafka_pipeline.config import CacheSettings


def entry_jitter_s(settings: CacheSettings, rng: random.Random | None = None) -> float:
    """How much older than now a confirmed entry is stamped, so entries confirmed together do
    not expire together (the Redis tier shortens its entries' lifetime by the same draw).

    Uniform below `ttl_jitter_s`, capped at half of `refresh_after_s` so a fresh entry is never
    already due for its background refresh.
    """
    cap = min(settings.ttl_jitter_s, settings.refresh_after_s / 2)
    return (rng or random).random() * cap if cap else 0.0


class Absent:
    """An entry for a project the API answered 404 for, until `until`."""

    __slots__ = ("until",)

    def __init__(self, until: float) -> None:
        self.until = until


class EntryStore:
    def __init__(self, settings: CacheSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self._clock = clock
        self._ttl = settings.ttl_s
        self._max_entries = settings.max_entries
        self._entries: OrderedDict[str, float | Absent] = OrderedDict()
        self.evictions = 0

    def fresh_age(self, project_id: str) -> float | None:
        """Seconds since the project was verified, if that is within `ttl_s` (it then counts as
        used); None otherwise. The hot path: one dict lookup, no allocation."""
        stamp = self._entries.get(project_id)
        if stamp.__class__ is float:
            age = self._clock() - stamp
            if age < self._ttl:
                self._entries.move_to_end(project_id)
                return age
        return None

    def live(self, project_id: str) -> float | Absent | None:
        """The project's unexpired entry (its age when verified), counted as used; an expired
        one is dropped and None returned."""
        entry = self._entries.get(project_id)
        if entry is None:
            return None
        now = self._clock()
        if entry.__class__ is Absent:
            alive: float | Absent | None = entry if now < entry.until else None
        else:
            age = now - entry  # type: ignore[operator]
            alive = age if age < self._ttl else None
        if alive is None:
            del self._entries[project_id]
        else:
            self._entries.move_to_end(project_id)
        return alive

    def confirm(self, project_id: str) -> None:
        """The project is verified now (less the expiry jitter)."""
        self._put(project_id, self._clock() - entry_jitter_s(self.settings))

    def prime(self, project_id: str, age_s: float = 0.0) -> bool:
        """Record a project verified `age_s` seconds ago. False (nothing recorded) when that is
        already past `ttl_s` or the project has a fresher entry."""
        if age_s >= self._ttl:
            return False
        stamp = self._clock() - age_s
        entry = self._entries.get(project_id)
        if entry.__class__ is float and entry >= stamp:
            return False
        self._put(project_id, stamp)
        return True

    def prime_absent(self, project_id: str, remaining_s: float) -> None:
        """Remember the project as absent for `remaining_s` more seconds."""
        if remaining_s > 0:
            self._put(project_id, Absent(self._clock() + remaining_s))

    def drop(self, project_id: str) -> bool:
        return self._entries.pop(project_id, None) is not None

    def clear(self) -> int:
        dropped = len(self._entries)
        self._entries.clear()
        return dropped

    def __len__(self) -> int:
        return len(self._entries)

    def _put(self, project_id: str, value: float | Absent) -> None:
        entries = self._entries
        entries[project_id] = value
        entries.move_to_end(project_id)
        if len(entries) > self._max_entries:
            entries.popitem(last=False)
            self.evictions += 1
