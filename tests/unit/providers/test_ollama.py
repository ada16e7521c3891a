"""gateway/providers/ollama.py: OpenAI requests to /api/chat and Ollama's answers back.

Every request built is also run through the fake Ollama's own validation, and every answer
decoded comes from the fake's renderer, so the translator and the fake agree on the wire.
"""

from __future__ import annotations

import copy
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
    to_openai_error,
)
from gateway.openai_types import ChatRequest
from gateway.providers.ollama import OLLAMA
from gateway.providers.ollama_responses import OllamaStreamDecoder, call_id
from gateway.request_parser import parse_chat_request
from gateway.sse import DONE, encode_event
from tests import spec
from tests.fakes.ollama_upstream import CHAT_PATH, TAGS_PATH, OllamaDialect, error_line
from tests.fakes.upstream import ApiError, RecordedRequest, Reply, ToolCall

KEY = "ollama-cloud-key-0123456789abcdef"
SECRETS = (KEY,)
TARGET = Target(upstream="local", model="llama3.2:latest")
LOCAL = UpstreamConfig(provider="ollama", base_url="http://127.0.0.1:11434/")
CLOUD = UpstreamConfig(
    provider="ollama",
    base_url="https://ollama.com",
    api_key=Secret(KEY),
    headers={"x-extra": "1"},
)
LENIENT = UpstreamConfig(provider="ollama", base_url="http://h:11434", drop_unsupported=True)
DIALECT = OllamaDialect()
IMAGE_B64 = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
}


def chat(
    *, messages: Any = None, headers: dict[str, str] | None = None, **fields: Any
) -> ChatRequest:
    body: dict[str, Any] = {
        "model": "public-llama",
        "messages": messages or [{"role": "user", "content": "Say hi"}],
        **fields,
    }
    return parse_chat_request(
        json.dumps(body).encode(), headers or {}, request_id="req42", created=1700000000
    )


def sent(request: ChatRequest, upstream: UpstreamConfig = LOCAL) -> dict[str, Any]:
    """The body sent for `request`, after checking that the fake Ollama accepts it."""
    outgoing = OLLAMA.build_request(request, TARGET, upstream)
    assert outgoing.body is not None
    body: dict[str, Any] = orjson.loads(outgoing.body)
    assert DIALECT.problems(record(body)) == []
    return body


def record(body: object, path: str = CHAT_PATH) -> RecordedRequest:
    raw = json.dumps(body).encode()
    return RecordedRequest("POST", path, "", {}, raw, body, "ollama-x", time.monotonic())


def refused(request: ChatRequest, upstream: UpstreamConfig = LOCAL) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        OLLAMA.build_request(request, TARGET, upstream)
    return info.value


# ---------------------------------------------------------------- build_request


def test_a_plain_request_posts_to_api_chat_with_stream_false():
    outgoing = OLLAMA.build_request(chat(), TARGET, LOCAL)

    assert outgoing.method == "POST"
    assert outgoing.url == "http://127.0.0.1:11434/api/chat"
    assert outgoing.headers["content-type"] == "application/json"
    assert outgoing.headers["accept"] == "application/json"
    assert "authorization" not in outgoing.headers
    assert sent(chat()) == {
        "model": "llama3.2:latest",
        "messages": [{"role": "user", "content": "Say hi"}],
        "stream": False,
    }


def test_a_stream_request_says_stream_true_and_accepts_ndjson():
    request = chat(stream=True, stream_options={"include_usage": True})

    assert sent(request)["stream"] is True
    assert OLLAMA.build_request(request, TARGET, LOCAL).headers["accept"] == "application/x-ndjson"


def test_the_key_goes_as_bearer_and_client_headers_stay_home():
    request = chat(headers={"authorization": "Bearer client", "openai-organization": "org"})

    headers = OLLAMA.build_request(request, TARGET, CLOUD).headers

    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["x-extra"] == "1"
    assert "openai-organization" not in headers
    assert KEY not in repr(OLLAMA.build_request(request, TARGET, CLOUD))


