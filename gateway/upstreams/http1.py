"""A lean HTTP/1.1 client connection pool for one upstream origin, on asyncio and httptools.

Why it exists: a proxy's cost per request is mostly its upstream client. Measured on loopback
with one core (bench/README.md), aiohttp's ClientSession spends about 100 us of Python per
request and httpx with httpcore's pool several times that; this pool spends about 10 us, because
it does only what a gateway needs: one origin, keep-alive, a bounded pool with a FIFO queue of
waiters, connect/read/write/pool timeouts, TLS, and bodies read as they arrive. No cookies,
redirects, proxies or retries of anything that may have reached the server.

The one retry it does make is the keep-alive race: a pooled connection the server closed while
it sat idle fails before any byte of the answer comes back, so the request never reached the
server's application, and it is sent once more on a new connection.

This module is one connection and its response; `pool.py` keeps the connections. `clients.py`
is their only user; errors are raised as the classes below and translated there.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import httptools

if TYPE_CHECKING:
    from gateway.upstreams.pool import Pool

_HIGH_WATER = 256 * 1024  # unread response bytes before reading from the socket pauses


class HTTPError(Exception):
    """Base of this module's errors."""


class ConnectError(HTTPError):
    """The connection could not be opened (refused, unreachable, DNS, TLS)."""


class ConnectTimeout(HTTPError, TimeoutError):
    pass


class PoolTimeout(HTTPError, TimeoutError):
    """No connection became free within the pool timeout."""


class ReadTimeout(HTTPError, TimeoutError):
    pass


class WriteTimeout(HTTPError, TimeoutError):
    pass


class RemoteProtocolError(HTTPError):
    """The server broke the protocol or the connection (reset, early close, bad framing)."""


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> bytes:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (host if self.port == default else f"{host}:{self.port}").encode("idna")


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int
    max_keepalive: int
    keepalive_expiry: float
    connect_timeout: float
    read_timeout: float
    write_timeout: float
    pool_timeout: float


