"""A realistic ClaimX event stream as JSON lines, deterministic from a seed.

`generate_events(n, projects, seed, malformed=k)` returns `n` valid events over `projects`
projects plus `k` malformed lines mixed in (so `n + k` lines):

- every event type of the contract appears (when `n - projects >= 10`), plus a small share of an
  unknown type (`PROJECT_NOTE_ADDED`) that the pipeline must skip;
- each project's `PROJECT_CREATED` comes before any other event of that project; projects
  open at different times and their events interleave; a few projects get many more events;
- child ids exist in the simulator (`ids.project_children`): files name media of the project,
  tasks name its assignments (a completion usually follows the assignment), video events name
  one of its video collaborations or (sometimes) none;
- field names are snake_case on most events and camelCase on the rest; ids are JSON numbers on
  some events and strings on others; `event_id` is absent on some events;
- `ingested_at` increases along the stream; most values end in `Z`, some are naive (UTC),
  a few carry an explicit offset;
- malformed lines cycle through `MALFORMED_KINDS`: not JSON, no project id, no event type,
  an unparseable `ingested_at`, a `PROJECT_FILE_ADDED` without a media id.

The valid lines do not depend on `malformed`: removing the malformed lines of
`generate_events(n, p, s, malformed=k)` gives `generate_events(n, p, s)`.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from kafka_pipeline.simulator.data import DEFAULT_SEED, project_export
from kafka_pipeline.simulator.ids import FIRST_PROJECT_ID, project_children, project_ids

SAMPLE_EVENTS_PATH = Path(__file__).resolve().parents[1] / "data" / "sample_events.jsonl"

PROJECT_CREATED = "PROJECT_CREATED"
EVENT_TYPES = (
    PROJECT_CREATED,
    "PROJECT_MFN_ADDED",
    "PROJECT_FILE_ADDED",
    "CUSTOM_TASK_ASSIGNED",
    "CUSTOM_TASK_COMPLETED",
    "POLICYHOLDER_INVITED",
    "POLICYHOLDER_JOINED",
    "VIDEO_COLLABORATION_INVITE_SENT",
    "VIDEO_COLLABORATION_COMPLETED",
    "PROJECT_AUTO_XA_LINKING_UNSUCCESSFUL",
)
UNKNOWN_EVENT_TYPE = "PROJECT_NOTE_ADDED"

# Relative frequency of the events that follow a project's creation.
CHILD_WEIGHTS: dict[str, int] = {
    "PROJECT_FILE_ADDED": 40,
    "CUSTOM_TASK_ASSIGNED": 12,
    "CUSTOM_TASK_COMPLETED": 8,
    "PROJECT_MFN_ADDED": 5,
    "POLICYHOLDER_INVITED": 6,
    "POLICYHOLDER_JOINED": 5,
    "VIDEO_COLLABORATION_INVITE_SENT": 6,
    "VIDEO_COLLABORATION_COMPLETED": 4,
    "PROJECT_AUTO_XA_LINKING_UNSUCCESSFUL": 4,
    UNKNOWN_EVENT_TYPE: 3,
}

MALFORMED_KINDS = (
    "not_json",
    "missing_project_id",
    "missing_event_type",
    "bad_ingested_at",
    "file_added_without_media_id",
)

CAMEL_CASE = {
    "event_id": "eventId",
    "event_type": "eventType",
    "project_id": "projectId",
    "ingested_at": "ingestedAt",
    "media_id": "mediaId",
    "task_assignment_id": "taskAssignmentId",
    "video_collaboration_id": "videoCollaborationId",
    "master_file_name": "masterFileName",
    "note_id": "noteId",
}
ID_FIELDS = ("project_id", "media_id", "task_assignment_id", "video_collaboration_id", "note_id")

DEFAULT_START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)

# Shares of the event-level variations.
CAMEL_SHARE = 0.3
STRING_ID_SHARE = 0.5
NO_EVENT_ID_SHARE = 0.15
NAIVE_TIME_SHARE = 0.1
OFFSET_TIME_SHARE = 0.05
VIDEO_ID_SHARE = 0.7


def generate_events(
    n: int,
    projects: int,
    seed: int | str = DEFAULT_SEED,
    malformed: int = 0,
    *,
    first_project_id: int = FIRST_PROJECT_ID,
    start: datetime = DEFAULT_START,
) -> list[str]:
    """`n` valid events over `projects` projects (ids from `first_project_id`) and `malformed`
    bad lines, as JSON lines without newlines. `n >= projects >= 1`, `malformed >= 0`."""
    if projects < 1:
        raise ValueError(f"projects must be at least 1, got {projects}")
    if n < projects:
        raise ValueError(f"events ({n}) must be at least projects ({projects}): every project starts with PROJECT_CREATED")
    if malformed < 0:
        raise ValueError(f"malformed must be 0 or more, got {malformed}")
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    rng = random.Random(f"{seed}:events")
    events = _valid_events(rng, n, project_ids(projects, first_project_id), seed, start)
    lines = [_render(rng, event) for event in events]
    return _mix_malformed(lines, events, malformed, random.Random(f"{seed}:malformed"))


def write_events(path: str | Path, lines: Iterable[str]) -> int:
    """Write lines as a JSON-lines file; returns how many."""
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        for line in lines:
            out.write(line + "\n")
            count += 1
    return count


def _child_types(rng: random.Random, count: int) -> list[str]:
    names, weights = list(CHILD_WEIGHTS), list(CHILD_WEIGHTS.values())
    chosen = names[:count] if count < len(names) else list(names)
    chosen += rng.choices(names, weights=weights, k=count - len(chosen))
    rng.shuffle(chosen)
    return chosen


def _valid_events(rng: random.Random, n: int, pids: list[int], seed: int | str, start: datetime) -> list[dict[str, Any]]:
    """The events in stream order, snake_case, ids as ints, `ingested_at` as aware datetimes."""
    # Skew: big projects (many media in the simulator) and a heavy-tailed factor draw more events.
    weights = [(6.0 if project_children(p).big else 1.0) * min(rng.paretovariate(1.2), 20.0) for p in pids]
    opened = {p: rng.uniform(0.0, 0.5) for p in pids}
    slots: list[tuple[float, int, int, str]] = [(opened[p], 0, p, PROJECT_CREATED) for p in pids]
    for i, event_type in enumerate(_child_types(rng, n - len(pids))):
        project = rng.choices(pids, weights=weights)[0]
        slots.append((rng.uniform(opened[project], 1.0), 1 + i, project, event_type))
    slots.sort()
    _assign_before_complete(slots)

    state = {p: _ProjectState(p) for p in pids}
    moment = start
    events: list[dict[str, Any]] = []
    for _, _, project, event_type in slots:
        moment += timedelta(milliseconds=rng.randint(20, 4000), microseconds=rng.randrange(1000))
        event: dict[str, Any] = {"event_type": event_type, "project_id": project, "ingested_at": moment}
        event.update(state[project].child_fields(rng, event_type, seed))
        events.append(event)
    return events


def _assign_before_complete(slots: list[tuple[float, int, int, str]]) -> None:
    """Within each project, swap task event types so that a completion follows an assignment
    whenever the project has one left to come (the counts per project and type stay the same)."""
    task_slots: dict[int, list[int]] = {}
    for index, (_, _, project, event_type) in enumerate(slots):
        if event_type.startswith("CUSTOM_TASK_"):
            task_slots.setdefault(project, []).append(index)
    for indices in task_slots.values():
        types = [slots[i][3] for i in indices]
        open_tasks = 0
        for k, event_type in enumerate(types):
            if event_type == "CUSTOM_TASK_COMPLETED" and open_tasks == 0:
                later = next((j for j in range(k + 1, len(types)) if types[j] == "CUSTOM_TASK_ASSIGNED"), None)
                if later is not None:
                    types[k], types[later] = types[later], types[k]
            open_tasks += 1 if types[k] == "CUSTOM_TASK_ASSIGNED" else -1 if open_tasks else 0
        for i, event_type in zip(indices, types, strict=True):
            slots[i] = (*slots[i][:3], event_type)


class _ProjectState:
    """Which children of a project the stream has named so far."""

    def __init__(self, project_id: int) -> None:
        self.project_id = project_id
        self.children = project_children(project_id)
        self.files_added = 0
        self.assigned: list[int] = []
        self.completed: set[int] = set()
        self.notes = 0

    def child_fields(self, rng: random.Random, event_type: str, seed: int | str) -> dict[str, Any]:
        c = self.children
        if event_type == "PROJECT_FILE_ADDED":
            if self.files_added < len(c.media_ids):
                media = c.media_ids[self.files_added]
            else:  # every file was announced: a re-sent announcement of one of them
                media = rng.choice(c.media_ids)
            self.files_added += 1
            return {"media_id": media}
        if event_type == "CUSTOM_TASK_ASSIGNED":
            fresh = [a for a in c.assignment_ids if a not in self.assigned]
            assignment = fresh[0] if fresh else rng.choice(c.assignment_ids)
            if assignment not in self.assigned:
                self.assigned.append(assignment)
            return {"task_assignment_id": assignment}
        if event_type == "CUSTOM_TASK_COMPLETED":
            open_tasks = [a for a in self.assigned if a not in self.completed]
            assignment = rng.choice(open_tasks) if open_tasks else rng.choice(c.assignment_ids)
            self.completed.add(assignment)
            return {"task_assignment_id": assignment}
        if event_type.startswith("VIDEO_COLLABORATION_"):
            video = rng.choice(c.video_collaboration_ids)
            return {"video_collaboration_id": video} if rng.random() < VIDEO_ID_SHARE else {}
        if event_type == "PROJECT_MFN_ADDED":
            return {"master_file_name": project_export(self.project_id, seed)["project"]["mfn"]}
        if event_type == UNKNOWN_EVENT_TYPE:
            self.notes += 1
            return {"note_id": self.project_id * 1000 + self.notes}
        return {}


def _format_time(rng: random.Random, moment: datetime) -> str:
    draw = rng.random()
    if draw < NAIVE_TIME_SHARE:
        return moment.astimezone(UTC).replace(tzinfo=None).isoformat()
    if draw < NAIVE_TIME_SHARE + OFFSET_TIME_SHARE:
        offset = timezone(timedelta(hours=rng.choice((-6, -5, 0, 1))))
        return moment.astimezone(offset).isoformat()
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def _render(rng: random.Random, event: dict[str, Any]) -> str:
    """One event as a line: varied naming, id types, timestamp style and event_id presence."""
    camel = rng.random() < CAMEL_SHARE
    string_ids = rng.random() < STRING_ID_SHARE
    record: dict[str, Any] = {}
    if rng.random() >= NO_EVENT_ID_SHARE:
        record["event_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    for field, value in event.items():
        if field == "ingested_at":
            value = _format_time(rng, value)
        elif field in ID_FIELDS and string_ids:
            value = str(value)
        record[field] = value
    if camel:
        record = {CAMEL_CASE.get(k, k): v for k, v in record.items()}
    return json.dumps(record, separators=(",", ":"))


def _malformed_line(rng: random.Random, kind: str, event: dict[str, Any]) -> str:
    moment = event["ingested_at"] + timedelta(microseconds=rng.randint(1, 999))
    base: dict[str, Any] = {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "event_type": event["event_type"],
        "project_id": str(event["project_id"]),
        "ingested_at": moment.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z",
    }
    if kind == "not_json":
        text = json.dumps(base, separators=(",", ":"))
        return rng.choice((text[: len(text) // 2], "PROJECT_CREATED " + base["project_id"], "{'event_type': 'PROJECT_CREATED'}"))
    if kind == "missing_project_id":
        del base["project_id"]
    elif kind == "missing_event_type":
        del base["event_type"]
    elif kind == "bad_ingested_at":
        base["ingested_at"] = rng.choice(("yesterday", "2026-13-45T25:61:00Z", "2026-03-02T08:00:00+25:00", "not-a-timestamp"))
    elif kind == "file_added_without_media_id":
        base["event_type"] = "PROJECT_FILE_ADDED"
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    return json.dumps(base, separators=(",", ":"))


def _mix_malformed(lines: list[str], events: list[dict[str, Any]], count: int, rng: random.Random) -> list[str]:
    if count == 0:
        return lines
    positions = sorted(rng.randrange(len(lines) + 1) for _ in range(count))
    bad = [
        _malformed_line(rng, MALFORMED_KINDS[i % len(MALFORMED_KINDS)], events[max(pos - 1, 0)])
        for i, pos in enumerate(positions)
    ]
    mixed: list[str] = []
    cursor = 0
    for pos, line in zip(positions, bad, strict=True):
        mixed.extend(lines[cursor:pos])
        mixed.append(line)
        cursor = pos
    mixed.extend(lines[cursor:])
    return mixed
