"""/healthz: the process answers (never checks upstreams). /readyz: some upstream is usable."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.responses import json_response
from gateway.runtime import Runtime


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    rt: Runtime | None = getattr(request.app.state, "runtime", None)
    usable = [u.name for u in rt.upstreams.values() if u.unusable is None] if rt else []
    status = 200 if usable else 503
    return json_response(
        {"status": "ready" if usable else "not ready", "upstreams": usable}, status
    )
