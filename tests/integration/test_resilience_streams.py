"""Which failures fall back and which do not, end to end on loopback sockets.

Routing first: equal priorities share load by weight, a lower priority serves only when every
higher one is unusable, a disabled target gets nothing; a client error is returned at once and a
context-length error moves on only to a `larger_context` target. Then streams: they fall back
freely until their first event reached the client; after that an upstream failure (a cut
connection, a stall past the deadline) ends them with one SSE error event, counted against the
breaker. Deadlines bound plain and streamed requests alike, and a chain where every target fails
answers with the most telling status. Last, a client that leaves (during time to first token,
mid-stream, or on a plain call) has the upstream connection closed within 500 ms and is counted
nowhere: with `fail_max: 1` the breaker stays closed, and with `max_concurrent: 1` the next
request is admitted at once, so no permit was kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator
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
    error_of,
    openai_upstream,
    refused_base_url,
    wait_until,
)
from tests.integration.test_resilience import (
    FAKE_TEXT,
    STREAM,
    MakeFake,
    assert_served,
    attempts,
    breaker_state,
    chain_config,
    load,
    pair,
    runtime_of,
    served_by,
)
from tests.integration.wiretap import Wiretap

DISCONNECT_NOTICED = 0.5  # seconds from the client's leaving to the upstream's connection closing


def events_of(response: httpx.Response) -> list[Any]:
    """The stream's `data:` payloads, JSON decoded ("[DONE]" as is)."""
    return [d if d == "[DONE]" else json.loads(d) for d in spec.sse_data(response.content)]


def streamed_text(response: httpx.Response) -> str | None:
    assert response.status_code == 200, response.text
    [choice] = spec.assemble(spec.validate_stream(response.content))
    text: str | None = choice["content"]
    return text


@pytest.fixture
def two(fake_openai_factory: MakeFake) -> tuple[FakeOpenAI, FakeOpenAI]:
    return fake_openai_factory(), fake_openai_factory()


@pytest.fixture
def refused() -> Iterator[str]:
    with refused_base_url() as url:
        yield url


# ------------------------------------------------------------------- routing


def test_equal_priorities_share_by_weight_and_lower_priority_waits_its_turn(
    wiretap: Wiretap,
    http: httpx.Client,
    gateway_server: StartGateway,
    fake_openai_factory: MakeFake,
):
    heavy, light, spare, off = (fake_openai_factory() for _ in range(4))
    gateway = gateway_server(
        chain_config(
            {
                "heavy": openai_upstream(heavy),
                "light": openai_upstream(light),
                "spare": openai_upstream(spare),
                "off": openai_upstream(off, enabled=False),
            },
            [
                {"upstream": "heavy", "priority": 1, "weight": 3},
                {"upstream": "light", "priority": 1, "weight": 1},
                {"upstream": "off", "priority": 1, "weight": 100},
                {"upstream": "spare", "priority": 2},
            ],
        )
    )

    results = load(wiretap, gateway, 400, 40)

    by = Counter(served_by(response) for response, _ in results)
    assert 240 <= by["heavy"] <= 360, by  # 300 expected; sd ~9
    assert by["heavy"] + by["light"] == 400, by
    assert len(heavy.chat_requests) == by["heavy"]
    assert len(light.chat_requests) == by["light"]
    assert spare.chat_requests == []
    assert off.chat_requests == []

    # Only when every target of priority 1 is unusable does priority 2 serve.
    heavy.set_default(Reply.error(503))
    light.set_default(Reply.error(503))
    for _ in range(10):
        response = http.post(gateway.url + CHAT, json=chat_body())
        assert served_by(response) == "spare"
        tried = attempts(response)
        assert sorted(tried[:3]) == ["heavy:503", "light:503", "off:disabled"]
        assert tried[3:] == ["spare:ok"]
    assert off.chat_requests == []


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_client_errors_are_returned_at_once_without_fallback(
    http: httpx.Client,
    gateway_server: StartGateway,
    two: tuple[FakeOpenAI, FakeOpenAI],
    status: int,
):
    primary, secondary = two
    primary.script(Reply.error(status, f"the upstream says {status}"))
    gateway = gateway_server(
        pair(primary, secondary, breaker={"fail_max": 1}, retry={"attempts": 3})
    )

    response = http.post(gateway.url + CHAT, json=chat_body())

    error = error_of(response, status)
    assert error["message"] == f"the upstream says {status}"
    assert response.headers.get("x-should-retry") == "false"
    assert response.headers["x-gateway-attempts"] == f"primary:{status}"
    assert len(primary.chat_requests) == 1
    assert secondary.chat_requests == []
    assert breaker_state(gateway, "primary") == "closed"


