"""The message on the entity-rows topic: every row one event produced, per table.

One message per consumed event, keyed by `project_id`. Row values are JSON-ready
(timestamps as ISO-8601 strings in UTC, ids as strings); the writer adds the metadata
columns (`trace_id`, `event_time`, `created_at`, `updated_at`) and enforces the Arrow types
of `kafka_pipeline.claimx.schemas`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

Row = dict[str, Any]

# A value is refused before it is parsed past this size (a compressed batch can decode to anything).
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class EntityRowsMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trace_id: str
    event_type: str
    project_id: str
    event_time: AwareDatetime
    rows: dict[str, list[Row]] = Field(default_factory=dict)  # table name -> rows

    def to_bytes(self) -> bytes:
        return encode_rows_message(self.trace_id, self.event_type, self.project_id, self.event_time, self.rows)

    @classmethod
    def from_bytes(cls, value: bytes) -> EntityRowsMessage:
        """The message, or ValueError (pydantic's ValidationError included) naming what is wrong."""
        if len(value) > MAX_MESSAGE_BYTES:
            raise ValueError(f"message of {len(value)} bytes is over the {MAX_MESSAGE_BYTES} bytes allowed")
        return cls.model_validate_json(value)

    def row_count(self) -> int:
        return sum(len(rows) for rows in self.rows.values())


def encode_rows_message(trace_id: str, event_type: str, project_id: str, event_time: datetime, rows: dict[str, list[Row]]) -> bytes:
    """`EntityRowsMessage(...).to_bytes()` of fields already valid (a parsed event's), without
    building the model: the enrichment worker writes one per event.

    orjson: the rows are plain JSON values, which pydantic's serializer would inspect one by one
    as `Any` at several times the cost; `from_bytes` reads either form."""
    return orjson.dumps(
        {"trace_id": trace_id, "event_type": event_type, "project_id": project_id, "event_time": event_time, "rows": rows},
        option=orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z,  # "Z", as pydantic writes UTC
    )


def utc_iso(value: datetime | None) -> str | None:
    """The ISO-8601 form rows use for timestamps."""
    return None if value is None else value.isoformat()
