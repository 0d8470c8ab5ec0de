"""HTTP/1.1 for the ClaimX API client: httpx's transport interface over asyncio protocols, with
httptools' C parser and a pool of kept-alive connections.

Why not httpx's own transport or aiohttp under it: the worker sends a few small requests per
event, so what a request costs in Python, not the network, decides how many events a core
enriches. httpcore's pool does work per pooled connection on every request and h11 parses in
Python; aiohttp (through httpx-aiohttp) builds its own request, URL and response objects under
httpx's and writes headers and body separately. Here a request is one `transport.write` of
bytes built from the httpx request (or handed over as bytes: `exchange`, for the API client,
which writes the same bytes without httpx's request and response objects), and the response is
parsed in C as it arrives: its status, headers and body usually come in one `data_received`, so
awaiting the response is one wake-up.

What it does, as httpx's transport would:

- a pool of kept-alive connections per origin, at most `max_connections` open at once; an idle
  connection is reused for `keepalive_s` and dropped when the server closed it or said
  `Connection: close`; a request that finds its reused connection closed under it (the server's
  idle timeout won the race) is sent once more on a new connection, as nothing was answered;
- TLS with the given context (SNI and hostname checked), through an HTTP proxy when one is
  given (absolute-form requests for `http://`, a `CONNECT` tunnel for `https://`);
- httpx's timeouts: connect, pool (waiting for a connection) and read (each wait for bytes);
- a deadline over the whole exchange (connect, headers, every chunk of the body) when the
  request's `deadline` extension gives one (a time of the running loop's clock): each of those
  waits ends by then too, with the timeout exception of what it was waiting for. The client
  sets it per attempt: one timer per wait rather than `asyncio.timeout`'s own around them all;
- httpx's exceptions: ConnectError, ConnectTimeout, PoolTimeout, ReadTimeout, ReadError (the
  connection closed mid-response), RemoteProtocolError (what the parser refuses),
  LocalProtocolError (a header that would split the request).

The body is handed over as it is read, and reading pauses while more than `MAX_BUFFERED` bytes
wait for the reader: a huge body is never held past what the client reads of it. Content
decoding (gzip) is httpx's, on the response's stream.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
import httpx

MAX_BUFFERED = 256 * 1024  # body bytes read ahead of the reader before the socket is paused

Origin = tuple[bytes, bytes, int]  # scheme, host, port


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, its response parsed as bytes arrive."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.active = False  # a request was sent and its response is not yet handed back
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.received_any = False
        self.error: httpx.TransportError | None = None
        self.chunks: list[bytes] = []
        self.buffered = 0
        self._paused = False

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        if self.complete or not self.active:  # bytes nobody asked for: the connection is not in a state to trust
            self._fail(httpx.RemoteProtocolError("the server sent bytes outside a response"))
            return
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.complete and self.error is None and not self._delimited():
            self.complete = True  # a body without a length or chunks ends where the connection does
        if not self.complete and self.error is None:
            self.error = httpx.ReadError("the server closed the connection before the response ended")
        self._wake()

    # --- httptools callbacks -----------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > MAX_BUFFERED and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()  # the parser forgets it once the message is done
        self._wake()

    # --- the request's side ------------------------------------------------------------------

    @property
    def status_code(self) -> int:
        return int(self._parser.get_status_code())

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self._reset()
        self.active = True
        self.transport.write(data)

    def take_chunks(self) -> list[bytes]:
        chunks, self.chunks, self.buffered = self.chunks, [], 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunks

    async def wait(self, timeout: float | None, deadline: float | None = None) -> None:
        """Until the parser or the connection says something new; ReadTimeout after `timeout`
        or at `deadline` (loop time), whichever comes first."""
        waiter = self._waiter = self._loop.create_future()
        when = _earliest(self._loop, timeout, deadline)
        timer = None if when is None else self._loop.call_at(when, self._time_out, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _delimited(self) -> bool:
        return any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self.headers)

    def tunnelled(self, transport: asyncio.Transport) -> None:
        """From now on bytes go through `transport` (TLS inside a CONNECT tunnel), and responses
        come from the server behind the proxy: a fresh parser, the proxy's answer forgotten."""
        self.transport = transport
        self._parser = httptools.HttpResponseParser(self)
        self.active = False

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: httpx.TransportError) -> None:
        self.error = error
        self.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @staticmethod
    def _time_out(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(httpx.ReadTimeout("no response bytes within the read timeout or by the deadline"))


@dataclass
class _Pool:
    """Idle connections per origin, and a bound on the connections open at once."""

    slots: asyncio.Semaphore
    idle: dict[Origin, deque[_Connection]] = field(default_factory=dict)


class ConnectionPool(httpx.AsyncBaseTransport):
    """httpx transport: HTTP/1.1 over kept-alive connections (see the module's docstring)."""

    def __init__(
        self,
        *,
        max_connections: int,
        keepalive_s: float,
        ssl_context: ssl.SSLContext | None = None,
        proxy: httpx.Proxy | None = None,  # an http:// proxy (the client refuses others)
    ) -> None:
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._ssl_context = ssl_context
        self._proxy = proxy
        self._proxy_headers = _proxy_headers(proxy) if proxy is not None else []
        self._pool: _Pool | None = None  # made in the running loop, at the first request
        self._closing = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        origin = origin_of(request.url)
        data = _serialize(request, await request.aread(), absolute=self._proxy is not None and origin[0] == b"http",
                          extra=self._proxy_headers if self._proxy is not None and origin[0] == b"http" else ())
        stream = await self.exchange(origin, data, timeouts, request.extensions.get("deadline"))
        return stream.response()

    @property
    def proxied(self) -> bool:
        """Whether requests go through a proxy (`exchange` then needs the proxy's request form)."""
        return self._proxy is not None

    async def exchange(self, origin: Origin, data: bytes, timeouts: dict[str, float | None], deadline: float | None) -> ResponseStream:
        """Send `data` (a whole request, as `_serialize` writes it) to `origin`; the response once
        its head arrived, as a stream of its body. `handle_async_request` without the httpx
        request and response objects, for a client that writes the bytes itself."""
        pool = self._pool or self._make_pool()
        if pool.slots.locked():  # every connection is taken: wait, at most the pool timeout
            try:
                async with asyncio.timeout_at(_earliest(asyncio.get_running_loop(), timeouts.get("pool"), deadline)):
                    await pool.slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection within the pool timeout") from None
        else:
            await pool.slots.acquire()  # free: no deadline to set up and cancel
        connection = self._idle(pool, origin)
        try:
            if connection is not None:
                connection.send(data)
                try:
                    await self._head(connection, timeouts.get("read"), deadline)
                except (httpx.ReadError, httpx.RemoteProtocolError):
                    if connection.received_any:
                        raise
                    connection.close()
                    connection = None  # closed by the server while idle: nothing was answered
            if connection is None:
                connection = await self._connect(origin, timeouts.get("connect"), deadline)
                connection.send(data)
                await self._head(connection, timeouts.get("read"), deadline)
        except BaseException:
            pool.slots.release()
            if connection is not None:
                connection.close()
            raise
        return ResponseStream(self, pool, origin, connection, timeouts.get("read"), deadline)

    async def aclose(self) -> None:
        self._closing = True
        if self._pool is not None:
            for idle in self._pool.idle.values():
                for connection in idle:
                    connection.close()
            self._pool.idle.clear()

    # --- the pool ----------------------------------------------------------------------------

    def _make_pool(self) -> _Pool:
        self._pool = _Pool(slots=asyncio.Semaphore(self._max_connections))
        return self._pool

    def _idle(self, pool: _Pool, origin: Origin) -> _Connection | None:
        idle = pool.idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to have timed out
            if not connection.closed and now - connection.idle_since < self._keepalive_s:
                return connection
            connection.close()
        return None

    def release(self, pool: _Pool, origin: Origin, connection: _Connection) -> None:
        connection.active = False
        if connection.reusable and not self._closing:
            connection.idle_since = time.monotonic()
            pool.idle.setdefault(origin, deque()).append(connection)
        else:
            connection.close()
        pool.slots.release()

    # --- a new connection --------------------------------------------------------------------

    async def _connect(self, origin: Origin, timeout: float | None, deadline: float | None = None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls = scheme == b"https"
        if tls and self._ssl_context is None:
            raise httpx.ConnectError("https needs an SSL context")
        where = (self._proxy.url.host, self._proxy.url.port or 80) if self._proxy is not None else (host.decode("ascii"), port)
        connection = _Connection(loop)
        try:
            async with asyncio.timeout_at(_earliest(loop, timeout, deadline)):
                direct_tls = tls and self._proxy is None
                await loop.create_connection(
                    lambda: connection, where[0], where[1],
                    ssl=self._ssl_context if direct_tls else None,
                    server_hostname=host.decode("ascii") if direct_tls else None,
                )
                if tls and self._proxy is not None:
                    await self._tunnel(loop, connection, host, port)
        except TimeoutError:
            connection.close()
            raise httpx.ConnectTimeout(f"no connection to {where[0]}:{where[1]} within the connect timeout") from None
        except (OSError, ssl.SSLError) as exc:
            connection.close()
            raise httpx.ConnectError(f"cannot connect to {where[0]}:{where[1]}: {exc}") from None
        return connection

    async def _tunnel(self, loop: asyncio.AbstractEventLoop, connection: _Connection, host: bytes, port: int) -> None:
        """CONNECT through the proxy, then TLS inside the tunnel."""
        authority = b"%s:%d" % (host, port)
        lines = [b"CONNECT %s HTTP/1.1" % authority, b"Host: " + authority] + [b"%s: %s" % h for h in self._proxy_headers]
        # the proxy's answer to CONNECT has no body; the parser must not wait for one
        connection.send(b"\r\n".join(lines) + b"\r\n\r\n")
        while not connection.headers_done:
            if connection.error is not None:
                raise connection.error
            await connection.wait(None)
        if not 200 <= connection.status_code < 300:
            raise httpx.ConnectError(f"the proxy refused the tunnel: {connection.status_code}")
        assert connection.transport is not None and self._ssl_context is not None
        tls = await loop.start_tls(connection.transport, connection, self._ssl_context, server_hostname=host.decode("ascii"))
        assert tls is not None
        connection.tunnelled(tls)

    @staticmethod
    async def _head(connection: _Connection, timeout: float | None, deadline: float | None) -> None:
        while not connection.headers_done:
            if connection.error is not None:
                raise connection.error
            await connection.wait(timeout, deadline)


class ResponseStream(httpx.AsyncByteStream):
    """The body as it arrives. An async iterator of its own, not an async generator: the event
    loop tracks every async generator in a weak set (its shutdown closes them), a cost per
    response for nothing, since `aclose` releases the connection whether or not the body was read."""

    def __init__(
        self, owner: ConnectionPool, pool: _Pool, origin: Origin, connection: _Connection, timeout: float | None, deadline: float | None
    ) -> None:
        self._owner, self._pool, self._origin, self._connection = owner, pool, origin, connection
        self._timeout, self._deadline = timeout, deadline
        self._released = False

    @property
    def status_code(self) -> int:
        return self._connection.status_code

    @property
    def reason_phrase(self) -> str:
        return self._connection.reason.decode("ascii", errors="ignore")  # as httpx's `Response.reason_phrase`

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        return self._connection.headers

    def response(self) -> httpx.Response:
        """This response as httpx's."""
        connection = self._connection
        return httpx.Response(
            connection.status_code,
            headers=connection.headers,
            stream=self,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": connection.reason},
        )

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> bytes:
        connection = self._connection
        while True:
            chunks = connection.take_chunks()
            if chunks:
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if self._ended():
                raise StopAsyncIteration
            await connection.wait(self._timeout, self._deadline)

    async def read_body(self, limit: int) -> bytes | None:
        """The rest of the body in one piece, None once it is longer than `limit` bytes (the rest
        is never read); the connection is released either way. What iterating the stream and
        `aclose` do, in one coroutine: the API client reads every plain body this way."""
        connection = self._connection
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                for chunk in connection.take_chunks():
                    size += len(chunk)
                    if size > limit:
                        return None
                    chunks.append(chunk)
                if self._ended():
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
                await connection.wait(self._timeout, self._deadline)
        finally:
            self.release()

    def _ended(self) -> bool:
        """Whether the body is complete (every chunk handed over once taken); the connection's
        error if it failed first."""
        if self._connection.complete:
            return True
        if self._connection.error is not None:
            raise self._connection.error
        return False

    def release(self) -> None:
        """Hand the connection back to the pool (kept alive if the response ended cleanly)."""
        if not self._released:
            self._released = True
            self._owner.release(self._pool, self._origin, self._connection)

    async def aclose(self) -> None:
        self.release()


def _earliest(loop: asyncio.AbstractEventLoop, timeout: float | None, deadline: float | None) -> float | None:
    """The loop time a wait that starts now ends at: `timeout` from now or `deadline`, whichever
    is first (None: never)."""
    if timeout is None:
        return deadline
    ends = loop.time() + timeout
    return ends if deadline is None or ends < deadline else deadline


def _proxy_headers(proxy: httpx.Proxy) -> list[tuple[bytes, bytes]]:
    """The proxy's own headers, with Basic credentials when its URL carries them."""
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in proxy.headers.items()]
    if proxy.raw_auth is not None:
        user, password = proxy.raw_auth
        headers.append((b"Proxy-Authorization", b"Basic " + base64.b64encode(user + b":" + password)))
    return headers


def origin_of(url: httpx.URL) -> Origin:
    """Where a request to `url` goes: (scheme, host, port), the pool's key."""
    return (url.raw_scheme, url.raw_host, url.port or (443 if url.raw_scheme == b"https" else 80))


def header_block(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The header lines of a request; None when a name or value has a line break or NUL (it
    would end the header early: a request of the sender's choosing)."""
    block = b"".join([b"%s: %s\r\n" % header for header in headers])
    if block.count(b"\r") != len(headers) or block.count(b"\n") != len(headers) or b"\0" in block:
        return None
    return block


def request_bytes(method: bytes, target: bytes, block: bytes, body: bytes) -> bytes:
    """The request as bytes on the wire: request line, header lines (`header_block`), body."""
    return b"%s %s HTTP/1.1\r\n%s\r\n%s" % (method, target, block, body)


def _serialize(request: httpx.Request, body: bytes, *, absolute: bool, extra: Any) -> bytes:
    """httpx's request as bytes on the wire."""
    url = request.url
    target = str(url).encode("ascii") if absolute else url.raw_path
    headers = request.headers.raw
    if extra:
        headers += extra
    block = header_block(headers)
    if block is None:
        raise httpx.LocalProtocolError("a request header has a line break or NUL")
    return request_bytes(request.method.encode("ascii"), target, block, body)
