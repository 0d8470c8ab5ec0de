"""PROJECT_FILE_ADDED: fetch the media item -> a `media` row; ensure the project.

Media events of one project that are in flight together cost one call: `MediaBatcher` collects
the media ids asked for during a short window (and while the project's previous call is still
in flight), sends one `GET /export/project/{id}/media?mediaIds=...` and hands each item back
to the event that asked for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kafka_pipeline.claimx import transforms
from kafka_pipeline.claimx.api.client import ClaimXApiClient
from kafka_pipeline.claimx.events import ClaimXEvent
from kafka_pipeline.claimx.handlers.base import EventHandler, HandlerContext, register
from kafka_pipeline.claimx.transforms import Rows
from kafka_pipeline.errors import PermanentError


@dataclass
class _ProjectQueue:
    waiting: dict[str, list[asyncio.Future[Mapping[str, Any]]]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


class MediaBatcher:
    def __init__(self, api: ClaimXApiClient, *, window_s: float = 0.005, max_batch: int = 100) -> None:
        self.api = api
        self.window_s = window_s
        self.max_batch = max_batch
        self._queues: dict[str, _ProjectQueue] = {}
        self.calls = 0  # media calls made
        self.items_requested = 0  # media ids asked for by events

    async def fetch(self, project_id: str, media_id: str) -> Mapping[str, Any]:
        """The media item; PermanentError(NotFound) when the API does not list it."""
        loop = asyncio.get_running_loop()
        queue = self._queues.get(project_id)
        if queue is None:
            queue = self._queues[project_id] = _ProjectQueue()
        future: asyncio.Future[Mapping[str, Any]] = loop.create_future()
        queue.waiting.setdefault(media_id, []).append(future)
        self.items_requested += 1
        if queue.task is None:
            queue.task = asyncio.create_task(self._drain(project_id, queue), name=f"media-batch-{project_id}")
        # Not shielded: the future is this caller's alone, and the batch skips a cancelled one.
        return await future

    async def _drain(self, project_id: str, queue: _ProjectQueue) -> None:
        try:
            if self.window_s > 0:
                await asyncio.sleep(self.window_s)
            while queue.waiting:
                ids = list(queue.waiting)[: self.max_batch]
                batch = {media_id: queue.waiting.pop(media_id) for media_id in ids}
                self.calls += 1
                try:
                    items = await self.api.get_project_media(project_id, ids)
                except asyncio.CancelledError:
                    _cancel(batch)
                    _cancel(queue.waiting)
                    raise
                except Exception as exc:  # noqa: BLE001 - every waiter of this call gets the failure
                    _fail(batch, exc)
                    continue
                by_id = {transforms.media_item_id(item): item for item in items}
                for media_id, futures in batch.items():
                    item = by_id.get(media_id)
                    if item is None:
                        error = PermanentError(f"media {media_id} not listed for project {project_id}", error_type="NotFound")
                        _fail({media_id: futures}, error)
                    else:
                        for future in futures:
                            if not future.done():
                                future.set_result(item)
        finally:
            if self._queues.get(project_id) is queue:
                del self._queues[project_id]


def _fail(batch: Mapping[str, list[asyncio.Future[Any]]], error: BaseException) -> None:
    for futures in batch.values():
        for future in futures:
            if not future.done():
                future.set_exception(error)
                future.exception()  # the waiter may have gone (cancelled); do not warn about it


def _cancel(batch: Mapping[str, list[asyncio.Future[Any]]]) -> None:
    for futures in batch.values():
        for future in futures:
            future.cancel()


@register
class MediaHandler(EventHandler):
    event_types = ("PROJECT_FILE_ADDED",)

    async def child_rows(self, event: ClaimXEvent, ctx: HandlerContext) -> Rows:
        assert event.media_id is not None  # parse_event requires it for this type
        item = await ctx.media.fetch(event.project_id, event.media_id)
        return transforms.media_rows([item], event.project_id)
