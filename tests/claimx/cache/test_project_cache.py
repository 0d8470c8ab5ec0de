"""The ProjectCache as its parts compose: hits, expiry, single flight, pending/confirm, absent,
LRU, refresh-ahead, and the answers of a shared tier (a recording double; the real Redis tier is
in test_redis_tier)."""

from __future__ import annotations

import asyncio

import pytest

from kafka_pipeline.claimx.cache.project_cache import NoCache, ProjectCache, ProjectSnapshot, Verification
from kafka_pipeline.claimx.cache.shared import SharedAnswer
from kafka_pipeline.config import CacheSettings
from kafka_pipeline.errors import PermanentError, TransientError
from tests.claimx.cache.helpers import FakeClock, Loader, RecordingTier, make_cache, verify_confirmed
from tests.fixtures.waiting import until


async def test_miss_loads_then_confirmed_project_is_a_hit() -> None:
    clock, loader = FakeClock(), Loader()
    cache = make_cache(clock)
    first = await cache.verify("p1", loader.for_project("p1"))
    assert first.outcome == "loaded"
    assert first.snapshot is not None and first.snapshot.rows["claimx_projects"][0]["project_id"] == "p1"
    cache.confirm("p1")
    second = await cache.verify("p1", loader.for_project("p1"))
    assert second == Verification("hit", None)
    assert loader.calls == ["p1"]
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.loads_ok, stats.size) == (1, 1, 1, 1)
    assert stats.hit_rate == 0.5


async def test_entry_expires_after_ttl() -> None:
    clock, loader = FakeClock(), Loader()
    cache = make_cache(clock)
    await verify_confirmed(cache, "p1", loader)
    clock.advance(99.9)
    assert (await cache.verify("p1", loader.for_project("p1"))).outcome == "hit"
    clock.advance(0.1)
    assert (await cache.verify("p1", loader.for_project("p1"))).outcome == "loaded"
    assert loader.calls == ["p1", "p1"]


async def test_ttl_counts_from_confirm_not_from_load() -> None:
    clock, loader = FakeClock(), Loader()
    cache = make_cache(clock)
    await cache.verify("p1", loader.for_project("p1"))
    clock.advance(30)
    cache.confirm("p1")
    clock.advance(99)
    assert (await cache.verify("p1", loader.for_project("p1"))).outcome == "hit"


async def test_fifty_concurrent_callers_share_one_load() -> None:
    clock, loader = FakeClock(), Loader(delay=0.02)
    cache = make_cache(clock)
    results = await asyncio.gather(*(cache.verify("p1", loader.for_project("p1")) for _ in range(50)))
    assert loader.calls == ["p1"]
    outcomes = sorted(r.outcome for r in results)
    assert outcomes == ["coalesced"] * 49 + ["loaded"]
    assert all(r.snapshot is results[0].snapshot for r in results)  # the same rows for everyone
    stats = cache.stats()
    assert (stats.misses, stats.coalesced, stats.loads_ok) == (1, 49, 1)


async def test_failed_load_reaches_every_waiter_and_caches_nothing() -> None:
    clock = FakeClock()
    loader = Loader(delay=0.01, error=TransientError("export timed out"))
    cache = make_cache(clock)
    results = await asyncio.gather(*(cache.verify("p1", loader.for_project("p1")) for _ in range(10)), return_exceptions=True)
    assert loader.calls == ["p1"]
    assert all(isinstance(r, TransientError) for r in results)
    assert len({id(r) for r in results}) == 1  # the same exception
    assert cache.stats().loads_failed == 1 and len(cache) == 0
    loader.error = None
    assert (await cache.verify("p1", loader.for_project("p1"))).outcome == "loaded"
    assert loader.calls == ["p1", "p1"]


