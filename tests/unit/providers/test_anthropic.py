"""gateway/providers/anthropic.py (and anthropic_requests.py, anthropic_responses.py): OpenAI
requests out as Messages requests, Messages (and their streams) back.

Every request built here is also held to the fake Anthropic's rules (what the real API refuses),
and every completion and chunk to OpenAI's schemas.
"""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
import pytest

from gateway.config import Secret, Target, UpstreamConfig
from gateway.errors import (
    InvalidRequest,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
    UpstreamRejected,
)
from gateway.openai_types import ChatRequest
from gateway.providers import TRANSLATORS
from gateway.providers.anthropic import ANTHROPIC, RESPONSE_TOOL
from gateway.providers.anthropic_requests import OPENING
from gateway.providers.anthropic_responses import AnthropicStreamDecoder
from gateway.providers.base import UpstreamRequest
from gateway.request_parser import parse_chat_request
from tests import spec
from tests.fakes.anthropic_upstream import (
    RecordedRequest,
    Reply,
    ToolCall,
    build_events,
    build_message,
    error_event,
    request_problems,
)

KEY = "sk-ant-upstream-0123456789abcdef"
TARGET = Target(upstream="claude", model="claude-sonnet-4-5")
UPSTREAM = UpstreamConfig(
    provider="anthropic",
    base_url="https://api.anthropic.com/",
    api_key=Secret(KEY),
    default_max_tokens=1000,
    max_tokens={"claude-haiku-4-5": 333},
)
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kg"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def chat(messages: list[dict[str, Any]] | None = None, **fields: Any) -> ChatRequest:
    body: dict[str, Any] = {
        "model": "public-model",
        "messages": messages or [{"role": "user", "content": "hi"}],
        **fields,
    }
    return parse_chat_request(json.dumps(body).encode(), request_id="abc", created=1700000000)


def calling(arguments: str = "{}") -> dict[str, Any]:
    """An assistant message that calls function `f` once, with call id `c`."""
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    return {"role": "assistant", "tool_calls": [call]}


def problems_of(outgoing: UpstreamRequest) -> list[str]:
    """What the real API (as the fake knows it) would refuse in `outgoing`."""
    assert outgoing.body is not None
    record = RecordedRequest(
        method=outgoing.method,
        path=outgoing.url.split("api.anthropic.com", 1)[-1],
        query="",
        headers=dict(outgoing.headers),
        body=outgoing.body,
        json=json.loads(outgoing.body),
        request_id="req_test",
        received_at=time.monotonic(),
    )
    return request_problems(record)


def sent(request: ChatRequest, upstream: UpstreamConfig = UPSTREAM) -> dict[str, Any]:
    outgoing = ANTHROPIC.build_request(request, TARGET, upstream)
    assert problems_of(outgoing) == []
    assert outgoing.body is not None
    body: dict[str, Any] = orjson.loads(outgoing.body)
    return body


def refused(request: ChatRequest, upstream: UpstreamConfig = UPSTREAM) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        ANTHROPIC.build_request(request, TARGET, upstream)
    assert caught.value.status == 400
    return caught.value


# ---------------------------------------------------------------- the request line


def test_the_provider_kind_maps_to_this_translator():
    assert TRANSLATORS["anthropic"] is ANTHROPIC


def test_build_request_posts_to_messages_with_key_and_version():
    outgoing = ANTHROPIC.build_request(chat(), TARGET, UPSTREAM)

    assert outgoing.method == "POST"
    assert outgoing.url == "https://api.anthropic.com/v1/messages"
    assert outgoing.headers["x-api-key"] == KEY
    assert outgoing.headers["anthropic-version"] == "2023-06-01"
    assert outgoing.headers["content-type"] == "application/json"
    assert outgoing.headers["accept"] == "application/json"
    assert "authorization" not in outgoing.headers
    assert KEY not in repr(outgoing)
    assert ANTHROPIC.request_id_header == "request-id"


