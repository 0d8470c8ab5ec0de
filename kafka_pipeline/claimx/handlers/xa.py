"""PROJECT_AUTO_XA_LINKING_UNSUCCESSFUL: flag the project and when; ensure the project."""

from __future__ import annotations

from kafka_pipeline.claimx import transforms
from kafka_pipeline.claimx.events import ClaimXEvent
from kafka_pipeline.claimx.handlers.base import EventHandler, HandlerContext, register
from kafka_pipeline.claimx.transforms import Rows


@register
class XaLinkingHandler(EventHandler):
    event_types = ("PROJECT_AUTO_XA_LINKING_UNSUCCESSFUL",)

    async def child_rows(self, event: ClaimXEvent, ctx: HandlerContext) -> Rows:
        return transforms.xa_row(event)