CONTEXT_ERROR = Reply.error(
    400, "This model's maximum context length is 8192 tokens", code="context_length_exceeded"
)


def test_context_length_error_falls_back_only_to_a_larger_context_target(
    http: httpx.Client, gateway_server: StartGateway, fake_openai_factory: MakeFake
):
    small, same, large = (fake_openai_factory() for _ in range(3))
    small.script(CONTEXT_ERROR)
    gateway = gateway_server(
        chain_config(
            {
                "small": openai_upstream(small),
                "same": openai_upstream(same),
                "large": openai_upstream(large),
            },
            ["small", "same", {"upstream": "large", "larger_context": True}],
        )
    )

    response = http.post(gateway.url + CHAT, json=chat_body())

    assert served_by(response) == "large"
    assert attempts(response) == ["small:400", "large:ok"]
    assert same.chat_requests == []


def test_context_length_error_without_a_larger_target_is_returned_as_is(
    http: httpx.Client, gateway_server: StartGateway, two: tuple[FakeOpenAI, FakeOpenAI]
):
    small, same = two
    small.script(CONTEXT_ERROR)
    gateway = gateway_server(
        chain_config({"small": openai_upstream(small), "same": openai_upstream(same)})
    )

    response = http.post(gateway.url + CHAT, json=chat_body())

    error = error_of(response, 400)
    assert error["code"] == "context_length_exceeded"
    assert error["message"] == "This model's maximum context length is 8192 tokens"
    assert response.headers["x-gateway-attempts"] == "small:400"
    assert same.chat_requests == []


# ------------------------------------------------------------------- before the first byte


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (Reply.error(503), "primary:503"),
        (Reply(first_byte_delay=3), "primary:timeout"),  # no status line within first_byte
        (Reply(first_event_delay=3), "primary:timeout"),  # headers, but no event in time
        (Reply(stall_after=0), "primary:timeout"),  # headers, then silence
    ],
    ids=["503", "slow-status", "slow-first-event", "silent"],
)
def test_stream_falls_back_before_its_first_byte(
    http: httpx.Client,
    gateway_server: StartGateway,
    two: tuple[FakeOpenAI, FakeOpenAI],
    reply: Reply,
    outcome: str,
):
    primary, secondary = two
    primary.script(reply)
    gateway = gateway_server(
        chain_config(
            {
                "primary": openai_upstream(primary, timeouts={"first_byte": 0.3}),
                "secondary": openai_upstream(secondary),
            }
        )
    )

    started = time.monotonic()
    response = http.post(gateway.url + CHAT, json=chat_body(stream=True))

    assert time.monotonic() - started < 2.0  # first_byte (0.3 s), not the fake's 3 s
    assert streamed_text(response) == FAKE_TEXT
    assert attempts(response) == [outcome, "secondary:ok"]
    [abandoned] = primary.chat_requests
    assert abandoned.wait_ended(1.0)
    assert abandoned.finished_at is None or outcome == "primary:503"
    assert len(secondary.chat_requests) == 1


def test_stream_falls_back_from_a_refused_connection(
    http: httpx.Client, gateway_server: StartGateway, fake_openai: FakeOpenAI, refused: str
):
    gateway = gateway_server(
        chain_config({"gone": openai_upstream(refused), "second": openai_upstream(fake_openai)})
    )

    response = http.post(gateway.url + CHAT, json=chat_body(stream=True))

    assert streamed_text(response) == FAKE_TEXT
    gone, second = attempts(response)
    assert gone.startswith("gone:")
    assert gone != "gone:ok"
    assert second == "second:ok"


