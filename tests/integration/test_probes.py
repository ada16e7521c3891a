"""Health probes and connect/disconnect against fake providers on real sockets (127.0.0.1).

Each provider's fake answers its own probe (OpenAI and Anthropic: `GET /v1/models`; Ollama:
`/api/version` then `/api/tags`; TGI: `/health` then `/info`; Gemini: its model list), through
the gateway's own HTTP/1.1 pool, so what is recorded is what a real server would yield.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.config import HealthSettings, Secret, UpstreamConfig
from gateway.errors import UpstreamError, UpstreamUnavailable
from gateway.providers.base import UpstreamRequest
from gateway.upstreams.clients import Clients
from gateway.upstreams.probes import Prober
from gateway.upstreams.registry import ConnectionState, Registry, Upstream
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.ollama_upstream import FakeOllama
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.tgi_upstream import FakeTGI
from tests.fakes.upstream import FakeUpstream, Reply
from tests.integration.conftest import refused_base_url

KEY = "sk-probe-integration-0123456789abcdef"
BOUND = 5.0


@dataclass
class Managed:
    prober: Prober
    upstream: Upstream
    clients: Clients


@asynccontextmanager
async def managed(provider: str, base_url: str, **health: Any) -> AsyncIterator[Managed]:
    config = UpstreamConfig(
        provider=provider,  # type: ignore[arg-type]
        base_url=base_url,
        api_key=Secret(KEY),
        health=HealthSettings(**{"interval": 0, "timeout": 2.0, **health}),
    )
    upstreams = Registry({"up": config})
    clients = await Clients.open({"up": config})
    try:
        yield Managed(Prober(upstreams, clients), upstreams["up"], clients)
    finally:
        await clients.aclose()


def chat(fake: FakeOpenAI) -> UpstreamRequest:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    return UpstreamRequest(
        "POST", fake.base_url + "/chat/completions", headers, json.dumps(body).encode()
    )


async def served(clients: Clients, request: UpstreamRequest) -> int:
    reply = await clients.send("up", request)
    try:
        await reply.read()
        return reply.status
    finally:
        await reply.aclose()


def state(upstream: Upstream) -> ConnectionState:
    """The state now (a call, so that mypy does not narrow it across awaits)."""
    return upstream.state


PROVIDERS: dict[str, tuple[Callable[..., FakeUpstream], list[str]]] = {
    "openai": (FakeOpenAI, ["/v1/models"]),
    "anthropic": (FakeAnthropic, ["/v1/models", "/v1/models"]),  # limit=1, then a page
    "gemini": (FakeGemini, ["/v1beta/models", "/v1beta/models"]),
    "ollama": (FakeOllama, ["/api/version", "/api/tags"]),
    "tgi": (FakeTGI, ["/health", "/info"]),
}


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_probe_passes_and_records_the_models_each_provider_lists(provider):
    make, paths = PROVIDERS[provider]
    with make(api_key=KEY) as fake:

        async def scenario() -> None:
            async with managed(provider, fake.base_url) as m:
                assert await m.prober.check(m.upstream) is True
                assert m.upstream.health.models == tuple(fake.models)
                assert m.upstream.health.latency_ms is not None
                assert m.upstream.health.latency_ms > 0

        asyncio.run(scenario())
        assert [r.path for r in fake.requests] == paths


def test_probe_failing_three_times_marks_unhealthy_and_one_success_brings_it_back():
    with FakeOpenAI(api_key=KEY) as fake:
        fake.script(*[Reply.error(500)] * 3, path="/v1/models")

        async def scenario() -> None:
            async with managed("openai", fake.base_url, failure_threshold=3) as m:
                up = m.upstream
                for expected in (ConnectionState.CONNECTED,) * 2 + (ConnectionState.UNHEALTHY,):
                    assert await m.prober.check(up) is False
                    assert up.state is expected
                assert up.health.last_error is not None
                assert up.health.last_error.startswith("upstream 'up' failed with status 500")
                assert up.unusable is not None
                assert up.unusable.startswith("upstream 'up' is unhealthy: 3 health checks failed")
                assert await m.prober.check(up) is True
                assert state(up) is ConnectionState.CONNECTED
                assert up.health.models == ("gpt-4o-mini", "gpt-4o")

        asyncio.run(scenario())
        assert len(fake.requests) == 4


def test_probe_error_bodies_are_redacted():
    with FakeOpenAI(api_key=KEY) as fake:
        fake.script(Reply.error(500, f"internal error near {KEY}"), path="/v1/models")

        async def scenario() -> str:
            async with managed("openai", fake.base_url) as m:
                assert await m.prober.check(m.upstream) is False
                error = m.upstream.health.last_error
                assert error is not None
                return error

        error = asyncio.run(scenario())
        assert "internal error near" in error  # the message was kept...
        assert KEY not in error  # ...with the key masked


def test_tgi_without_its_info_fails_its_check():
    with FakeTGI(api_key=KEY) as fake:
        fake.script(Reply.error(503), path="/info")

        async def scenario() -> None:
            async with managed("tgi", fake.base_url) as m:
                assert await m.prober.check(m.upstream) is False
                assert m.upstream.health.models == ()

        asyncio.run(scenario())
        assert [r.path for r in fake.requests] == ["/health", "/info"]


def test_disconnect_lets_a_request_in_flight_finish_then_refuses_new_ones():
    with FakeOpenAI(api_key=KEY) as fake:
        fake.script(Reply(content="slow answer", first_byte_delay=0.3))

        async def scenario() -> None:
            async with managed("openai", fake.base_url) as m:
                up = m.upstream
                up.in_flight += 1  # as the pipeline does around a request

                async def request() -> int:
                    try:
                        return await served(m.clients, chat(fake))
                    finally:
                        up.in_flight -= 1

                flying = asyncio.create_task(request())
                await asyncio.to_thread(fake.wait_for_requests, 1)
                async with asyncio.timeout(BOUND):
                    await m.prober.disconnect("up", drain=BOUND)
                assert flying.done()
                assert flying.result() == 200  # drained, not cut
                assert state(up) is ConnectionState.DISCONNECTED
                with pytest.raises(UpstreamUnavailable):
                    await served(m.clients, chat(fake))

                record = await m.prober.connect("up")
                assert state(up) is ConnectionState.CONNECTED
                assert record.models == ("gpt-4o-mini", "gpt-4o")
                assert await served(m.clients, chat(fake)) == 200

        asyncio.run(scenario())
        assert [r.path for r in fake.requests] == [
            "/v1/chat/completions",
            "/v1/models",
            "/v1/chat/completions",
        ]


def test_disconnect_after_its_drain_cuts_what_is_still_in_flight():
    with FakeOpenAI(api_key=KEY) as fake:
        fake.script(Reply.hanging())

        async def scenario() -> None:
            async with managed("openai", fake.base_url) as m:
                up = m.upstream
                up.in_flight += 1
                flying = asyncio.create_task(served(m.clients, chat(fake)))
                await asyncio.to_thread(fake.wait_for_requests, 1)
                async with asyncio.timeout(BOUND):
                    await m.prober.disconnect("up", drain=0.2)
                    with pytest.raises(UpstreamError):
                        await flying
                assert state(up) is ConnectionState.DISCONNECTED

        asyncio.run(scenario())
        assert fake.requests[0].wait_disconnected(BOUND)


def test_reconnecting_a_connected_upstream_lets_requests_on_its_old_pool_finish():
    with FakeOpenAI(api_key=KEY) as fake:
        fake.script(Reply(content="slow answer", first_byte_delay=0.3))

        async def scenario() -> None:
            async with managed("openai", fake.base_url) as m:
                flying = asyncio.create_task(served(m.clients, chat(fake)))
                await asyncio.to_thread(fake.wait_for_requests, 1)
                await m.prober.connect("up")  # a fresh pool; the old one retires when idle
                assert state(m.upstream) is ConnectionState.CONNECTED
                async with asyncio.timeout(BOUND):
                    assert await flying == 200
                assert await served(m.clients, chat(fake)) == 200

        asyncio.run(scenario())
        assert not fake.requests[0].disconnected


def test_connecting_to_an_unreachable_upstream_leaves_it_unhealthy():
    with refused_base_url() as base_url:

        async def scenario() -> None:
            async with managed("openai", base_url) as m:
                record = await m.prober.connect("up")
                assert state(m.upstream) is ConnectionState.UNHEALTHY
                assert record.last_error == "upstream 'up' is unreachable"
                assert m.upstream.unusable == (
                    "upstream 'up' is unhealthy: connect failed: upstream 'up' is unreachable"
                )

        asyncio.run(scenario())


def test_run_probes_a_real_upstream_until_it_is_unhealthy_and_back(caplog):
    caplog.set_level(logging.INFO, "gateway.health")
    with FakeOpenAI(api_key=KEY) as fake:
        fake.script(*[Reply.error(500)] * 3, path="/v1/models")

        async def scenario() -> None:
            async with managed("openai", fake.base_url, interval=0.05) as m:
                runner = asyncio.create_task(m.prober.run())
                try:
                    await asyncio.to_thread(fake.wait_for_requests, 4, BOUND, "/v1/models")
                    async with asyncio.timeout(BOUND):
                        while m.upstream.state is not ConnectionState.CONNECTED:  # noqa: ASYNC110
                            await asyncio.sleep(0.005)
                finally:
                    runner.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await runner
                assert m.upstream.health.models == ("gpt-4o-mini", "gpt-4o")

        asyncio.run(scenario())
    changes = [
        (r.__dict__["from"], r.__dict__["to"]) for r in caplog.records if r.name == "gateway.health"
    ]
    assert changes == [("connected", "unhealthy"), ("unhealthy", "connected")]
