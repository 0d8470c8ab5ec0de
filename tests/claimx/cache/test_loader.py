"""One load alone: the shared tier's answer adopted, or the loader run, timed and counted, its lock
released on failure and a 404 remembered as absent."""

from __future__ import annotations

import pytest

from kafka_pipeline.claimx.cache.loader import ProjectLoader
from kafka_pipeline.claimx.cache.shared import LOCAL, SharedAnswer
from kafka_pipeline.claimx.cache.stats import Counters
from kafka_pipeline.claimx.cache.store import Absent, EntryStore
from kafka_pipeline.errors import PermanentError, TransientError
from tests.claimx.cache.helpers import FakeClock, Loader, RecordingTier, local_settings


def parts(absent_ttl_s: float = 10.0) -> tuple[ProjectLoader, EntryStore, RecordingTier, Counters, list[bool]]:
    store, tier, counters, observed = EntryStore(local_settings(), FakeClock()), RecordingTier(), Counters(), []
    loader = ProjectLoader(store, tier, counters, absent_ttl_s=absent_ttl_s, observe=lambda seconds, ok: observed.append(ok))
    return loader, store, tier, counters, observed


async def test_a_verified_answer_is_adopted_without_a_load() -> None:
    loader, store, _, counters, observed = parts()
    api = Loader()
    assert await loader.load("p1", api.for_project("p1"), SharedAnswer(verified_age=20.0)) is None
    assert api.calls == [] and store.live("p1") == 20.0 and counters.loads_ok == 0 and observed == []


async def test_an_absent_answer_is_remembered_and_raises_not_found() -> None:
    loader, store, _, _, _ = parts()
    with pytest.raises(PermanentError) as raised:
        await loader.load("p1", Loader().for_project("p1"), SharedAnswer(absent_remaining=5.0))
    assert raised.value.error_type == "NotFound" and isinstance(store.live("p1"), Absent)


async def test_a_load_is_counted_and_observed() -> None:
    loader, _, tier, counters, observed = parts()
    loaded = await loader.load("p1", Loader().for_project("p1"), SharedAnswer(token="t1"))
    assert loaded is not None and loaded.project_id == "p1"
    assert (counters.loads_ok, counters.loads_failed, observed) == (1, 0, [True])
    assert tier.calls == []  # the lock stays held until the rows are settled


async def test_a_failed_load_releases_the_lock() -> None:
    loader, store, tier, counters, observed = parts()
    with pytest.raises(TransientError):
        await loader.load("p1", Loader(error=TransientError("timeout")).for_project("p1"), SharedAnswer(token="t1"))
    assert tier.calls == [("release", "p1", "t1")] and len(store) == 0
    assert (counters.loads_failed, observed) == (1, [False])
    with pytest.raises(TransientError):
        await loader.load("p1", Loader(error=TransientError("timeout")).for_project("p1"), LOCAL)
    assert len(tier.calls) == 1  # no lock, nothing to release


@pytest.mark.parametrize(
    ("absent_ttl_s", "told"),
    [
        (10.0, ("store_absent", "p404", "t1", 10.0)),  # remembered here and shared; that frees the lock too
        (0.0, ("release", "p404", "t1")),  # not remembered: only the lock is released
    ],
)
async def test_a_404_is_remembered_as_absent_for_absent_ttl_s(absent_ttl_s: float, told: tuple[object, ...]) -> None:
    loader, store, tier, _, _ = parts(absent_ttl_s=absent_ttl_s)
    api = Loader()
    api.not_found.add("p404")
    with pytest.raises(PermanentError):
        await loader.load("p404", api.for_project("p404"), SharedAnswer(token="t1"))
    assert isinstance(store.live("p404"), Absent) is (absent_ttl_s > 0)
    assert tier.calls == [told]
