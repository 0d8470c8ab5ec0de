"""The ClaimX REST API client: the four calls of the contract over one pooled httpx client.

Every request sends `Authorization: Basic <token>`. Requests are bounded in concurrency
(a semaphore of `max_concurrency`) and in rate (a token bucket of `max_requests_per_s`; a 429's
`Retry-After` pauses the whole bucket). Responses are classified into the pipeline's failure
categories:

=================================  ====================================================
401                                 AuthError (never retried)
404                                 PermanentError(error_type="NotFound")
other 4xx                           PermanentError(error_type="Http<status>")
429                                 TransientError honouring Retry-After
5xx, timeouts, connection errors    TransientError
3xx (redirects are not followed)    TransientError(error_type="Http<status>")
2xx body that is not JSON           TransientError(error_type="InvalidResponse")
2xx body over max_response_bytes    PermanentError(error_type="ResponseTooLarge")
2xx JSON about another id, of the   PermanentError(error_type="InvalidResponse")
wrong shape, too deep, huge ints
=================================  ====================================================

A 3xx is transient, not permanent: it says where the API is (a moved base URL, a login
redirect), nothing about the event, so it counts against the breaker rather than dead-letter
every event while the deployment is wrong.

The API is not trusted: ids put into a path are checked again (ASCII letters, digits, `-`, `_`,
at most 64: no dot segments, no look-alike digits), each attempt (connect, headers, the whole
body) has one overall deadline of `timeout_s` (httpx times each read separately, so a server
sending a byte a second would otherwise hold a call for ever), the body is read in chunks and
abandoned past `max_response_bytes`, and an answer must be about the id that was asked for.

Transient failures are retried in process `retries` times with jittered exponential backoff
(never sooner than a Retry-After); a Retry-After longer than `backoff_max_s` is not waited out
in process but raised, so the event can be retried later without holding a slot. A circuit
breaker opens after `breaker_failure_threshold` consecutive transient failures; while open,
calls fail at once with TransientError("circuit open") without touching the network.

The token never appears in a log line or an error message: messages name the method, the path
and the status only, and any response text they quote is scrubbed of the credentials.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, cast
from urllib.parse import urlencode, urlsplit
from urllib.request import getproxies, proxy_bypass

import httpx
import orjson

from kafka_pipeline.claimx.api.transport import ConnectionPool, Origin, header_block, origin_of, request_bytes
from kafka_pipeline.config import ApiSettings
from kafka_pipeline.errors import AuthError, ConfigError, PermanentError, PipelineError, TransientError
from kafka_pipeline.observability.logging import get_logger
from kafka_pipeline.observability.tracing import traced_transport
from kafka_pipeline.resilience.backoff import backoff_delay
from kafka_pipeline.resilience.circuit_breaker import CircuitBreaker, State

log = get_logger(__name__)

ApiKind = Literal["project", "media", "task", "video"]
API_KINDS: tuple[ApiKind, ...] = ("project", "media", "task", "video")

# Called once per HTTP attempt: (kind, outcome, seconds). Outcome is the status code as text,
# or "timeout", "connection_error", "circuit_open".
CallObserver = Callable[[str, str, float], None]

_QUOTED_BODY_CHARS = 200
_NO_BODY = httpx.ByteStream(b"")

# Ids that may be put into an API path or query: ASCII only (`[0-9]` is not `\\d`), no dots.
API_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_PATH_ID = re.compile(API_ID_PATTERN)


def pooled_transport(max_connections: int, url: str) -> httpx.AsyncBaseTransport:
    """The client's own HTTP/1.1 transport (`transport.py`): one pool of `max_connections`
    kept-alive connections, certificates checked as httpx checks them, through the proxy the
    environment names for `url` as httpx's own transport would be."""
    proxy = environment_proxy(url)
    if proxy is not None and proxy.url.scheme != "http":  # its URL is not echoed: it may carry a password
        raise ConfigError(f"the proxy the environment names for the ClaimX API is {proxy.url.scheme}://; only http:// proxies are supported")
    return ConnectionPool(
        max_connections=max_connections,
        keepalive_s=httpx.Limits().keepalive_expiry or 5.0,
        ssl_context=httpx.create_ssl_context() if url.startswith("https:") else None,
        proxy=proxy,
    )


