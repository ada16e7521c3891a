"""gateway/providers/tgi.py: TGI's Messages API in and out, against the fake's real bytes."""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
import pytest

from gateway.config import Secret, Target, UpstreamConfig
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
    UpstreamRejected,
)
from gateway.openai_types import ChatRequest
from gateway.providers.tgi import TGI
from gateway.request_parser import parse_chat_request
from tests import spec
from tests.fakes.tgi_upstream import CHAT_PATH, TGIDialect
from tests.fakes.upstream import ApiError, RecordedRequest, Reply, ToolCall

KEY = "hf-upstream-0123456789abcdef"
TARGET = Target(upstream="tgi", model="tgi")
UPSTREAM = UpstreamConfig(provider="tgi", base_url="http://127.0.0.1:8080/", api_key=Secret(KEY))
KEYLESS = UpstreamConfig(provider="tgi", base_url="http://127.0.0.1:8080")
DROPPING = UpstreamConfig(provider="tgi", base_url="http://x", drop_unsupported=True)
DIALECT = TGIDialect("org/model-7b")
WEATHER = ToolCall("get_weather", '{"city": "Paris", "unit": "c"}')


def chat(**fields: Any) -> ChatRequest:
    body: dict[str, Any] = {"model": "public", "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    return parse_chat_request(json.dumps(body).encode(), {"x-trace": "t1"})


def sent(request: ChatRequest, upstream: UpstreamConfig = UPSTREAM) -> dict[str, Any]:
    outgoing = TGI.build_request(request, TARGET, upstream)
    assert outgoing.body is not None
    body: dict[str, Any] = orjson.loads(outgoing.body)
    return body


def record(body: dict[str, Any]) -> RecordedRequest:
    raw = json.dumps(body).encode()
    return RecordedRequest(
        "POST", CHAT_PATH, "", {}, raw, body, "r1", time.monotonic(), route=CHAT_PATH
    )


def accepted(body: dict[str, Any]) -> dict[str, Any]:
    """`body`, after checking the fake TGI would take it."""
    assert DIALECT.problems(record(body)) == []
    return body


# ---------------------------------------------------------------- requests


def test_build_request_posts_the_messages_api_with_bearer_and_forwarded_headers():
    outgoing = TGI.build_request(chat(), TARGET, UPSTREAM)

    assert outgoing.method == "POST"
    assert outgoing.url == "http://127.0.0.1:8080/v1/chat/completions"
    assert outgoing.headers["authorization"] == f"Bearer {KEY}"
    assert outgoing.headers["x-trace"] == "t1"
    assert outgoing.headers["content-type"] == "application/json"
    assert accepted(sent(chat()))["model"] == "tgi"


def test_a_keyless_upstream_sends_no_authorization():
    headers = TGI.build_request(chat(), TARGET, KEYLESS).headers

    assert "authorization" not in headers


def test_openai_parameters_become_what_tgi_reads():
    body = accepted(
        sent(
            chat(
                max_completion_tokens=50,
                stop="END",
                top_p=1,
                temperature=0.2,
                seed=7,
                store=True,
                metadata={"a": "b"},
                user="u1",
                parallel_tool_calls=False,
                service_tier="auto",
                vendor_field=1,
                messages=[
                    {"role": "developer", "content": "Be brief."},
                    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                ],
            )
        )
    )

    assert body["max_tokens"] == 50
    assert body["stop"] == ["END"]
    assert "top_p" not in body
    assert body["temperature"] == 0.2
    assert body["seed"] == 7
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    for ignored in ("store", "metadata", "user", "parallel_tool_calls", "service_tier"):
        assert ignored not in body
    assert "vendor_field" not in body
    assert "max_completion_tokens" not in body


def test_max_tokens_wins_over_max_completion_tokens_and_top_p_below_one_is_kept():
    body = sent(chat(max_tokens=10, max_completion_tokens=99, top_p=0.9))

    assert body["max_tokens"] == 10
    assert body["top_p"] == 0.9


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        pytest.param({"type": "text"}, None, id="text"),
        pytest.param(
            {"type": "json_object"}, {"type": "json", "value": {"type": "object"}}, id="json-mode"
        ),
        pytest.param(
            {
                "type": "json_schema",
                "json_schema": {"name": "w", "schema": {"type": "object", "required": ["a"]}},
            },
            {"type": "json", "value": {"type": "object", "required": ["a"]}},
            id="json-schema",
        ),
    ],
)
def test_response_format_becomes_tgi_grammar(response_format, expected):
    body = accepted(sent(chat(response_format=response_format)))

    assert body.get("response_format") == expected


def test_tools_tool_choice_and_tool_results_go_as_sent():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "0", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "0", "content": "sunny"},
    ]
    body = accepted(sent(chat(tools=tools, tool_choice="required", messages=messages)))

    assert body["tools"] == tools
    assert body["tool_choice"] == "required"
    assert body["messages"] == messages


