"""The chain of targets behind a public model: who serves, who is skipped, what the client sees.

Two fake upstreams, `first` and `second`, shared by the module, behind one gateway whose public
models are chains of them (the first target's upstream model is `gpt-4o`, the second's
`gpt-4o-mini`, so it shows which name went where). README: the first usable target serves; on
a connect error, timeout, 429, 5xx or upstream 401/403 the next is tried (streams only until
the first byte reached the client); client errors come back at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests import spec
from tests.conftest import GatewayServer, StartGateway
from tests.fakes.openai_upstream import FakeOpenAI, Reply
from tests.integration.conftest import (
    CHAT,
    FakeView,
    chat_body,
    error_of,
    openai_upstream,
    refused_base_url,
    serve,
)

UNSET = "GATEWAY_TEST_SURELY_UNSET_KEY"
FAKE_TEXT = "Hello! How can I help you today?"
STREAM = pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    with FakeOpenAI() as first, FakeOpenAI() as second:
        yield first, second
        first.check_requests()
        second.check_requests()


def chain(*targets: tuple[str, str]) -> list[dict[str, str]]:
    return [{"upstream": upstream, "model": model} for upstream, model in targets]


@pytest.fixture(scope="module")
def chains(fakes: tuple[FakeOpenAI, FakeOpenAI]) -> Iterator[GatewayServer]:
    """The gateway; each public model is a chain of two targets."""
    first, second = fakes
    unset = "${" + UNSET + ":-}"
    with refused_base_url() as refused:
        config = {
            "upstreams": {
                "first": openai_upstream(first),
                "second": openai_upstream(second),
                "first-nokey": openai_upstream(first, api_key=unset),
                "first-slow": openai_upstream(first, timeouts={"read": 0.3}),
                "refused": openai_upstream(refused),
                "refused-nokey": openai_upstream(refused, api_key=unset),
            },
            "models": {
                "gpt-4o-mini": chain(("first", "gpt-4o"), ("second", "gpt-4o-mini")),
                "nokey-first": chain(("first-nokey", "gpt-4o"), ("second", "gpt-4o-mini")),
                "slow-first": chain(("first-slow", "gpt-4o"), ("second", "gpt-4o-mini")),
                "refused-first": chain(("refused", "gpt-4o"), ("second", "gpt-4o-mini")),
                "nothing-works": chain(("refused-nokey", "gpt-4o"), ("refused", "gpt-4o-mini")),
            },
        }
        environ = {k: v for k, v in os.environ.items() if k != UNSET}
        with serve(config, environ) as gateway:
            yield gateway


@dataclass(frozen=True)
class Chain:
    gateway: GatewayServer
    first: FakeView
    second: FakeView

    def post(self, http: httpx.Client, model: str = "gpt-4o-mini", **fields: Any) -> httpx.Response:
        return http.post(self.gateway.url + CHAT, json=chat_body(model, **fields))


@pytest.fixture
def bench(fakes: tuple[FakeOpenAI, FakeOpenAI], chains: GatewayServer) -> Iterator[Chain]:
    first, second = FakeView(fakes[0]), FakeView(fakes[1])
    yield Chain(chains, first, second)
    try:
        first.finish()
    finally:
        second.finish()


def served_text(response: httpx.Response, stream: bool) -> str | None:
    assert response.status_code == 200, response.text
    if stream:
        [choice] = spec.assemble(spec.validate_stream(response.content))
        text: str | None = choice["content"]
        return text
    content: str | None = response.json()["choices"][0]["message"]["content"]
    return content


def assert_second_served(bench: Chain, response: httpx.Response, stream: bool) -> None:
    assert served_text(response, stream) == FAKE_TEXT
    assert response.headers["x-gateway-upstream"] == "second"
    [served] = bench.second.chat_requests
    assert response.headers["x-upstream-request-id"] == served.request_id
    assert served.json["model"] == "gpt-4o-mini"


@STREAM
def test_unconfigured_first_target_is_skipped_and_the_second_serves(
    http: httpx.Client, bench: Chain, stream: bool
):
    response = bench.post(http, "nokey-first", stream=stream)

    assert_second_served(bench, response, stream)
    assert bench.first.requests == [], "an unconfigured upstream was called"


FALLBACK_FAILURES = [
    pytest.param(Reply.error(500), id="500"),
    pytest.param(Reply.error(502), id="502"),
    pytest.param(Reply.error(503), id="503"),
    pytest.param(Reply.error(504), id="504"),
    pytest.param(Reply.error(429), id="429"),
    pytest.param(Reply.error(401), id="401"),
    pytest.param(Reply.error(403), id="403"),
    pytest.param(Reply.raw("<html>Bad gateway</html>", status=502), id="html-502"),
    pytest.param(Reply(cut_after=0), id="cut-before-first-byte"),
]


@STREAM
@pytest.mark.parametrize("reply", FALLBACK_FAILURES)
def test_failing_first_target_falls_back_to_the_second(
    http: httpx.Client, bench: Chain, reply: Reply, stream: bool
):
    bench.first.script(reply)

    response = bench.post(http, stream=stream)

    assert_second_served(bench, response, stream)
    [tried] = bench.first.chat_requests
    assert tried.json["model"] == "gpt-4o"
    assert bench.second.chat_requests[0].json["messages"] == tried.json["messages"]


@STREAM
def test_unreachable_first_target_falls_back_to_the_second(
    http: httpx.Client, bench: Chain, stream: bool
):
    response = bench.post(http, "refused-first", stream=stream)

    assert_second_served(bench, response, stream)


@STREAM
def test_timed_out_first_target_falls_back_to_the_second(
    http: httpx.Client, bench: Chain, stream: bool
):
    bench.first.script(Reply.hanging())

    response = bench.post(http, "slow-first", stream=stream)

    assert_second_served(bench, response, stream)
    assert bench.first.chat_requests[0].wait_disconnected(1), "the timed-out call was not dropped"


@STREAM
@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_client_error_from_the_first_target_is_returned_at_once(
    http: httpx.Client, bench: Chain, status: int, stream: bool
):
    bench.first.script(Reply.error(status, "Unsupported parameter: 'foo'.", param="foo"))

    response = bench.post(http, stream=stream)

    error = error_of(response, status)
    assert error["message"] == "Unsupported parameter: 'foo'."
    assert error["param"] == "foo"
    assert response.headers["x-should-retry"] == "false"
    assert len(bench.first.chat_requests) == 1
    assert bench.second.requests == [], "a client error must not be tried elsewhere"


def test_stream_failing_after_the_first_byte_is_not_retried_elsewhere(
    http: httpx.Client, bench: Chain
):
    bench.first.script(Reply(content=["a", "b", "c"], cut_after=3, event_delay=0.02))

    response = bench.post(http, stream=True)

    assert response.status_code == 200
    assert response.headers["x-gateway-upstream"] == "first"
    events = spec.validate_stream(response.content, expect_done=False)
    assert "error" in events[-1]
    assert bench.second.requests == []


@STREAM
def test_all_targets_rate_limited_is_429_with_retry_after(
    http: httpx.Client, bench: Chain, stream: bool
):
    bench.first.script(Reply.error(429, retry_after=20))
    bench.second.script(Reply.error(429, retry_after=5))

    response = bench.post(http, stream=stream)

    error = error_of(response, 429)
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "rate_limit_exceeded"
    assert response.headers["retry-after"] in ("5", "20")
    assert response.headers.get("x-should-retry") != "false"
    assert "'first'" in error["message"]
    assert "'second'" in error["message"]


@STREAM
def test_mixed_failures_are_502_naming_every_upstream(
    http: httpx.Client, bench: Chain, stream: bool
):
    bench.first.script(Reply.error(429))
    bench.second.script(Reply.error(500, "Kaboom in the second."))

    response = bench.post(http, stream=stream)

    error = error_of(response, 502)
    assert error["code"] == "all_upstreams_failed"
    assert error["type"] == "server_error"
    assert "'first'" in error["message"]
    assert "rate limited" in error["message"]
    assert "'second'" in error["message"]
    assert "500" in error["message"]
    assert "Kaboom in the second." in error["message"]


def test_all_targets_overloaded_is_503(http: httpx.Client, bench: Chain):
    bench.first.script(Reply.error(503))
    bench.second.script(Reply.error(529, "Overloaded"))

    response = bench.post(http)

    error = error_of(response, 503)
    assert "'first'" in error["message"]
    assert "'second'" in error["message"]


def test_unconfigured_and_unreachable_chain_names_both(http: httpx.Client, bench: Chain):
    response = bench.post(http, "nothing-works")

    error = error_of(response, 502)
    assert "'refused-nokey' is not configured" in error["message"]
    assert "'refused' is unreachable" in error["message"]


SHIPPED_LIKE = """
upstreams:
  mock:   {provider: mock, ttft: 0.01, tokens_per_second: 1000}
  openai: {provider: openai, base_url: https://api.openai.com/v1, api_key: "${OPENAI_API_KEY:-}"}
models:
  gpt-4o-mini:
    - {upstream: openai, model: gpt-4o-mini}
    - {upstream: mock, model: mock-1}
"""


@STREAM
def test_mock_serves_when_openai_has_no_key(
    http: httpx.Client,
    gateway_server: StartGateway,
    monkeypatch: pytest.MonkeyPatch,
    stream: bool,
):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    gateway = gateway_server(SHIPPED_LIKE)

    response = http.post(gateway.url + CHAT, json=chat_body(stream=stream))

    text = served_text(response, stream)
    assert text
    assert text.startswith('You said "Hello there!". Mock answer:')
    assert response.headers["x-gateway-upstream"] == "mock"
    assert response.headers["x-upstream-request-id"].startswith("req-mock")
