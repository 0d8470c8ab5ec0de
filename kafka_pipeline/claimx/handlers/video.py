"""VIDEO_COLLABORATION_INVITE_SENT / _COMPLETED: fetch the project's video collaboration report
-> the `video_collab` row of the event's collaboration (by id, else the project's item);
ensure the project.

Concurrent video events of one project share one report call.
"""

from __future__ import annotations

from kafka_pipeline.claimx import transforms
from kafka_pipeline.claimx.events import ClaimXEvent
from kafka_pipeline.claimx.handlers.base import EventHandler, HandlerContext, register
from kafka_pipeline.claimx.transforms import Rows
from kafka_pipeline.errors import PermanentError


@register
class VideoCollaborationHandler(EventHandler):
    event_types = ("VIDEO_COLLABORATION_INVITE_SENT", "VIDEO_COLLABORATION_COMPLETED")

    async def child_rows(self, event: ClaimXEvent, ctx: HandlerContext) -> Rows:
        project_id = event.project_id
        items = await ctx.videos.run(project_id, lambda: ctx.api.get_video_collaborations(project_id))
        item = transforms.select_video_item(items, project_id, event.video_collaboration_id)
        if item is None:
            wanted = f"video collaboration {event.video_collaboration_id}" if event.video_collaboration_id else "a video collaboration"
            raise PermanentError(f"{wanted} not in the VIDEO_COLLABORATION report of project {project_id}", error_type="NotFound")
        return transforms.video_collab_rows(item, project_id)