class Headers(dict[str, str]):
    """Response headers: stored under lower-case names, looked up in any case."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name.lower() if isinstance(name, str) else name)

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


class Response:
    """Status and headers are in; read the body with `receive()` or `read()`, then `aclose()`.

    The connection goes back to the pool as soon as the body has been read to its end.
    """

    __slots__ = ("_connection", "_done", "headers", "status")

    def __init__(self, connection: Connection, status: int, headers: Headers) -> None:
        self._connection = connection
        self._done = False
        self.status = status
        self.headers = headers

    async def receive(self) -> bytes:
        """The next decoded piece of the body, b"" at its end. Raises ReadTimeout et al."""
        if self._done:
            return b""
        data = await self._connection.receive_body()
        if not data:
            self._release()
        return data

    async def read(self) -> bytes:
        parts = []
        while data := await self.receive():
            parts.append(data)
        return b"".join(parts)

    async def aclose(self) -> None:
        """Back to the pool if the body was read to its end, else the connection is closed."""
        self._release()

    def _release(self) -> None:
        if not self._done:  # once: the connection may serve another request afterwards
            self._done = True
            self._connection.finish()


class Connection(asyncio.Protocol):
    """One keep-alive connection; serves one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._write_ready: asyncio.Future[None] | None = None
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._headers = Headers()
        self._header_name = b""
        self._status = 0
        self._headers_done = False
        self._complete = False
        self._keep_alive = False
        self._closed = False
        self._error: HTTPError | None = None
        self._got_bytes = False
        self._decoder: Any = None
        self.idle_since = 0.0
        self.reused = False
        self.lost: asyncio.Future[None] = self._loop.create_future()

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._complete:  # bytes nobody asked for: this connection cannot be trusted again
            self._keep_alive = False
            self.close()
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(RemoteProtocolError("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(RemoteProtocolError(f"malformed HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        if self._headers_done and not self._complete and not self._chunked_or_sized():
            self.on_message_complete()  # a body delimited by the connection closing
        elif not self._complete:
            self._fail(RemoteProtocolError("the upstream closed the connection"))
        self._pool.forget(self)

    def pause_writing(self) -> None:
        self._write_ready = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)
        self._write_ready = None

    # ------------------------------------------------------------ httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:  # trailer fields (RFC 9110 6.5.1: not merged), or a next message
            if self._complete:
                self._keep_alive = False
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def on_headers_complete(self) -> None:
        if self._complete:  # a second response in the same read
            self._keep_alive = False
            return
        self._status = self._parser.get_status_code()
        if 100 <= self._status < 200:  # an interim answer: the real one follows
            self._headers = Headers()
            return
        self._headers_done = True
        encoding = self._headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj()
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._complete:
            self._keep_alive = False
            return
        if self._decoder is not None:
            body = self._decoder.decompress(body)
            if not body:
                return
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self._transport is not None:
            self._transport.pause_reading()
            self._paused = True
        self._wake()

    def on_message_complete(self) -> None:
        if not self._headers_done or self._complete:
            return  # the end of an interim (1xx) answer, or of an unsolicited one
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._body.append(tail)
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()  # valid only inside this callback
        self._wake()

    # ------------------------------------------------------------ the request

    async def request(self, head: bytes, body: bytes | None) -> Response:
        transport = self._transport
        assert transport is not None
        self._reset()
        transport.write(head + body if body and len(body) < 65536 else head)
        if body and len(body) >= 65536:
            transport.write(body)
        if self._write_ready is not None:
            await self._wait_for(self._write_ready, self._pool.limits.write_timeout, WriteTimeout)
        while not self._headers_done:
            await self._wait(self._pool.limits.read_timeout)
        return Response(self, self._status, self._headers)

    async def receive_body(self) -> bytes:
        while not self._body:
            if self._complete:
                return b""
            await self._wait(self._pool.limits.read_timeout)
        data = self._body.popleft()
        self._buffered -= len(data)
        if self._paused and self._buffered <= _HIGH_WATER // 4 and self._transport is not None:
            self._transport.resume_reading()
            self._paused = False
        return data

    def finish(self) -> None:
        """The caller is done with the response: reuse the connection or close it."""
        if self._complete and not self._body and self._keep_alive:
            self._pool.release(self)
        else:
            self.close()
            self._pool.release(self)

    def close(self, abort: bool = False) -> None:
        """Close the connection; `abort` skips TLS's close_notify exchange (for shutdown)."""
        if not self._closed:
            self._closed = True
            if self._transport is not None:
                if abort:
                    self._transport.abort()
                else:
                    self._transport.close()

    @property
    def usable(self) -> bool:
        return not self._closed and self._transport is not None and not self._transport.is_closing()

    @property
    def failed_silently(self) -> bool:
        """True if it broke before the server sent a single byte of the answer."""
        return not self._got_bytes

    # ------------------------------------------------------------ internals

    def _reset(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._headers = Headers()
        self._status = 0
        self._headers_done = False
        self._complete = False
        self._keep_alive = False
        self._error = None
        self._got_bytes = False
        self._decoder = None
        self._body.clear()
        self._buffered = 0

    def _chunked_or_sized(self) -> bool:
        if "content-length" in self._headers:
            return True
        return "chunked" in self._headers.get("transfer-encoding", "").lower()

    async def _wait(self, seconds: float) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = self._loop.create_future()
        await self._wait_for(self._waiter, seconds, ReadTimeout)
        if self._error is not None:
            raise self._error

    async def _wait_for(
        self, future: asyncio.Future[None], seconds: float, error: type[HTTPError]
    ) -> None:
        timer = self._loop.call_later(seconds, expire, future, error)
        try:
            await future
        except BaseException:
            self.close()  # cancelled or timed out mid-exchange: the connection's state is unknown
            raise
        finally:
            timer.cancel()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: HTTPError) -> None:
        self._error = error
        self._wake()
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_exception(error)
        self.close()


def expire(future: asyncio.Future[Any], error: type[HTTPError]) -> None:
    if not future.done():
        future.set_exception(error("timed out"))