def test_a_base_url_ending_in_v1_is_not_doubled():
    upstream = UpstreamConfig(provider="anthropic", base_url="https://proxy.example/v1")

    assert ANTHROPIC.build_request(chat(), TARGET, upstream).url == (
        "https://proxy.example/v1/messages"
    )


def test_config_headers_may_set_the_version_but_not_the_gateways_own():
    upstream = UpstreamConfig(
        provider="anthropic",
        base_url="https://api.anthropic.com",
        api_key=Secret(KEY),
        headers={"Anthropic-Version": "2099-01-01", "anthropic-beta": "x", "Accept": "text/x"},
    )

    headers = ANTHROPIC.build_request(chat(), TARGET, upstream).headers

    assert headers["anthropic-version"] == "2099-01-01"
    assert headers["anthropic-beta"] == "x"
    assert headers["accept"] == "application/json"
    assert "Anthropic-Version" not in headers


def test_client_headers_are_never_forwarded_and_a_keyless_upstream_sends_no_key():
    request = parse_chat_request(
        json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode(),
        {"authorization": "Bearer client", "openai-organization": "org", "x-trace": "t"},
    )
    keyless = UpstreamConfig(provider="anthropic", base_url="https://api.anthropic.com")

    headers = ANTHROPIC.build_request(request, TARGET, keyless).headers

    assert set(headers) == {"anthropic-version", "accept", "user-agent", "content-type"}


def test_the_body_has_the_target_model_and_only_anthropic_fields():
    body = sent(chat(temperature=0.3, top_p=0.9, store=True, metadata={"k": "v"}))

    assert body == {
        "model": "claude-sonnet-4-5",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 1000,
        "temperature": 0.3,
        "top_p": 0.9,
    }


def test_a_stream_asks_for_sse():
    outgoing = ANTHROPIC.build_request(chat(stream=True), TARGET, UPSTREAM)

    assert orjson.loads(outgoing.body or b"")["stream"] is True
    assert outgoing.headers["accept"] == "text/event-stream"


@pytest.mark.parametrize(
    ("fields", "model", "expected"),
    [
        pytest.param({"max_completion_tokens": 50, "max_tokens": 70}, TARGET.model, 50, id="mct"),
        pytest.param({"max_tokens": 70}, TARGET.model, 70, id="max_tokens"),
        pytest.param({}, "claude-haiku-4-5", 333, id="per-model"),
        pytest.param({}, TARGET.model, 1000, id="default"),
    ],
)
def test_max_tokens_comes_from_the_request_or_the_config(fields, model, expected):
    outgoing = ANTHROPIC.build_request(chat(**fields), Target(upstream="u", model=model), UPSTREAM)

    assert orjson.loads(outgoing.body or b"")["max_tokens"] == expected


@pytest.mark.parametrize(
    ("stop", "expected"), [("END", ["END"]), (["a", "b"], ["a", "b"]), ([], None)]
)
def test_stop_becomes_stop_sequences(stop, expected):
    assert sent(chat(stop=stop)).get("stop_sequences") == expected


def test_user_becomes_metadata_user_id():
    assert sent(chat(user="user-42"))["metadata"] == {"user_id": "user-42"}
    assert sent(chat(safety_identifier="hash-1"))["metadata"] == {"user_id": "hash-1"}


