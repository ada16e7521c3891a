"""GET /metrics: the Prometheus scrape of the app's own registry (see gateway/metrics.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.runtime import Runtime


async def metrics(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    body, content_type = rt.metrics.render()
    return Response(body, headers={"content-type": content_type, "cache-control": "no-store"})
