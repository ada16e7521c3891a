"""Resilience end to end: the gateway under uvicorn against fault-injecting fake upstreams.

Every test drives the real gateway over loopback sockets and counts what each fake upstream
received (`FakeOpenAI.chat_requests`), what each client got back, and what the runtime holds
afterwards (breaker state, limiter snapshot, connection state). Time enters only where it is the
property under test (a breaker's `reset_timeout`, a 429's retry-after, a deadline), with bounds
that are the issue's own; everything else waits on a condition, bounded.

Here: fallback under load, the circuit breaker, rate limits, retries and health. Routing,
what falls back and what does not, streams, deadlines, exhausted chains and clients that leave
are in `test_resilience_streams.py`, which shares the helpers below.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
import pytest

from gateway.runtime import Runtime
from gateway.upstreams.registry import ConnectionState
from tests.conftest import GatewayServer, StartGateway
from tests.fakes.openai_upstream import FakeOpenAI, Reply
from tests.integration.conftest import (
    CHAT,
    NO_BREAKER,
    async_http,
    chat_body,
    error_of,
    openai_upstream,
    wait_until,
)
from tests.integration.wiretap import Wiretap

MODEL = "gpt-4o-mini"
FAKE_TEXT = "Hello! How can I help you today?"
STREAM = pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
MakeFake = Callable[..., FakeOpenAI]


# ------------------------------------------------------------------- helpers


def chain_config(
    upstreams: Mapping[str, dict[str, Any]],
    targets: Sequence[str | dict[str, Any]] | None = None,
    server: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A config serving MODEL by `targets` (upstream names, or target dicts; default: every
    upstream, in order)."""
    chain = [
        {"upstream": t, "model": MODEL} if isinstance(t, str) else {"model": MODEL, **t}
        for t in (targets if targets is not None else list(upstreams))
    ]
    config: dict[str, Any] = {"upstreams": dict(upstreams), "models": {MODEL: chain}}
    if server:
        config["server"] = dict(server)
    return config


