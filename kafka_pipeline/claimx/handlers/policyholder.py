"""POLICYHOLDER_INVITED / POLICYHOLDER_JOINED: when, from the event time; ensure the project."""

from __future__ import annotations

from kafka_pipeline.claimx import transforms
from kafka_pipeline.claimx.events import ClaimXEvent
from kafka_pipeline.claimx.handlers.base import EventHandler, HandlerContext, register
from kafka_pipeline.claimx.transforms import Rows


@register
class PolicyholderHandler(EventHandler):
    event_types = ("POLICYHOLDER_INVITED", "POLICYHOLDER_JOINED")

    async def child_rows(self, event: ClaimXEvent, ctx: HandlerContext) -> Rows:
        return transforms.policyholder_row(event)
