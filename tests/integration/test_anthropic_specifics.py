"""What only the Anthropic provider does, end to end: the official OpenAI SDK -> gateway -> fake.

The cross-provider suite covers the common cases; these cover Anthropic's own: system prompts and
merged turns on the wire, cache tokens in usage, JSON mode as a forced tool, the 529 overload,
an `error` event mid-stream, and temperature above Anthropic's range.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import GatewayServer, StartGateway
from tests.fakes.anthropic_upstream import (
    OVERLOADED_STATUS,
    FakeAnthropic,
    Reply,
    ToolCall,
    error_event,
)
from tests.integration.conftest import MakeSDK

KEY = "sk-ant-integration-0123456789"
MODEL = "claude"


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=KEY) as fake:
        yield fake
        fake.check_requests()


@pytest.fixture
def gateway(gateway_server: StartGateway, fake_anthropic: FakeAnthropic) -> GatewayServer:
    return gateway_server(
        {
            "upstreams": {
                "claude": {
                    "provider": "anthropic",
                    "base_url": fake_anthropic.base_url,
                    "api_key": KEY,
                }
            },
            "models": {MODEL: [{"upstream": "claude", "model": "claude-sonnet-4-5"}]},
        }
    )


def test_system_prompts_and_merged_turns_reach_anthropic(
    gateway: GatewayServer, fake_anthropic: FakeAnthropic, sdk: MakeSDK
):
    fake_anthropic.script(
        Reply(
            content="Bonjour",
            usage={"prompt_tokens": 30, "cached_tokens": 20, "completion_tokens": 1},
        )
    )
    messages: Any = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello"},
        {"role": "user", "content": "there"},
    ]

    completion = sdk(gateway).chat.completions.create(model=MODEL, messages=messages, max_tokens=64)

    [record] = fake_anthropic.chat_requests
    assert record.headers["x-api-key"] == KEY
    assert record.headers["anthropic-version"] == "2023-06-01"
    assert record.json["system"] == [{"type": "text", "text": "Answer in French."}]
    assert record.json["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}],
        }
    ]
    assert record.json["max_tokens"] == 64
    assert completion.choices[0].message.content == "Bonjour"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 30
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 20


def test_streamed_tool_calls_end_with_tool_calls_and_usage(
    gateway: GatewayServer, fake_anthropic: FakeAnthropic, sdk: MakeSDK
):
    fake_anthropic.script(
        Reply.tools(
            ToolCall("get_weather", '{"city": "Paris"}'), ToolCall("get_time", '{"tz": "CET"}')
        )
    )
    tools: Any = [
        {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
        for name in ("get_weather", "get_time")
    ]

    with sdk(gateway).chat.completions.stream(
        model=MODEL,
        messages=[{"role": "user", "content": "weather and time?"}],
        tools=tools,
        stream_options={"include_usage": True},
    ) as stream:
        final = stream.get_final_completion()

    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"tz": "CET"}),
    ]
    assert final.usage is not None
    assert final.usage.completion_tokens > 0


def test_json_schema_answers_come_back_as_content(
    gateway: GatewayServer, fake_anthropic: FakeAnthropic, sdk: MakeSDK
):
    fake_anthropic.script(Reply.tools(ToolCall("json_response", '{"city": "Oslo"}')))
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    response_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "place", "schema": schema},
    }

    completion = sdk(gateway).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "a capital"}],
        response_format=response_format,
    )

    assert json.loads(completion.choices[0].message.content or "") == {"city": "Oslo"}
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.tool_calls is None
    assert fake_anthropic.chat_requests[0].json["tool_choice"]["name"] == "json_response"


def test_overloaded_is_a_503(gateway: GatewayServer, fake_anthropic: FakeAnthropic, sdk: MakeSDK):
    fake_anthropic.script(Reply.error(OVERLOADED_STATUS))

    with pytest.raises(openai.APIStatusError) as caught:
        sdk(gateway).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )

    assert caught.value.status_code == 503


def test_an_error_event_in_the_stream_reaches_the_client_as_an_error(
    gateway: GatewayServer, fake_anthropic: FakeAnthropic, sdk: MakeSDK
):
    start = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1",'
        b'"type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],'
        b'"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
    )
    fake_anthropic.script(Reply.raw(start + error_event(), content_type="text/event-stream"))

    # The event arrives with message_start in one read, so the gateway may still answer with
    # a status (before its first byte) rather than an error event: either way the SDK raises.
    def consume() -> None:
        stream = sdk(gateway).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        list(stream)

    with pytest.raises(openai.APIError, match="Overloaded"):
        consume()


def test_temperature_above_one_is_refused_before_anthropic(
    gateway: GatewayServer, fake_anthropic: FakeAnthropic, sdk: MakeSDK
):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=1.5
        )

    assert caught.value.param == "temperature"
    assert fake_anthropic.chat_requests == []