def test_streams_ask_for_usage_and_only_streams():
    assert accepted(sent(chat(stream=True)))["stream_options"] == {"include_usage": True}
    assert "stream_options" not in sent(chat(stream=False, stream_options={"include_usage": True}))


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"logit_bias": {"50256": -100}}, id="logit_bias"),
        pytest.param({"n": 2}, id="n"),
        pytest.param({"modalities": ["text", "audio"]}, id="modalities"),
        pytest.param({"prediction": {"type": "content", "content": "x"}}, id="prediction"),
        pytest.param(
            {
                "response_format": {"type": "json_object"},
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
            id="response_format",
        ),
    ],
)
def test_unsupported_parameters_are_refused_or_dropped(fields):
    name = next(iter(fields))

    with pytest.raises(InvalidRequest) as info:
        TGI.build_request(chat(**fields), TARGET, UPSTREAM)

    assert info.value.param == name
    assert "tgi" in info.value.message
    assert name not in sent(chat(**fields), DROPPING)


def test_n_of_one_is_fine():
    assert "n" not in sent(chat(n=1))


def test_a_content_part_tgi_cannot_read_is_refused_naming_it():
    part = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "x"}, part]}]

    with pytest.raises(InvalidRequest) as info:
        TGI.build_request(chat(messages=messages), TARGET, UPSTREAM)

    assert info.value.param == "messages[0].content[1]"


def test_health_and_info_requests():
    probe = TGI.health_probe(UPSTREAM)
    info = TGI.models_request(UPSTREAM)

    assert (probe.method, probe.url, probe.body) == ("GET", "http://127.0.0.1:8080/health", None)
    assert info.url == "http://127.0.0.1:8080/info"
    assert probe.headers["authorization"] == f"Bearer {KEY}"
    assert TGI.parse_models(DIALECT.info(record({}), ["org/m"])) == ("org/m",)
    with pytest.raises(UpstreamError):
        TGI.parse_models(b'{"version": "3.0.1"}')


# ---------------------------------------------------------------- completions


def test_a_text_completion_gets_the_gateways_id_and_tgis_model():
    request = chat()
    body = DIALECT.completion(record(sent(request)), Reply(content="Hello there"))

    completion = TGI.parse_response(body, request, "tgi")

    spec.validate("CreateChatCompletionResponse", completion)
    assert completion["id"] == request.id
    assert completion["model"] == "org/model-7b"
    assert completion["choices"][0]["message"]["content"] == "Hello there"
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion.get("usage", {})["total_tokens"] > 0


def test_a_tool_call_gets_string_arguments_and_finish_reason_tool_calls():
    request = chat()
    body = DIALECT.completion(record(sent(request)), Reply.tools(WEATHER))

    completion = TGI.parse_response(body, request, "tgi")

    spec.validate("CreateChatCompletionResponse", completion)
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"].get("tool_calls", [])
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris","unit":"c"}'}
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "unit": "c"}
    assert call["id"] == "0"


@pytest.mark.parametrize(("reported", "expected"), [("eos_token", "stop"), ("length", "length")])
def test_tgi_finish_reasons_are_said_in_openais_words(reported, expected):
    body = {
        "choices": [{"message": {"role": "assistant", "content": "x"}, "finish_reason": reported}]
    }

    completion = TGI.parse_response(orjson.dumps(body), chat(), "tgi")

    assert completion["choices"][0]["finish_reason"] == expected


@pytest.mark.parametrize("body", [b"<html>502</html>", b"[]", b'{"generated_text": "x"}'])
def test_a_body_that_is_not_a_completion_is_an_upstream_error(body):
    with pytest.raises(UpstreamError):
        TGI.parse_response(body, chat(), "tgi")


# ---------------------------------------------------------------- streams


def stream_bytes(request: ChatRequest, reply: Reply) -> bytes:
    return b"".join(DIALECT.stream(record(sent(request)), reply))


def decode(request: ChatRequest, data: bytes, size: int) -> tuple[list[Any], Any]:
    decoder = TGI.stream_decoder(request, "tgi", (KEY,))
    chunks: list[Any] = []
    for i in range(0, len(data), size):
        chunks.extend(decoder.feed(data[i : i + size]))
    chunks.extend(decoder.close())
    for chunk in chunks:
        spec.validate("CreateChatCompletionStreamResponse", chunk)
    body = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    spec.validate_stream(body.decode())
    return chunks, decoder


def check_contract(chunks: list[Any], include_usage: bool, reason: str) -> list[Any]:
    """The gateway's chunk contract; returns the choice chunks."""
    usage = [c for c in chunks if not c["choices"]]
    choices = [c for c in chunks if c["choices"]]
    opening = None if reason == "tool_calls" else ""
    assert choices[0]["choices"][0]["delta"] == {"role": "assistant", "content": opening}
    assert choices[-1]["choices"][0]["delta"] == {}
    assert choices[-1]["choices"][0]["finish_reason"] == reason
    assert all(c["choices"][0]["finish_reason"] is None for c in choices[:-1])
    assert [c.get("usage") for c in choices] == [None] * len(choices)
    assert [("usage" in c) for c in choices] == [include_usage] * len(choices)
    assert len(usage) == (1 if include_usage else 0)
    return choices


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_text_stream_split_at_every_byte(include_usage):
    request = chat(stream=True, stream_options={"include_usage": include_usage})
    data = stream_bytes(request, Reply(content="Héllo wörld ✓"))

    for size in (1, 2, 3, 7, len(data)):
        chunks, decoder = decode(request, data, size)
        choices = check_contract(chunks, include_usage, "stop")
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in choices)
        assert text == "Héllo wörld ✓"
        assert decoder.usage["completion_tokens"] == 3
        assert {c["id"] for c in chunks} == {request.id}


