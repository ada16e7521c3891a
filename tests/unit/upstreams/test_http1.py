"""gateway/upstreams/http1.py: the native HTTP/1.1 pool against raw asyncio servers.

Every server here is an `asyncio.start_server` on 127.0.0.1:0 that writes exact bytes, so the
framing (lengths, chunks, closes, stalls) is under the test's control. Each test runs its own
event loop (`asyncio.run`, and `uvloop.run` for the ones parametrized over `runner`), closes the
pool before the server, and waits for every server handler to end: a handler that never sees its
connection closed fails the test, since that means the pool leaked it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import re
import socket
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any

import pytest
import uvloop

from gateway.config import PoolLimits, Timeouts, UpstreamConfig
from gateway.errors import UpstreamError
from gateway.providers.base import UpstreamRequest
from gateway.upstreams import http1
from gateway.upstreams.clients import Clients
from gateway.upstreams.pool import Pool

Runner = Callable[[Coroutine[Any, Any, None]], None]
RUNNERS = [pytest.param(asyncio.run, id="asyncio"), pytest.param(uvloop.run, id="uvloop")]
DEADLINE = 3.0  # seconds any single wait in a test may take before it counts as a hang


def run(main: Callable[[], Awaitable[None]], runner: Runner = asyncio.run) -> None:
    async def guarded() -> None:
        async with asyncio.timeout(8):
            await main()

    runner(guarded())


async def until(condition: Callable[[], bool], what: str = "condition") -> None:
    """Poll `condition` every millisecond until it holds; fail after DEADLINE seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def wait(event: asyncio.Event) -> None:
    async with asyncio.timeout(DEADLINE):
        await event.wait()


async def loop_time_passes(seconds: float) -> None:
    """Let the loop's clock move on by `seconds`, waiting on a loop timer."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.call_later(seconds, done.set_result, None)
    await done


# ---------------------------------------------------------------- raw servers


class Conn:
    """The server's side of one accepted connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int):
        self.reader = reader
        self.writer = writer
        self.index = index
        self.requests: list[bytes] = []
        self.eof = asyncio.Event()  # the client closed the connection

    async def request(self) -> bytes | None:
        """The next request's head and body (by its content-length); None once the client closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.eof.set()
            if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                raise AssertionError(f"the client closed mid-request: {exc.partial!r}") from None
            return None
        length = re.search(rb"\r\ncontent-length: *(\d+)\r\n", head, re.IGNORECASE)
        body = await self.reader.readexactly(int(length[1])) if length else b""
        self.requests.append(head + body)
        return head + body

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def wait_eof(self) -> None:
        """Read (and drop) whatever comes until the client closes the connection."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(1 << 16):
                pass
        self.eof.set()


Handler = Callable[[Conn], Awaitable[None]]


