"""The handler registry and what every handler shares: project verification, request coalescing.

A handler is a small class registered for one or more event types:

    @register
    class MediaHandler(EventHandler):
        event_types = ("PROJECT_FILE_ADDED",)

        async def child_rows(self, event, ctx):
            item = await ctx.media.fetch(event.project_id, event.media_id)
            return transforms.media_rows([item], event.project_id)

`EventHandler.handle` runs the handler's own fetch and the parent project's verification
("ensure the project", through the ProjectCache) concurrently and returns every row the event
produces: its own rows, the `claimx_events` audit row and, unless the cache answered `hit`, the
project's snapshot rows. The caller produces the rows inside ``with result:``, which settles the
project's verification: confirmed once the block ends (the broker acknowledged), abandoned if
it raises.

`handler_for(event_type)` is None for types no handler knows: those events are skipped.

Refetch on request: an event carrying the `refresh-project` header (set by `kafka-pipeline
replay --refresh-projects`) is handled with `refresh=True`: its project is loaded from the API
whatever the cache holds, as PROJECT_CREATED always is, so a backfill writes current values.
The header only costs an export call; it never chooses where a message goes. Anyone who can
produce to the events topic can set it, so `RefreshLimit` honours it at most once per project
per `enrich.refresh_min_interval_s` (a replay's later events of that project find the project
just refetched): a flood of forged headers costs one export call per project per interval.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

from kafka_pipeline.claimx import transforms
from kafka_pipeline.claimx.api.client import ClaimXApiClient
from kafka_pipeline.claimx.cache.verification import ProjectSnapshot, Verification
from kafka_pipeline.claimx.events import ClaimXEvent
from kafka_pipeline.claimx.transforms import Rows

REFRESH_PROJECT_HEADER = "refresh-project"

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ProjectVerifier(Protocol):
    """What the handlers need of the ProjectCache (NoCache implements it too). A cache that also
    has `begin_verify` (the ProjectCache) answers at once when it can, and the verification
    needs no task of its own beside the event's fetch (`HandlerContext.begin_verify`)."""

    async def verify(self, project_id: str, load: Callable[[], Awaitable[ProjectSnapshot]], *, refresh: bool = False) -> Verification: ...