async def test_pending_entry_answers_coalesced_until_confirmed() -> None:
    clock, loader = FakeClock(), Loader()
    cache = make_cache(clock)
    loaded = await cache.verify("p1", loader.for_project("p1"))
    again = await cache.verify("p1", loader.for_project("p1"))
    assert again.outcome == "coalesced" and again.snapshot is loaded.snapshot
    assert loader.calls == ["p1"] and cache.stats().pending == 1
    cache.confirm("p1")
    assert (await cache.verify("p1", loader.for_project("p1"))).outcome == "hit"
    assert cache.stats().pending == 0


async def test_abandon_drops_the_unconfirmed_entry() -> None:
    clock, loader = FakeClock(), Loader()
    cache = make_cache(clock)
    await cache.verify("p1", loader.for_project("p1"))
    cache.abandon("p1")
    assert (await cache.verify("p1", loader.for_project("p1"))).outcome == "loaded"
    assert loader.calls == ["p1", "p1"]


async def test_abandon_after_confirm_keeps_the_hit() -> None:
    clock, loader = FakeClock(), Loader()
    cache = make_cache(clock)
    await verify_confirmed(cache, "p1", loader)
    cache.abandon("p1")
    assert (await cache.verify("p1", loader.for_project("p1"))).outcome == "hit"


async def test_second_confirm_does_not_extend_the_entry() -> None:
    clock, loader = FakeClock(), Loader()
    cache = make_cache(clock)
    await verify_confirmed(cache, "p1", loader)
    clock.advance(60)
    cache.confirm("p1")  # e.g. a coalesced caller acked later
    clock.advance(41)
    assert (await cache.verify("p1", loader.for_project("p1"))).outcome == "loaded"


async def test_not_found_is_cached_as_absent_then_expires() -> None:
    clock = FakeClock()
    loader = Loader(error=PermanentError("404 project", error_type="NotFound"))
    cache = make_cache(clock)
    with pytest.raises(PermanentError):
        await cache.verify("p404", loader.for_project("p404"))
    with pytest.raises(PermanentError) as cached:
        await cache.verify("p404", loader.for_project("p404"))
    assert cached.value.error_type == "NotFound"
    assert loader.calls == ["p404"] and cache.stats().absent_hits == 1
    clock.advance(10)
    loader.error = None
    assert (await cache.verify("p404", loader.for_project("p404"))).outcome == "loaded"
    assert loader.calls == ["p404", "p404"]


async def test_other_permanent_errors_are_not_cached() -> None:
    clock = FakeClock()
    loader = Loader(error=PermanentError("400 bad id", error_type="BadRequest"))
    cache = make_cache(clock)
    for _ in range(2):
        with pytest.raises(PermanentError):
            await cache.verify("p1", loader.for_project("p1"))
    assert loader.calls == ["p1", "p1"]


async def test_refresh_always_loads_and_replaces_the_entry() -> None:
    clock, loader = FakeClock(), Loader()
    cache = make_cache(clock)
    await verify_confirmed(cache, "p1", loader)
    clock.advance(90)
    refreshed = await cache.verify("p1", loader.for_project("p1"), refresh=True)
    assert refreshed.outcome == "loaded"
    assert refreshed.snapshot is not None and refreshed.snapshot.rows["claimx_projects"][0]["status"] == "v2"
    cache.confirm("p1")
    clock.advance(90)  # 180 s after the first load, 90 s after the refresh
    assert (await cache.verify("p1", loader.for_project("p1"))).outcome == "hit"


async def test_refresh_joins_an_in_flight_load() -> None:
    clock, loader = FakeClock(), Loader(delay=0.02)
    cache = make_cache(clock)
    plain = asyncio.ensure_future(cache.verify("p1", loader.for_project("p1")))
    await until(lambda: loader.calls == ["p1"], "the first load in flight")
    refreshed = await cache.verify("p1", loader.for_project("p1"), refresh=True)
    assert refreshed.outcome == "coalesced" and (await plain).outcome == "loaded"
    assert loader.calls == ["p1"]


async def test_refresh_loads_an_absent_project() -> None:
    clock = FakeClock()
    loader = Loader(error=PermanentError("404", error_type="NotFound"))
    cache = make_cache(clock)
    with pytest.raises(PermanentError):
        await cache.verify("p1", loader.for_project("p1"))
    loader.error = None
    assert (await cache.verify("p1", loader.for_project("p1"), refresh=True)).outcome == "loaded"