class Server:
    """Runs `handler(conn)` for each connection; `conns` lists them in the order they came."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.conns: list[Conn] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._errors: list[BaseException] = []

    @property
    def connections(self) -> int:
        return len(self.conns)

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port: int = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Conn(reader, writer, len(self.conns))
        self.conns.append(conn)
        try:
            await self._handler(conn)
        except ConnectionError:
            pass
        except Exception as exc:
            self._errors.append(exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.close()
        hanging: set[asyncio.Task[Any]] = set()
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            _, hanging = await asyncio.wait(pending, timeout=DEADLINE)
            for task in hanging:
                task.cancel()
            await asyncio.gather(*hanging, return_exceptions=True)
        await self._server.wait_closed()
        if kind is None:
            if self._errors:
                raise self._errors[0]
            assert not hanging, "a server handler never saw its connection closed"


def response(body: bytes = b"", *headers: str, status: str = "200 OK") -> bytes:
    head = "\r\n".join([f"HTTP/1.1 {status}", f"content-length: {len(body)}", *headers])
    return head.encode() + b"\r\n\r\n" + body


def request_line(request: bytes) -> bytes:
    return request.split(b"\r\n", 1)[0]


async def echo(conn: Conn) -> None:
    """Keep-alive: answers every request at once with its request line as the body."""
    while (req := await conn.request()) is not None:
        conn.send(response(request_line(req)))


def limits(**overrides: float) -> http1.Limits:
    settings: dict[str, Any] = {
        "max_connections": 10,
        "max_keepalive": 10,
        "keepalive_expiry": 30.0,
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
        "write_timeout": 2.0,
        "pool_timeout": 2.0,
        **overrides,
    }
    return http1.Limits(**settings)


@contextlib.asynccontextmanager
async def open_pool(port: int, **overrides: float) -> AsyncIterator[Pool]:
    pool = Pool(http1.Origin("http", "127.0.0.1", port), limits(**overrides), None)
    try:
        yield pool
    finally:
        await pool.aclose()


async def get(pool: Pool, target: str = "/") -> bytes:
    """One GET, its body read to the end and the response closed."""
    resp = await pool.request("GET", target, {}, None)
    try:
        return await resp.read()
    finally:
        await resp.aclose()


# ---------------------------------------------------------------- bodies and framing


@pytest.mark.parametrize("runner", RUNNERS)
def test_content_length_body_is_read_whole_and_the_connection_kept(runner: Runner) -> None:
    async def handler(conn: Conn) -> None:
        while await conn.request() is not None:
            conn.send(response(b"hello world", "content-type: text/plain"))

    async def main() -> None:
        async with Server(handler) as server, open_pool(server.port) as pool:
            resp = await pool.request("GET", "/", {}, None)
            assert resp.status == 200
            assert resp.headers["content-type"] == "text/plain"
            assert resp.headers["content-length"] == "11"
            assert await resp.read() == b"hello world"
            await resp.aclose()
            assert (pool.active, pool.idle) == (0, 1)
            assert server.connections == 1

    run(main, runner)


@pytest.mark.parametrize("runner", RUNNERS)
def test_chunked_body_with_extensions_and_trailers_is_decoded(runner: Runner) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b"1\r\n \r\n"
        b'a;ext;other="quoted"\r\n0123456789\r\n'
        b"0\r\nx-checksum: abc\r\n\r\n"
    )

    async def handler(conn: Conn) -> None:
        await conn.request()
        conn.send(chunked[:50])  # the framing split at arbitrary points
        await conn.writer.drain()
        conn.send(chunked[50:90])
        await conn.writer.drain()
        conn.send(chunked[90:])
        await echo(conn)

    async def main() -> None:
        async with Server(handler) as server, open_pool(server.port) as pool:
            resp = await pool.request("GET", "/", {}, None)
            assert resp.status == 200
            assert await resp.read() == b"hello 0123456789"
            await resp.aclose()
            # the message ended where the chunked framing says: the connection serves the next
            assert await get(pool, "/next") == b"GET /next HTTP/1.1"
            assert server.connections == 1

    run(main, runner)


def test_trailer_fields_are_not_merged_into_the_response_headers() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        conn.send(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/plain\r\n\r\n"
        )
        conn.send(b"2\r\nok\r\n0\r\nx-checksum: abc\r\ncontent-type: text/html\r\n\r\n")
        await conn.wait_eof()

    async def main() -> None:
        async with Server(handler) as server, open_pool(server.port) as pool:
            resp = await pool.request("GET", "/", {}, None)
            assert await resp.read() == b"ok"
            await resp.aclose()
            assert "x-checksum" not in resp.headers
            assert resp.headers["content-type"] == "text/plain"

    run(main)


@pytest.mark.parametrize("runner", RUNNERS)
def test_body_delimited_by_the_server_closing_is_complete_and_not_reused(runner: Runner) -> None:
    async def handler(conn: Conn) -> None:
        req = await conn.request()
        if conn.index == 0:  # no content-length, no chunked: the body ends where the bytes do
            conn.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil ")
            await conn.writer.drain()
            conn.send(b"the end")
            return  # closes the connection
        conn.send(response(request_line(req or b"")))
        await conn.wait_eof()

    async def main() -> None:
        async with Server(handler) as server, open_pool(server.port) as pool:
            resp = await pool.request("GET", "/", {}, None)
            assert await resp.read() == b"until the end"
            await resp.aclose()
            assert (pool.active, pool.idle) == (0, 0)
            assert await get(pool, "/again") == b"GET /again HTTP/1.1"
            assert server.connections == 2

    run(main, runner)


def test_empty_bodies_content_length_0_and_204() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await conn.request()
        conn.send(b"HTTP/1.1 204 No Content\r\nx-n: 1\r\n\r\n")
        await echo(conn)

    async def main() -> None:
        async with Server(handler) as server, open_pool(server.port) as pool:
            first = await pool.request("GET", "/", {}, None)
            assert (first.status, await first.receive()) == (200, b"")
            assert pool.idle == 1  # the end of the body, seen by receive(), released it
            second = await pool.request("DELETE", "/x", {}, None)
            assert (second.status, second.headers["x-n"], await second.read()) == (204, "1", b"")
            assert await get(pool, "/third") == b"GET /third HTTP/1.1"
            for resp in (first, second):
                await resp.aclose()
            assert server.connections == 1

    run(main)


@pytest.mark.parametrize("runner", RUNNERS)
def test_receive_yields_each_piece_as_it_arrives(runner: Runner) -> None:
    async def main() -> None:
        rest = asyncio.Event()

        async def handler(conn: Conn) -> None:
            await conn.request()
            conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nfirst")
            await wait(rest)
            conn.send(b" later")
            await echo(conn)

        async with Server(handler) as server, open_pool(server.port) as pool:
            resp = await pool.request("GET", "/", {}, None)
            assert await resp.receive() == b"first"  # while the server still holds the rest
            rest.set()
            assert await resp.receive() == b" later"
            assert await resp.receive() == b""
            assert await resp.receive() == b""
            await resp.aclose()
            assert pool.idle == 1

    run(main, runner)


def test_read_joins_every_piece_of_the_body() -> None:
    pieces = [b"data: %d\n\n" % i for i in range(20)]

    async def main() -> None:
        first_read = asyncio.Event()

        async def handler(conn: Conn) -> None:
            await conn.request()
            conn.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            conn.send(b"%x\r\n%s\r\n" % (len(pieces[0]), pieces[0]))
            await wait(first_read)
            for piece in pieces[1:]:
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                await conn.writer.drain()
            conn.send(b"0\r\n\r\n")
            await conn.wait_eof()

        async with Server(handler) as server, open_pool(server.port) as pool:
            resp = await pool.request("GET", "/", {}, None)
            assert await resp.receive() == pieces[0]
            first_read.set()
            assert await resp.read() == b"".join(pieces[1:])
            assert await resp.read() == b""
            await resp.aclose()

    run(main)


# ---------------------------------------------------------------- headers


def test_header_lookup_ignores_case_and_repeated_headers_are_joined() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        conn.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Multi: a\r\n"
            b"content-length: 0\r\nx-multi: b\r\nX-MULTI: c, d\r\nX-Empty:\r\n\r\n"
        )
        await conn.wait_eof()

    async def main() -> None:
        async with Server(handler) as server, open_pool(server.port) as pool:
            resp = await pool.request("GET", "/", {}, None)
            headers = resp.headers
            assert headers["content-type"] == headers["CONTENT-TYPE"] == "text/plain"
            assert headers.get("Content-Type") == "text/plain"
            assert "Content-Length" in headers
            assert headers["x-multi"] == "a, b, c, d"
            assert headers["x-empty"] == ""
            assert headers.get("X-Missing") is None
            assert headers.get("X-Missing", "default") == "default"
            assert "x-missing" not in headers
            with pytest.raises(KeyError):
                headers["X-Missing"]
            assert sorted(headers) == ["content-length", "content-type", "x-empty", "x-multi"]
            await resp.aclose()

    run(main)


def test_request_line_headers_and_body_reach_the_server_exactly() -> None:
    async def main() -> None:
        async with Server(echo) as server, open_pool(server.port) as pool:
            headers = {"authorization": "Bearer sk-1", "Content-Type": "application/json"}
            resp = await pool.request("POST", "/v1/chat/completions?x=1", headers, b'{"a":1}')
            await resp.read()
            resp = await pool.request("GET", "/v1/models", {"accept": "*/*"}, None)
            await resp.read()
            resp = await pool.request("PUT", "/empty", {}, b"")
            await resp.read()
            host = f"host: 127.0.0.1:{server.port}".encode()
            assert server.conns[0].requests == [
                b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n" + host + b"\r\n"
                b"authorization: Bearer sk-1\r\nContent-Type: application/json\r\n"
                b'content-length: 7\r\n\r\n{"a":1}',
                b"GET /v1/models HTTP/1.1\r\n" + host + b"\r\naccept: */*\r\n\r\n",
                b"PUT /empty HTTP/1.1\r\n" + host + b"\r\ncontent-length: 0\r\n\r\n",
            ]

    run(main)


def test_a_large_request_body_is_sent_whole() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: past the size that is written with the head

    async def main() -> None:
        async with Server(echo) as server, open_pool(server.port) as pool:
            resp = await pool.request("POST", "/upload", {}, body)
            assert await resp.read() == b"POST /upload HTTP/1.1"
            await resp.aclose()
            (received,) = server.conns[0].requests
            head, sent = received.split(b"\r\n\r\n", 1)
            assert b"\r\ncontent-length: 1048576" in head
            assert sent == body

    run(main)


def test_host_header_omits_only_the_default_port() -> None:
    assert http1.Origin("http", "127.0.0.1", 80).host_header == b"127.0.0.1"
    assert http1.Origin("https", "api.example.com", 443).host_header == b"api.example.com"
    assert http1.Origin("http", "127.0.0.1", 8080).host_header == b"127.0.0.1:8080"
    assert http1.Origin("https", "example.com", 80).host_header == b"example.com:80"
    assert http1.Origin("http", "::1", 8080).host_header == b"[::1]:8080"


# ---------------------------------------------------------------- content-encoding


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
    ],
)
def test_compressed_bodies_are_decoded(encoding: str, compress: Callable[[bytes], bytes]) -> None:
    text = b"".join(b"line %d of a compressible body\n" % i for i in range(2000))
    packed = compress(text)

    async def handler(conn: Conn) -> None:
        await conn.request()
        conn.send(
            b"HTTP/1.1 200 OK\r\ncontent-encoding: %s\r\ncontent-length: %d\r\n\r\n"
            % (encoding.upper().encode(), len(packed))
        )
        for start in range(0, len(packed), 1000):
            conn.send(packed[start : start + 1000])
            await conn.writer.drain()
        await echo(conn)

    async def main() -> None:
        async with Server(handler) as server, open_pool(server.port) as pool:
            resp = await pool.request("GET", "/", {}, None)
            assert resp.headers["content-encoding"] == encoding.upper()
            assert await resp.read() == text
            await resp.aclose()
            assert await get(pool, "/plain") == b"GET /plain HTTP/1.1"  # no decoder left over
            assert server.connections == 1

    run(main)


# ---------------------------------------------------------------- interim answers


def test_100_continue_before_the_real_response_is_skipped() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        conn.send(b"HTTP/1.1 100 Continue\r\nx-interim: yes\r\n\r\n")
        await conn.writer.drain()
        conn.send(b"HTTP/1.1 201 Created\r\nx-final: yes\r\ncontent-length: 7\r\n\r\ncreated")
        await echo(conn)

    async def main() -> None:
        async with Server(handler) as server, open_pool(server.port) as pool:
            resp = await pool.request("POST", "/", {"expect": "100-continue"}, b"{}")
            assert resp.status == 201
            assert "x-interim" not in resp.headers
            assert resp.headers["x-final"] == "yes"
            assert await resp.read() == b"created"
            await resp.aclose()
            assert await get(pool, "/next") == b"GET /next HTTP/1.1"
            assert server.connections == 1

    run(main)


# ---------------------------------------------------------------- keep-alive


@pytest.mark.parametrize("runner", RUNNERS)
def test_sequential_requests_share_one_kept_alive_connection(runner: Runner) -> None:
    async def main() -> None:
        async with Server(echo) as server, open_pool(server.port) as pool:
            assert await get(pool, "/one") == b"GET /one HTTP/1.1"
            assert await get(pool, "/two") == b"GET /two HTTP/1.1"
            assert await get(pool, "/three") == b"GET /three HTTP/1.1"
            assert server.connections == 1
            assert len(server.conns[0].requests) == 3
            assert (pool.active, pool.idle) == (0, 1)

    run(main, runner)


def test_connection_close_from_the_server_is_not_reused() -> None:
    async def handler(conn: Conn) -> None:
        req = await conn.request()
        conn.send(response(request_line(req or b""), "connection: close"))
        await conn.wait_eof()  # the server leaves the closing to the client

    async def main() -> None:
        async with Server(handler) as server, open_pool(server.port) as pool:
            assert await get(pool, "/one") == b"GET /one HTTP/1.1"
            assert (pool.active, pool.idle) == (0, 0)
            await wait(server.conns[0].eof)
            assert await get(pool, "/two") == b"GET /two HTTP/1.1"
            assert server.connections == 2

    run(main)


@pytest.mark.parametrize("max_keepalive", [0, 1, 2])
def test_max_keepalive_caps_the_idle_connections(max_keepalive: int) -> None:
    async def main() -> None:
        arrived = 0
        all_arrived = asyncio.Event()

        async def handler(conn: Conn) -> None:
            nonlocal arrived
            req = await conn.request()
            arrived += 1
            if arrived == 3:
                all_arrived.set()
            await wait(all_arrived)  # three requests at once: three connections
            conn.send(response(request_line(req or b"")))
            await echo(conn)

        async with (
            Server(handler) as server,
            open_pool(server.port, max_connections=3, max_keepalive=max_keepalive) as pool,
        ):
            bodies = await asyncio.gather(*(get(pool, f"/{i}") for i in range(3)))
            assert bodies == [b"GET /0 HTTP/1.1", b"GET /1 HTTP/1.1", b"GET /2 HTTP/1.1"]
            assert server.connections == 3
            assert (pool.active, pool.idle) == (0, max_keepalive)
            closed = 3 - max_keepalive
            await until(lambda: sum(c.eof.is_set() for c in server.conns) == closed, "closes")
            assert await get(pool, "/again") == b"GET /again HTTP/1.1"
            assert server.connections == (4 if max_keepalive == 0 else 3)

    run(main)


def test_keepalive_expiry_makes_the_next_request_open_a_new_connection() -> None:
    async def main() -> None:
        async with Server(echo) as server, open_pool(server.port, keepalive_expiry=0.05) as pool:
            assert await get(pool, "/one") == b"GET /one HTTP/1.1"
            assert await get(pool, "/two") == b"GET /two HTTP/1.1"  # within the expiry
            assert server.connections == 1
            await loop_time_passes(0.08)
            assert await get(pool, "/three") == b"GET /three HTTP/1.1"
            assert server.connections == 2
            await wait(server.conns[0].eof)  # the expired connection was closed, not leaked
            assert pool.idle == 1

    run(main)


def test_an_idle_connection_the_server_closes_leaves_the_pool() -> None:
    async def handler(conn: Conn) -> None:
        req = await conn.request()
        conn.send(response(request_line(req or b"")))
        if conn.index == 0:
            return  # closes the connection once idle, without having said `connection: close`
        await echo(conn)

    async def main() -> None:
        async with Server(handler) as server, open_pool(server.port) as pool:
            assert await get(pool, "/one") == b"GET /one HTTP/1.1"
            await until(lambda: pool.idle == 0, "the closed connection to leave the pool")
            assert await get(pool, "/two") == b"GET /two HTTP/1.1"
            assert server.connections == 2
            assert len(server.conns[0].requests) == 1  # nothing was sent on the dead one

    run(main)


# ---------------------------------------------------------------- the keep-alive race


@pytest.mark.parametrize("runner", RUNNERS)
def test_keep_alive_race_is_retried_once_on_a_new_connection(runner: Runner) -> None:
    async def handler(conn: Conn) -> None:
        req = await conn.request()
        conn.send(response(request_line(req or b"")))
        if conn.index == 0:
            await conn.request()  # the next request arrives: close without a byte of answer
            return
        await echo(conn)

    async def main() -> None:
        async with Server(handler) as server, open_pool(server.port) as pool:
            assert await get(pool, "/one") == b"GET /one HTTP/1.1"
            assert pool.idle == 1
            assert await get(pool, "/two") == b"GET /two HTTP/1.1"
            assert server.connections == 2
            assert [request_line(r) for r in server.conns[0].requests] == [
                b"GET /one HTTP/1.1",
                b"GET /two HTTP/1.1",  # it did reach the first connection, which then closed
            ]
            assert [request_line(r) for r in server.conns[1].requests] == [b"GET /two HTTP/1.1"]

    run(main, runner)


def test_keep_alive_race_retry_does_not_reuse_another_stale_connection() -> None:
    async def handler(conn: Conn) -> None:
        req = await conn.request()
        conn.send(response(request_line(req or b"")))
        if conn.index < 2:  # the first two connections are both dropped once idle
            await conn.request()
            return
        await echo(conn)

    async def main() -> None:
        async with Server(handler) as server, open_pool(server.port) as pool:
            await asyncio.gather(get(pool, "/a"), get(pool, "/b"))
            assert (pool.idle, server.connections) == (2, 2)
            assert await get(pool, "/c") == b"GET /c HTTP/1.1"
            assert server.connections == 3

    run(main)


def test_failure_after_response_bytes_arrived_is_not_retried() -> None:
    async def handler(conn: Conn) -> None:
        req = await conn.request()
        conn.send(response(request_line(req or b"")))
        if conn.index == 0:
            await conn.request()
            conn.send(b"HTTP/1.1 200 OK\r\ncontent-le")  # part of an answer, then the close
            return
        await echo(conn)

    async def main() -> None:
        async with Server(handler) as server, open_pool(server.port) as pool:
            assert await get(pool, "/one") == b"GET /one HTTP/1.1"
            with pytest.raises(http1.RemoteProtocolError):
                await pool.request("POST", "/two", {}, b"not idempotent")
            assert server.connections == 1
            assert (pool.active, pool.idle) == (0, 0)

    run(main)


def test_a_fresh_connection_failing_is_not_retried() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()  # closes without answering, on every connection

    async def main() -> None:
        async with Server(handler) as server, open_pool(server.port) as pool:
            with pytest.raises(http1.RemoteProtocolError):
                await pool.request("GET", "/", {}, None)
            assert server.connections == 1
            assert (pool.active, pool.idle) == (0, 0)

    run(main)


# ---------------------------------------------------------------- pool limits


def test_a_request_over_max_connections_waits_and_gets_the_first_freed_connection() -> None:
    async def main() -> None:
        async with Server(echo) as server, open_pool(server.port, max_connections=2) as pool:
            a = await pool.request("GET", "/a", {}, None)  # bodies unread: connections held
            b = await pool.request("GET", "/b", {}, None)
            c = asyncio.create_task(pool.request("GET", "/c", {}, None))
            await until(lambda: pool.waiting == 1, "c to queue")
            d = asyncio.create_task(pool.request("GET", "/d", {}, None))
            await until(lambda: pool.waiting == 2, "d to queue")
            assert (pool.active, pool.idle) == (2, 0)

            assert await a.read() == b"GET /a HTTP/1.1"  # a's connection goes to c, first in line
            resp_c = await c
            assert not d.done()
            assert (pool.active, pool.waiting) == (2, 1)
            assert await resp_c.read() == b"GET /c HTTP/1.1"
            resp_d = await d
            assert await resp_d.read() == b"GET /d HTTP/1.1"
            assert await b.read() == b"GET /b HTTP/1.1"
            for resp in (a, b, resp_c, resp_d):
                await resp.aclose()
            assert server.connections == 2
            assert [request_line(r) for r in server.conns[0].requests] == [
                b"GET /a HTTP/1.1",
                b"GET /c HTTP/1.1",
                b"GET /d HTTP/1.1",
            ]
            assert (pool.active, pool.idle, pool.waiting) == (0, 2, 0)

    run(main)


def test_a_woken_waiter_keeps_its_place_in_line() -> None:
    async def main() -> None:
        async with Server(echo) as server, open_pool(server.port, max_connections=1) as pool:
            served: list[str] = []

            async def fetch(name: str) -> None:
                resp = await pool.request("GET", f"/{name}", {}, None)
                served.append(name)
                await resp.read()
                await resp.aclose()

            a = await pool.request("GET", "/a", {}, None)
            b = asyncio.create_task(fetch("b"))
            await until(lambda: pool.waiting == 1, "b to queue")
            c = asyncio.create_task(fetch("c"))
            await until(lambda: pool.waiting == 2, "c to queue")
            await a.read()  # wakes b; the same task asks again before b gets to run
            await a.aclose()
            again = await pool.request("GET", "/a-again", {}, None)
            await again.read()
            await again.aclose()
            await asyncio.gather(b, c)
            assert served == ["b", "c"]

    run(main)


def test_pool_timeout_raises_when_no_connection_frees_up() -> None:
    async def main() -> None:
        async with (
            Server(echo) as server,
            open_pool(server.port, max_connections=1, pool_timeout=0.05) as pool,
        ):
            held = await pool.request("GET", "/held", {}, None)
            with pytest.raises(http1.PoolTimeout):
                await pool.request("GET", "/late", {}, None)
            assert (pool.active, pool.waiting) == (1, 0)
            assert await held.read() == b"GET /held HTTP/1.1"
            await held.aclose()
            assert await get(pool, "/after") == b"GET /after HTTP/1.1"
            assert server.connections == 1

    run(main)


@pytest.mark.parametrize("when", ["while-queued", "just-after-being-woken"])
def test_a_cancelled_waiter_does_not_take_the_slot(when: str) -> None:
    async def main() -> None:
        async with Server(echo) as server, open_pool(server.port, max_connections=1) as pool:
            held = await pool.request("GET", "/held", {}, None)
            b = asyncio.create_task(pool.request("GET", "/b", {}, None))
            await until(lambda: pool.waiting == 1, "b to queue")
            c = asyncio.create_task(pool.request("GET", "/c", {}, None))
            await until(lambda: pool.waiting == 2, "c to queue")
            if when == "while-queued":
                b.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await b
                assert pool.waiting == 1
                assert await held.read() == b"GET /held HTTP/1.1"  # frees the slot: c's turn
            else:
                await held.aclose()  # body unread: closed, and the turn goes to b ...
                b.cancel()  # ... which is cancelled before it could run
                with pytest.raises(asyncio.CancelledError):
                    await b
            resp_c = await c
            assert await resp_c.read() == b"GET /c HTTP/1.1"
            await resp_c.aclose()
            await held.aclose()
            assert (pool.active, pool.waiting) == (0, 0)
            assert all(
                request_line(r) != b"GET /b HTTP/1.1"
                for conn in server.conns
                for r in conn.requests
            )

    run(main)


# ---------------------------------------------------------------- timeouts and errors


def test_connect_timeout_when_the_listener_never_accepts() -> None:
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # never accepted: a few connects fill its backlog, the next hangs
        port = listener.getsockname()[1]
        for _ in range(4):
            filler = socket.socket()
            fillers.append(filler)
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))

        async def main() -> None:
            async with open_pool(port, connect_timeout=0.1) as pool:
                with pytest.raises(http1.ConnectTimeout):
                    await pool.request("GET", "/", {}, None)
                assert pool.active == 0

        run(main)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_connection_refused_raises_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once it is closed

    async def main() -> None:
        async with open_pool(port) as pool:
            with pytest.raises(http1.ConnectError):
                await pool.request("GET", "/", {}, None)
            assert (pool.active, pool.idle) == (0, 0)

    run(main)


def test_read_timeout_waiting_for_headers_closes_the_connection() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.wait_eof()  # never answers

    async def main() -> None:
        async with Server(handler) as server, open_pool(server.port, read_timeout=0.05) as pool:
            with pytest.raises(http1.ReadTimeout):
                await pool.request("GET", "/", {}, None)
            await wait(server.conns[0].eof)
            assert (pool.active, pool.idle) == (0, 0)

    run(main)


def test_read_timeout_waiting_for_the_next_body_piece_closes_the_connection() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nfirst")
        await conn.wait_eof()  # stalls before the rest

    async def main() -> None:
        async with Server(handler) as server, open_pool(server.port, read_timeout=0.05) as pool:
            resp = await pool.request("GET", "/", {}, None)
            assert await resp.receive() == b"first"
            with pytest.raises(http1.ReadTimeout):
                await resp.receive()
            await wait(server.conns[0].eof)
            await resp.aclose()
            assert (pool.active, pool.idle) == (0, 0)
            assert server.connections == 1

    run(main)


def test_write_timeout_when_the_server_does_not_read_the_body() -> None:
    async def main() -> None:
        read_now = asyncio.Event()

        async def handler(conn: Conn) -> None:
            await wait(read_now)
            await conn.wait_eof()

        async with Server(handler) as server, open_pool(server.port, write_timeout=0.05) as pool:
            with pytest.raises(http1.WriteTimeout):
                await pool.request("POST", "/", {}, b"x" * (32 << 20))
            assert (pool.active, pool.idle) == (0, 0)
            read_now.set()
            await wait(server.conns[0].eof)

    run(main)


# ---------------------------------------------------------------- cancellation and aclose


@pytest.mark.parametrize("runner", RUNNERS)
def test_cancelling_a_request_before_headers_closes_it_and_frees_the_slot(runner: Runner) -> None:
    async def main() -> None:
        arrived = asyncio.Event()

        async def handler(conn: Conn) -> None:
            await conn.request()
            arrived.set()
            await conn.wait_eof()

        async with Server(handler) as server, open_pool(server.port, max_connections=1) as pool:
            task = asyncio.create_task(pool.request("GET", "/", {}, None))
            await wait(arrived)
            assert pool.active == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert (pool.active, pool.idle) == (0, 0)
            await wait(server.conns[0].eof)

    run(main, runner)


def test_aclose_of_an_unread_response_closes_the_connection_and_frees_the_slot() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nstart")
        await conn.wait_eof()

    async def main() -> None:
        async with Server(handler) as server, open_pool(server.port, max_connections=1) as pool:
            resp = await pool.request("GET", "/", {}, None)
            assert pool.active == 1
            await resp.aclose()
            assert (pool.active, pool.idle) == (0, 0)
            await wait(server.conns[0].eof)
            assert await resp.receive() == b""  # a closed response has nothing more

    run(main)


def test_a_fully_received_but_unread_body_closes_the_connection_on_aclose() -> None:
    async def main() -> None:
        async with Server(echo) as server, open_pool(server.port) as pool:
            resp = await pool.request("GET", "/", {}, None)
            await until(lambda: resp._connection._complete, "the whole response")
            await resp.aclose()  # the bytes are in, but nobody read them
            assert (pool.active, pool.idle) == (0, 0)
            await wait(server.conns[0].eof)

    run(main)


def test_a_read_body_frees_its_connection_and_a_late_aclose_spares_the_next_user() -> None:
    async def main() -> None:
        finish_second = asyncio.Event()

        async def handler(conn: Conn) -> None:
            await conn.request()
            conn.send(response(b"first"))
            await conn.request()
            conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nsecond")
            await wait(finish_second)
            conn.send(b" half")
            await echo(conn)

        async with Server(handler) as server, open_pool(server.port) as pool:
            first = await pool.request("GET", "/1", {}, None)
            assert await first.read() == b"first"
            assert (pool.active, pool.idle) == (0, 1)  # back in the pool before aclose()
            second = await pool.request("GET", "/2", {}, None)  # on the same connection
            await first.aclose()  # late: closing the connection now would break `second`
            assert pool.active == 1
            assert await second.receive() == b"second"
            finish_second.set()
            assert await second.read() == b" half"
            await second.aclose()
            assert await get(pool, "/3") == b"GET /3 HTTP/1.1"
            assert server.connections == 1

    run(main)


# ---------------------------------------------------------------- broken responses


def test_a_malformed_response_raises_remote_protocol_error() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        conn.send(b"this is not HTTP at all\r\n\r\n")
        await conn.wait_eof()

    async def main() -> None:
        async with Server(handler) as server, open_pool(server.port) as pool:
            with pytest.raises(http1.RemoteProtocolError):
                await pool.request("GET", "/", {}, None)
            assert (pool.active, pool.idle) == (0, 0)
            await wait(server.conns[0].eof)
            assert server.connections == 1

    run(main)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npart of it",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\npart of it\r\n5\r\nmo",
    ],
    ids=["content-length", "chunked"],
)
def test_the_server_closing_mid_body_raises_remote_protocol_error(answer: bytes) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        conn.send(answer)  # and close

    async def main() -> None:
        async with Server(handler) as server, open_pool(server.port) as pool:
            resp = await pool.request("GET", "/", {}, None)
            assert await resp.receive() == b"part of it"
            with pytest.raises(http1.RemoteProtocolError):
                await resp.read()
            await resp.aclose()
            assert (pool.active, pool.idle) == (0, 0)

    run(main)


def test_bytes_after_a_complete_response_do_not_join_its_body() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        conn.send(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\nhello"
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\ncontent-type: text/html\r\n\r\n<script>"
        )
        await conn.wait_eof()

    async def main() -> None:
        async with Server(handler) as server, open_pool(server.port) as pool:
            resp = await pool.request("GET", "/", {}, None)
            body = await resp.read()
            await resp.aclose()
            assert (body, resp.headers["content-type"]) == (b"hello", "text/plain")

    run(main)


# ---------------------------------------------------------------- read flow control


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_large_body_read_slowly_arrives_intact_with_a_bounded_buffer(runner: Runner) -> None:
    size = 16 << 20
    block = hashlib.sha256(b"seed").digest() * 2048  # 64 KiB, not all alike
    expected = hashlib.sha256(block * (size // len(block))).hexdigest()

    async def main() -> None:
        sent = 0

        async def handler(conn: Conn) -> None:
            nonlocal sent
            await conn.request()
            conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
            while sent < size:
                conn.send(block)
                sent += len(block)
                await conn.writer.drain()
            await echo(conn)

        async with Server(handler) as server, open_pool(server.port) as pool:
            resp = await pool.request("GET", "/big", {}, None)
            connection = resp._connection
            await until(lambda: connection._paused, "reading to pause")
            await loop_time_passes(0.05)  # the server gets every chance to push more
            assert connection._paused
            assert connection._buffered <= 2 * http1._HIGH_WATER
            assert sent < size, "the server's writes never blocked"

            digest = hashlib.sha256()
            received = most = 0
            while data := await resp.receive():
                digest.update(data)
                received += len(data)
                most = max(most, connection._buffered)
                await asyncio.sleep(0)  # a slow reader: let more arrive between pieces
            assert received == size
            assert digest.hexdigest() == expected
            assert most <= 2 * http1._HIGH_WATER
            await resp.aclose()
            assert await get(pool, "/next") == b"GET /next HTTP/1.1"  # reading resumed for good
            assert server.connections == 1

    run(main, runner)


# ---------------------------------------------------------------- Pool.aclose


def test_pool_aclose_closes_idle_and_busy_connections() -> None:
    async def main() -> None:
        async def handler(conn: Conn) -> None:
            while (req := await conn.request()) is not None:
                if request_line(req) == b"GET /busy HTTP/1.1":
                    conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nsome")
                else:
                    conn.send(response(b"done"))

        async with Server(handler) as server, open_pool(server.port) as pool:
            idle = await pool.request("GET", "/idle", {}, None)
            busy = await pool.request("GET", "/busy", {}, None)
            assert await idle.read() == b"done"
            assert (pool.active, pool.idle, server.connections) == (1, 1, 2)
            await pool.aclose()
            await wait(server.conns[0].eof)
            await wait(server.conns[1].eof)
            with pytest.raises(http1.RemoteProtocolError):
                await busy.read()
            await busy.aclose()
            await idle.aclose()
            assert (pool.active, pool.idle) == (0, 0)
            with pytest.raises(http1.RemoteProtocolError):
                await pool.request("GET", "/after", {}, None)

    run(main)


def test_pool_aclose_fails_the_waiters() -> None:
    async def main() -> None:
        async with Server(echo) as server, open_pool(server.port, max_connections=1) as pool:
            held = await pool.request("GET", "/held", {}, None)
            waiters = [asyncio.create_task(pool.request("GET", "/w", {}, None)) for _ in range(2)]
            await until(lambda: pool.waiting == 2, "the waiters to queue")
            await pool.aclose()
            for waiter in waiters:
                with pytest.raises(http1.RemoteProtocolError):
                    await waiter
            assert pool.waiting == 0
            await held.aclose()
            assert (pool.active, pool.idle) == (0, 0)
            await wait(server.conns[0].eof)
            assert server.connections == 1

    run(main)


# ---------------------------------------------------------------- through Clients


def native_upstream(port: int, **settings: Any) -> UpstreamConfig:
    config = UpstreamConfig(provider="openai", base_url=f"http://127.0.0.1:{port}/v1", **settings)
    assert config.transport is None  # so Clients picks the native pool
    assert not config.http2
    return config


def test_clients_refuse_a_url_off_the_upstream_origin() -> None:
    async def main() -> None:
        async with Server(echo) as server:
            clients = await Clients.open({"up": native_upstream(server.port)})
            try:
                base = f"127.0.0.1:{server.port}"
                for url in (
                    f"http://127.0.0.2:{server.port}/v1/models",
                    f"http://127.0.0.1:{server.port + 1}/v1/models",
                    f"https://{base}/v1/models",
                    "http://localhost/v1/models",
                ):
                    with pytest.raises(UpstreamError, match="off its origin"):
                        await clients.send("up", UpstreamRequest("GET", url, {}))
                assert server.connections == 0
                resp = await clients.send(
                    "up", UpstreamRequest("GET", f"http://{base}/v1/m?a=b", {})
                )
                assert await resp.read() == b"GET /v1/m?a=b HTTP/1.1"
                await resp.aclose()
            finally:
                await clients.aclose()

    run(main)


def test_clients_pool_stats_report_active_idle_and_waiting() -> None:
    async def main() -> None:
        async with Server(echo) as server:
            config = native_upstream(
                server.port, pool=PoolLimits(max_connections=1), timeouts=Timeouts(pool=2.0)
            )
            clients = await Clients.open({"up": config})
            url = f"http://127.0.0.1:{server.port}/v1/models"
            try:
                stats = clients.pool_stats("up")
                assert (stats.active, stats.idle, stats.waiting, stats.max_connections) == (
                    0,
                    0,
                    0,
                    1,
                )
                first = await clients.send("up", UpstreamRequest("GET", url, {}))
                second = asyncio.create_task(clients.send("up", UpstreamRequest("GET", url, {})))
                await until(lambda: clients.pool_stats("up").waiting == 1, "the second to queue")
                stats = clients.pool_stats("up")
                assert (stats.active, stats.idle, stats.waiting) == (1, 0, 1)
                await first.read()
                await first.aclose()
                resp = await second
                stats = clients.pool_stats("up")
                assert (stats.active, stats.idle, stats.waiting) == (1, 0, 0)
                await resp.read()
                await resp.aclose()
                stats = clients.pool_stats("up")
                assert (stats.active, stats.idle, stats.waiting) == (0, 1, 0)
            finally:
                await clients.aclose()

    run(main)
