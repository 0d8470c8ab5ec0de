"""The simulator's id scheme, shared by the API simulator and the event generator.

Project ids are plain integers (the generator uses 5000001, 5000002, ...; the simulator answers
for any positive integer). Every child id encodes its project:

    media_id               = project_id * 1000 + n     (n = 1 .. media count)
    assignment_id          = project_id * 1000 + n     (n = 1 .. assignment count)
    video_collaboration_id = project_id * 1000 + n     (n = 1 .. video count)

so `project_of(child_id)` finds the project and the simulator can answer any child request
consistently without shared state. Which children a project has depends on the project id only,
not on the data seed, so an event stream made with one seed still names existing children on a
simulator started with another (only the field values differ).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

FIRST_PROJECT_ID = 5_000_001
CHILD_FACTOR = 1000
MAX_CHILDREN = CHILD_FACTOR - 1

# About one project in ten is "big": many photos, several tasks (a large loss, a busy adjuster).
BIG_PROJECT_SHARE = 0.1


def project_ids(count: int, first: int = FIRST_PROJECT_ID) -> list[int]:
    """`count` consecutive project ids starting at `first`."""
    return list(range(first, first + count))


def child_id(project_id: int, n: int) -> int:
    """The id of the `n`-th child (1-based) of a project: media, assignment or video collaboration."""
    if not 1 <= n <= MAX_CHILDREN:
        raise ValueError(f"child number must be in 1..{MAX_CHILDREN}, got {n}")
    return int(project_id) * CHILD_FACTOR + n


def media_id(project_id: int, n: int) -> int:
    return child_id(project_id, n)


def assignment_id(project_id: int, n: int) -> int:
    return child_id(project_id, n)


def video_collaboration_id(project_id: int, n: int) -> int:
    return child_id(project_id, n)


def project_of(child: int | str) -> int:
    """The project a media id, assignment id or video collaboration id belongs to."""
    return int(child) // CHILD_FACTOR


def child_number(child: int | str) -> int:
    """The 1-based position of a child within its project (0 is never a valid child)."""
    return int(child) % CHILD_FACTOR


@dataclass(frozen=True)
class ProjectChildren:
    """The children a project has in the simulator, all ids as ints in ascending order."""

    project_id: int
    big: bool
    media_ids: tuple[int, ...]
    assignment_ids: tuple[int, ...]
    video_collaboration_ids: tuple[int, ...]

    def has_media(self, media: int | str) -> bool:
        return _is_child(self.project_id, media, len(self.media_ids))

    def has_assignment(self, assignment: int | str) -> bool:
        return _is_child(self.project_id, assignment, len(self.assignment_ids))

    def has_video_collaboration(self, video: int | str) -> bool:
        return _is_child(self.project_id, video, len(self.video_collaboration_ids))


def _is_child(project_id: int, child: int | str, count: int) -> bool:
    try:
        value = int(child)
    except (TypeError, ValueError):
        return False
    return project_of(value) == project_id and 1 <= child_number(value) <= count


@lru_cache(maxsize=65_536)
def project_children(project_id: int) -> ProjectChildren:
    """The media, task assignments and video collaborations of a project (every project has at
    least one of each; big projects have many media and several assignments)."""
    project_id = int(project_id)
    rng = random.Random(f"children:{project_id}")
    big = rng.random() < BIG_PROJECT_SHARE
    if big:
        media, tasks, videos = rng.randint(25, 60), rng.randint(5, 12), rng.randint(2, 4)
    else:
        media, tasks, videos = rng.randint(1, 8), rng.randint(1, 3), rng.randint(1, 2)
    return ProjectChildren(
        project_id=project_id,
        big=big,
        media_ids=tuple(child_id(project_id, n) for n in range(1, media + 1)),
        assignment_ids=tuple(child_id(project_id, n) for n in range(1, tasks + 1)),
        video_collaboration_ids=tuple(child_id(project_id, n) for n in range(1, videos + 1)),
    )
