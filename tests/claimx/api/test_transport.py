"""The API client's own HTTP/1.1 transport against real sockets: TLS, a CONNECT proxy, bodies
without a length, a kept-alive connection the server closed, refused headers and answers, the
pool bound, and uvloop (the loop the workers run on)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from kafka_pipeline.claimx.api.transport import ConnectionPool, _serialize
from kafka_pipeline.embedded.kafka_broker import make_certificates
from kafka_pipeline.lifecycle import event_loop

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def answer(body: bytes, *extra: bytes) -> bytes:
    return b"\r\n".join([b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(body), *extra]) + b"\r\n\r\n" + body


async def serve_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer every request on the connection with its own request line, kept alive."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(answer(head.split(b"\r\n")[0]))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def get(pool: ConnectionPool, url: str, **timeouts: float) -> httpx.Response:
    async with httpx.AsyncClient(transport=pool, timeout=httpx.Timeout(5.0, **timeouts)) as client:
        response = await client.get(url)
        await response.aread()
        return response


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context) of a throw-away CA's certificate for localhost."""
    folder: Path = tmp_path_factory.mktemp("tls")
    files = make_certificates(folder, hosts=("localhost",))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(folder / "server.pem", folder / "server.key")
    return server, ssl.create_default_context(cafile=str(files.ca_file))


async def test_https_checks_the_certificate_and_keeps_the_connection(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = tls
    connections = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await serve_each(reader, writer)

    server = await asyncio.start_server(count, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        pool = ConnectionPool(max_connections=4, keepalive_s=5.0, ssl_context=client_context)
        async with httpx.AsyncClient(transport=pool) as client:
            for n in range(3):
                response = await client.get(f"https://localhost:{port}/api/{n}")
                assert response.status_code == 200 and response.content == f"GET /api/{n} HTTP/1.1".encode()
        assert connections == 1
        untrusted = ConnectionPool(max_connections=4, keepalive_s=5.0, ssl_context=ssl.create_default_context())
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await get(untrusted, f"https://localhost:{port}/api/x")
    finally:
        server.close()
        await server.wait_closed()


async def test_https_through_a_connect_proxy(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = tls
    target = await asyncio.start_server(serve_each, "127.0.0.1", 0, ssl=server_context)
    target_port = target.sockets[0].getsockname()[1]
    asked: list[bytes] = []

    async def tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        asked.append(head)
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target_port)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True)

    proxy = await asyncio.start_server(tunnel, "127.0.0.1", 0)
    proxy_url = f"http://user:secret@127.0.0.1:{proxy.sockets[0].getsockname()[1]}"
    try:
        pool = ConnectionPool(max_connections=2, keepalive_s=5.0, ssl_context=client_context, proxy=httpx.Proxy(proxy_url))
        async with httpx.AsyncClient(transport=pool) as client:
            first = await client.get(f"https://localhost:{target_port}/api/1")
            second = await client.get(f"https://localhost:{target_port}/api/2")
        assert (first.content, second.content) == (b"GET /api/1 HTTP/1.1", b"GET /api/2 HTTP/1.1")
        assert len(asked) == 1  # one tunnel, kept alive for both
        assert asked[0].startswith(b"CONNECT localhost:%d HTTP/1.1\r\n" % target_port)
        assert b"Proxy-Authorization: Basic dXNlcjpzZWNyZXQ=" in asked[0]
    finally:
        proxy.close()
        target.close()


async def test_a_body_without_a_length_ends_with_the_connection_and_a_cut_one_is_an_error() -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + b'{"items": []}')
        await writer.drain()
        writer.close()

    async def cut_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n")
        await writer.drain()
        writer.close()

    for serve, expect in ((until_close, b'{"items": []}'), (cut_chunked, None)):
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x"
        try:
            if expect is not None:
                assert (await get(ConnectionPool(max_connections=1, keepalive_s=5.0), url)).content == expect
            else:
                with pytest.raises(httpx.ReadError, match="before the response ended"):
                    await get(ConnectionPool(max_connections=1, keepalive_s=5.0), url)
        finally:
            server.close()


