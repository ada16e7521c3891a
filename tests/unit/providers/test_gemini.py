"""gateway/providers/gemini.py: requests out, answers/chunks/errors back, checked against the fake.

Every request the translator builds is also run through the fake Gemini's `problems()` (the
rules the real API enforces), and the streams decoded are the fake's own bytes.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from gateway.config import Secret, Target, UpstreamConfig
from gateway.errors import (
    InvalidRequest,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    to_openai_error,
)
from gateway.openai_types import ChatRequest
from gateway.providers.base import UpstreamRequest
from gateway.providers.gemini import DUMMY_SIGNATURE, GEMINI, SIGNATURE_MARK
from gateway.request_parser import parse_chat_request
from tests import spec
from tests.fakes.gemini_upstream import SIGNATURE, GeminiDialect
from tests.fakes.upstream import RecordedRequest, Reply, ToolCall

KEY = "AIzaSyFAKE-0123456789abcdefghijklmn"
TARGET = Target(upstream="g", model="gemini-2.0-flash")
TARGET3 = Target(upstream="g", model="gemini-3-pro-preview")
UPSTREAM = UpstreamConfig(
    provider="gemini",
    base_url="https://generativelanguage.googleapis.com/",
    api_key=Secret(KEY),
    headers={"x-extra": "1"},
)
KEYLESS = UpstreamConfig(provider="gemini", base_url="http://127.0.0.1:9")
DROPPING = UpstreamConfig(provider="gemini", base_url="http://x", drop_unsupported=True)
PNG = "iVBORw0KGgo="
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"city": {"type": ["string", "null"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}


def chat(messages: list[Any] | None = None, **fields: Any) -> ChatRequest:
    body: dict[str, Any] = {
        "model": "public",
        "messages": messages or [{"role": "user", "content": "hi"}],
        **fields,
    }
    return parse_chat_request(json.dumps(body).encode(), request_id="abc-123", created=1700000000)


def record_of(outgoing: UpstreamRequest) -> RecordedRequest:
    """The request as the fake would have recorded it."""
    url = urlsplit(outgoing.url)
    body = outgoing.body or b""
    return RecordedRequest(
        method=outgoing.method,
        path=url.path,
        query=url.query,
        headers={k.lower(): v for k, v in outgoing.headers.items()},
        body=body,
        json=json.loads(body) if body else None,
        request_id="resp-1",
        received_at=time.monotonic(),
        route="/v1beta/models/{call}",
        path_params={"call": url.path.rsplit("/", 1)[-1]},
    )


def build(
    request: ChatRequest, target: Target = TARGET, upstream: UpstreamConfig = UPSTREAM
) -> dict[str, Any]:
    """The body sent upstream, after checking the real API would take it."""
    outgoing = GEMINI.build_request(request, target, upstream)
    problems = GeminiDialect().problems(record_of(outgoing))
    assert problems == [], problems
    body: dict[str, Any] = orjson.loads(outgoing.body or b"")
    return body


# ---------------------------------------------------------------- build_request


def test_build_request_posts_to_generate_content_with_the_key_in_a_header():
    request = chat(x_unknown_field={"ignored": True})
    outgoing = GEMINI.build_request(
        parse_chat_request(
            json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            {"authorization": "Bearer client", "x-trace": "t"},
        ),
        TARGET,
        UPSTREAM,
    )

    assert outgoing.method == "POST"
    assert outgoing.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent"
    )
    assert outgoing.headers["x-goog-api-key"] == KEY
    assert KEY not in outgoing.url
    assert "key=" not in outgoing.url
    assert outgoing.headers["x-extra"] == "1"
    assert outgoing.headers["content-type"] == "application/json"
    assert "authorization" not in outgoing.headers  # OpenAI SDK headers mean nothing here
    assert "x-trace" not in outgoing.headers
    assert KEY not in repr(outgoing)
    assert build(request)["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]


def test_streams_use_sse_and_model_prefixes_are_understood():
    stream = GEMINI.build_request(
        chat(stream=True), Target(upstream="g", model="models/gemini-2.5-pro"), UPSTREAM
    )
    tuned = GEMINI.build_request(chat(), Target(upstream="g", model="tunedModels/my-x"), UPSTREAM)

    assert stream.url.endswith("/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse")
    assert stream.headers["accept"] == "text/event-stream"
    assert tuned.url.endswith("/v1beta/tunedModels/my-x:generateContent")


def test_a_keyless_upstream_sends_no_key():
    outgoing = GEMINI.build_request(chat(), TARGET, KEYLESS)

    assert "x-goog-api-key" not in outgoing.headers
    assert outgoing.url.startswith("http://127.0.0.1:9/v1beta/")


def test_system_and_developer_messages_become_the_system_instruction():
    body = build(
        chat(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Speak French."}]},
                {"role": "user", "content": "Hello"},
                {"role": "user", "content": [{"type": "text", "text": "there"}]},
                {"role": "assistant", "content": "Bonjour"},
                {"role": "system", "content": "Later rule."},
                {"role": "user", "content": "Again"},
            ]
        )
    )

    assert body["systemInstruction"] == {
        "parts": [{"text": "Be brief."}, {"text": "Speak French."}, {"text": "Later rule."}]
    }
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Hello"}, {"text": "there"}]},
        {"role": "model", "parts": [{"text": "Bonjour"}]},
        {"role": "user", "parts": [{"text": "Again"}]},
    ]


def test_only_system_messages_is_a_400():
    with pytest.raises(InvalidRequest) as info:
        build(chat([{"role": "system", "content": "x"}]))

    assert info.value.param == "messages"


CONVERSATION: list[Any] = [
    {"role": "user", "content": "Weather and time in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
    {"role": "tool", "tool_call_id": "call_a", "content": [{"type": "text", "text": "Sunny"}]},
    {"role": "user", "content": "Thanks"},
]


def test_tool_calls_and_results_round_trip_with_names_found_by_id():
    body = build(chat(CONVERSATION, tools=[WEATHER, TIME]))

    assert body["contents"][1] == {
        "role": "model",
        "parts": [
            {
                "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                "thoughtSignature": DUMMY_SIGNATURE,
            },
            {"functionCall": {"name": "get_time", "args": {}}},
        ],
    }
    assert body["contents"][2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_time", "response": {"result": "12:00"}}},
            {"functionResponse": {"name": "get_weather", "response": {"result": "Sunny"}}},
        ],
    }
    assert body["contents"][3] == {"role": "user", "parts": [{"text": "Thanks"}]}


def test_the_signature_carried_in_the_call_id_goes_back_to_gemini_3():
    messages = json.loads(json.dumps(CONVERSATION[:4]))
    call_id = f"call_x_0_0{SIGNATURE_MARK}{SIGNATURE}"
    messages[1]["tool_calls"][0]["id"] = call_id
    messages[3]["tool_call_id"] = call_id

    body = build(chat(messages, tools=[WEATHER, TIME]), TARGET3)

    assert body["contents"][1]["parts"][0]["thoughtSignature"] == SIGNATURE


def test_a_tool_result_for_an_unknown_call_is_a_400():
    messages = [*CONVERSATION[:2], {"role": "tool", "tool_call_id": "nope", "content": "x"}]

    with pytest.raises(InvalidRequest) as info:
        build(chat(messages))

    assert info.value.param == "messages[2].tool_call_id"


@pytest.mark.parametrize("arguments", ["{not json", "[1]"])
def test_tool_call_arguments_must_be_a_json_object(arguments):
    messages = [
        {"role": "user", "content": "x"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
            ],
        },
    ]

    with pytest.raises(InvalidRequest) as info:
        build(chat(messages))

    assert info.value.param == "messages[1].tool_calls[0].function.arguments"


def test_tools_become_function_declarations_with_json_schema():
    body = build(chat(tools=[WEATHER, TIME]))

    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather in a city",
                    "parametersJsonSchema": {
                        "type": "object",
                        "properties": {"city": {"type": ["string", "null"]}},
                        "required": ["city"],
                        "additionalProperties": False,
                    },
                },
                {"name": "get_time"},
            ]
        }
    ]
    assert "toolConfig" not in body


@pytest.mark.parametrize(
    ("choice", "config", "declared"),
    [
        ("auto", {"mode": "AUTO"}, 2),
        ("none", {"mode": "NONE"}, 2),
        ("required", {"mode": "ANY"}, 2),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_time"]},
            2,
        ),
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "get_time"}}],
                },
            },
            {"mode": "ANY"},
            1,
        ),
    ],
)
def test_tool_choice_maps_to_function_calling_config(choice, config, declared):
    body = build(chat(tools=[WEATHER, TIME], tool_choice=choice))

    assert body["toolConfig"] == {"functionCallingConfig": config}
    assert len(body["tools"][0]["functionDeclarations"]) == declared


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        pytest.param(
            {"tools": [{"type": "function", "function": {"name": "1st"}}]},
            "tools[0].function.name",
            id="name-starts-with-digit",
        ),
        pytest.param(
            {"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type", id="custom"
        ),
        pytest.param(
            {"tools": [TIME], "tool_choice": {"type": "function", "function": {"name": "zz"}}},
            "tool_choice.function.name",
            id="named-unknown",
        ),
    ],
)
def test_tools_gemini_cannot_represent_are_a_400(fields, param):
    with pytest.raises(InvalidRequest) as info:
        build(chat(**fields))

    assert info.value.param == param


def test_generation_config_takes_every_sampling_parameter():
    body = build(
        chat(
            temperature=0.3,
            top_p=0.9,
            max_tokens=50,
            max_completion_tokens=100,
            stop="END",
            n=2,
            seed=7,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            user="u1",
            store=False,
            metadata={"a": "b"},
            service_tier="auto",
        )
    )

    assert body["generationConfig"] == {
        "temperature": 0.3,
        "topP": 0.9,
        "seed": 7,
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
        "maxOutputTokens": 100,
        "stopSequences": ["END"],
        "candidateCount": 2,
    }
    assert set(body) == {"contents", "generationConfig"}


def test_max_tokens_and_a_stop_list_are_used_when_given():
    config = build(chat(max_tokens=5, stop=["a", "b"]))["generationConfig"]

    assert config == {"maxOutputTokens": 5, "stopSequences": ["a", "b"]}


def test_json_modes():
    schema = {"$schema": "x", "type": "object", "properties": {"a": {"type": "integer"}}}
    json_object = build(chat(response_format={"type": "json_object"}))["generationConfig"]
    json_schema = build(
        chat(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "s", "strict": True, "schema": schema},
            }
        )
    )["generationConfig"]
    text = build(chat(response_format={"type": "text"}))

    assert json_object == {"responseMimeType": "application/json"}
    assert json_schema == {
        "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object", "properties": {"a": {"type": "integer"}}},
    }
    assert "generationConfig" not in text


def test_images_audio_and_files_become_inline_or_file_data():
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {
            "type": "image_url",
            "image_url": {"url": "https://x.test/a/cat.JPG?s=1", "detail": "low"},
        },
        {"type": "image_url", "image_url": {"url": "https://x.test/render"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERg=="}},
    ]

    parts = build(chat([{"role": "user", "content": content}]))["contents"][0]["parts"]

    assert parts == [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/png", "data": PNG}},
        {"fileData": {"fileUri": "https://x.test/a/cat.JPG?s=1", "mimeType": "image/jpeg"}},
        {"fileData": {"fileUri": "https://x.test/render"}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERg=="}},
    ]


@pytest.mark.parametrize(
    ("part", "param"),
    [
        (
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}},
            "messages[0].content[1].image_url.url",
        ),
        (
            {"type": "image_url", "image_url": {"url": "data:image/png,rawtext"}},
            "messages[0].content[1].image_url.url",
        ),
        (
            {"type": "image_url", "image_url": {"url": "ftp://x.test/a.png"}},
            "messages[0].content[1].image_url.url",
        ),
        ({"type": "file", "file": {"file_id": "file-abc"}}, "messages[0].content[1].file"),
        (
            {"type": "input_audio", "input_audio": {"data": "AA==", "format": "flac"}},
            "messages[0].content[1].input_audio.format",
        ),
    ],
)
def test_media_gemini_cannot_take_is_a_400_naming_the_part(part, param):
    messages = [{"role": "user", "content": [{"type": "text", "text": "x"}, part]}]

    with pytest.raises(InvalidRequest) as info:
        build(chat(messages))

    assert info.value.param == param


@pytest.mark.parametrize(
    "fields",
    [
        {"logprobs": True},
        {"top_logprobs": 2},
        {"logit_bias": {"1": 2}},
        {"audio": {"voice": "alloy", "format": "wav"}},
        {"prediction": {"type": "content", "content": "x"}},
        {"reasoning_effort": "low"},
        {"parallel_tool_calls": False},
        {"modalities": ["text", "audio"]},
    ],
)
def test_unsupported_parameters_are_a_400_or_dropped(fields):
    (name,) = fields

    with pytest.raises(InvalidRequest) as info:
        build(chat(**fields))
    dropped = build(chat(**fields), upstream=DROPPING)

    assert info.value.param == name
    assert "gemini" in info.value.message
    assert info.value.code == "unsupported_parameter"
    assert set(dropped) == {"contents"}


def test_harmless_settings_are_accepted():
    body = build(chat(parallel_tool_calls=True, modalities=["text"]))

    assert set(body) == {"contents"}


# ---------------------------------------------------------------- answers


def answer(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def parse(body: bytes, request: ChatRequest | None = None) -> Any:
    completion = GEMINI.parse_response(body, request or chat(), "g")
    spec.validate("CreateChatCompletionResponse", completion)
    return completion


def test_a_text_answer_with_usage():
    completion = parse(
        answer(
            candidates=[
                {
                    "content": {
                        "role": "model",
                        "parts": [{"text": "thinking...", "thought": True}, {"text": "Hi"}],
                    },
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            usageMetadata={
                "promptTokenCount": 10,
                "candidatesTokenCount": 2,
                "thoughtsTokenCount": 5,
                "toolUsePromptTokenCount": 1,
                "cachedContentTokenCount": 4,
                "totalTokenCount": 18,
            },
            modelVersion="gemini-2.0-flash-001",
            responseId="r1",
        )
    )

    assert completion["id"] == "chatcmpl-abc-123"
    assert completion["created"] == 1700000000
    assert completion["model"] == "gemini-2.0-flash-001"
    assert completion["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hi", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert completion["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "total_tokens": 18,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 5},
    }


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("OTHER", "stop"),
        (None, "stop"),
    ],
)
def test_finish_reasons(reason, expected):
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": "x"}]}}
    if reason:
        candidate["finishReason"] = reason

    completion = parse(answer(candidates=[candidate]))

    assert completion["choices"][0]["finish_reason"] == expected
    assert completion["model"] == "public"  # no modelVersion: the requested model


def test_function_calls_are_tool_calls_with_json_string_arguments_and_stable_ids():
    completion = parse(
        answer(
            candidates=[
                {
                    "content": {
                        "role": "model",
                        "parts": [
                            {
                                "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                                "thoughtSignature": SIGNATURE,
                            },
                            {"functionCall": {"name": "get_time"}},
                        ],
                    },
                    "finishReason": "STOP",
                }
            ]
        )
    )

    message = completion["choices"][0]["message"]
    assert completion["choices"][0]["finish_reason"] == "tool_calls"
    assert message["content"] is None
    first, second = message["tool_calls"]
    assert first["id"] == f"call_abc123_0_0{SIGNATURE_MARK}{SIGNATURE}"
    assert second["id"] == "call_abc123_0_1"
    assert first["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert second["function"] == {"name": "get_time", "arguments": "{}"}


def test_several_candidates_are_several_choices_in_index_order():
    completion = parse(
        answer(
            candidates=[
                {"content": {"parts": [{"text": "B"}]}, "finishReason": "STOP", "index": 1},
                {"content": {"parts": [{"text": "A"}]}, "finishReason": "MAX_TOKENS", "index": 0},
            ]
        ),
        chat(n=2),
    )

    assert [c["message"]["content"] for c in completion["choices"]] == ["A", "B"]
    assert [c["finish_reason"] for c in completion["choices"]] == ["length", "stop"]


def test_a_blocked_prompt_is_a_content_filter_answer():
    completion = parse(
        answer(
            promptFeedback={"blockReason": "SAFETY", "safetyRatings": []},
            usageMetadata={"promptTokenCount": 3, "totalTokenCount": 3},
        ),
        chat(n=2),
    )

    assert [c["finish_reason"] for c in completion["choices"]] == ["content_filter"] * 2
    assert completion["choices"][0]["message"]["content"] is None
    assert completion["usage"]["prompt_tokens"] == 3


@pytest.mark.parametrize(
    "body",
    [
        b"<html>",
        b"[]",
        b"{}",
        b'{"candidates": {}}',
        b'{"candidates": [5]}',
        b'{"candidates": [{"content": {"parts": "x"}}]}',
        b'{"candidates": [{"content": {"parts": [{"functionCall": {"args": {}}}]}}]}',
    ],
)
def test_a_body_that_is_not_an_answer_is_an_upstream_error(body):
    with pytest.raises(UpstreamError):
        GEMINI.parse_response(body, chat(), "g")


@pytest.mark.parametrize("model", ["gemini-2.0-flash", "gemini-3-pro-preview"])
def test_the_fakes_answer_parses_and_its_calls_go_back_accepted(model):
    target = Target(upstream="g", model=model)
    request = chat(tools=[WEATHER, TIME], n=2)
    record = record_of(GEMINI.build_request(request, target, UPSTREAM))
    reply = Reply.tools(ToolCall("get_weather", '{"city": "Rome"}'), ToolCall("get_time"))

    completion = parse(GeminiDialect().completion(record, reply), request)

    assert len(completion["choices"]) == 2
    message = completion["choices"][0]["message"]
    follow_up = [
        {"role": "user", "content": "Weather?"},
        message,
        *(
            {"role": "tool", "tool_call_id": call["id"], "content": "ok"}
            for call in message["tool_calls"]
        ),
    ]
    body = build(chat(follow_up, tools=[WEATHER, TIME]), target)  # the fake accepts it
    expected = SIGNATURE if model.startswith("gemini-3") else DUMMY_SIGNATURE
    assert body["contents"][1]["parts"][0]["thoughtSignature"] == expected
    assert completion["usage"]["completion_tokens"] == 2 * (1 + 3 + 1 + 1)


# ---------------------------------------------------------------- streams


def stream_bytes(request: ChatRequest, reply: Reply, target: Target = TARGET) -> bytes:
    record = record_of(GEMINI.build_request(request, target, UPSTREAM))
    return b"".join(GeminiDialect().stream(record, reply))


def decode(request: ChatRequest, data: bytes, size: int | None = None) -> tuple[list[Any], Any]:
    decoder = GEMINI.stream_decoder(request, "g", (KEY,))
    chunks: list[Any] = []
    if size is None:
        chunks.extend(decoder.feed(data))
    else:
        for i in range(0, len(data), size):
            chunks.extend(decoder.feed(data[i : i + size]))
    chunks.extend(decoder.close())
    for chunk in chunks:
        spec.validate("CreateChatCompletionStreamResponse", chunk)
    return chunks, decoder


REPLIES = [
    pytest.param(Reply(content="Héllo wörld, ça va? 👋"), id="text"),
    pytest.param(
        Reply.tools(ToolCall("get_weather", '{"city": "Zürich"}'), ToolCall("get_time")),
        id="tools",
    ),
    pytest.param(
        Reply.tools(ToolCall("get_time", "{}"), content="Let me check."), id="text-and-tool"
    ),
    pytest.param(Reply(content="cut", finish_reason="length"), id="length"),
]


@pytest.mark.parametrize("reply", REPLIES)
def test_a_stream_split_at_every_byte_boundary_gives_the_same_chunks(reply):
    request = chat(stream=True, tools=[WEATHER, TIME])
    data = stream_bytes(request, reply)
    whole, _ = decode(request, data)

    for cut in range(1, len(data)):
        decoder = GEMINI.stream_decoder(request, "g", ())
        chunks = decoder.feed(data[:cut]) + decoder.feed(data[cut:]) + decoder.close()
        assert chunks == whole, cut
    assert decode(request, data, size=1)[0] == whole


@pytest.mark.parametrize("reply", REPLIES)
def test_streamed_chunks_assemble_to_the_answer(reply):
    request = chat(stream=True, tools=[WEATHER, TIME])
    chunks, decoder = decode(request, stream_bytes(request, reply), size=7)

    [choice] = spec.assemble(chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert all("usage" not in chunk for chunk in chunks)
    assert decoder.usage is not None
    if isinstance(reply.content, str):
        assert choice["content"] == reply.content
    if reply.tool_calls:
        assert choice["finish_reason"] == "tool_calls"
        names = [call["function"]["name"] for call in choice["tool_calls"]]
        assert names == [call.name for call in reply.tool_calls]
        for call, sent in zip(choice["tool_calls"], reply.tool_calls, strict=True):
            assert json.loads(call["function"]["arguments"]) == json.loads(sent.arguments)
            assert call["type"] == "function"
            assert call["id"]
    else:
        assert choice["finish_reason"] == (reply.finish_reason or "stop")


def test_usage_chunk_when_asked_and_usage_null_on_the_others():
    request = chat(stream=True, stream_options={"include_usage": True}, n=2)
    chunks, decoder = decode(request, stream_bytes(request, Reply(content="a b")))

    *others, last = chunks
    assert all(chunk["usage"] is None for chunk in others)
    assert last["choices"] == []
    assert last["usage"] == decoder.usage
    assert last["usage"]["completion_tokens"] == 4
    assert {c["choices"][0]["index"] for c in others} == {0, 1}
    assert [c["finish_reason"] for c in spec.assemble(chunks)] == ["stop", "stop"]


def test_a_stream_without_its_finishing_event_is_interrupted():
    request = chat(stream=True)
    data = stream_bytes(request, Reply(content="one two three", send_done=False))
    decoder = GEMINI.stream_decoder(request, "g", ())

    chunks = decoder.feed(data)

    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "one two"
    with pytest.raises(StreamInterrupted):
        decoder.close()


@pytest.mark.parametrize("data", [b"", b'data: {"candidates": [{"content": {"parts": ['])
def test_an_empty_or_half_event_stream_is_interrupted(data):
    decoder = GEMINI.stream_decoder(chat(stream=True), "g", ())
    decoder.feed(data)

    with pytest.raises(StreamInterrupted):
        decoder.close()


@pytest.mark.parametrize(
    "event",
    [
        {"error": {"code": 500, "message": f"internal for {KEY}", "status": "INTERNAL"}},
        [{"error": {"code": 503, "message": f"overloaded {KEY}", "status": "UNAVAILABLE"}}],
    ],
)
def test_an_error_event_raises_stream_interrupted_redacted(event):
    decoder = GEMINI.stream_decoder(chat(stream=True), "g", (KEY,))

    with pytest.raises(StreamInterrupted) as info:
        decoder.feed(b"data: " + orjson.dumps(event) + b"\r\n\r\n")

    assert KEY not in info.value.message
    assert info.value.status == 502


@pytest.mark.parametrize("data", [b"data: not json\n\n", b"data: 5\n\n"])
def test_a_stream_that_is_not_geminis_is_interrupted(data):
    with pytest.raises(StreamInterrupted):
        GEMINI.stream_decoder(chat(stream=True), "g", ()).feed(data)


def test_a_blocked_prompt_streams_a_content_filter_finish():
    event = {"promptFeedback": {"blockReason": "OTHER"}, "usageMetadata": {"promptTokenCount": 2}}
    request = chat(stream=True, stream_options={"include_usage": True})

    chunks, _ = decode(request, b"data: " + orjson.dumps(event) + b"\r\n\r\n")

    assert chunks[1]["choices"][0]["finish_reason"] == "content_filter"
    assert chunks[-1]["usage"]["prompt_tokens"] == 2


# ---------------------------------------------------------------- errors


def google_error(status: int, message: str, name: str, *details: Any) -> bytes:
    error: dict[str, Any] = {"code": status, "message": message, "status": name}
    if details:
        error["details"] = list(details)
    return orjson.dumps({"error": error})


def test_a_bad_request_passes_through_with_its_message():
    error = GEMINI.parse_error(
        400, {}, google_error(400, "Invalid value at 'x'", "INVALID_ARGUMENT"), "g", (KEY,)
    )

    assert isinstance(error, UpstreamRejected)
    assert error.status == 400
    assert error.message == "Invalid value at 'x'"
    assert error.code == "invalid_argument"
    spec.validate("ErrorResponse", to_openai_error(error))


def test_a_bad_key_is_an_auth_failure_not_the_clients_400():
    body = google_error(
        400,
        "API key not valid. Please pass a valid API key.",
        "INVALID_ARGUMENT",
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"},
    )

    error = GEMINI.parse_error(400, {}, body, "g", (KEY,))

    assert error.status == 502
    assert error.code == "upstream_auth_failed"
    assert error.fallback


def test_a_rate_limit_takes_its_retry_delay_from_retry_info():
    body = google_error(
        429,
        "quota",
        "RESOURCE_EXHAUSTED",
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37.2s"},
    )

    error = GEMINI.parse_error(429, {}, body, "g", ())
    with_header = GEMINI.parse_error(429, {"Retry-After": "5"}, body, "g", ())

    assert isinstance(error, RateLimited)
    assert error.headers == {"retry-after": "37"}
    assert with_header.headers == {"retry-after": "5"}


@pytest.mark.parametrize(
    ("status", "name", "expected_status", "kind"),
    [
        (403, "PERMISSION_DENIED", 502, UpstreamError),
        (404, "NOT_FOUND", 404, UpstreamRejected),
        (500, "INTERNAL", 502, UpstreamError),
        (503, "UNAVAILABLE", 503, UpstreamError),
        (504, "DEADLINE_EXCEEDED", 504, UpstreamTimeout),
    ],
)
def test_error_statuses(status, name, expected_status, kind):
    body = google_error(status, f"failed with key {KEY}", name)

    error = GEMINI.parse_error(status, {}, body, "g", (KEY,))

    assert isinstance(error, kind)
    assert error.status == expected_status
    assert KEY not in json.dumps(to_openai_error(error))


def test_a_non_json_error_body_is_the_message():
    error = GEMINI.parse_error(502, {}, b"<html>Bad Gateway</html>", "g", ())

    assert "Bad Gateway" in error.message


# ---------------------------------------------------------------- models


def test_health_probe_and_models_request_list_models_with_the_key_header():
    probe = GEMINI.health_probe(UPSTREAM)
    models = GEMINI.models_request(UPSTREAM)

    assert probe.method == models.method == "GET"
    assert probe.url == "https://generativelanguage.googleapis.com/v1beta/models?pageSize=1"
    assert models.url.endswith("/v1beta/models?pageSize=1000")
    assert probe.headers["x-goog-api-key"] == KEY
    assert "x-goog-api-key" not in GEMINI.health_probe(KEYLESS).headers


def test_parse_models_strips_the_prefix_and_skips_models_that_cannot_chat():
    body = GeminiDialect().info(record_of(GEMINI.health_probe(UPSTREAM)), ["gemini-2.0-flash"])

    assert GEMINI.parse_models(body) == ("gemini-2.0-flash",)
    with pytest.raises(UpstreamError):
        GEMINI.parse_models(b'{"data": []}')
    with pytest.raises(UpstreamError):
        GEMINI.parse_models(b"nope")
