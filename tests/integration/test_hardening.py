"""Hardening, end to end: clients cannot steer where upstream requests (and keys) go, redirects
are never followed, and every request limit answers with its status, a request id and OpenAI's
envelope, or cuts a client that stalls. The gateways run under `gateway serve`'s own HTTP
protocol (gateway/http.py, through the fixtures); the last tests run a real `gateway serve`.

An "attacker" is a TCP listener on loopback that records every connection it gets: a test that
plants its address anywhere a client can reach asserts it got none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from starlette.types import Receive, Scope, Send

from tests import spec
from tests.conftest import GatewayServer, StartGateway
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.openai_upstream import FakeOpenAI, Reply
from tests.fakes.upstream import FakeUpstream
from tests.integration.conftest import (
    CHAT,
    NO_BREAKER,
    UPSTREAM_KEY,
    FakeView,
    chat_body,
    error_of,
    openai_upstream,
    request_log,
    serve,
    single_upstream,
    wait_until,
)
from tests.processes import GatewayProcess
from tests.servers import HOST, ServerThread

ROOT = Path(__file__).resolve().parents[2]
CLIENT_CANARY = "client-canary-5d1e9a7c3b"  # planted in every client header that could carry it
ADMIN_KEY = "adm-hardening-0123456789abcdef"


class Attacker:
    """A TCP listener on 127.0.0.1 that accepts and records every connection and its bytes."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((HOST, 0))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self.connections = 0
        self.received = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="attacker", daemon=True)
        self._thread.start()

    @property
    def hostport(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.hostport}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(0.2)
                with contextlib.suppress(OSError):
                    while data := conn.recv(65536):
                        self.received += data

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


@pytest.fixture
def attacker() -> Iterator[Attacker]:
    listener = Attacker()
    try:
        yield listener
    finally:
        listener.close()


def planted_headers(attacker: Attacker) -> dict[str, str]:
    """Every header a client might try to choose an upstream, host or credential with."""
    where, hostport = attacker.url, attacker.hostport
    return {
        "host": hostport,
        "x-forwarded-host": hostport,
        "x-forwarded-proto": "http",
        "x-forwarded-port": str(attacker.port),
        "forwarded": f"host={hostport};proto=http",
        "x-original-host": hostport,
        "x-host": hostport,
        "x-original-url": where,
        "x-rewrite-url": where,
        "x-upstream-url": where,
        "x-api-base": where,
        "x-base-url": where,
        "x-openai-base-url": where,
        "x-endpoint": where,
        "x-target-uri": where,
        "authorization": f"Bearer sk-{CLIENT_CANARY}",
        "api-key": CLIENT_CANARY,
        "x-api-key": CLIENT_CANARY,
        "x-goog-api-key": CLIENT_CANARY,
        "anthropic-api-key": CLIENT_CANARY,
        "proxy-authorization": f"Basic {CLIENT_CANARY}",
        "openai-organization": f"org-{CLIENT_CANARY}",
        "openai-project": f"proj_{CLIENT_CANARY}",
        "cookie": f"session={CLIENT_CANARY}",
        "x-amz-security-token": CLIENT_CANARY,
        "x-credential": CLIENT_CANARY,
    }


def planted_body(attacker: Attacker, model: str) -> dict[str, Any]:
    """A valid request with the attacker's address in nested places: all of it is data."""
    where = attacker.url
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": f"Use the API at {where}/v1 with api_key=sk-x."},
            {"role": "user", "content": [{"type": "text", "text": f"base_url: {where}"}]},
        ],
        "metadata": {"base_url": where, "api_base": where, "headers": f"host: {where}"},
        "user": where,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "fetch",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "base_url": {"type": "string", "default": where},
                            "api_key": {"type": "string"},
                            "extra_headers": {"type": "object"},
                        },
                    },
                },
            }
        ],
        "max_tokens": 16,
    }


