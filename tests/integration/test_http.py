"""The gateway's HTTP contract, byte by byte, with raw httpx: what README promises on the wire.

Malformed input, body limits, routes and methods, request ids, which headers reach the upstream,
SSE framing and keep-alives, the 200 held back until the first upstream event, failures after
the first byte, and the gateway's own deadline. Every body seen is checked against OpenAI's
schemas by the `http` fixture's wiretap.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import spec
from tests.conftest import GatewayServer, StartGateway
from tests.fakes.openai_upstream import FakeOpenAI, Reply, build_chunks, build_completion
from tests.integration.conftest import (
    CHAT,
    MOCK_CONFIG,
    UPSTREAM_KEY,
    FakeView,
    ScriptedStream,
    chat_body,
    error_of,
    log_text,
    openai_upstream,
    request_log,
    scripted_stream,
    serve,
    settle,
)

GENERATED_ID = re.compile(r"^req_[0-9a-f]+$")
SANE_ID = "trace-42.ab:cd@ef/gh+ij=kl_MN"


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[ScriptedStream, str]]:
    with scripted_stream() as served:
        yield served


def module_config(fake: FakeOpenAI, scripted_url: str, **server: Any) -> dict[str, Any]:
    return {
        "server": {"sse_keepalive": 0.2, **server},
        "upstreams": {
            "fake": openai_upstream(fake, headers={"x-org-id": "org-configured-1234"}),
            "scripted": openai_upstream(scripted_url),
            "mock": {"provider": "mock"},
        },
        "models": {
            "gpt-4o-mini": [{"upstream": "fake", "model": "gpt-4o-mini"}],
            "with-fallback": [
                {"upstream": "fake", "model": "gpt-4o-mini"},
                {"upstream": "mock", "model": "mock-1"},
            ],
            "scripted": [{"upstream": "scripted", "model": "gpt-4o-mini"}],
            "mock-1": [{"upstream": "mock", "model": "mock-1"}],
        },
    }


@pytest.fixture(scope="module")
def gateway(
    shared_fake: FakeOpenAI, scripted: tuple[ScriptedStream, str]
) -> Iterator[GatewayServer]:
    """The module's gateway: `gpt-4o-mini` on the shared fake (which gets an extra configured
    header), `with-fallback` (the fake, then the mock), `scripted`, and `mock-1` on the mock;
    `sse_keepalive: 0.2`."""
    with serve(module_config(shared_fake, scripted[1])) as served:
        yield served


@pytest.fixture(scope="module")
def deadline_gateway(
    shared_fake: FakeOpenAI, scripted: tuple[ScriptedStream, str]
) -> Iterator[GatewayServer]:
    """The same, with the gateway's own deadline at 1 s."""
    with serve(module_config(shared_fake, scripted[1], request_timeout=1)) as served:
        yield served


@pytest.fixture
def script_stream(scripted: tuple[ScriptedStream, str]) -> Iterator[ScriptedStream]:
    app, _ = scripted
    yield app
    assert app.pending() == 0, "a scripted stream was never asked for"


def post_raw(http: httpx.Client, gateway: GatewayServer, body: bytes, **kw: Any) -> httpx.Response:
    headers = {"content-type": "application/json", **kw.pop("headers", {})}
    return http.post(gateway.url + CHAT, content=body, headers=headers, **kw)


def sse(*events: Any) -> bytes:
    """An SSE body from events (dicts are JSON-encoded, strings sent as they are)."""
    return b"".join(
        f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events
    )


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-raw",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


ROLE = chunk({"role": "assistant", "content": ""})
HELLO = chunk({"content": "Hello"})
STREAM = "text/event-stream; charset=utf-8"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _body(**fields: Any) -> bytes:
    return json.dumps({**chat_body("mock-1"), **fields}).encode()


MESSAGES = '[{"role": "user", "content": "hi"}]'

