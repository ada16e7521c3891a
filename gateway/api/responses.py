"""JSON responses for the Starlette-routed endpoints, errors in OpenAI's envelope included."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from gateway.errors import GatewayError, to_openai_error


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def json_response(content: object, status: int = 200) -> Response:
    return JSONResponse(content, status_code=status)


def error_response(exc: GatewayError) -> Response:
    headers = dict(exc.headers)
    if not exc.retryable:
        headers["x-should-retry"] = "false"
    return JSONResponse(to_openai_error(exc), status_code=exc.status, headers=headers)