def test_stream_every_target_failing_before_the_first_byte_is_an_error_status(
    http: httpx.Client, gateway_server: StartGateway, two: tuple[FakeOpenAI, FakeOpenAI]
):
    first, second = two
    first.script(Reply.error(500))
    second.script(Reply.error(429, retry_after=3))
    gateway = gateway_server(
        chain_config({"first": openai_upstream(first), "second": openai_upstream(second)})
    )

    response = http.post(gateway.url + CHAT, json=chat_body(stream=True))

    error = error_of(response, 502)  # not a 200 stream: nothing was sent yet
    assert "'first'" in error["message"]
    assert "'second'" in error["message"]
    assert response.headers["x-gateway-attempts"] == "first:500,second:429"
    assert response.headers["retry-after"] == "3"


# ------------------------------------------------------------------- after the first byte


def test_stream_cut_after_its_first_byte_ends_with_an_error_event_and_counts(
    http: httpx.Client, gateway_server: StartGateway, two: tuple[FakeOpenAI, FakeOpenAI]
):
    primary, secondary = two
    primary.script(Reply(cut_after=3))
    gateway = gateway_server(
        chain_config(
            {
                "primary": openai_upstream(primary, breaker={"fail_max": 1, "reset_timeout": 30}),
                "secondary": openai_upstream(secondary),
            }
        )
    )

    response = http.post(gateway.url + CHAT, json=chat_body(stream=True))

    assert response.status_code == 200
    assert response.headers["x-gateway-upstream"] == "primary"
    events = events_of(response)
    assert "[DONE]" not in events
    assert [e for e in events if "error" in e] == [events[-1]]
    assert len(events) == 4  # the three the upstream sent, then the error
    assert secondary.chat_requests == []  # no fallback once the client has bytes
    assert breaker_state(gateway, "primary") == "open"  # counted
    later = http.post(gateway.url + CHAT, json=chat_body(stream=True))
    assert attempts(later) == ["primary:open", "secondary:ok"]


@pytest.mark.parametrize("via", ["config", "header"])
def test_stream_stalled_after_its_first_byte_ends_by_the_deadline(
    http: httpx.Client, gateway_server: StartGateway, fake_openai: FakeOpenAI, via: str
):
    fake_openai.script(Reply(stall_after=2))
    server = {"request_timeout": 2} if via == "config" else {"request_timeout": 600}
    headers = {"x-gateway-timeout": "2"} if via == "header" else {}
    gateway = gateway_server(chain_config({"up": openai_upstream(fake_openai)}, server=server))

    started = time.monotonic()
    response = http.post(gateway.url + CHAT, json=chat_body(stream=True), headers=headers)
    elapsed = time.monotonic() - started

    assert elapsed <= 2.2, f"the stream ended after {elapsed:.2f} s"
    assert elapsed >= 1.9
    events = events_of(response)
    assert len(events) == 3
    assert events[-1]["error"]["code"] == "upstream_timeout"
    [stalled] = fake_openai.chat_requests
    assert stalled.wait_disconnected(DISCONNECT_NOTICED)


# ------------------------------------------------------------------- deadlines


@STREAM
@pytest.mark.parametrize("via", ["config", "header"])
def test_deadline_with_two_slow_targets_answers_504_by_its_end(
    http: httpx.Client,
    gateway_server: StartGateway,
    two: tuple[FakeOpenAI, FakeOpenAI],
    stream: bool,
    via: str,
):
    primary, secondary = two
    # The first fails after 1.2 s, the second would answer at 2.7 s: past the deadline.
    primary.script(Reply.error(503, first_byte_delay=1.2))
    secondary.script(Reply(first_byte_delay=1.5))
    server = {"request_timeout": 2} if via == "config" else {"request_timeout": 600}
    headers = {"x-gateway-timeout": "2"} if via == "header" else {}
    gateway = gateway_server(
        chain_config(
            {"primary": openai_upstream(primary), "secondary": openai_upstream(secondary)},
            server=server,
        )
    )

    started = time.monotonic()
    response = http.post(gateway.url + CHAT, json=chat_body(stream=stream), headers=headers)
    elapsed = time.monotonic() - started

    assert elapsed <= 2.2, f"answered after {elapsed:.2f} s"
    error = error_of(response, 504)
    assert "2 s" in error["message"]
    [late] = secondary.chat_requests
    assert late.wait_disconnected(1.0), "the cut attempt's upstream call lived on"
    assert len(primary.chat_requests) == 1


