"""The worker's ops HTTP port: `/metrics`, `/health/live`, `/health/ready`, plus extra routes
(the cache admin mounts `/cache/*` here). Runs inside the worker's event loop.

`before_scrape` coroutines run before `/metrics` renders: values that need the broker (consumer
lag) are read when someone asks for them, not on a timer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

# A readiness check answers (ready, details); the worker is ready when every check is.
ReadinessCheck = Callable[[], tuple[bool, dict[str, Any]]]
BEFORE_SCRAPE_TIMEOUT_S = 2.0  # a slow broker must not make the scrape itself time out

_READY: dict[int, Gauge] = {}  # per registry


def _ready_gauge(registry: CollectorRegistry) -> Gauge:
    gauge = _READY.get(id(registry))
    if gauge is None:
        gauge = _READY[id(registry)] = Gauge(
            "kafka_pipeline_ready", "1 while the readiness check passes (what /health/ready answers), per check.", ["check"], registry=registry
        )
    return gauge


class OpsServer:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        readiness: dict[str, ReadinessCheck] | None = None,
        routes: Sequence[BaseRoute] = (),
        registry: CollectorRegistry = REGISTRY,
        before_scrape: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        self.host, self.port = host, port
        self.before_scrape = [*before_scrape, self._export_readiness]
        self._ready_metric = _ready_gauge(registry)
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

    async def _export_readiness(self) -> None:
        for name, check in self.readiness.items():
            self._ready_metric.labels(name).set(1 if check()[0] else 0)

    async def _metrics(self, request: Request) -> Response:
        for refresh in self.before_scrape:
            with contextlib.suppress(Exception):  # a failed refresh leaves the last values; the scrape still answers
                await asyncio.wait_for(refresh(), BEFORE_SCRAPE_TIMEOUT_S)
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