def environment_proxy(url: str) -> httpx.Proxy | None:
    """The proxy that HTTPS_PROXY / HTTP_PROXY / ALL_PROXY name for `url`, unless NO_PROXY
    exempts its host; read once, when the client is built (as httpx does)."""
    parts = urlsplit(url)
    proxies = getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or (parts.hostname and proxy_bypass(parts.hostname)):
        return None
    return httpx.Proxy(proxy if "://" in proxy else f"http://{proxy}")


class ApiUrls:
    """httpx URLs of the API: the base URL plus a path and a query, joined without httpx's parse.

    httpx parses every URL it is given (14 µs: the host checked as an IP address, every part
    quoted), which was a tenth of a call's CPU. The parts joined here are already in the form
    that parse gives: the base URL was parsed once, paths are fixed text plus ids checked by
    `path_id` (letters, digits, `-`, `_`: nothing to quote, no dot segment) and queries are
    `urlencode`'s output (every other character percent-encoded, which the parse keeps).
    Whether this httpx agrees is checked once, on a sample, against its own parse; if it does
    not (a future httpx that stores URLs differently), every URL is parsed as before.
    """

    def __init__(self, base_url: str) -> None:
        self.base = httpx.URL(base_url.rstrip("/"))
        self._joins = self._agrees()

    def url(self, path: str, query: str | None = None) -> httpx.URL:
        """`base + path [+ "?" + query]`, as `httpx.URL` of that text would be."""
        if not self._joins:
            return httpx.URL(str(self.base) + path + ("" if query is None else "?" + query))
        url = httpx.URL.__new__(httpx.URL)
        url._uri_reference = self.base._uri_reference._replace(path=self.base._uri_reference.path + path, query=query)  # noqa: SLF001
        return url

    def target(self, path: str, query: str | None = None) -> bytes:
        """The request target of `url(path, query)`: its `raw_path`, without building the URL."""
        if not self._joins:
            return self.url(path, query).raw_path
        return (self._base_path + path if query is None else self._base_path + path + "?" + query).encode("ascii")

    def _agrees(self) -> bool:
        sample_path, sample_query = "/export/project/A-1_b/media", urlencode({"mediaIds": "1,x-2"})
        try:
            self._joins = True
            self._base_path = self.base._uri_reference.path  # noqa: SLF001
            joined = self.url(sample_path, sample_query)
            parsed = httpx.URL(str(self.base) + sample_path + "?" + sample_query)
            return (
                joined._uri_reference == parsed._uri_reference  # noqa: SLF001
                and str(joined) == str(parsed)
                and self.target(sample_path, sample_query) == parsed.raw_path
                and self.target(sample_path) == httpx.URL(str(self.base) + sample_path).raw_path
            )
        except (AttributeError, TypeError, ValueError):
            return False


