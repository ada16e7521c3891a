"""The drain's state machine (gateway/lifecycle.py), its SIGTERM handler, and the request gate
and probes that read its state (gateway/app.py, gateway/api/health.py), without a server:
requests are plain tasks tracked the way `Gateway.__call__` tracks them, and the app is driven
through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.config import Config, ServerConfig, parse_config
from gateway.lifecycle import Lifecycle, cut_by_drain, install_sigterm
from gateway.runtime import Runtime
from tests import spec


class Handover:
    """Stands for uvicorn's shutdown: counts its calls, and wakes whoever waits for one."""

    def __init__(self) -> None:
        self.calls = 0
        self.at = 0.0
        self.called = asyncio.Event()

    def __call__(self) -> None:
        self.calls += 1
        self.at = time.monotonic()
        self.called.set()


def track(lifecycle: Lifecycle, seconds: float) -> asyncio.Task[str]:
    """A request of `seconds`, tracked as `Gateway.__call__` tracks a chat request; its result
    says how it ended: "finished", "cut" (by the drain) or a CancelledError (anything else)."""

    async def request() -> str:
        try:
            await asyncio.sleep(seconds)
            return "finished"
        except asyncio.CancelledError as exc:
            if not cut_by_drain(exc):
                raise
            task = asyncio.current_task()
            assert task is not None
            assert task.cancelling() == 0, "the cut was not taken back"
            await asyncio.sleep(0)  # the request can still answer: nothing cancels it again
            return "cut"
        finally:
            lifecycle.in_flight.discard(this)
            if lifecycle.draining:
                lifecycle.idle()

    this = asyncio.get_running_loop().create_task(request())
    lifecycle.in_flight.add(this)
    return this


def test_nothing_in_flight_ends_the_drain_at_once():
    async def main() -> None:
        lifecycle, handover = Lifecycle(), Handover()
        began = time.monotonic()
        lifecycle.begin(30, handover)
        assert lifecycle.draining
        await asyncio.wait_for(lifecycle.wait(), 5)
        assert handover.calls == 1
        assert handover.at - began < 1

    asyncio.run(main())


def test_the_drain_waits_for_requests_in_flight_then_hands_over():
    async def main() -> None:
        lifecycle, handover = Lifecycle(), Handover()
        requests = [track(lifecycle, 0.05), track(lifecycle, 0.2)]
        lifecycle.begin(30, handover)
        await asyncio.wait_for(lifecycle.wait(), 5)
        assert [r.result() for r in requests] == ["finished", "finished"]
        assert handover.calls == 1
        assert not lifecycle.in_flight

    asyncio.run(main())


def test_the_drain_cuts_what_outlasts_drain_seconds():
    async def main() -> None:
        lifecycle, handover = Lifecycle(), Handover()
        short, long = track(lifecycle, 0.01), track(lifecycle, 60)
        began = time.monotonic()
        lifecycle.begin(0.3, handover)
        await asyncio.wait_for(lifecycle.wait(), 5)
        assert (short.result(), long.result()) == ("finished", "cut")
        assert 0.3 <= handover.at - began < 2
        assert handover.calls == 1

    asyncio.run(main())


def test_other_cancellations_are_not_a_drain_cut():
    async def main() -> None:
        lifecycle = Lifecycle()
        request = track(lifecycle, 60)
        await asyncio.sleep(0)
        request.cancel()  # a client's disconnect, or uvicorn's own cancel at its timeout
        with pytest.raises(asyncio.CancelledError):
            await request
        request = track(lifecycle, 60)
        await asyncio.sleep(0)
        request.cancel("some other reason")
        with pytest.raises(asyncio.CancelledError):
            await request

    asyncio.run(main())


def test_a_second_begin_changes_nothing():
    async def main() -> None:
        lifecycle, first, second = Lifecycle(), Handover(), Handover()
        request = track(lifecycle, 0.1)
        lifecycle.begin(30, first)
        lifecycle.begin(0, second)  # a repeated SIGTERM does not cut the drain short
        await asyncio.wait_for(lifecycle.wait(), 5)
        assert request.result() == "finished"
        assert (first.calls, second.calls) == (1, 0)

    asyncio.run(main())


