"""/healthz: the process answers (never checks upstreams; stays 200 while draining, so that a
liveness probe does not restart an instance that is shutting down cleanly). /readyz: the config
is loaded and some upstream is usable, and the gateway is not draining for shutdown (from the
moment SIGTERM arrives it is 503 "draining", so the load balancer stops sending traffic)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.responses import json_response
from gateway.lifecycle import Lifecycle
from gateway.runtime import Runtime


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    rt: Runtime | None = getattr(request.app.state, "runtime", None)
    usable = [u.name for u in rt.upstreams.values() if u.unusable is None] if rt else []
    lifecycle: Lifecycle | None = getattr(request.app, "lifecycle", None)
    if lifecycle is not None and lifecycle.draining:
        return json_response({"status": "draining", "upstreams": usable}, 503)
    status = 200 if usable else 503
    return json_response(
        {"status": "ready" if usable else "not ready", "upstreams": usable}, status
    )
