"""The connection pool of the native HTTP/1.1 client: one origin, bounded, FIFO.

At most `max_connections` connections are busy or opening; idle ones are reused newest first
until `keepalive_expiry`, and at most `max_keepalive` are kept. A request that finds the pool
full queues; a released connection goes straight to the first in line (so nobody loses their
place to a later caller), and a closed one passes its slot on. See `http1.py` for the protocol
and for the one retry (the keep-alive race).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import Callable

from gateway.upstreams.http1 import (
    ConnectError,
    Connection,
    ConnectTimeout,
    Limits,
    Origin,
    PoolTimeout,
    RemoteProtocolError,
    Response,
    expire,
)


class Pool:
    """Connections to one origin: at most `max_connections`, idle ones reused newest first."""

    def __init__(self, origin: Origin, limits: Limits, ssl_context: ssl.SSLContext | None) -> None:
        self.origin = origin
        self._host_line = b"host: " + origin.host_header  # IDNA-encoded once, not per request
        self.limits = limits
        self.loop = asyncio.get_running_loop()
        self._ssl = ssl_context
        self._idle: list[Connection] = []
        self._busy: set[Connection] = set()
        self._opening = 0
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._closed = False
        # Called with the seconds each request waited for its connection (metrics).
        self.on_acquire: Callable[[float], None] | None = None

    # ------------------------------------------------------------ figures

    @property
    def active(self) -> int:
        return len(self._busy) + self._opening

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    # ------------------------------------------------------------ requests

    async def request(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None
    ) -> Response:
        """Send a request; returns when the status and headers are in. See module docstring."""
        head = self._head(method, target, headers, body)
        on_acquire = self.on_acquire
        if on_acquire is None:
            connection = await self._acquire()
        else:
            started = time.perf_counter()  # not loop.time(): uvloop's ticks in milliseconds
            connection = await self._acquire()
            on_acquire(time.perf_counter() - started)
        try:
            return await connection.request(head, body)
        except RemoteProtocolError:
            self.release(connection)
            if not (connection.reused and connection.failed_silently):
                raise
        except BaseException:
            connection.close()
            self.release(connection)
            raise
        # The keep-alive race: the request never reached the server. Once more, on a connection
        # of its own (other idle ones may be just as stale).
        connection = await self._acquire(fresh=True)
        try:
            return await connection.request(head, body)
        except BaseException:
            connection.close()
            self.release(connection)
            raise

    def _head(self, method: str, target: str, headers: dict[str, str], body: bytes | None) -> bytes:
        lines = [f"{method} {target} HTTP/1.1".encode(), self._host_line]
        for name, value in headers.items():
            lines.append(f"{name}: {value}".encode("latin-1", "replace"))
        if body is not None:
            lines.append(b"content-length: %d" % len(body))
        lines.append(b"\r\n")
        return b"\r\n".join(lines)

    async def _acquire(self, fresh: bool = False) -> Connection:
        if self._closed:
            raise RemoteProtocolError("the client is closed")
        now = self.loop.time()
        while self._idle and not fresh:
            connection = self._idle.pop()
            if connection.usable and now - connection.idle_since < self.limits.keepalive_expiry:
                connection.reused = True
                self._busy.add(connection)
                return connection
            connection.close()
        if self.active >= self.limits.max_connections:
            handed = await self._queue()
            if handed is not None:
                return handed  # a released connection, passed on in queue order
        else:
            self._opening += 1  # a slot of our own (a woken waiter has one reserved already)
        try:
            connection = await self._open()
        finally:
            self._opening -= 1
        self._busy.add(connection)
        return connection

    async def _queue(self) -> Connection | None:
        """Wait for a turn: a released connection, or None with a slot reserved to open one."""
        waiter: asyncio.Future[Connection | None] = self.loop.create_future()
        self._waiters.append(waiter)
        timer = self.loop.call_later(self.limits.pool_timeout, expire, waiter, PoolTimeout)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Served, then cancelled before it ran: the turn passes to the next in line.
                handed = waiter.result()
                if handed is not None:
                    self.release(handed)
                else:
                    self._opening -= 1
                    self._pass_turn(None)
            raise
        finally:
            timer.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    async def _open(self) -> Connection:
        origin = self.origin
        try:
            async with asyncio.timeout(self.limits.connect_timeout):
                _, connection = await self.loop.create_connection(
                    lambda: Connection(self),
                    origin.host,
                    origin.port,
                    ssl=self._ssl,
                    server_hostname=origin.host if self._ssl else None,
                )
        except TimeoutError:
            raise ConnectTimeout(
                f"connecting took over {self.limits.connect_timeout:g} s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(type(exc).__name__) from None
        return connection

    def release(self, connection: Connection) -> None:
        """Return `connection` (closed or reusable): to the first waiter, else to the idle list."""
        if connection not in self._busy:
            return
        self._busy.discard(connection)
        if connection.usable and not self._closed:
            if self._pass_turn(connection):
                return
            if len(self._idle) < self.limits.max_keepalive:
                connection.idle_since = self.loop.time()
                self._idle.append(connection)
                return
        connection.close()
        self._pass_turn(None)

    def forget(self, connection: Connection) -> None:
        """The connection closed (either side): an idle one leaves the idle list."""
        if connection in self._idle:
            self._idle.remove(connection)

    def _pass_turn(self, connection: Connection | None) -> bool:
        """Serve the first live waiter: with `connection`, or None and a reserved slot."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                if connection is None:
                    self._opening += 1
                else:
                    connection.reused = True
                    self._busy.add(connection)
                waiter.set_result(connection)
                return True
        return False

    async def aclose(self) -> None:
        """Close every connection and fail every waiter; returns once the sockets are closed."""
        self._closed = True
        connections = [*self._idle, *self._busy]
        for connection in connections:
            connection.close(abort=True)
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(RemoteProtocolError("the client is closed"))
        self._waiters.clear()
        if connections:
            await asyncio.wait([c.lost for c in connections], timeout=1.0)
