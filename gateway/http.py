"""The gateway's HTTP/1.1 server protocol: uvicorn's httptools protocol plus the limits it lacks.

uvicorn's httptools protocol keeps a request's line and headers in memory without bound, waits
forever for a client that sends them (or the body) a byte at a time, and waits forever on a
client that stops reading its response. `GatewayHttpProtocol`, which `gateway serve` passes as
uvicorn's `http` option (and the tests' servers too), adds, before the app sees a request:

- Head size: a request line and headers larger than `server.max_header_bytes` get 431. The raw
  bytes are counted while the head is incomplete, so one endless header is cut off there too.
- Header timeout: a connection must send a whole head within `server.header_timeout` seconds
  of opening, or of the first byte of its next request; else 408 (or a silent close if it sent
  nothing at all, as an idle new connection).
- Body timeout: when no body bytes came for `server.body_timeout` seconds while the body is
  unfinished, the scope gets `BODY_TIMED_OUT` and the app's pending `receive()` is woken; the
  chat endpoint then answers 408 itself, with its request id (api/chat.py `_read_body`). An
  app that does not answer within `WAKE_GRACE` seconds gets the 408 from here.
- Write stall: when a response's writes stay blocked for `server.write_timeout` seconds
  (the transport's buffer stays above its high-water mark: uvicorn's flow control has paused
  the app's `send`), the connection is reset. The buffered bytes are dropped and the app's
  `receive()` reports the disconnect, so the chat endpoint cancels its upstream call and frees
  that connection. A client that stops reading therefore costs at most the socket buffers and
  one message, for at most `write_timeout` seconds.

Refusals are answered here in OpenAI's error envelope with an `x-request-id` (the client's, if
sane) and a log line, then the connection is half-closed and drained for up to `LINGER`
seconds, so the client reads the answer instead of a reset. Parser errors (malformed HTTP) get
the same envelope as a 400.

The deadlines share one timer per connection, re-armed lazily: pushing a deadline later is an
attribute write, and the timer, when it fires, re-arms itself for whatever is then due. So a
busy keep-alive connection creates a timer about once per timeout period, not per request (a
uvloop timer costs ~3 us, a noticeable share of a request). The limits are the `server`
settings of the gateway app being served, read as each connection opens (a reload applies to
new connections); any other app gets the defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from http import HTTPStatus
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.config import ServerConfig
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    RequestHeadersTooLarge,
    RequestTimeout,
    to_openai_error,
)
from gateway.logs import accept_request_id, new_request_id

log = logging.getLogger("gateway.request")

BODY_TIMED_OUT = "gateway.body_timed_out"  # scope key: the body stalled (seconds, a float)
WAKE_GRACE = 1.0  # seconds an app woken by BODY_TIMED_OUT has to answer before we do
LINGER = 2.0  # seconds a refused connection is drained before it is closed for good

_DEFAULTS = ServerConfig()
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset, drops the buffer

# What the connection's read deadline is waiting for.
_NONE, _HEAD, _BODY, _WOKEN, _LINGER = range(5)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head size, header, body and write-stall limits."""

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._limits = _DEFAULTS
        self._in_head = True  # the bytes that come next belong to a request's line and headers
        self._counting = True  # `_in_head` held when the chunk being parsed arrived
        self._head_bytes = 0
        self._max_head = self._limits.max_header_bytes
        self._phase = _NONE
        self._read_deadline = 0.0  # loop time; 0 = none
        self._write_deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._pending: GatewayError | None = None  # a refusal raised from a parser callback
        self._refused = False

    # ---------------------------------------------------------------- connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._limits = _server_settings(self.app)
        self._max_head = self._limits.max_header_bytes
        self._read_until(_HEAD, self._limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._phase = _NONE
        self._read_deadline = self._write_deadline = 0.0
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the head counted and the read deadlines kept."""
        if self._refused:
            return  # lingering: drained and dropped
        self._unset_keepalive_if_required()
        self._counting = self._in_head
        if self._in_head:
            self._head_bytes += len(data)
        elif self._phase == _BODY:
            self._read_deadline = self.loop.time() + self._limits.body_timeout
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:  # malformed, or a refusal from a callback
            error, self._pending = self._pending, None
            self._refuse(error or InvalidRequest("the request is not valid HTTP/1.1"))
            return
        # Deadlines only for what this chunk left unfinished: a request that comes whole in
        # one read (the usual case) costs no clock reading and no timer.
        if self._in_head:
            if self._head_bytes > self._max_head:
                self._refuse(self._head_too_large())
            elif self._head_bytes and self._phase != _HEAD:  # from its first byte
                self._read_until(_HEAD, self._limits.header_timeout)
        elif self._phase != _BODY and self._phase != _WOKEN:
            self._read_until(_BODY, self._limits.body_timeout)

    # ---------------------------------------------------------------- parser callbacks

    def on_headers_complete(self) -> None:
        # A head that began inside a chunk that arrived mid-body (pipelined behind the previous
        # request) was not counted from its start: measured here instead.
        if (self._head_bytes > self._max_head or not self._counting) and _head_size(
            self.url, self.headers
        ) > self._max_head:
            self._pending = self._head_too_large()
            raise _Refusal  # httptools stops parsing and raises it as a parser error
        self._in_head = False
        if self._phase == _HEAD:
            self._phase, self._read_deadline = _NONE, 0.0
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        HttpToolsProtocol.on_message_complete(self)
        self._in_head = True
        self._head_bytes = 0
        if self._phase in (_BODY, _WOKEN):
            self._phase = _NONE
            self._read_deadline = 0.0

    # ---------------------------------------------------------------- flow control

    def pause_writing(self) -> None:
        super().pause_writing()
        self._write_deadline = self.loop.time() + self._limits.write_timeout
        self._arm(self._write_deadline)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._write_deadline = 0.0

    # ---------------------------------------------------------------- deadlines

    def _read_until(self, phase: int, seconds: float) -> None:
        self._phase = phase
        self._read_deadline = self.loop.time() + seconds
        self._arm(self._read_deadline)

    def _arm(self, deadline: float) -> None:
        """Make sure the timer fires by `deadline` (it may fire earlier and re-arm)."""
        if self._timer is None or deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _on_timer(self) -> None:
        self._timer = None
        now = self.loop.time()
        if self._write_deadline and now >= self._write_deadline:
            self._write_stalled()
            return
        if self._read_deadline and now >= self._read_deadline:
            self._read_expired()
        due = [d for d in (self._read_deadline, self._write_deadline) if d]
        if due and not self.transport.is_closing():
            self._arm(min(due))

    def _read_expired(self) -> None:
        phase, limits = self._phase, self._limits
        self._phase, self._read_deadline = _NONE, 0.0
        if phase == _HEAD:
            if self._head_bytes:
                self._refuse(
                    RequestTimeout(
                        f"the request's headers did not arrive within {limits.header_timeout:g} s"
                    )
                )
            else:
                self.transport.close()  # a connection that never sent a request: nobody to tell
        elif phase == _BODY:
            cycle = self.cycle
            if cycle is None or cycle.response_started:
                return  # the app answered without the rest of the body: its answer closes
            if self.flow.read_paused:  # the app is not reading: no fault of the client's
                self._read_until(_BODY, limits.body_timeout)
                return
            scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
            scope[BODY_TIMED_OUT] = limits.body_timeout
            cycle.message_event.set()  # its receive() returns, the app sees the flag
            self._read_until(_WOKEN, WAKE_GRACE)
        elif phase == _WOKEN:
            if self.cycle is not None and not self.cycle.response_started:
                self._refuse(
                    RequestTimeout(
                        f"the request body stalled: no bytes for {limits.body_timeout:g} s"
                    )
                )
        elif phase == _LINGER:
            self.transport.abort()

    def _write_stalled(self) -> None:
        scope = self.cycle.scope if self.cycle is not None else None
        log.warning(
            "client stopped reading; connection reset",
            extra={
                "request_id": _scope_request_id(scope),
                "path": scope["path"] if scope is not None else None,
                "write_timeout": self._limits.write_timeout,
                "buffered_bytes": self.transport.get_write_buffer_size(),
            },
        )
        self._reset()

    def _reset(self) -> None:
        """Drop the connection now: an RST, not a FIN queued behind unread data."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        self.transport.abort()

    # ---------------------------------------------------------------- refusals

    def _head_too_large(self) -> RequestHeadersTooLarge:
        return RequestHeadersTooLarge(
            "the request line and headers exceed the gateway's limit of "
            f"{self._limits.max_header_bytes} bytes"
        )

    def _refuse(self, error: GatewayError) -> None:
        """Answer `error` (unless a response has begun), then close the connection."""
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        # While a head is read, `cycle` is the previous request's (keep-alive), if any.
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() says so; its sends go nowhere
            cycle.message_event.set()
            if cycle.response_started or self._in_head:
                self._reset()  # a response is under way (or owed first): cut it short
                return
        scope = None if self._in_head or cycle is None else cycle.scope
        request_id = _scope_request_id(scope, self.headers)
        log.info(
            "request refused",
            extra={
                "request_id": request_id,
                "status": error.status,
                "error": error.code,
                "client": self.client[0] if self.client else None,
            },
        )
        self.transport.write(_response(error, request_id, self.server_state.default_headers))
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the answer, then FIN; keep reading until theirs
            self._read_until(_LINGER, LINGER)
        else:
            self.transport.close()


class _Refusal(Exception):
    """Raised from a parser callback to stop parsing; `_pending` says why."""


def _head_size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """The request line and headers as sent, near enough: URL, names, values, separators."""
    return len(url) + 16 + sum(len(name) + len(value) + 4 for name, value in headers)


def _scope_request_id(scope: Any, headers: list[tuple[bytes, bytes]] | None = None) -> str:
    """The request id the app gave the request, else the client's if sane, else a new one."""
    if scope is not None:
        known = scope.get("gateway.request_id")
        if isinstance(known, str):
            return known
        headers = scope.get("headers", headers)
    for name, value in headers or ():
        if name == b"x-request-id":
            return accept_request_id(value)
    return new_request_id()


def _response(
    error: GatewayError, request_id: str, default_headers: list[tuple[bytes, bytes]]
) -> bytes:
    payload = orjson.dumps(to_openai_error(error))
    lines = [b"HTTP/1.1 %d %s" % (error.status, HTTPStatus(error.status).phrase.encode())]
    lines += [name + b": " + value for name, value in default_headers]
    lines += [
        b"content-type: application/json",
        b"content-length: %d" % len(payload),
        b"x-request-id: " + request_id.encode(),
        b"connection: close",
    ]
    if not error.retryable:
        lines.append(b"x-should-retry: false")
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def _server_settings(app: object) -> ServerConfig:
    """The `server` settings of the gateway app under uvicorn's wrappers (middlewares keep the
    app they wrap in `.app`; a bound method, as the tests' servers pass, in `__self__.app`)."""
    for _ in range(8):
        runtime = getattr(getattr(app, "state", None), "runtime", None)
        settings = getattr(getattr(runtime, "config", None), "server", None)
        if isinstance(settings, ServerConfig):
            return settings
        app = getattr(app, "app", None) or getattr(getattr(app, "__self__", None), "app", None)
        if app is None:
            break
    return _DEFAULTS