def test_a_tool_call_stream_ends_with_tool_calls_even_without_tgis_finish():
    request = chat(stream=True, stream_options={"include_usage": True})
    data = stream_bytes(request, Reply.tools(WEATHER))
    assert b'"finish_reason":"stop"' not in data  # TGI sends no finish chunk here

    chunks, _ = decode(request, data, 1)

    choices = check_contract(chunks, True, "tool_calls")
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in choices[1:-1]]
    assert calls[0] == {
        "index": 0,
        "id": "0",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert all(set(call) == {"index", "function"} for call in calls[1:])
    assert "".join(call["function"]["arguments"] for call in calls) == WEATHER.arguments


def test_usage_on_the_finish_chunk_of_tgi_2_moves_to_a_chunk_of_its_own():
    event = {
        "id": "",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"},
                     "finish_reason": "eos_token"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
    }  # fmt: skip
    data = b"data: " + orjson.dumps(event) + b"\n\ndata: [DONE]\n\n"

    chunks, decoder = decode(chat(stream=True, stream_options={"include_usage": True}), data, 5)

    check_contract(chunks, True, "stop")
    assert chunks[-1]["usage"] == event["usage"]
    assert decoder.usage == event["usage"]


def test_an_error_event_mid_stream_is_interrupted_and_redacted():
    decoder = TGI.stream_decoder(chat(stream=True), "tgi", (KEY,))
    decoder.feed(b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n')

    with pytest.raises(StreamInterrupted) as info:
        decoder.feed(
            b'data: {"error": "CUDA out of memory near ' + KEY.encode()
            + b'", "error_type": "generation"}\n\n'
        )  # fmt: skip

    assert KEY not in info.value.message
    assert info.value.code == "generation"


@pytest.mark.parametrize("data", [b"data: nope\n\n", b"data: [1]\n\n", b'data: {"id": ""}\n\n'])
def test_a_malformed_event_is_interrupted(data):
    with pytest.raises(StreamInterrupted):
        TGI.stream_decoder(chat(stream=True), "tgi", ()).feed(data)


def test_a_stream_cut_before_it_finished_raises_at_close():
    request = chat(stream=True)
    data = b"".join(DIALECT.stream(record(sent(request)), Reply(content="a b c"))[:2])
    decoder = TGI.stream_decoder(request, "tgi", ())
    decoder.feed(data)

    with pytest.raises(StreamInterrupted):
        decoder.close()


def test_a_stream_without_done_that_finished_is_complete():
    request = chat(stream=True)
    data = stream_bytes(request, Reply(content="a b", send_done=False))

    chunks, _ = decode(request, data, 4)

    check_contract(chunks, False, "stop")


# ---------------------------------------------------------------- errors


def parse_error(status: int, body: bytes, headers: Any = None) -> GatewayError:
    return TGI.parse_error(status, headers or {}, body, "tgi", (KEY,))


def test_a_validation_error_is_a_400_passed_through_with_its_message():
    body = orjson.dumps(
        {"error": "Input validation error: `top_p` must be > 0.0", "error_type": "validation"}
    )

    error = parse_error(422, body)

    assert isinstance(error, UpstreamRejected)
    assert error.status == 400
    assert error.code == "validation"
    assert error.message.startswith("Input validation error")
    assert not error.fallback


def test_overloaded_with_429_is_a_rate_limit_the_client_can_back_off_from():
    error = parse_error(429, DIALECT.error_body(429, ApiError()), {"retry-after": "1"})

    assert isinstance(error, RateLimited)
    assert error.status == 429
    assert error.headers == {"retry-after": "1"}
    assert error.fallback


def test_overloaded_with_another_status_is_a_retriable_503():
    error = parse_error(503, DIALECT.error_body(503, ApiError()))

    assert type(error) is UpstreamError
    assert error.status == 503
    assert error.code == "upstream_overloaded"
    assert error.fallback


def test_a_429_without_tgis_overloaded_type_is_a_rate_limit():
    error = parse_error(429, b"Too Many Requests", {"retry-after": "2"})

    assert isinstance(error, RateLimited)
    assert error.headers == {"retry-after": "2"}


@pytest.mark.parametrize("status", [424, 500])
def test_generation_failures_are_502(status):
    error = parse_error(status, DIALECT.error_body(status, ApiError()))

    assert type(error) is UpstreamError
    assert error.status == 502


def test_a_bare_401_is_an_auth_failure():
    error = parse_error(401, b"")

    assert error.code == "upstream_auth_failed"
