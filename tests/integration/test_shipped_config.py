"""The shipped gateway.yaml, as README's two-command quick start serves it: no key anywhere.

Loaded with `parse_config` from an environment without provider keys, so `openai`, `claude`
and `gemini` are unconfigured and the models that list them first fall back to the mock.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GatewayServer
from tests.integration.conftest import CHAT, MakeSDK, chat_body, serve

SHIPPED = Path(__file__).resolve().parents[2] / "gateway.yaml"
HELLO: Any = [{"role": "user", "content": "Hello!"}]
LOOKUP_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}, "verbose": {"type": "boolean"}},
            "required": ["order_id"],
        },
    },
}


@pytest.fixture(scope="module")
def shipped() -> Iterator[GatewayServer]:
    from gateway.config import parse_config

    keys = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY")
    environ = {k: v for k, v in os.environ.items() if k not in keys}
    config = parse_config(SHIPPED.read_text(encoding="utf-8"), str(SHIPPED), environ)
    with serve(config) as gateway:
        yield gateway


@pytest.fixture
def client(shipped: GatewayServer, sdk: MakeSDK) -> openai.OpenAI:
    return sdk(shipped)


def test_shipped_config_lists_its_models(client: openai.OpenAI):
    assert [m.id for m in client.models.list()] == [
        "mock-1",
        "gpt-4o-mini",
        "gpt-4o",
        "claude-sonnet-4-5",
        "gemini-2.5-flash",
        "local",
    ]


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-flash"])
def test_keyless_provider_models_fall_back_to_the_mock(client: openai.OpenAI, model: str):
    raw = client.chat.completions.with_raw_response.create(model=model, messages=HELLO)

    assert raw.headers["x-gateway-upstream"] == "mock"  # claude/gemini unconfigured: skipped
    assert raw.parse().choices[0].message.content


def test_mock_1_plain(client: openai.OpenAI):
    raw = client.chat.completions.with_raw_response.create(model="mock-1", messages=HELLO)
    completion = raw.parse()

    assert raw.headers["x-gateway-upstream"] == "mock"
    [choice] = completion.choices
    assert choice.finish_reason == "stop"
    assert (choice.message.content or "").startswith('You said "Hello!". Mock answer: ')
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0


def test_mock_1_streamed_says_what_it_says_plain(client: openai.OpenAI):
    plain = client.chat.completions.create(model="mock-1", messages=HELLO)
    chunks = list(
        client.chat.completions.create(
            model="mock-1", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )

    *content, usage = chunks
    streamed = "".join(c.choices[0].delta.content or "" for c in content)
    assert streamed == plain.choices[0].message.content
    assert len(content) > 3, "the mock streams word by word"
    assert content[-1].choices[0].finish_reason == "stop"
    assert usage.choices == []
    assert usage.usage is not None
    assert plain.usage is not None
    assert usage.usage.completion_tokens == plain.usage.completion_tokens


def test_mock_calls_the_tool_the_prompt_names(client: openai.OpenAI):
    messages: Any = [{"role": "user", "content": "Please lookup_order for order A-17 Quickly"}]

    plain = client.chat.completions.create(model="mock-1", messages=messages, tools=[LOOKUP_TOOL])
    with client.chat.completions.stream(
        model="mock-1", messages=messages, tools=[LOOKUP_TOOL]
    ) as stream:
        streamed = stream.get_final_completion()

    calls = []
    for completion in (plain, streamed):
        [choice] = completion.choices
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls or []
        assert call.type == "function"
        assert call.function.name == "lookup_order"
        arguments = json.loads(call.function.arguments)
        assert isinstance(arguments["order_id"], str)
        assert arguments["order_id"]
        calls.append((call.id, call.function.arguments))
    assert calls[0] == calls[1], "the mock answers a request the same way, streamed or not"


def test_mock_does_not_call_a_tool_the_prompt_does_not_name(client: openai.OpenAI):
    completion = client.chat.completions.create(model="mock-1", messages=HELLO, tools=[LOOKUP_TOOL])

    [choice] = completion.choices
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls


def test_mock_honours_n_and_max_tokens(client: openai.OpenAI):
    completion = client.chat.completions.create(model="mock-1", messages=HELLO, n=2, max_tokens=3)

    assert [c.index for c in completion.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in completion.choices)
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 6


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4o"])
def test_openai_models_fall_back_to_the_mock_without_a_key(client: openai.OpenAI, model: str):
    raw = client.chat.completions.with_raw_response.create(model=model, messages=HELLO)
    stream = client.chat.completions.with_raw_response.create(
        model=model, messages=HELLO, stream=True
    )
    chunks = list(stream.parse())

    assert raw.headers["x-gateway-upstream"] == "mock"
    assert stream.headers["x-gateway-upstream"] == "mock"
    text = raw.parse().choices[0].message.content
    assert text
    assert text.startswith('You said "Hello!". Mock answer: ')
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text


def test_health_and_readiness(http: httpx.Client, shipped: GatewayServer):
    health = http.get(shipped.url + "/healthz")
    ready = http.get(shipped.url + "/readyz")

    assert health.status_code == 200
    assert ready.status_code == 200
    assert "mock" in ready.json()["upstreams"]
    assert "openai" not in ready.json()["upstreams"]


def test_readme_curl_examples(http: httpx.Client, shipped: GatewayServer):
    plain = http.post(shipped.url + CHAT, json=chat_body("mock-1", "Hello!"))
    streamed = http.post(shipped.url + CHAT, json=chat_body("mock-1", "Hello!", stream=True))

    assert plain.status_code == 200
    assert streamed.status_code == 200
    assert streamed.text.endswith("data: [DONE]\n\n")