def test_sampling_parameters_become_options():
    request = chat(
        temperature=0.2,
        top_p=0.9,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        max_tokens=99,
        max_completion_tokens=64,
        stop="\n\n",
    )

    body = sent(request)

    assert body["options"] == {
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "num_predict": 64,
        "stop": ["\n\n"],
    }
    assert "temperature" not in body  # never at the top level, where Ollama ignores it


def test_max_tokens_alone_is_num_predict_and_stop_lists_are_kept():
    assert sent(chat(max_tokens=12, stop=["a", "b"]))["options"] == {
        "num_predict": 12,
        "stop": ["a", "b"],
    }


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        pytest.param({"type": "json_object"}, "json", id="json-object"),
        pytest.param(
            {
                "type": "json_schema",
                "json_schema": {"name": "age", "schema": {"type": "object", "required": ["a"]}},
            },
            {"type": "object", "required": ["a"]},
            id="json-schema",
        ),
        pytest.param({"type": "text"}, None, id="text"),
    ],
)
def test_response_format_becomes_format(response_format, expected):
    body = sent(chat(response_format=response_format))

    assert body.get("format") == expected


def test_system_and_developer_messages_become_system():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
        {"role": "user", "content": "Hi"},
    ]

    assert sent(chat(messages=messages))["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Use French."},
        {"role": "user", "content": "Hi"},
    ]


def test_text_parts_are_joined_and_data_url_images_become_base64():
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE_B64}"}},
        {"type": "text", "text": "Be precise."},
    ]

    [message] = sent(chat(messages=[{"role": "user", "content": content}]))["messages"]

    assert message == {
        "role": "user",
        "content": "What is this?\nBe precise.",
        "images": [IMAGE_B64],
    }


def test_an_image_by_url_is_refused_naming_the_part():
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]

    error = refused(chat(messages=[{"role": "user", "content": content}]))

    assert error.status == 400
    assert error.param == "messages[0].content[1]"
    assert "ollama" in error.message


def test_a_data_url_that_is_not_base64_is_refused():
    content = [{"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}]

    error = refused(chat(messages=[{"role": "user", "content": content}]))

    assert error.param == "messages[0].content[0].image_url.url"


def test_audio_input_is_refused_naming_the_part():
    content = [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]

    error = refused(chat(messages=[{"role": "user", "content": content}]))

    assert error.param == "messages[0].content[0]"


TOOL_ROUND_TRIP: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
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
    {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
    {"role": "tool", "tool_call_id": "call_a", "content": [{"type": "text", "text": "sunny"}]},
    {"role": "tool", "tool_call_id": "call_unknown", "content": "?"},
]


def test_tool_calls_go_with_object_arguments_and_results_with_the_tool_name():
    messages = sent(chat(messages=TOOL_ROUND_TRIP, tools=[WEATHER_TOOL]))["messages"]

    assert messages[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
            },
            {
                "id": "call_b",
                "type": "function",
                "function": {"index": 1, "name": "get_time", "arguments": {}},
            },
        ],
    }
    assert messages[2:] == [
        {"role": "tool", "content": "noon", "tool_name": "get_time"},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        {"role": "tool", "content": "?"},  # no call with that id: Ollama's name is optional
    ]


def test_a_legacy_function_message_becomes_a_tool_result():
    messages = [
        {"role": "user", "content": "time?"},
        {"role": "function", "name": "get_time", "content": "noon"},
    ]

    assert sent(chat(messages=messages))["messages"][1] == {
        "role": "tool",
        "content": "noon",
        "tool_name": "get_time",
    }


@pytest.mark.parametrize("arguments", ["not json", "[1, 2]", '"text"'])
def test_tool_arguments_that_are_no_json_object_are_refused(arguments):
    messages = copy.deepcopy(TOOL_ROUND_TRIP[:2])
    messages[1]["tool_calls"][0]["function"]["arguments"] = arguments

    error = refused(chat(messages=messages))

    assert error.param == "messages[1].tool_calls[0].function.arguments"


