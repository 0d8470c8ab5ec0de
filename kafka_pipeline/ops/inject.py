"""One well-formed event built from flags, validated by the event model before it is sent."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from kafka_pipeline.claimx.events import ClaimXEvent, parse_event
from kafka_pipeline.claimx.handlers import HANDLERS
from kafka_pipeline.errors import PermanentError


class InvalidEvent(Exception):
    """The flags do not make a valid event; one line naming what is wrong."""


def build_event(event_type: str, project_id: str, *, ingested_at: datetime | None = None, **ids: str | None) -> tuple[bytes, ClaimXEvent]:
    """The JSON bytes of the event and the parsed event (the worker parses the same bytes).

    `ids`: event_id, media_id, task_assignment_id, video_collaboration_id, master_file_name.
    Only types a handler knows are accepted: anything else the worker would skip."""
    event_type = event_type.strip().upper()
    if event_type not in HANDLERS:
        raise InvalidEvent(f"unknown event type {event_type!r} (known: {', '.join(sorted(HANDLERS))})")
    fields: dict[str, Any] = {
        "event_type": event_type,
        "project_id": project_id,
        "ingested_at": (ingested_at or datetime.now(UTC)).isoformat(),
    }
    fields.update({name: value for name, value in ids.items() if value is not None})
    raw = json.dumps(fields, separators=(",", ":")).encode()
    try:
        event = parse_event(raw)
    except PermanentError as exc:
        raise InvalidEvent(str(exc)) from None
    return raw, event
