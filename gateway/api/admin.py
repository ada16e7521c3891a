"""The admin API under `/admin`: look at every upstream, switch it on and off, connect,
disconnect and test it, read token usage and cost, and reload the config.

The API exists only when the config sets `auth.admin_key`; without one every `/admin` path
answers the 404 of a route that does not exist. With one, every request must send it as
`Authorization: Bearer <key>` (else 401, before any routing, so a caller without the key
cannot tell which paths exist). The key is compared in constant time over SHA-256 digests (the
same length whatever was sent), and it is read from the runtime on each request, so a reload
that changes it takes effect at once. Every action is logged on `gateway.admin` with who did it
(the key's fingerprint, never the key) and what.

Actions are plain assignments or the connection manager's transitions (`Prober.connect`,
`Prober.disconnect`), so routing sees them with the next request. `test` sends one short prompt
to one upstream directly through its client: no chain, breaker, limiter, retries, metrics or
usage, so an operator can try a disabled or unhealthy upstream without touching its traffic.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypedDict

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.responses import json_response
from gateway.auth import fingerprint
from gateway.config import ConfigError, Secret, Target
from gateway.errors import AuthenticationFailed, GatewayError, InvalidRequest, NotFound
from gateway.reload import reloader_of
from gateway.request_parser import decode_json, parse_chat_request
from gateway.runtime import Runtime
from gateway.upstreams.registry import Upstream

log = logging.getLogger("gateway.admin")

TEST_PROMPT = "Reply with the single word: pong"
_TEST_TIMEOUT = 60.0  # seconds at most for `test`, below the server's request_timeout
_REPLY_CHARS = 2000  # longest reply text `test` returns


class UnknownUpstream(NotFound):
    code = "upstream_not_found"


class ConfigRejected(InvalidRequest):
    code = "config_invalid"


class HealthView(TypedDict):
    last_success: float | None
    last_error_at: float | None
    last_error: str | None
    latency_ms: float | None
    models: list[str]
    consecutive_failures: int
    checks: int


class BreakerView(TypedDict):
    state: str
    rejections: int
    retry_after: float


class PoolView(TypedDict):
    active: int
    idle: int
    waiting: int
    max_connections: int


class UpstreamView(TypedDict):
    name: str
    provider: str
    configured: bool
    enabled: bool
    state: str
    state_reason: str
    health: HealthView
    breaker: BreakerView
    in_flight: int
    pool: PoolView
    limiter: dict[str, float | int | None]
    last_used: float | None
    requests: int  # attempts sent to it (this process, since start)
    errors: int  # of those, failed by its fault
    p50_ms: float | None
    models: list[str]  # the public models it serves


class UpstreamTest(TypedDict):
    upstream: str
    model: str
    ok: bool
    status: int | None  # the upstream's HTTP status; None when it did not answer
    latency_ms: float
    reply: str | None
    error: str | None


# ---------------------------------------------------------------- access


def _presented(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class AdminGate:
    """Checks the admin key before the admin router sees a request (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rt: Runtime = scope["app"].state.runtime
        expected: Secret | None = rt.config.auth.admin_key
        if not expected:
            raise HTTPException(404)  # rendered as the app's own "no route" answer
        given = _presented(scope)
        digest = hashlib.sha256((given or "").encode()).digest()
        wanted = hashlib.sha256(expected.reveal().encode()).digest()
        if given is None or not hmac.compare_digest(digest, wanted):
            raise AuthenticationFailed(
                "the admin API needs the admin key as 'Authorization: Bearer <key>'"
                if given is None
                else "the admin key is wrong",
                headers={"www-authenticate": 'Bearer realm="gateway admin"'},
            )
        scope["gateway.admin"] = fingerprint(digest)  # who, for the audit log; never the key
        await self.app(scope, receive, send)


def _audit(request: Request, action: str, **fields: object) -> None:
    log.info(
        "admin %s",
        action,
        extra={
            "admin": request.scope.get("gateway.admin"),
            "action": action,
            "client": request.client.host if request.client else None,
            "request_id": request.scope.get("gateway.request_id"),
            **fields,
        },
    )


# ---------------------------------------------------------------- views


def _runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def _upstream(rt: Runtime, request: Request) -> Upstream:
    name: str = request.path_params["name"]
    upstream = rt.upstreams.get(name)
    if upstream is None:
        raise UnknownUpstream(f"no upstream named '{name}'", param="name")
    return upstream


def _int(value: float | None) -> int:
    return int(value or 0)


def _view(rt: Runtime, upstream: Upstream) -> UpstreamView:
    name = upstream.name
    guards = rt.guards[name]
    health = upstream.health
    pool = rt.clients.pool_stats(name)
    summary = rt.metrics.upstream_summary(name)
    return {
        "name": name,
        "provider": upstream.provider,
        "configured": upstream.config.configured,
        "enabled": upstream.enabled,
        "state": upstream.state.value,
        "state_reason": upstream.state_reason,
        "health": {
            "last_success": health.last_success,
            "last_error_at": health.last_error_at,
            "last_error": health.last_error,
            "latency_ms": health.latency_ms,
            "models": list(health.models),
            "consecutive_failures": health.consecutive_failures,
            "checks": health.checks,
        },
        "breaker": {
            "state": guards.breaker.state,
            "rejections": guards.breaker.rejections,
            "retry_after": guards.breaker.retry_after(),
        },
        "in_flight": upstream.in_flight,
        "pool": {
            "active": pool.active,
            "idle": pool.idle,
            "waiting": pool.waiting,
            "max_connections": pool.max_connections,
        },
        "limiter": guards.limiter.snapshot(),
        "last_used": upstream.last_used,
        "requests": _int(summary["requests"]),
        "errors": _int(summary["errors"]),
        "p50_ms": summary["p50_ms"],
        "models": [
            model
            for model, targets in rt.config.models.items()
            if any(t.upstream == name for t in targets)
        ],
    }


async def list_upstreams(request: Request) -> Response:
    rt = _runtime(request)
    views = [_view(rt, u) for u in rt.upstreams.values()]
    return json_response({"object": "list", "now": time.time(), "data": views})


async def get_upstream(request: Request) -> Response:
    rt = _runtime(request)
    return json_response(_view(rt, _upstream(rt, request)))


# ---------------------------------------------------------------- actions


async def enable(request: Request) -> Response:
    rt = _runtime(request)
    upstream = _upstream(rt, request)
    upstream.enabled = True
    rt.guards[upstream.name].limiter.resume()  # an operator's word beats a 429's pause
    _audit(request, "enable", upstream=upstream.name)
    return json_response(_view(rt, upstream))


async def disable(request: Request) -> Response:
    rt = _runtime(request)
    upstream = _upstream(rt, request)
    upstream.enabled = False
    _audit(request, "disable", upstream=upstream.name)
    return json_response(_view(rt, upstream))


async def connect(request: Request) -> Response:
    """Reopen the upstream's client and probe it: `connected` if the probe passed, else
    `unhealthy` (`state_reason` and `health.last_error` say why). Answers 200 either way."""
    async with reloader_of(request.app).lock:  # never on a runtime a reload is replacing
        rt = _runtime(request)
        upstream = _upstream(rt, request)
        _audit(request, "connect", upstream=upstream.name)
        await rt.prober.connect(upstream.name)
    return json_response(_view(rt, upstream))


async def disconnect(request: Request) -> Response:
    """Stop new traffic at once, wait for its requests in flight (30 s at most), then close
    its client. Answers once it is `disconnected`."""
    async with reloader_of(request.app).lock:  # never on a runtime a reload is replacing
        rt = _runtime(request)
        upstream = _upstream(rt, request)
        _audit(request, "disconnect", upstream=upstream.name)
        await rt.prober.disconnect(upstream.name)
    return json_response(_view(rt, upstream))


async def test_upstream(request: Request) -> Response:
    """One short prompt to this upstream alone. The JSON body may set `prompt` and `model`
    (the upstream's model name; default: its first target in the config). Answers 200 with an
    `UpstreamTest` (whether or not the upstream served it); 400 if there is no model to ask."""
    rt = _runtime(request)
    upstream = _upstream(rt, request)
    options = await _options(request)
    prompt = _text_option(options, "prompt") or TEST_PROMPT
    model = _text_option(options, "model")
    target = _target(rt, upstream, model)
    public = next(
        (m for m, ts in rt.config.models.items() if target in ts), target.model
    )  # the name a completion is labelled with
    body = {"model": public, "messages": [{"role": "user", "content": prompt}]}
    chat = parse_chat_request(orjson.dumps(body), created=int(time.time()))
    translator = upstream.translator
    status: int | None = None
    reply: str | None = None
    error: str | None = None
    started = time.monotonic()
    try:
        async with asyncio.timeout(min(rt.config.server.request_timeout, _TEST_TIMEOUT)):
            answer = await rt.clients.send(
                upstream.name, translator.build_request(chat, target, upstream.config)
            )
            try:
                raw = await answer.read()
            finally:
                await answer.aclose()
        status = answer.status
        if not 200 <= status < 300:
            raise translator.parse_error(
                status, answer.headers, raw, upstream.name, upstream.secrets
            )
        completion = translator.parse_response(raw, chat, upstream.name)
        choices = completion.get("choices") or []
        content = choices[0]["message"].get("content") if choices else None
        reply = (content if isinstance(content, str) else "")[:_REPLY_CHARS]
    except TimeoutError:
        error = f"upstream '{upstream.name}' did not answer within the test's time limit"
    except GatewayError as exc:
        error = exc.message  # translators redact upstream secrets
    latency = round((time.monotonic() - started) * 1000.0, 1)
    result: UpstreamTest = {
        "upstream": upstream.name,
        "model": target.model,
        "ok": error is None,
        "status": status,
        "latency_ms": latency,
        "reply": reply,
        "error": error,
    }
    _audit(request, "test", upstream=upstream.name, model=target.model, ok=error is None)
    return json_response(result)


async def _options(request: Request) -> dict[str, object]:
    raw = await request.body()
    if not raw.strip():
        return {}
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return data


def _text_option(options: dict[str, object], name: str) -> str | None:
    value = options.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"'{name}' must be a non-empty string", param=name)
    return value