def _credentials(provider: str, headers: dict[str, str], query: str) -> dict[str, str]:
    names = ("authorization", "api-key", "x-api-key", "x-goog-api-key", "cookie")
    found = {name: headers[name] for name in names if name in headers}
    if "key=" in query:
        found["query"] = query
    return found


UPSTREAM_CREDENTIAL = {
    "openai": {"authorization": f"Bearer {UPSTREAM_KEY}"},
    "anthropic": {"x-api-key": UPSTREAM_KEY},
    "gemini": {"x-goog-api-key": UPSTREAM_KEY},
}


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_client_cannot_choose_upstream_host_or_credential(
    provider: str, gateway_server: StartGateway, attacker: Attacker
):
    fakes: dict[str, type[FakeUpstream]] = {
        "openai": FakeOpenAI,
        "anthropic": FakeAnthropic,
        "gemini": FakeGemini,
    }
    models = {
        "openai": "gpt-4o-mini",
        "anthropic": "claude-sonnet-4-5",
        "gemini": "gemini-2.0-flash",
    }
    with fakes[provider](api_key=UPSTREAM_KEY) as fake:
        upstream = {
            "provider": provider,
            "base_url": fake.base_url,
            "api_key": UPSTREAM_KEY,
            "breaker": NO_BREAKER,
        }
        gateway = gateway_server(
            {
                "upstreams": {"up": upstream},
                "models": {"m": [{"upstream": "up", "model": models[provider]}]},
            }
        )
        body = planted_body(attacker, "m")
        # Pretty-printed, with escapes: what goes upstream is the gateway's own serialisation.
        sent = json.dumps(body, indent=2, ensure_ascii=True).encode()
        with httpx.Client(timeout=10) as client:
            response = client.post(
                gateway.url + CHAT, content=sent, headers=planted_headers(attacker)
            )
        assert response.status_code == 200, response.text
        spec.validate("CreateChatCompletionResponse", response.json())
        [received] = fake.chat_requests
        fake.check_requests()

    assert attacker.connections == 0
    credentials = _credentials(provider, received.headers, received.query)
    assert credentials == UPSTREAM_CREDENTIAL[provider]
    everything = json.dumps(received.headers) + received.query + received.body.decode()
    assert CLIENT_CANARY not in everything
    assert attacker.hostport not in json.dumps(received.headers)
    assert received.headers["host"] == fake.url.removeprefix("http://")
    if provider == "openai":
        assert received.body == orjson.dumps(json.loads(sent) | {"model": "gpt-4o-mini"})
        assert received.body != sent


# ------------------------------------------------------------------- one gateway, small limits

LIMITS = {
    "max_header_bytes": 4096,
    "header_timeout": 1.0,
    "body_timeout": 1.0,
    "max_json_depth": 8,
    "max_messages": 4,
}


@pytest.fixture(scope="module")
def limited(shared_fake: FakeOpenAI) -> Iterator[GatewayServer]:
    """A gateway on the module's fake with small request limits and an admin key."""
    config = single_upstream(shared_fake, server=LIMITS)
    config["auth"] = {"admin_key": ADMIN_KEY}
    with serve(config) as gateway:
        yield gateway


@pytest.mark.parametrize(
    "field",
    [
        "api_base", "base_url", "api_key", "apiKey", "baseURL", "extra_headers", "headers",
        "api_version", "user_config", "aws_region_name", "vertex_project", "litellm_params",
        "azure_endpoint", "organization", "proxy", "upstream_url", "host",
    ],
)  # fmt: skip
def test_routing_fields_in_the_body_are_refused(
    field: str, http: httpx.Client, limited: GatewayServer, fake: FakeView, attacker: Attacker
):
    body = chat_body(**{field: attacker.url})

    response = http.post(limited.url + CHAT, json=body)

    error = error_of(response, 400)
    assert error["code"] == "forbidden_parameter"
    assert error["param"] == field
    assert "chooses upstream" in error["message"]
    assert response.headers["x-should-retry"] == "false"
    assert fake.requests == []
    assert attacker.connections == 0


