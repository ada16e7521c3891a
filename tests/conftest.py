"""Fixtures every test can use: fake OpenAI upstreams and the gateway under a real uvicorn.

    def test_chat(fake_openai, gateway_server):
        fake_openai.script(Reply(content="Hi there"))
        gateway = gateway_server({
            "upstreams": {"fake": {"provider": "openai", "base_url": fake_openai.base_url,
                                   "api_key": "sk-test"}},
            "models": {"gpt-4o-mini": [{"upstream": "fake", "model": "gpt-4o-mini"}]},
        })
        reply = httpx.post(f"{gateway.url}/v1/chat/completions", json={...})

Every server binds 127.0.0.1:0 and is stopped at teardown; in either order, since a fake that
stops first releases whatever the gateway still waits on. The fake fixtures also check, at
teardown, that every chat request the gateway sent upstream is a valid OpenAI request (set
`fake.validate_requests = False` in a test that sends invalid ones on purpose).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from starlette.types import ASGIApp

from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import LoopName, ServerThread

if TYPE_CHECKING:
    from gateway.config import Config


@contextlib.contextmanager
def _checked(fake: FakeOpenAI) -> Iterator[FakeOpenAI]:
    with fake:
        yield fake
        if fake.validate_requests:
            fake.check_requests()


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A running `FakeOpenAI` (no API key required, models gpt-4o-mini and gpt-4o)."""
    with _checked(FakeOpenAI()) as fake:
        yield fake


@pytest.fixture
def fake_openai_factory() -> Iterator[Callable[..., FakeOpenAI]]:
    """`make(**options)` starts another `FakeOpenAI(**options)`, e.g. for a fallback chain."""
    with contextlib.ExitStack() as stack:

        def make(**options: Any) -> FakeOpenAI:
            return stack.enter_context(_checked(FakeOpenAI(**options)))

        yield make


@dataclass(frozen=True)
class GatewayServer:
    """A gateway being served: `url` is `http://127.0.0.1:<port>`."""

    url: str
    config: Config
    app: ASGIApp

    @property
    def base_url(self) -> str:
        """`<url>/v1`, for the OpenAI SDK's `base_url`."""
        return f"{self.url}/v1"


StartGateway = Callable[..., GatewayServer]


@pytest.fixture
def gateway_server() -> Iterator[StartGateway]:
    """`start(config, *, loop="asyncio", **app_options)` serves the gateway built from `config`,
    under uvicorn with `gateway serve`'s HTTP protocol (gateway/http.py: its limits apply).

    `config` is gateway.yaml text or the same as a dict; `server.host`/`server.port` are
    ignored (the server binds 127.0.0.1:0). `app_options` go to `create_app` (`runtime=`,
    `transports=`). The app's lifespan (which opens the upstream clients) runs before `start`
    returns; a config the gateway rejects raises its `ConfigError`, a lifespan that fails raises
    `tests.servers.ServerFailed`. Every gateway started is stopped at teardown.
    """
    from gateway.app import create_app
    from gateway.config import parse_config
    from gateway.http import GatewayHttpProtocol

    with contextlib.ExitStack() as stack:

        def start(
            config: str | Mapping[str, Any], *, loop: LoopName = "asyncio", **app_options: Any
        ) -> GatewayServer:
            text = (
                config if isinstance(config, str) else yaml.safe_dump(dict(config), sort_keys=False)
            )
            parsed = parse_config(text, source="<test>")
            app = create_app(parsed, **app_options)
            server = stack.enter_context(
                ServerThread(app, name="gateway", loop=loop, http=GatewayHttpProtocol)
            )
            return GatewayServer(url=server.url, config=parsed, app=app)

        yield start
