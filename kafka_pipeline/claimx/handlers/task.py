"""CUSTOM_TASK_ASSIGNED / CUSTOM_TASK_COMPLETED: fetch the assignment -> tasks, task_templates,
external_links and a contact from the link when it has an email; ensure the project.

Concurrent events for one assignment (assigned and completed arriving together) share one call.
"""

from __future__ import annotations

from kafka_pipeline.claimx import transforms
from kafka_pipeline.claimx.events import ClaimXEvent
from kafka_pipeline.claimx.handlers.base import EventHandler, HandlerContext, register
from kafka_pipeline.claimx.transforms import Rows


@register
class TaskHandler(EventHandler):
    event_types = ("CUSTOM_TASK_ASSIGNED", "CUSTOM_TASK_COMPLETED")

    async def child_rows(self, event: ClaimXEvent, ctx: HandlerContext) -> Rows:
        assignment_id = event.task_assignment_id
        assert assignment_id is not None  # parse_event requires it for these types
        body = await ctx.tasks.run(assignment_id, lambda: ctx.api.get_task_assignment(assignment_id, event.project_id))
        return transforms.task_rows(body, event.project_id)