def test_a_model_name_that_is_a_url_is_just_unknown(
    http: httpx.Client, limited: GatewayServer, fake: FakeView, attacker: Attacker
):
    response = http.post(limited.url + CHAT, json=chat_body(model=attacker.url + "/v1"))

    assert error_of(response, 404)["code"] == "model_not_found"
    assert fake.requests == []
    assert attacker.connections == 0


def test_json_nested_deeper_than_the_limit_is_400(
    http: httpx.Client, limited: GatewayServer, fake: FakeView
):
    deep: Any = "x"
    for _ in range(7):  # in the body's `tools` list: 2 levels, and 7 more make 9
        deep = {"a": deep}
    fine = chat_body(metadata={"k": "v"})  # depth 3
    response = http.post(limited.url + CHAT, json=chat_body(tools=[deep]))
    served = http.post(limited.url + CHAT, json=fine)

    error = error_of(response, 400)
    assert error["message"] == "the request body nests JSON deeper than 8 levels"
    assert served.status_code == 200
    assert len(fake.chat_requests) == 1


def test_more_messages_than_the_limit_is_400(
    http: httpx.Client, limited: GatewayServer, fake: FakeView
):
    messages = [{"role": "user", "content": str(i)} for i in range(5)]

    response = http.post(limited.url + CHAT, json=chat_body() | {"messages": messages})
    served = http.post(limited.url + CHAT, json=chat_body() | {"messages": messages[:4]})

    error = error_of(response, 400)
    assert error["param"] == "messages"
    assert "at most 4" in error["message"]
    assert served.status_code == 200
    assert len(fake.chat_requests) == 1


# ------------------------------------------------------------------- raw HTTP


def connect(url: str, rcvbuf: int | None = None) -> socket.socket:
    """A plain TCP connection to the server at `url` (http://127.0.0.1:PORT)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect, so the window is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect((HOST, int(url.rsplit(":", 1)[1])))
    return sock


def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything until the server closes (or resets) the connection."""
    sock.settimeout(timeout)
    data = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return bytes(data)


def drain_until_closed(sock: socket.socket) -> None:
    while sock.recv(1 << 20):
        pass


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def envelope(status: int, headers: dict[str, str], body: bytes, expected: int) -> dict[str, Any]:
    """The error of a raw response, after checking its status, headers and envelope."""
    assert status == expected, body
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert headers["x-request-id"]
    assert int(headers["content-length"]) == len(body)
    data = json.loads(body)
    spec.validate("ErrorResponse", data)
    error: dict[str, Any] = data["error"]
    return error


def test_headers_over_the_limit_are_431(http: httpx.Client, limited: GatewayServer):
    many = {f"x-extra-{i}": "v" * 100 for i in range(40)}  # ~4.6 KB
    just_under = {f"x-extra-{i}": "v" * 100 for i in range(30)}  # ~3.4 KB with the rest

    refused = http.get(limited.url + "/v1/models", headers={"x-request-id": "req-431", **many})
    long_url = http.get(limited.url + "/v1/models?q=" + "a" * 5000)
    served = http.get(limited.url + "/v1/models", headers=just_under)

    error = error_of(refused, 431)
    assert error["code"] == "request_header_fields_too_large"
    assert error["message"] == (
        "the request line and headers exceed the gateway's limit of 4096 bytes"
    )
    assert refused.headers["x-request-id"] == "req-431"
    assert refused.headers["connection"] == "close"
    assert refused.headers["x-should-retry"] == "false"
    assert error_of(long_url, 431)["code"] == "request_header_fields_too_large"
    assert served.status_code == 200


