"""POST /v1/chat/completions: read -> parse -> pipeline -> JSON or SSE.

A raw ASGI endpoint rather than a Starlette request/response pair, because this route needs what
those hide: a body limit enforced while reading, a 200 held back until the upstream's first
event, SSE events flushed one by one with keep-alive comments when idle, and a client
disconnect noticed at any moment so the upstream call is cancelled and its connection freed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import MutableMapping
from typing import Any

import orjson

from gateway import pipeline
from gateway.api.forwarding import forward_headers
from gateway.auth import Caller, KeyTable
from gateway.config import ServerConfig
from gateway.errors import (
    GatewayError,
    InvalidApiKey,
    InvalidRequest,
    MethodNotAllowed,
    RateLimited,
    RequestTimeout,
    RequestTooLarge,
    UpstreamTimeout,
    internal_error,
    to_openai_error,
)
from gateway.http import BODY_TIMED_OUT
from gateway.lifecycle import DRAIN_CUT, cut_by_drain, cut_short
from gateway.logs import request_id_of
from gateway.openai_types import ChatCompletionChunk, ChatRequest
from gateway.request_parser import parse_chat_request
from gateway.resilience.limiter import Permit
from gateway.resilience.retry import Deadline, requested_timeout
from gateway.runtime import Runtime
from gateway.sse import DONE, KEEPALIVE

Scope = MutableMapping[str, Any]
Header = tuple[bytes, bytes]
Message = dict[str, Any]
Receive = Any
Send = Any

log = logging.getLogger("gateway.request")

_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_NO_RETRY = (b"x-should-retry", b"false")


async def chat_completions(scope: Scope, receive: Receive, send: Send, rt: Runtime) -> None:
    """The ASGI endpoint. It sets its own `x-request-id` on every response it sends."""
    request_id = request_id_of(scope["headers"])
    id_header = (b"x-request-id", request_id.encode())

    if scope["method"] != "POST":
        error = MethodNotAllowed(
            f"{scope['method']} is not allowed on {scope['path']}", headers={"allow": "POST"}
        )
        await send_error(send, error, id_header)
        return
    started = time.perf_counter()
    record: dict[str, object] = {"request_id": request_id, "status": 500}
    model: str | None = None
    attempts: pipeline.Attempts | None = None
    caller: Caller | None = None  # the client key's, when auth.keys are configured
    permit: Permit | None = None
    rt.metrics.request_started()
    try:
        if rt.keys is not None:  # before the body: a stranger's body is never read
            caller = _authenticate(rt.keys, scope, record)
        body = await _read_body(scope, receive, rt.config.server)
        request = parse_chat_request(
            body,
            forward_headers(scope),
            request_id=request_id,
            created=int(time.time()),
            max_depth=rt.config.server.max_json_depth,
            max_messages=rt.config.server.max_messages,
        )
        model = request.model
        record.update(model=model, stream=request.stream)
        if caller is not None:
            caller.check_request(request)  # 403, before a 404 could tell what exists
        rt.routes.chain_for(model)  # an unknown model is a 404 before any work
        if caller is not None and caller.limiter is not None:
            permit = await _admit(caller, request, rt)
            if caller.reports_limits:
                send = _with_rate_headers(send, caller)
        deadline = Deadline(_timeout(scope, rt.config.server.request_timeout))
        attempts = pipeline.Attempts(rt, model, key=caller.name if caller else None)
        handler = _stream if request.stream else _complete
        await handler(request, rt, deadline, receive, send, record, id_header, attempts)
    except ClientDisconnected:
        record.update(status=499, error="client_disconnected")
    except GatewayError as exc:
        record.update(status=exc.status, error=exc.code)
        if "x-gateway-attempts" in exc.headers:
            record["attempts"] = exc.headers["x-gateway-attempts"]
        await send_error(send, exc, id_header)
    except Exception:
        log.exception("unexpected error", extra={"request_id": request_id})
        await send_error(send, internal_error(request_id), id_header)
    except asyncio.CancelledError as exc:
        if exc.args and exc.args[0] == DRAIN_CUT:  # the 503 is sent by Gateway.__call__
            record.update(status=503, error="shutting_down")
        raise
    finally:
        seconds = time.perf_counter() - started
        record["duration_ms"] = round(seconds * 1000, 2)
        if attempts is not None:
            _note_attempts(record, attempts)
        status = record["status"]
        rt.metrics.request_ended(
            model,
            status if isinstance(status, int) else 500,
            seconds,
            attempts.upstream_seconds if attempts is not None else 0.0,
        )
        if caller is not None:
            _settle_key(rt, caller, permit, attempts, record["status"])
        log.info("chat completion", extra=record)


def _authenticate(keys: KeyTable, scope: Scope, record: dict[str, object]) -> Caller:
    """The request's client key; InvalidApiKey (401) when missing or wrong. The log line gets
    the key's name, or a wrong key's fingerprint."""
    try:
        caller = keys.lookup(scope["headers"])
    except InvalidApiKey as exc:
        if exc.fingerprint is not None:
            record["key_fingerprint"] = exc.fingerprint
        raise
    record["key"] = caller.name
    return caller


async def _admit(caller: Caller, request: ChatRequest, rt: Runtime) -> Permit | None:
    """A permit of the client key's own limiter, or RateLimited (429 with its headers)."""
    try:
        return await caller.admit(request)
    except RateLimited:
        rt.metrics.ratelimit_rejected("key", caller.name)
        raise


