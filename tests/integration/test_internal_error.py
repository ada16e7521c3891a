"""A bug of ours is a 500 that names the request id; the traceback goes to the log only."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.spec import validate


class ExplodingTransport(httpx.AsyncBaseTransport):
    """Raises something no error table knows: stands in for a bug in the gateway."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise RuntimeError("secret internal detail sk-should-not-leak-123456")


CONFIG = {
    "upstreams": {"up": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1"}},
    "models": {"m": [{"upstream": "up", "model": "m"}]},
}


@pytest.mark.parametrize("stream", [False, True])
def test_unexpected_exception_is_a_500_naming_the_request_id(gateway_server, caplog, stream):
    gateway = gateway_server(CONFIG, transports={"up": ExplodingTransport()})
    with caplog.at_level(logging.ERROR), httpx.Client(timeout=10) as client:
        reply = client.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "m", "stream": stream, "messages": [{"role": "user", "content": "x"}]},
            headers={"x-request-id": "bug-report-42"},
        )
    assert reply.status_code == 500
    validate("ErrorResponse", reply.json())
    error = reply.json()["error"]
    assert error["type"] == "server_error"
    assert "bug-report-42" in error["message"]
    assert "secret internal detail" not in reply.text
    assert "RuntimeError" not in reply.text
    assert reply.headers["x-request-id"] == "bug-report-42"
    logged = [r for r in caplog.records if r.name == "gateway.request" and r.exc_info]
    assert logged, "the traceback must be logged"
    assert getattr(logged[0], "request_id", None) == "bug-report-42"
