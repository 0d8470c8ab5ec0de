"""What the cache hands out: a loaded project's rows, and its answer to `verify()`.

A `Verification` that carries a snapshot holds the project until it is settled: the caller
writes the snapshot rows with its own, then settles once, either as the block that produces
them (``with verification: ...`` confirms when the block ends, abandons if it raises) or with
`abandon()` when the rows will not be written at all. A hit carries nothing and settles nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol

from kafka_pipeline.errors import PermanentError

NOT_FOUND = "NotFound"


@dataclass(slots=True)
class ProjectSnapshot:
    """What loading a project yields: its rows from the export, per table."""

    project_id: str
    rows: dict[str, list[dict[str, Any]]]  # {"claimx_projects": [...], "claimx_contacts": [...]}


Loader = Callable[[], Awaitable[ProjectSnapshot]]
RefreshCallback = Callable[[ProjectSnapshot], Awaitable[None]]


def not_found(project_id: str) -> PermanentError:
    """The error of a project remembered as absent (the API answered 404)."""
    return PermanentError(f"project {project_id} not found (cached)", error_type=NOT_FOUND)


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, PermanentError) and exc.error_type == NOT_FOUND


class Holder(Protocol):
    """Whoever holds a loaded snapshot until the broker acknowledged its rows (the cache)."""

    def confirm(self, project_id: str) -> None: ...

    def abandon(self, project_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Verification:
    outcome: Literal["hit", "loaded", "coalesced"]
    snapshot: ProjectSnapshot | None = None  # None on a hit; the rows to emit on loaded/coalesced
    holder: Holder | None = field(default=None, compare=False, repr=False)

    @property
    def carries_project(self) -> bool:
        """The snapshot rows go out with the event's: settle once they are acknowledged (or not)."""
        return self.snapshot is not None

    def confirm(self) -> None:
        """The broker acknowledged the snapshot rows: the project is a hit from now on."""
        if self.snapshot is not None and self.holder is not None:
            self.holder.confirm(self.snapshot.project_id)

    def abandon(self) -> None:
        """The snapshot rows will not be written: the project is not cached on their account."""
        if self.snapshot is not None and self.holder is not None:
            self.holder.abandon(self.snapshot.project_id)

    def __enter__(self) -> Verification:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.confirm()
        else:
            self.abandon()


HIT = Verification("hit")
