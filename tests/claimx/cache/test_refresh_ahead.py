"""Refresh-ahead alone: one refresh at a time, emitted then confirmed; back-off after a failure or
while another worker refreshes; a fresher shared entry adopted."""

from __future__ import annotations

from kafka_pipeline.claimx.cache.loader import ProjectLoader
from kafka_pipeline.claimx.cache.refresh_ahead import RefreshAhead
from kafka_pipeline.claimx.cache.shared import SharedAnswer
from kafka_pipeline.claimx.cache.single_flight import Flights
from kafka_pipeline.claimx.cache.stats import Counters
from kafka_pipeline.claimx.cache.store import EntryStore
from kafka_pipeline.claimx.cache.verification import ProjectSnapshot
from kafka_pipeline.errors import TransientError
from tests.claimx.cache.helpers import FakeClock, Loader, RecordingTier, local_settings


class Refreshing:
    """A RefreshAhead on its own parts, recording what it emits and confirms."""

    def __init__(self, answer: SharedAnswer = SharedAnswer(), *, emit_error: Exception | None = None) -> None:
        self.clock = FakeClock()
        settings = local_settings(ttl_s=100.0, refresh_after_s=40.0, lock_wait_s=5.0)
        self.store = EntryStore(settings, self.clock)
        self.tier = RecordingTier(answer)
        self.counters = Counters()
        self.flights = Flights()
        self.emitted: list[ProjectSnapshot] = []
        self.confirmed: list[tuple[str, str | None]] = []
        self.emit_error = emit_error
        loader = ProjectLoader(self.store, self.tier, self.counters, absent_ttl_s=10.0)
        self.refresh = RefreshAhead(
            settings,
            flights=self.flights,
            loader=loader,
            tier=self.tier,
            counters=self.counters,
            emit=self._emit,
            confirmed=lambda project_id, token: self.confirmed.append((project_id, token)),
            clock=self.clock,
        )

    async def _emit(self, snapshot: ProjectSnapshot) -> None:
        if self.emit_error is not None:
            raise self.emit_error
        self.emitted.append(snapshot)

    async def run(self, project_id: str, loader: Loader) -> bool:
        """Ask for a refresh; True when one started (and has now ended)."""
        self.refresh.start(project_id, loader.for_project(project_id))
        flight = self.flights.get(project_id)
        if flight is None:
            return False
        await flight
        return True


def test_without_an_emitter_nothing_is_ever_due() -> None:
    clock, tier, counters = FakeClock(), RecordingTier(), Counters()
    loader = ProjectLoader(EntryStore(local_settings(), clock), tier, counters, absent_ttl_s=10.0)
    silent = RefreshAhead(
        local_settings(), flights=Flights(), loader=loader, tier=tier, counters=counters, emit=None,
        confirmed=lambda project_id, token: None, clock=clock,
    )
    assert silent.due_after_s == float("inf") and Refreshing().refresh.due_after_s == 40.0


async def test_a_refresh_emits_then_confirms_and_one_runs_at_a_time() -> None:
    refreshing, loader = Refreshing(SharedAnswer(token="t1")), Loader()
    refreshing.refresh.start("p1", loader.for_project("p1"))
    flight = refreshing.flights.get("p1")
    refreshing.refresh.start("p1", loader.for_project("p1"))  # already running: no second one
    assert flight is not None and refreshing.flights.get("p1") is flight
    result = await flight
    assert result.snapshot is not None and loader.calls == ["p1"]
    assert [s.project_id for s in refreshing.emitted] == ["p1"] and refreshing.confirmed == [("p1", "t1")]
    assert refreshing.counters.background_refreshes == 1


async def test_a_started_refresh_holds_off_further_ones_until_forgotten() -> None:
    refreshing, loader = Refreshing(), Loader()
    assert await refreshing.run("p1", loader)
    assert not await refreshing.run("p1", loader)  # not confirmed by the test double: held off for ttl_s
    refreshing.refresh.forget("p1")  # what a confirm does
    assert await refreshing.run("p1", loader)
    refreshing.refresh.forget_all()
    assert await refreshing.run("p1", loader) and loader.calls == ["p1"] * 3


async def test_a_failed_refresh_backs_off_a_quarter_of_the_window() -> None:
    refreshing, loader = Refreshing(SharedAnswer(token="t1"), emit_error=TransientError("broker down")), Loader()
    result_started = await refreshing.run("p1", loader)
    assert result_started and refreshing.counters.background_refresh_failures == 1
    assert refreshing.confirmed == [] and refreshing.tier.calls[-1] == ("release", "p1", "t1")
    refreshing.clock.advance(9.9)
    assert not await refreshing.run("p1", loader)
    refreshing.clock.advance(0.1)  # refresh_after_s / 4 = 10 s
    assert await refreshing.run("p1", loader) and refreshing.counters.background_refresh_failures == 2


async def test_a_failed_load_backs_off_too() -> None:
    refreshing = Refreshing()
    assert await refreshing.run("p1", Loader(error=TransientError("export timed out")))
    assert refreshing.counters.background_refresh_failures == 1 and refreshing.emitted == []
    assert not await refreshing.run("p1", Loader())


async def test_another_worker_refreshing_holds_this_one_off_for_the_lock_wait() -> None:
    refreshing, loader = Refreshing(SharedAnswer(busy=True)), Loader()
    assert await refreshing.run("p1", loader)
    assert loader.calls == [] and refreshing.counters.background_refresh_failures == 0
    refreshing.clock.advance(4.9)
    assert not await refreshing.run("p1", loader)
    refreshing.clock.advance(0.1)  # min(refresh_after_s, lock_wait_s) = 5 s
    assert await refreshing.run("p1", loader)


async def test_a_fresher_shared_entry_is_adopted_instead() -> None:
    refreshing, loader = Refreshing(SharedAnswer(verified_age=3.0)), Loader()
    assert await refreshing.run("p1", loader)
    assert loader.calls == [] and refreshing.emitted == [] and refreshing.store.live("p1") == 3.0
    assert await refreshing.run("p1", loader)  # adopted, not backing off