# ---------------------------------------------------------------- unsupported parameters


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        pytest.param({"temperature": 1.5}, "temperature", id="temperature-above-1"),
        pytest.param({"n": 2}, "n", id="n"),
        pytest.param({"logprobs": True}, "logprobs", id="logprobs"),
        pytest.param({"top_logprobs": 2}, "top_logprobs", id="top_logprobs"),
        pytest.param({"logit_bias": {"50256": -100}}, "logit_bias", id="logit_bias"),
        pytest.param({"presence_penalty": 0.5}, "presence_penalty", id="presence"),
        pytest.param({"frequency_penalty": -1}, "frequency_penalty", id="frequency"),
        pytest.param({"seed": 7}, "seed", id="seed"),
        pytest.param({"modalities": ["text", "audio"]}, "modalities", id="modalities"),
        pytest.param({"audio": {"voice": "alloy", "format": "wav"}}, "audio", id="audio"),
        pytest.param({"prediction": {"type": "content", "content": "x"}}, "prediction", id="pred"),
        pytest.param({"reasoning_effort": "low"}, "reasoning_effort", id="reasoning"),
        pytest.param({"thinking": {"type": "enabled"}}, "thinking", id="unknown-field"),
    ],
)
def test_what_anthropic_cannot_honour_is_refused_or_dropped(fields, param):
    error = refused(chat(**fields))
    assert error.param == param
    assert "anthropic" in error.message
    assert error.code == "unsupported_parameter"

    dropping = UpstreamConfig(
        provider="anthropic", base_url="https://api.anthropic.com", drop_unsupported=True
    )
    outgoing = ANTHROPIC.build_request(chat(**fields), TARGET, dropping)
    assert param not in orjson.loads(outgoing.body or b"")


@pytest.mark.parametrize(
    "fields",
    [
        {"n": 1},
        {"logprobs": False},
        {"presence_penalty": 0, "frequency_penalty": 0},
        {"modalities": ["text"]},
        {"temperature": 1},
        {"logit_bias": {}},
        {"parallel_tool_calls": True},
        {"service_tier": "auto", "prompt_cache_key": "k"},
    ],
)
def test_harmless_values_pass(fields):
    sent(chat(**fields))


def test_drop_params_apply_before_translation():
    upstream = UpstreamConfig(
        provider="anthropic", base_url="https://api.anthropic.com", drop_params=("seed",)
    )

    assert "seed" not in orjson.loads(
        ANTHROPIC.build_request(chat(seed=1), TARGET, upstream).body or b""
    )


# ---------------------------------------------------------------- messages


def test_system_and_developer_messages_become_the_system_blocks():
    body = sent(
        chat(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                {"role": "user", "content": "hi"},
                {"role": "system", "content": "Late rule."},
            ]
        )
    )

    assert body["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Use French."},
        {"type": "text", "text": "Late rule."},
    ]
    assert [m["role"] for m in body["messages"]] == ["user"]


def test_consecutive_same_role_messages_merge_into_one_turn():
    body = sent(
        chat(
            [
                {"role": "user", "content": "one"},
                {"role": "user", "content": [{"type": "text", "text": "two"}]},
                {"role": "assistant", "content": "three"},
                {"role": "assistant", "content": "four"},
                {"role": "user", "content": "five"},
            ]
        )
    )

    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}],
        },
        {"role": "user", "content": [{"type": "text", "text": "five"}]},
    ]


def test_a_conversation_opening_with_the_assistant_gets_a_user_turn_first():
    body = sent(
        chat(
            [
                {"role": "system", "content": "s"},
                {"role": "assistant", "content": "How can I help?"},
                {"role": "user", "content": "hi"},
            ]
        )
    )

    assert body["messages"][0] == {"role": "user", "content": [{"type": "text", "text": OPENING}]}
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]


def test_empty_text_is_left_out_and_a_final_prefill_loses_trailing_space():
    body = sent(
        chat(
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": ""},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": " "}, {"type": "text", "text": "x"}],
                },
                {"role": "assistant", "content": "The answer is "},
            ]
        )
    )

    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "x"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "The answer is"}]},
    ]


def test_only_system_messages_are_refused():
    assert refused(chat([{"role": "system", "content": "s"}])).param == "messages"


