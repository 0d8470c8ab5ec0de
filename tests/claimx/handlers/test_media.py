"""MediaBatcher: one call for a project's media asked for together, each item to its asker."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from kafka_pipeline.claimx.api.client import ClaimXApiClient
from kafka_pipeline.claimx.handlers.media import MediaBatcher
from kafka_pipeline.config import ApiSettings
from kafka_pipeline.errors import PermanentError
from tests.fixtures.api import TOKEN


class HeldMedia:
    """Answers `GET .../media?mediaIds=...` with the ids asked for, once `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.asked: list[list[str]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        ids = request.url.params["mediaIds"].split(",")
        self.asked.append(ids)
        await self.release.wait()
        return httpx.Response(200, json=[{"mediaID": m, "projectId": 7} for m in ids if m != "404"])


async def test_a_cancelled_asker_leaves_the_others_their_items() -> None:
    """Askers are not shielded: cancelling one cancels its own wait only; the batch it was in
    still answers the others, and a missing item fails only its asker."""
    held = HeldMedia()
    settings = ApiSettings(url="http://claimx.test", token=TOKEN, max_requests_per_s=10_000)
    async with ClaimXApiClient(settings, transport=httpx.MockTransport(held)) as api:
        batcher = MediaBatcher(api, window_s=0.0)
        first, gone, twin, missing = (asyncio.create_task(batcher.fetch("7", m)) for m in ("1", "2", "1", "404"))
        deadline = asyncio.get_running_loop().time() + 5
        while not held.asked:
            assert asyncio.get_running_loop().time() < deadline, "the batch was never sent"
            await asyncio.sleep(0.001)
        gone.cancel()
        held.release.set()
        assert (await first)["mediaID"] == "1" and (await twin)["mediaID"] == "1"
        with pytest.raises(asyncio.CancelledError):
            await gone
        with pytest.raises(PermanentError, match="not listed"):
            await missing
    assert held.asked == [["1", "2", "404"]]  # one call for the four askers
    assert batcher.calls == 1 and not batcher._queues  # noqa: SLF001 - the project's queue is gone
