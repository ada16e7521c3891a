"""What only the Ollama provider does, end to end: the official OpenAI SDK -> gateway -> fake
Ollama. Tool call ids made up for an Ollama that sends none and the tool result sent back by
name, images by URL refused before Ollama is asked, and an error line mid-stream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests import spec
from tests.conftest import StartGateway
from tests.fakes.ollama_upstream import FakeOllama, Reply, ToolCall, error_line
from tests.integration.conftest import CHAT, MakeSDK, error_of, scripted_stream

MODEL = "local-llama"
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake
        if fake.validate_requests:
            fake.check_requests()


def config(fake: FakeOllama) -> dict[str, Any]:
    return {
        "upstreams": {"ollama": {"provider": "ollama", "base_url": fake.base_url}},
        "models": {MODEL: [{"upstream": "ollama", "model": "llama3.2:latest"}]},
    }


def test_a_streamed_tool_call_round_trips_by_made_up_id_and_tool_name(
    ollama: FakeOllama, gateway_server: StartGateway, sdk: MakeSDK
):
    ollama.script(Reply.tools(ToolCall("get_weather", '{"city": "Paris"}')), Reply(content="Sunny"))
    client = sdk(gateway_server(config(ollama)))
    question: Any = [{"role": "user", "content": "Weather in Paris?"}]

    with client.chat.completions.stream(model=MODEL, messages=question, tools=TOOLS) as stream:
        final = stream.get_final_completion()

    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[
            *question,
            choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24°C"},
        ],
        tools=TOOLS,
    )
    assert answer.choices[0].message.content == "Sunny"
    sent = ollama.chat_requests[1].json["messages"]
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert sent[2] == {"role": "tool", "content": "Sunny, 24°C", "tool_name": "get_weather"}


def test_an_image_by_url_is_refused_before_ollama_is_asked(
    ollama: FakeOllama, gateway_server: StartGateway, http: Any
):
    gateway = gateway_server(config(ollama))
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]

    response = http.post(
        gateway.url + CHAT,
        json={"model": MODEL, "messages": [{"role": "user", "content": content}]},
    )

    error = error_of(response, 400)
    assert error["param"] == "messages[0].content[1]"
    assert ollama.chat_requests == []


def test_an_error_line_mid_stream_ends_the_stream_with_an_error_event(
    gateway_server: StartGateway, http: Any
):
    first = {"model": "llama3.2", "message": {"role": "assistant", "content": "Hi"}, "done": False}
    with scripted_stream() as (upstream, url):
        # Each part is a read of its own: the error comes after the client got its first chunk.
        upstream.script(
            json.dumps(first).encode() + b"\n", error_line("the model runner has crashed")
        )
        fake_config = {
            "upstreams": {"ollama": {"provider": "ollama", "base_url": url.removesuffix("/v1")}},
            "models": {MODEL: [{"upstream": "ollama", "model": "llama3.2:latest"}]},
        }
        gateway = gateway_server(fake_config)

        response = http.post(
            gateway.url + CHAT,
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True},
        )

    assert response.status_code == 200
    events = spec.validate_stream(response.text, expect_done=False)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[1]["choices"][0]["delta"]["content"] == "Hi"
    assert "runner has crashed" in events[-1]["error"]["message"]
