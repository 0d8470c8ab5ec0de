"""A corpus of poison messages for the events topic: what a hostile producer, a buggy upstream or
a careless operator can put there. Each one must end in the DLQ with its reason; none may stop a
worker or write a row.

Families (issue 10): deep nesting, numbers the int parser refuses, times out of range in UTC or
far in the future, lone surrogates in every id and text field, ids unsafe in an API path, bytes
that are not UTF-8 or not JSON at all, empty values, envelopes over the producer's size limit,
and messages carrying forged retry headers (among them a forged entity-rows message).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field

# A project the simulator answers 404 for (the pipeline run configures it): valid events of it
# fail permanently after the API call, so they reach the DLQ through the handler path.
MISSING_PROJECT_ID = 99_999_999

INGESTED_AT = "2026-03-02T08:00:00Z"


@dataclass(frozen=True)
class Poison:
    name: str
    value: bytes | None
    reason: str  # a fragment the dead letter's error_message must hold
    error_type: str = "MalformedEvent"
    key: bytes | None = b"poison"
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    oversize: bool = False  # its envelope cannot hold it whole: the letter is truncated


def _event(**fields: object) -> dict[str, object]:
    return {"event_type": "PROJECT_CREATED", "project_id": 5_000_001, "ingested_at": INGESTED_AT, **fields}


def _json(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def _forged_retry_headers(target: str) -> list[tuple[str, bytes]]:
    """Retry headers as a forger writes them: a foreign target, an attempt meant to skip every
    retry, coordinates that claim to be some genuine message's."""
    return [
        ("retry-attempt", b"4"),
        ("retry-due-at", b"0"),
        ("retry-target-topic", target.encode()),
        ("retry-error-category", b"transient"),
        ("retry-original-partition", b"0"),
        ("retry-original-offset", b"0"),
    ]