def test_tool_calls_and_results_become_tool_use_and_tool_result_blocks():
    body = sent(
        chat(
            [
                {"role": "user", "content": "weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": "Let me check.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        },
                        {
                            "id": "call.2",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {
                    "role": "tool",
                    "tool_call_id": "call.2",
                    "content": [{"type": "text", "text": "rain"}],
                },
                {"role": "user", "content": "thanks"},
            ],
            tools=[WEATHER_TOOL],
        )
    )

    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}},
        ],
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "call_1",
                "content": [{"type": "text", "text": "sunny"}],
            },
            {
                "type": "tool_result",
                "tool_use_id": "call_2",
                "content": [{"type": "text", "text": "rain"}],
            },
            {"type": "text", "text": "thanks"},
        ],
    }
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]


def test_an_empty_tool_result_has_no_content():
    body = sent(
        chat(
            [
                {"role": "user", "content": "go"},
                calling(),
                {"role": "tool", "tool_call_id": "c", "content": ""},
            ]
        )
    )

    assert body["messages"][-1] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "c"}],
    }


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        pytest.param(
            [
                {"role": "user", "content": "go"},
                {"role": "tool", "tool_call_id": "nope", "content": "x"},
            ],
            "messages[1].tool_call_id",
            id="result-without-call",
        ),
        pytest.param(
            [
                {"role": "user", "content": "go"},
                calling(),
                {"role": "user", "content": "never mind"},
            ],
            "messages[1].tool_calls",
            id="call-without-result",
        ),
        pytest.param(
            [
                {"role": "user", "content": "go"},
                calling(),
            ],
            "messages[1].tool_calls",
            id="call-at-the-end",
        ),
        pytest.param(
            [
                {"role": "user", "content": "go"},
                calling("[1]"),
                {"role": "tool", "tool_call_id": "c", "content": "x"},
            ],
            "messages[1].tool_calls[0].function.arguments",
            id="arguments-not-an-object",
        ),
        pytest.param(
            [{"role": "function", "name": "f", "content": "x"}],
            "messages[0].role",
            id="function-role",
        ),
        pytest.param(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}
                    ],
                }
            ],
            "messages[0].content[0]",
            id="audio",
        ),
        pytest.param(
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}],
            "messages[0].content[0].image_url.url",
            id="image-scheme",
        ),
        pytest.param(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AAAA"}}
                    ],
                }
            ],
            "messages[0].content[0].image_url.url",
            id="image-type",
        ),
        pytest.param(
            [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}],
            "messages[0].content[0].file",
            id="file-id",
        ),
    ],
)
def test_histories_anthropic_cannot_take_are_refused_naming_the_message(messages, param):
    assert refused(chat(messages)).param == param


def test_images_become_base64_or_url_sources():
    body = sent(
        chat(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "compare"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"},
                        },
                        {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,AAAA"}},
                    ],
                }
            ]
        )
    )

    assert body["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}},
    ]


def test_a_pdf_file_becomes_a_document_block():
    part = {
        "type": "file",
        "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"},
    }

    body = sent(chat([{"role": "user", "content": [part, {"type": "text", "text": "summarise"}]}]))

    assert body["messages"][0]["content"][0] == {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
    }


# ---------------------------------------------------------------- tools and JSON mode


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        pytest.param(None, None, None, id="default-auto"),
        pytest.param("auto", False, {"type": "auto", "disable_parallel_tool_use": True}, id="auto"),
        pytest.param("none", None, {"type": "none"}, id="none"),
        pytest.param("none", False, {"type": "none"}, id="none-parallel"),
        pytest.param("required", None, {"type": "any"}, id="required"),
        pytest.param(
            {"type": "function", "function": {"name": "get_weather"}},
            False,
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
            id="named",
        ),
    ],
)
def test_tool_choice_and_parallel_tool_calls_map(choice, parallel, expected):
    fields: dict[str, Any] = {"tools": [WEATHER_TOOL]}
    if choice is not None:
        fields["tool_choice"] = choice
    if parallel is not None:
        fields["parallel_tool_calls"] = parallel

    assert sent(chat(**fields)).get("tool_choice") == expected


