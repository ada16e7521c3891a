"""Run an ASGI app under a real uvicorn on 127.0.0.1, in a background thread, for one test.

`ServerThread` binds port 0 (the kernel picks a free port, read back from the listening
socket), serves from a thread with its own event loop (asyncio or uvloop), and stops on exit:
uvicorn's graceful shutdown, the app's lifespan shutdown, then the thread is joined. A lifespan
that fails to start, or anything that escapes the server thread, is raised in the test's thread,
so a broken app fails its test instead of hanging it or leaking a thread.

Both the fake upstreams (`tests/fakes/`) and the gateway fixture (`tests/conftest.py`) use it.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
from types import TracebackType
from typing import Literal, Self

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

LoopName = Literal["asyncio", "uvloop"]
HOST = "127.0.0.1"

_names = itertools.count(1)


class ServerFailed(RuntimeError):
    """The server did not start, did not stop in time, or failed in its thread."""


class _Server(uvicorn.Server):
    """uvicorn's server, telling the starting thread when startup is over and on which loop."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.startup_over = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        try:
            await super().startup(sockets)
        finally:
            self.startup_over.set()


class ServerThread:
    """One uvicorn server on `127.0.0.1:<free port>`, as a context manager.

    `loop` picks the event loop the app runs on; `lifespan="on"` runs the app's startup before
    `start()` returns and its shutdown inside `stop()`; `graceful_timeout` (seconds) bounds how
    long `stop()` lets in-flight requests finish before uvicorn cancels them; `http` is
    uvicorn's protocol (the gateway's fixtures pass `gateway serve`'s, `GatewayHttpProtocol`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        name: str = "server",
        loop: LoopName = "asyncio",
        lifespan: Literal["on", "off"] = "on",
        http: Literal["auto", "h11", "httptools"] | type[asyncio.Protocol] = "auto",
        graceful_timeout: int = 5,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> None:
        self.app = app
        self._scheme = "https" if ssl_certfile else "http"
        self.name = f"{name}-{next(_names)}"  # also the thread's name, as log records show it
        self._lifespan_error: BaseException | None = None
        self._thread_error: BaseException | None = None
        config = uvicorn.Config(
            self._serve_app,
            host=HOST,
            port=0,
            loop=loop,
            lifespan=lifespan,
            http=http,
            interface="asgi3",
            ws="none",  # no websocket stack to import (and none of its deprecation warnings)
            log_config=None,  # leave logging to pytest: records propagate to the root logger
            timeout_graceful_shutdown=graceful_timeout,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
        )
        self._server = _Server(config)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>` (https with a certificate), without a trailing slash."""
        if not self.port:
            raise RuntimeError(f"{self.name} is not running")
        return f"{self._scheme}://{HOST}:{self.port}"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop serving the app (for `call_soon_threadsafe`)."""
        if self._server.loop is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._server.loop

    async def _serve_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        # uvicorn only logs a lifespan failure; keep the exception to raise it from start()/stop().
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            if scope["type"] == "lifespan":
                self._lifespan_error = exc
            raise

    def _run(self) -> None:
        try:
            self._server.run()
        except BaseException as exc:  # SystemExit(3) on a failed startup, or a crash
            self._thread_error = exc
        finally:
            self._server.startup_over.set()

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; returns once the socket listens and lifespan startup is done.

        Raises `ServerFailed` (chained to the app's exception when there is one) otherwise.
        """
        self._thread.start()
        if not self._server.startup_over.wait(timeout):
            self._server.should_exit = True
            self._thread.join(timeout)
            raise ServerFailed(f"{self.name} did not start within {timeout} s")
        if not self._server.started:
            self._thread.join(timeout)
            cause = self._lifespan_error or self._thread_error
            raise ServerFailed(f"{self.name} failed to start: {cause!r}") from cause
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down (graceful, then lifespan shutdown) and join the thread.

        Raises `ServerFailed` if the thread is still alive after `timeout` seconds, or if the
        app's lifespan or the server failed while it ran.
        """
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
            raise ServerFailed(f"{self.name} did not stop within {timeout} s")
        cause = self._lifespan_error or self._thread_error
        if cause is not None:
            raise ServerFailed(f"{self.name} failed: {cause!r}") from cause

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
