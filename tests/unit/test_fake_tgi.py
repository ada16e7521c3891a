"""The fake TGI (tests/fakes/tgi_upstream.py) speaks TGI's wire format and refuses what TGI does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import spec
from tests.fakes.tgi_upstream import FakeTGI
from tests.fakes.upstream import Reply, ToolCall

BODY: dict[str, Any] = {"model": "tgi", "messages": [{"role": "user", "content": "Say hi"}]}


@pytest.fixture
def fake() -> Iterator[FakeTGI]:
    with FakeTGI() as server:
        yield server
        if server.validate_requests:
            server.check_requests()


def post(fake: FakeTGI, body: Any, **options: Any) -> httpx.Response:
    return httpx.post(fake.base_url + "/v1/chat/completions", json=body, timeout=5, **options)


def test_health_info_and_unknown_paths(fake: FakeTGI):
    health = httpx.get(fake.base_url + "/health", timeout=5)
    info = httpx.get(fake.base_url + "/info", timeout=5)
    missing = httpx.get(fake.base_url + "/v1/models", timeout=5)

    assert (health.status_code, health.content) == (200, b"")
    assert info.json()["model_id"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert (missing.status_code, missing.content) == (404, b"")


def test_an_unhealthy_server_answers_503(fake: FakeTGI):
    fake.script(Reply.error(503, "unhealthy", type="healthcheck"), path="/health")

    reply = httpx.get(fake.base_url + "/health", timeout=5)

    assert reply.status_code == 503
    assert reply.json() == {"error": "unhealthy", "error_type": "healthcheck"}


def test_a_completion_in_tgis_shape(fake: FakeTGI):
    fake.script(Reply(), Reply.tools(ToolCall("f", '{"a": 1}')))

    text = post(fake, BODY).json()
    tool = post(fake, BODY).json()

    assert text["id"] == ""
    assert text["choices"][0]["message"] == {"role": "assistant", "content": DEFAULT}
    call = tool["choices"][0]["message"]["tool_calls"][0]
    assert call == {
        "id": "0",
        "type": "function",
        "function": {"description": None, "name": "f", "arguments": {"a": 1}},
    }
    assert tool["choices"][0]["finish_reason"] == "stop"


DEFAULT = "Hello! How can I help you today?"


def test_a_stream_is_openai_chunks_then_usage_then_done(fake: FakeTGI):
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}

    with httpx.stream("POST", fake.base_url + "/v1/chat/completions", json=body) as reply:
        data = reply.read().decode()

    events = spec.sse_data(data)
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["choices"][0]["delta"]["role"] == "assistant" for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 2


def test_the_api_key_is_a_bearer_token():
    with FakeTGI(api_key="hf-key") as fake:
        assert post(fake, BODY).status_code == 401
        assert post(fake, BODY, headers={"authorization": "Bearer hf-key"}).status_code == 200


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        pytest.param({"max_completion_tokens": 5}, "not a field", id="unknown-field"),
        pytest.param({"stop": "END"}, "expected a sequence", id="stop-string"),
        pytest.param({"stop": ["a", "b", "c", "d", "e"]}, "up to 4 stop", id="stop-count"),
        pytest.param({"logit_bias": {"1": 2}}, "logit_bias", id="logit-bias"),
        pytest.param({"n": 2}, "`n` is unused", id="n"),
        pytest.param({"top_p": 1.0}, "`top_p` must be", id="top-p"),
        pytest.param({"temperature": -1}, "`temperature`", id="temperature"),
        pytest.param({"top_logprobs": 6}, "`top_n_tokens`", id="top-logprobs"),
        pytest.param({"max_tokens": 0}, "strictly positive", id="max-tokens-zero"),
        pytest.param({"max_tokens": 5000}, "must be <= 4096", id="max-total-tokens"),
        pytest.param({"response_format": {"type": "json_object"}}, "`value`", id="json-no-value"),
        pytest.param(
            {"response_format": {"type": "json", "value": {}}, "tools": [{"type": "function"}]},
            "mutually exclusive",
            id="grammar-and-tools",
        ),
        pytest.param({"tool_choice": "any"}, "did not match", id="tool-choice"),
        pytest.param({"messages": []}, "non-empty", id="no-messages"),
        pytest.param(
            {"messages": [{"role": "developer", "content": "x"}]}, "role", id="developer-role"
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "unknown variant",
            id="audio-part",
        ),
    ],
)
def test_the_fake_refuses_what_tgi_refuses(fake: FakeTGI, fields, fragment):
    fake.validate_requests = False

    reply = post(fake, {**BODY, **fields})

    assert reply.status_code == 422
    assert reply.json()["error_type"] in ("validation", "tool_error")
    assert fragment in reply.json()["error"]
    assert fake.chat_requests[-1].problems


def test_errors_render_tgis_shape(fake: FakeTGI):
    fake.script(Reply.error(424), Reply.error(429))

    generation, overloaded = post(fake, BODY), post(fake, BODY)

    assert generation.status_code == 424
    assert generation.json() == {
        "error": "Request failed during generation",
        "error_type": "generation",
    }
    assert overloaded.json()["error_type"] == "overloaded"