def test_tool_choice_without_tools_is_not_sent():
    assert "tool_choice" not in sent(chat(tool_choice="auto"))


def test_a_tool_without_parameters_gets_an_empty_object_schema():
    tool = {"type": "function", "function": {"name": "now", "strict": True}}

    assert sent(chat(tools=[tool]))["tools"] == [
        {"name": "now", "input_schema": {"type": "object", "properties": {}}}
    ]


def test_non_function_tools_are_refused():
    tool = {"type": "custom", "custom": {"name": "x"}}

    assert refused(chat(tools=[tool])).param == "tools[0].type"


SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}


def test_json_schema_is_a_forced_response_tool():
    body = sent(
        chat(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "place", "schema": SCHEMA, "strict": True},
            }
        )
    )

    [tool] = body["tools"]
    assert tool["name"] == RESPONSE_TOOL
    assert tool["input_schema"] == SCHEMA
    assert body["tool_choice"] == {
        "type": "tool",
        "name": RESPONSE_TOOL,
        "disable_parallel_tool_use": True,
    }


def test_json_object_is_a_forced_tool_with_an_open_schema():
    body = sent(chat(response_format={"type": "json_object"}))

    assert body["tools"][0]["input_schema"] == {"type": "object", "properties": {}}
    assert body["tool_choice"]["name"] == RESPONSE_TOOL


def test_json_mode_with_client_tools_lets_the_model_pick_a_tool_or_answer():
    colliding = {"type": "function", "function": {"name": RESPONSE_TOOL}}

    body = sent(chat(tools=[WEATHER_TOOL, colliding], response_format={"type": "json_object"}))

    assert [t["name"] for t in body["tools"]] == ["get_weather", RESPONSE_TOOL, RESPONSE_TOOL + "_"]
    assert body["tool_choice"] == {"type": "any"}


def test_text_response_format_changes_nothing():
    assert "tools" not in sent(chat(response_format={"type": "text"}))


def test_a_non_object_response_schema_is_refused():
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "n", "schema": {"type": "array"}},
    }

    assert refused(chat(response_format=response_format)).param == (
        "response_format.json_schema.schema"
    )


# ---------------------------------------------------------------- completions


def message(**fields: Any) -> bytes:
    body = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5},
        **fields,
    }
    return orjson.dumps(body)


def parse(body: bytes, request: ChatRequest | None = None) -> dict[str, Any]:
    completion: dict[str, Any] = ANTHROPIC.parse_response(body, request or chat(), "claude")  # type: ignore[assignment]
    spec.validate("CreateChatCompletionResponse", completion)
    return completion


def test_a_message_becomes_a_chat_completion():
    completion = parse(message())

    assert completion == {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "claude-sonnet-4-5-20250929",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def test_tool_use_blocks_become_tool_calls_with_json_string_arguments():
    content = [
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
    ]

    choice = parse(message(content=content, stop_reason="tool_use"))["choices"][0]

    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking."
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        },
        {"id": "toolu_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
    ]


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("refusal", "content_filter"),
        ("tool_use", "stop"),  # no client calls in the answer
        ("something_new", "stop"),
    ],
)
def test_stop_reasons_map_to_finish_reasons(stop_reason, finish):
    assert parse(message(stop_reason=stop_reason))["choices"][0]["finish_reason"] == finish


def test_usage_counts_cache_tokens_in_the_prompt():
    usage = {
        "input_tokens": 10,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20,
        "output_tokens": 5,
    }

    assert parse(message(usage=usage))["usage"] == {
        "prompt_tokens": 130,
        "completion_tokens": 5,
        "total_tokens": 135,
        "prompt_tokens_details": {"cached_tokens": 100},
    }


def test_the_response_tools_input_is_the_json_content():
    request = chat(
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}
    )
    content = [
        {"type": "tool_use", "id": "toolu_1", "name": RESPONSE_TOOL, "input": {"city": "Oslo"}}
    ]

    choice = parse(message(content=content, stop_reason="tool_use"), request)["choices"][0]

    assert choice["message"] == {"role": "assistant", "content": '{"city":"Oslo"}', "refusal": None}
    assert choice["finish_reason"] == "stop"


