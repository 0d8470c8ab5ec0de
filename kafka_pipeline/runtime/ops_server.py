"""The worker's ops HTTP port: `/metrics`, `/health/live`, `/health/ready`, plus extra routes
(the cache admin mounts `/cache/*` here). Runs inside the worker's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

# A readiness check answers (ready, details); the worker is ready when every check is.
ReadinessCheck = Callable[[], tuple[bool, dict[str, Any]]]


class OpsServer:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        readiness: dict[str, ReadinessCheck] | None = None,
        routes: Sequence[BaseRoute] = (),
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.host, self.port = host, port
        self.readiness = dict(readiness or {})
        self.registry = registry
        self.app = Starlette(
            routes=[
                Route("/metrics", self._metrics),
                Route("/health/live", self._live),
                Route("/health/ready", self._ready),
                *routes,
            ]
        )
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    def ready(self) -> tuple[bool, dict[str, Any]]:
        details: dict[str, Any] = {}
        ok = True
        for name, check in self.readiness.items():
            check_ok, check_details = check()
            ok = ok and check_ok
            details[name] = {"ready": check_ok, **check_details}
        return ok, details

    async def _metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def _live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def _ready(self, request: Request) -> Response:
        ok, details = self.ready()
        return JSONResponse({"ready": ok, "checks": details}, status_code=200 if ok else 503)

    async def start(self) -> None:
        config = uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[attr-defined]  # the worker owns SIGTERM/SIGINT
        self._task = asyncio.create_task(self._server.serve(), name="ops-server")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the bind error
            await asyncio.sleep(0.01)
        if self.port == 0:  # report the port the OS chose
            self.port = self._server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
