"""The `gateway` command end to end, as a user runs it: real processes, real sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import stop
from tests.spec import validate

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = [sys.executable, "-m", "gateway"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GATEWAY, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_check_accepts_the_shipped_config():
    result = run("check", "--config", str(ROOT / "gateway.yaml"))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    assert "unconfigured: openai" in result.stdout or "OPENAI_API_KEY" in os.environ


def test_check_names_path_and_line_of_every_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "server: {port: eighty}\n"
        "upstreams:\n"
        "  a: {provider: openai, base_url: http://127.0.0.1:1/v1, colour: red}\n"
        "models:\n"
        "  m: [{upstream: nowhere, model: x}]\n"
    )
    result = run("check", "--config", str(bad))
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert f"error: {bad}:1: server.port: Expected `int`, got `str`" in errors
    assert any(
        line.startswith(f"error: {bad}:3: upstreams.a.colour: unknown key") for line in errors
    )
    assert f"error: {bad}:5: models.m[0].upstream: unknown upstream 'nowhere'" in errors


def test_check_reports_a_missing_file(tmp_path):
    result = run("check", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 1
    assert "cannot read config" in result.stderr


def test_check_uses_gateway_config_env(tmp_path):
    config = tmp_path / "env.yaml"
    config.write_text("upstreams: {m: {provider: mock}}\nmodels: {x: [{upstream: m, model: x}]}\n")
    result = run("check", env={"GATEWAY_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    assert str(config) in result.stdout


def test_schema_is_json_schema_describing_the_config():
    result = run("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    config = schema["$defs"]["Config"]
    assert set(config["properties"]) == {"server", "upstreams", "models", "auth", "limits"}
    assert config["additionalProperties"] is False
    assert "base_url" in schema["$defs"]["UpstreamConfig"]["properties"]


def test_usage_error_exits_2():
    assert run("frobnicate").returncode == 2
    assert run().returncode == 2


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`gateway serve` as a real process on a free port, with a mock-only config."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "upstreams:\n  mock: {provider: mock, ttft: 0.01, tokens_per_second: 1000}\n"
        "models:\n  mock-1: [{upstream: mock, model: mock-1}]\n"
    )
    process = subprocess.Popen(
        [*GATEWAY, "serve", "--config", str(config), "--port", "0", "--log-format", "json"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 30
    url = None
    lines = []
    while url is None and time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
        if match:
            url = match.group(1)
    try:
        assert url, "gateway did not start:\n" + "".join(lines)
        yield process, url
    finally:
        stop(process, timeout=30)
        process.stderr.close()


def test_serve_answers_through_the_mock_and_stops_cleanly_on_sigterm(served):
    process, url = served
    with httpx.Client(base_url=url, timeout=10) as client:
        models = client.get("/v1/models").json()
        validate("ListModelsResponse", models)
        assert [m["id"] for m in models["data"]] == ["mock-1"]
        reply = client.post(
            "/v1/chat/completions",
            json={"model": "mock-1", "messages": [{"role": "user", "content": "hi there"}]},
        )
        assert reply.status_code == 200
        validate("CreateChatCompletionResponse", reply.json())
        assert reply.headers["x-gateway-upstream"] == "mock"
        assert reply.headers["x-request-id"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert process.stderr is not None
    log = [json.loads(line) for line in process.stderr.read().splitlines() if line.startswith("{")]
    requests = [entry for entry in log if entry["logger"] == "gateway.request"]
    assert requests[-1]["status"] == 200
    assert requests[-1]["model"] == "mock-1"


def test_serve_refuses_an_invalid_config(tmp_path):
    config = tmp_path / "gateway.yaml"
    config.write_text("upstreams: {a: {provider: nope}}\n")
    result = run("serve", "--config", str(config), "--port", "0")
    assert result.returncode == 1
    assert "upstreams.a.provider" in result.stderr