def test_a_message_without_text_has_null_content():
    assert parse(message(content=[]))["choices"][0]["message"]["content"] is None


@pytest.mark.parametrize(
    "body",
    [
        b"<html>oops</html>",
        b"[]",
        orjson.dumps({"type": "error", "error": {"type": "api_error", "message": "x"}}),
        message(content=[{"type": "tool_use", "name": "f", "input": {}}]),
        message(content=["text"]),
    ],
)
def test_bodies_that_are_not_messages_are_upstream_errors(body):
    with pytest.raises(UpstreamError):
        ANTHROPIC.parse_response(body, chat(), "claude")


def test_the_fakes_message_parses_to_the_scripted_answer():
    reply = Reply.tools(ToolCall("get_weather", '{"city": "Paris"}', id="toolu_9"), content="Sure.")
    request_json = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "one two"}],
    }

    choice = parse(json.dumps(build_message(request_json, reply)).encode())["choices"][0]

    assert choice["message"]["content"] == "Sure."
    assert choice["message"]["tool_calls"][0]["id"] == "toolu_9"
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {
        "city": "Paris"
    }
    assert choice["finish_reason"] == "tool_calls"


# ---------------------------------------------------------------- errors


def error_body(kind: str, message: str) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"}
    )


@pytest.mark.parametrize(
    ("status", "kind", "client_status", "error_class"),
    [
        (400, "invalid_request_error", 400, UpstreamRejected),
        (401, "authentication_error", 502, UpstreamError),
        (403, "permission_error", 502, UpstreamError),
        (404, "not_found_error", 404, UpstreamRejected),
        (413, "request_too_large", 413, UpstreamRejected),
        (429, "rate_limit_error", 429, RateLimited),
        (500, "api_error", 502, UpstreamError),
        (529, "overloaded_error", 503, UpstreamError),
    ],
)
def test_error_types_map_to_statuses(status, kind, client_status, error_class):
    error = ANTHROPIC.parse_error(
        status, {"retry-after": "3"}, error_body(kind, f"boom {KEY}"), "claude", (KEY,)
    )

    assert type(error) is error_class
    assert error.status == client_status
    assert KEY not in error.message
    if status == 400:
        assert error.type == "invalid_request_error"
        assert "boom" in error.message
    if status == 429:
        assert error.headers == {"retry-after": "3"}
    if status == 529:
        assert error.fallback
        assert error.code == "upstream_overloaded"


# ---------------------------------------------------------------- streams


def stream_request(**fields: Any) -> ChatRequest:
    return chat(stream=True, **fields)


def decode(
    events: list[bytes], request: ChatRequest, *, step: int | None = None
) -> tuple[list[dict[str, Any]], AnthropicStreamDecoder]:
    decoder = ANTHROPIC.stream_decoder(request, "claude", (KEY,))
    data = b"".join(events)
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    chunks: list[dict[str, Any]] = []
    for piece in pieces:
        chunks.extend(decoder.feed(piece))  # type: ignore[arg-type]
    chunks.extend(decoder.close())  # type: ignore[arg-type]
    for chunk in chunks:
        spec.validate("CreateChatCompletionStreamResponse", chunk)
    return chunks, decoder


def anthropic_json(request: ChatRequest) -> dict[str, Any]:
    outgoing = ANTHROPIC.build_request(request, TARGET, UPSTREAM)
    body: dict[str, Any] = orjson.loads(outgoing.body or b"")
    return body


