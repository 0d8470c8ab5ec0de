"""Cache admin routes for the worker's OpsServer: `/cache/stats`, `/cache/invalidate`, `/cache/warm`.

Mount them with ``OpsServer(..., routes=cache_routes(cache), readiness={"project_cache": cache.readiness})``.
When an admin token is configured every route requires ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kafka_pipeline.claimx.cache.project_cache import ProjectCache
from kafka_pipeline.claimx.cache.warm import Warmer
from kafka_pipeline.runtime.logging import get_logger

log = get_logger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]


def cache_routes(cache: ProjectCache, *, warm_from: Warmer | None = None, admin_token: SecretStr | str | None = None) -> list[Route]:
    """The `/cache/*` routes. `admin_token` defaults to `cache.settings.admin_token`; `warm_from`
    (the Delta tables) enables `POST /cache/warm`."""
    token = admin_token if admin_token is not None else cache.settings.admin_token
    secret = token.get_secret_value() if isinstance(token, SecretStr) else token

    def guarded(endpoint: Endpoint) -> Endpoint:
        if not secret:
            return endpoint
        expected = f"Bearer {secret}".encode()

        async def check(request: Request) -> Response:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return JSONResponse({"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
            return await endpoint(request)

        return check

    async def stats(request: Request) -> Response:
        return JSONResponse(stats_payload(cache))

    async def invalidate(request: Request) -> Response:
        body = await _json_body(request)
        if body is None:
            return JSONResponse({"error": 'body must be JSON: {"project_ids": [...]} or {"all": true}'}, status_code=400)
        if body.get("all") is True:
            ids: list[str] | None = None
        elif isinstance(body.get("project_ids"), list) and body["project_ids"]:
            ids = [str(i) for i in body["project_ids"]]
        else:
            return JSONResponse({"error": 'give "project_ids" (a non-empty list) or "all": true'}, status_code=400)
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
        window = body.get("window_s", cache.settings.warm_window_s)
        if not isinstance(window, int | float) or isinstance(window, bool) or window <= 0:
            return JSONResponse({"error": "window_s must be a positive number"}, status_code=400)
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
    raw = await request.body()
    if not raw.strip():
        return {} if allow_empty else None
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
