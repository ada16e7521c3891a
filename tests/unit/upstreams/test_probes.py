"""gateway/upstreams/probes.py: the state rules, records, transitions and the probe loop.

Each upstream is an OpenAI-style server behind an `httpx.MockTransport` whose answers the test
queues (the real-socket cases, one per provider, are in tests/integration/test_probes.py). Every
test runs its own loop with `asyncio.run()`; waits are on conditions, each bounded.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.config import HealthSettings, Secret, UpstreamConfig
from gateway.errors import UpstreamUnavailable
from gateway.providers.base import UpstreamRequest
from gateway.upstreams.clients import Clients
from gateway.upstreams.probes import Prober
from gateway.upstreams.registry import ConnectionState, Registry, Upstream

KEY = "sk-probe-test-0123456789abcdef"
WALL = 1_700_000_000.0
BOUND = 5.0  # seconds any awaited condition may take before the test fails

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]
Answer = httpx.Response | Exception | Handler


def models(*names: str) -> httpx.Response:
    data = [{"id": n, "object": "model", "created": 0, "owned_by": "test"} for n in names]
    return httpx.Response(200, json={"object": "list", "data": data})


def error(status: int, message: str = "boom") -> httpx.Response:
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
    return httpx.Response(status, json=body)


class Server:
    """One upstream: answers queued by the test, then `models("gpt-4o")`; counts requests."""

    def __init__(self) -> None:
        self.queue: deque[Answer] = deque()
        self.requests: list[httpx.Request] = []
        self.arrived = asyncio.Condition()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        async with self.arrived:
            self.arrived.notify_all()
        answer = self.queue.popleft() if self.queue else models("gpt-4o")
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return await answer(request)

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(BOUND), self.arrived:
            await self.arrived.wait_for(lambda: len(self.requests) >= count)


def config(**fields: Any) -> UpstreamConfig:
    health = HealthSettings(**fields.pop("health", {"interval": 0}))
    return UpstreamConfig(
        provider="openai",
        base_url="http://upstream.test/v1",
        api_key=Secret(KEY),
        health=health,
        **fields,
    )


@dataclass
class Setup:
    prober: Prober
    upstreams: Registry
    clients: Clients
    servers: dict[str, Server]

    def __getitem__(self, name: str) -> Upstream:
        return self.upstreams[name]


@asynccontextmanager
async def setup(
    clock: Callable[[], float] | None = None, **configs: UpstreamConfig
) -> AsyncIterator[Setup]:
    configs = configs or {"up": config()}
    servers = {name: Server() for name in configs}
    transports = {name: httpx.MockTransport(s.handle) for name, s in servers.items()}
    upstreams = Registry(configs)
    clients = await Clients.open(configs, transports)
    extra = {"clock": clock} if clock else {}
    try:
        yield Setup(
            Prober(upstreams, clients, wall=lambda: WALL, **extra), upstreams, clients, servers
        )
    finally:
        await clients.aclose()


async def fetch_models(clients: Clients, name: str = "up") -> int:
    reply = await clients.send(name, UpstreamRequest("GET", "http://upstream.test/v1/models", {}))
    try:
        await reply.read()
        return reply.status
    finally:
        await reply.aclose()


async def until(condition: Callable[[], bool]) -> None:
    """Wait, at most BOUND seconds, for `condition()`: state another task writes."""
    async with asyncio.timeout(BOUND):
        while not condition():  # noqa: ASYNC110 (nothing to wait on but the state itself)
            await asyncio.sleep(0.005)


def state_changes(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    return [
        (r.__dict__["upstream"], r.__dict__["from"], r.__dict__["to"])
        for r in caplog.records
        if r.name == "gateway.health" and r.getMessage() == "upstream state changed"
    ]


def state(upstream: Upstream) -> ConnectionState:
    """The state now (a call, so that mypy does not narrow it across awaits)."""
    return upstream.state


# ------------------------------------------------------------------ check: records and rules


def test_failure_threshold_makes_connected_unhealthy_and_one_pass_restores(caplog):
    caplog.set_level(logging.INFO, "gateway.health")

    async def scenario() -> None:
        async with setup(up=config(health={"interval": 0, "failure_threshold": 3})) as s:
            up = s["up"]
            s.servers["up"].queue.extend([error(500), error(502), error(503)])
            assert await s.prober.check(up) is False
            assert await s.prober.check(up) is False
            assert (up.state, up.health.consecutive_failures) == (ConnectionState.CONNECTED, 2)
            assert up.unusable is None
            assert await s.prober.check(up) is False
            assert state(up) is ConnectionState.UNHEALTHY
            assert up.unusable is not None
            assert up.unusable.startswith("upstream 'up' is unhealthy: 3 health checks failed")
            assert await s.prober.check(up) is True
            assert state(up) is ConnectionState.CONNECTED
            assert up.unusable is None
            assert (up.health.consecutive_failures, up.health.checks) == (0, 4)

    asyncio.run(scenario())
    assert state_changes(caplog) == [
        ("up", "connected", "unhealthy"),
        ("up", "unhealthy", "connected"),
    ]


def test_check_records_models_latency_and_times():
    ticks = iter([10.0, 10.25, 20.0, 20.5])

    async def scenario() -> None:
        async with setup(clock=lambda: next(ticks)) as s:
            up = s["up"]
            s.servers["up"].queue.extend([models("gpt-4o", "gpt-4o-mini"), error(500, "down")])
            assert await s.prober.check(up) is True
            record = up.health
            assert record.models == ("gpt-4o", "gpt-4o-mini")
            assert record.latency_ms == pytest.approx(250.0)
            assert (record.last_success, record.last_error_at, record.last_error) == (
                WALL,
                None,
                None,
            )
            assert await s.prober.check(up) is False
            record = up.health
            assert record.models == ("gpt-4o", "gpt-4o-mini")  # the last known listing stays
            assert record.last_success == WALL
            assert record.last_error_at == WALL
            assert record.last_error is not None
            assert "down" in record.last_error
            assert record.latency_ms == pytest.approx(500.0)  # a failure's time is kept too
            assert (record.consecutive_failures, record.checks) == (1, 2)

    asyncio.run(scenario())


def test_probe_errors_are_redacted_in_records_and_logs(caplog):
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        async with setup() as s:
            up = s["up"]
            s.servers["up"].queue.extend(
                [error(500, f"key {KEY} is bad"), RuntimeError(f"crashed holding {KEY}")]
            )
            assert await s.prober.check(up) is False
            first = up.health.last_error
            assert first is not None
            assert KEY not in first
            assert "[REDACTED]" in first
            assert await s.prober.check(up) is False
            second = up.health.last_error
            assert second is not None
            assert second.startswith("health check failed: RuntimeError: crashed holding")
            assert KEY not in second

    asyncio.run(scenario())
    assert KEY not in caplog.text
    assert "health check crashed" in caplog.text


def test_check_is_bounded_by_the_health_timeout():
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(60)
        raise AssertionError("unreachable")

    async def scenario() -> float:
        async with setup(up=config(health={"interval": 0, "timeout": 0.1})) as s:
            s.servers["up"].queue.append(never)
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await s.prober.check(s["up"]) is False
            assert s["up"].health.last_error == "health check timed out after 0.1 s"
            return loop.time() - started

    assert asyncio.run(scenario()) < 2.0


def test_unreachable_upstream_fails_its_check():
    async def scenario() -> None:
        async with setup() as s:
            s.servers["up"].queue.append(httpx.ConnectError("refused"))
            assert await s.prober.check(s["up"]) is False
            assert s["up"].health.last_error == "upstream 'up' is unreachable"

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "state",
    [ConnectionState.DISCONNECTED, ConnectionState.DISCONNECTING, ConnectionState.CONNECTING],
)
def test_checks_leave_the_states_connect_and_disconnect_own(state):
    async def scenario() -> None:
        async with setup() as s:
            up = s["up"]
            up.state = state
            s.servers["up"].queue.extend([error(500)] * 5)
            for _ in range(5):
                assert await s.prober.check(up) is False
            assert up.state is state
            assert await s.prober.check(up) is True
            assert up.state is state

    asyncio.run(scenario())


# ------------------------------------------------------------------ mark_unhealthy


def test_mark_unhealthy_takes_effect_at_once_and_a_passing_probe_restores(caplog):
    caplog.set_level(logging.INFO, "gateway.health")

    async def scenario() -> None:
        async with setup() as s:
            up = s["up"]
            s.prober.mark_unhealthy("up", f"upstream 'up' answered 401: bad key {KEY}")
            assert state(up) is ConnectionState.UNHEALTHY
            assert up.unusable is not None
            assert "answered 401" in up.unusable
            assert KEY not in up.unusable
            assert up.health.last_error is not None
            assert KEY not in up.health.last_error
            assert up.health.last_error_at == WALL
            assert await s.prober.check(up) is True
            assert state(up) is ConnectionState.CONNECTED

    asyncio.run(scenario())
    assert state_changes(caplog) == [
        ("up", "connected", "unhealthy"),
        ("up", "unhealthy", "connected"),
    ]
    assert KEY not in caplog.text


def test_mark_unhealthy_leaves_a_disconnected_upstream_alone():
    async def scenario() -> None:
        async with setup() as s:
            await s.prober.disconnect("up", drain=0)
            s.prober.mark_unhealthy("up", "answered 403")
            assert state(s["up"]) is ConnectionState.DISCONNECTED
            assert s["up"].health.last_error == "answered 403"

    asyncio.run(scenario())


# ------------------------------------------------------------------ connect and disconnect


def test_connect_probes_while_connecting_then_connects(caplog):
    caplog.set_level(logging.INFO, "gateway.health")
    seen: list[tuple[ConnectionState, str | None]] = []

    async def scenario() -> None:
        async with setup() as s:
            up = s["up"]

            async def observe(request: httpx.Request) -> httpx.Response:
                seen.append((up.state, up.unusable))
                return models("gpt-4o")

            await s.prober.disconnect("up", drain=0)
            s.servers["up"].queue.append(observe)
            record = await s.prober.connect("up")
            assert record is up.health
            assert record.models == ("gpt-4o",)
            assert state(up) is ConnectionState.CONNECTED
            assert up.unusable is None
            assert await fetch_models(s.clients) == 200  # a fresh client serves again

    asyncio.run(scenario())
    assert seen == [(ConnectionState.CONNECTING, "upstream 'up' is connecting")]
    assert state_changes(caplog) == [
        ("up", "connected", "disconnecting"),
        ("up", "disconnecting", "disconnected"),
        ("up", "disconnected", "connecting"),
        ("up", "connecting", "connected"),
    ]


def test_failed_connect_leaves_the_upstream_unhealthy_saying_why():
    async def scenario() -> None:
        async with setup() as s:
            up = s["up"]
            s.servers["up"].queue.append(error(401, "Incorrect API key provided"))
            record = await s.prober.connect("up")
            assert state(up) is ConnectionState.UNHEALTHY
            assert record.last_error is not None
            assert record.last_error == "upstream 'up' refused the gateway's credentials (401)"
            assert up.unusable is not None
            assert "connect failed" in up.unusable
            assert await s.prober.check(up) is True  # the probes bring it back
            assert state(up) is ConnectionState.CONNECTED

    asyncio.run(scenario())


def test_disconnect_drains_requests_in_flight_before_closing():
    async def scenario() -> None:
        async with setup() as s:
            up = s["up"]
            up.in_flight = 2
            task = asyncio.create_task(s.prober.disconnect("up", drain=BOUND * 2))
            await asyncio.sleep(0)  # disconnect runs up to its first wait
            assert state(up) is ConnectionState.DISCONNECTING
            assert up.unusable == "upstream 'up' is disconnecting"
            assert await fetch_models(s.clients) == 200  # the client stays open while draining
            up.in_flight = 1
            await asyncio.sleep(0.05)
            assert not task.done()
            up.in_flight = 0
            async with asyncio.timeout(BOUND):
                await task
            assert state(up) is ConnectionState.DISCONNECTED
            assert up.state_reason == "disconnected"
            sent = len(s.servers["up"].requests)
            with pytest.raises(UpstreamUnavailable, match="'up' is disconnected"):
                await fetch_models(s.clients)
            assert len(s.servers["up"].requests) == sent  # refused without a network call

    asyncio.run(scenario())


def test_disconnect_drain_is_bounded(caplog):
    caplog.set_level(logging.INFO, "gateway.health")

    async def scenario() -> None:
        async with setup() as s:
            up = s["up"]
            up.in_flight = 1  # a request that never finishes
            async with asyncio.timeout(BOUND):
                await s.prober.disconnect("up", drain=0.1)
            assert state(up) is ConnectionState.DISCONNECTED
            assert up.state_reason == "disconnected (1 request(s) cut)"

    asyncio.run(scenario())
    assert "disconnect cuts requests in flight" in caplog.text


def test_disconnecting_twice_and_concurrent_transitions_take_turns():
    async def scenario() -> None:
        async with setup() as s:
            up = s["up"]
            up.in_flight = 1
            first = asyncio.create_task(s.prober.disconnect("up", drain=BOUND))
            second = asyncio.create_task(s.prober.connect("up"))
            await asyncio.sleep(0)
            assert state(up) is ConnectionState.DISCONNECTING
            up.in_flight = 0
            async with asyncio.timeout(BOUND):
                await first
                await second
            assert state(up) is ConnectionState.CONNECTED  # connect ran after disconnect
            await s.prober.disconnect("up", drain=0)
            await s.prober.disconnect("up", drain=0)
            assert state(up) is ConnectionState.DISCONNECTED

    asyncio.run(scenario())


# ------------------------------------------------------------------ run


def test_run_probes_at_the_interval_and_skips_what_takes_no_traffic():
    async def scenario() -> None:
        fast = {"interval": 0.05, "failure_threshold": 1}
        async with setup(
            up=config(health=fast),
            off=config(health=fast, enabled=False),
            gone=config(health=fast),
            quiet=config(health={"interval": 0}),
        ) as s:
            await s.prober.disconnect("gone", drain=0)
            loop = asyncio.get_running_loop()
            started = loop.time()
            runner = asyncio.create_task(s.prober.run())
            server = s.servers["up"]
            await server.wait_for(1)
            first = loop.time() - started
            await server.wait_for(3)
            runner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await runner
            assert first >= 0.05 - 0.01  # the first probe waits one interval
            assert s["up"].health.checks >= 3
            assert [len(s.servers[n].requests) for n in ("off", "gone", "quiet")] == [0, 0, 0]

    asyncio.run(scenario())


def test_run_marks_unhealthy_after_failures_and_brings_it_back(caplog):
    caplog.set_level(logging.INFO, "gateway.health")

    async def scenario() -> None:
        async with setup(up=config(health={"interval": 0.02, "failure_threshold": 3})) as s:
            up = s["up"]
            s.servers["up"].queue.extend([error(500)] * 3)
            runner = asyncio.create_task(s.prober.run())
            try:
                await until(lambda: up.health.checks >= 4)
            finally:
                runner.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await runner
            assert state(up) is ConnectionState.CONNECTED
            assert up.health.consecutive_failures == 0

    asyncio.run(scenario())
    # the log has every transition, however quickly they followed each other
    assert state_changes(caplog) == [
        ("up", "connected", "unhealthy"),
        ("up", "unhealthy", "connected"),
    ]


class _Flaky(Prober):
    """A prober whose first check raises, as a bug would."""

    calls = 0

    async def check(self, upstream: Upstream) -> bool:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug in check")
        return await super().check(upstream)


def test_run_survives_a_probe_that_raises(caplog):
    async def scenario() -> None:
        async with setup(up=config(health={"interval": 0.02})) as s:
            prober = _Flaky(s.upstreams, s.clients)
            runner = asyncio.create_task(prober.run())
            try:
                await s.servers["up"].wait_for(2)  # the checks after the one that raised
            finally:
                runner.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await runner
            assert prober.calls >= 3

    asyncio.run(scenario())
    assert "health loop error" in caplog.text


def test_run_with_nothing_to_probe_runs_until_cancelled():
    async def scenario() -> None:
        async with setup(up=config(health={"interval": 0})) as s:
            runner = asyncio.create_task(s.prober.run())
            for _ in range(20):
                await asyncio.sleep(0)
            assert not runner.done()
            runner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await runner
            assert s.servers["up"].requests == []

    asyncio.run(scenario())
