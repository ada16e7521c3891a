"""What the gateway's end-to-end tests share: checked clients, upstreams, configs, servers.

- Clients: `http` (httpx) and `sdk(gateway)` (the official OpenAI SDK) are built on a
  `Wiretap` (tests/integration/wiretap.py) that keeps every response body the client reads;
  the `wiretap` fixture checks them all against OpenAI's schemas at teardown, so no body a test
  sees goes unchecked, not even one the SDK parsed.
- Upstreams: the fake OpenAI (`fake_openai` from tests/conftest.py, or `shared_fake` for a
  module seen through the per-test `fake` view, because every server costs ~0.2 s to stop);
  `ScriptedStream` for SSE endings the fake cannot make; `refused_base_url()` for a port that
  refuses connections.
- Gateways: `gateway_server` (tests/conftest.py) per test, `serve()` for wider scopes.

    def test_x(http, sdk, gateway_server, fake_openai):
        gateway = gateway_server(single_upstream(fake_openai))
        http.post(gateway.url + CHAT, json=chat_body())      # raw httpx, checked
        sdk(gateway).chat.completions.create(...)            # the official SDK, checked
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import httpx
import httpx2
import openai
import pytest
import yaml
from starlette.types import ASGIApp

from gateway.upstreams.registry import ConnectionState
from tests import spec
from tests.conftest import GatewayServer
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI, RecordedRequest
from tests.fakes.upstream import FakeUpstream
from tests.integration.wiretap import CHAT as CHAT
from tests.integration.wiretap import (
    Wiretap,
    async_http_client,
    async_openai_client,
    http_client,
    openai_client,
)
from tests.servers import LoopName, ServerThread

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.runtime import Runtime

UPSTREAM_KEY = "sk-upstream-test-0123456789abcdef"


# ------------------------------------------------------------------- request and config helpers


def chat_body(
    model: str = "gpt-4o-mini", content: str = "Hello there!", **fields: Any
) -> dict[str, Any]:
    """A minimal valid chat request, plus `fields`."""
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


# Fixtures shared by a whole module make many upstream failures on purpose: a breaker that
# opened after five of them would change what the next test sees. The breaker's own tests
# (test_resilience.py) set it as they need.
NO_BREAKER = {"fail_max": 1_000_000}


def openai_upstream(target: FakeOpenAI | str, **settings: Any) -> dict[str, Any]:
    """An `openai` upstream pointing at a fake (or a base URL), with the test key and, unless
    `settings` say otherwise, a breaker that does not open."""
    base_url = target if isinstance(target, str) else target.base_url
    return {
        "provider": "openai",
        "base_url": base_url,
        "api_key": UPSTREAM_KEY,
        "breaker": NO_BREAKER,
        **settings,
    }


def single_upstream(
    target: FakeOpenAI | str,
    *,
    model: str = "gpt-4o-mini",
    upstream_model: str = "gpt-4o-mini",
    server: Mapping[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """A config with one upstream, `fake`, serving the public `model`."""
    config: dict[str, Any] = {
        "upstreams": {"fake": openai_upstream(target, **settings)},
        "models": {model: [{"upstream": "fake", "model": upstream_model}]},
    }
    if server:
        config["server"] = dict(server)
    return config


@contextlib.contextmanager
def refused_base_url() -> Iterator[str]:
    """A base URL on 127.0.0.1 whose port refuses connections: bound (so nobody else takes it)
    but not listening, for as long as the context lasts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


MOCK_CONFIG: dict[str, Any] = {
    "upstreams": {"mock": {"provider": "mock"}},
    "models": {"mock-1": [{"upstream": "mock", "model": "mock-1"}]},
}


@contextlib.contextmanager
def serve(
    config: Mapping[str, Any] | Config,
    environ: Mapping[str, str] | None = None,
    loop: LoopName = "uvloop",
) -> Iterator[GatewayServer]:
    """The gateway for `config` (a dict, or a parsed `Config`) under uvicorn, for a `with` block:
    what the `gateway_server` fixture does, for fixtures of a wider scope. `environ` (default:
    os.environ) expands the config's `${VAR}`s. The loop is uvloop, as `gateway serve` runs it
    (the `gateway_server` fixture's default is asyncio, so the tests cover both)."""
    from gateway.app import create_app
    from gateway.config import parse_config
    from gateway.http import GatewayHttpProtocol

    if isinstance(config, Mapping):
        text = yaml.safe_dump(dict(config), sort_keys=False)
        config = parse_config(text, source="<test>", environ=environ)
    app = create_app(config)
    with ServerThread(app, name="gateway", loop=loop, http=GatewayHttpProtocol) as server:
        _SHARED.append(app)
        try:
            yield GatewayServer(url=server.url, config=config, app=app)
        finally:
            _SHARED.remove(app)


_SHARED: list[ASGIApp] = []  # gateways `serve()` runs now, which tests of a module share


def settle(app: ASGIApp) -> None:
    """Undo what upstream failures taught a gateway, for the next test that shares it: a pause
    from a 429's retry-after, an upstream marked unhealthy by a 401/403."""
    runtime: Runtime = app.state.runtime  # type: ignore[attr-defined]
    for guards in runtime.guards.values():
        guards.limiter.resume()
    for upstream in runtime.upstreams.values():
        if upstream.state == ConnectionState.UNHEALTHY:
            upstream.state = ConnectionState.CONNECTED


@pytest.fixture(autouse=True)
def _settle_shared_gateways() -> Iterator[None]:
    yield
    for app in _SHARED:
        settle(app)