def _with_rate_headers(send: Send, caller: Caller) -> Send:
    """`send`, adding the client key's `x-ratelimit-*` headers to a 200's start (read then,
    after this request's charge)."""

    async def send_with_limits(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 200:
            message["headers"] = [*message["headers"], *caller.rate_headers()]
        await send(message)

    return send_with_limits


def _settle_key(
    rt: Runtime,
    caller: Caller,
    permit: Permit | None,
    attempts: pipeline.Attempts | None,
    status: object,
) -> None:
    """The request of a client key ended: release its limiter permit with the tokens used
    (the estimate stands when the upstream reported none) and count it under the key."""
    used = attempts.tokens if attempts is not None else None
    if permit is not None:
        permit.release(used[0] + used[1] if used is not None else None)
    rt.metrics.key_request(caller.name, status if isinstance(status, int) else 500)
    if used is not None and attempts is not None:
        rt.metrics.key_usage(caller.name, *used, attempts.cost_usd)


def _note_attempts(record: dict[str, object], attempts: pipeline.Attempts) -> None:
    """The log line's account of the upstream attempts sent, and of the usage's cost."""
    if attempts.sent:
        record["upstream_attempts"] = [
            {"upstream": name, "outcome": outcome, "latency_ms": round(seconds * 1000, 2)}
            for name, outcome, seconds in attempts.sent
        ]
    if attempts.tokens is not None:
        record["cached_tokens"] = attempts.tokens[2]
        record["cost_usd"] = round(attempts.cost_usd, 8)


async def _complete(
    request: ChatRequest,
    rt: Runtime,
    deadline: Deadline,
    receive: Receive,
    send: Send,
    record: dict[str, object],
    id_header: Header,
    attempts: pipeline.Attempts,
) -> None:
    watch = _DisconnectWatch(receive)
    try:
        async with asyncio.timeout(deadline.remaining()):
            completion, served = await pipeline.complete(request, rt, deadline, attempts)
    except TimeoutError:
        raise _deadline(deadline) from None
    except asyncio.CancelledError as exc:
        if watch.disconnected():
            record.update(status=499, error="client_disconnected")
            return
        if cut_by_drain(exc):  # shutdown: server.drain_seconds ran out before the answer
            raise cut_short() from None
        raise
    finally:
        watch.stop()
    payload = orjson.dumps(completion)
    record.update(
        status=200,
        upstream=served.upstream,
        upstream_request_id=served.upstream_request_id,
        attempts=served.attempts,
    )
    usage = completion.get("usage")
    if usage:
        record.update(
            prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"]
        )
    headers = [
        _JSON,
        (b"content-length", b"%d" % len(payload)),
        *_served_headers(served),
        id_header,
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _stream(
    request: ChatRequest,
    rt: Runtime,
    deadline: Deadline,
    receive: Receive,
    send: Send,
    record: dict[str, object],
    id_header: Header,
    attempts: pipeline.Attempts,
) -> None:
    server = rt.config.server
    watch = _DisconnectWatch(receive)
    keepalive: _KeepAlive | None = None
    stream: pipeline.Stream | None = None
    began = time.perf_counter()
    try:
        async with asyncio.timeout(deadline.remaining()):
            try:
                stream = await pipeline.open_stream(request, rt, deadline, attempts)
                served = stream.served
                record.update(
                    upstream=served.upstream,
                    upstream_request_id=served.upstream_request_id,
                    attempts=served.attempts,
                )
                headers = [*_SSE_HEADERS, *_served_headers(served), id_header]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                record["status"] = 200
                record["ttfb_ms"] = round((time.perf_counter() - began) * 1000, 2)
                await send(_more(_encode(stream.first)))
                keepalive = _KeepAlive(send, server.sse_keepalive)
                async for batch in stream:
                    keepalive.touch()
                    await send(_more(_encode(batch)))
                await keepalive.stop()
                await send(_more(DONE))
            finally:
                if stream is not None:
                    await stream.aclose()
                    usage = stream.decoder.usage
                    if usage:
                        record.update(
                            prompt_tokens=usage["prompt_tokens"],
                            completion_tokens=usage["completion_tokens"],
                        )
    except asyncio.CancelledError as exc:
        if keepalive is not None:
            keepalive.cancel()
        if watch.disconnected():
            record.update(status=499, error="client_disconnected")
            return
        if not cut_by_drain(exc):
            raise
        # Shutdown: server.drain_seconds ran out. Before the 200, a 503; after it, the error
        # event and the stream's end, as for an upstream failure after the first byte.
        cut = cut_short()
        if record["status"] != 200:
            raise cut from None
        if keepalive is not None:
            await keepalive.stop()  # a keep-alive comment being written goes first
        record["error"] = cut.code
        await send(_more(b"data: " + orjson.dumps(to_openai_error(cut)) + b"\n\n"))
    except (GatewayError, TimeoutError) as exc:
        if keepalive is not None:
            await keepalive.stop()
        error = exc if isinstance(exc, GatewayError) else _deadline(deadline)
        if record["status"] != 200:
            raise error from None
        # After the first byte the status is sent: the error becomes the stream's last event.
        record["error"] = error.code
        if stream is not None:
            rt.metrics.stream_error(stream.served.upstream, error)
        log.warning(
            "stream failed after first byte",
            extra={"request_id": record["request_id"], "reason": error.message},
        )
        await send(_more(b"data: " + orjson.dumps(to_openai_error(error)) + b"\n\n"))
    finally:
        watch.stop()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _encode(chunks: list[ChatCompletionChunk]) -> bytes:
    return b"".join([b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks])


def _more(body: bytes) -> Message:
    return {"type": "http.response.body", "body": body, "more_body": True}


def _served_headers(served: pipeline.Served) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"x-gateway-upstream", served.upstream.encode()),
        (b"x-gateway-attempts", served.attempts.encode()),
    ]
    upstream_id = served.upstream_request_id
    if upstream_id and upstream_id.isprintable() and len(upstream_id) <= 200:
        headers.append((b"x-upstream-request-id", upstream_id.encode("latin-1", "replace")))
    return headers