def test_a_text_stream_becomes_role_then_content_then_finish():
    request = stream_request()
    events = build_events(anthropic_json(request), Reply(content="Hello there friend"))

    chunks, decoder = decode(events, request)

    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]] == [
        "Hello",
        " there",
        " friend",
    ]
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert all("usage" not in chunk for chunk in chunks)
    assert {c["id"] for c in chunks} == {"chatcmpl-abc"}
    assert {c["model"] for c in chunks} == {"claude-sonnet-4-5"}
    assert decoder.usage == {
        "prompt_tokens": 1,
        "completion_tokens": 3,
        "total_tokens": 4,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_include_usage_adds_a_usage_chunk_and_null_usage_elsewhere():
    request = stream_request(stream_options={"include_usage": True})
    reply = Reply(
        content="Hi", usage={"prompt_tokens": 50, "cached_tokens": 40, "completion_tokens": 2}
    )
    events = build_events(anthropic_json(request), reply)

    chunks, _ = decode(events, request)

    *others, last = chunks
    assert last["choices"] == []
    assert last["usage"] == {
        "prompt_tokens": 50,
        "completion_tokens": 2,
        "total_tokens": 52,
        "prompt_tokens_details": {"cached_tokens": 40},
    }
    assert all(chunk["usage"] is None for chunk in others)
    body = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"
    spec.validate_stream(body)


def test_streamed_tool_calls_are_announced_once_then_get_argument_deltas():
    request = stream_request(tools=[WEATHER_TOOL])
    reply = Reply.tools(
        ToolCall("get_weather", '{"city": "Paris"}', id="toolu_a"),
        ToolCall("now", "{}", id="toolu_b"),
        content="Let me see.",
    )
    events = build_events(anthropic_json(request), reply)

    chunks, _ = decode(events, request)

    [choice] = spec.assemble(chunks)
    assert choice["content"] == "Let me see."
    assert choice["finish_reason"] == "tool_calls"
    assert [
        (c["id"], c["function"]["name"], c["function"]["arguments"]) for c in choice["tool_calls"]
    ] == [
        ("toolu_a", "get_weather", '{"city": "Paris"}'),
        ("toolu_b", "now", "{}"),
    ]
    announcements = [
        call
        for chunk in chunks
        for choice_ in chunk["choices"]
        for call in choice_["delta"].get("tool_calls", [])
        if "id" in call
    ]
    assert announcements == [
        {
            "index": 0,
            "id": "toolu_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        },
        {
            "index": 1,
            "id": "toolu_b",
            "type": "function",
            "function": {"name": "now", "arguments": ""},
        },
    ]


def test_a_tool_call_streamed_without_input_gets_empty_object_arguments():
    request = stream_request()
    events = build_events(anthropic_json(request), Reply.tools(ToolCall("now", [""])))

    chunks, _ = decode(events, request)

    [choice] = spec.assemble(chunks)
    assert choice["tool_calls"][0]["function"]["arguments"] == "{}"


def test_a_streamed_json_answer_is_content():
    request = stream_request(response_format={"type": "json_object"})
    reply = Reply.tools(ToolCall(RESPONSE_TOOL, '{"answer": 42}'))
    events = build_events(anthropic_json(request), reply)

    chunks, _ = decode(events, request)

    [choice] = spec.assemble(chunks)
    assert choice["content"] == '{"answer": 42}'
    assert choice["tool_calls"] == []
    assert choice["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("finish", "expected"),
    [("length", "length"), ("content_filter", "content_filter"), ("stop_sequence", "stop")],
)
def test_stream_finish_reasons(finish, expected):
    request = stream_request()
    events = build_events(anthropic_json(request), Reply(content="a b", finish_reason=finish))

    chunks, _ = decode(events, request)

    assert chunks[-1]["choices"][0]["finish_reason"] == expected


def test_every_split_of_the_bytes_gives_the_same_chunks():
    request = stream_request(tools=[WEATHER_TOOL], stream_options={"include_usage": True})
    reply = Reply.tools(
        ToolCall("get_weather", '{"city": "Zürich ☃"}', id="toolu_z"), content="Grüße ✓"
    )
    events = build_events(anthropic_json(request), reply)
    whole, _ = decode(events, request)
    data = b"".join(events)

    for cut in range(1, len(data)):
        decoder = ANTHROPIC.stream_decoder(request, "claude", ())
        chunks = [*decoder.feed(data[:cut]), *decoder.feed(data[cut:]), *decoder.close()]
        assert chunks == whole, f"split at byte {cut}"
    byte_by_byte, _ = decode(events, request, step=1)
    assert byte_by_byte == whole
    assert spec.assemble(whole)[0]["content"] == "Grüße ✓"


def test_an_error_event_interrupts_the_stream_with_its_type():
    request = stream_request()
    events = build_events(anthropic_json(request), Reply(content="partial answer"))[:4]
    decoder = ANTHROPIC.stream_decoder(request, "claude", (KEY,))
    decoder.feed(b"".join(events))

    with pytest.raises(StreamInterrupted) as caught:
        decoder.feed(error_event("overloaded_error", f"Overloaded {KEY}"))

    assert caught.value.code == "overloaded_error"
    assert KEY not in caught.value.message
    assert "Overloaded" in caught.value.message


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([], id="empty"),
        pytest.param(["message_start"], id="no-message-stop"),
    ],
)
def test_a_stream_without_message_stop_is_interrupted(events):
    request = stream_request()
    all_events = build_events(anthropic_json(request), Reply(content="hi", send_done=False))
    decoder = ANTHROPIC.stream_decoder(request, "claude", ())
    decoder.feed(b"".join(all_events[: len(all_events) if events else 0]))

    with pytest.raises(StreamInterrupted):
        decoder.close()


