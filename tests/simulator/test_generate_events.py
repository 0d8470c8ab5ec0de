"""The event generator: a realistic, deterministic ClaimX event stream (and its script)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kafka_pipeline.simulator import data, project_children
from kafka_pipeline.simulator.events import (
    CAMEL_CASE,
    EVENT_TYPES,
    SAMPLE_EVENTS_PATH,
    UNKNOWN_EVENT_TYPE,
    generate_events,
)

ROOT = Path(__file__).resolve().parents[2]
SNAKE_CASE = {camel: snake for snake, camel in CAMEL_CASE.items()}
REQUIRED_CHILD = {
    "PROJECT_FILE_ADDED": "media_id",
    "CUSTOM_TASK_ASSIGNED": "task_assignment_id",
    "CUSTOM_TASK_COMPLETED": "task_assignment_id",
    "PROJECT_MFN_ADDED": "master_file_name",
}


def parse(line: str) -> dict[str, Any] | None:
    """The event in snake_case with `ingested_at` as an aware datetime, or None when the line
    is malformed in the contract's sense (a permanent failure)."""
    try:
        raw = json.loads(line)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    event = {SNAKE_CASE.get(key, key): value for key, value in raw.items()}
    if not event.get("event_type") or event.get("project_id") in (None, "") or not event.get("ingested_at"):
        return None
    try:
        moment = datetime.fromisoformat(event["ingested_at"])
    except ValueError:
        return None
    event["raw_ingested_at"] = event["ingested_at"]
    event["ingested_at"] = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    needed = REQUIRED_CHILD.get(event["event_type"])
    if needed and event.get(needed) in (None, ""):
        return None
    return event


def parsed(lines: list[str]) -> list[dict[str, Any]]:
    events = [parse(line) for line in lines]
    assert all(e is not None for e in events)
    return events  # type: ignore[return-value]


@pytest.fixture(scope="module")
def stream() -> list[dict[str, Any]]:
    return parsed(generate_events(1500, 60, seed=11))


def test_counts_and_every_event_type(stream: list[dict[str, Any]]) -> None:
    assert len(stream) == 1500
    types = Counter(e["event_type"] for e in stream)
    assert set(types) == {*EVENT_TYPES, UNKNOWN_EVENT_TYPE}
    assert types["PROJECT_CREATED"] == 60
    assert len({str(e["project_id"]) for e in stream}) == 60
    assert 0 < types[UNKNOWN_EVENT_TYPE] < 0.06 * len(stream)
    assert types["PROJECT_FILE_ADDED"] == max(types.values())


def test_every_type_present_even_in_a_small_stream() -> None:
    events = parsed(generate_events(12, 2, seed=1))
    assert {e["event_type"] for e in events} == {*EVENT_TYPES, UNKNOWN_EVENT_TYPE}


