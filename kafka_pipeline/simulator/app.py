"""The simulator's ASGI app: the four ClaimX calls of the contract plus control endpoints.

API (every call needs `Authorization: Basic <base64 of user:password>`, else 401):

    GET  /export/project/{projectId}                      {"data": {"project", "teamMembers", "companyName"}}
    GET  /export/project/{projectId}/media[?mediaIds=1,2] {"data": [media items]}
    GET  /customTasks/assignment/{assignmentId}?full=true one task assignment object
    POST /data {"reportType": "VIDEO_COLLABORATION", "projectId": <int>}   {"data": [items]}

Control (no auth; bind the simulator to loopback):

    GET  /_health            {"status": "ok", "seed": ...}
    GET  /_stats             request counts: project, media, task, video, total, status,
                             by_call (status per call), project_by_id (project export requests);
                             a call counts on arrival (401s too), its status when it is answered
                             (a timeout fault as 504, even when the client gave up first)
    POST /_stats/reset       zero the counts
    GET  /_faults            current latency and fault settings
    PUT  /_faults            change some of them (JSON object, names of faults.FaultSettings)
    POST /_faults/reset      back to the settings the simulator started with
                             (the three /_faults routes are absent with `--fault-routes off`)
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kafka_pipeline.simulator import data
from kafka_pipeline.simulator.faults import FaultInjector, FaultSettings
from kafka_pipeline.simulator.ids import project_children, project_of

DEFAULT_USER = "claimx"
DEFAULT_PASSWORD = "simulator"
CALLS = ("project", "media", "task", "video")


def make_token(user: str, password: str) -> str:
    """The Basic auth token the API expects: base64 of `user:password`."""
    return base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


DEFAULT_TOKEN = make_token(DEFAULT_USER, DEFAULT_PASSWORD)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(content, status_code=status, headers=headers, media_type="application/json")


class Stats:
    """Request counts since start or the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.calls: Counter[str] = Counter(dict.fromkeys(CALLS, 0))
        self.status: Counter[str] = Counter()
        self.by_call: dict[str, Counter[str]] = {call: Counter() for call in CALLS}
        self.project_by_id: Counter[str] = Counter()

    def arrived(self, call: str, project_id: int | None) -> None:
        self.calls[call] += 1
        if call == "project" and project_id is not None:
            self.project_by_id[str(project_id)] += 1

    def answered(self, call: str, status: int) -> None:
        self.status[str(status)] += 1
        self.by_call[call][str(status)] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            **{call: self.calls[call] for call in CALLS},
            "total": sum(self.calls[call] for call in CALLS),
            "status": dict(sorted(self.status.items())),
            "by_call": {call: dict(sorted(counts.items())) for call, counts in self.by_call.items()},
            "project_by_id": dict(sorted(self.project_by_id.items())),
        }


class Simulator:
    """The state behind the app: seed, credentials, faults and counts."""

    def __init__(self, seed: int | str, faults: FaultSettings, user: str, password: str) -> None:
        self.seed = seed
        self.faults = FaultInjector(faults, seed)
        self.stats = Stats()
        self._expected_auth = f"Basic {make_token(user, password)}".encode()
        self._closing: asyncio.Event | None = None

    def closing(self) -> asyncio.Event:
        """Set when the server stops: requests held by a timeout fault are let go at once."""
        if self._closing is None:
            self._closing = asyncio.Event()
        return self._closing

    def authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        return hmac.compare_digest(f"Basic {token.strip()}".encode(), self._expected_auth)

    async def answer(
        self, request: Request, call: str, project_id: int | None, build: Callable[[], Response]
    ) -> Response:
        """Count, authenticate, delay and maybe fail the request, else answer with `build()`."""
        self.stats.arrived(call, project_id)
        response = await self._answer(request, project_id, build)
        self.stats.answered(call, response.status_code)
        return response

    async def _answer(self, request: Request, project_id: int | None, build: Callable[[], Response]) -> Response:
        if not self.authorized(request):
            return _json({"error": "Unauthorized"}, 401, {"WWW-Authenticate": 'Basic realm="ClaimX"'})
        decision = self.faults.decide(project_id)
        if decision.delay_s > 0:
            await asyncio.sleep(decision.delay_s)
        if decision.outcome == "not_found":
            return _json({"error": f"Project {project_id} not found"}, 404)
        if decision.outcome == "timeout":
            if await _hang(request, self.faults.settings.timeout_s, self.closing()):
                return _json({"error": "Service Unavailable: shutting down"}, 503)
            return _json({"error": "Gateway Timeout"}, 504)
        if decision.outcome == "rate_limited":
            retry_after = str(self.faults.settings.retry_after_s)
            return _json({"error": "Too Many Requests"}, 429, {"Retry-After": retry_after})
        if decision.outcome == "error":
            reason = "Internal Server Error" if decision.status == 500 else "Service Unavailable"
            return _json({"error": reason}, decision.status)
        return build()