def test_tools_keep_name_description_and_parameters():
    body = sent(chat(tools=[WEATHER_TOOL], tool_choice="auto", parallel_tool_calls=True))

    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]


def test_a_tool_without_parameters_gets_an_empty_object_schema():
    tool = {"type": "function", "function": {"name": "now"}}

    [sent_tool] = sent(chat(tools=[tool]))["tools"]

    assert sent_tool["function"]["parameters"] == {"type": "object", "properties": {}}


def test_tool_choice_none_sends_no_tools():
    assert "tools" not in sent(chat(tools=[WEATHER_TOOL], tool_choice="none"))


def test_a_custom_tool_is_refused():
    error = refused(chat(tools=[{"type": "custom", "custom": {"name": "x"}}]))

    assert error.param == "tools[0].type"


UNSUPPORTED = [
    pytest.param("n", {"n": 2}, id="n"),
    pytest.param("logprobs", {"logprobs": True}, id="logprobs"),
    pytest.param("top_logprobs", {"logprobs": False, "top_logprobs": 3}, id="top-logprobs"),
    pytest.param("logit_bias", {"logit_bias": {"50256": -100}}, id="logit-bias"),
    pytest.param("audio", {"audio": {"voice": "alloy", "format": "wav"}}, id="audio"),
    pytest.param("modalities", {"modalities": ["text", "audio"]}, id="modalities"),
    pytest.param(
        "prediction", {"prediction": {"type": "content", "content": "x"}}, id="prediction"
    ),
    pytest.param("functions", {"functions": [{"name": "f"}]}, id="functions"),
    pytest.param(
        "tool_choice", {"tools": [WEATHER_TOOL], "tool_choice": "required"}, id="required"
    ),
    pytest.param(
        "tool_choice",
        {"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "x"}}},
        id="named-tool",
    ),
    pytest.param(
        "parallel_tool_calls",
        {"tools": [WEATHER_TOOL], "parallel_tool_calls": False},
        id="no-parallel-calls",
    ),
]


@pytest.mark.parametrize(("param", "fields"), UNSUPPORTED)
def test_what_ollama_cannot_honour_is_a_400_naming_it(param, fields):
    error = refused(chat(**fields))

    assert error.status == 400
    assert error.param == param
    assert error.code == "unsupported_parameter"
    assert "provider ollama" in error.message
    spec.validate("ErrorResponse", to_openai_error(error))


@pytest.mark.parametrize(("param", "fields"), UNSUPPORTED)
def test_with_drop_unsupported_it_is_dropped(param, fields):
    body = sent(chat(**fields), LENIENT)

    assert param not in body
    assert "tool_choice" not in body


def test_harmless_parameters_are_accepted_and_not_sent():
    request = chat(
        n=1,
        logprobs=False,
        user="u1",
        store=True,
        metadata={"a": "b"},
        service_tier="auto",
        modalities=["text"],
        reasoning_effort="low",
    )

    assert set(sent(request)) == {"model", "messages", "stream"}


def test_drop_params_remove_parameters_before_translation():
    upstream = UpstreamConfig(provider="ollama", base_url="http://h", drop_params=("seed",))

    assert sent(chat(seed=5, temperature=1), upstream)["options"] == {"temperature": 1}


def test_the_clients_body_is_not_modified():
    request = chat(messages=copy.deepcopy(TOOL_ROUND_TRIP), tools=[WEATHER_TOOL], stop="x")
    before = copy.deepcopy(request.body)

    sent(request)

    assert request.body == before


def test_health_probe_and_model_list_requests():
    probe = OLLAMA.health_probe(CLOUD)
    models = OLLAMA.models_request(LOCAL)

    assert (probe.method, probe.url, probe.body) == ("GET", "https://ollama.com/api/version", None)
    assert probe.headers["authorization"] == f"Bearer {KEY}"
    assert (models.method, models.url) == ("GET", "http://127.0.0.1:11434/api/tags")
    assert "authorization" not in models.headers


def test_parse_models_reads_the_fakes_tags():
    body = DIALECT.info(record(None, TAGS_PATH), ["llama3.2:latest", "qwen3:8b"])

    assert OLLAMA.parse_models(body) == ("llama3.2:latest", "qwen3:8b")


@pytest.mark.parametrize("body", [b"<html>", b"[]", b'{"data": []}'])
def test_parse_models_refuses_what_is_no_tag_list(body):
    with pytest.raises(UpstreamError):
        OLLAMA.parse_models(body)


# ---------------------------------------------------------------- completions


def answer(reply: Reply, request: ChatRequest | None = None) -> dict[str, Any]:
    request = request or chat()
    upstream_body = sent(request)
    completion = OLLAMA.parse_response(
        DIALECT.completion(record(upstream_body), reply), request, "up"
    )
    spec.validate("CreateChatCompletionResponse", completion)
    return dict(completion)


def test_a_text_answer_is_a_chat_completion():
    completion = answer(Reply(content="Hi there, friend"))

    assert completion["id"] == "chatcmpl-req42"
    assert completion["created"] == 1700000000
    assert completion["model"] == "llama3.2:latest"  # what Ollama reports
    assert completion["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hi there, friend", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert completion["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def test_a_length_stop_is_length():
    assert answer(Reply(finish_reason="length"))["choices"][0]["finish_reason"] == "length"


def test_tool_calls_get_string_arguments_stable_ids_and_finish_tool_calls():
    reply = Reply.tools(
        ToolCall("get_weather", '{"city": "Paris"}'), ToolCall("get_time", "{}", id="call_x1")
    )

    first, again = answer(reply), answer(reply)

    choice = first["choices"][0]
    assert choice["finish_reason"] == "tool_calls"  # Ollama said "stop"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {
            "id": call_id("chatcmpl-req42", 0),
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        },
        {
            "id": "call_x1",  # newer Ollama sends ids: kept
            "type": "function",
            "function": {"name": "get_time", "arguments": "{}"},
        },
    ]
    assert again["choices"] == first["choices"]


def test_made_up_call_ids_differ_between_requests_and_positions():
    assert len({call_id("chatcmpl-a", 0), call_id("chatcmpl-a", 1), call_id("chatcmpl-b", 0)}) == 3


def test_text_said_with_tool_calls_is_kept():
    completion = answer(Reply.tools(ToolCall("f", "{}"), content="Let me check."))

    assert completion["choices"][0]["message"]["content"] == "Let me check."


def test_missing_counts_are_zero():
    body = {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True}

    completion = OLLAMA.parse_response(orjson.dumps(body), chat(), "up")

    assert completion["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    spec.validate("CreateChatCompletionResponse", completion)


def test_thinking_is_not_relayed():
    body = {
        "model": "qwen3",
        "message": {"role": "assistant", "content": "4", "thinking": "2+2 is 4"},
        "done": True,
        "done_reason": "stop",
    }

    completion = OLLAMA.parse_response(orjson.dumps(body), chat(), "up")

    assert completion["choices"][0]["message"]["content"] == "4"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html>", id="html"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'{"message": {"content": "x"}, "done": false}', id="not-done"),
        pytest.param(b'{"done": true}', id="no-message"),
        pytest.param(b'{"message": {"content": 5}, "done": true}', id="content-number"),
        pytest.param(b'{"message": {"tool_calls": {}}, "done": true}', id="calls-object"),
        pytest.param(
            b'{"message": {"tool_calls": [{"function": {"arguments": {}}}]}, "done": true}',
            id="call-without-name",
        ),
        pytest.param(
            b'{"message": {"tool_calls": [{"function": {"name": "f", "arguments": 5}}]},'
            b' "done": true}',
            id="arguments-number",
        ),
    ],
)
def test_a_body_that_is_not_an_ollama_chat_is_an_upstream_error(body):
    with pytest.raises(UpstreamError) as info:
        OLLAMA.parse_response(body, chat(), "up")

    assert info.value.status == 502
    assert "'up'" in info.value.message


