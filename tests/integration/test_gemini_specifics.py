"""What only the Gemini provider does, through the real gateway and the official OpenAI SDK:
a Gemini 3 tool-call turn streamed, then sent back with its thought signature (which rides in
the tool call id), and a prompt Gemini blocks arriving as a content_filter answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes.gemini_upstream import SIGNATURE, FakeGemini, Reply, ToolCall

KEY = "AIza-integration-gemini-key-0123"
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "additionalProperties": False,
            },
        },
    }
]


@pytest.fixture
def fake_gemini() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=KEY) as fake:
        yield fake
        fake.check_requests()


def config(fake: FakeGemini, model: str) -> dict[str, Any]:
    return {
        "upstreams": {"g": {"provider": "gemini", "base_url": fake.base_url, "api_key": KEY}},
        "models": {"chat": [{"upstream": "g", "model": model}]},
    }


def test_a_gemini_3_streamed_tool_call_goes_back_with_its_signature(
    fake_gemini, gateway_server, sdk
):
    gateway = gateway_server(config(fake_gemini, "gemini-3-pro-preview"))
    fake_gemini.script(Reply.tools(ToolCall("get_weather", '{"city": "Oslo"}')))
    fake_gemini.script(Reply(content="It is cold."))
    client = sdk(gateway)
    messages: Any = [{"role": "user", "content": "Weather in Oslo?"}]

    with client.chat.completions.stream(model="chat", messages=messages, tools=TOOLS) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    [call] = choice.message.tool_calls or []
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "-5 C"},
    ]
    answer = client.chat.completions.create(model="chat", messages=messages, tools=TOOLS)

    assert choice.finish_reason == "tool_calls"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    assert answer.choices[0].message.content == "It is cold."
    first, second = fake_gemini.chat_requests
    assert first.query == "alt=sse"
    assert "key" not in second.query
    model_turn, result_turn = second.json["contents"][1:]
    assert model_turn["parts"][0]["thoughtSignature"] == SIGNATURE
    assert result_turn["parts"][0]["functionResponse"] == {
        "name": "get_weather",
        "response": {"result": "-5 C"},
    }


def test_a_blocked_prompt_is_a_content_filter_answer(fake_gemini, gateway_server, sdk):
    gateway = gateway_server(config(fake_gemini, "gemini-2.0-flash"))
    blocked = {
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4},
        "modelVersion": "gemini-2.0-flash",
    }
    fake_gemini.script(Reply.raw(json.dumps(blocked), content_type="application/json"))

    answer = sdk(gateway).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "something bad"}]
    )

    assert answer.choices[0].finish_reason == "content_filter"
    assert answer.choices[0].message.content is None
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == 4
