"""gateway/upstreams/clients.py: the httpx path under respx, the native pool against a real server.

Every test runs its own event loop with `asyncio.run()`, and closes every client and server it
opens before the loop ends.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import respx
from aiohttp import web

from gateway.config import PoolLimits, Secret, Target, Timeouts, UpstreamConfig, parse_config
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout
from gateway.providers.base import UpstreamRequest
from gateway.providers.openai import OPENAI
from gateway.request_parser import parse_chat_request
from gateway.upstreams.clients import Clients, UpstreamResponse

KEY = "sk-clients-test-0123456789"
BODY = {"model": "public", "messages": [{"role": "user", "content": "hi"}], "x_extra": 1}
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "target",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
}


def upstream(base_url: str, **settings: Any) -> UpstreamConfig:
    fields: dict[str, Any] = {
        "provider": "openai",
        "base_url": base_url,
        "api_key": Secret(KEY),
        "headers": {"x-org": "org-1"},
        **settings,
    }
    return UpstreamConfig(**fields)


def chat_request(config: UpstreamConfig) -> UpstreamRequest:
    request = parse_chat_request(json.dumps(BODY).encode(), {"x-client-trace": "t-1"})
    return OPENAI.build_request(request, Target(upstream="up", model="target"), config)


async def send_and_read(clients: Clients, request: UpstreamRequest) -> tuple[int, bytes, Any]:
    reply = await clients.send("up", request)
    try:
        return reply.status, await reply.read(), reply.headers
    finally:
        await reply.aclose()


async def pieces(reply: UpstreamResponse) -> AsyncIterator[bytes]:
    """The body as `receive()` hands it out, until its end (b"")."""
    while chunk := await reply.receive():
        yield chunk


# ---------------------------------------------------------------- httpx (respx)

HTTPX_URL = "https://api.upstream.test/v1"


def test_a_config_with_transport_httpx_sends_the_request_and_reads_the_body():
    config = parse_config(
        "upstreams:\n  up:\n    provider: openai\n    base_url: https://api.upstream.test/v1\n"
        "    api_key: ${KEY}\n    transport: httpx\n    headers: {x-org: org-1}\n",
        environ={"KEY": KEY},
    )
    outgoing = chat_request(config.upstreams["up"])

    async def main() -> tuple[int, bytes, Any]:
        with respx.mock(assert_all_called=True) as router:
            route = router.post(f"{HTTPX_URL}/chat/completions").mock(
                return_value=httpx.Response(200, json=COMPLETION, headers={"x-request-id": "up-1"})
            )
            clients = await Clients.open(config.upstreams)
            try:
                result = await send_and_read(clients, outgoing)
            finally:
                await clients.aclose()
            assert route.call_count == 1
            sent = route.calls.last.request
            assert sent.method == "POST"
            assert str(sent.url) == f"{HTTPX_URL}/chat/completions"
            assert sent.headers["authorization"] == f"Bearer {KEY}"
            assert sent.headers["content-type"] == "application/json"
            assert sent.headers["accept"] == "application/json"
            assert sent.headers["user-agent"] == "llm-gateway"
            assert sent.headers["x-org"] == "org-1"
            assert sent.headers["x-client-trace"] == "t-1"
            assert json.loads(sent.content) == {**BODY, "model": "target"}
            return result

    status, body, headers = asyncio.run(main())

    assert status == 200
    assert json.loads(body) == COMPLETION
    assert headers["X-Request-Id"] == "up-1"  # case-insensitive


def test_an_injected_transport_replaces_the_network():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, content=b"created")

    config = upstream("http://127.0.0.1:9/v1")  # would be the native pool without the transport
    outgoing = chat_request(config)

    async def main() -> tuple[int, bytes, Any]:
        clients = await Clients.open(
            {"up": config}, transports={"up": httpx.MockTransport(handler)}
        )
        try:
            return await send_and_read(clients, outgoing)
        finally:
            await clients.aclose()

    status, body, _ = asyncio.run(main())

    assert (status, body) == (201, b"created")
    assert [str(r.url) for r in seen] == ["http://127.0.0.1:9/v1/chat/completions"]


def test_a_streamed_body_arrives_in_chunks_through_httpx():
    config = upstream(HTTPX_URL, transport="httpx")
    events = [b'data: {"a": 1}\n\n', b"data: [DONE]\n\n"]

    async def main() -> bytes:
        with respx.mock() as router:
            router.post(f"{HTTPX_URL}/chat/completions").mock(
                return_value=httpx.Response(200, stream=httpx.ByteStream(b"".join(events)))
            )
            clients = await Clients.open({"up": config})
            try:
                reply = await clients.send("up", chat_request(config))
                try:
                    return b"".join([chunk async for chunk in pieces(reply)])
                finally:
                    await reply.aclose()
            finally:
                await clients.aclose()

    assert asyncio.run(main()) == b"".join(events)


@pytest.mark.parametrize(
    ("exception", "kind", "status", "code"),
    [
        (httpx.ConnectError("refused"), UpstreamError, 502, "upstream_unreachable"),
        (httpx.ConnectTimeout("slow"), UpstreamTimeout, 504, "upstream_timeout"),
        (httpx.ReadTimeout("slow"), UpstreamTimeout, 504, "upstream_timeout"),
        (httpx.PoolTimeout("full"), UpstreamTimeout, 504, "upstream_timeout"),
        (httpx.RemoteProtocolError("bad"), UpstreamError, 502, "upstream_connection_error"),
        (httpx.ReadError("reset"), UpstreamError, 502, "upstream_connection_error"),
    ],
)
def test_httpx_network_errors_become_gateway_errors(exception, kind, status, code):
    config = upstream(HTTPX_URL, transport="httpx")

    async def main() -> GatewayError:
        with respx.mock() as router:
            router.post(f"{HTTPX_URL}/chat/completions").mock(side_effect=exception)
            clients = await Clients.open({"up": config})
            try:
                with pytest.raises(GatewayError) as info:
                    await clients.send("up", chat_request(config))
            finally:
                await clients.aclose()
        return info.value

    error = asyncio.run(main())

    assert type(error) is kind
    assert error.status == status
    assert error.code == code
    assert error.fallback
    assert "'up'" in error.message
    assert KEY not in error.message
    assert "upstream.test" not in error.message  # names no URL


def test_httpx_does_not_follow_redirects():
    config = upstream(HTTPX_URL, transport="httpx")

    async def main() -> tuple[int, Any, int]:
        with respx.mock(assert_all_called=False) as router:
            router.post(f"{HTTPX_URL}/chat/completions").mock(
                return_value=httpx.Response(302, headers={"location": "https://evil.test/steal"})
            )
            elsewhere = router.route(host="evil.test").mock(return_value=httpx.Response(200))
            clients = await Clients.open({"up": config})
            try:
                status, _, headers = await send_and_read(clients, chat_request(config))
            finally:
                await clients.aclose()
            return status, headers, elsewhere.call_count

    status, headers, redirected = asyncio.run(main())

    assert status == 302
    assert headers["location"] == "https://evil.test/steal"
    assert redirected == 0


def test_httpx_pool_stats_report_the_configured_limit():
    config = upstream(HTTPX_URL, transport="httpx", pool=PoolLimits(max_connections=7))

    async def main() -> Any:
        clients = await Clients.open({"up": config})
        try:
            return clients.pool_stats("up")
        finally:
            await clients.aclose()

    stats = asyncio.run(main())

    assert (stats.active, stats.idle, stats.waiting, stats.max_connections) == (0, 0, 0, 7)


# ---------------------------------------------------------------- native pool (a real server)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer: Any


@dataclass
class Server:
    url: str
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)


Handler = Callable[[web.Request, Server], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[Server]:
    """An aiohttp.web server on 127.0.0.1:0 that records every request and calls `handler`."""
    state = Server(url="")

    async def record(request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        state.seen.append(
            Seen(request.method, request.path, dict(request.headers), await request.read(), peer)
        )
        async with state.arrived:
            state.arrived.notify_all()
        return await handler(request, state)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        state.url = f"http://{host}:{port}/v1"
        yield state
    finally:
        state.release.set()
        await runner.cleanup()


async def json_completion(request: web.Request, server: Server) -> web.StreamResponse:
    return web.json_response(COMPLETION, headers={"x-request-id": "up-7"})


async def held_until_released(request: web.Request, server: Server) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"data: first\n\n")
    await server.release.wait()
    try:
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client gave up on this body (the tests that abandon it)
    return response


def test_native_round_trip_carries_method_url_headers_and_body():
    async def main() -> tuple[int, bytes, Any, list[Seen]]:
        async with serve(json_completion) as server:
            config = upstream(server.url)
            clients = await Clients.open({"up": config})
            try:
                status, body, headers = await send_and_read(clients, chat_request(config))
            finally:
                await clients.aclose()
            return status, body, headers, server.seen

    status, body, headers, seen = asyncio.run(main())

    assert status == 200
    assert json.loads(body) == COMPLETION
    assert headers["X-Request-Id"] == "up-7"
    (request,) = seen
    assert request.method == "POST"
    assert request.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["User-Agent"] == "llm-gateway"
    assert request.headers["x-org"] == "org-1"
    assert request.headers["x-client-trace"] == "t-1"
    assert json.loads(request.body) == {**BODY, "model": "target"}


def test_native_streams_the_body_in_chunks():
    async def main() -> bytes:
        async with serve(held_until_released) as server:
            config = upstream(server.url)
            clients = await Clients.open({"up": config})
            try:
                reply = await clients.send("up", chat_request(config))
                try:
                    received = b""
                    async for chunk in pieces(reply):
                        received += chunk
                        if b"first\n\n" in received:
                            server.release.set()  # the first event came before the rest exists
                    return received
                finally:
                    await reply.aclose()
            finally:
                await clients.aclose()

    assert asyncio.run(main()) == b"data: first\n\ndata: [DONE]\n\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_native_connection_refused_is_upstream_unreachable():
    config = upstream(f"http://127.0.0.1:{free_port()}/v1")

    async def main() -> GatewayError:
        clients = await Clients.open({"up": config})
        try:
            with pytest.raises(GatewayError) as info:
                await clients.send("up", chat_request(config))
        finally:
            await clients.aclose()
        return info.value

    error = asyncio.run(main())

    assert type(error) is UpstreamError
    assert error.status == 502
    assert error.code == "upstream_unreachable"
    assert error.message == "upstream 'up' is unreachable"


def test_native_read_timeout_is_upstream_timeout():
    async def main() -> GatewayError:
        async with serve(held_until_released) as server:
            config = upstream(server.url, timeouts=Timeouts(read=0.05))
            clients = await Clients.open({"up": config})
            try:
                reply = await clients.send("up", chat_request(config))
                try:
                    with pytest.raises(GatewayError) as info:
                        async for _ in pieces(reply):
                            pass
                finally:
                    await reply.aclose()
            finally:
                await clients.aclose()
            return info.value

    error = asyncio.run(main())

    assert type(error) is UpstreamTimeout
    assert error.status == 504


def test_native_does_not_follow_redirects():
    async def redirect(request: web.Request, server: Server) -> web.StreamResponse:
        if request.path.endswith("/chat/completions"):
            return web.Response(status=302, headers={"location": "/elsewhere"})
        return web.Response(text="followed")

    async def main() -> tuple[int, Any, list[str]]:
        async with serve(redirect) as server:
            config = upstream(server.url)
            clients = await Clients.open({"up": config})
            try:
                status, _, headers = await send_and_read(clients, chat_request(config))
            finally:
                await clients.aclose()
            return status, headers, [s.path for s in server.seen]

    status, headers, paths = asyncio.run(main())

    assert status == 302
    assert headers["location"] == "/elsewhere"
    assert paths == ["/v1/chat/completions"]


def test_native_pool_stats_show_active_then_idle_connections():
    async def main() -> list[tuple[int, int]]:
        async with serve(held_until_released) as server:
            config = upstream(server.url)
            clients = await Clients.open({"up": config})
            observed = [_counts(clients)]
            try:
                reply = await clients.send("up", chat_request(config))
                try:
                    observed.append(_counts(clients))  # headers in, body still open
                    server.release.set()
                    await reply.read()
                    observed.append(_counts(clients))  # body read: back in the pool
                finally:
                    await reply.aclose()
                observed.append(_counts(clients))
                status, _, _ = await send_and_read(clients, chat_request(config))
                assert status == 200
                observed.append(_counts(clients))
                assert len({s.peer for s in server.seen}) == 1  # the idle connection was reused
                assert clients.pool_stats("up").max_connections == 100
            finally:
                await clients.aclose()
            return observed

    assert asyncio.run(main()) == [(0, 0), (1, 0), (0, 1), (0, 1), (0, 1)]


def test_native_closes_a_connection_whose_body_was_not_read():
    async def main() -> tuple[int, int]:
        async with serve(held_until_released) as server:
            config = upstream(server.url)
            clients = await Clients.open({"up": config})
            try:
                reply = await clients.send("up", chat_request(config))
                await reply.aclose()  # abandoned mid-body
                return _counts(clients)
            finally:
                await clients.aclose()

    assert asyncio.run(main()) == (0, 0)


def _counts(clients: Clients) -> tuple[int, int]:
    stats = clients.pool_stats("up")
    return stats.active, stats.idle


@pytest.mark.parametrize("max_keepalive", [0, 1, 2])
def test_native_idle_connections_are_capped_at_max_keepalive(max_keepalive):
    concurrent = 4

    async def all_arrived(request: web.Request, server: Server) -> web.StreamResponse:
        async with server.arrived:
            await server.arrived.wait_for(lambda: len(server.seen) >= concurrent)
        return web.json_response(COMPLETION)

    async def main() -> tuple[list[tuple[int, int]], int]:
        async with serve(all_arrived) as server:
            config = upstream(server.url, pool=PoolLimits(max_keepalive=max_keepalive))
            clients = await Clients.open({"up": config})
            try:
                results = await asyncio.gather(
                    *(send_and_read(clients, chat_request(config)) for _ in range(concurrent))
                )
                assert [status for status, _, _ in results] == [200] * concurrent
                after = [_counts(clients)]
                # the kept connections still work
                await send_and_read(clients, chat_request(config))
                after.append(_counts(clients))
                peers = len({s.peer for s in server.seen})
            finally:
                await clients.aclose()
            return after, peers

    after, peers = asyncio.run(main())

    assert after == [(0, max_keepalive), (0, max_keepalive)]
    assert peers == concurrent + (1 if max_keepalive == 0 else 0)