# (id, raw body, the `param` the 400 must name)
MALFORMED: list[tuple[str, bytes, str | None]] = [
    ("truncated-json", b'{"model": "mock-1", "messages": [', None),
    ("not-json", b"model=mock-1&messages=hi", None),
    ("empty-body", b"", None),
    ("array-not-object", b'[{"model": "mock-1"}]', None),
    ("invalid-utf8", b'{"model": "mock-1\xff\xfe", "messages": ' + MESSAGES.encode() + b"}", None),
    ("lone-surrogate", b'{"model": "mock-1", "messages": [{"role": "user", "content": '
     b'"\\ud800"}]}', None),
    ("nan", b'{"model": "mock-1", "temperature": NaN, "messages": ' + MESSAGES.encode()
     + b"}", None),
    ("infinity", b'{"model": "mock-1", "top_p": Infinity, "messages": ' + MESSAGES.encode()
     + b"}", None),
    ("duplicate-top-level-key", b'{"model": "mock-1", "model": "mock-1", "messages": '
     + MESSAGES.encode() + b"}", "model"),
    ("duplicate-nested-key", b'{"model": "mock-1", "messages": [{"role": "user", "role": "user",'
     b' "content": "hi"}]}', "role"),
    ("nested-100-deep", f'{{"model": "mock-1", "messages": {MESSAGES}, "x": {nested(100)}}}'
     .encode(), None),
    ("crlf-in-model", _body(model="mock-1\r\nx-injected: 1"), "model"),
    ("nul-in-model", _body(model="mock-1\x00"), "model"),
    ("model-missing", b'{"messages": ' + MESSAGES.encode() + b"}", "model"),
    ("model-not-a-string", _body(model=["mock-1"]), "model"),
    ("model-empty", _body(model=""), "model"),
    ("messages-missing", b'{"model": "mock-1"}', "messages"),
    ("messages-not-a-list", b'{"model": "mock-1", "messages": "hi"}', "messages"),
    ("messages-empty", b'{"model": "mock-1", "messages": []}', "messages"),
    ("bad-role", _body(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role"),
    ("role-missing", _body(messages=[{"content": "hi"}]), "messages[0].role"),
    ("content-missing", _body(messages=[{"role": "user"}]), "messages[0].content"),
    ("bad-content-part", _body(messages=[{"role": "user", "content": [{"type": "video"}]}]),
     "messages[0].content[0].type"),
    ("stream-not-boolean", _body(stream="yes"), "stream"),
    ("temperature-out-of-range", _body(temperature=3), "temperature"),
    ("n-zero", _body(n=0), "n"),
    ("bad-tool-name", _body(tools=[{"type": "function", "function": {"name": "has space"}}]),
     "tools[0].function.name"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "param"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_request_is_400_invalid_request_naming_param(
    http: httpx.Client, gateway: GatewayServer, body: bytes, param: str | None
):
    response = post_raw(http, gateway, body)

    error = error_of(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_request"
    assert error["param"] == param
    assert response.headers["x-should-retry"] == "false"


def test_malformed_stream_request_is_a_json_400_not_a_stream(
    http: httpx.Client, gateway: GatewayServer
):
    response = post_raw(http, gateway, b'{"model": "mock-1", "stream": true}')

    assert error_of(response, 400)["param"] == "messages"


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": ["user"], "content": "hi"}], "messages[0].role"),
        ([{"role": {"name": "user"}, "content": "hi"}], "messages[0].role"),
        (
            [{"role": "user", "content": [{"type": ["text"], "text": "hi"}]}],
            "messages[0].content[0].type",
        ),
    ],
    ids=["role-array", "role-object", "part-type-array"],
)
def test_non_string_role_or_part_type_is_400_not_500(
    http: httpx.Client, gateway: GatewayServer, messages: Any, param: str
):
    response = post_raw(http, gateway, _body(messages=messages))

    error = error_of(response, 400)
    assert error["param"] == param


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_unknown_model_is_404_model_not_found(
    http: httpx.Client, gateway: GatewayServer, stream: bool
):
    response = http.post(gateway.url + CHAT, json=chat_body("gpt-imaginary", stream=stream))

    error = error_of(response, 404)
    assert error["code"] == "model_not_found"
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "model"
    assert "gpt-imaginary" in error["message"]
    assert response.headers["x-should-retry"] == "false"


# ------------------------------------------------------------------- body limit


@pytest.fixture(scope="module")
def small_gateway() -> Iterator[GatewayServer]:
    """The mock gateway with `server.max_body_bytes: 1024`."""
    with serve({**MOCK_CONFIG, "server": {"max_body_bytes": 1024}}) as gateway:
        yield gateway


def body_of_size(size: int) -> bytes:
    """A valid chat request of exactly `size` bytes."""
    empty = _body(content="")
    body = _body(content="x" * (size - len(empty)))
    assert len(body) == size
    return body


def test_body_at_the_limit_is_served(http: httpx.Client, small_gateway: GatewayServer):
    response = post_raw(http, small_gateway, body_of_size(1024))

    assert response.status_code == 200, response.text


def test_body_over_the_limit_with_content_length_is_413(
    http: httpx.Client, small_gateway: GatewayServer
):
    response = post_raw(http, small_gateway, body_of_size(1025))

    error = error_of(response, 413)
    assert error["code"] == "request_too_large"
    assert error["type"] == "invalid_request_error"
    assert "1024" in error["message"]


def test_chunked_body_over_the_limit_is_413(http: httpx.Client, small_gateway: GatewayServer):
    body = body_of_size(4000)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 500):
            yield body[start : start + 500]

    response = http.post(
        small_gateway.url + CHAT, content=chunks(), headers={"content-type": "application/json"}
    )

    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert error_of(response, 413)["code"] == "request_too_large"


def test_chunked_body_under_the_limit_is_served(http: httpx.Client, small_gateway: GatewayServer):
    body = body_of_size(1000)

    response = http.post(
        small_gateway.url + CHAT,
        content=iter([body[:300], body[300:]]),
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 200, response.text


# ------------------------------------------------------------------- routes and methods


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method_on_chat_is_405_with_allow_post(
    http: httpx.Client, gateway: GatewayServer, method: str
):
    response = http.request(method, gateway.url + CHAT)

    error = error_of(response, 405)
    assert error["code"] == "method_not_allowed"
    assert response.headers["allow"] == "POST"


def test_wrong_method_on_models_is_405_with_allow(http: httpx.Client, gateway: GatewayServer):
    response = http.post(gateway.url + "/v1/models", json={})

    assert error_of(response, 405)["code"] == "method_not_allowed"
    assert "GET" in response.headers["allow"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/"), ("POST", "/v1/completions"), ("GET", "/v1/chat/completions/x"), ("POST", "/v1")],
)
def test_unknown_route_is_404_envelope(
    http: httpx.Client, gateway: GatewayServer, method: str, path: str
):
    response = http.request(method, gateway.url + path)

    error = error_of(response, 404)
    assert error["code"] == "not_found"
    assert path in error["message"]


def test_unknown_model_retrieve_is_404_model_not_found(http: httpx.Client, gateway: GatewayServer):
    response = http.get(gateway.url + "/v1/models/gpt-imaginary")

    assert error_of(response, 404)["code"] == "model_not_found"


def test_health_endpoints(http: httpx.Client, gateway: GatewayServer):
    assert http.get(gateway.url + "/healthz").status_code == 200
    ready = http.get(gateway.url + "/readyz")
    assert ready.status_code == 200
    assert set(ready.json()["upstreams"]) == {"fake", "scripted", "mock"}


def test_readyz_is_503_when_no_upstream_is_usable(
    http: httpx.Client, gateway_server: StartGateway, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("GATEWAY_TEST_UNSET_KEY", raising=False)
    gateway = gateway_server(
        {
            "upstreams": {
                "openai": {
                    "provider": "openai",
                    "base_url": "https://api.openai.com/v1",
                    "api_key": "${GATEWAY_TEST_UNSET_KEY:-}",
                }
            },
            "models": {"gpt-4o-mini": [{"upstream": "openai", "model": "gpt-4o-mini"}]},
        }
    )

    assert http.get(gateway.url + "/healthz").status_code == 200
    assert http.get(gateway.url + "/readyz").status_code == 503
    chat = http.post(gateway.url + CHAT, json=chat_body())
    error = error_of(chat, 503)
    assert error["code"] == "no_upstream_available"
    assert "openai" in error["message"]


# ------------------------------------------------------------------- request ids

REQUESTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", CHAT, chat_body("mock-1")),
    ("POST", CHAT, chat_body("mock-1", stream=True)),
    ("POST", CHAT, {"model": "mock-1"}),
    ("POST", CHAT, chat_body("gpt-imaginary")),
    ("GET", CHAT, None),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/mock-1", None),
    ("GET", "/v1/nowhere", None),
    ("GET", "/healthz", None),
]
REQUEST_IDS = [
    "chat",
    "stream",
    "400",
    "404-model",
    "405",
    "models",
    "model",
    "404-route",
    "health",
]


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS, ids=REQUEST_IDS)
def test_every_response_echoes_a_sane_client_request_id(
    http: httpx.Client, gateway: GatewayServer, method: str, path: str, body: Any
):
    response = http.request(
        method, gateway.url + path, json=body, headers={"x-request-id": SANE_ID}
    )

    assert response.headers.get_list("x-request-id") == [SANE_ID]


@pytest.mark.parametrize(
    "given",
    ["has space", "a" * 129, "semi;colon", "", 'quote"d', "tab\there", "ünï"],
    ids=["space", "too-long", "semicolon", "empty", "quote", "tab", "non-ascii"],
)
def test_an_insane_client_request_id_is_replaced(
    http: httpx.Client, gateway: GatewayServer, given: str
):
    response = http.post(
        gateway.url + CHAT,
        json=chat_body("mock-1"),
        headers={b"x-request-id": given.encode("latin-1")},
    )

    assert response.status_code == 200
    [request_id] = response.headers.get_list("x-request-id")
    assert GENERATED_ID.match(request_id), request_id


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS, ids=REQUEST_IDS)
def test_every_response_replaces_an_insane_client_request_id(
    http: httpx.Client, gateway: GatewayServer, method: str, path: str, body: Any
):
    response = http.request(
        method, gateway.url + path, json=body, headers={"x-request-id": "bad id!"}
    )

    [request_id] = response.headers.get_list("x-request-id")
    assert GENERATED_ID.match(request_id), request_id


def test_request_ids_are_unique_without_a_client_id(http: httpx.Client, gateway: GatewayServer):
    ids = [
        http.post(gateway.url + CHAT, json=chat_body("mock-1")).headers["x-request-id"]
        for _ in range(3)
    ] + [http.get(gateway.url + "/v1/models").headers["x-request-id"] for _ in range(3)]

    assert len(set(ids)) == 6
    assert all(GENERATED_ID.match(i) for i in ids)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_upstream_served_response_names_upstream_and_its_request_id(
    http: httpx.Client,
    fake: FakeView,
    gateway: GatewayServer,
    stream: bool,
):

    response = http.post(gateway.url + CHAT, json=chat_body(stream=stream))

    assert response.status_code == 200
    [upstream] = fake.chat_requests
    assert response.headers["x-upstream-request-id"] == upstream.request_id
    assert response.headers["x-gateway-upstream"] == "fake"
    assert response.headers["x-request-id"] != upstream.request_id


def test_no_upstream_request_id_header_when_the_upstream_gave_none(
    http: httpx.Client, fake: FakeView, gateway: GatewayServer
):
    fake.script(Reply(headers={"x-request-id": None}))

    response = http.post(gateway.url + CHAT, json=chat_body())

    assert response.status_code == 200
    assert "x-upstream-request-id" not in response.headers
    assert response.headers["x-gateway-upstream"] == "fake"


# ------------------------------------------------------------------- headers to the upstream

CLIENT_SECRETS = {
    "authorization": "Bearer sk-client-secret-0001",
    "proxy-authorization": "Basic Y2xpZW50OnNlY3JldA==",
    "cookie": "session=client-cookie-0002",
    "api-key": "client-azure-key-0003",
    "x-api-key": "client-anthropic-key-0004",
    "x-auth-token": "client-token-0005",
    "x-session-id": "client-session-0006",
    "x-forwarded-for": "203.0.113.7",
    "x-forwarded-host": "evil.example",
    "forwarded": "for=203.0.113.7",
    "x-real-ip": "203.0.113.7",
    "via": "1.1 client-proxy",
    "openai-organization": "org-client",
}
HOP_BY_HOP = {
    "connection": "keep-alive, x-named-hop",
    "keep-alive": "timeout=5",
    "x-named-hop": "client-hop-0007",
    "proxy-connection": "keep-alive",
    "te": "trailers",
    "trailer": "x-checksum",
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_client_credentials_and_hop_by_hop_headers_never_reach_the_upstream(
    http: httpx.Client,
    fake: FakeView,
    gateway: GatewayServer,
    stream: bool,
):

    response = http.post(
        gateway.url + CHAT,
        json=chat_body(stream=stream),
        headers={**CLIENT_SECRETS, **HOP_BY_HOP, "x-trace-tag": "blue-42", "user-agent": "me/1"},
    )

    assert response.status_code == 200
    [upstream] = fake.chat_requests
    received = upstream.headers
    for name in [*CLIENT_SECRETS, "keep-alive", "x-named-hop", "proxy-connection", "te", "trailer"]:
        assert name not in received or name == "authorization", (name, received)
    leaked = [v for v in [*CLIENT_SECRETS.values(), *HOP_BY_HOP.values()] if v in str(received)]
    assert leaked in ([], ["keep-alive"]), received  # its own keep-alive may say the same
    assert received["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert received["x-org-id"] == "org-configured-1234"
    assert received["x-trace-tag"] == "blue-42"
    assert received["host"] == fake.url.removeprefix("http://")
    assert received["content-type"] == "application/json"
    assert received["user-agent"] != "me/1"
    assert int(received["content-length"]) == len(upstream.body)


# ------------------------------------------------------------------- streams


def test_stream_headers_framing_and_done(
    http: httpx.Client, fake: FakeView, gateway: GatewayServer
):
    fake.script(Reply(content=["Hi", " there", " 👋", "\u2028"]))

    response = http.post(gateway.url + CHAT, json=chat_body(stream=True))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.content.endswith(b"data: [DONE]\n\n")
    events = spec.validate_stream(response.content)
    [choice] = spec.assemble(events)
    assert choice["content"] == "Hi there 👋\u2028"
    assert choice["finish_reason"] == "stop"


def test_idle_stream_gets_keep_alive_comments(
    http: httpx.Client, fake: FakeView, gateway: GatewayServer
):
    # The role chunk at once, then the finish chunk and the usage chunk (the gateway asks for
    # usage upstream), each after 0.5 s of silence: about 1 s in all.
    fake.script(Reply(content=None, event_delay=0.5, send_done=False))

    response = http.post(gateway.url + CHAT, json=chat_body(stream=True))

    text = response.text
    blocks = text.split("\n\n")
    assert blocks[0].startswith("data: ")
    comments = [i for i, block in enumerate(blocks) if block == ": keep-alive"]
    finish = next(i for i, block in enumerate(blocks) if '"finish_reason":"stop"' in block)
    assert 2 <= len(comments) <= 8, text
    assert comments[0] < finish, "no keep-alive while waiting for the finish chunk"
    assert all(block.startswith((": keep-alive", "data: ")) for block in blocks[:-1]), text
    assert text.endswith("data: [DONE]\n\n")
    spec.validate_stream(text)


def test_no_keep_alive_comments_when_events_flow(
    http: httpx.Client, fake: FakeView, gateway: GatewayServer
):
    fake.script(Reply(content=["a"] * 10, event_delay=0.03))

    response = http.post(gateway.url + CHAT, json=chat_body(stream=True))

    assert ": keep-alive" not in response.text
    spec.validate_stream(response.text)


# The 200 is held back until the upstream's first event, so these still get a status.
BEFORE_FIRST_EVENT = [
    pytest.param(Reply.error(500), 502, "upstream_error", id="upstream-500"),
    pytest.param(Reply.error(503), 503, "upstream_overloaded", id="upstream-503"),
    pytest.param(Reply(cut_after=0), 502, "upstream_connection_error", id="cut-before-first-event"),
    pytest.param(
        Reply.raw(b"", content_type="text/event-stream"),
        502,
        "stream_interrupted",
        id="empty-stream",
    ),
    pytest.param(
        Reply.raw("<html>Bad gateway</html>", status=502), 502, "upstream_error", id="html-502"
    ),
]


@pytest.mark.parametrize(("reply", "status", "code"), BEFORE_FIRST_EVENT)
def test_stream_failing_before_its_first_event_gets_a_clean_error_status(
    http: httpx.Client,
    fake: FakeView,
    gateway: GatewayServer,
    reply: Reply,
    status: int,
    code: str,
):
    fake.script(reply)

    response = http.post(gateway.url + CHAT, json=chat_body(stream=True))

    error = error_of(response, status)
    assert error["code"] == code
    assert "fake" in error["message"]


@pytest.mark.parametrize(("reply", "status", "code"), BEFORE_FIRST_EVENT)
def test_stream_failing_before_its_first_event_falls_back_to_the_next_target(
    http: httpx.Client, fake: FakeView, gateway: GatewayServer, reply: Reply, status: int, code: str
):
    fake.script(reply)

    response = http.post(gateway.url + CHAT, json=chat_body("with-fallback", stream=True))

    assert response.status_code == 200
    assert response.headers["x-gateway-upstream"] == "mock"
    [choice] = spec.assemble(spec.validate_stream(response.content))
    assert choice["content"].startswith('You said "Hello there!". Mock answer:')
    assert len(fake.chat_requests) == 1


def test_stream_cut_after_first_byte_ends_with_one_error_event_and_no_done(
    http: httpx.Client, fake: FakeView, gateway: GatewayServer
):
    fake.script(Reply(content=["a", "b", "c", "d"], cut_after=3, event_delay=0.02))

    with http.stream("POST", gateway.url + CHAT, json=chat_body(stream=True)) as response:
        assert response.status_code == 200
        body = response.read()  # the gateway ends its response cleanly: no protocol error

    events = spec.validate_stream(body, expect_done=False)
    assert [e for e in events if "error" in e] == events[-1:]
    assert len(events) == 4  # role, "a", "b", then the error
    error = events[-1]["error"]
    assert error["type"] == "server_error"
    assert error["code"] == "upstream_connection_error"
    assert "'fake'" in error["message"]
    # The connection stays usable: the next request is served.
    assert http.post(gateway.url + CHAT, json=chat_body()).status_code == 200


UPSTREAM_ERROR = {
    "error": {
        "message": f"The model crashed (key {UPSTREAM_KEY}).",
        "type": "server_error",
        "param": None,
        "code": "model_crash",
    }
}
BROKEN_AFTER_FIRST_EVENT = [
    pytest.param(sse(ROLE, HELLO, UPSTREAM_ERROR), "model_crash", id="upstream-error-event"),
    pytest.param(sse(ROLE, HELLO, "{not json"), "stream_interrupted", id="event-not-json"),
    pytest.param(sse(ROLE, HELLO), "stream_interrupted", id="ended-without-finish-or-done"),
    pytest.param(
        sse(ROLE, HELLO, {"id": "x", "object": "chat.completion.chunk"}),
        "stream_interrupted",
        id="chunk-without-choices",
    ),
]


@pytest.mark.parametrize(("body", "code"), BROKEN_AFTER_FIRST_EVENT)
def test_stream_error_after_first_byte_ends_with_one_error_event_and_no_done(
    http: httpx.Client,
    script_stream: ScriptedStream,
    gateway: GatewayServer,
    body: bytes,
    code: str,
):
    script_stream.script(*(event + b"\n\n" for event in body.split(b"\n\n")[:-1]))

    with http.stream(
        "POST", gateway.url + CHAT, json=chat_body("scripted", stream=True)
    ) as response:
        assert response.status_code == 200
        received = response.read()  # ended cleanly: no protocol error

    events = spec.validate_stream(received, expect_done=False)
    assert [e for e in events if "error" in e] == events[-1:]
    [choice] = spec.assemble(events)
    assert choice["content"] == "Hello"  # what came before the failure was relayed
    error = events[-1]["error"]
    assert error["type"] == "server_error"
    assert error["code"] == code
    assert "'scripted'" in error["message"]
    assert UPSTREAM_KEY not in error["message"]
    # The connection stays usable: the next request is served.
    assert http.post(gateway.url + CHAT, json=chat_body("mock-1", stream=True)).status_code == 200


def test_upstream_error_event_message_reaches_the_client_masked(
    http: httpx.Client, script_stream: ScriptedStream, gateway: GatewayServer
):
    script_stream.script(sse(ROLE), sse(UPSTREAM_ERROR))

    response = http.post(gateway.url + CHAT, json=chat_body("scripted", stream=True))

    *_, last = spec.validate_stream(response.content, expect_done=False)
    assert "The model crashed (key [REDACTED])." in last["error"]["message"]
    assert UPSTREAM_KEY not in response.text


# ------------------------------------------------------------------- unreadable upstream answers


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (Reply.raw("<html>oops</html>", status=200), "upstream_error"),
        (
            Reply.raw('{"no": "choices"}', status=200, content_type="application/json"),
            "upstream_error",
        ),
        (Reply(cut_after=0), "upstream_connection_error"),
    ],
    ids=["html-200", "json-not-a-completion", "body-cut"],
)
def test_unreadable_upstream_body_is_502(
    http: httpx.Client, fake: FakeView, gateway: GatewayServer, reply: Reply, code: str
):
    fake.script(reply)

    response = http.post(gateway.url + CHAT, json=chat_body())

    assert error_of(response, 502)["code"] == code


# ------------------------------------------------------------------- the gateway's deadline


def test_deadline_with_hanging_upstream_is_504_in_bounded_time(
    http: httpx.Client, fake: FakeView, deadline_gateway: GatewayServer
):
    gateway = deadline_gateway
    fake.script(Reply.hanging())

    started = time.monotonic()
    response = http.post(gateway.url + CHAT, json=chat_body())
    elapsed = time.monotonic() - started

    error = error_of(response, 504)
    assert error["code"] == "upstream_timeout"
    assert "deadline" in error["message"]
    assert 0.9 <= elapsed < 2.5
    assert fake.chat_requests[0].wait_disconnected(1)


def test_deadline_before_the_first_event_is_a_504_status(
    http: httpx.Client, fake: FakeView, deadline_gateway: GatewayServer
):
    gateway = deadline_gateway
    fake.script(Reply(stall_after=0))  # the upstream's 200 and headers, then silence

    started = time.monotonic()
    response = http.post(gateway.url + CHAT, json=chat_body(stream=True))
    elapsed = time.monotonic() - started

    assert error_of(response, 504)["code"] == "upstream_timeout"
    assert elapsed < 2.5
    assert fake.chat_requests[0].wait_disconnected(1)


def test_deadline_mid_stream_ends_with_an_error_event(
    http: httpx.Client, fake: FakeView, deadline_gateway: GatewayServer
):
    gateway = deadline_gateway
    fake.script(Reply(content=["a", "b", "c"], stall_after=2))

    started = time.monotonic()
    response = http.post(gateway.url + CHAT, json=chat_body(stream=True))
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    events = spec.validate_stream(response.content, expect_done=False)
    assert [e for e in events if "error" not in e] == events[:2]
    assert events[-1]["error"]["code"] == "upstream_timeout"
    assert len(events) == 3
    assert 0.9 <= elapsed < 2.5
    assert fake.chat_requests[0].wait_disconnected(1)


# ------------------------------------------------------------------- retry hints


def test_upstream_429_leaves_retrying_to_the_client(
    http: httpx.Client, fake: FakeView, gateway: GatewayServer
):
    fake.script(Reply.error(429, retry_after=3))

    response = http.post(gateway.url + CHAT, json=chat_body())

    error = error_of(response, 429)
    assert error["type"] == "rate_limit_error"
    assert response.headers["retry-after"] == "3"
    assert response.headers.get("x-should-retry") != "false"


@pytest.mark.parametrize(
    ("reply", "status"),
    [(Reply.error(500), 502), (Reply.error(503), 503), (Reply.error(504), 504)],
    ids=["500", "503", "504"],
)
def test_transient_upstream_failures_do_not_forbid_retries(
    http: httpx.Client,
    fake: FakeView,
    gateway: GatewayServer,
    reply: Reply,
    status: int,
):
    fake.script(reply)

    response = http.post(gateway.url + CHAT, json=chat_body())

    error_of(response, status)
    assert response.headers.get("x-should-retry") != "false"


def test_upstream_429_retry_after_ms_is_passed_back(
    http: httpx.Client, fake: FakeView, gateway: GatewayServer
):
    fake.script(Reply.error(429, retry_after=2, headers={"retry-after-ms": "1500"}))

    response = http.post(gateway.url + CHAT, json=chat_body())

    error_of(response, 429)
    assert response.headers["retry-after"] == "2"
    assert response.headers["retry-after-ms"] == "1500"


# ------------------------------------------------------------------- what the upstream sends back


def test_upstream_response_headers_stay_behind(
    http: httpx.Client, fake: FakeView, gateway: GatewayServer
):
    fake.script(
        Reply(headers={"set-cookie": "session=upstream-secret", "openai-organization": "org-up"})
    )

    response = http.post(gateway.url + CHAT, json=chat_body())

    assert response.status_code == 200
    for name in ("set-cookie", "openai-organization", "openai-version", "openai-processing-ms"):
        assert name not in response.headers, name


def test_upstream_redirect_is_not_followed(
    http: httpx.Client, fake: FakeView, gateway: GatewayServer
):
    fake.script(Reply.raw(b"", status=307, headers={"location": fake.base_url + "/redirected"}))

    response = http.post(gateway.url + CHAT, json=chat_body())

    error = error_of(response, 502)
    assert "307" in error["message"]
    assert [r.path for r in fake.requests] == [CHAT], "the key must only go to the configured URL"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_gzip_encoded_upstream_body_is_decoded(
    http: httpx.Client, fake: FakeView, gateway: GatewayServer, stream: bool
):
    request = chat_body(stream=stream)
    if stream:
        payload = b"".join(
            b"data: " + json.dumps(c).encode() + b"\n\n" for c in build_chunks(request)
        )
        payload += b"data: [DONE]\n\n"
    else:
        payload = json.dumps(build_completion(request)).encode()
    content_type = "text/event-stream" if stream else "application/json"
    fake.script(
        Reply.raw(
            gzip.compress(payload), content_type=content_type, headers={"content-encoding": "gzip"}
        )
    )

    response = http.post(gateway.url + CHAT, json=request)

    assert response.status_code == 200, response.text
    if stream:
        [choice] = spec.assemble(spec.validate_stream(response.content))
        assert choice["content"] == "Hello! How can I help you today?"
    else:
        assert response.json()["choices"][0]["message"]["content"].startswith("Hello!")


def test_upstream_closing_every_connection_is_handled(
    http: httpx.Client, fake: FakeView, gateway: GatewayServer
):
    fake.script(*[Reply(headers={"connection": "close"})] * 4)

    statuses = [
        http.post(gateway.url + CHAT, json=chat_body(stream=bool(i % 2))).status_code
        for i in range(4)
    ]

    assert statuses == [200] * 4


def test_stream_with_n_choices_relays_every_choice(
    http: httpx.Client, fake: FakeView, gateway: GatewayServer
):
    fake.script(Reply(content=["a", "b"]))

    response = http.post(gateway.url + CHAT, json=chat_body(stream=True, n=2))

    choices = spec.assemble(spec.validate_stream(response.content))
    assert [(c["index"], c["content"], c["finish_reason"]) for c in choices] == [
        (0, "ab", "stop"),
        (1, "ab", "stop"),
    ]


def _events(*chunks: Any) -> list[bytes]:
    return [sse(c) for c in chunks]


WORLD = chunk({"content": " world"})
FINISH = chunk({}, "stop")
GOOD = [ROLE, HELLO, WORLD, FINISH, "[DONE]"]
SSE_VARIANTS = {
    "comments-before-the-first-event": [b": ping\n\n", b": ping\n\n", *_events(*GOOD)],
    "crlf-line-ends": [e.replace(b"\n", b"\r\n") for e in _events(*GOOD)],
    "cr-line-ends": [e.replace(b"\n", b"\r") for e in _events(*GOOD)],
    "event-split-mid-line": [sse(*GOOD)[:37], sse(*GOOD)[37:]],
    "all-in-one-read": [sse(*GOOD)],
    "event-and-id-fields": [b"event: message\nid: 1\n" + sse(ROLE), *_events(*GOOD[1:])],
    "no-space-after-colon": [e.replace(b"data: ", b"data:") for e in _events(*GOOD)],
    "no-done-after-the-finish": _events(*GOOD[:-1]),
}


@pytest.mark.parametrize("parts", list(SSE_VARIANTS.values()), ids=list(SSE_VARIANTS))
def test_upstream_sse_variants_are_relayed_as_clean_events(
    http: httpx.Client, script_stream: ScriptedStream, gateway: GatewayServer, parts: list[bytes]
):
    script_stream.script(*parts)

    response = http.post(gateway.url + CHAT, json=chat_body("scripted", stream=True))

    assert response.status_code == 200, response.text
    events = spec.validate_stream(response.content)
    [choice] = spec.assemble(events)
    assert (choice["content"], choice["finish_reason"]) == ("Hello world", "stop")
    assert response.text.count("data: ") == 5  # role, two deltas, finish, [DONE]
    assert "\r" not in response.text


# ------------------------------------------------------------------- the request log


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_request_log_line_names_request_upstream_status_and_tokens(
    http: httpx.Client,
    fake: FakeView,
    gateway: GatewayServer,
    caplog: pytest.LogCaptureFixture,
    stream: bool,
):
    caplog.set_level(logging.INFO, logger="gateway.request")
    extra: dict[str, Any] = (
        {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
    )

    response = http.post(gateway.url + CHAT, json=chat_body(**extra))

    assert response.status_code == 200
    if stream:
        usage = spec.validate_stream(response.content)[-1]["usage"]
    else:
        usage = response.json()["usage"]
    line = vars(request_log(caplog, response.headers["x-request-id"]))
    [upstream] = fake.chat_requests
    assert line["status"] == 200
    assert line["model"] == "gpt-4o-mini"
    assert line["stream"] is stream
    assert line["upstream"] == "fake"
    assert line["upstream_request_id"] == upstream.request_id
    assert line["prompt_tokens"] == usage["prompt_tokens"]
    assert line["completion_tokens"] == usage["completion_tokens"]
    assert line["duration_ms"] >= 0
    assert ("ttfb_ms" in line) is stream


def test_request_log_line_of_a_rejected_request(
    http: httpx.Client, gateway: GatewayServer, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="gateway.request")

    response = http.post(gateway.url + CHAT, json={"model": "mock-1", "messages": []})

    line = vars(request_log(caplog, response.headers["x-request-id"]))
    assert line["status"] == 400
    assert line["error"] == "invalid_request"


def test_upstream_key_never_reaches_logs_or_clients(
    http: httpx.Client,
    fake: FakeView,
    script_stream: ScriptedStream,
    gateway: GatewayServer,
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.DEBUG)
    said = f"Your key {UPSTREAM_KEY} is no good."
    fake.script(
        Reply.error(400, said),
        Reply.error(401, said),
        Reply.error(429, said),
        Reply.error(500, said),
    )
    script_stream.script(sse(ROLE), sse({"error": {"message": said, "type": "server_error"}}))

    responses = []
    for _ in range(4):
        responses.append(http.post(gateway.url + CHAT, json=chat_body()))
        settle(gateway.app)  # a 401 marks the upstream unhealthy, a 429 pauses it
    responses.append(http.post(gateway.url + CHAT, json=chat_body("scripted", stream=True)))
    for response in responses:
        request_log(caplog, response.headers["x-request-id"])

    assert [r.status_code for r in responses] == [400, 502, 429, 502, 200]
    for response in responses:
        assert UPSTREAM_KEY not in response.text
        assert UPSTREAM_KEY not in str(response.headers)
    assert UPSTREAM_KEY not in log_text(caplog)
    assert "[REDACTED]" in responses[0].text


def test_invalid_config_is_refused_before_serving(gateway_server: StartGateway):
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match=r"upstreams\.x\.provider"):
        gateway_server({"upstreams": {"x": {"provider": "nope"}}, "models": {}})


UPSTREAM_ERROR_SHAPES = [
    pytest.param(
        Reply.raw(
            '{"error": "Input validation error", "error_type": "validation"}',
            status=422,
            content_type="application/json",
        ),
        422,
        "Input validation error",
        id="tgi",
    ),
    pytest.param(
        Reply.raw('{"detail": "Not Found"}', status=404, content_type="application/json"),
        404,
        "Not Found",
        id="fastapi",
    ),
    pytest.param(
        Reply.raw("max_tokens is too large", status=400, content_type="text/plain"),
        400,
        "max_tokens is too large",
        id="plain-text",
    ),
    pytest.param(Reply.error(409, "Conflict."), 409, "Conflict.", id="openai-409"),
    pytest.param(Reply.error(415, "Bad media type."), 415, "Bad media type.", id="openai-415"),
]


@pytest.mark.parametrize(("reply", "status", "message"), UPSTREAM_ERROR_SHAPES)
def test_upstream_client_errors_of_any_shape_become_openais_envelope(
    http: httpx.Client,
    fake: FakeView,
    gateway: GatewayServer,
    reply: Reply,
    status: int,
    message: str,
):
    fake.script(reply)

    response = http.post(gateway.url + CHAT, json=chat_body())

    assert error_of(response, status)["message"] == message
    assert response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize(
    ("upstream_status", "status", "code"),
    [(408, 504, "upstream_timeout"), (529, 503, "upstream_overloaded"), (204, 502, None)],
)
def test_other_upstream_statuses_map_to_gateway_errors(
    http: httpx.Client,
    fake: FakeView,
    gateway: GatewayServer,
    upstream_status: int,
    status: int,
    code: str | None,
):
    reply = Reply.raw(b"", status=204) if upstream_status == 204 else Reply.error(upstream_status)
    fake.script(reply)

    response = http.post(gateway.url + CHAT, json=chat_body())

    error = error_of(response, status)
    assert error["type"] == "server_error"
    if code is not None:
        assert error["code"] == code


@pytest.mark.parametrize("upstream_id", ["x" * 300, "ab\tcd"], ids=["too-long", "control-char"])
def test_an_unprintable_upstream_request_id_is_not_passed_on(
    http: httpx.Client, fake: FakeView, gateway: GatewayServer, upstream_id: str
):
    fake.script(Reply(headers={"x-request-id": upstream_id}))

    response = http.post(gateway.url + CHAT, json=chat_body())

    assert response.status_code == 200
    assert "x-upstream-request-id" not in response.headers
