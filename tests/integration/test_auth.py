"""Client keys end to end: a real gateway (uvicorn on 127.0.0.1) over the fake OpenAI upstream;
the 401 that comes before the body is read, the 403 outside a key's models, each key's own
limits and headers, usage and metrics by key name, `/v1/models` per key, a reload that rotates
a key, the OpenAI SDK with a client key, and `gateway serve`'s refusal to run without keys on
an address other hosts reach."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway.config import load_config
from tests.conftest import GatewayServer, StartGateway
from tests.fakes.openai_upstream import FakeOpenAI, Reply
from tests.integration.conftest import (
    CHAT,
    MakeSDK,
    chat_body,
    error_of,
    log_text,
    openai_upstream,
    request_log,
    serve,
    wait_until,
)
from tests.integration.test_metrics import scrape, value
from tests.processes import stop

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = [sys.executable, "-m", "gateway"]

TEAM_A = "ta-canary-5b1e9d07c3f24a68"  # planted: must never come back out
BATCH = "bt-canary-0e6f2a9c84d1b375"  # configured only as its SHA-256
TINY = "tn-canary-93c0d5e1a7b24f68"
WRONG = "wr-canary-1f8e2d3c4b5a6978"
ADMIN_KEY = "adm-0123456789abcdef0123"
KEYS = (TEAM_A, BATCH, TINY, WRONG)
PRICING = {"gpt-4o-mini": {"input": 1.0, "output": 2.0}, "gpt-4o": {"input": 5.0, "output": 10.0}}


def keys_config(fake: FakeOpenAI, **server: Any) -> dict[str, Any]:
    """team-a: gpt-4o* with generous limits; batch: every model, by digest, no limits; tiny: two
    requests a minute; idle: never used. Models gpt-4o-mini, gpt-4o and o3 on the fake."""
    return {
        "server": {"body_timeout": 60, **server},
        "auth": {
            "admin_key": ADMIN_KEY,
            "keys": [
                {
                    "name": "team-a",
                    "key": TEAM_A,
                    "models": ["gpt-4o*"],
                    "rate_limit": {"requests_per_minute": 1000, "tokens_per_minute": 1_000_000},
                },
                {"name": "batch", "key_sha256": hashlib.sha256(BATCH.encode()).hexdigest()},
                {
                    "name": "tiny",
                    "key": TINY,
                    "rate_limit": {"requests_per_minute": 2, "max_wait": 0},
                },
                {"name": "idle", "key": "id-0123456789abcdef0123"},
            ],
        },
        "upstreams": {"fake": openai_upstream(fake, pricing=PRICING, health={"interval": 0})},
        "models": {
            "gpt-4o-mini": [{"upstream": "fake", "model": "gpt-4o-mini"}],
            "gpt-4o": [{"upstream": "fake", "model": "gpt-4o"}],
            "o3": [{"upstream": "fake", "model": "gpt-4o-mini"}],
        },
    }


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def chat(
    http: httpx.Client, gateway: GatewayServer, key: str | None, model: str = "gpt-4o-mini",
    **fields: Any,
) -> httpx.Response:  # fmt: skip
    headers = bearer(key) if key else {}
    return http.post(gateway.url + CHAT, json=chat_body(model, **fields), headers=headers)


def assert_no_key_leaked(*texts: str) -> None:
    for text in texts:
        for key in KEYS:
            assert key not in text


@pytest.fixture
def keyed(gateway_server: StartGateway, fake_openai: FakeOpenAI) -> GatewayServer:
    return gateway_server(keys_config(fake_openai))


# ------------------------------------------------------------------- 401


@pytest.mark.parametrize(
    ("headers", "fingerprint"),
    [
        pytest.param({}, False, id="no-key"),
        pytest.param(bearer(WRONG), True, id="wrong-bearer"),
        pytest.param({"api-key": WRONG}, True, id="wrong-api-key"),
        pytest.param({"authorization": f"Basic {TEAM_A}"}, False, id="other-scheme"),
        pytest.param({"x-api-key": TEAM_A}, False, id="anthropic-header"),
    ],
)
def test_a_missing_or_wrong_key_is_a_401_with_no_upstream_call(
    http, keyed, fake_openai, caplog, headers, fingerprint
):
    caplog.set_level(logging.INFO)
    response = http.post(keyed.url + CHAT, json=chat_body(), headers=headers)
    error = error_of(response, 401)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["x-should-retry"] == "false"
    if fingerprint:
        assert error["message"].startswith("Incorrect API key provided")
    else:
        assert error["message"].startswith("You didn't provide an API key")
    assert_no_key_leaked(response.text, str(response.headers))
    line = request_log(caplog, response.headers["x-request-id"])
    assert line.status == 401  # type: ignore[attr-defined]
    assert not hasattr(line, "key")
    expected = "sha256:" + hashlib.sha256(WRONG.encode()).hexdigest()[:12]
    assert getattr(line, "key_fingerprint", None) == (expected if fingerprint else None)
    assert not hasattr(line, "model")  # the body was never read
    assert_no_key_leaked(log_text(caplog))
    assert fake_openai.requests == []


def test_the_401_is_sent_without_reading_the_body(keyed, fake_openai):
    """Headers announce a 5 MB body (under the 10 MB limit) and none follows: a gateway that
    read the body would wait for it (body_timeout is 60 s); the 401 comes at once."""
    host, port = keyed.url.removeprefix("http://").split(":")
    for auth in ("", f"authorization: Bearer {WRONG}\r\n"):
        head = (
            f"POST {CHAT} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"{auth}content-length: 5000000\r\n\r\n"
        ).encode()
        started = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(head + b'{"model": "gpt-4o-mini", "mess')
            status, headers, body = read_response(sock)
        assert time.monotonic() - started < 5
        assert status == 401
        assert headers["www-authenticate"] == "Bearer"
        assert json.loads(body)["error"]["code"] == "invalid_api_key"
    assert fake_openai.requests == []


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a content-length, read off `sock` (its timeout applies)."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        assert part, f"connection closed before a response: {data!r}"
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers["content-length"])
    while len(body) < length:
        part = sock.recv(65536)
        assert part, "connection closed inside the response body"
        body += part
    return int(status_line.split()[1]), headers, body


# ------------------------------------------------------------------- keys that work


@pytest.mark.parametrize(
    ("headers", "name"),
    [
        pytest.param(bearer(TEAM_A), "team-a", id="bearer"),
        pytest.param({"api-key": TEAM_A}, "team-a", id="api-key"),
        pytest.param(bearer(BATCH), "batch", id="key-sha256"),
        pytest.param({"api-key": BATCH}, "batch", id="key-sha256-api-key"),
    ],
)
def test_a_configured_key_is_served_and_named_in_the_log(
    http, keyed, fake_openai, caplog, headers, name
):
    caplog.set_level(logging.INFO)
    response = http.post(keyed.url + CHAT, json=chat_body(), headers=headers)
    assert response.status_code == 200, response.text
    line = request_log(caplog, response.headers["x-request-id"])
    assert line.key == name  # type: ignore[attr-defined]
    [sent] = fake_openai.chat_requests
    assert_no_key_leaked(json.dumps(sent.headers), sent.body.decode(), log_text(caplog))


def test_a_model_outside_the_keys_globs_is_a_403_before_any_upstream_call(http, keyed, fake_openai):
    error = error_of(chat(http, keyed, TEAM_A, "o3"), 403)
    assert error["code"] == "model_not_allowed"
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "model"
    assert "'o3'" in error["message"]
    assert "'team-a'" in error["message"]
    # Outside the globs, a model that does not exist is the same 403: nothing is told.
    assert error_of(chat(http, keyed, TEAM_A, "nope"), 403)["code"] == "model_not_allowed"
    # Inside them, an unknown model is the usual 404.
    assert error_of(chat(http, keyed, TEAM_A, "gpt-4o-nope"), 404)["code"] == "model_not_found"
    assert fake_openai.requests == []
    assert chat(http, keyed, BATCH, "o3").status_code == 200  # batch may use every model


def test_fallback_models_in_the_body_are_held_to_the_keys_globs(http, keyed, fake_openai):
    """OpenRouter-style upstreams take a top-level `models` list as models to fall back to:
    each must be one the key may use, or the request is a 403 before any upstream call."""
    error = error_of(chat(http, keyed, TEAM_A, models=["gpt-4o", "o3"]), 403)
    assert error["code"] == "model_not_allowed"
    assert error["param"] == "models"
    assert "'o3'" in error["message"]
    assert error_of(chat(http, keyed, TEAM_A, models="o3"), 403)["param"] == "models"
    assert fake_openai.requests == []
    assert chat(http, keyed, TEAM_A, models=["gpt-4o"]).status_code == 200


# ------------------------------------------------------------------- limits per key


def test_a_keys_request_limit_is_a_429_with_its_headers_while_another_key_passes(
    http, keyed, fake_openai
):
    first, second = chat(http, keyed, TINY), chat(http, keyed, TINY)
    assert first.status_code == second.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.headers["x-ratelimit-reset-requests"].endswith("s")
    refused = chat(http, keyed, TINY)
    error = error_of(refused, 429)
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "rate_limit_exceeded"
    assert error["message"].startswith("client key 'tiny' is at its limit of 2 requests")
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(refused.headers["retry-after"]) <= 30  # a slot drains every 30 s
    assert "x-should-retry" not in refused.headers  # waiting helps
    assert len(fake_openai.chat_requests) == 2  # the refused one never went upstream

    other = chat(http, keyed, TEAM_A)
    assert other.status_code == 200
    assert other.headers["x-ratelimit-limit-requests"] == "1000"
    assert other.headers["x-ratelimit-limit-tokens"] == "1000000"
    assert chat(http, keyed, BATCH).status_code == 200
    assert not any(h.startswith("x-ratelimit-") for h in chat(http, keyed, BATCH).headers)

    _, samples = scrape(keyed.url)
    rejected = (
        "gateway_ratelimit_rejections_total",
        frozenset({"scope": "key", "name": "tiny"}.items()),
    )
    assert samples[rejected] == 1
    assert value(samples, "gateway_key_requests_total", key="tiny", code="4xx") == 1
    assert value(samples, "gateway_key_requests_total", key="tiny", code="2xx") == 2


def test_a_keys_tokens_are_charged_with_what_the_upstream_reported(http, keyed, fake_openai):
    fake_openai.script(
        Reply(content="big", usage={"prompt_tokens": 300_000, "completion_tokens": 200_000})
    )
    assert chat(http, keyed, TEAM_A).status_code == 200
    after = chat(http, keyed, TEAM_A)
    remaining = int(after.headers["x-ratelimit-remaining-tokens"])
    # 1,000,000 a minute, less the 500,000 reported and this request's own estimate (a few
    # tokens), plus what drained meanwhile (about 16,700 a second): the estimate alone of the
    # first request would have left about 999,980.
    assert 450_000 < remaining < 550_000, remaining


def test_a_streams_concurrency_slot_is_held_until_the_stream_ends(
    http, gateway_server, fake_openai
):
    config = keys_config(fake_openai)
    config["auth"]["keys"][0]["rate_limit"] = {"max_concurrent": 1, "max_wait": 0}
    gateway = gateway_server(config)
    fake_openai.script(Reply(content="one two three four five six", event_delay=0.1))
    url, headers = gateway.url + CHAT, bearer(TEAM_A)
    with http.stream("POST", url, json=chat_body(stream=True), headers=headers) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        assert next(lines).startswith("data: ")  # the stream is under way
        error = error_of(chat(http, gateway, TEAM_A), 429)
        assert "1 concurrent requests" in error["message"]
        assert chat(http, gateway, BATCH).status_code == 200  # another key is not held up
        rest = list(lines)
    assert "data: [DONE]" in rest
    wait_until(lambda: chat(http, gateway, TEAM_A).status_code == 200, what="the slot freed")


# ------------------------------------------------------------------- usage and metrics


def test_usage_and_metrics_count_by_key_name(http, gateway_server, fake_openai):
    gateway = gateway_server(keys_config(fake_openai))
    _, before = scrape(gateway.url)
    for name in ("team-a", "batch", "tiny", "idle"):  # bound up front
        assert value(before, "gateway_key_requests_total", key=name, code="2xx") == 0
        assert value(before, "gateway_key_tokens_total", key=name, kind="prompt") == 0
        assert value(before, "gateway_key_cost_usd_total", key=name) == 0

    fake_openai.script(
        Reply(usage={"prompt_tokens": 100, "completion_tokens": 50}),
        Reply(usage={"prompt_tokens": 10, "completion_tokens": 5}),
        Reply(usage={"prompt_tokens": 1000, "completion_tokens": 2000}),
    )
    assert chat(http, gateway, TEAM_A).status_code == 200
    streamed = chat(
        http, gateway, TEAM_A, "gpt-4o", stream=True, stream_options={"include_usage": True}
    )
    assert streamed.status_code == 200
    assert chat(http, gateway, BATCH).status_code == 200
    assert chat(http, gateway, WRONG).status_code == 401
    assert chat(http, gateway, TEAM_A, "o3").status_code == 403

    admin = httpx.get(gateway.url + "/admin/usage", headers=bearer(ADMIN_KEY), timeout=10)
    keys = admin.json()["keys"]
    assert set(keys) == {"team-a", "batch"}  # names, not keys; no "anonymous"
    team_a_cost = (100 * 1 + 50 * 2 + 10 * 5 + 5 * 10) / 1e6
    assert keys["team-a"] == {
        "requests": 2,
        "prompt_tokens": 110,
        "completion_tokens": 55,
        "cached_tokens": 0,
        "cost_usd": pytest.approx(team_a_cost),
    }
    assert keys["batch"]["prompt_tokens"] == 1000
    assert keys["batch"]["cost_usd"] == pytest.approx((1000 * 1 + 2000 * 2) / 1e6)

    text, samples = scrape(gateway.url)
    assert value(samples, "gateway_key_requests_total", key="team-a", code="2xx") == 2
    assert value(samples, "gateway_key_requests_total", key="team-a", code="4xx") == 1
    assert value(samples, "gateway_key_requests_total", key="batch", code="2xx") == 1
    assert value(samples, "gateway_key_tokens_total", key="team-a", kind="prompt") == 110
    assert value(samples, "gateway_key_tokens_total", key="team-a", kind="completion") == 55
    assert value(samples, "gateway_key_tokens_total", key="batch", kind="completion") == 2000
    assert value(samples, "gateway_key_cost_usd_total", key="team-a") == pytest.approx(team_a_cost)
    assert value(samples, "gateway_key_requests_total", key="idle", code="2xx") == 0
    keys_seen = {
        dict(labels)["key"] for (name, labels) in samples if name.startswith("gateway_key_")
    }
    assert keys_seen == {"team-a", "batch", "tiny", "idle"}  # the 401 is counted under no key
    assert_no_key_leaked(text, admin.text)


# ------------------------------------------------------------------- /v1/models


def test_models_need_a_key_and_list_only_the_keys_models(http, keyed):
    url = keyed.url + "/v1/models"
    for headers in ({}, bearer(WRONG)):
        response = http.get(url, headers=headers)
        assert error_of(response, 401)["code"] == "invalid_api_key"
        assert response.headers["www-authenticate"] == "Bearer"
        assert error_of(http.get(url + "/gpt-4o", headers=headers), 401)
    team_a = http.get(url, headers=bearer(TEAM_A)).json()
    assert [m["id"] for m in team_a["data"]] == ["gpt-4o-mini", "gpt-4o"]
    batch = http.get(url, headers={"api-key": BATCH}).json()
    assert [m["id"] for m in batch["data"]] == ["gpt-4o-mini", "gpt-4o", "o3"]
    assert http.get(url + "/gpt-4o", headers=bearer(TEAM_A)).json()["id"] == "gpt-4o"
    assert error_of(http.get(url + "/o3", headers=bearer(TEAM_A)), 403)["code"] == (
        "model_not_allowed"
    )
    assert error_of(http.get(url + "/gpt-4o-x", headers=bearer(TEAM_A)), 404)
    # Admin and probe endpoints keep their own rules.
    assert http.get(keyed.url + "/healthz").status_code == 200
    assert error_of(http.get(keyed.url + "/admin/usage", headers=bearer(TEAM_A)), 401)


def test_without_keys_nothing_asks_for_one(http, gateway_server, fake_openai):
    config = keys_config(fake_openai)
    del config["auth"]["keys"]
    gateway = gateway_server(config)
    assert gateway.app.state.runtime.keys is None
    assert chat(http, gateway, None, "o3").status_code == 200
    assert len(http.get(gateway.url + "/v1/models").json()["data"]) == 3
    _, samples = scrape(gateway.url)
    assert not any(name.startswith("gateway_key_") and "key" in dict(labels)
                   for name, labels in samples)  # fmt: skip


# ------------------------------------------------------------------- the SDK


def test_the_openai_sdk_with_a_client_key(sdk: MakeSDK, keyed, fake_openai):
    client = sdk(keyed, api_key=TEAM_A)
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello there!"}]
    )
    assert reply.choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    )
    assert chunks
    assert [m.id for m in client.models.list()] == ["gpt-4o-mini", "gpt-4o"]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.chat.completions.create(model="o3", messages=[{"role": "user", "content": "x"}])
    assert denied.value.code == "model_not_allowed"
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk(keyed, api_key=WRONG).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert refused.value.code == "invalid_api_key"
    assert WRONG not in str(refused.value)
    assert len(fake_openai.chat_requests) == 2


# ------------------------------------------------------------------- reload


def test_a_reload_rotates_a_key_and_keeps_the_limits_it_counted(tmp_path, http, fake_openai):
    path = tmp_path / "gateway.yaml"
    config = keys_config(fake_openai)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with serve(load_config(path)) as gateway:
        assert chat(http, gateway, TINY).status_code == 200
        tiny = config["auth"]["keys"][2]
        rotated = "tn-rotated-0123456789abcdef"
        tiny["key"] = rotated
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        reload = httpx.post(gateway.url + "/admin/reload", headers=bearer(ADMIN_KEY), timeout=30)
        assert reload.status_code == 200, reload.text
        assert error_of(chat(http, gateway, TINY), 401)["code"] == "invalid_api_key"
        ok = chat(http, gateway, rotated)
        assert ok.status_code == 200
        assert ok.headers["x-ratelimit-remaining-requests"] == "0"  # the count carried over
        assert error_of(chat(http, gateway, rotated), 429)


# ------------------------------------------------------------------- gateway serve


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Every `gateway serve` a test starts, stopped (by its PID) at teardown."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        stop(process, timeout=30)
        if process.stderr is not None:
            process.stderr.close()


MOCK = {
    "upstreams": {"mock": {"provider": "mock"}},
    "models": {"mock-1": [{"upstream": "mock", "model": "mock-1"}]},
}


def serve_process(
    processes: list[subprocess.Popen[str]], tmp_path: Path, config: dict[str, Any], *args: str
) -> subprocess.Popen[str]:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    process = subprocess.Popen(
        [*GATEWAY, "serve", "--config", str(path), "--port", "0", "--log-format", "json", *args],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    processes.append(process)
    return process


def until_running(process: subprocess.Popen[str]) -> tuple[str, list[str]]:
    """The port `gateway serve` listens on, and its stderr lines up to saying so."""
    assert process.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"Uvicorn running on http://[^:]+:(\d+)", line)
        if match:
            return match.group(1), lines
    raise AssertionError("gateway did not start:\n" + "".join(lines))


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one", "workers"])
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_serve_without_keys_refuses_a_non_loopback_address(tmp_path, processes, host, workers):
    process = serve_process(processes, tmp_path, MOCK, "--host", host, *workers)
    assert process.wait(timeout=30) == 1
    assert process.stderr is not None
    stderr = process.stderr.read()
    assert f"error: refusing to serve on {host} without client keys" in stderr
    assert "auth.allow_unauthenticated: true" in stderr
    assert "Uvicorn running" not in stderr


def test_serve_with_allow_unauthenticated_warns_at_start(tmp_path, processes):
    config = {**MOCK, "auth": {"allow_unauthenticated": True}}
    process = serve_process(processes, tmp_path, config, "--host", "0.0.0.0")
    port, lines = until_running(process)
    warnings = [
        record
        for record in (json.loads(line) for line in lines if line.startswith("{"))
        if record["level"] == "warning" and "without client keys" in record["message"]
    ]
    assert len(warnings) == 1, lines
    assert "0.0.0.0" in warnings[0]["message"]
    body = {"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]}
    reply = httpx.post(f"http://127.0.0.1:{port}{CHAT}", json=body, timeout=10)
    assert reply.status_code == 200  # no key asked for


def test_serve_with_keys_binds_any_address_without_a_warning(tmp_path, processes):
    config = {**MOCK, "auth": {"keys": [{"name": "k", "key": TEAM_A}]}}
    process = serve_process(processes, tmp_path, config, "--host", "0.0.0.0")
    port, lines = until_running(process)
    assert not any("without client keys" in line for line in lines)
    url = f"http://127.0.0.1:{port}{CHAT}"
    body = {"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(url, json=body, timeout=10).status_code == 401
    assert httpx.post(url, json=body, headers=bearer(TEAM_A), timeout=10).status_code == 200


def test_serve_without_keys_on_loopback_starts_quietly(tmp_path, processes):
    process = serve_process(processes, tmp_path, MOCK, "--host", "127.0.0.1")
    _, lines = until_running(process)
    assert not any("without client keys" in line for line in lines)


def test_check_notes_a_config_serve_would_refuse(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({**MOCK, "server": {"host": "0.0.0.0"}}))
    result = subprocess.run(
        [*GATEWAY, "check", "--config", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "would say: error: refusing to serve on 0.0.0.0 without client keys" in result.stdout
