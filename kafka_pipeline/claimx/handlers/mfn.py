"""PROJECT_MFN_ADDED: the project's master file name, from the event; ensure the project."""

from __future__ import annotations

from kafka_pipeline.claimx import transforms
from kafka_pipeline.claimx.events import ClaimXEvent
from kafka_pipeline.claimx.handlers.base import EventHandler, HandlerContext, register
from kafka_pipeline.claimx.transforms import Rows


@register
class MasterFileNameHandler(EventHandler):
    event_types = ("PROJECT_MFN_ADDED",)

    async def child_rows(self, event: ClaimXEvent, ctx: HandlerContext) -> Rows:
        return transforms.mfn_row(event)