async def test_least_recently_used_entry_is_evicted() -> None:
    clock, loader = FakeClock(), Loader()
    cache = make_cache(clock, max_entries=3)
    for project_id in ("a", "b", "c"):
        await verify_confirmed(cache, project_id, loader)
    assert (await cache.verify("a", loader.for_project("a"))).outcome == "hit"  # a is now the newest
    await verify_confirmed(cache, "d", loader)  # evicts b
    assert cache.stats().evictions == 1 and len(cache) == 3
    assert (await cache.verify("a", loader.for_project("a"))).outcome == "hit"
    assert (await cache.verify("b", loader.for_project("b"))).outcome == "loaded"


async def test_invalidate_some_or_all() -> None:
    clock, loader = FakeClock(), Loader()
    cache = make_cache(clock)
    for project_id in ("a", "b", "c"):
        await verify_confirmed(cache, project_id, loader)
    assert cache.invalidate(["a", "zzz"]) == 1
    assert (await cache.verify("a", loader.for_project("a"))).outcome == "loaded"
    assert cache.invalidate() == 3  # b, c and the pending a
    assert len(cache) == 0 and cache.stats().pending == 0


async def test_cancelled_caller_does_not_cancel_the_shared_load() -> None:
    clock, loader = FakeClock(), Loader(delay=0.05)
    cache = make_cache(clock)
    first = asyncio.ensure_future(cache.verify("p1", loader.for_project("p1")))
    await until(lambda: loader.calls == ["p1"], "the load in flight")
    second = asyncio.ensure_future(cache.verify("p1", loader.for_project("p1")))
    first.cancel()
    result = await second
    assert result.outcome == "coalesced" and result.snapshot is not None
    assert loader.calls == ["p1"]


async def test_background_refresh_fires_once_after_refresh_after() -> None:
    clock, loader = FakeClock(), Loader(delay=0.01)
    emitted: list[ProjectSnapshot] = []

    async def emit(fresh: ProjectSnapshot) -> None:
        emitted.append(fresh)

    cache = ProjectCache(CacheSettings(ttl_s=100, refresh_after_s=50, ttl_jitter_s=0), clock=clock, on_background_refresh=emit)
    await verify_confirmed(cache, "p1", loader)
    clock.advance(49)
    not_due = Loader()  # a refresh started by this hit would load through it
    assert (await cache.verify("p1", not_due.for_project("p1"))).outcome == "hit"
    clock.advance(2)
    results = [await cache.verify("p1", loader.for_project("p1")) for _ in range(20)]
    assert {r.outcome for r in results} == {"hit"}  # still answered as hits
    await until(lambda: cache.stats().background_refreshes == 1, "the background refresh")
    assert not_due.calls == [] and loader.calls == ["p1", "p1"]  # one reload for twenty stale hits
    assert [s.rows["claimx_projects"][0]["status"] for s in emitted] == ["v2"]
    clock.advance(49)  # 49 s after the refresh was confirmed: fresh, no further reload
    fresh = Loader()
    assert (await cache.verify("p1", fresh.for_project("p1"))).outcome == "hit"
    clock.advance(9)  # 109 s after the first confirm, past its ttl: the refreshed entry is a hit, due again
    again = Loader()
    assert (await cache.verify("p1", again.for_project("p1"))).outcome == "hit"
    await until(lambda: cache.stats().background_refreshes == 2, "the second refresh")
    assert fresh.calls == [] and again.calls == ["p1"]
    await cache.close()