def pair(
    primary: FakeOpenAI,
    secondary: FakeOpenAI,
    server: Mapping[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """MODEL served by `primary` (with `settings`), falling back to `secondary`."""
    upstreams = {
        "primary": openai_upstream(primary, **settings),
        "secondary": openai_upstream(secondary),
    }
    return chain_config(upstreams, server=server)


def runtime_of(gateway: GatewayServer) -> Runtime:
    runtime: Runtime = gateway.app.state.runtime  # type: ignore[attr-defined]
    return runtime


def breaker_state(gateway: GatewayServer, upstream: str) -> str:
    """The upstream's breaker state (read between requests: nothing else runs on it then)."""
    return runtime_of(gateway).guards[upstream].breaker.state


def served_by(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["x-gateway-upstream"]


def attempts(response: httpx.Response) -> list[str]:
    return response.headers["x-gateway-attempts"].split(",")


def assert_served(response: httpx.Response, stream: bool) -> None:
    """A complete answer: the completion, or a stream ending in [DONE] (the wiretap checks
    either against OpenAI's schemas at teardown)."""
    assert response.status_code == 200, response.text
    if stream:
        assert response.text.rstrip().endswith("data: [DONE]"), response.text[-300:]
    else:
        assert response.json()["choices"][0]["message"]["content"] == FAKE_TEXT


def ok_chats(fake: FakeOpenAI) -> int:
    """Chat requests the fake answered with a 2xx."""
    return sum(1 for r in fake.chat_requests if r.reply is not None and r.reply.status < 300)


async def post_all(
    client: httpx.AsyncClient,
    gateway: GatewayServer,
    count: int,
    concurrency: int,
    body: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> list[tuple[httpx.Response, float]]:
    """`count` requests, at most `concurrency` at once; each response with its latency (s)."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> tuple[httpx.Response, float]:
        async with gate:
            started = time.monotonic()
            response = await client.post(
                gateway.url + CHAT, json=body or chat_body(), headers=headers
            )
            return response, time.monotonic() - started

    return list(await asyncio.gather(*(one() for _ in range(count))))


def load(
    wiretap: Wiretap,
    gateway: GatewayServer,
    count: int,
    concurrency: int,
    body: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    warm: bool = False,
) -> list[tuple[httpx.Response, float]]:
    """`post_all` on a fresh event loop, with a pool as wide as the concurrency (opened
    beforehand if `warm`)."""

    async def main() -> list[tuple[httpx.Response, float]]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with async_http(wiretap, limits=limits) as client:
            if warm:  # connections opened beforehand: the burst measures the gateway alone
                await asyncio.gather(
                    *(client.get(gateway.url + "/healthz") for _ in range(concurrency))
                )
            return await post_all(client, gateway, count, concurrency, body, headers)

    return asyncio.run(main())


@pytest.fixture
def two(fake_openai_factory: MakeFake) -> tuple[FakeOpenAI, FakeOpenAI]:
    """A primary and a secondary fake OpenAI."""
    return fake_openai_factory(), fake_openai_factory()


# ------------------------------------------------------------------- fallback under load


@STREAM
def test_half_failing_primary_with_healthy_secondary_serves_every_request(
    wiretap: Wiretap,
    gateway_server: StartGateway,
    two: tuple[FakeOpenAI, FakeOpenAI],
    stream: bool,
):
    primary, secondary = two
    coin = random.Random(20240604)  # called on the fake's one server thread only
    primary.set_default(lambda _: Reply.error(503) if coin.random() < 0.5 else Reply())
    # A breaker as well: it may open on a run of failures (a stream's success is known only at
    # its end, its failure at once), and skipping the primary then must not lose a request.
    breaker = {"fail_max": 10, "reset_timeout": 0.2}
    gateway = gateway_server(
        chain_config(
            {
                "primary": openai_upstream(primary, breaker=breaker),
                "secondary": openai_upstream(secondary, breaker=breaker),
            }
        )
    )

    results = load(wiretap, gateway, 500, 50, chat_body(stream=stream))

    for response, _ in results:
        assert_served(response, stream)
    paths = Counter(response.headers["x-gateway-attempts"] for response, _ in results)
    assert set(paths) <= {"primary:ok", "primary:503,secondary:ok", "primary:open,secondary:ok"}
    assert sum(paths.values()) == 500
    # What each upstream received is exactly what the answers say was tried there.
    assert len(primary.chat_requests) == 500 - paths["primary:open,secondary:ok"]
    assert ok_chats(primary) == paths["primary:ok"]
    assert len(secondary.chat_requests) == 500 - paths["primary:ok"]
    assert paths["primary:ok"] >= 25, paths
    assert paths["primary:503,secondary:ok"] >= 25, paths


# ------------------------------------------------------------------- circuit breaker


def test_open_breaker_keeps_every_request_off_the_primary_until_reset_timeout(
    http: httpx.Client, gateway_server: StartGateway, two: tuple[FakeOpenAI, FakeOpenAI]
):
    primary, secondary = two
    reset = 1.0
    primary.script(*[Reply.error(500)] * 3)
    gateway = gateway_server(
        pair(primary, secondary, breaker={"fail_max": 3, "reset_timeout": reset})
    )

    for _ in range(2):
        response = http.post(gateway.url + CHAT, json=chat_body())
        assert attempts(response) == ["primary:500", "secondary:ok"]
    before_third = time.monotonic()
    response = http.post(gateway.url + CHAT, json=chat_body())
    assert attempts(response) == ["primary:500", "secondary:ok"]
    assert breaker_state(gateway, "primary") == "open"
    assert len(primary.chat_requests) == 3

    # Open from some moment after `before_third`: keep asking until the primary is tried again.
    skipped = 0
    while len(primary.chat_requests) == 3:
        assert time.monotonic() - before_third < reset + 3, "the breaker never half-opened"
        response = http.post(gateway.url + CHAT, json=chat_body())
        assert served_by(response) in ("primary", "secondary")
        if served_by(response) == "secondary":
            assert attempts(response) == ["primary:open", "secondary:ok"]
            skipped += 1
        time.sleep(0.02)  # pacing the probe requests; the clock is what is under test
    reached = primary.chat_requests[3].received_at
    assert reached - before_third >= reset, "a request reached the primary while it was open"
    assert skipped >= 10
    assert breaker_state(gateway, "primary") == "closed"  # the trial succeeded


@pytest.mark.parametrize("trials", [1, 3])
def test_half_open_breaker_admits_exactly_its_trials_of_100_concurrent_requests(
    wiretap: Wiretap,
    http: httpx.Client,
    gateway_server: StartGateway,
    two: tuple[FakeOpenAI, FakeOpenAI],
    trials: int,
):
    primary, secondary = two
    reset = 0.5
    primary.script(Reply.error(500))
    gateway = gateway_server(
        pair(
            primary,
            secondary,
            breaker={"fail_max": 1, "reset_timeout": reset, "half_open_max_calls": trials},
        )
    )
    opened = time.monotonic()
    assert attempts(http.post(gateway.url + CHAT, json=chat_body())) == [
        "primary:500",
        "secondary:ok",
    ]
    # The trials are slow, so that the other requests arrive while they are in flight.
    primary.set_default(Reply(first_byte_delay=1.5))
    time.sleep(max(0.0, opened + reset + 0.05 - time.monotonic()))  # reset_timeout is the test

    results = load(wiretap, gateway, 100, 100)

    by = Counter(served_by(response) for response, _ in results)
    assert len(primary.chat_requests) == 1 + trials
    assert by == {"primary": trials, "secondary": 100 - trials}
    assert breaker_state(gateway, "primary") == "closed"
    primary.set_default(Reply())
    for _ in range(3):  # closed again: the primary serves
        assert served_by(http.post(gateway.url + CHAT, json=chat_body())) == "primary"
    assert len(primary.chat_requests) == 1 + trials + 3


def test_half_open_trial_that_fails_opens_the_breaker_again(
    http: httpx.Client, gateway_server: StartGateway, two: tuple[FakeOpenAI, FakeOpenAI]
):
    primary, secondary = two
    reset = 0.5
    primary.set_default(Reply.error(500))
    gateway = gateway_server(
        pair(primary, secondary, breaker={"fail_max": 1, "reset_timeout": reset})
    )
    http.post(gateway.url + CHAT, json=chat_body())
    time.sleep(reset + 0.05)  # reset_timeout is the test
    trial = http.post(gateway.url + CHAT, json=chat_body())
    assert attempts(trial) == ["primary:500", "secondary:ok"]
    assert breaker_state(gateway, "primary") == "open"
    for _ in range(5):
        assert attempts(http.post(gateway.url + CHAT, json=chat_body())) == [
            "primary:open",
            "secondary:ok",
        ]
    assert len(primary.chat_requests) == 2


# ------------------------------------------------------------------- rate limits


def test_upstream_429_with_retry_after_pauses_it_and_the_fallback_serves(
    http: httpx.Client, gateway_server: StartGateway, two: tuple[FakeOpenAI, FakeOpenAI]
):
    primary, secondary = two
    pause = 2.0
    primary.script(Reply.error(429, retry_after=pause))
    gateway = gateway_server(
        chain_config(
            {
                # fail_max 1: a 429 must not count as a breaker failure
                "primary": openai_upstream(primary, breaker={"fail_max": 1}),
                "secondary": openai_upstream(secondary),
            }
        )
    )
    sent = time.monotonic()
    first = http.post(gateway.url + CHAT, json=chat_body())
    assert attempts(first) == ["primary:429", "secondary:ok"]

    limited = 0
    while len(primary.chat_requests) == 1:
        assert time.monotonic() - sent < pause + 3, "the pause never ended"
        response = http.post(gateway.url + CHAT, json=chat_body())
        if served_by(response) == "secondary":
            assert attempts(response) == ["primary:limited", "secondary:ok"]
            limited += 1
        time.sleep(0.02)  # pacing; the pause's length is what is under test
    assert primary.chat_requests[1].received_at - sent >= pause
    assert limited >= 20
    assert breaker_state(gateway, "primary") == "closed"
    assert served_by(http.post(gateway.url + CHAT, json=chat_body())) == "primary"


def test_200_concurrent_requests_against_10_per_minute_admit_10_and_refuse_the_rest_quickly(
    wiretap: Wiretap,
    gateway_server: StartGateway,
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.INFO, logger="gateway.request")
    gateway = gateway_server(
        chain_config(
            {
                "up": openai_upstream(
                    fake_openai, rate_limit={"requests_per_minute": 10, "max_wait": 0.5}
                )
            }
        )
    )

    results = load(wiretap, gateway, 200, 200, warm=True)

    ok = [r for r, _ in results if r.status_code == 200]
    refused = [(r, t) for r, t in results if r.status_code != 200]
    assert len(ok) == 10
    assert len(fake_openai.chat_requests) == 10
    assert len(refused) == 190
    # The gateway refuses each in milliseconds (its own request log times the handler); the
    # client's clock also counts 200 connections queueing in one process on shared cores.
    handled = [r for r in caplog.records if r.getMessage() == "chat completion"]
    refusals = [r.__dict__["duration_ms"] for r in handled if r.__dict__["status"] == 429]
    assert len(refusals) == 190
    assert max(refusals) < 600, f"a refusal took {max(refusals):.0f} ms in the gateway"
    assert max(t for _, t in refused) < 3.0
    for response, _ in refused:
        error = error_of(response, 429)
        assert error["type"] == "rate_limit_error"
        assert "'up'" in error["message"]
        assert attempts(response) == ["up:limited"]
        assert int(response.headers["retry-after"]) >= 1
        retry_ms = int(response.headers["retry-after-ms"])
        assert 500 < retry_ms <= 60_000  # 10/min drains one request every 6 s
        assert int(response.headers["retry-after"]) == -(-retry_ms // 1000)
    snapshot = runtime_of(gateway).guards["up"].limiter.snapshot()
    assert snapshot["waiters"] == 0
    assert snapshot["in_flight"] == 0
    assert snapshot["remaining_requests"] == 0


def test_gateway_rate_limit_refusal_carries_x_ratelimit_headers(
    http: httpx.Client, gateway_server: StartGateway, fake_openai: FakeOpenAI
):
    limits = {"requests_per_minute": 10, "tokens_per_minute": 100_000, "max_wait": 0}
    gateway = gateway_server(chain_config({"up": openai_upstream(fake_openai, rate_limit=limits)}))
    for _ in range(10):
        assert http.post(gateway.url + CHAT, json=chat_body()).status_code == 200

    response = http.post(gateway.url + CHAT, json=chat_body())

    error_of(response, 429)
    assert len(fake_openai.chat_requests) == 10
    headers = response.headers
    assert headers.get("x-ratelimit-limit-requests") == "10", dict(headers)
    assert headers.get("x-ratelimit-remaining-requests") == "0"
    assert headers.get("x-ratelimit-reset-requests", "").endswith("s")
    assert headers.get("x-ratelimit-limit-tokens") == "100000"
    assert int(headers.get("x-ratelimit-remaining-tokens", "-1")) > 99_000
    assert "x-ratelimit-reset-tokens" in headers


def test_rate_limit_waiters_are_admitted_within_max_wait(
    wiretap: Wiretap, gateway_server: StartGateway, fake_openai: FakeOpenAI
):
    # One concurrent slot, each request held 0.1 s upstream: 4 requests fit in max_wait 0.5 s.
    fake_openai.set_default(Reply(first_byte_delay=0.1))
    gateway = gateway_server(
        chain_config(
            {"up": openai_upstream(fake_openai, rate_limit={"max_concurrent": 1, "max_wait": 2})}
        )
    )

    results = load(wiretap, gateway, 5, 5)

    assert [r.status_code for r, _ in results] == [200] * 5
    starts = sorted(r.received_at for r in fake_openai.chat_requests)
    ends = sorted(r.finished_at or 0.0 for r in fake_openai.chat_requests)
    for start, previous_end in zip(starts[1:], ends, strict=False):
        assert start >= previous_end - 0.01, "two requests were in flight at once"
    snapshot = runtime_of(gateway).guards["up"].limiter.snapshot()
    assert snapshot["waiters"] == 0
    assert snapshot["in_flight"] == 0


# ------------------------------------------------------------------- retries


def test_retries_during_a_total_outage_stay_within_the_budget(
    wiretap: Wiretap, gateway_server: StartGateway, fake_openai: FakeOpenAI
):
    fake_openai.set_default(Reply.error(503))
    gateway = gateway_server(
        chain_config(
            {
                "up": openai_upstream(
                    fake_openai,
                    breaker=NO_BREAKER,  # the budget, not the breaker, must bound the load
                    retry={"attempts": 3, "backoff_base": 0.01, "backoff_max": 0.02},
                )
            }
        )
    )
    clients = 100

    results = load(wiretap, gateway, clients, 20)

    for response, _ in results:
        error = error_of(response, 503)
        assert error["code"] == "upstream_overloaded"
        tries = attempts(response)
        assert 1 <= len(tries) <= 3
        assert set(tries) == {"up:503"}
    received = len(fake_openai.chat_requests)
    assert received == sum(len(attempts(response)) for response, _ in results)
    assert clients + 3 <= received <= clients + max(0.2 * clients, 3)


@STREAM
def test_a_503_then_a_200_succeeds_with_one_retry(
    http: httpx.Client, gateway_server: StartGateway, fake_openai: FakeOpenAI, stream: bool
):
    fake_openai.script(Reply.error(503))
    gateway = gateway_server(
        chain_config({"up": openai_upstream(fake_openai, retry={"attempts": 2})})
    )

    response = http.post(gateway.url + CHAT, json=chat_body(stream=stream))

    assert_served(response, stream)
    assert response.headers["x-gateway-attempts"] == "up:503,up:ok"
    assert len(fake_openai.chat_requests) == 2


@pytest.mark.parametrize(
    ("header", "value", "seconds"),
    [("retry-after", "1", 1.0), ("retry-after-ms", "400", 0.4)],
)
def test_retry_waits_as_long_as_the_upstream_asked(
    http: httpx.Client,
    gateway_server: StartGateway,
    fake_openai: FakeOpenAI,
    header: str,
    value: str,
    seconds: float,
):
    fake_openai.script(Reply.error(503, headers={header: value}))
    gateway = gateway_server(
        chain_config(
            {
                # no backoff of its own: any wait is the upstream's
                "up": openai_upstream(fake_openai, retry={"attempts": 2, "backoff_base": 0})
            }
        )
    )

    response = http.post(gateway.url + CHAT, json=chat_body())

    assert response.headers["x-gateway-attempts"] == "up:503,up:ok"
    first, second = fake_openai.chat_requests
    assert second.received_at - first.received_at >= seconds


def test_retry_that_would_end_after_the_deadline_is_not_started(
    http: httpx.Client, gateway_server: StartGateway, fake_openai: FakeOpenAI
):
    fake_openai.script(Reply.error(503, retry_after=5))
    gateway = gateway_server(
        chain_config({"up": openai_upstream(fake_openai, retry={"attempts": 2})})
    )

    started = time.monotonic()
    response = http.post(gateway.url + CHAT, json=chat_body(), headers={"x-gateway-timeout": "2"})

    assert time.monotonic() - started < 1.0, "the gateway slept a retry past its deadline"
    error_of(response, 503)
    assert response.headers["x-gateway-attempts"] == "up:503"
    assert len(fake_openai.chat_requests) == 1


# ------------------------------------------------------------------- health


def test_failing_probes_mark_the_upstream_unhealthy_and_one_success_brings_it_back(
    http: httpx.Client, gateway_server: StartGateway, two: tuple[FakeOpenAI, FakeOpenAI]
):
    primary, secondary = two
    failing = threading.Event()
    failing.set()
    primary.set_default(
        lambda _: Reply.error(500) if failing.is_set() else Reply(), path="/v1/models"
    )
    gateway = gateway_server(
        pair(primary, secondary, health={"interval": 0.05, "failure_threshold": 3})
    )
    upstream = runtime_of(gateway).upstreams["primary"]

    wait_until(lambda: upstream.state is ConnectionState.UNHEALTHY, what="unhealthy")
    assert upstream.state_reason.startswith("3 health checks failed in a row")
    probes = [r for r in primary.requests if r.path == "/v1/models"]
    assert len(probes) >= 3
    assert all(r.reply is not None and r.reply.status == 500 for r in probes)

    for _ in range(10):
        response = http.post(gateway.url + CHAT, json=chat_body())
        assert attempts(response) == ["primary:unhealthy", "secondary:ok"]
    assert primary.chat_requests == []

    failing.clear()
    wait_until(lambda: upstream.state is ConnectionState.CONNECTED, what="healthy again")
    assert upstream.state_reason == "health check passed"
    assert upstream.health.consecutive_failures == 0
    assert served_by(http.post(gateway.url + CHAT, json=chat_body())) == "primary"
    assert len(primary.chat_requests) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_upstream_auth_failure_marks_it_unhealthy_and_falls_back(
    http: httpx.Client,
    gateway_server: StartGateway,
    two: tuple[FakeOpenAI, FakeOpenAI],
    status: int,
):
    primary, secondary = two
    primary.script(Reply.error(status))
    gateway = gateway_server(pair(primary, secondary, breaker={"fail_max": 1}))

    first = http.post(gateway.url + CHAT, json=chat_body())
    later = http.post(gateway.url + CHAT, json=chat_body())

    assert attempts(first) == [f"primary:{status}", "secondary:ok"]
    assert attempts(later) == ["primary:unhealthy", "secondary:ok"]
    assert len(primary.chat_requests) == 1
    runtime = runtime_of(gateway)
    assert runtime.upstreams["primary"].state is ConnectionState.UNHEALTHY
    assert runtime.guards["primary"].breaker.state == "closed"  # our key, not its fault