@pytest.mark.parametrize(
    "data",
    [
        b"event: message_start\ndata: not json\n\n",
        b"event: content_block_start\n"
        b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text"}}\n\n',
        b'data: {"type":"message_start"}\n\n',
    ],
)
def test_bodies_that_are_not_anthropic_streams_are_interrupted(data):
    with pytest.raises(StreamInterrupted):
        ANTHROPIC.stream_decoder(stream_request(), "claude", ()).feed(data)


def test_ping_and_unknown_events_are_skipped():
    request = stream_request()
    events = build_events(anthropic_json(request), Reply(content="ok"))
    extra = b'event: future_event\ndata: {"type":"future_event"}\n\n'

    chunks, _ = decode([events[0], extra, *events[1:]], request)

    assert spec.assemble(chunks)[0]["content"] == "ok"


# ---------------------------------------------------------------- models and health


def test_models_and_health_probe_use_the_models_api():
    probe = ANTHROPIC.health_probe(UPSTREAM)
    listing = ANTHROPIC.models_request(UPSTREAM)

    assert (probe.method, probe.url) == ("GET", "https://api.anthropic.com/v1/models?limit=1")
    assert listing.url == "https://api.anthropic.com/v1/models?limit=1000"
    for outgoing in (probe, listing):
        assert outgoing.headers["x-api-key"] == KEY
        assert outgoing.headers["anthropic-version"] == "2023-06-01"
        assert outgoing.body is None


def test_parse_models_reads_the_ids():
    body = orjson.dumps(
        {
            "data": [
                {
                    "type": "model",
                    "id": "claude-sonnet-4-5",
                    "display_name": "Claude Sonnet 4.5",
                    "created_at": "2025-09-29T00:00:00Z",
                },
                {"type": "model", "id": "claude-haiku-4-5"},
            ],
            "has_more": False,
            "first_id": "claude-sonnet-4-5",
            "last_id": "claude-haiku-4-5",
        }
    )

    assert ANTHROPIC.parse_models(body) == ("claude-sonnet-4-5", "claude-haiku-4-5")
    with pytest.raises(UpstreamError):
        ANTHROPIC.parse_models(b"{}")
    with pytest.raises(UpstreamError):
        ANTHROPIC.parse_models(b"nope")