async def test_a_kept_alive_connection_the_server_closed_is_replaced_without_an_error() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(answer(head.split(b"\r\n")[0]))  # says nothing of closing, then closes: an idle timeout
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_once, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    pool = ConnectionPool(max_connections=1, keepalive_s=60.0)
    try:
        async with httpx.AsyncClient(transport=pool) as client:
            assert (await client.get(url + "/1")).content == b"GET /1 HTTP/1.1"
            await writers[0].wait_closed()
            assert (await client.get(url + "/2")).content == b"GET /2 HTTP/1.1"
        assert len(writers) == 2
    finally:
        server.close()


async def test_headers_that_would_split_the_request_and_malformed_answers_are_refused() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: banana\r\n\r\n{}")
        await writer.drain()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x"
    try:
        pool = ConnectionPool(max_connections=1, keepalive_s=5.0)
        async with httpx.AsyncClient(transport=pool) as client:
            with pytest.raises(httpx.LocalProtocolError, match="line break"):
                await client.get(url, headers={"X-Token": "a\r\nX-Injected: 1"})
            with pytest.raises(httpx.RemoteProtocolError, match="malformed response"):
                await client.get(url)
    finally:
        server.close()


async def test_the_pool_bound_holds_a_request_until_its_pool_timeout() -> None:
    received, release = asyncio.Event(), asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        received.set()
        await release.wait()
        writer.write(answer(head.split(b"\r\n")[0]))
        await writer.drain()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    pool = ConnectionPool(max_connections=1, keepalive_s=5.0)
    try:
        async with httpx.AsyncClient(transport=pool, timeout=httpx.Timeout(5.0, pool=0.2)) as client:
            first = asyncio.create_task(client.get(url + "/1"))
            await asyncio.wait_for(received.wait(), 5.0)  # the one connection is taken
            with pytest.raises(httpx.PoolTimeout):
                await client.get(url + "/2")
            release.set()
            assert (await first).content == b"GET /1 HTTP/1.1"
    finally:
        server.close()


async def test_the_deadline_extension_ends_every_wait_of_the_exchange() -> None:
    """A request's `deadline` (loop time) ends the wait for headers, for a body trickling in
    (each read on time, the whole not) and for a free connection; without it the same slow
    answers are read whole."""
    release, asked_silent = asyncio.Event(), asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ")[1]
                if path == b"/silent":
                    asked_silent.set()
                    await release.wait()
                body = b"x" * 8
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
                for byte in range(8):  # a byte every 0.05 s: 0.4 s in all
                    writer.write(body[byte:byte + 1])
                    await writer.drain()
                    await asyncio.sleep(0.05)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    pool = ConnectionPool(max_connections=1, keepalive_s=5.0)
    loop = asyncio.get_running_loop()

    async def request(path: str, within_s: float | None) -> bytes:
        extensions: dict[str, object] = {"timeout": httpx.Timeout(5.0).as_dict()}
        if within_s is not None:
            extensions["deadline"] = loop.time() + within_s
        response = await pool.handle_async_request(httpx.Request("GET", url + path, extensions=extensions))
        try:
            return b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
        finally:
            await response.aclose()

    try:
        assert await request("/trickle", None) == b"x" * 8
        started = loop.time()
        with pytest.raises(httpx.ReadTimeout):
            await request("/trickle", 0.2)  # every read within 0.05 s: only the deadline ends it
        assert loop.time() - started < 0.35
        silent = asyncio.create_task(request("/silent", None))  # holds the one connection
        await asyncio.wait_for(asked_silent.wait(), 5)
        with pytest.raises(httpx.PoolTimeout):
            await request("/trickle", 0.1)
        release.set()
        assert await silent == b"x" * 8
        with pytest.raises(httpx.ReadTimeout):
            await request("/trickle", 0.0)  # a deadline already passed: the wait for the headers ends at once
    finally:
        server.close()