async def test_failed_background_refresh_keeps_the_entry_and_backs_off() -> None:
    clock, loader = FakeClock(), Loader()
    calls = 0

    async def emit(fresh: ProjectSnapshot) -> None:
        nonlocal calls
        calls += 1
        raise TransientError("broker unavailable")

    cache = ProjectCache(CacheSettings(ttl_s=100, refresh_after_s=40, ttl_jitter_s=0), clock=clock, on_background_refresh=emit)
    await verify_confirmed(cache, "p1", loader)
    clock.advance(45)
    assert (await cache.verify("p1", loader.for_project("p1"))).outcome == "hit"
    await until(lambda: cache.stats().background_refresh_failures == 1, "the failed refresh")
    backing_off = Loader()
    for _ in range(5):
        assert (await cache.verify("p1", backing_off.for_project("p1"))).outcome == "hit"
    clock.advance(10)  # back-off (refresh_after / 4) over: one more attempt
    retry = Loader()
    assert (await cache.verify("p1", retry.for_project("p1"))).outcome == "hit"
    await until(lambda: cache.stats().background_refresh_failures == 2, "the second attempt")
    assert backing_off.calls == [] and retry.calls == ["p1"] and calls == 2
    await cache.close()


async def test_jitter_spreads_expiry_but_never_below_refresh_window() -> None:
    clock, loader = FakeClock(), Loader()
    cache = make_cache(clock, ttl_jitter_s=1_000.0)  # capped at refresh_after / 2 = 25 s
    for i in range(200):
        await verify_confirmed(cache, f"p{i}", loader)
    clock.advance(74.9)
    outcomes = [(await cache.verify(f"p{i}", loader.for_project(f"p{i}"))).outcome for i in range(200)]
    assert set(outcomes) == {"hit"}
    clock.advance(20)
    outcomes = [(await cache.verify(f"p{i}", loader.for_project(f"p{i}"))).outcome for i in range(200)]
    assert "hit" in outcomes and "loaded" in outcomes


async def test_stats_line() -> None:
    clock, loader = FakeClock(), Loader()
    cache = make_cache(clock)
    await verify_confirmed(cache, "p1", loader)
    for _ in range(3):
        await cache.verify("p1", loader.for_project("p1"))
    assert cache.stats_line() == "project_cache_size=1 hit_rate=75.0% (l1=75.0% l2=0.0%)"


async def test_no_cache_loads_every_time() -> None:
    loader = Loader(delay=0.01)
    cache = NoCache(CacheSettings())
    results = await asyncio.gather(*(cache.verify("p1", loader.for_project("p1")) for _ in range(5)))
    assert {r.outcome for r in results} == {"loaded"} and len(loader.calls) == 5
    results[0].confirm()  # settling holds nothing: the next call loads again
    assert (await cache.verify("p1", loader.for_project("p1"))).outcome == "loaded"
    assert cache.stats().misses == 6 and cache.invalidate() == 0


# --- the shared tier's answers, through a recording double --------------------------------------


async def test_a_project_the_shared_tier_verified_is_a_hit_without_a_load() -> None:
    clock, loader = FakeClock(), Loader()
    tier = RecordingTier(SharedAnswer(verified_age=30.0))
    cache = ProjectCache(CacheSettings(ttl_s=100, refresh_after_s=50, ttl_jitter_s=0), clock=clock, shared_tier=tier)
    assert await cache.verify("p1", loader.for_project("p1")) == Verification("hit")
    assert loader.calls == [] and cache.stats().l2_hits == 1 and "p1" in cache
    clock.advance(70)  # it was 30 s old when adopted: expired now
    assert "p1" not in cache


async def test_the_load_lock_goes_with_the_confirm_or_is_released_on_abandon() -> None:
    clock, loader = FakeClock(), Loader()
    tier = RecordingTier(SharedAnswer(token="t1"))
    cache = ProjectCache(CacheSettings(ttl_jitter_s=0), clock=clock, shared_tier=tier)
    with await cache.verify("p1", loader.for_project("p1")):
        pass  # the rows were acknowledged
    with pytest.raises(RuntimeError), await cache.verify("p2", loader.for_project("p2")):
        raise RuntimeError("produce failed")
    refreshed = await cache.verify("p1", loader.for_project("p1"), refresh=True)
    refreshed.confirm()
    assert [call for call in tier.calls if call[0] in ("confirm", "release")] == [
        ("confirm", "p1", "t1", False),
        ("release", "p2", "t1"),
        ("confirm", "p1", "t1", True),  # a refresh tells the other workers to drop their entry
    ]
    assert "p1" in cache and "p2" not in cache