def test_project_created_first_and_once_per_project(stream: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for event in stream:
        project = str(event["project_id"])
        if event["event_type"] == "PROJECT_CREATED":
            assert project not in seen
            seen.add(project)
        else:
            assert project in seen, f"{event['event_type']} of {project} before its PROJECT_CREATED"


def test_projects_interleave_and_are_skewed(stream: list[dict[str, Any]]) -> None:
    per_project = Counter(str(e["project_id"]) for e in stream)
    assert max(per_project.values()) >= 3 * statistics.median(per_project.values())
    switches = sum(a["project_id"] != b["project_id"] for a, b in zip(stream, stream[1:], strict=False))
    assert switches > len(stream) / 2


def test_child_ids_exist_in_the_simulator(stream: list[dict[str, Any]]) -> None:
    assigned: set[int] = set()
    completions_after_assignment = completions = 0
    for event in stream:
        children = project_children(int(event["project_id"]))
        kind = event["event_type"]
        if kind == "PROJECT_FILE_ADDED":
            assert children.has_media(event["media_id"])
        elif kind.startswith("CUSTOM_TASK_"):
            assert children.has_assignment(event["task_assignment_id"])
            if kind == "CUSTOM_TASK_ASSIGNED":
                assigned.add(int(event["task_assignment_id"]))
            else:
                completions += 1
                completions_after_assignment += int(event["task_assignment_id"]) in assigned
        elif kind.startswith("VIDEO_COLLABORATION_") and "video_collaboration_id" in event:
            assert children.has_video_collaboration(event["video_collaboration_id"])
        elif kind == "PROJECT_MFN_ADDED":
            assert event["master_file_name"] == data.project_export(event["project_id"], 11)["project"]["mfn"]
    assert completions_after_assignment >= 0.8 * completions
    videos = [e for e in stream if e["event_type"].startswith("VIDEO_COLLABORATION_")]
    assert 0 < sum("video_collaboration_id" in e for e in videos) < len(videos)


def test_naming_id_types_event_ids_and_timestamps_vary(stream: list[dict[str, Any]]) -> None:
    lines = generate_events(1500, 60, seed=11)
    raw = [json.loads(line) for line in lines]
    camel = sum("projectId" in r for r in raw)
    assert 0.15 * len(raw) < camel < 0.5 * len(raw) and all(("projectId" in r) != ("project_id" in r) for r in raw)
    numeric = sum(isinstance(e["project_id"], int) for e in stream)
    assert 0.3 * len(stream) < numeric < 0.7 * len(stream)
    assert all(isinstance(e["project_id"], int | str) and str(e["project_id"]).isdigit() for e in stream)

    with_id = [e["event_id"] for e in stream if "event_id" in e]
    assert 0.75 * len(stream) < len(with_id) < len(stream) and len(set(with_id)) == len(with_id)

    texts = [e["raw_ingested_at"] for e in stream]
    zulu = sum(t.endswith("Z") for t in texts)
    naive = sum(datetime.fromisoformat(t).tzinfo is None for t in texts)
    assert zulu > len(texts) / 2 and 0 < naive < len(texts) / 4 and zulu + naive < len(texts)
    moments = [e["ingested_at"] for e in stream]
    assert all(a < b for a, b in zip(moments, moments[1:], strict=False))


def test_malformed_lines_are_counted_and_of_every_kind() -> None:
    lines = generate_events(400, 20, seed=5, malformed=10)
    assert len(lines) == 410
    bad = [line for line in lines if parse(line) is None]
    assert len(bad) == 10

    kinds = Counter()
    for line in bad:
        try:
            raw = json.loads(line)
        except ValueError:
            kinds["not_json"] += 1
            continue
        if "project_id" not in raw:
            kinds["missing_project_id"] += 1
        elif "event_type" not in raw:
            kinds["missing_event_type"] += 1
        elif raw["event_type"] == "PROJECT_FILE_ADDED" and "media_id" not in raw:
            kinds["file_added_without_media_id"] += 1
        else:
            with pytest.raises(ValueError):
                datetime.fromisoformat(raw["ingested_at"])
            kinds["bad_ingested_at"] += 1
    assert kinds == Counter(
        not_json=2, missing_project_id=2, missing_event_type=2, bad_ingested_at=2, file_added_without_media_id=2
    )
    # the malformed lines are mixed in, not appended, and the valid lines are those without them
    positions = [i for i, line in enumerate(lines) if parse(line) is None]
    assert positions != list(range(400, 410))
    assert [line for line in lines if parse(line) is not None] == generate_events(400, 20, seed=5)


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    assert generate_events(200, 10, seed=3, malformed=4) == generate_events(200, 10, seed=3, malformed=4)
    assert generate_events(200, 10, seed=3) != generate_events(200, 10, seed=4)
    shifted = parsed(generate_events(50, 5, seed=3, first_project_id=7_000_001))
    assert {int(e["project_id"]) for e in shifted} == set(range(7_000_001, 7_000_006))


@pytest.mark.parametrize(("n", "projects", "malformed"), [(5, 10, 0), (10, 0, 0), (10, 5, -1)])
def test_bad_arguments_raise(n: int, projects: int, malformed: int) -> None:
    with pytest.raises(ValueError):
        generate_events(n, projects, seed=1, malformed=malformed)


def test_bundled_sample_is_the_generator_output() -> None:
    assert SAMPLE_EVENTS_PATH.is_file()
    sample = SAMPLE_EVENTS_PATH.read_text(encoding="utf-8").splitlines()
    assert sample == generate_events(300, 20, seed=7)
    events = parsed(sample)
    assert len({str(e["project_id"]) for e in events}) == 20


def test_script_writes_the_stream(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_events.py"), "--events", "120", "--projects", "8",
         "--seed", "9", "--malformed", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text().splitlines() == generate_events(120, 8, seed=9, malformed=3)
    assert "123 lines" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--events", "5", "--projects", "10", "--out", "x.jsonl"],
        ["--events", "ten", "--projects", "2", "--out", "x.jsonl"],
        ["--events", "10", "--projects", "2"],
        ["--events", "10", "--projects", "2", "--malformed", "-2", "--out", "x.jsonl"],
        ["--events", "10", "--projects", "2", "--out", "/no/such/dir/x.jsonl"],
    ],
)
def test_script_bad_arguments_one_line_exit_2(args: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_events.py"), *args],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "error:" in result.stderr
    assert not (tmp_path / "x.jsonl").exists()

