"""PROJECT_CREATED: always fetch the project (refreshing the cache) -> projects + contacts rows."""

from __future__ import annotations

from kafka_pipeline.claimx.events import ClaimXEvent
from kafka_pipeline.claimx.handlers.base import EventHandler, HandlerContext, register
from kafka_pipeline.claimx.transforms import Rows


@register
class ProjectCreatedHandler(EventHandler):
    event_types = ("PROJECT_CREATED",)
    refresh_project = True  # the snapshot rows the verification yields are this event's rows

    async def child_rows(self, event: ClaimXEvent, ctx: HandlerContext) -> Rows:
        return {}