def test_aclose_stops_a_drain_in_progress():
    async def main() -> None:
        lifecycle, handover = Lifecycle(), Handover()
        request = track(lifecycle, 60)
        lifecycle.begin(30, handover)
        await asyncio.sleep(0.01)
        await asyncio.wait_for(lifecycle.aclose(), 5)  # uvicorn stopped first (a SIGINT)
        assert handover.calls == 0
        assert lifecycle.draining
        request.cancel()

    asyncio.run(main())


# ------------------------------------------------------------------- the SIGTERM handler


def stub_runtime(drain_seconds: float) -> Any:
    """What the handler reads of a runtime: the drain time and the upstreams' requests."""
    config = Config(server=ServerConfig(drain_seconds=drain_seconds))
    return SimpleNamespace(config=config, upstreams={"a": SimpleNamespace(name="a", in_flight=2)})


@pytest.fixture
def sigterm_handler() -> Iterator[list[int]]:
    """SIGTERM's handler is one that records the signals it gets (uvicorn's, in the app); the
    test's own is back afterwards."""
    received: list[int] = []
    original = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, original)


def test_sigterm_drains_then_chains_to_the_handler_before(sigterm_handler):
    async def main() -> None:
        lifecycle = Lifecycle()
        previous = signal.getsignal(signal.SIGTERM)
        uninstall = install_sigterm(lifecycle, lambda: stub_runtime(0.2))
        try:
            request = track(lifecycle, 60)
            signal.raise_signal(signal.SIGTERM)
            assert lifecycle.draining, "readiness must fail at once, before the loop runs"
            assert sigterm_handler == [], "uvicorn heard of it before the drain"
            signal.raise_signal(signal.SIGTERM)  # a repeat changes nothing
            async with asyncio.timeout(5):
                while sigterm_handler == []:  # noqa: ASYNC110 (the handler is no awaitable)
                    await asyncio.sleep(0.01)
            assert request.result() == "cut"
        finally:
            uninstall()
        assert signal.getsignal(signal.SIGTERM) is previous

    asyncio.run(main())
    assert sigterm_handler == [signal.SIGTERM]


def test_off_the_main_thread_no_handler_is_installed(sigterm_handler):
    before = signal.getsignal(signal.SIGTERM)

    def serve_in_thread() -> None:
        async def main() -> None:
            uninstall = install_sigterm(Lifecycle(), lambda: stub_runtime(1))
            assert signal.getsignal(signal.SIGTERM) is before
            uninstall()

        asyncio.run(main())

    thread = threading.Thread(target=serve_in_thread)
    thread.start()
    thread.join(5)
    assert not thread.is_alive()
    assert signal.getsignal(signal.SIGTERM) is before


# ------------------------------------------------------------------- the gate and the probes

MOCK = """
upstreams: {mock: {provider: mock}}
models: {mock-1: [{upstream: mock, model: mock-1}]}
"""
CHAT = "/v1/chat/completions"


def test_while_draining_only_probes_and_metrics_are_served():
    async def main() -> None:
        config = parse_config(MOCK, source="<test>")
        rt = await Runtime.open(config)
        app = create_app(config, runtime=rt)
        body = {"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]}
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                assert (await client.get("/readyz")).status_code == 200
                assert (await client.post(CHAT, json=body)).status_code == 200

                app.lifecycle.draining = True

                ready = await client.get("/readyz")
                assert (ready.status_code, ready.json()["status"]) == (503, "draining")
                assert (await client.get("/healthz")).status_code == 200
                assert (await client.get("/metrics")).status_code == 200
                for method, path in (("POST", CHAT), ("GET", "/v1/models"), ("GET", "/x")):
                    refused = await client.request(method, path, json=body)
                    assert refused.status_code == 503, (path, refused.text)
                    spec.validate("ErrorResponse", refused.json())
                    assert refused.json()["error"]["code"] == "shutting_down"
                    assert refused.headers["connection"] == "close"
                    assert refused.headers["retry-after"] == "1"
                    assert refused.headers["x-request-id"]
                    assert "x-should-retry" not in refused.headers  # clients may retry
            assert not app.lifecycle.in_flight
        finally:
            await rt.aclose()

    asyncio.run(main())