# ---------------------------------------------------------------- streams


def stream_bytes(reply: Reply, request: ChatRequest) -> bytes:
    return b"".join(DIALECT.stream(record(sent(request)), reply))


def decode(data: bytes, request: ChatRequest, size: int | None = None) -> tuple[list[Any], Any]:
    decoder = OLLAMA.stream_decoder(request, "up", SECRETS)
    chunks: list[Any] = []
    step = size or len(data) or 1
    for i in range(0, len(data), step):
        chunks.extend(decoder.feed(data[i : i + step]))
    chunks.extend(decoder.close())
    return chunks, decoder


def checked(chunks: list[Any]) -> list[dict[str, Any]]:
    """The chunks as a client reads them: every one spec-valid, the stream's invariants kept."""
    body = b"".join(encode_event(chunk) for chunk in chunks) + DONE
    return spec.validate_stream(body)


STREAMED = Reply(content="Héllo wörld 🌍 again")


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_text_stream_becomes_chunks(include_usage):
    request = chat(stream=True, stream_options={"include_usage": include_usage})

    chunks, decoder = decode(stream_bytes(STREAMED, request), request)

    checked(chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    [choice] = spec.assemble(chunks)
    assert choice["content"] == "Héllo wörld 🌍 again"
    assert choice["finish_reason"] == "stop"
    assert all(c["id"] == "chatcmpl-req42" and c["created"] == 1700000000 for c in chunks)
    assert all(c["model"] == "llama3.2:latest" for c in chunks)
    usage = {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    assert decoder.usage == usage
    if include_usage:
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == usage
    else:
        assert all("usage" not in c for c in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_split_at_every_byte_the_stream_decodes_the_same():
    request = chat(stream=True, stream_options={"include_usage": True})
    data = stream_bytes(Reply.tools(ToolCall("f", '{"q": "é"}'), content="Ünïcode"), request)
    whole, _ = decode(data, request)

    for cut in range(1, len(data)):
        decoder = OLLAMA.stream_decoder(request, "up", SECRETS)
        chunks = decoder.feed(data[:cut]) + decoder.feed(data[cut:]) + decoder.close()
        assert chunks == whole, f"split at byte {cut}"
    one_by_one, _ = decode(data, request, size=1)
    assert one_by_one == whole


def test_streamed_tool_calls_are_announced_then_sent_whole():
    request = chat(stream=True, tools=[WEATHER_TOOL])
    reply = Reply.tools(ToolCall("get_weather", '{"city": "Paris"}'), ToolCall("get_time", id="c9"))

    chunks, _ = decode(stream_bytes(reply, request), request)

    checked(chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[1:5] == [
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": call_id("chatcmpl-req42", 0),
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":"Paris"}'}}]},
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "c9",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},
    ]
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "tool_calls",  # Ollama's done_reason was "stop"
    }


def test_streamed_and_whole_answers_give_the_same_calls():
    reply = Reply.tools(ToolCall("get_weather", '{"city": "Paris"}'))
    request = chat(stream=True, tools=[WEATHER_TOOL])

    chunks, _ = decode(stream_bytes(reply, request), request)
    [choice] = spec.assemble(chunks)
    whole = answer(reply, chat(tools=[WEATHER_TOOL]))

    assert choice["tool_calls"] == whole["choices"][0]["message"]["tool_calls"]


def test_a_length_stop_streams_length():
    request = chat(stream=True)

    chunks, _ = decode(stream_bytes(Reply(finish_reason="length"), request), request)

    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_a_last_line_without_newline_is_read_at_close():
    request = chat(stream=True)
    data = stream_bytes(Reply(content="ok"), request).rstrip(b"\n")

    chunks, decoder = decode(data, request)

    assert decoder.done
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_an_error_line_mid_stream_is_stream_interrupted_with_the_key_masked():
    request = chat(stream=True)
    lines = DIALECT.stream(record(sent(request)), Reply(content="one two three"))
    decoder = OLLAMA.stream_decoder(request, "up", SECRETS)
    assert decoder.feed(lines[0])

    with pytest.raises(StreamInterrupted) as info:
        decoder.feed(error_line(f"runner for key {KEY} crashed"))

    assert KEY not in info.value.message
    assert "crashed" in info.value.message
    assert info.value.code == "stream_interrupted"
    assert info.value.fallback


def test_a_stream_without_its_done_line_is_interrupted_at_close():
    request = chat(stream=True)
    data = stream_bytes(Reply(content="cut short", send_done=False), request)
    decoder = OLLAMA.stream_decoder(request, "up", SECRETS)
    assert decoder.feed(data)

    with pytest.raises(StreamInterrupted):
        decoder.close()


def test_an_empty_stream_is_interrupted_at_close():
    with pytest.raises(StreamInterrupted):
        OllamaStreamDecoder(chat(stream=True), "up", SECRETS).close()


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"data: {}\n", id="sse"),
        pytest.param(b"[1]\n", id="array"),
        pytest.param(b'{"message": "hi", "done": false}\n', id="message-string"),
        pytest.param(b'{"message": {"content": "x"}}\n', id="no-done"),
        pytest.param(b'{"message": {"tool_calls": [{}]}, "done": false}\n', id="bad-call"),
    ],
)
def test_a_line_that_is_not_ollamas_is_stream_interrupted(line):
    decoder = OLLAMA.stream_decoder(chat(stream=True), "up", SECRETS)

    with pytest.raises(StreamInterrupted):
        decoder.feed(line)


