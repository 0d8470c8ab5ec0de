"""One load per project at a time, alone: shared result and exception, cancellation, close."""

from __future__ import annotations

import asyncio

import pytest

from kafka_pipeline.claimx.cache.single_flight import FlightResult, Flights
from tests.claimx.cache.helpers import snapshot
from tests.fixtures.waiting import until


async def test_callers_of_one_flight_share_its_result_and_it_leaves_the_table() -> None:
    flights = Flights()
    release = asyncio.Event()
    runs = 0

    async def fly() -> FlightResult:
        nonlocal runs
        runs += 1
        await release.wait()
        return FlightResult(snapshot("p1"))

    flight = flights.start("p1", fly, name="load-p1")
    assert flights.get("p1") is flight and "p1" in flights and "p2" not in flights
    waiters = [asyncio.ensure_future(asyncio.shield(flight)) for _ in range(5)]
    release.set()
    results = await asyncio.gather(*waiters)
    assert runs == 1 and all(r is results[0] for r in results)
    assert "p1" not in flights  # gone before its callers resumed: the next caller starts anew


async def test_a_failed_flight_raises_for_every_caller_and_is_not_left_unretrieved() -> None:
    flights = Flights()

    async def fly() -> FlightResult:
        await asyncio.sleep(0)
        raise RuntimeError("export timed out")

    flight = flights.start("p1", fly, name="load-p1")
    results = await asyncio.gather(*(asyncio.shield(flight) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results) and len({id(r) for r in results}) == 1
    assert "p1" not in flights


async def test_a_cancelled_caller_does_not_cancel_the_flight() -> None:
    flights = Flights()
    release = asyncio.Event()

    async def fly() -> FlightResult:
        await release.wait()
        return FlightResult(None, verified=False)

    flight = flights.start("p1", fly, name="load-p1")
    caller = asyncio.ensure_future(asyncio.shield(flight))
    await until(lambda: not caller.done() and "p1" in flights, "the caller waiting")
    caller.cancel()
    release.set()
    result = await flight
    assert result.verified is False and not flight.cancelled()
    with pytest.raises(asyncio.CancelledError):
        await caller


async def test_close_cancels_the_background_flights_only() -> None:
    flights = Flights()
    forever = asyncio.Event()

    async def fly() -> FlightResult:
        await forever.wait()
        return FlightResult(None)

    background = flights.start("p1", fly, name="refresh-p1", background=True)
    awaited = flights.start("p2", fly, name="load-p2")
    await until(lambda: "p1" in flights and "p2" in flights, "both flights running")
    await flights.close()
    assert background.cancelled() and "p1" not in flights
    assert not awaited.done()
    forever.set()
    assert (await awaited).snapshot is None
