"""A client that goes away: the gateway cancels the upstream call and frees its connection.

The client is httpx's async client in a task that is cancelled (httpx then closes the
connection) once the fake upstream has the request, or a stream whose `with` block is left
early. The fake sees its request's connection closed (`wait_disconnected`), and the gateway
goes on serving, also with a pool of two connections after more disconnects than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from tests import spec
from tests.conftest import GatewayServer, StartGateway
from tests.fakes.openai_upstream import FakeOpenAI, RecordedRequest, Reply
from tests.integration.conftest import (
    CHAT,
    async_http,
    chat_body,
    request_log,
    serve,
    single_upstream,
)
from tests.integration.wiretap import Wiretap, http_client

NOTICED_WITHIN = 1.0  # seconds from the client's disconnect to the upstream's


async def abandon_after_upstream_has_it(
    client: httpx.AsyncClient, gateway: GatewayServer, fake: FakeOpenAI, body: dict[str, Any]
) -> RecordedRequest:
    """Send `body`, and cancel the call once the upstream received its request (and before the
    gateway answered: the fake is scripted to keep it waiting)."""
    seen = len(fake.chat_requests)
    call = asyncio.ensure_future(client.post(gateway.url + CHAT, json=body))
    records = await asyncio.to_thread(fake.wait_for_requests, seen + 1)
    assert not call.done(), f"the gateway answered already: {call.result()}"
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await call
    return records[seen]


async def leave_stream_after_events(
    client: httpx.AsyncClient, gateway: GatewayServer, fake: FakeOpenAI, events: int
) -> RecordedRequest:
    """Read `events` SSE events of a stream, then close it."""
    seen = len(fake.chat_requests)
    async with client.stream("POST", gateway.url + CHAT, json=chat_body(stream=True)) as response:
        assert response.status_code == 200
        data = 0
        async for line in response.aiter_lines():
            data += line.startswith("data: ")
            if data == events:
                break
    return fake.chat_requests[seen]


def run(wiretap: Wiretap, scenario: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with async_http(wiretap) as client:
            return await scenario(client)

    return asyncio.run(main())


def assert_still_serving(http: httpx.Client, gateway: GatewayServer) -> None:
    plain = http.post(gateway.url + CHAT, json=chat_body())
    streamed = http.post(gateway.url + CHAT, json=chat_body(stream=True))
    assert plain.status_code == 200, plain.text
    assert streamed.status_code == 200, streamed.text
    spec.validate_stream(streamed.content)


@pytest.mark.parametrize(
    "reply",
    [Reply.hanging(), Reply(stall_after=0)],
    ids=["before-upstream-headers", "after-upstream-headers"],
)
def test_disconnect_during_time_to_first_token_cancels_the_upstream_call(
    http: httpx.Client,
    wiretap: Wiretap,
    fake_openai: FakeOpenAI,
    gateway_server: StartGateway,
    reply: Reply,
):
    gateway = gateway_server(single_upstream(fake_openai))
    fake_openai.script(reply)

    upstream = run(
        wiretap,
        lambda c: abandon_after_upstream_has_it(c, gateway, fake_openai, chat_body(stream=True)),
    )

    assert upstream.wait_disconnected(NOTICED_WITHIN), "the upstream call outlived its client"
    assert upstream.finished_at is None
    assert_still_serving(http, gateway)


def test_disconnect_mid_stream_cancels_the_upstream_stream(
    http: httpx.Client, wiretap: Wiretap, fake_openai: FakeOpenAI, gateway_server: StartGateway
):
    gateway = gateway_server(single_upstream(fake_openai))
    fake_openai.script(Reply(content=["word"] * 500, event_delay=0.01))

    upstream = run(wiretap, lambda c: leave_stream_after_events(c, gateway, fake_openai, 3))

    assert upstream.wait_disconnected(NOTICED_WITHIN), "the upstream stream outlived its client"
    assert upstream.finished_at is None
    assert_still_serving(http, gateway)


@pytest.mark.parametrize(
    "reply",
    [Reply.hanging(), Reply(first_byte_delay=30)],
    ids=["hanging", "slow-first-byte"],
)
def test_disconnect_during_a_plain_call_cancels_the_upstream_call(
    http: httpx.Client,
    wiretap: Wiretap,
    fake_openai: FakeOpenAI,
    gateway_server: StartGateway,
    reply: Reply,
):
    gateway = gateway_server(single_upstream(fake_openai))
    fake_openai.script(reply)

    upstream = run(
        wiretap, lambda c: abandon_after_upstream_has_it(c, gateway, fake_openai, chat_body())
    )

    assert upstream.wait_disconnected(NOTICED_WITHIN), "the upstream call outlived its client"
    assert upstream.finished_at is None
    assert_still_serving(http, gateway)


def test_disconnect_while_sending_the_body_never_reaches_the_upstream(
    http: httpx.Client, fake_openai: FakeOpenAI, gateway_server: StartGateway
):
    gateway = gateway_server(single_upstream(fake_openai))
    host, port = gateway.url.removeprefix("http://").split(":")
    head = (
        f"POST {CHAT} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        "content-length: 500\r\n\r\n"
    ).encode()

    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head + b'{"model": "gpt-4o-mini", "mess')

    assert_still_serving(http, gateway)
    assert len(fake_openai.chat_requests) == 2, "the abandoned request reached the upstream"


def test_disconnects_do_not_exhaust_a_small_pool(
    wiretap: Wiretap, fake_openai: FakeOpenAI, gateway_server: StartGateway
):
    gateway = gateway_server(
        single_upstream(
            fake_openai,
            pool={"max_connections": 2, "max_keepalive": 2},
            timeouts={"pool": 1, "connect": 1},
        )
    )
    fake_openai.script(
        Reply.hanging(),
        Reply(stall_after=0),
        Reply(content=["word"] * 500, event_delay=0.01),
        Reply(first_byte_delay=30),
        Reply(content=["word"] * 500, event_delay=0.01),
    )

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        abandoned = [
            await abandon_after_upstream_has_it(client, gateway, fake_openai, chat_body()),
            await abandon_after_upstream_has_it(
                client, gateway, fake_openai, chat_body(stream=True)
            ),
            await leave_stream_after_events(client, gateway, fake_openai, 2),
            await abandon_after_upstream_has_it(client, gateway, fake_openai, chat_body()),
            await leave_stream_after_events(client, gateway, fake_openai, 5),
        ]
        for upstream in abandoned:
            assert await asyncio.to_thread(upstream.wait_disconnected, NOTICED_WITHIN)
        # More requests at once than the pool has connections: they queue, then all succeed.
        return list(
            await asyncio.gather(
                client.post(gateway.url + CHAT, json=chat_body()),
                client.post(gateway.url + CHAT, json=chat_body(stream=True)),
                client.post(gateway.url + CHAT, json=chat_body()),
            )
        )

    responses = run(wiretap, scenario)

    assert [r.status_code for r in responses] == [200, 200, 200], [r.text for r in responses]
    assert len(fake_openai.chat_requests) == 8


def test_disconnect_is_logged_as_499(
    wiretap: Wiretap,
    fake_openai: FakeOpenAI,
    gateway_server: StartGateway,
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.INFO, logger="gateway.request")
    gateway = gateway_server(single_upstream(fake_openai))
    fake_openai.script(Reply.hanging())

    async def scenario(client: httpx.AsyncClient) -> RecordedRequest:
        client.headers["x-request-id"] = "left-early-1"
        return await abandon_after_upstream_has_it(
            client, gateway, fake_openai, chat_body(stream=True)
        )

    run(wiretap, scenario)

    line = vars(request_log(caplog, "left-early-1"))
    assert line["status"] == 499
    assert line["error"] == "client_disconnected"


def test_stopping_the_servers_ends_a_request_in_flight(wiretap: Wiretap):
    """Shutdown with a call hanging upstream: the fake stops, the gateway answers, then stops."""
    outcome: list[httpx.Response | httpx.HTTPError] = []
    with FakeOpenAI() as fake:
        with serve(single_upstream(fake)) as gateway:
            fake.script(Reply.hanging())

            def call() -> None:
                with http_client(wiretap) as client:
                    try:
                        outcome.append(client.post(gateway.url + CHAT, json=chat_body()))
                    except httpx.HTTPError as exc:
                        outcome.append(exc)

            caller = threading.Thread(target=call)
            caller.start()
            fake.wait_for_requests(1)
            fake.stop()  # releases the hanging reply (stopping twice is harmless)
            caller.join(5)
        assert not caller.is_alive(), "the request outlived both servers"

    [result] = outcome
    assert isinstance(result, httpx.Response), result
    assert result.status_code == 502
