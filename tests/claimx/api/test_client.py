"""The ClaimX API client against an httpx MockTransport: paths, auth, classification, retries,
Retry-After, the circuit breaker, bounds on concurrency and rate, and no token in any message."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import urlencode

import httpx
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_pipeline.claimx.api.client import (
    API_ID_PATTERN,
    ApiUrls,
    ClaimXApiClient,
    TokenBucket,
    environment_proxy,
    media_query,
    parse_retry_after,
    path_id,
)
from kafka_pipeline.claimx.api.transport import _serialize
from kafka_pipeline.config import ApiSettings
from kafka_pipeline.errors import AuthError, ConfigError, PermanentError, TransientError
from tests.fixtures.api import PASSWORD, TOKEN, Recorder, Sleeps


def make_settings(**overrides) -> ApiSettings:
    values = {
        "url": "http://claimx.test/service/cxedirest",
        "token": TOKEN,
        "retries": 3,
        "backoff_base_s": 0.1,
        "backoff_max_s": 2.0,
        "max_requests_per_s": 10_000,
    }
    values.update(overrides)
    return ApiSettings(**values)






def client_for(handler, *, sleep=None, **overrides) -> ClaimXApiClient:
    return ClaimXApiClient(make_settings(**overrides), transport=httpx.MockTransport(handler), sleep=sleep or Sleeps())


async def test_the_four_calls_paths_auth_and_unwrapping() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        assert request.headers["Authorization"] == f"Basic {TOKEN}"
        if path == "/service/cxedirest/export/project/5000001":
            return httpx.Response(200, json={"data": {"project": {"projectId": 5000001}, "teamMembers": [], "companyName": "C"}})
        if path == "/service/cxedirest/export/project/5000001/media":
            assert request.url.params["mediaIds"] == "5000001001,5000001002"
            return httpx.Response(200, json=[{"mediaID": 5000001001}, {"mediaID": 5000001002}])
        if path == "/service/cxedirest/customTasks/assignment/5000001003":
            assert request.url.params["full"] == "true"
            return httpx.Response(200, json={"assignmentId": 5000001003})
        if path == "/service/cxedirest/data":
            assert request.method == "POST"
            assert json.loads(request.content) == {"reportType": "VIDEO_COLLABORATION", "projectId": 5000001}
            return httpx.Response(200, json={"data": [{"videoCollaborationId": 5000001001}]})
        return httpx.Response(418)

    async with client_for(handler) as api:
        assert (await api.get_project("5000001"))["project"]["projectId"] == 5000001
        assert [m["mediaID"] for m in await api.get_project_media("5000001", ["5000001001", "5000001002"])] == [5000001001, 5000001002]
        assert (await api.get_task_assignment("5000001003"))["assignmentId"] == 5000001003
        assert (await api.get_video_collaborations("5000001"))[0]["videoCollaborationId"] == 5000001001
        assert api.stats()["calls"] == {"project": 1, "media": 1, "task": 1, "video": 1}


async def test_project_without_data_wrapper_and_media_under_data() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/media"):
            assert "mediaIds" not in request.url.params  # all media when no ids are given
            return httpx.Response(200, json={"data": [{"mediaID": 1}]})
        return httpx.Response(200, json={"project": {"projectId": 7}, "teamMembers": []})

    async with client_for(handler) as api:
        assert (await api.get_project("7"))["project"] == {"projectId": 7}
        assert await api.get_project_media("7") == [{"mediaID": 1}]


@pytest.mark.parametrize(
    ("status", "error", "error_type"),
    [(401, AuthError, "Unauthorized"), (404, PermanentError, "NotFound"), (400, PermanentError, "Http400"), (422, PermanentError, "Http422")],
)
async def test_4xx_is_not_retried(status: int, error: type, error_type: str) -> None:
    recorder = Recorder(httpx.Response(status, text="nope"))
    async with client_for(recorder) as api:
        with pytest.raises(error) as raised:
            await api.get_project("42")
    assert raised.value.error_type == error_type
    assert "/export/project/42" in str(raised.value) and str(status) in str(raised.value)
    assert len(recorder.requests) == 1
    assert api.breaker.state == "closed"


async def test_5xx_retried_with_jittered_backoff_then_succeeds() -> None:
    recorder = Recorder(httpx.Response(500), httpx.Response(503), httpx.Response(200, json={"project": {"projectId": 1}}))
    sleeps = Sleeps()
    async with client_for(recorder, sleep=sleeps) as api:
        assert (await api.get_project("1"))["project"]["projectId"] == 1
    assert len(recorder.requests) == 3
    assert len(sleeps.delays) == 2
    assert 0 <= sleeps.delays[0] <= 0.1 and 0 <= sleeps.delays[1] <= 0.2  # full jitter under base * 2^(n-1)


async def test_transient_failure_after_the_retries_is_raised() -> None:
    recorder = Recorder(httpx.Response(502))
    async with client_for(recorder, retries=2) as api:
        with pytest.raises(TransientError) as raised:
            await api.get_task_assignment("9")
    assert raised.value.error_type == "Http502"
    assert len(recorder.requests) == 3  # the call and two retries


async def test_timeouts_and_connection_errors_are_transient() -> None:
    recorder = Recorder(httpx.ReadTimeout("slow"), httpx.ConnectError("refused"), httpx.Response(200, json=[]))
    async with client_for(recorder) as api:
        assert await api.get_project_media("3") == []
    assert len(recorder.requests) == 3
    recorder = Recorder(httpx.ConnectError("refused"))
    async with client_for(recorder, retries=0) as api:
        with pytest.raises(TransientError, match="ConnectError") as raised:
            await api.get_project_media("3")
    assert raised.value.error_type == "ConnectionError"


async def test_a_refused_or_dropped_connection_is_a_connection_error_not_a_timeout() -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with ClaimXApiClient(make_settings(url=f"http://127.0.0.1:{port}/api", retries=0)) as api:
        with pytest.raises(TransientError) as refused:
            await api.get_project("1")
    assert refused.value.error_type == "ConnectionError" and "ConnectError" in str(refused.value)

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        await writer.drain()
        writer.close()  # mid-body

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        async with ClaimXApiClient(make_settings(url=f"http://127.0.0.1:{port}/api", retries=0)) as api:
            with pytest.raises(TransientError) as dropped:
                await api.get_project("1")
    finally:
        server.close()
        await server.wait_closed()
    assert dropped.value.error_type == "ConnectionError", dropped.value


async def test_requests_go_through_the_proxy_the_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append((await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")[0])
        body = json.dumps({"project": {"projectId": 5}}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    try:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
        async with ClaimXApiClient(make_settings(url="http://claimx.test/api", retries=0)) as api:
            assert (await api.get_project("5"))["project"]["projectId"] == 5
        monkeypatch.setenv("NO_PROXY", "claimx.test")
        assert environment_proxy("http://claimx.test/api") is None
        monkeypatch.delenv("NO_PROXY")
        monkeypatch.setenv("HTTP_PROXY", "https://user:hunter2@proxy.test:3128")
        with pytest.raises(ConfigError, match="only http:// proxies are supported") as refused:
            ClaimXApiClient(make_settings(url="http://claimx.test/api"))
        assert "hunter2" not in str(refused.value)
    finally:
        server.close()
        await server.wait_closed()
    assert seen == [b"GET http://claimx.test/api/export/project/5 HTTP/1.1"]


async def test_429_waits_retry_after_before_retrying() -> None:
    recorder = Recorder(httpx.Response(429, headers={"Retry-After": "1.5"}), httpx.Response(200, json={"assignmentId": 1}))
    sleeps = Sleeps()
    async with client_for(recorder, sleep=sleeps) as api:
        assert (await api.get_task_assignment("1"))["assignmentId"] == 1
    assert len(recorder.requests) == 2
    assert sum(sleeps.delays) >= 1.5  # never sooner than the server asked


async def test_429_with_a_long_retry_after_is_raised_not_waited_out() -> None:
    recorder = Recorder(httpx.Response(429, headers={"Retry-After": "60"}))
    async with client_for(recorder) as api:
        with pytest.raises(TransientError) as raised:
            await api.get_project("1")
    assert raised.value.retry_after_s == 60 and raised.value.error_type == "RateLimited"
    assert len(recorder.requests) == 1


def test_parse_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == pytest.approx(30)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


async def test_breaker_opens_and_fails_fast_without_calling() -> None:
    recorder = Recorder(httpx.Response(500))
    async with client_for(recorder, retries=0, breaker_failure_threshold=3, breaker_cooldown_s=60) as api:
        for _ in range(3):
            with pytest.raises(TransientError):
                await api.get_project("1")
        assert api.breaker_open
        with pytest.raises(TransientError, match="circuit open") as raised:
            await api.get_project("1")
    assert raised.value.error_type == "CircuitOpen"
    assert len(recorder.requests) == 3


async def test_breaker_half_open_trial_closes_it() -> None:
    now = [0.0]
    recorder = Recorder(httpx.Response(500), httpx.Response(500), httpx.Response(200, json={"project": {"projectId": 1}}))
    api = client_for(recorder, retries=0, breaker_failure_threshold=2, breaker_cooldown_s=5)
    api.breaker.clock = lambda: now[0]
    async with api:
        for _ in range(2):
            with pytest.raises(TransientError):
                await api.get_project("1")
        assert api.breaker.state == "open"
        now[0] = 6.0
        assert (await api.get_project("1")) == {"project": {"projectId": 1}}
        assert api.breaker.state == "closed"


async def test_token_never_appears_in_errors_or_logs() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        echoed = f"bad request from {request.headers['Authorization']} user svc-claimx:{PASSWORD}"
        if request.url.path.endswith("/media"):
            raise httpx.ConnectError(f"refused while sending {request.headers['Authorization']}")
        if request.url.path.endswith("/data"):
            return httpx.Response(401, text=echoed)
        if "/customTasks/" in request.url.path:
            return httpx.Response(503, text=echoed)
        return httpx.Response(400, text=echoed)

    messages: list[str] = []
    with structlog.testing.capture_logs() as logs:
        async with client_for(handler, retries=1) as api:
            for call in (api.get_project("1"), api.get_project_media("1"), api.get_task_assignment("1"), api.get_video_collaborations("1")):
                with pytest.raises((PermanentError, TransientError, AuthError)) as raised:
                    await call
                messages.append(str(raised.value))
                messages.append(repr(raised.value))
    text = "\n".join(messages) + "\n" + "\n".join(repr(entry) for entry in logs)
    assert logs  # retries and the 401 were logged
    assert TOKEN not in text and PASSWORD not in text
    assert "***" in messages[0]  # the quoted body was scrubbed, not dropped


async def test_concurrency_is_bounded() -> None:
    state = {"now": 0, "peak": 0}

    async def handler(request: httpx.Request) -> httpx.Response:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.01)
        state["now"] -= 1
        return httpx.Response(200, json={"assignmentId": int(request.url.path.rsplit("/", 1)[1])})

    async with ClaimXApiClient(make_settings(max_concurrency=4), transport=httpx.MockTransport(handler)) as api:
        await asyncio.gather(*(api.get_task_assignment(str(i)) for i in range(40)))
    assert state["peak"] == 4


async def test_rate_is_bounded() -> None:
    recorder = Recorder(httpx.Response(200, json={"taskId": 1}))
    async with ClaimXApiClient(make_settings(max_requests_per_s=50, max_concurrency=1), transport=httpx.MockTransport(recorder)) as api:
        started = time.monotonic()
        await asyncio.gather(*(api.get_task_assignment(str(i)) for i in range(11)))
        elapsed = time.monotonic() - started
    assert elapsed >= 0.19  # burst of 1, then 10 more at 50/s


async def test_token_bucket_pause_holds_every_caller() -> None:
    bucket = TokenBucket(1000, 10)
    bucket.pause(0.1)
    started = time.monotonic()
    await asyncio.gather(*(bucket.acquire() for _ in range(3)))
    assert time.monotonic() - started >= 0.09


async def test_token_bucket_serves_in_arrival_order_with_or_without_the_lock() -> None:
    """A token free and no one queued: taken at once (no lock). Otherwise callers queue in
    arrival order, and one arriving while others wait queues behind them even when a token
    has come back meanwhile."""
    now = [0.0]
    order: list[str] = []

    async def sleep(seconds: float) -> None:
        now[0] += seconds
        await asyncio.sleep(0)

    bucket = TokenBucket(10, 2, clock=lambda: now[0], sleep=sleep)

    async def take(name: str) -> None:
        await bucket.acquire()
        order.append(name)

    await take("a")
    await take("b")  # the burst of 2, no waiting
    assert order == ["a", "b"] and now[0] == 0.0
    waiting = [asyncio.create_task(take(name)) for name in ("c", "d")]
    await asyncio.sleep(0)  # c holds the lock and sleeps for its token, d queues behind it
    late = asyncio.create_task(take("e"))
    await asyncio.gather(*waiting, late)
    assert order == ["a", "b", "c", "d", "e"]
    assert now[0] == pytest.approx(0.3)  # three tokens at 10/s: the late caller did not jump the queue
    now[0] += 1.0
    await take("f")  # the queue is empty again: straight through
    assert order[-1] == "f" and now[0] == pytest.approx(1.3)


async def test_reload_token_rotates_the_header_and_scrubs_both_tokens(tmp_path) -> None:
    """An operator rotates the token file; the client sends the new token and never shows either."""
    token_file = tmp_path / "token"
    token_file.write_text("b2xkOnRva2Vu\n")
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(400, text=f"bad request from {request.headers['Authorization']}")

    settings = ApiSettings(url="http://claimx.test", token_file=token_file, retries=0)
    async with ClaimXApiClient(settings, transport=httpx.MockTransport(answer)) as api:
        with pytest.raises(PermanentError) as first:
            await api.get_project("1")
        token_file.write_text("bmV3OnRva2Vu\n")
        api.reload_token()
        with pytest.raises(PermanentError) as second:
            await api.get_project("1")
    assert seen == ["Basic b2xkOnRva2Vu", "Basic bmV3OnRva2Vu"]
    for error in (first.value, second.value):
        assert "b2xkOnRva2Vu" not in str(error) and "bmV3OnRva2Vu" not in str(error)


# --- a hostile API double: a real HTTP server on loopback that misbehaves on purpose -----------


class HostileApi:
    """Answers each path with a scripted (and mostly wrong) HTTP exchange, written byte by byte
    when it has to be: slow-loris bodies, bodies far over the cap, redirects with a JSON body,
    answers about another id, answers of the wrong shape."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.bytes_sent: dict[str, int] = {}
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> HostileApi:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/api"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:  # Python 3.11 has no Server.close_clients()
            writer.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
                await reader.readexactly(int(headers.get("content-length", "0")))
                path = request_line.split(" ")[1].split("?")[0].removeprefix("/api")
                self.paths.append(path)
                await self._answer(path, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, path: str, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        self.bytes_sent[path] = self.bytes_sent.get(path, 0) + len(data)

    async def _answer(self, path: str, writer: asyncio.StreamWriter) -> None:
        def response(status: str, body: bytes, *extra: str, length: int | None = None) -> bytes:
            lines = [f"HTTP/1.1 {status}", "Content-Type: application/json", f"Content-Length: {len(body) if length is None else length}", *extra]
            return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

        project = json.dumps({"project": {"projectId": 123}, "teamMembers": []}).encode()
        if path == "/export/project/123":  # the one honest answer
            await self._send(writer, path, response("200 OK", project))
        elif path == "/export/project/1":  # slow-loris: one byte every 0.1 s, each read well within httpx's timeout
            await self._send(writer, path, response("200 OK", b"", length=len(project)))
            for byte in project:
                await asyncio.sleep(0.1)
                await self._send(writer, path, bytes([byte]))
        elif path == "/export/project/2":  # 8 MB declared and sent, chunk after chunk
            await self._send(writer, path, response("200 OK", b"", length=8_000_000))
            for _ in range(80):
                await self._send(writer, path, b" " * 100_000)
        elif path == "/export/project/3":  # chunked, no length declared: only counting stops it
            await self._send(writer, path, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(80):
                await self._send(writer, path, b"186a0\r\n" + b" " * 100_000 + b"\r\n")
            await self._send(writer, path, b"0\r\n\r\n")
        elif path == "/export/project/4":  # a redirect carrying what looks like the project
            await self._send(writer, path, response("302 Found", json.dumps({"project": {"projectId": 4}}).encode(), "Location: /login"))
        elif path == "/export/project/5":  # asked for 5, answered 999
            await self._send(writer, path, response("200 OK", json.dumps({"data": {"project": {"projectId": 999}}}).encode()))
        elif path == "/export/project/6":  # the project is a string
            await self._send(writer, path, response("200 OK", b'{"project": "6"}'))
        elif path == "/export/project/7":  # JSON nested far past the recursion limit
            await self._send(writer, path, response("200 OK", b"[" * 30_000 + b"]" * 30_000))
        elif path == "/export/project/8":  # an integer with 5,000 digits
            await self._send(writer, path, response("200 OK", b'{"project": {"projectId": 8, "yearBuilt": ' + b"9" * 5000 + b"}}"))
        elif path == "/export/project/9":  # 200 with an HTML page (a proxy's error page)
            await self._send(writer, path, response("200 OK", b"<html>busy</html>"))
        elif path == "/export/project/10/media":  # media of another project
            await self._send(writer, path, response("200 OK", json.dumps({"data": [{"mediaID": 77, "projectId": 999}]}).encode()))
        elif path == "/export/project/11/media":  # a media item that was not asked for
            await self._send(writer, path, response("200 OK", json.dumps([{"mediaID": 77}, {"mediaID": 78}]).encode()))
        elif path == "/customTasks/assignment/12":  # asked for assignment 12, answered 13
            await self._send(writer, path, response("200 OK", json.dumps({"assignmentId": 13, "projectId": 123}).encode()))
        elif path == "/customTasks/assignment/14":  # the right assignment, of another project
            await self._send(writer, path, response("200 OK", json.dumps({"assignmentId": 14, "projectId": 999}).encode()))
        elif path == "/export/project/16":  # says gzip, is not
            await self._send(writer, path, response("200 OK", b"not gzip at all", "Content-Encoding: gzip"))
        elif path == "/export/project/17":  # 10 MB of JSON spaces gzipped to a few KB: the cap counts decoded bytes
            bomb = gzip.compress(b'{"project": {"projectId": 17}}' + b" " * 10_000_000)
            await self._send(writer, path, response("200 OK", bomb, "Content-Encoding: gzip"))
        elif path == "/data":  # a video report naming another claim
            await self._send(writer, path, response("200 OK", json.dumps({"data": [{"videoCollaborationId": 1, "claimId": 999}]}).encode()))
        else:
            await self._send(writer, path, response("418 I'm a teapot", b"{}"))


def hostile_client(api: HostileApi, **overrides) -> ClaimXApiClient:
    values = {"url": api.url, "timeout_s": 0.5, "retries": 0, "max_response_bytes": 65_536, "breaker_failure_threshold": 100}
    return ClaimXApiClient(make_settings(**{**values, **overrides}))


async def test_hostile_api_slow_loris_is_cut_at_the_attempt_deadline() -> None:
    async with HostileApi() as api, hostile_client(api) as client:
        started = time.monotonic()
        with pytest.raises(TransientError) as raised:
            await client.get_project("1")
        elapsed = time.monotonic() - started
        assert raised.value.error_type == "Timeout"
        assert (await client.get_project("123"))["project"]["projectId"] == 123  # the client is still fine
    # the body alone takes ~4 s at a byte per 0.1 s; httpx's per-read timeout (0.5 s) never fires
    assert elapsed < 1.5, elapsed


async def test_connections_are_kept_alive_and_bounded_by_max_concurrency() -> None:
    async with HostileApi() as api, hostile_client(api, max_concurrency=4) as client:
        for _ in range(10):  # one after another: one connection, reused
            assert (await client.get_project("123"))["project"]["projectId"] == 123
        assert len(api.writers) == 1
        answers = await asyncio.gather(*(client.get_project("123") for _ in range(40)))
    assert [a["project"]["projectId"] for a in answers] == [123] * 40
    assert len(api.paths) == 50
    assert 1 < len(api.writers) <= 4  # concurrent calls open more, never past the bound


@pytest.mark.parametrize("project_id", ["2", "3", "17"])
async def test_hostile_api_huge_body_is_not_read_past_the_cap(project_id: str) -> None:
    async with HostileApi() as api, hostile_client(api, timeout_s=5.0) as client:
        with pytest.raises(PermanentError) as raised:
            await client.get_project(project_id)
        assert raised.value.error_type == "ResponseTooLarge"
        assert "65536" in str(raised.value)
        await asyncio.sleep(0.05)
    assert api.bytes_sent[f"/export/project/{project_id}"] < 8_000_000  # the client hung up long before the end


async def test_hostile_api_redirect_with_json_is_not_the_project() -> None:
    async with HostileApi() as api, hostile_client(api) as client:
        with pytest.raises(TransientError) as raised:
            await client.get_project("4")
    assert raised.value.error_type == "Http302"
    assert api.paths == ["/export/project/4"]  # not followed to /login


@pytest.mark.parametrize(
    ("call", "error", "error_type", "said"),
    [
        (lambda c: c.get_project("5"), PermanentError, "InvalidResponse", "projectId 999, not the requested 5"),
        (lambda c: c.get_project("6"), PermanentError, "InvalidResponse", "no project object"),
        (lambda c: c.get_project("7"), PermanentError, "InvalidResponse", "RecursionError"),
        (lambda c: c.get_project("8"), PermanentError, "InvalidResponse", "cannot be read"),
        (lambda c: c.get_project("9"), TransientError, "InvalidResponse", "not JSON"),
        (lambda c: c.get_project("16"), TransientError, "InvalidResponse", "DecodingError"),
        (lambda c: c.get_project_media("10", ["77"]), PermanentError, "InvalidResponse", "projectId 999, not the requested 10"),
        (lambda c: c.get_project_media("11", ["77"]), PermanentError, "InvalidResponse", "media '78', which was not asked for"),
        (lambda c: c.get_task_assignment("12", "123"), PermanentError, "InvalidResponse", "assignmentId 13, not the requested 12"),
        (lambda c: c.get_task_assignment("14", "123"), PermanentError, "InvalidResponse", "projectId 999, not the requested 123"),
        (lambda c: c.get_video_collaborations("15"), PermanentError, "InvalidResponse", "claimId 999, not the requested 15"),
    ],
)
async def test_hostile_api_wrong_ids_and_wrong_types_are_invalid_responses(call, error: type, error_type: str, said: str) -> None:
    async with HostileApi() as api, hostile_client(api) as client:
        with pytest.raises(error) as raised:
            await call(client)
    assert raised.value.error_type == error_type
    assert said in str(raised.value)


@pytest.mark.parametrize("bad_id", ["..", ".", "", "١٢٣", "12/../34", "a" * 65, "5\n", "%2e%2e", " 1", 123])
async def test_ids_that_cannot_go_into_a_path_are_refused_before_any_request(bad_id) -> None:
    async with HostileApi() as api, hostile_client(api) as client:
        for call in (
            lambda: client.get_project(bad_id),
            lambda: client.get_project_media(bad_id),
            lambda: client.get_project_media("123", [bad_id]),
            lambda: client.get_task_assignment(bad_id),
            lambda: client.get_video_collaborations(bad_id),
        ):
            with pytest.raises(PermanentError) as raised:
                await call()
            assert raised.value.error_type == "InvalidId"
    assert api.paths == []


async def test_requests_are_the_ones_httpx_builds_and_follow_a_token_rotation(tmp_path) -> None:
    """The client builds its requests itself (`_exchange`): each must be byte for byte what
    `httpx.Request(method, url, headers=<the client's headers>, json=...)` would be, after a
    token rotation too."""
    token_file = tmp_path / "token"
    token_file.write_text("b2xkOnRva2Vu\n")
    recorder = Recorder(httpx.Response(200, json={"data": []}))
    api = ClaimXApiClient(make_settings(token=None, token_file=token_file), transport=httpx.MockTransport(recorder), sleep=Sleeps())

    def request_as_httpx_builds_it(method: str, url: str, **kwargs) -> httpx.Request:
        return httpx.Request(method, url, headers=api._http.headers, **kwargs)  # noqa: SLF001

    base = "http://claimx.test/service/cxedirest"
    async with api:
        await api.get_project_media("5000001", ["5000001001", "x-2_Y"])
        await api.get_video_collaborations("5000001")
        await api.get_video_collaborations("P-7_x")
        await api.get_task_assignment("5000001001")
        expected = [
            request_as_httpx_builds_it("GET", f"{base}/export/project/5000001/media", params={"mediaIds": "5000001001,x-2_Y"}),
            request_as_httpx_builds_it("POST", f"{base}/data", json={"reportType": "VIDEO_COLLABORATION", "projectId": 5000001}),
            request_as_httpx_builds_it("POST", f"{base}/data", json={"reportType": "VIDEO_COLLABORATION", "projectId": "P-7_x"}),
            request_as_httpx_builds_it("GET", f"{base}/customTasks/assignment/5000001001", params={"full": "true"}),
        ]
        token_file.write_text("bmV3OnRva2Vu\n")
        api.reload_token()
        await api.get_project_media("5000002")
        expected.append(request_as_httpx_builds_it("GET", f"{base}/export/project/5000002/media"))
    sent = recorder.requests
    assert [r.headers["Authorization"] for r in sent] == ["Basic b2xkOnRva2Vu"] * 4 + ["Basic bmV3OnRva2Vu"]
    for got, want in zip(sent, expected, strict=True):
        assert (got.method, str(got.url), got.url.raw_path, got.headers.raw, got.read()) == (
            want.method, str(want.url), want.url.raw_path, want.headers.raw, want.read()
        )


async def test_on_its_own_transport_the_client_writes_the_bytes_httpx_requests_serialize_to(tmp_path) -> None:
    """With the client's own transport the request goes out as bytes (`ConnectionPool.exchange`,
    no httpx request or response): they must be what `_serialize` writes for the request httpx
    builds, after a token rotation too; answers are read as on the httpx path (a gzip body
    decoded, a 429's Retry-After honoured)."""
    received: list[bytes] = []
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"data\":[]}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]",
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(gzip.compress(b'{"assignmentId": 5000001001}'))
        + gzip.compress(b'{"assignmentId": 5000001001}'),
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n",
    ]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
                received.append(head + await reader.readexactly(length))
                writer.write(answers.pop(0))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/service/cxedirest"
    token_file = tmp_path / "token"
    token_file.write_text("b2xkOnRva2Vu\n")
    api = ClaimXApiClient(make_settings(url=base, token=None, token_file=token_file, retries=0), sleep=Sleeps())
    assert api._direct is not None  # noqa: SLF001 - the bytes path is the one under test

    def serialized(method: str, url: str, **kwargs) -> bytes:
        request = httpx.Request(method, url, headers=api._http.headers, **kwargs)  # noqa: SLF001
        return _serialize(request, request.read(), absolute=False, extra=())

    try:
        async with api:
            await api.get_project_media("5000001", ["5000001001", "x-2_Y"])
            await api.get_video_collaborations("P-7_x")
            expected = [
                serialized("GET", f"{base}/export/project/5000001/media", params={"mediaIds": "5000001001,x-2_Y"}),
                serialized("POST", f"{base}/data", json={"reportType": "VIDEO_COLLABORATION", "projectId": "P-7_x"}),
            ]
            token_file.write_text("bmV3OnRva2Vu\n")
            api.reload_token()
            await api.get_project_media("5000002")
            expected.append(serialized("GET", f"{base}/export/project/5000002/media"))
            assert await api.get_task_assignment("5000001001") == {"assignmentId": 5000001001}
            expected.append(serialized("GET", f"{base}/customTasks/assignment/5000001001", params={"full": "true"}))
            with pytest.raises(TransientError) as limited:
                await api.get_project_media("5000003")
            expected.append(serialized("GET", f"{base}/export/project/5000003/media"))
    finally:
        server.close()
        await server.wait_closed()
    assert limited.value.error_type == "RateLimited" and limited.value.retry_after_s == 1.0
    assert received == expected


@given(
    base=st.sampled_from(["http://127.0.0.1:8088", "https://claimx.test/service/cxedirest/", "http://user:pw@[::1]:9000/a b/", "http://Claimx.Test:80/x/"]),
    ids=st.lists(st.from_regex(API_ID_PATTERN, fullmatch=True), min_size=1, max_size=3),
    kind=st.sampled_from(["project", "media", "task"]),
)
@settings(max_examples=200, deadline=None)
def test_joined_urls_are_the_ones_httpx_parses(base: str, ids: list[str], kind: str) -> None:
    """`ApiUrls` joins URLs without httpx's parse: for every id the client lets into a path or a
    query, the URL is the one httpx parses from the same text."""
    urls = ApiUrls(base)
    assert urls._joins  # noqa: SLF001 - this httpx agrees with the join (else every URL is parsed: slower, not wrong)
    if kind == "project":
        path, query = f"/export/project/{path_id(ids[0], 'project_id')}", None
    elif kind == "media":
        path, query = f"/export/project/{path_id(ids[0], 'project_id')}/media", urlencode({"mediaIds": ",".join(ids)})
        assert media_query(ids) == query
    else:
        path, query = f"/customTasks/assignment/{path_id(ids[0], 'task_assignment_id')}", urlencode({"full": "true"})
    joined = urls.url(path, query)
    parsed = httpx.URL(base.rstrip("/") + path + ("" if query is None else "?" + query))
    assert joined == parsed
    assert (joined.raw_scheme, joined.raw_host, joined.port, joined.raw_path, joined.netloc) == (
        parsed.raw_scheme, parsed.raw_host, parsed.port, parsed.raw_path, parsed.netloc
    )