def test_lines_after_done_are_ignored():
    request = chat(stream=True)
    data = stream_bytes(Reply(content="x"), request)

    chunks, _ = decode(data + b'{"late": true}\n', request)

    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# ---------------------------------------------------------------- errors


def error(status: int, message: str = "boom", headers: Any = None) -> Any:
    return OLLAMA.parse_error(
        status, headers or {}, orjson.dumps({"error": message}), "up", SECRETS
    )


def test_model_not_found_is_a_404_passed_through():
    rejected = error(404, 'model "llama9" not found, try pulling it first')

    assert isinstance(rejected, UpstreamRejected)
    assert rejected.status == 404
    assert rejected.code == "model_not_found"
    assert rejected.message == 'model "llama9" not found, try pulling it first'
    assert not rejected.fallback
    spec.validate("ErrorResponse", to_openai_error(rejected))


def test_a_400_is_passed_through_with_ollamas_message():
    rejected = error(400, "invalid format")

    assert isinstance(rejected, UpstreamRejected)
    assert (rejected.status, rejected.message) == (400, "invalid format")


@pytest.mark.parametrize(
    ("status", "gateway_status", "code"),
    [
        (401, 502, "upstream_auth_failed"),
        (500, 502, "upstream_error"),
        (503, 503, "upstream_overloaded"),
    ],
)
def test_server_side_errors_fall_back(status, gateway_status, code):
    failed = error(status, f"failed with {KEY}")

    assert failed.status == gateway_status
    assert failed.code == code
    assert failed.fallback
    assert KEY not in failed.message


def test_a_429_keeps_retry_after():
    limited = error(429, "too many requests", {"retry-after": "3"})

    assert isinstance(limited, RateLimited)
    assert limited.headers == {"retry-after": "3"}


def test_the_fakes_error_bodies_read_back():
    body = DIALECT.error_body(404, ApiError())

    rejected = OLLAMA.parse_error(404, {}, body, "up", SECRETS)

    assert "not found, try pulling it first" in rejected.message