def test_an_endless_header_is_cut_off_at_the_limit(limited: GatewayServer):
    with connect(limited.url) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-endless: ")
        sent = 0
        while sent < 4 * 1024 * 1024:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer came while the header was still being sent
            sock.sendall(b"a" * 1024)
            sent += 1024
            time.sleep(0.001)
        answer = read_all(sock)

    error = envelope(*parse_response(answer), expected=431)
    assert error["code"] == "request_header_fields_too_large"
    assert sent < 1024 * 1024  # refused long before the client stopped


def test_headers_sent_too_slowly_get_408(limited: GatewayServer, caplog):
    caplog.set_level(logging.INFO, "gateway.request")
    with connect(limited.url) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nx-request-id: req-slowloris\r\n")
        answered = False
        while not answered and time.monotonic() - started < 5:
            answered = bool(select.select([sock], [], [], 0.2)[0])
            if not answered:
                sock.sendall(b"x-drip: 1\r\n")
        elapsed = time.monotonic() - started
        answer = read_all(sock)

    status, headers, body = parse_response(answer)
    error = envelope(status, headers, body, expected=408)
    assert error["code"] == "request_timeout"
    assert error["message"] == "the request's headers did not arrive within 1 s"
    assert headers["x-request-id"] == "req-slowloris"
    assert 0.9 <= elapsed < 2.5
    [line] = [r for r in caplog.records if getattr(r, "request_id", None) == "req-slowloris"]
    assert line.getMessage() == "request refused"
    assert (line.status, line.error) == (408, "request_timeout")


def test_a_connection_that_sends_nothing_is_closed(limited: GatewayServer):
    with connect(limited.url) as sock:
        started = time.monotonic()
        answer = read_all(sock)
        elapsed = time.monotonic() - started

    assert answer == b""
    assert 0.9 <= elapsed < 2.5


def _partial_chat(request_id: str, path: str = CHAT, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: 200\r\nx-request-id: {request_id}\r\n{extra}\r\n"
        '{"model": "gpt-4o-mini", '
    ).encode()


def test_a_body_that_stalls_gets_408_from_the_chat_endpoint(
    limited: GatewayServer, fake: FakeView, caplog
):
    caplog.set_level(logging.INFO, "gateway.request")
    with connect(limited.url) as sock:
        started = time.monotonic()
        sock.sendall(_partial_chat("req-slow-body"))
        answer = read_all(sock)
        elapsed = time.monotonic() - started

    status, headers, body = parse_response(answer)
    error = envelope(status, headers, body, expected=408)
    assert error["code"] == "request_timeout"
    assert error["message"] == "the request body stalled: no bytes for 1 s"
    assert headers["x-request-id"] == "req-slow-body"
    assert "x-should-retry" not in headers  # a slow link may do better next time
    assert 0.9 <= elapsed < 2.5
    line = request_log(caplog, "req-slow-body")  # the endpoint's own request line
    assert (line.status, line.error) == (408, "request_timeout")  # type: ignore[attr-defined]
    assert fake.requests == []


def test_a_body_that_stalls_on_another_route_gets_408_too(limited: GatewayServer):
    admin = f"authorization: Bearer {ADMIN_KEY}\r\n"
    with connect(limited.url) as sock:
        started = time.monotonic()
        sock.sendall(_partial_chat("req-slow-admin", "/admin/upstreams/fake/test", admin))
        answer = read_all(sock)
        elapsed = time.monotonic() - started

    status, headers, body = parse_response(answer)
    error = envelope(status, headers, body, expected=408)
    assert error["message"] == "the request body stalled: no bytes for 1 s"
    assert headers["x-request-id"] == "req-slow-admin"
    assert 1.9 <= elapsed < 3.5  # the body timeout, then the app's grace to answer (1 s)


def test_malformed_http_gets_400_in_the_envelope(limited: GatewayServer):
    with connect(limited.url) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nbad header\r\n\r\n")
        answer = read_all(sock)

    error = envelope(*parse_response(answer), expected=400)
    assert error["message"] == "the request is not valid HTTP/1.1"


