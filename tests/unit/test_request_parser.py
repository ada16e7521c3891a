"""gateway/request_parser.py: parse_chat_request, the one gate untrusted chat bodies pass."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.request_parser import MAX_JSON_DEPTH, MAX_MODEL_NAME, parse_chat_request

USER = {"role": "user", "content": "Hello"}
MINIMAL: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [USER]}

RICH: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Prefer metric units."}]},
        {
            "role": "user",
            "name": "alice",
            "content": [
                {"type": "text", "text": "What is in this image, and the weather in Paris?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://example.com/a.png", "detail": "high"},
                },
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                {"type": "file", "file": {"file_id": "file-abc"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
        {"role": "assistant", "content": [{"type": "text", "text": "It is 21 C."}]},
        {"role": "assistant", "content": None, "refusal": "I can't help with that."},
        {"role": "user", "content": "Thanks"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
                "strict": True,
            },
        },
        {"type": "function", "function": {"name": "no-params_2"}},
        {"type": "custom", "custom": {"name": "anything goes here"}},
    ],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
            "strict": True,
        },
    },
    "n": 2,
    "stop": ["\n\n", "END"],
    "temperature": 0.7,
    "top_p": 1,
    "max_tokens": 100,
    "max_completion_tokens": 200,
    "presence_penalty": -2,
    "frequency_penalty": 2.0,
    "seed": -(2**63),
    "user": "user-1234",
    "logprobs": True,
    "top_logprobs": 5,
    "logit_bias": {"50256": -100},
    "metadata": {"project": "demo"},
    "store": False,
    "stream": True,
    "stream_options": {"include_usage": True, "include_obfuscation": False},
    "reasoning_effort": "low",
    "x_vendor_extension": {"keep": ["me", 1, None]},
}


def encode(body: object) -> bytes:
    return json.dumps(body).encode()


def with_(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(MINIMAL)
    body.update(changes)
    return body


def rejected(body: bytes | object) -> InvalidRequest:
    raw = body if isinstance(body, bytes) else encode(body)
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(raw)
    assert info.value.status == 400
    assert info.value.type == "invalid_request_error"
    return info.value


# ---------------------------------------------------------------- accepted


def test_a_rich_valid_request_is_accepted_and_kept_as_sent():
    request = parse_chat_request(encode(RICH), forward_headers={"x-trace": "t1"})

    assert request.body == RICH
    assert request.model == "gpt-4o"
    assert request.stream is True
    assert request.include_usage is True
    assert request.messages == RICH["messages"]
    assert request.forward_headers == {"x-trace": "t1"}
    assert request.body["x_vendor_extension"] == {"keep": ["me", 1, None]}
    assert request.body["reasoning_effort"] == "low"


def test_a_minimal_request_is_not_streamed_and_has_no_forward_headers():
    request = parse_chat_request(encode(MINIMAL))

    assert request.stream is False
    assert request.include_usage is False
    assert dict(request.forward_headers) == {}


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"tool_choice": "none"}, id="tool-choice-none"),
        pytest.param({"tool_choice": "auto"}, id="tool-choice-auto"),
        pytest.param({"tool_choice": "required"}, id="tool-choice-required"),
        pytest.param(
            {"tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}, id="tool-choice-other"
        ),
        pytest.param({"response_format": {"type": "json_object"}}, id="json-object"),
        pytest.param({"response_format": {"type": "text"}}, id="text-format"),
        pytest.param({"stop": "END"}, id="stop-string"),
        pytest.param({"stop": ["a", "b", "c", "d"]}, id="four-stops"),
        pytest.param({"n": 128, "temperature": 2, "top_p": 0}, id="upper-bounds"),
        pytest.param({"seed": 2**63 - 1}, id="max-seed"),
        pytest.param({"temperature": None, "max_tokens": None, "tools": None}, id="nulls"),
        pytest.param({"model": "m" * MAX_MODEL_NAME}, id="longest-model-name"),
        pytest.param({"model": "org/model:tag@v1 (beta)"}, id="model-with-punctuation"),
        pytest.param(
            {"messages": [{"role": "function", "name": "f", "content": "x"}]}, id="function-role"
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": "a:b", "extra": {"c:d": "e:f"}}]},
            id="colons-in-strings",
        ),
    ],
)
def test_valid_variants_are_accepted(changes):
    body = with_(**changes)

    request = parse_chat_request(encode(body))

    assert request.body == body


def test_include_usage_is_true_only_for_a_stream_that_asks_for_it():
    def usage(**changes: Any) -> bool:
        return parse_chat_request(encode(with_(**changes))).include_usage

    assert usage(stream=True, stream_options={"include_usage": True})
    assert not usage(stream=False, stream_options={"include_usage": True})
    assert not usage(stream_options={"include_usage": True})
    assert not usage(stream=True, stream_options={"include_usage": False})
    assert not usage(stream=True)
    assert not usage(stream=True, stream_options=None)


def test_nesting_up_to_max_json_depth_is_accepted():
    # the top-level object is level 1, so MAX_JSON_DEPTH - 1 nested arrays reach the limit
    deep = b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1)
    body = encode(MINIMAL)[:-1] + b', "x": ' + deep + b"}"

    request = parse_chat_request(body)

    assert "x" in request.body


# ---------------------------------------------------------------- rejected: the body


def nested(depth: int) -> bytes:
    return encode(MINIMAL)[:-1] + b', "x": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param(b"", "not valid JSON", id="empty"),
        pytest.param(b'{"model": "m", "messages": [', "not valid JSON", id="truncated"),
        pytest.param(b'{"model": "m",}', "not valid JSON", id="trailing-comma"),
        pytest.param(b"{'model': 'm'}", "not valid JSON", id="single-quotes"),
        pytest.param(encode(MINIMAL) + b" {}", "not valid JSON", id="two-documents"),
        pytest.param(b'{"model": "m\xff", "messages": []}', "not valid JSON", id="invalid-utf8"),
        pytest.param(b'{"model": "\xed\xa0\x80"}', "not valid JSON", id="utf8-encoded-surrogate"),
        pytest.param(b'{"model": "\\ud800"}', "not valid JSON", id="lone-high-surrogate"),
        pytest.param(b'{"model": "\\udc00x"}', "not valid JSON", id="lone-low-surrogate"),
        pytest.param(b'{"model": "m", "temperature": NaN}', "not valid JSON", id="nan"),
        pytest.param(b'{"model": "m", "temperature": Infinity}', "not valid JSON", id="infinity"),
        pytest.param(b'{"model": "m", "temperature": -Infinity}', "not valid JSON", id="-infinity"),
        pytest.param(b'{"model": "m", "temperature": 1e999}', "not valid JSON", id="overflow"),
        pytest.param(b'\xef\xbb\xbf{"model": "m"}', "not valid JSON", id="byte-order-mark"),
        pytest.param(b'{"model": "a\tb"}', "not valid JSON", id="raw-control-character"),
        pytest.param(nested(MAX_JSON_DEPTH), f"deeper than {MAX_JSON_DEPTH}", id="too-deep"),
        pytest.param(nested(5000), "not valid JSON", id="far-too-deep"),
        pytest.param(b"[]", "must be a JSON object", id="array"),
        pytest.param(b'"hello"', "must be a JSON object", id="string"),
        pytest.param(b"null", "must be a JSON object", id="null"),
        pytest.param(b"42", "must be a JSON object", id="number"),
    ],
)
def test_bodies_that_are_not_a_json_object_are_rejected(body, fragment):
    error = rejected(body)

    assert fragment in error.message
    assert error.param is None


@pytest.mark.parametrize(
    ("body", "key"),
    [
        pytest.param(b'{"model": "a", "model": "b", "messages": []}', "model", id="top-level"),
        pytest.param(
            b'{"model": "a", "messages": [{"role": "user", "role": "system", "content": "x"}]}',
            "role",
            id="in-a-message",
        ),
        pytest.param(
            b'{"model": "a", "messages": [], "metadata": {"k": "1", "k": "2"}}', "k", id="nested"
        ),
        pytest.param(
            b'{"model": "a:b", "messages": [{"role": "user", "content": "c:d"}], "model": "x"}',
            "model",
            id="with-colons-in-strings",
        ),
        pytest.param(
            b'{"model": "a", "messages": [], "x": {"k:1": 1, "k:1": 2}}', "k:1", id="colon-key"
        ),
        pytest.param(b'{"model": "a", "messages": [], "\\u006dodel": "b"}', "model", id="escaped"),
    ],
)
def test_duplicate_keys_are_rejected_naming_the_key(body, key):
    error = rejected(body)

    assert error.param == key
    assert f"repeats the key '{key}'" in error.message


# ---------------------------------------------------------------- rejected: the fields


def message(**fields: Any) -> dict[str, Any]:
    return with_(messages=[USER, fields])


INVALID: list[Any] = [
    pytest.param({"messages": [USER]}, "model", "you must provide a model", id="missing-model"),
    pytest.param(with_(model=None), "model", "you must provide a model", id="null-model"),
    pytest.param(with_(model=""), "model", "non-empty string", id="empty-model"),
    pytest.param(with_(model=5), "model", "non-empty string", id="model-not-a-string"),
    pytest.param(with_(model="gpt\r\nx-injected: 1"), "model", "printable", id="crlf-in-model"),
    pytest.param(with_(model="gpt\n"), "model", "printable", id="lf-in-model"),
    pytest.param(with_(model="gpt\x00"), "model", "printable", id="nul-in-model"),
    pytest.param(with_(model="m" * (MAX_MODEL_NAME + 1)), "model", "256", id="model-too-long"),
    pytest.param({"model": "m"}, "messages", "missing required", id="missing-messages"),
    pytest.param(with_(messages=None), "messages", "missing required", id="null-messages"),
    pytest.param(with_(messages=[]), "messages", "at least one", id="empty-messages"),
    pytest.param(with_(messages={"role": "user"}), "messages", "array", id="messages-object"),
    pytest.param(with_(messages=["hi"]), "messages[0]", "object", id="message-not-object"),
    pytest.param(message(role="bot", content="x"), "messages[1].role", "one of", id="bad-role"),
    pytest.param(message(content="x"), "messages[1].role", "one of", id="missing-role"),
    pytest.param(message(role="user"), "messages[1].content", "required", id="no-content"),
    pytest.param(message(role="user", content=5), "messages[1].content", "string", id="int"),
    pytest.param(
        message(role="user", content={"type": "text"}), "messages[1].content", "an array", id="obj"
    ),
    pytest.param(
        message(role="user", content=["hi"]), "messages[1].content[0]", "object", id="str-part"
    ),
    pytest.param(
        message(role="user", content=[{"type": "video"}]),
        "messages[1].content[0].type",
        "one of",
        id="unknown-part-type",
    ),
    pytest.param(
        message(role="system", content=[{"type": "image_url", "image_url": {"url": "x"}}]),
        "messages[1].content[0].type",
        "text",
        id="image-in-system",
    ),
    pytest.param(
        message(role="assistant", content=[{"type": "image_url", "image_url": {"url": "x"}}]),
        "messages[1].content[0].type",
        "refusal, text",
        id="image-in-assistant",
    ),
    pytest.param(
        message(role="user", content=[{"type": "text", "text": 5}]),
        "messages[1].content[0].text",
        "must be a string",
        id="text-part-not-string",
    ),
    pytest.param(
        message(role="user", content=[{"type": "text"}]),
        "messages[1].content[0].text",
        "is required",
        id="text-part-without-text",
    ),
    pytest.param(
        message(role="user", content=[{"type": "image_url", "image_url": {}}]),
        "messages[1].content[0].image_url.url",
        "required",
        id="image-without-url",
    ),
    pytest.param(
        message(
            role="user", content=[{"type": "image_url", "image_url": {"url": "x", "detail": "4k"}}]
        ),
        "messages[1].content[0].image_url.detail",
        "auto, low or high",
        id="bad-image-detail",
    ),
    pytest.param(
        message(role="user", content=[{"type": "input_audio", "input_audio": {"data": "x"}}]),
        "messages[1].content[0].input_audio.format",
        "required",
        id="audio-without-format",
    ),
    pytest.param(
        message(role="user", content=[{"type": "file", "file": "f"}]),
        "messages[1].content[0].file",
        "object",
        id="file-not-object",
    ),
    pytest.param(
        message(role="assistant", content=[{"type": "refusal"}]),
        "messages[1].content[0].refusal",
        "required",
        id="refusal-part-without-refusal",
    ),
    pytest.param(
        message(role="assistant"), "messages[1].content", "tool_calls", id="assistant-empty"
    ),
    pytest.param(
        message(role="assistant", content=None, tool_calls={}),
        "messages[1].content",
        "tool_calls",
        id="assistant-empty-tool-calls",
    ),
    pytest.param(
        message(role="assistant", content="x", tool_calls="call"),
        "messages[1].tool_calls",
        "array",
        id="tool-calls-not-array",
    ),
    pytest.param(
        message(role="assistant", tool_calls=[{"type": "function", "function": {}}]),
        "messages[1].tool_calls[0].id",
        "required",
        id="tool-call-without-id",
    ),
    pytest.param(
        message(role="assistant", tool_calls=[{"id": "c", "function": {"name": "f"}}]),
        "messages[1].tool_calls[0].function.arguments",
        "required",
        id="tool-call-without-arguments",
    ),
    pytest.param(
        message(
            role="assistant",
            tool_calls=[{"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}],
        ),
        "messages[1].tool_calls[0].function.arguments",
        "must be a string",
        id="tool-call-arguments-object",
    ),
    pytest.param(
        message(role="tool", content="42"),
        "messages[1].tool_call_id",
        "required",
        id="tool-without-tool-call-id",
    ),
    pytest.param(
        message(role="tool", content="42", tool_call_id=7),
        "messages[1].tool_call_id",
        "must be a string",
        id="tool-call-id-not-string",
    ),
    pytest.param(
        message(role="function", content="42"),
        "messages[1].name",
        "required",
        id="function-without-name",
    ),
    pytest.param(
        message(role="user", content="x", name=["a"]),
        "messages[1].name",
        "string",
        id="name-not-string",
    ),
    # optional params of the wrong type
    pytest.param(with_(stream="true"), "stream", "boolean", id="stream-string"),
    pytest.param(with_(stream=1), "stream", "boolean", id="stream-int"),
    pytest.param(with_(stream_options=True), "stream_options", "object", id="stream-options"),
    pytest.param(
        with_(stream=True, stream_options={"include_usage": "yes"}),
        "stream_options.include_usage",
        "boolean",
        id="include-usage-string",
    ),
    pytest.param(with_(n="2"), "n", "integer", id="n-string"),
    pytest.param(with_(n=1.5), "n", "integer", id="n-float"),
    pytest.param(with_(n=True), "n", "integer", id="n-bool"),
    pytest.param(with_(max_tokens=False), "max_tokens", "integer", id="max-tokens-bool"),
    pytest.param(with_(max_completion_tokens=True), "max_completion_tokens", "integer", id="mct"),
    pytest.param(with_(seed=True), "seed", "integer", id="seed-bool"),
    pytest.param(with_(top_logprobs=True), "top_logprobs", "integer", id="top-logprobs-bool"),
    pytest.param(with_(temperature=True), "temperature", "number", id="temperature-bool"),
    pytest.param(with_(temperature="0.5"), "temperature", "number", id="temperature-string"),
    pytest.param(with_(top_p=[1]), "top_p", "number", id="top-p-list"),
    pytest.param(with_(user=5), "user", "string", id="user-int"),
    pytest.param(with_(logprobs="true"), "logprobs", "boolean", id="logprobs-string"),
    pytest.param(with_(parallel_tool_calls=0), "parallel_tool_calls", "boolean", id="ptc-int"),
    pytest.param(with_(store="no"), "store", "boolean", id="store-string"),
    pytest.param(with_(metadata=["a"]), "metadata", "object", id="metadata-list"),
    pytest.param(with_(metadata={"a": 1}), "metadata.a", "string", id="metadata-value-int"),
    pytest.param(with_(logit_bias=[1]), "logit_bias", "object", id="logit-bias-list"),
    pytest.param(with_(stop=5), "stop", "string or an array", id="stop-int"),
    pytest.param(with_(stop=["a", 1]), "stop", "string or an array", id="stop-mixed"),
    # out of range
    pytest.param(with_(n=0), "n", "between 1 and 128", id="n-zero"),
    pytest.param(with_(n=129), "n", "between 1 and 128", id="n-too-big"),
    pytest.param(with_(temperature=2.01), "temperature", "between 0 and 2", id="temp-high"),
    pytest.param(with_(temperature=-0.1), "temperature", "between 0 and 2", id="temp-negative"),
    pytest.param(with_(top_p=1.5), "top_p", "between 0 and 1", id="top-p-high"),
    pytest.param(with_(presence_penalty=-2.5), "presence_penalty", "between -2 and 2", id="pp"),
    pytest.param(with_(frequency_penalty=3), "frequency_penalty", "between -2 and 2", id="fp"),
    pytest.param(with_(max_tokens=0), "max_tokens", "at least 1", id="max-tokens-zero"),
    pytest.param(with_(max_completion_tokens=-1), "max_completion_tokens", "at least 1", id="mc"),
    pytest.param(with_(top_logprobs=21), "top_logprobs", "between 0 and 20", id="top-logprobs"),
    pytest.param(with_(seed=2**63), "seed", "between", id="seed-too-big"),
    pytest.param(
        with_(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4", id="too-many-stop-sequences"
    ),
    # tools
    pytest.param(with_(tools={"type": "function"}), "tools", "array", id="tools-object"),
    pytest.param(with_(tools=["f"]), "tools[0]", "type", id="tool-string"),
    pytest.param(with_(tools=[{"function": {"name": "f"}}]), "tools[0]", "type", id="no-type"),
    pytest.param(
        with_(tools=[{"type": "function"}]), "tools[0].function", "object", id="no-function"
    ),
    *(
        pytest.param(
            with_(tools=[{"type": "function", "function": {"name": name}}]),
            "tools[0].function.name",
            "1-64 letters",
            id=f"bad-tool-name-{label}",
        )
        for label, name in [
            ("missing", None),
            ("empty", ""),
            ("space", "get weather"),
            ("dot", "get.weather"),
            ("unicode", "météo"),
            ("too-long", "f" * 65),
            ("number", 5),
        ]
    ),
    pytest.param(
        with_(tools=[{"type": "function", "function": {"name": "f", "parameters": "{}"}}]),
        "tools[0].function.parameters",
        "JSON Schema object",
        id="parameters-string",
    ),
    pytest.param(with_(tool_choice="any"), "tool_choice", "none, auto, required", id="tc-any"),
    pytest.param(with_(tool_choice=1), "tool_choice", "string or an object", id="tc-int"),
    pytest.param(with_(tool_choice={}), "tool_choice", "string or an object", id="tc-no-type"),
    pytest.param(
        with_(tool_choice={"type": "function"}),
        "tool_choice.function.name",
        "required",
        id="tc-function-without-name",
    ),
    pytest.param(
        with_(tool_choice={"type": "function", "function": {"name": 1}}),
        "tool_choice.function.name",
        "required",
        id="tc-function-name-int",
    ),
    # response_format
    pytest.param(with_(response_format="json"), "response_format", "object", id="rf-string"),
    pytest.param(
        with_(response_format={"type": "xml"}), "response_format.type", "json_object", id="rf-xml"
    ),
    pytest.param(
        with_(response_format={"type": "json_schema"}),
        "response_format.json_schema",
        "required",
        id="rf-json-schema-missing",
    ),
    pytest.param(
        with_(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
        "response_format.json_schema.name",
        "required",
        id="rf-json-schema-without-name",
    ),
    pytest.param(
        with_(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": []}}),
        "response_format.json_schema.schema",
        "object",
        id="rf-schema-list",
    ),
]


@pytest.mark.parametrize(("body", "param", "fragment"), INVALID)
def test_invalid_requests_are_rejected_naming_the_param(body, param, fragment):
    error = rejected(body)

    assert error.param == param
    assert fragment in error.message
    assert error.code == "invalid_request"
    assert not error.retryable


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param(
            message(role="user", content=[{"type": "image_url", "image_url": "https://x"}]),
            "messages[1].content[0].image_url",
            id="image-url-not-object",
        ),
        pytest.param(
            message(role="user", content=[{"type": "input_audio", "input_audio": "x"}]),
            "messages[1].content[0].input_audio",
            id="input-audio-not-object",
        ),
        pytest.param(
            message(role="assistant", tool_calls=[{"id": "c", "function": "f"}]),
            "messages[1].tool_calls[0].function",
            id="tool-call-function-not-object",
        ),
    ],
)
def test_a_sub_object_of_the_wrong_type_is_named_as_the_param(body, param):
    error = rejected(body)

    assert error.param == param