class SingleFlight(Generic[K, V]):
    """Calls for one key that ask before the request goes out share it; nothing is kept after.

    A flight collects callers for `window_s` (0: the current turn of the event loop, i.e. every
    event dispatched together), then sends its request. A caller arriving after that starts a
    new flight: sharing a request sent before the caller's event was even read could hand it
    an answer older than the change the event announces.

    The first caller flies the flight itself, in its own task (most flights have no other
    caller: a task and a shield per call cost about 17 µs); the others wait on a future of their
    own, so a cancelled one leaves the flight alone. A flier cancelled before it answered hands
    its waiters `_FLIER_GONE`: they start (or join) the next flight.
    """

    def __init__(self, window_s: float = 0.0) -> None:
        self.window_s = window_s
        self._open: dict[K, list[asyncio.Future[Any]]] = {}  # flights still collecting callers: their waiters
        self.calls = 0
        self.shared = 0  # calls answered by another caller's flight

    async def run(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        while True:
            waiters = self._open.get(key)
            if waiters is None:
                return await self._fly(key, call)
            self.shared += 1
            waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            waiters.append(waiter)
            answer = await waiter
            if answer is not _FLIER_GONE:
                return cast(V, answer)
            self.shared -= 1  # not answered by that flight after all

    async def _fly(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        waiters: list[asyncio.Future[Any]] = []
        self._open[key] = waiters
        try:
            try:
                await asyncio.sleep(self.window_s)
            finally:
                del self._open[key]  # from here on, new callers start a new flight
            self.calls += 1
            answer = await call()
        except asyncio.CancelledError:
            _settle(waiters, result=_FLIER_GONE)
            raise
        except BaseException as exc:
            _settle(waiters, error=exc)
            raise
        _settle(waiters, result=answer)
        return answer


_FLIER_GONE = object()  # a flight's flier was cancelled: its waiters fly again


def _settle(waiters: list[asyncio.Future[Any]], *, result: Any = None, error: BaseException | None = None) -> None:
    for waiter in waiters:
        if waiter.done():  # its caller was cancelled
            continue
        if error is None:
            waiter.set_result(result)
        else:
            waiter.set_exception(error)


@dataclass
class HandlerContext:
    """The per-worker services handlers use."""

    api: ClaimXApiClient
    cache: ProjectVerifier
    media: Any  # handlers.media.MediaBatcher (typed loosely to keep the import graph flat)
    tasks: SingleFlight[str, dict[str, Any]] = field(default_factory=SingleFlight)
    videos: SingleFlight[str, list[dict[str, Any]]] = field(default_factory=SingleFlight)

    async def load_project(self, project_id: str) -> ProjectSnapshot:
        """The loader handed to the cache: one export call -> the project's rows.

        A 404 raises PermanentError(error_type="NotFound") (from the client), which the cache
        remembers as absent for a while."""
        body = await self.api.get_project(project_id)
        return ProjectSnapshot(project_id, transforms.project_rows(body, project_id))

    def verify_project(self, project_id: str, *, refresh: bool = False) -> Coroutine[Any, Any, Verification]:
        """The cache's verify() coroutine itself (no coroutine of its own around it: one per event)."""
        return self.cache.verify(project_id, lambda: self.load_project(project_id), refresh=refresh)

    def begin_verify(self, project_id: str, *, refresh: bool = False) -> Verification | Coroutine[Any, Any, Verification] | asyncio.Task[Verification]:
        """The verification started beside the caller's own work: its answer when the cache has
        it at once, else what to await for it once that work is done (the cache's
        `begin_verify`; a cache without it runs verify() in a task)."""
        begin = getattr(self.cache, "begin_verify", None)
        if begin is None:
            return asyncio.ensure_future(self.verify_project(project_id, refresh=refresh))
        return cast(Verification | Coroutine[Any, Any, Verification], begin(project_id, lambda: self.load_project(project_id), refresh=refresh))


@dataclass
class HandlerResult:
    """The rows an event produces; ``with result:`` around producing them settles the project
    snapshot among them (confirmed when the block ends, abandoned if it raises)."""

    rows: Rows
    verification: Verification | None = None

    @property
    def carries_project(self) -> bool:
        """The rows include the project's snapshot."""
        return self.verification is not None and self.verification.carries_project

    def __enter__(self) -> HandlerResult:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.verification is not None:
            self.verification.__exit__(exc_type, exc, tb)


class EventHandler(ABC):
    """Base class: subclasses set `event_types` and implement `child_rows`."""

    event_types: ClassVar[tuple[str, ...]] = ()
    ensure_project: ClassVar[bool] = True  # verify the parent project through the cache
    refresh_project: ClassVar[bool] = False  # always load the project (PROJECT_CREATED)

    @abstractmethod
    async def child_rows(self, event: ClaimXEvent, ctx: HandlerContext) -> Rows:
        """The event's own rows (without the project snapshot and the events row)."""

    async def handle(self, event: ClaimXEvent, ctx: HandlerContext, *, refresh: bool = False, trace_id: str | None = None) -> HandlerResult:
        """`refresh`: load the project even when the cache holds it (the event asked for it).
        `trace_id`: the event's, when the caller has it already (`transforms.event_row`)."""
        if not self.ensure_project:
            return HandlerResult(transforms.merge_rows(await self.child_rows(event, ctx), transforms.event_row(event, trace_id)))
        refresh = refresh or self.refresh_project
        verifying = ctx.begin_verify(event.project_id, refresh=refresh)
        if isinstance(verifying, Verification):  # answered at once (a hit, mostly): nothing runs beside the fetch
            try:
                own = await self.child_rows(event, ctx)
            except Exception:
                verifying.abandon()
                raise
            return self._result(event, verifying, own, trace_id)
        try:
            own = await self.child_rows(event, ctx)
            child_error: BaseException | None = None
        except Exception as exc:  # noqa: BLE001 - decided below, once the verification settled
            own, child_error = {}, exc
        except asyncio.CancelledError:
            if isinstance(verifying, asyncio.Task):
                verifying.cancel()
            else:
                verifying.close()  # never awaited: the project's flight goes on without it
            raise
        # A missing project explains the event's failure better than its child call does.
        verification = await verifying
        if child_error is not None:
            verification.abandon()
            raise child_error
        return self._result(event, verification, own, trace_id)

    @staticmethod
    def _result(event: ClaimXEvent, verification: Verification, own: Rows, trace_id: str | None) -> HandlerResult:
        project_rows = verification.snapshot.rows if verification.snapshot is not None else {}
        return HandlerResult(transforms.merge_rows(project_rows, own, transforms.event_row(event, trace_id)), verification)


HANDLERS: dict[str, EventHandler] = {}

H = TypeVar("H", bound=type[EventHandler])


def register(handler_class: H) -> H:
    """Class decorator: one instance handles every type in `event_types`."""
    if not handler_class.event_types:
        raise ValueError(f"{handler_class.__name__} declares no event_types")
    instance = handler_class()
    for event_type in handler_class.event_types:
        if event_type in HANDLERS:
            raise ValueError(f"{event_type} already handled by {type(HANDLERS[event_type]).__name__}")
        HANDLERS[event_type] = instance
    return handler_class


def handler_for(event_type: str) -> EventHandler | None:
    return HANDLERS.get(event_type)


class RefreshLimit:
    """Header-requested refetches: at most one per project per `interval_s` (module docstring)."""

    def __init__(self, interval_s: float, *, max_projects: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.max_projects = max_projects
        self._clock = clock
        self._last: dict[str, float] = {}  # project id -> when its last refetch was granted

    def allow(self, project_id: str) -> bool:
        now = self._clock()
        last = self._last.get(project_id)
        if last is not None and now - last < self.interval_s:
            return False
        if len(self._last) >= self.max_projects:  # bounded: forget the grants that no longer limit anything
            self._last = {p: t for p, t in self._last.items() if now - t < self.interval_s}
            if len(self._last) >= self.max_projects:
                return False
        self._last[project_id] = now
        return True


def refresh_requested(headers: Iterable[tuple[str, bytes]] | None) -> bool:
    """Does a consumed message ask for its project to be refetched (`refresh-project: 1`)?"""
    return any(name == REFRESH_PROJECT_HEADER and value == b"1" for name, value in headers or ())