# ------------------------------------------------------------------- redirects


class Redirector:
    """An upstream that answers everything with `status` and a `location` at the attacker,
    recording what it was sent."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.status = 307
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        while (await receive()).get("more_body"):
            pass
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append((scope["method"], scope["path"], headers))
        location = self.location + scope["path"]
        body = b'{"moved": "' + location.encode() + b'"}'
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [
                    (b"location", location.encode()),
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def redirect_setup() -> Iterator[tuple[Redirector, Attacker, GatewayServer]]:
    """A redirecting upstream, reached through both transports and probed every 0.1 s."""
    attacker = Attacker()
    redirector = Redirector(attacker.url)
    try:
        with ServerThread(redirector, name="redirector", lifespan="off") as upstream:
            base = upstream.url + "/v1"
            off = {"interval": 0}
            config = {
                "auth": {"admin_key": ADMIN_KEY},
                "upstreams": {
                    "native": openai_upstream(base, transport="native", health=off),
                    "httpx": openai_upstream(base, transport="httpx", health=off),
                    "probed": openai_upstream(base, health={"interval": 0.1}),
                },
                "models": {
                    "via-native": [{"upstream": "native", "model": "gpt-4o-mini"}],
                    "via-httpx": [{"upstream": "httpx", "model": "gpt-4o-mini"}],
                    "via-probed": [{"upstream": "probed", "model": "gpt-4o-mini"}],
                },
            }
            with serve(config) as gateway:
                yield redirector, attacker, gateway
    finally:
        attacker.close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("transport", ["native", "httpx"])
def test_upstream_redirects_are_not_followed(
    transport: str, status: int, http: httpx.Client, redirect_setup
):
    redirector, attacker, gateway = redirect_setup
    redirector.status = status
    before = len(redirector.requests)

    response = http.post(gateway.url + CHAT, json=chat_body(model=f"via-{transport}"))

    error = error_of(response, 502)
    assert error["code"] == "upstream_redirect"
    assert f"upstream '{transport}' answered with a redirect ({status})" in error["message"]
    assert "does not follow" in error["message"]
    assert attacker.hostport not in response.text
    sent = redirector.requests[before:]
    assert sent
    assert all(path == "/v1/chat/completions" for _, path, _ in sent)
    assert all(h["authorization"] == f"Bearer {UPSTREAM_KEY}" for _, _, h in sent)
    assert attacker.connections == 0
    assert attacker.received == b""


def test_health_probes_and_the_admin_test_do_not_follow_redirects(redirect_setup):
    redirector, attacker, gateway = redirect_setup
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}

    def probed_twice() -> bool:
        return sum(1 for m, p, _ in redirector.requests if m == "GET" and p == "/v1/models") >= 2

    wait_until(probed_twice, what="two health probes")
    with httpx.Client(base_url=gateway.url, headers=admin, timeout=10) as client:
        view = client.get("/admin/upstreams/probed").json()
        tested = client.post("/admin/upstreams/native/test").json()

    assert "redirect" in view["health"]["last_error"]
    assert tested["ok"] is False
    assert tested["status"] in (301, 302, 303, 307, 308)
    assert "does not follow" in tested["error"]
    assert attacker.connections == 0


# ------------------------------------------------------------------- streams


def test_a_stream_longer_than_the_request_timeout_ends_with_an_error_event(
    gateway_server: StartGateway, fake_openai: FakeOpenAI
):
    gateway = gateway_server(single_upstream(fake_openai, server={"request_timeout": 1}))
    fake_openai.script(Reply(content=["tick"] * 100, event_delay=0.05))  # 5 s of events

    started = time.monotonic()
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", gateway.url + CHAT, json=chat_body(stream=True)) as response,
    ):
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert 0.9 <= elapsed < 3
    assert lines[-1] != "data: [DONE]"
    last = json.loads(lines[-1].removeprefix("data: "))
    assert last["error"]["code"] == "upstream_timeout"
    assert "deadline (1 s)" in last["error"]["message"]
    assert len(lines) > 2  # it did stream before the deadline
    [upstream] = fake_openai.chat_requests
    assert upstream.wait_disconnected()  # the upstream call was cancelled with it


class EndlessStream:
    """An OpenAI-style upstream that streams chunks of `size` bytes of text until its client
    goes away; counts what it sent and notes the disconnect."""

    def __init__(self, size: int = 8192) -> None:
        chunk = {
            "id": "chatcmpl-endless",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": "x" * size}, "finish_reason": None}],
        }
        self.event = b"data: " + json.dumps(chunk).encode() + b"\n\n"
        self.sent = 0
        self.streaming = threading.Event()
        self.disconnected = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        while (await receive()).get("more_body"):
            pass
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        self.streaming.set()
        try:
            while not gone.is_set():
                await send({"type": "http.response.body", "body": self.event, "more_body": True})
                self.sent += len(self.event)
                await asyncio.sleep(0)
        finally:
            watcher.cancel()
            self.disconnected.set()


def test_a_client_that_stops_reading_is_cut_and_its_upstream_call_cancelled(
    gateway_server: StartGateway, http: httpx.Client, caplog
):
    caplog.set_level(logging.INFO)
    endless = EndlessStream()
    with ServerThread(endless, name="endless", lifespan="off") as upstream:
        config = single_upstream(upstream.url + "/v1", server={"write_timeout": 1})
        gateway = gateway_server(config, loop="uvloop")
        request = json.dumps(chat_body(stream=True)).encode()
        with connect(gateway.url, rcvbuf=4096) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-request-id: req-stalled\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(request), request)
            )
            assert sock.recv(1024).startswith(b"HTTP/1.1 200 ")
            stalled = time.monotonic()  # from here on the client reads nothing
            assert endless.streaming.wait(5)
            assert endless.disconnected.wait(15), "the upstream call was never cancelled"
            cut_after = time.monotonic() - stalled
            with pytest.raises(ConnectionResetError):
                drain_until_closed(sock)  # what was in flight, then the reset
        after = http.get(gateway.url + "/v1/models")

    assert 1.0 <= cut_after < 8
    assert endless.sent < 64 * 1024 * 1024  # bounded by socket buffers, not by the stream
    [stall] = [r for r in caplog.records if r.getMessage().startswith("client stopped reading")]
    assert stall.request_id == "req-stalled"
    assert stall.buffered_bytes < 1024 * 1024
    line = request_log(caplog, "req-stalled")
    assert line.status == 499  # type: ignore[attr-defined]
    assert after.status_code == 200  # the gateway itself is fine


# ------------------------------------------------------------------- a real `gateway serve`


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[str]:
    """`gateway serve` as a real process (uvicorn options as shipped) with small limits."""
    config = {
        "server": {"max_header_bytes": 4096, "header_timeout": 0.5, "drain_seconds": 0},
        "upstreams": {"mock": {"provider": "mock", "health": {"interval": 0}}},
        "models": {"mock-1": [{"upstream": "mock", "model": "mock-1"}]},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    with GatewayProcess(tmp_path, path) as gateway:
        yield gateway.url


def test_gateway_serve_enforces_head_limits(gateway_process: str):
    with httpx.Client(timeout=10) as client:
        big = {f"x-extra-{i}": "v" * 100 for i in range(50)}
        refused = client.get(gateway_process + "/v1/models", headers=big)
        served = client.get(gateway_process + "/v1/models")
    with connect(gateway_process) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /v1/models HTTP/1.1\r\n")
        answer = read_all(sock)
        elapsed = time.monotonic() - started

    assert error_of(refused, 431)["code"] == "request_header_fields_too_large"
    assert served.status_code == 200
    assert envelope(*parse_response(answer), expected=408)["code"] == "request_timeout"
    assert 0.4 <= elapsed < 2