async def test_a_project_the_shared_tier_knows_absent_is_not_found_here_too() -> None:
    clock, loader = FakeClock(), Loader()
    tier = RecordingTier(SharedAnswer(absent_remaining=5.0))
    cache = ProjectCache(CacheSettings(), clock=clock, shared_tier=tier)
    for _ in range(2):
        with pytest.raises(PermanentError, match="not found"):
            await cache.verify("p1", loader.for_project("p1"))
    assert loader.calls == [] and cache.stats().absent_hits == 1  # the second answered in process


async def test_an_invalidation_from_another_worker_drops_the_entry_without_echo() -> None:
    clock, loader = FakeClock(), Loader()
    tier = RecordingTier()
    cache = ProjectCache(CacheSettings(), clock=clock, shared_tier=tier)
    await verify_confirmed(cache, "p1", loader)
    tier.invalidated_by_others(["p1"])
    assert "p1" not in cache and ("invalidate", ["p1"]) not in tier.calls
    cache.invalidate(["p2"])
    assert ("invalidate", ["p2"]) in tier.calls


async def test_begin_verify_answers_as_verify_does() -> None:
    """`begin_verify` (the handlers' way: the answer at once, else a coroutine awaited after the
    event's own fetch) gives what verify() gives, with the same counts: every outcome, a
    failure shared by the callers of one flight, a remembered 404, a refresh, an expiry."""

    async def scenario(ask: str) -> tuple[list[object], tuple[int, ...]]:
        clock, loader = FakeClock(), Loader(delay=0.01)
        cache = make_cache(clock)

        async def call(project_id: str, refresh: bool = False) -> object:
            try:
                if ask == "verify":
                    answer = await cache.verify(project_id, loader.for_project(project_id), refresh=refresh)
                else:
                    begun = cache.begin_verify(project_id, loader.for_project(project_id), refresh=refresh)
                    await asyncio.sleep(0.02)  # the event's own fetch meanwhile
                    answer = begun if isinstance(begun, Verification) else await begun
            except PermanentError as exc:
                return ("raised", exc.error_type)
            return (answer.outcome, answer.snapshot)

        seen: list[object] = list(await asyncio.gather(*(call("p1") for _ in range(5))))  # one load, four coalesced
        seen.append(await call("p1"))  # loaded, not yet confirmed: the held snapshot
        cache.confirm("p1")
        seen.append(await call("p1"))  # hit
        seen.append(await call("p1", refresh=True))  # loaded again
        loader.not_found.add("p2")
        seen += await asyncio.gather(*(call("p2") for _ in range(3)))  # one 404 shared
        seen.append(await call("p2"))  # remembered as absent: no load
        clock.advance(1_000)
        seen.append(await call("p1"))  # expired: loaded
        loader.error = TransientError("export timed out")
        failed = await asyncio.gather(*(cache.verify("p3", loader.for_project("p3")) if ask == "verify" else _begun(cache, loader, "p3")
                                        for _ in range(3)), return_exceptions=True)
        seen.append([type(f).__name__ for f in failed])
        stats = cache.stats()
        return seen, (stats.hits, stats.misses, stats.coalesced, stats.loads_ok, stats.loads_failed, stats.size, loader.total)

    begun, verified = await scenario("begin"), await scenario("verify")
    assert begun == verified
    assert {answer[0] for answer in begun[0][:-1] if isinstance(answer, tuple)} == {"loaded", "coalesced", "hit", "raised"}  # every kind met


async def _begun(cache: ProjectCache, loader: Loader, project_id: str) -> Verification:
    begun = cache.begin_verify(project_id, loader.for_project(project_id))
    return begun if isinstance(begun, Verification) else await begun