def test_on_uvloop_requests_share_kept_alive_connections_within_the_bound() -> None:
    async def main() -> tuple[list[bytes], int]:
        connections = 0

        async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            await serve_each(reader, writer)

        server = await asyncio.start_server(count, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            async with httpx.AsyncClient(transport=ConnectionPool(max_connections=3, keepalive_s=5.0)) as client:
                answers = await asyncio.gather(*(client.get(f"{url}/{n}") for n in range(30)))
            return [a.content for a in answers], connections
        finally:
            server.close()

    assert event_loop.loop_factory().__module__.startswith("uvloop")
    contents, connections = event_loop.run(main())
    assert contents == [f"GET /{n} HTTP/1.1".encode() for n in range(30)]
    assert 1 <= connections <= 3


@pytest.mark.parametrize(
    "headers",
    [{"X-Token": "a\rb"}, {"X-Token": "a\nb"}, {"X-Token": "a\0b"}, {"X-A\r\nX-B": "1"}, {"X-A\n": "1"}, {"X\0": "1"}],
)
def test_a_line_break_or_nul_anywhere_in_a_header_is_refused(headers: dict[str, str]) -> None:
    with pytest.raises(httpx.LocalProtocolError, match="line break or NUL"):
        _serialize(httpx.Request("GET", "http://h/x", headers=headers), b"", absolute=False, extra=())


def test_a_request_is_written_as_one_http_1_1_message() -> None:
    request = httpx.Request("POST", "http://h:81/x/y?a=1%2C2", headers={"X-A": "1"}, content=b"{}")
    assert _serialize(request, b"{}", absolute=False, extra=()) == (
        b"POST /x/y?a=1%2C2 HTTP/1.1\r\nHost: h:81\r\nX-A: 1\r\nContent-Length: 2\r\n\r\n{}"
    )
    assert _serialize(request, b"{}", absolute=True, extra=[(b"Proxy-Authorization", b"Basic eDp5")]) == (
        b"POST http://h:81/x/y?a=1%2C2 HTTP/1.1\r\nHost: h:81\r\nX-A: 1\r\nContent-Length: 2\r\nProxy-Authorization: Basic eDp5\r\n\r\n{}"
    )


async def test_read_body_joins_the_chunks_stops_at_the_limit_and_releases_the_connection() -> None:
    """`ResponseStream.read_body`, the API client's path for plain bodies: a body sent in pieces
    comes back whole and its connection is reused; a body past the limit is None, its
    connection is not reused; a body cut short raises ReadError."""
    connections: list[asyncio.StreamWriter] = []

    async def in_pieces(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ")[1]
                if path == b"/cut":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
                    await writer.drain()
                    writer.close()
                    return
                body = b"0123456789" * (100 if path == b"/big" else 3)
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for start in range(0, len(body), 10):
                    writer.write(b"a\r\n" + body[start:start + 10] + b"\r\n")
                    await writer.drain()  # a piece at a time (the slow-loris test has a body read over many waits)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(in_pieces, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    origin = (b"http", b"127.0.0.1", port)
    pool = ConnectionPool(max_connections=1, keepalive_s=60.0)
    timeouts: dict[str, float | None] = {"connect": 5.0, "read": 5.0, "pool": 5.0}

    def request(path: bytes) -> bytes:
        return b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (path, port)

    try:
        for _ in range(2):
            stream = await pool.exchange(origin, request(b"/small"), timeouts, None)
            assert await stream.read_body(1000) == b"0123456789" * 3
        assert len(connections) == 1  # released after each body, and reused
        stream = await pool.exchange(origin, request(b"/big"), timeouts, None)
        assert await stream.read_body(100) is None
        stream = await pool.exchange(origin, request(b"/small"), timeouts, None)
        assert await stream.read_body(1000) == b"0123456789" * 3
        assert len(connections) == 2  # the one left mid-body was closed, not reused
        stream = await pool.exchange(origin, request(b"/cut"), timeouts, None)
        with pytest.raises(httpx.ReadError):
            await stream.read_body(1000)
    finally:
        await pool.aclose()
        server.close()