async def _hang(request: Request, seconds: float, closing: asyncio.Event) -> bool:
    """Wait `seconds`, or less if the client disconnects first (it gave up on us) or the server
    stops; True when the server stops."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    waits = [asyncio.ensure_future(disconnected()), asyncio.ensure_future(closing.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    return closing.is_set()


def _parse_ids(text: str | None) -> list[int] | None:
    if text is None or not text.strip():
        return None
    return [int(part) for part in text.split(",") if part.strip()]


def create_app(
    seed: int | str = data.DEFAULT_SEED,
    faults: FaultSettings | None = None,
    user: str = DEFAULT_USER,
    password: str = DEFAULT_PASSWORD,
    fault_routes: bool = True,
) -> Starlette:
    """The simulator as an ASGI app (serve it with `server.serve`, or in-process with httpx).
    `fault_routes=False` leaves out `/_faults*`: nobody can change the faults of a running simulator."""
    sim = Simulator(seed, faults or FaultSettings(), user, password)

    async def project_export(request: Request) -> Response:
        project_id: int = request.path_params["project_id"]
        return await sim.answer(request, "project", project_id, lambda: _json({"data": data.project_export(project_id, seed)}))

    async def project_media(request: Request) -> Response:
        project_id: int = request.path_params["project_id"]
        try:
            wanted = _parse_ids(request.query_params.get("mediaIds"))
        except ValueError:
            problem = {"error": "mediaIds must be comma-separated integers"}
            return await sim.answer(request, "media", project_id, lambda: _json(problem, 400))
        return await sim.answer(request, "media", project_id, lambda: _json({"data": data.project_media(project_id, seed, wanted)}))

    async def task_assignment(request: Request) -> Response:
        assignment_id: int = request.path_params["assignment_id"]
        project_id = project_of(assignment_id)
        full = request.query_params.get("full", "false").lower() == "true"

        def build() -> Response:
            if not project_children(project_id).has_assignment(assignment_id):
                return _json({"error": f"Assignment {assignment_id} not found"}, 404)
            body = data.task_assignment(assignment_id, seed)
            if not full:
                body.pop("customTask", None)
                body.pop("externalLinkData", None)
            return _json(body)

        return await sim.answer(request, "task", project_id, build)

    async def report(request: Request) -> Response:
        try:
            payload = await request.json()
        except (ValueError, UnicodeDecodeError):
            payload = None
        problem, project_id = _check_report_request(payload)
        if problem:
            return await sim.answer(request, "video", project_id, lambda: _json({"error": problem}, 400))
        assert project_id is not None  # _check_report_request found no problem
        return await sim.answer(request, "video", project_id, lambda: _json({"data": data.video_collaborations(project_id, seed)}))

    async def health(request: Request) -> Response:
        return _json({"status": "ok", "seed": seed})

    async def stats(request: Request) -> Response:
        return _json(sim.stats.snapshot())

    async def reset_stats(request: Request) -> Response:
        sim.stats.reset()
        return _json(sim.stats.snapshot())

    async def get_faults(request: Request) -> Response:
        return _json(sim.faults.settings.model_dump())

    async def put_faults(request: Request) -> Response:
        try:
            changes = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _json({"error": "body must be a JSON object"}, 400)
        if not isinstance(changes, dict):
            return _json({"error": "body must be a JSON object"}, 400)
        try:
            settings = sim.faults.update(changes)
        except ValidationError as exc:
            first = exc.errors()[0]
            return _json({"error": f"{'.'.join(map(str, first['loc']))}: {first['msg']}"}, 422)
        return _json(settings.model_dump())

    async def reset_faults(request: Request) -> Response:
        return _json(sim.faults.reset().model_dump())

    routes = [
        Route("/export/project/{project_id:int}", project_export, methods=["GET"]),
        Route("/export/project/{project_id:int}/media", project_media, methods=["GET"]),
        Route("/customTasks/assignment/{assignment_id:int}", task_assignment, methods=["GET"]),
        Route("/data", report, methods=["POST"]),
        Route("/_health", health, methods=["GET"]),
        Route("/_stats", stats, methods=["GET"]),
        Route("/_stats/reset", reset_stats, methods=["POST"]),
    ]
    if fault_routes:
        routes += [
            Route("/_faults", get_faults, methods=["GET"]),
            Route("/_faults", put_faults, methods=["PUT"]),
            Route("/_faults/reset", reset_faults, methods=["POST"]),
        ]
    app = Starlette(routes=routes)
    app.state.simulator = sim
    return app


def _check_report_request(payload: Any) -> tuple[str | None, int | None]:
    """(error message or None, project id) for a `POST /data` body."""
    if not isinstance(payload, dict):
        return "body must be a JSON object", None
    if payload.get("reportType") != "VIDEO_COLLABORATION":
        return f"unsupported reportType {payload.get('reportType')!r}", None
    raw = payload.get("projectId")
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        return "projectId must be an integer", None
    try:
        return None, int(raw)
    except ValueError:
        return "projectId must be an integer", None
