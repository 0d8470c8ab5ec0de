"""The entity-rows message as the enrichment worker writes it."""

from __future__ import annotations

from datetime import UTC, datetime

from kafka_pipeline.claimx import transforms
from kafka_pipeline.claimx.entity_rows import EntityRowsMessage, encode_rows_message
from kafka_pipeline.claimx.events import parse_event


def test_the_worker_s_encoding_is_the_model_s_and_reads_back() -> None:
    event = parse_event(b'{"eventType": "PROJECT_FILE_ADDED", "projectId": 5, "mediaId": 5001, "ingestedAt": "2026-02-01T23:30:00-02:00"}')
    rows = transforms.merge_rows(
        transforms.media_rows([{"mediaID": 5001, "projectId": 5, "mediaName": "caf\u00e9.jpg", "latitude": 1.5}], "5"),
        transforms.event_row(event),
    )
    encoded = encode_rows_message(event.trace_id, event.event_type, event.project_id, event.event_time, rows)
    model = EntityRowsMessage(trace_id=event.trace_id, event_type=event.event_type, project_id="5", event_time=event.event_time, rows=rows)
    assert encoded == model.to_bytes()
    assert EntityRowsMessage.from_bytes(encoded) == model
    assert b'"event_time":"2026-02-02T01:30:00Z"' in encoded  # UTC written with "Z", as pydantic writes it
    assert EntityRowsMessage.from_bytes(encoded).event_time == datetime(2026, 2, 2, 1, 30, tzinfo=UTC)