@STREAM
def test_deadline_with_two_slow_targets_still_serves_when_the_second_is_in_time(
    http: httpx.Client,
    gateway_server: StartGateway,
    two: tuple[FakeOpenAI, FakeOpenAI],
    stream: bool,
):
    primary, secondary = two
    primary.script(Reply.error(503, first_byte_delay=0.8))
    secondary.script(Reply(first_byte_delay=0.8))
    gateway = gateway_server(
        chain_config(
            {"primary": openai_upstream(primary), "secondary": openai_upstream(secondary)},
            server={"request_timeout": 2},
        )
    )

    started = time.monotonic()
    response = http.post(gateway.url + CHAT, json=chat_body(stream=stream))

    assert time.monotonic() - started <= 2.2
    assert_served(response, stream)
    assert attempts(response) == ["primary:503", "secondary:ok"]


# ------------------------------------------------------------------- every target fails


def test_every_target_rate_limited_is_429_with_retry_after(
    http: httpx.Client, gateway_server: StartGateway, two: tuple[FakeOpenAI, FakeOpenAI]
):
    first, second = two
    first.script(Reply.error(429, retry_after=5))
    second.script(Reply.error(429, retry_after=5))
    gateway = gateway_server(
        chain_config({"first": openai_upstream(first), "second": openai_upstream(second)})
    )

    answered = http.post(gateway.url + CHAT, json=chat_body())
    paused = http.post(gateway.url + CHAT, json=chat_body())

    for response in (answered, paused):
        error = error_of(response, 429)
        assert "'first'" in error["message"]
        assert "'second'" in error["message"]
        assert 1 <= int(response.headers["retry-after"]) <= 5
    assert answered.headers["x-gateway-attempts"] == "first:429,second:429"
    assert paused.headers["x-gateway-attempts"] == "first:limited,second:limited"
    assert len(first.chat_requests) == len(second.chat_requests) == 1


def test_every_breaker_open_is_503_with_retry_after(
    http: httpx.Client, gateway_server: StartGateway, two: tuple[FakeOpenAI, FakeOpenAI]
):
    first, second = two
    first.script(Reply.error(500))
    second.script(Reply.error(500))
    breaker = {"fail_max": 1, "reset_timeout": 30}
    gateway = gateway_server(
        chain_config(
            {
                "first": openai_upstream(first, breaker=breaker),
                "second": openai_upstream(second, breaker=breaker),
            }
        )
    )

    failed = http.post(gateway.url + CHAT, json=chat_body())
    response = http.post(gateway.url + CHAT, json=chat_body())

    error_of(failed, 502)
    assert failed.headers["x-gateway-attempts"] == "first:500,second:500"
    error = error_of(response, 503)
    assert "'first'" in error["message"]
    assert "'second'" in error["message"]
    assert response.headers["x-gateway-attempts"] == "first:open,second:open"
    assert 25 <= int(response.headers["retry-after"]) <= 30
    assert len(first.chat_requests) == len(second.chat_requests) == 1


@pytest.mark.parametrize(
    ("second_reply", "status"),
    [(Reply.error(500), 502), (Reply.hanging(), 502)],
    ids=["5xx", "timeout"],
)
def test_mixed_failures_are_502_naming_each_upstream(
    http: httpx.Client,
    gateway_server: StartGateway,
    fake_openai: FakeOpenAI,
    refused: str,
    second_reply: Reply,
    status: int,
):
    fake_openai.script(second_reply)
    gateway = gateway_server(
        chain_config(
            {
                "gone": openai_upstream(refused),
                "second": openai_upstream(fake_openai, timeouts={"read": 0.3}),
            }
        )
    )

    response = http.post(gateway.url + CHAT, json=chat_body())

    error = error_of(response, status)
    assert "'gone'" in error["message"]
    assert "'second'" in error["message"]
    gone, second = attempts(response)
    assert gone.startswith("gone:")
    assert second in ("second:500", "second:timeout")


def test_every_target_timing_out_is_504(
    http: httpx.Client, gateway_server: StartGateway, two: tuple[FakeOpenAI, FakeOpenAI]
):
    first, second = two
    first.script(Reply.hanging())
    second.script(Reply.hanging())
    gateway = gateway_server(
        chain_config(
            {
                "first": openai_upstream(first, timeouts={"read": 0.3}),
                "second": openai_upstream(second, timeouts={"read": 0.3}),
            }
        )
    )

    response = http.post(gateway.url + CHAT, json=chat_body())

    error = error_of(response, 504)
    assert "'first'" in error["message"]
    assert "'second'" in error["message"]
    assert response.headers["x-gateway-attempts"] == "first:timeout,second:timeout"


