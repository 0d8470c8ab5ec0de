"""One load of a project, as every flight runs it: adopt what the shared tier already knows, or
call the loader under the tier's lock.

The shared tier is asked first (by the caller: a miss and a background refresh ask it different
questions). A project another worker verified becomes an in-process entry of that age and
nothing is loaded; one known absent is remembered and raises NotFound. Otherwise the loader
runs, timed and counted; when it fails the lock is released (waiting workers then load
themselves), and a 404 is remembered as absent for `absent_ttl_s`, in process and shared.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kafka_pipeline.claimx.cache.shared import SharedAnswer, SharedTier
from kafka_pipeline.claimx.cache.stats import Counters
from kafka_pipeline.claimx.cache.store import EntryStore
from kafka_pipeline.claimx.cache.verification import Loader, ProjectSnapshot, is_not_found, not_found

# Each load's duration and result, reported as (seconds, ok).
LoadObserver = Callable[[float, bool], None]


class ProjectLoader:
    def __init__(
        self, store: EntryStore, tier: SharedTier, counters: Counters, *, absent_ttl_s: float, observe: LoadObserver | None = None
    ) -> None:
        self._store = store
        self._tier = tier
        self._counters = counters
        self._absent_ttl = absent_ttl_s
        self._observe = observe

    async def load(self, project_id: str, load: Loader, answer: SharedAnswer) -> ProjectSnapshot | None:
        """The project's snapshot, or None when the shared tier's answer verified it already.

        Raises NotFound for a project the tier knows absent, and whatever `load` raised.
        """
        if answer.verified_age is not None:
            self._store.prime(project_id, answer.verified_age)
            return None
        if answer.absent_remaining is not None:
            self._store.prime_absent(project_id, answer.absent_remaining)
            raise not_found(project_id)
        started = time.perf_counter()
        try:
            snapshot = await load()
        except BaseException as exc:
            self._counters.loads_failed += 1
            self._report(time.perf_counter() - started, ok=False)
            if is_not_found(exc) and self._absent_ttl > 0:
                self._store.prime_absent(project_id, self._absent_ttl)
                self._tier.store_absent(project_id, answer.token, self._absent_ttl)  # releases the lock too
            elif answer.token is not None:
                self._tier.release(project_id, answer.token)
            raise
        self._counters.loads_ok += 1
        self._report(time.perf_counter() - started, ok=True)
        return snapshot

    def _report(self, seconds: float, *, ok: bool) -> None:
        if self._observe is not None:
            self._observe(seconds, ok)
