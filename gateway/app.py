"""The ASGI application: routes, the request-id middleware, error rendering and the lifespan.

`create_app(config)` opens a `Runtime` (upstream clients and state) in its lifespan and closes it
at shutdown; a test may pass its own `runtime` (then the test closes it) or `transports` that
replace upstreams' networks. Every error leaves as OpenAI's envelope, each response carries
`x-request-id`, and an unexpected exception becomes a 500 naming the request id while its
traceback goes to the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import __version__
from gateway.api import admin
from gateway.api.chat import chat_completions, send_error
from gateway.api.health import healthz, readyz
from gateway.api.metrics import metrics
from gateway.api.models import list_models, retrieve_model
from gateway.api.responses import error_response
from gateway.config import Config
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    internal_error,
)
from gateway.lifecycle import (
    ALWAYS_SERVED,
    Lifecycle,
    cut_by_drain,
    cut_short,
    install_sigterm,
    refusal,
)
from gateway.logs import request_id_of
from gateway.reload import Reloader, install_sighup
from gateway.runtime import Runtime

log = logging.getLogger("gateway")


class RequestIdMiddleware:
    """Gives every request an id (the client's `x-request-id` if sane) and every response it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope["headers"])
        scope["gateway.request_id"] = request_id
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: GatewayError
    if exc.status_code == 404:
        error = NotFound(f"no route for {request.method} {request.url.path}")
    elif exc.status_code == 405:
        error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        error.headers.update(exc.headers or {})
    else:
        error = InvalidRequest(exc.detail, status=exc.status_code)
    return error_response(error)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc)


async def _unexpected(request: Request, exc: Exception) -> Response:
    request_id = request.scope.get("gateway.request_id", "unknown")
    log.error("unexpected error", exc_info=exc, extra={"request_id": request_id})
    response = error_response(internal_error(request_id))
    response.headers["x-request-id"] = request_id
    return response


CHAT_PATH = "/v1/chat/completions"


class Gateway(Starlette):
    """Starlette, with the chat route dispatched before the middleware stack and router.

    The chat endpoint renders its own errors and request ids, so it skips the layers every
    other route needs; each layer costs every request (see bench/). While the gateway drains
    for shutdown (`lifecycle`, gateway/lifecycle.py) every route but the probes and metrics
    answers 503; chat requests are tracked, so that the drain can wait for them and cut them.
    """

    lifecycle: Lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            lifecycle = self.lifecycle
            if lifecycle.draining and scope["path"] not in ALWAYS_SERVED:
                await _refuse(scope, send)
                return
            if scope["path"] == CHAT_PATH:
                task = asyncio.current_task()
                assert task is not None
                in_flight = lifecycle.in_flight
                in_flight.add(task)
                try:
                    await chat_completions(scope, receive, send, self.state.runtime)
                except asyncio.CancelledError as exc:
                    if not cut_by_drain(exc):
                        raise
                    await _cut_early(scope, send)
                finally:
                    in_flight.discard(task)
                    if lifecycle.draining:
                        lifecycle.idle()
                return
        await super().__call__(scope, receive, send)


async def _refuse(scope: Scope, send: Send) -> None:
    """A request that arrived while draining: 503 `shutting_down`, and the connection closes."""
    await send_error(send, refusal(), (b"x-request-id", request_id_of(scope["headers"]).encode()))


async def _cut_early(scope: Scope, send: Send) -> None:
    """The drain cut a chat request outside the endpoint's own handling of it (still reading
    its body, or writing its last bytes): the 503 if no response began, else nothing more
    (uvicorn refuses the message, and closes the connection of an unfinished response)."""
    with contextlib.suppress(RuntimeError):
        await send_error(
            send, cut_short(), (b"x-request-id", request_id_of(scope["headers"]).encode())
        )


def create_app(
    config: Config,
    runtime: Runtime | None = None,
    transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
) -> Gateway:
    """The gateway as an ASGI app. Its lifespan owns the runtime unless one is passed in."""
    lifecycle = Lifecycle()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if runtime is not None:
            app.state.runtime = runtime
            yield
            return
        opened = await Runtime.open(config, transports)
        app.state.runtime = opened
        log.info(
            "gateway ready",
            extra={
                "version": __version__,
                "config": config.source,
                "models": len(config.models),
                "upstreams": ",".join(
                    f"{u.name}({'ok' if u.unusable is None else 'unconfigured'})"
                    for u in opened.upstreams.values()
                ),
            },
        )
        # A reload (gateway/reload.py) swaps app.state.runtime and moves the probes onto it.
        reloader = app.state.reloader = Reloader()
        reloader.start_probes(opened)
        uninstall_sighup = install_sighup(app)  # under `gateway serve` only (the main thread)
        # SIGTERM drains, then hands over to uvicorn's shutdown (gateway/lifecycle.py); likewise.
        uninstall_sigterm = install_sigterm(lifecycle, lambda: app.state.runtime)
        try:
            yield
        finally:
            uninstall_sigterm()
            await lifecycle.aclose()
            uninstall_sighup()
            await reloader.aclose()  # the probes, and old runtimes' drains: closes their clients
            await app.state.runtime.aclose()

    routes = [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        admin.mount(),  # /admin/...: only with auth.admin_key
    ]
    handlers: dict[Any, Any] = {
        HTTPException: _http_error,
        GatewayError: _gateway_error,
        Exception: _unexpected,
    }
    app = Gateway(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.lifecycle = lifecycle
    if runtime is not None:
        app.state.runtime = runtime
    app.add_middleware(RequestIdMiddleware)
    return app