def corpus(*, entity_rows_topic: str = "claimx.entity_rows", huge: bool = True) -> list[Poison]:
    """Every poison message, each value distinct (the DLQ is matched back to them by value).

    `huge` adds the multi-megabyte ones (the pipeline run sends them with a large request size)."""
    rng = random.Random(10)
    items: list[Poison] = []

    # -- nesting and numbers: the json module's own limits --------------------------------------
    items.append(Poison("deep-array", _nested(100_000).encode(), "nested too deeply"))
    items.append(Poison("deep-object", ('{"a":' * 100_000 + "1" + "}" * 100_000).encode(), "nested too deeply"))
    deep_field = f'{{"event_type":"PROJECT_CREATED","project_id":1,"ingested_at":"{INGESTED_AT}","x":{_nested(50_000)}}}'
    items.append(Poison("deep-inside-event", deep_field.encode(), "nested too deeply"))
    items.append(Poison("huge-int-id", f'{{"event_type":"PROJECT_CREATED","project_id":{"9" * 5000},"ingested_at":"{INGESTED_AT}"}}'.encode(), "not JSON"))
    items.append(Poison("huge-int-extra", f'{{"event_type":"PROJECT_CREATED","project_id":1,"ingested_at":"{INGESTED_AT}","n":{"1" * 4301}}}'.encode(), "not JSON"))
    items.append(Poison("infinite-id", f'{{"event_type":"PROJECT_CREATED","project_id":1e400,"ingested_at":"{INGESTED_AT}"}}'.encode(), "project_id"))
    items.append(Poison("nan-id", f'{{"event_type":"PROJECT_CREATED","project_id":NaN,"ingested_at":"{INGESTED_AT}"}}'.encode(), "project_id"))

    # -- times ---------------------------------------------------------------------------------
    for name, stamp, reason in [
        ("year-1-with-offset", "0001-01-01T00:00:00+01:00", "out of range"),
        ("year-9999-with-offset", "9999-12-31T23:59:59-05:00", "out of range"),
        ("year-9999", "9999-12-31T23:59:59Z", "in the future"),
        ("year-2099", "2099-01-01T00:00:00Z", "in the future"),
        ("not-a-time", "yesterday", "unparseable timestamp"),
        ("time-as-number", 1_767_225_600, "unparseable timestamp"),
    ]:
        items.append(Poison(name, _json(_event(ingested_at=stamp)), reason))

    # -- lone surrogates (a JSON escape, so the bytes are valid UTF-8) in every id and text field --
    for i, name in enumerate(("project_id", "event_id", "media_id", "task_assignment_id", "video_collaboration_id",
                              "master_file_name", "event_type")):
        body = json.dumps(_event(**{name: f"x{i}\ud800"}))  # json.dumps writes the surrogate as \ud800
        items.append(Poison(f"surrogate-{name}", body.encode(), name))
    items.append(Poison("surrogate-camel-case", json.dumps(_event(mediaId="\udfff", event_type="PROJECT_FILE_ADDED")).encode(), "media_id"))

    # -- ids that are not safe in an API path ---------------------------------------------------
    for i, (name, value) in enumerate([
        ("dot-dot", ".."), ("dot", "."), ("arabic-digits", "١٢٣"), ("slash", "1/2"), ("encoded-dots", "%2e%2e"),
        ("query", "1?x=1"), ("too-long", "7" * 65), ("nul", "1\u0000"), ("space-inside", "1 2"), ("fullwidth", "１２３"),
    ]):
        items.append(Poison(f"id-{name}", _json(_event(project_id=value, event_id=f"id-{i}")), "project_id"))
    items.append(Poison("task-id-dot-dot", _json(_event(event_type="CUSTOM_TASK_ASSIGNED", task_assignment_id="..")), "task_assignment_id"))
    items.append(Poison("media-id-arabic", _json(_event(event_type="PROJECT_FILE_ADDED", media_id="٥")), "media_id"))
    items.append(Poison("event-id-control", _json(_event(event_id="evt\u001b[2J")), "event_id"))
    items.append(Poison("event-type-huge", _json(_event(event_type="X" * 10_000)), "event_type"))

    # -- not UTF-8, not JSON, not an object, empty ------------------------------------------------
    items.append(Poison("latin-1", f'{{"event_type":"PROJECT_CREATED","project_id":"1\xe9","ingested_at":"{INGESTED_AT}"}}'.encode("latin-1"), "not JSON"))
    items.append(Poison("random-bytes", bytes(rng.getrandbits(8) for _ in range(2048)), "not JSON"))
    items.append(Poison("overlong-utf-8", f'{{"event_type":"PROJECT_CREATED","project_id":"1","ingested_at":"{INGESTED_AT}","x":"'.encode() + b'\xc0\xaf"}', "not JSON"))
    # json.loads decodes bytes with "surrogatepass": an encoded surrogate arrives as a lone surrogate
    items.append(Poison("encoded-surrogate", f'{{"event_type":"PROJECT_MFN_ADDED","project_id":"2","ingested_at":"{INGESTED_AT}","master_file_name":"'.encode() + b'\xed\xa0\x80"}', "master_file_name"))
    items.append(Poison("empty", b"", "not JSON"))
    items.append(Poison("tombstone", None, "empty message"))
    items.append(Poison("array", b"[1, 2]", "not a JSON object"))
    items.append(Poison("string", b'"str"', "not a JSON object"))
    items.append(Poison("null", b"null", "not a JSON object"))
    items.append(Poison("escape-codes-in-headers", b"\x1b[31mnot json", "not JSON",
                        headers=[("note", b"\x1b]0;pwned\x07\x1b[2J"), ("\x1b[1mname", b"\x9b31m")]))
    items.append(Poison("invalid-header-bytes", b"{half", "not JSON", headers=[("h", b"\xff\xfe\xfd")]))

    # -- forged retry headers ------------------------------------------------------------------
    forged_rows = {  # an EntityRowsMessage, meant to reach the writer through the retry path
        "trace_id": "forged-1", "event_type": "PROJECT_CREATED", "project_id": "5000001",
        "event_time": "2099-01-01T00:00:00+00:00",
        "rows": {"claimx_projects": [{"project_id": "5000001", "project_name": "FORGED"}]},
    }
    items.append(Poison("forged-entity-rows", _json(forged_rows), "missing field ingested_at",
                        headers=_forged_retry_headers(entity_rows_topic)))
    items.append(Poison("forged-retry-of-missing-project", _json(_event(project_id=MISSING_PROJECT_ID, event_id="forged-2")),
                        "404", error_type="NotFound", headers=_forged_retry_headers(entity_rows_topic)))

    # -- too big for a whole envelope --------------------------------------------------------------
    items.append(Poison("control-bytes-300k", bytes([1]) * 300_000, "not JSON", oversize=True))
    if huge:
        items.append(Poison("binary-800k", os.urandom(800_000), "not JSON", oversize=True))
        padded = _event(project_id=MISSING_PROJECT_ID, event_id="huge-valid", padding="p" * 3_000_000)
        items.append(Poison("valid-3mb", _json(padded), "404", error_type="NotFound", oversize=True))
        # valid, of a real project, but its rows (the 3 MB file name) do not fit the entity-rows topic
        mfn = _event(event_type="PROJECT_MFN_ADDED", event_id="huge-mfn", ingested_at="2026-03-01T00:00:00Z", master_file_name="M" * 3_000_000)
        items.append(Poison("valid-3mb-rows-too-large", _json(mfn), "too large", error_type="MessageTooLarge", oversize=True))
    names = [p.name for p in items]
    values = [p.value for p in items]
    assert len(set(names)) == len(names) and len(set(values)) == len(values), "poison names and values must be unique"
    return items
