"""Cache admin routes for the worker's OpsServer: `/cache/stats`, `/cache/invalidate`, `/cache/warm`.

A worker mounts them with ``routes=admin_routes(settings, cache)``: none when
`cache.admin_routes` is off, and a ConfigError (the worker refuses to start) when the ops port
listens beyond loopback without `KP_CACHE__ADMIN_TOKEN`: `POST /cache/invalidate {"all": true}`
must not be open to whoever reaches the port. When an admin token is configured every route
requires ``Authorization: Bearer <token>``.

Requests are bounded: bodies over MAX_BODY_BYTES are refused (413), ids must be API ids and at
most MAX_INVALIDATION_IDS of them, `window_s` at most the cache's `ttl_s` (an older entry
would be expired anyway), one warm at a time (409), and a failure answers a one-line 500.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kafka_pipeline.claimx.api.client import API_ID_PATTERN
from kafka_pipeline.claimx.cache.project_cache import ProjectCache
from kafka_pipeline.claimx.cache.redis_tier import MAX_INVALIDATION_IDS
from kafka_pipeline.claimx.cache.warm import Warmer
from kafka_pipeline.config import Settings
from kafka_pipeline.errors import ConfigError
from kafka_pipeline.observability.logging import get_logger

log = get_logger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]

MAX_BODY_BYTES = 1_048_576
_ID = re.compile(API_ID_PATTERN)


class _BodyTooLarge(Exception):
    pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: assume it is reachable from elsewhere


def check_admin_exposure(settings: Settings) -> None:
    """ConfigError when the admin routes would be open to the network without a token."""
    worker, cache = settings.worker, settings.cache
    if cache.admin_routes and worker.http_port and not is_loopback(worker.http_host) and cache.admin_token is None:
        raise ConfigError(
            f"config error: cache.admin_routes: the ops port listens on {worker.http_host}, not loopback; "
            "set KP_CACHE__ADMIN_TOKEN or KP_CACHE__ADMIN_ROUTES=false"
        )


def admin_routes(settings: Settings, cache: object, *, warm_from: Warmer | None = None) -> list[Route]:
    """The routes a worker mounts on its ops port (checked by `check_admin_exposure`)."""
    check_admin_exposure(settings)
    if not settings.cache.admin_routes or not isinstance(cache, ProjectCache):
        return []
    return cache_routes(cache, warm_from=warm_from, admin_token=settings.cache.admin_token)


def cache_routes(cache: ProjectCache, *, warm_from: Warmer | None = None, admin_token: SecretStr | str | None = None) -> list[Route]:
    """The `/cache/*` routes. `admin_token` defaults to `cache.settings.admin_token`; `warm_from`
    (the Delta tables) enables `POST /cache/warm`."""
    token = admin_token if admin_token is not None else cache.settings.admin_token
    secret = token.get_secret_value() if isinstance(token, SecretStr) else token

    warming = asyncio.Lock()

    def guarded(endpoint: Endpoint) -> Endpoint:
        expected = f"Bearer {secret}".encode() if secret else None

        async def check(request: Request) -> Response:
            if expected is not None:
                given = request.headers.get("authorization", "").encode()
                if not hmac.compare_digest(given, expected):
                    return JSONResponse({"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
            try:
                return await endpoint(request)
            except _BodyTooLarge:
                return JSONResponse({"error": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
            except Exception as exc:  # noqa: BLE001 - one line in the log and the answer, no traceback
                log.error("cache_admin_failed", path=request.url.path, error=f"{type(exc).__name__}: {exc}"[:300])
                return JSONResponse({"error": f"{type(exc).__name__} (see the worker log)"}, status_code=500)

        return check

    async def stats(request: Request) -> Response:
        return JSONResponse(stats_payload(cache))

    async def invalidate(request: Request) -> Response:
        body = await _json_body(request)
        if body is None:
            return JSONResponse({"error": 'body must be JSON: {"project_ids": [...]} or {"all": true}'}, status_code=400)
        given = body.get("project_ids")
        if body.get("all") is True:
            ids: list[str] | None = None
        elif isinstance(given, list) and 0 < len(given) <= MAX_INVALIDATION_IDS:
            ids = [i if isinstance(i, str) else str(i) for i in given if isinstance(i, str | int) and not isinstance(i, bool)]
            if len(ids) != len(given) or not all(_ID.fullmatch(i) for i in ids):
                return JSONResponse({"error": "project_ids must be ids: 1-64 ASCII letters, digits, - or _"}, status_code=400)
        else:
            return JSONResponse(
                {"error": f'give "project_ids" (a list of 1 to {MAX_INVALIDATION_IDS} ids) or "all": true'}, status_code=400
            )
        dropped = cache.invalidate(ids, broadcast=False)
        tier = cache.shared_tier
        shared = await tier.invalidate_now(ids) if tier is not None else 0
        log.info("project_cache_invalidated", project_ids=ids if ids is None or len(ids) <= 20 else f"{len(ids)} ids", dropped=dropped, shared_dropped=shared)
        return JSONResponse({"dropped": dropped, "shared_dropped": shared, "broadcast": tier is not None})

    async def warm(request: Request) -> Response:
        if warm_from is None:
            return JSONResponse({"error": "no Delta tables configured for this cache"}, status_code=409)
        body = await _json_body(request, allow_empty=True)
        if body is None:
            return JSONResponse({"error": 'body must be empty or JSON like {"window_s": 1800}'}, status_code=400)
        window = body.get("window_s", min(cache.settings.warm_window_s, cache.settings.ttl_s))
        limit = cache.settings.ttl_s
        if not isinstance(window, int | float) or isinstance(window, bool) or not (0 < window <= limit) or not math.isfinite(window):
            return JSONResponse({"error": f"window_s must be a number in (0, {limit:g}] (the cache ttl_s)"}, status_code=400)
        if warming.locked():
            return JSONResponse({"error": "a warm is already running"}, status_code=409)
        async with warming:
            warmed = await warm_from(float(window))
        return JSONResponse({"warmed": warmed, "window_s": float(window), "size": len(cache)})

    return [
        Route("/cache/stats", guarded(stats), methods=["GET"]),
        Route("/cache/invalidate", guarded(invalidate), methods=["POST"]),
        Route("/cache/warm", guarded(warm), methods=["POST"]),
    ]


def stats_payload(cache: ProjectCache) -> dict[str, Any]:
    s = cache.stats()
    payload: dict[str, Any] = asdict(s)
    payload.update(
        hit_rate=round(s.hit_rate, 4),
        l1_hit_rate=round(s.l1_hit_rate, 4),
        l2_hit_rate=round(s.l2_hit_rate, 4),
        settings={
            "ttl_s": cache.settings.ttl_s,
            "refresh_after_s": cache.settings.refresh_after_s,
            "absent_ttl_s": cache.settings.absent_ttl_s,
            "max_entries": cache.settings.max_entries,
            "shared_tier": cache.shared_tier is not None,
        },
    )
    return payload


async def _json_body(request: Request, *, allow_empty: bool = False) -> dict[str, Any] | None:
    """The JSON object of the body; None when it is not one. Read in chunks: _BodyTooLarge
    past MAX_BODY_BYTES, whatever Content-Length claims."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _BodyTooLarge
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {} if allow_empty else None
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, too deep, integers too long
        return None
    return body if isinstance(body, dict) else None