def _deadline(deadline: Deadline) -> GatewayError:
    return UpstreamTimeout(
        f"the request did not finish within its deadline ({deadline.seconds:g} s)"
    )


def _timeout(scope: Scope, default: float) -> float:
    """The request's deadline in seconds: `x-gateway-timeout` may shorten the default."""
    for key, value in scope["headers"]:
        if key == b"x-gateway-timeout":
            return requested_timeout({"x-gateway-timeout": value.decode("latin-1")}, default)
    return default


async def _read_body(scope: Scope, receive: Receive, server: ServerConfig) -> bytes:
    """The whole request body, refusing (413) as soon as it is known to exceed
    `server.max_body_bytes`, and (408) once the gateway's HTTP protocol (gateway/http.py)
    flags it stalled for `server.body_timeout` seconds and wakes this read."""
    limit = server.max_body_bytes
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise InvalidRequest("the content-length header is not a number") from None
            if declared > limit:
                raise _too_large(limit)
            break
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise _too_large(limit)
        parts.append(part)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if BODY_TIMED_OUT in scope:
            raise RequestTimeout(
                f"the request body stalled: no bytes for {server.body_timeout:g} s",
                headers={"connection": "close"},  # the rest of the body may still come
            )


class ClientDisconnected(Exception):
    """The client went away before its request was read."""


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"the request body exceeds the gateway's limit of {limit} bytes")


async def send_error(send: Send, exc: GatewayError, id_header: Header) -> None:
    """Send `exc` as a complete JSON response in OpenAI's error envelope."""
    payload = orjson.dumps(to_openai_error(exc))
    headers = [_JSON, (b"content-length", b"%d" % len(payload)), id_header]
    headers += [(k.encode(), v.encode("latin-1")) for k, v in exc.headers.items()]
    if not exc.retryable:
        headers.append(_NO_RETRY)
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class _DisconnectWatch:
    """Cancels the handler's task when the client goes away, so the upstream call stops too."""

    __slots__ = ("_done", "_gone", "_task", "_watcher")

    def __init__(self, receive: Receive) -> None:
        self._task = asyncio.current_task()
        self._done = False
        self._gone = False
        self._watcher = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self._done and self._task is not None:
                    self._gone = True
                    self._task.cancel()
                return

    def disconnected(self) -> bool:
        """True if the watch cancelled the task; the cancellation is then taken back."""
        if self._gone and self._task is not None:
            self._task.uncancel()
            return True
        return False

    def stop(self) -> None:
        self._done = True
        self._watcher.cancel()


class _KeepAlive:
    """Sends an SSE comment when nothing was sent for `interval` seconds (0 = never)."""

    __slots__ = ("_handle", "_interval", "_last", "_loop", "_pending", "_send")

    def __init__(self, send: Send, interval: float) -> None:
        self._send = send
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._pending: asyncio.Task[None] | None = None
        self._handle = self._loop.call_later(interval, self._tick) if interval else None

    def touch(self) -> None:
        self._last = self._loop.time()

    def _tick(self) -> None:
        now = self._loop.time()
        if now - self._last >= self._interval and (self._pending is None or self._pending.done()):
            self._last = now
            self._pending = self._loop.create_task(self._send(_more(KEEPALIVE)))
        self._handle = self._loop.call_at(self._last + self._interval, self._tick)

    async def stop(self) -> None:
        self.cancel()
        if self._pending is not None and not self._pending.done():
            await self._pending

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