class TokenBucket:
    """At most `rate` acquisitions per second on average, bursts of up to `burst`.

    `pause(seconds)` holds every acquisition until then (a 429's Retry-After, capped by the
    client at `max_retry_after_s`); `paused_for()` says how long that still is.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._clock, self._sleep = clock, sleep
        self._tokens = self.burst
        self._updated = clock()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()
        self._queued = 0  # acquisitions holding or awaiting the lock

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def paused_for(self) -> float:
        """Seconds until acquisitions go on again (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock())

    def try_take(self) -> bool:
        """Take a token now if one is free and no one waits for one (no coroutine: most calls)."""
        if self._queued:  # someone holds or awaits the lock: they go first
            return False
        now = self._clock()
        if now < self._paused_until:
            return False
        tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        if tokens < 1:
            return False
        self._tokens, self._updated = tokens - 1, now
        return True

    async def acquire(self) -> None:
        if self.try_take():
            return
        self._queued += 1
        try:
            await self._acquire_in_turn()
        finally:
            self._queued -= 1

    async def _acquire_in_turn(self) -> None:
        async with self._lock:  # waiters are served in arrival order
            while True:
                now = self._clock()
                if now < self._paused_until:
                    await self._sleep(self._paused_until - now)
                    continue
                self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await self._sleep((1 - self._tokens) / self.rate)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds (delta-seconds or an HTTP date); None when absent or invalid."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class ClaimXApiClient:
    """One per worker; use as `async with ClaimXApiClient(settings) as api:` or call `aclose()`."""

    def __init__(
        self,
        settings: ApiSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        breaker: CircuitBreaker | None = None,
        observer: CallObserver | None = None,
        on_breaker_change: Callable[[str, State, State], None] | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._secrets: list[str] = []
        self._transport = traced_transport(transport or pooled_transport(settings.max_concurrency, settings.url))
        self._http = httpx.AsyncClient(
            base_url=settings.url,
            headers={"Accept": "application/json", "User-Agent": "kafka-pipeline-claimx"},
            timeout=httpx.Timeout(settings.timeout_s),
            transport=self._transport,
        )
        # No read timeout of its own: the attempt's deadline (`timeout_s`, set before any read
        # starts) always ends a wait first.
        self._timeouts = {**self._http.timeout.as_dict(), "read": None}
        # Our own transport ends every wait at the attempt's deadline (its `deadline` extension):
        # no `asyncio.timeout` around the exchange (5 µs, a twentieth of a call's CPU). Another
        # transport (tests) gets the asyncio.timeout.
        self._deadline_in_transport = transport is None
        self._urls = ApiUrls(settings.url)
        # Our own transport without a proxy takes the request as bytes (`ConnectionPool.exchange`):
        # no httpx request or response objects per call (2-3 µs). Others get httpx's objects.
        self._direct = self._transport if isinstance(self._transport, ConnectionPool) and not self._transport.proxied else None
        self._origin: Origin = origin_of(self._urls.base)
        self._head_block: bytes | None = None  # the header lines of `_request_headers`, for `exchange`; set by reload_token
        self._json_head = True  # whether a JSON body's two headers go last, as `headers.update` puts them
        self._request_headers = httpx.Headers()  # the client's headers as httpx would send them; set by reload_token
        self.reload_token()
        self.breaker = breaker or CircuitBreaker(
            "claimx-api",
            failure_threshold=settings.breaker_failure_threshold,
            cooldown_s=settings.breaker_cooldown_s,
            on_change=on_breaker_change or _log_breaker_change,
        )
        self._semaphore = asyncio.Semaphore(settings.max_concurrency)
        self._bucket = TokenBucket(settings.max_requests_per_s, min(settings.max_requests_per_s, settings.max_concurrency), sleep=sleep)
        self._observer = observer
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.calls: Counter[str] = Counter()  # HTTP requests sent, per kind
        self.failures: Counter[str] = Counter()  # failed requests, per category

    async def __aenter__(self) -> ClaimXApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- the four calls of the contract ------------------------------------------------------

    def rate_limit_paused_s(self) -> float:
        """How long every request still waits on a 429's Retry-After (0: not paused)."""
        return self._bucket.paused_for()

    async def get_project(self, project_id: str) -> dict[str, Any]:
        """`GET /export/project/{id}` -> `{"project": {...}, "teamMembers": [...], "companyName": ...}`."""
        path = f"/export/project/{path_id(project_id, 'project_id')}"
        body = await self._call("project", "GET", path)
        if isinstance(body, Mapping) and isinstance(body.get("data"), Mapping) and "project" not in body:
            body = body["data"]
        if not isinstance(body, Mapping) or not isinstance(body.get("project"), Mapping):
            raise PermanentError(f"GET {path}: response has no project object", error_type="InvalidResponse")
        if body["project"].get("projectId") is None:  # an answer that names no project is about none
            raise PermanentError(f"GET {path}: response has no projectId", error_type="InvalidResponse")
        _same_id(f"GET {path}", "projectId", body["project"].get("projectId"), project_id)
        return dict(body)

    async def get_project_media(self, project_id: str, media_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """`GET /export/project/{id}/media[?mediaIds=1,2,3]` -> the media items."""
        path = f"/export/project/{path_id(project_id, 'project_id')}/media"
        query = media_query(media_ids) if media_ids else None
        body = await self._call("media", "GET", path, query=query)
        items = _item_list(body, f"GET {path}")
        wanted = set(media_ids) if media_ids else None
        for item in items:
            _same_id(f"GET {path}", "projectId", item.get("projectId"), project_id)
            media_id = _id_text(item.get("mediaID", item.get("mediaId")))
            if wanted is not None and media_id is not None and media_id not in wanted:
                raise PermanentError(f"GET {path}: answered media {_shown(media_id)}, which was not asked for", error_type="InvalidResponse")
        return items

    async def get_task_assignment(self, assignment_id: str, project_id: str | None = None) -> dict[str, Any]:
        """`GET /customTasks/assignment/{id}?full=true` -> the assignment object (of `project_id`
        when given: an assignment of another project is an invalid answer)."""
        path = f"/customTasks/assignment/{path_id(assignment_id, 'task_assignment_id')}"
        body = await self._call("task", "GET", path, query="full=true")
        if isinstance(body, Mapping) and isinstance(body.get("data"), Mapping) and "assignmentId" not in body:
            body = body["data"]
        if not isinstance(body, Mapping):
            raise PermanentError(f"GET {path}: response is not an object", error_type="InvalidResponse")
        _same_id(f"GET {path}", "assignmentId", body.get("assignmentId"), assignment_id)
        if project_id is not None:
            _same_id(f"GET {path}", "projectId", body.get("projectId"), project_id)
        return dict(body)

    async def get_video_collaborations(self, project_id: str) -> list[dict[str, Any]]:
        """`POST /data` with the `VIDEO_COLLABORATION` report for one project -> its items."""
        checked = path_id(project_id, "project_id")
        pid: int | str = int(checked) if checked.isdigit() else checked  # ASCII digits only (checked above)
        where = "POST /data (VIDEO_COLLABORATION)"
        body = await self._call("video", "POST", "/data", json_body={"reportType": "VIDEO_COLLABORATION", "projectId": pid})
        items = _item_list(body, where)
        for item in items:
            _same_id(where, "claimId", item.get("claimId"), project_id)
        return items

    # --- the request loop --------------------------------------------------------------------

    async def _call(
        self,
        kind: ApiKind,
        method: str,
        path: str,
        *,
        query: str | None = None,
        json_body: Any = None,
    ) -> Any:
        """`query`: the URL's query, already encoded (as `urlencode` would)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._attempt(kind, method, path, query, json_body)
            except TransientError as exc:
                retry_after = exc.retry_after_s
                if exc.error_type == "CircuitOpen" or attempt > self.settings.retries:
                    raise
                if retry_after is not None and retry_after > self.settings.backoff_max_s:
                    raise  # too long to hold a slot for; the event is retried later instead
                delay = max(backoff_delay(attempt, self.settings.backoff_base_s, self.settings.backoff_max_s, self._rng), retry_after or 0.0)
                log.warning("claimx api retry", kind=kind, method=method, path=path, error=str(exc), attempt=attempt, delay_s=round(delay, 3))
                await self._sleep(delay)

    async def _attempt(self, kind: ApiKind, method: str, path: str, query: str | None, json_body: Any) -> Any:
        if not self._bucket.try_take():
            await self._bucket.acquire()
        if not self.breaker.allow():
            self._observe(kind, "circuit_open", 0.0)
            raise TransientError(
                f"{method} {path}: circuit open", error_type="CircuitOpen", retry_after_s=self.breaker.seconds_until_retry()
            )
        try:
            async with self._semaphore:
                self.calls[kind] += 1
                started = time.perf_counter()
                try:
                    # One deadline for the whole attempt: connect, headers and every chunk of the body.
                    deadline = asyncio.get_running_loop().time() + self.settings.timeout_s
                    if self._deadline_in_transport:
                        status, reason, headers, body = await self._exchange(method, path, query, json_body, deadline)
                    else:
                        async with asyncio.timeout_at(deadline):
                            status, reason, headers, body = await self._exchange(method, path, query, json_body, deadline)
                except (httpx.TimeoutException, TimeoutError) as exc:
                    self._failed(kind, "timeout", started)
                    raise TransientError(f"{method} {path}: timed out ({type(exc).__name__})", error_type="Timeout") from None
                except httpx.RequestError as exc:  # transport errors, and bodies that do not decode (bad gzip)
                    self._failed(kind, "connection_error", started)
                    raise TransientError(
                        f"{method} {path}: {type(exc).__name__}: {self._scrub(str(exc))}",
                        error_type="ConnectionError" if isinstance(exc, httpx.TransportError) else "InvalidResponse",
                    ) from None
        except asyncio.CancelledError:
            # A cancelled call must not leave a half-open breaker waiting for its trial forever.
            if self.breaker.state == "half_open":
                self.breaker.record_failure()
            raise
        self._observe(kind, str(status), time.perf_counter() - started)
        error = self._classify(method, path, status, reason, headers, body)
        if error is not None:
            self.failures[error.category] += 1
            if isinstance(error, TransientError):
                self.breaker.record_failure()
                if error.retry_after_s is not None and status == 429:
                    self._bucket.pause(error.retry_after_s)
            else:
                self.breaker.record_success()  # the API answered: it is up
            if isinstance(error, AuthError):
                log.error("claimx api rejected the credentials (401)", kind=kind, method=method, path=path)
            raise error
        self.breaker.record_success()
        return self._decode(method, path, status, body)

    async def _exchange(
        self, method: str, path: str, query: str | None, json_body: Any, deadline: float
    ) -> tuple[int, str, list[tuple[bytes, bytes]], bytes | None]:
        """Send the request; (status, reason, raw headers, body) as `_read` gives them. `deadline`
        (loop time) goes to the transport as the `deadline` extension."""
        direct = self._direct
        if direct is not None and self._head_block is not None and (json_body is None or self._json_head):
            # The bytes `_serialize` writes for the request below (a test holds them equal).
            target, block, body = self._urls.target(path, query), self._head_block, b""
            if json_body is not None:
                body = orjson.dumps(json_body)
                block += b"Content-Length: %d\r\nContent-Type: application/json\r\n" % len(body)
            data = request_bytes(method.encode("ascii"), target, block, body)
            stream = await direct.exchange(self._origin, data, self._timeouts, deadline)
            try:
                status, reason, headers = stream.status_code, stream.reason_phrase, stream.raw_headers
                too_large, encoded = _framing(headers, self.settings.max_response_bytes)
                if encoded:  # decoded by httpx, as it came through httpx's path
                    return await self._read(status, reason, headers, stream, stream.response)
                if too_large:
                    return status, reason, headers, None
                return status, reason, headers, await stream.read_body(self.settings.max_response_bytes)
            finally:
                stream.release()
        extensions = {"timeout": self._timeouts, "deadline": deadline}
        # Built here and sent straight to the transport: the client's URL and header merging,
        # auth, redirect and cookie layers would do nothing here (the URL is absolute, the
        # header carries the token, redirects are errors, the API sets no cookie) at a fifth
        # of a call's CPU. The request is the one httpx would build (`request_as_httpx_builds_it`
        # in the tests): the client's headers after Host, the timeouts; a JSON body as httpx
        # encodes it. The URL is joined from parts httpx's parse would leave as they are (`ApiUrls`).
        url = self._urls.url(path, query)
        if json_body is None:
            request = httpx.Request(method, url, headers=self._request_headers, stream=_NO_BODY, extensions=extensions)
        else:
            # orjson writes the one body sent (text and integers) as httpx's json.dumps does, at a twentieth of the cost
            body = orjson.dumps(json_body)
            request = httpx.Request(method, url, headers=self._request_headers, stream=httpx.ByteStream(body), extensions=extensions)
            request.headers.update({"Content-Length": str(len(body)), "Content-Type": "application/json"})
        request.read()  # the body in memory, as httpx's own requests have it
        response = await self._transport.handle_async_request(request)
        try:
            return await self._read(response.status_code, response.reason_phrase, response.headers.raw, response.stream, lambda: response)
        finally:
            if not response.is_closed:  # what `response.aclose()` does, without its context manager (a twentieth of a call)
                response.is_closed = True
                await cast(httpx.AsyncByteStream, response.stream).aclose()

    async def _read(
        self, status: int, reason: str, headers: list[tuple[bytes, bytes]], stream: Any, as_response: Callable[[], httpx.Response]
    ) -> tuple[int, str, list[tuple[bytes, bytes]], bytes | None]:
        """(status, reason, headers, body): the body read in chunks up to `max_response_bytes`,
        None when it is longer (the rest is never read); decoded by httpx (`as_response`) when
        the server encoded it. The caller closes the stream."""
        limit = self.settings.max_response_bytes
        too_large, encoded = _framing(headers, limit)
        if too_large:
            return status, reason, headers, None
        chunks: list[bytes] = []
        size = 0
        # decoded when the server encoded it (a compressed bomb is capped too), else as it came
        body_chunks = as_response().aiter_bytes() if encoded else stream
        async for chunk in cast(AsyncIterable[bytes], body_chunks):
            size += len(chunk)
            if size > limit:
                return status, reason, headers, None
            chunks.append(chunk)
        return status, reason, headers, b"".join(chunks)

    def _decode(self, method: str, path: str, status: int, body: bytes | None) -> Any:
        if body is None:
            raise PermanentError(
                f"{method} {path}: {status} with a body over {self.settings.max_response_bytes} bytes", error_type="ResponseTooLarge"
            )
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # the rare bad body is read again by the standard parser, which says why
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise TransientError(f"{method} {path}: {status} with a body that is not JSON", error_type="InvalidResponse") from None
        except (ValueError, RecursionError) as exc:  # integers past the digit limit, nesting past the stack
            raise PermanentError(
                f"{method} {path}: {status} with JSON that cannot be read ({type(exc).__name__})", error_type="InvalidResponse"
            ) from None

    def _failed(self, kind: str, outcome: str, started: float) -> None:
        self._observe(kind, outcome, time.perf_counter() - started)
        self.failures["transient"] += 1
        self.breaker.record_failure()

    def _observe(self, kind: str, outcome: str, seconds: float) -> None:
        if self._observer is not None:
            self._observer(kind, outcome, seconds)

    def _classify(
        self, method: str, path: str, status: int, reason: str, headers: list[tuple[bytes, bytes]], body: bytes | None
    ) -> PipelineError | None:
        if 200 <= status < 300:
            return None
        where = f"{method} {path}: {status} {reason}".rstrip()
        if status == 401:
            return AuthError(f"{where}: credentials rejected", error_type="Unauthorized")
        if status == 429:
            retry_after = parse_retry_after(httpx.Headers(headers).get("Retry-After"))
            if retry_after is not None:  # a Retry-After of years must not stop the worker for years
                retry_after = min(retry_after, self.settings.max_retry_after_s)
            return TransientError(f"{where}: rate limited", error_type="RateLimited", retry_after_s=retry_after)
        if status >= 500:
            return TransientError(where, error_type=f"Http{status}")
        if status < 400:
            return TransientError(f"{where}: not a 2xx answer (redirects are not followed)", error_type=f"Http{status}")
        text = (body or b"")[: _QUOTED_BODY_CHARS * 4].decode("utf-8", "replace")[:_QUOTED_BODY_CHARS]
        detail = "".join(c if c.isprintable() else " " for c in self._scrub(text)).strip()
        message = f"{where}: {detail}" if detail else where
        if status == 404:
            return PermanentError(message, error_type="NotFound")
        return PermanentError(message, error_type=f"Http{status}")

    def reload_token(self) -> None:
        """Read the token again (`CLAIMX_API_TOKEN`, else the file `CLAIMX_API_TOKEN_FILE` names),
        so an operator can rotate the secret without a restart. OSError when the file is unreadable."""
        token = self.settings.resolved_token()
        secret = token.get_secret_value() if token is not None else None
        # scrub the old forms too: an error raised before the rotation may still be formatted
        self._secrets = list(dict.fromkeys([*_secret_forms(secret), *self._secrets]))
        if secret is None:
            self._http.headers.pop("Authorization", None)
        else:
            self._http.headers["Authorization"] = f"Basic {secret}"
        self._request_headers = httpx.Headers([(b"Host", self._urls.base.netloc), *self._http.headers.raw])
        raw = self._request_headers.raw
        self._head_block = header_block(raw)  # None: a header `_serialize` refuses takes the httpx path, which raises
        self._json_head = not any(name.lower() in (b"content-length", b"content-type") for name, _ in raw)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    # --- state -------------------------------------------------------------------------------

    @property
    def breaker_open(self) -> bool:
        return self.breaker.state == "open"

    def stats(self) -> dict[str, Any]:
        return {
            "calls": {kind: self.calls.get(kind, 0) for kind in API_KINDS},
            "calls_total": sum(self.calls.values()),
            "failures": dict(self.failures),
            "breaker": self.breaker.state,
        }


def path_id(value: Any, field: str) -> str:
    """An id that may go into an API path or query, else PermanentError(InvalidId): 1 to 64
    ASCII letters, digits, `-` or `_`. Checked here again although events are validated when
    parsed: a path is where a bad id does harm (`..` resolves to another endpoint)."""
    if isinstance(value, str) and _PATH_ID.fullmatch(value):
        return value  # nothing in it to quote
    raise PermanentError(f"{field}: not a valid API id: {_shown(value)}", error_type="InvalidId")


def media_query(media_ids: list[str]) -> str:
    """`urlencode({"mediaIds": ",".join(ids)})` of ids checked by `path_id`: they need no
    quoting, the comma does (a third of urlencode's cost)."""
    return "mediaIds=" + "%2C".join(path_id(m, "media_id") for m in media_ids)


def _id_text(value: Any) -> str | None:
    """An id as the API sends it (number or text) in the form events carry, for comparison."""
    if value is None or isinstance(value, bool):
        return None if value is None else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return value if isinstance(value, str) else repr(value)


def _same_id(where: str, field: str, answered: Any, requested: str) -> None:
    """The answer names the id that was asked for (when it names one at all)."""
    if answered is not None and _id_text(answered) != requested:
        raise PermanentError(
            f"{where}: answered {field} {_shown(answered)}, not the requested {requested}", error_type="InvalidResponse"
        )


def _shown(value: Any, limit: int = 80) -> str:
    """A value from outside, quoted for a message: repr (no control characters), bounded."""
    text = repr(value) if not isinstance(value, str) else ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _framing(headers: list[tuple[bytes, bytes]], limit: int) -> tuple[bool, bool]:
    """(whether the declared Content-Length is over `limit`, whether the body has a Content-Encoding)."""
    declared, encoded = b"", False
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            declared = value
        elif lowered == b"content-encoding":
            encoded = True
    return declared.isdigit() and int(declared) > limit, encoded


def _item_list(body: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(body, Mapping) and "data" in body:
        body = body["data"]
    if body is None:
        return []
    if not isinstance(body, list):
        raise PermanentError(f"{where}: response is not a list of items", error_type="InvalidResponse")
    return [dict(item) for item in body if isinstance(item, Mapping)]


def _secret_forms(token: str | None) -> list[str]:
    """The token and the `user:password` it encodes: none may appear in a message."""
    if not token:
        return []
    forms = [token]
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        decoded = ""
    if decoded:
        forms.append(decoded)
        _, _, password = decoded.partition(":")
        if len(password) >= 4:
            forms.append(password)
    return sorted(set(forms), key=len, reverse=True)


def _log_breaker_change(name: str, old: State, new: State) -> None:
    if new == "open":
        log.error("circuit breaker opened: the ClaimX API keeps failing", breaker=name, previous=old)
    else:
        log.info("circuit breaker state change", breaker=name, previous=old, state=new)