def error_of(response: httpx.Response | httpx2.Response, status: int) -> dict[str, Any]:
    """The `error` object of a gateway error response, after checking its status and shape."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id")
    body = response.json()
    spec.validate("ErrorResponse", body)
    error: dict[str, Any] = body["error"]
    return error


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll `condition` until it holds; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.01)


class ScriptedStream:
    """An upstream (ASGI app) for the stream endings the fake OpenAI does not make (an error
    event, a broken event, no finish) after a first good event: each request gets the next
    scripted list of SSE parts, as a 200 stream with `gap` seconds between parts (so each part
    is a read of its own), ended cleanly; a 500 when nothing is scripted."""

    def __init__(self, gap: float = 0.05) -> None:
        self.gap = gap
        self._lock = threading.Lock()
        self._scripts: list[tuple[bytes, ...]] = []

    def script(self, *parts: bytes) -> None:
        with self._lock:
            self._scripts.append(parts)

    def pending(self) -> int:
        with self._lock:
            return len(self._scripts)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        while (await receive()).get("more_body"):
            pass
        with self._lock:
            parts = self._scripts.pop(0) if self._scripts else None
        if parts is None:
            body = b'{"error": {"message": "nothing scripted", "type": "server_error"}}'
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        headers = [(b"content-type", b"text/event-stream"), (b"x-request-id", b"req_scripted")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for position, part in enumerate(parts):
            if position:
                await asyncio.sleep(self.gap)  # pacing, so each part is a read of its own
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


@contextlib.contextmanager
def scripted_stream(gap: float = 0.05) -> Iterator[tuple[ScriptedStream, str]]:
    """Serve a `ScriptedStream` on 127.0.0.1; yields it and its base URL."""
    app = ScriptedStream(gap)
    with ServerThread(app, name="scripted", lifespan="off") as server:
        yield app, server.url + "/v1"


def async_http(tap: Wiretap, **options: Any) -> httpx.AsyncClient:
    """A tapped `httpx.AsyncClient`; build it inside the event loop that uses it."""
    return async_http_client(tap, **options)


def async_sdk(tap: Wiretap, gateway: GatewayServer, **options: Any) -> openai.AsyncOpenAI:
    """A tapped `AsyncOpenAI` on the gateway; build it inside the event loop that uses it."""
    return async_openai_client(tap, gateway.base_url, **options)


def request_log(caplog: pytest.LogCaptureFixture, request_id: str) -> logging.LogRecord:
    """The gateway's one `gateway.request` line for `request_id`. It is written as the request
    ends, which may be just after the client has its answer: polled for, up to 5 s."""
    found: list[logging.LogRecord] = []

    def logged() -> bool:
        found[:] = [
            r
            for r in list(caplog.records)
            if r.name == "gateway.request"
            and getattr(r, "request_id", None) == request_id
            and r.getMessage() == "chat completion"
        ]
        return bool(found)

    wait_until(logged, what=f"the request line of {request_id}")
    [record] = found
    return record


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Everything logged, extra fields included (`caplog.text` shows messages only)."""
    return "\n".join(f"{r.getMessage()} {r.__dict__}" for r in list(caplog.records))


# ------------------------------------------------------------------- fixtures


class FakeView:
    """One test's share of a fake upstream that a whole module uses (a server costs ~0.2 s to
    stop, a module may have dozens of tests): the same scripting, and only the requests made
    since the test began. `finish()`, at the test's end, requires every scripted reply to be
    used and every request to be over, so nothing of one test reaches the next."""

    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self._first = len(fake.requests)
        self._earlier_chats = len(fake.chat_requests)

    @property
    def url(self) -> str:
        return self.fake.url

    @property
    def base_url(self) -> str:
        return self.fake.base_url

    def script(self, *replies: Behaviour, path: str | None = None) -> None:
        self.fake.script(*replies, path=path)

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.fake.requests[self._first :]

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.route == self.fake.dialect.chat_route]

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until this test made `count` chat requests; raises AssertionError."""
        earlier = self._earlier_chats
        return self.fake.wait_for_requests(earlier + count, timeout)[earlier:]

    def finish(self) -> None:
        unfinished = [r for r in self.requests if not r.wait_ended(5)]
        leftovers = self.fake.clear_scripts()  # so that one failed test does not fail the next
        assert not unfinished, f"requests still running at the end of the test: {unfinished}"
        assert not leftovers, f"{leftovers} scripted repl(y/ies) never used"


@pytest.fixture(scope="module")
def shared_fake() -> Iterator[FakeOpenAI]:
    """A `FakeOpenAI` for a whole module; tests use it through the `fake` fixture."""
    with FakeOpenAI() as fake:
        yield fake
        fake.check_requests()


@pytest.fixture
def fake(shared_fake: FakeOpenAI) -> Iterator[FakeView]:
    """This test's view of the module's `shared_fake`."""
    view = FakeView(shared_fake)
    yield view
    view.finish()


@pytest.fixture
def wiretap() -> Iterator[Wiretap]:
    """The recorder behind `http` and `sdk`; every body it saw is checked at teardown."""
    tap = Wiretap()
    yield tap
    tap.check()


@pytest.fixture
def http(wiretap: Wiretap) -> Iterator[httpx.Client]:
    """A tapped `httpx.Client` (absolute URLs; no base URL)."""
    with http_client(wiretap) as client:
        yield client


MakeSDK = Callable[..., openai.OpenAI]


@pytest.fixture
def sdk(wiretap: Wiretap) -> Iterator[MakeSDK]:
    """`sdk(gateway, **options)`: the official OpenAI client on the gateway, tapped, no retries."""
    with contextlib.ExitStack() as stack:

        def make(gateway: GatewayServer, **options: Any) -> openai.OpenAI:
            client = openai_client(wiretap, gateway.base_url, **options)
            return stack.enter_context(client)

        yield make