# ------------------------------------------------------------------- clients that leave


async def leave_once_upstream_has_it(
    client: httpx.AsyncClient, gateway: GatewayServer, fake: FakeOpenAI, stream: bool
) -> RecordedRequest:
    """Send a request and cancel it (httpx closes its connection) once the upstream has it."""
    seen = len(fake.chat_requests)
    call = asyncio.ensure_future(client.post(gateway.url + CHAT, json=chat_body(stream=stream)))
    records = await asyncio.to_thread(fake.wait_for_requests, seen + 1)
    assert not call.done(), "the gateway answered before the client left"
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await call
    return records[seen]


async def leave_mid_stream(
    client: httpx.AsyncClient, gateway: GatewayServer, fake: FakeOpenAI
) -> RecordedRequest:
    """Read three events of a stream, then close it."""
    seen = len(fake.chat_requests)
    async with client.stream("POST", gateway.url + CHAT, json=chat_body(stream=True)) as response:
        assert response.status_code == 200
        data = 0
        async for line in response.aiter_lines():
            data += line.startswith("data: ")
            if data == 3:
                break
    return fake.chat_requests[seen]


@pytest.mark.parametrize("moment", ["time-to-first-token", "mid-stream", "plain"])
def test_client_disconnect_closes_the_upstream_call_and_counts_nowhere(
    wiretap: Wiretap,
    http: httpx.Client,
    gateway_server: StartGateway,
    fake_openai: FakeOpenAI,
    moment: str,
):
    gateway = gateway_server(
        chain_config(
            {
                "up": openai_upstream(
                    fake_openai,
                    breaker={"fail_max": 1, "reset_timeout": 30},
                    rate_limit={"max_concurrent": 1, "max_wait": 0},
                )
            }
        )
    )
    if moment == "mid-stream":
        fake_openai.script(*[Reply(content=["word"] * 500, event_delay=0.01)] * 3)
    else:
        fake_openai.script(*[Reply.hanging()] * 3)

    async def leave() -> RecordedRequest:
        async with async_http(wiretap) as client:
            if moment == "mid-stream":
                return await leave_mid_stream(client, gateway, fake_openai)
            return await leave_once_upstream_has_it(
                client, gateway, fake_openai, stream=moment != "plain"
            )

    guards = runtime_of(gateway).guards["up"]
    upstream = runtime_of(gateway).upstreams["up"]
    for _ in range(3):  # more than fail_max, more than max_concurrent
        left = asyncio.run(leave())
        assert left.wait_disconnected(DISCONNECT_NOTICED), "the upstream call outlived its client"
        assert left.finished_at is None
        wait_until(lambda: upstream.in_flight == 0, 2.0, "the gateway to let go of the attempt")
        assert guards.limiter.snapshot()["in_flight"] == 0

    assert guards.breaker.state == "closed"
    assert guards.breaker.rejections == 0
    plain = http.post(gateway.url + CHAT, json=chat_body())
    streamed = http.post(gateway.url + CHAT, json=chat_body(stream=True))
    assert plain.headers["x-gateway-attempts"] == "up:ok"
    assert streamed_text(streamed) == FAKE_TEXT
    assert len(fake_openai.chat_requests) == 5


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_success_between_failures_resets_the_breaker_count(
    http: httpx.Client,
    gateway_server: StartGateway,
    two: tuple[FakeOpenAI, FakeOpenAI],
    stream: bool,
):
    primary, secondary = two
    primary.script(Reply.error(503), Reply.error(503), Reply(), Reply.error(503))
    gateway = gateway_server(
        chain_config(
            {
                "primary": openai_upstream(primary, breaker={"fail_max": 3, "reset_timeout": 30}),
                "secondary": openai_upstream(secondary),
            }
        )
    )

    served = [
        http.post(gateway.url + CHAT, json=chat_body(stream=stream)).headers["x-gateway-upstream"]
        for _ in range(4)
    ]

    assert served == ["secondary", "secondary", "primary", "secondary"]
    # Two failures, a success, one failure: never three in a row.
    assert breaker_state(gateway, "primary") == "closed"