def _target(rt: Runtime, upstream: Upstream, model: str | None) -> Target:
    for targets in rt.config.models.values():
        for target in targets:
            if target.upstream == upstream.name and (model is None or target.model == model):
                return target
    if model is not None:
        return Target(upstream=upstream.name, model=model)
    raise InvalidRequest(
        f"upstream '{upstream.name}' serves no model in the config: name one as 'model'",
        param="model",
    )


# ---------------------------------------------------------------- usage and reload


async def usage(request: Request) -> Response:
    rt = _runtime(request)
    return json_response({"since": rt.started, **rt.usage.snapshot()})


async def reload(request: Request) -> Response:
    """Re-read the config file the gateway runs from. 400 `config_invalid` (nothing changed)
    with every problem on a line of its own in the message; else 200 with what changed."""
    from gateway.reload import reload as reload_config  # imports the config machinery late

    before = _runtime(request).config
    _audit(request, "reload", source=before.source)
    try:
        after = await reload_config(request.app)
    except ConfigError as exc:
        raise ConfigRejected("the config was not reloaded:\n" + "\n".join(exc.errors)) from None
    old, new = before.upstreams, after.upstreams
    return json_response(
        {
            "reloaded": True,
            "source": after.source,
            "upstreams": sorted(new),
            "models": sorted(after.models),
            "added": sorted(set(new) - set(old)),
            "removed": sorted(set(old) - set(new)),
            "changed": sorted(n for n in set(old) & set(new) if old[n] != new[n]),
        }
    )


# ---------------------------------------------------------------- routes

Handler = Callable[[Request], Awaitable[Response]]


def _action(path: str, handler: Handler) -> Route:
    return Route(f"/upstreams/{{name:path}}/{path}", handler, methods=["POST"])


def mount() -> Mount:
    """The admin API, to be routed at `/admin` by the app."""
    return Mount(
        "/admin",
        app=AdminGate(
            Router(
                [
                    Route("/upstreams", list_upstreams, methods=["GET"]),
                    _action("enable", enable),
                    _action("disable", disable),
                    _action("connect", connect),
                    _action("disconnect", disconnect),
                    _action("test", test_upstream),
                    Route("/upstreams/{name:path}", get_upstream, methods=["GET"]),
                    Route("/usage", usage, methods=["GET"]),
                    Route("/reload", reload, methods=["POST"]),
                ]
            )
        ),
    )
