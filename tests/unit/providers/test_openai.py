"""gateway/providers/openai.py: requests out, completions/chunks/errors back, keys never shown."""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import orjson
import pytest

from gateway.config import Secret, Target, UpstreamConfig
from gateway.errors import (
    GatewayError,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    to_openai_error,
)
from gateway.openai_types import ChatRequest
from gateway.providers.base import MAX_ERROR_MESSAGE, error_details
from gateway.providers.openai import (
    MOCK_BASE_URL,
    OPENAI,
    OpenAIStreamDecoder,
    normalize_completion,
)
from gateway.request_parser import parse_chat_request
from tests import spec

KEY = "sk-upstream-0123456789abcdef"
OTHER_SECRET = "org-header-secret-value"
SECRETS = (KEY, OTHER_SECRET)
TARGET = Target(upstream="up", model="target-model")
UPSTREAM = UpstreamConfig(
    provider="openai",
    base_url="https://api.example.com/v1/",
    api_key=Secret(KEY),
    headers={"openai-organization": OTHER_SECRET, "x-extra": "1"},
)
KEYLESS = UpstreamConfig(provider="openai", base_url="http://127.0.0.1:8000/v1")


def chat(forward_headers: dict[str, str] | None = None, **fields: Any) -> ChatRequest:
    body: dict[str, Any] = {
        "model": "public-model",
        "messages": [{"role": "user", "content": "hi"}],
    }
    body.update(fields)
    return parse_chat_request(json.dumps(body).encode(), forward_headers or {})


def sent_body(request: ChatRequest, upstream: UpstreamConfig = UPSTREAM) -> dict[str, Any]:
    outgoing = OPENAI.build_request(request, TARGET, upstream)
    assert outgoing.body is not None
    body: dict[str, Any] = orjson.loads(outgoing.body)
    return body


# ---------------------------------------------------------------- build_request


def test_build_request_posts_to_chat_completions_with_the_targets_model():
    request = chat(temperature=0.5, x_unknown={"kept": [1, 2]}, reasoning_effort="low")

    outgoing = OPENAI.build_request(request, TARGET, UPSTREAM)

    assert outgoing.method == "POST"
    assert outgoing.url == "https://api.example.com/v1/chat/completions"
    assert outgoing.body is not None
    body = orjson.loads(outgoing.body)
    assert body == {**request.body, "model": "target-model"}
    assert body["x_unknown"] == {"kept": [1, 2]}
    assert body["reasoning_effort"] == "low"
    assert request.body["model"] == "public-model"  # the client's body is not modified
    assert outgoing.headers["accept"] == "application/json"
    assert outgoing.headers["content-type"] == "application/json"


def test_build_request_for_the_mock_uses_the_internal_base_url():
    mock = UpstreamConfig(provider="mock")

    outgoing = OPENAI.build_request(chat(), TARGET, mock)

    assert outgoing.url == MOCK_BASE_URL + "/chat/completions"
    assert "authorization" not in outgoing.headers


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param(None, {"include_usage": True}, id="no-options"),
        pytest.param({"include_usage": False}, {"include_usage": True}, id="client-said-no"),
        pytest.param(
            {"include_obfuscation": False, "vendor": 1},
            {"include_obfuscation": False, "vendor": 1, "include_usage": True},
            id="other-options-kept",
        ),
    ],
)
def test_streams_always_ask_for_usage_keeping_other_stream_options(options, expected):
    fields: dict[str, Any] = {"stream": True}
    if options is not None:
        fields["stream_options"] = options
    request = chat(**fields)
    before = copy.deepcopy(request.body)

    body = sent_body(request)

    assert body["stream_options"] == expected
    assert body["stream"] is True
    assert request.body == before
    assert OPENAI.build_request(request, TARGET, UPSTREAM).headers["accept"] == "text/event-stream"


def test_a_non_stream_request_gets_no_stream_options_added():
    assert "stream_options" not in sent_body(chat())
    assert sent_body(chat(stream=False, stream_options={"x": 1}))["stream_options"] == {"x": 1}


def test_authorization_comes_from_the_upstream_key_not_the_client():
    request = chat(forward_headers={"authorization": "Bearer client-key", "x-trace-id": "t1"})

    headers = OPENAI.build_request(request, TARGET, UPSTREAM).headers

    assert headers["authorization"] == f"Bearer {KEY}"
    assert "client-key" not in json.dumps(dict(headers))
    assert headers["x-trace-id"] == "t1"


def test_a_keyless_upstream_never_gets_the_clients_authorization():
    request = chat(forward_headers={"authorization": "Bearer client-key"})

    headers = OPENAI.build_request(request, TARGET, KEYLESS).headers

    assert "authorization" not in {k.lower() for k in headers}


def test_upstream_headers_are_added_and_cannot_replace_the_gateways_own():
    upstream = UpstreamConfig(
        provider="openai",
        base_url="https://x/v1",
        api_key=Secret(KEY),
        headers={"x-extra": "1", "content-type": "text/plain", "user-agent": "evil"},
    )
    request = chat(forward_headers={"x-extra": "client", "x-forwarded-thing": "kept"})

    headers = OPENAI.build_request(request, TARGET, upstream).headers

    assert headers["x-extra"] == "1"  # the upstream's setting wins over the client's
    assert headers["x-forwarded-thing"] == "kept"
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "llm-gateway"
    assert headers["authorization"] == f"Bearer {KEY}"


def test_an_empty_key_sends_no_authorization():
    upstream = UpstreamConfig(provider="openai", base_url="https://x/v1", api_key=Secret(""))

    assert "authorization" not in OPENAI.build_request(chat(), TARGET, upstream).headers


def test_the_request_repr_does_not_show_headers():
    outgoing = OPENAI.build_request(chat(), TARGET, UPSTREAM)

    assert KEY not in repr(outgoing)
    assert "https://api.example.com/v1/chat/completions" in repr(outgoing)


def test_health_probe_gets_models_with_the_key():
    probe = OPENAI.health_probe(UPSTREAM)

    assert probe.method == "GET"
    assert probe.url == "https://api.example.com/v1/models"
    assert probe.headers["authorization"] == f"Bearer {KEY}"
    assert probe.body is None


# ---------------------------------------------------------------- completions


def test_normalize_completion_fills_what_compatible_servers_omit():
    data = {
        "choices": [
            {"message": {"content": "Hello"}},
            {
                "message": {
                    "role": "assistant",
                    "tool_calls": [{"id": "call_1", "function": {"name": "f", "arguments": "{}"}}],
                }
            },
            {"index": 2, "message": {"content": "cut"}, "finish_reason": "length"},
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7},
    }

    completion = normalize_completion(data, "up")

    spec.validate("CreateChatCompletionResponse", completion)
    assert completion["object"] == "chat.completion"
    first, second, third = completion["choices"]
    assert first["index"] == 0
    assert first["logprobs"] is None
    assert first["finish_reason"] == "stop"
    assert first["message"] == {"role": "assistant", "content": "Hello", "refusal": None}
    assert second["index"] == 1
    assert second["finish_reason"] == "tool_calls"
    assert second["message"]["content"] is None
    assert second["message"]["refusal"] is None
    assert second["message"]["tool_calls"][0]["type"] == "function"
    assert third["finish_reason"] == "length"
    assert completion.get("usage") == {
        "prompt_tokens": 5,
        "completion_tokens": 7,
        "total_tokens": 12,
    }


def test_normalize_completion_keeps_what_the_upstream_sent():
    data = {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_1",
        "service_tier": "default",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }

    completion = normalize_completion(copy.deepcopy(data), "up")

    assert completion == data
    spec.validate("CreateChatCompletionResponse", completion)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"usage": None}, id="usage-null"),
        pytest.param({"usage": "lots"}, id="usage-string"),
        pytest.param({"id": None, "created": None, "model": None}, id="null-id-created-model"),
    ],
)
def test_normalize_completion_gives_a_spec_valid_completion_or_an_upstream_error(extra):
    data = {"choices": [{"message": {"content": "x"}}], **extra}

    try:
        completion = normalize_completion(data, "up")
    except UpstreamError:
        return  # refusing the body is as good as repairing it
    spec.validate("CreateChatCompletionResponse", completion)


def test_parse_response_reads_a_completion_body():
    body = orjson.dumps({"choices": [{"message": {"content": "Hi"}}]})

    completion = OPENAI.parse_response(body, chat(), "up")

    assert completion["choices"][0]["message"]["content"] == "Hi"
    spec.validate("CreateChatCompletionResponse", completion)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html>Bad gateway</html>", id="html"),
        pytest.param(b"", id="empty"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'{"object": "list", "data": []}', id="no-choices"),
        pytest.param(b'{"choices": {"0": {}}}', id="choices-object"),
        pytest.param(b'{"choices": [{"text": "legacy completion"}]}', id="no-message"),
        pytest.param(b'{"choices": [5]}', id="choice-not-object"),
        pytest.param(b'{"choices": [{"message": "hi"}]}', id="message-string"),
    ],
)
def test_a_body_that_is_not_a_completion_is_an_upstream_error(body):
    with pytest.raises(UpstreamError) as info:
        OPENAI.parse_response(body, chat(), "up")

    assert info.value.status == 502
    assert info.value.fallback
    assert "'up'" in info.value.message


def test_non_list_tool_calls_are_an_upstream_error():
    with pytest.raises(UpstreamError):
        normalize_completion({"choices": [{"message": {"tool_calls": 5}}]}, "up")


# ---------------------------------------------------------------- streams


def sse(*events: object) -> bytes:
    out = b""
    for event in events:
        data = event if isinstance(event, bytes) else orjson.dumps(event)
        out += b"data: " + data + b"\n\n"
    return out


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [choice],
        **extra,
    }


USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
UPSTREAM_STREAM = sse(
    chunk({"role": "assistant", "content": ""}, usage=None),
    chunk({"content": "Hel"}, usage=None),
    chunk({"content": "lo"}, usage=None),
    chunk({}, "stop", usage=None),
    {**chunk({}), "choices": [], "usage": USAGE},
    b"[DONE]",
)


def decode_all(data: bytes, include_usage: bool, size: int = 17) -> tuple[list[Any], Any]:
    decoder = OPENAI.stream_decoder(
        chat(stream=True, stream_options={"include_usage": include_usage}), "up", SECRETS
    )
    chunks: list[Any] = []
    for i in range(0, len(data), size):
        chunks.extend(decoder.feed(data[i : i + size]))
    chunks.extend(decoder.close())
    return chunks, decoder


def test_the_usage_chunk_is_removed_when_the_client_did_not_ask():
    chunks, decoder = decode_all(UPSTREAM_STREAM, include_usage=False)

    assert len(chunks) == 4
    assert all("usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert decoder.usage == USAGE  # still counted by the gateway
    assert decoder.done
    for c in chunks:
        spec.validate("CreateChatCompletionStreamResponse", c)


def test_the_usage_chunk_is_kept_when_the_client_asked():
    chunks, decoder = decode_all(UPSTREAM_STREAM, include_usage=True)

    assert len(chunks) == 5
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == USAGE
    assert decoder.usage == USAGE
    for c in chunks:
        spec.validate("CreateChatCompletionStreamResponse", c)


def test_usage_on_every_chunk_is_dropped_when_the_client_did_not_ask():
    data = sse(
        chunk({"content": "a"}, usage={"prompt_tokens": 1, "completion_tokens": 1}),
        chunk({}, "stop", usage={"prompt_tokens": 1, "completion_tokens": 2}),
        b"[DONE]",
    )

    chunks, decoder = decode_all(data, include_usage=False)

    assert [("usage" in c) for c in chunks] == [False, False]
    assert decoder.usage == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


def test_missing_finish_reason_index_and_delta_are_filled():
    data = sse(
        {"id": "c", "created": 1, "model": "m", "choices": [{"delta": {"content": "x"}}]},
        {"id": "c", "created": 1, "model": "m", "choices": [{"finish_reason": "stop"}]},
    )

    chunks, decoder = decode_all(data, include_usage=False)

    assert chunks[0]["choices"][0] == {"delta": {"content": "x"}, "index": 0, "finish_reason": None}
    assert chunks[1]["choices"][0] == {"finish_reason": "stop", "index": 0, "delta": {}}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert decoder.finished
    assert not decoder.done
    for c in chunks:
        spec.validate("CreateChatCompletionStreamResponse", c)


def test_a_chunk_without_id_created_and_model_comes_out_spec_valid():
    chunks, _ = decode_all(sse({"choices": [{"delta": {"content": "x"}}]}, b"[DONE]"), False)

    spec.validate("CreateChatCompletionStreamResponse", chunks[0])


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(
            {
                "error": {
                    "message": f"key {KEY} hit a server error",
                    "type": "server_error",
                    "code": "overloaded",
                }
            },
            id="openai-shape",
        ),
        pytest.param({"error": f"failed for {KEY}", "error_type": "overloaded"}, id="tgi-shape"),
    ],
)
def test_an_error_event_raises_stream_interrupted_with_a_redacted_message(error):
    decoder = OPENAI.stream_decoder(chat(stream=True), "up", SECRETS)
    decoder.feed(sse(chunk({"content": "partial"})))

    with pytest.raises(StreamInterrupted) as info:
        decoder.feed(sse(error))

    assert KEY not in info.value.message
    assert "[REDACTED]" in info.value.message
    assert "'up'" in info.value.message
    assert info.value.code == "overloaded"
    assert info.value.status == 502


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(b"not json at all", id="text"),
        pytest.param(b'{"choices": [', id="truncated-json"),
        pytest.param(b"[1, 2]", id="array"),
        pytest.param(b'"a string"', id="string"),
        pytest.param(b'{"id": "x"}', id="no-choices"),
        pytest.param(b'{"choices": null}', id="null-choices"),
    ],
)
def test_a_malformed_event_raises_stream_interrupted(event):
    decoder = OpenAIStreamDecoder(False, "up", SECRETS)

    with pytest.raises(StreamInterrupted) as info:
        decoder.feed(sse(event))

    assert info.value.code == "stream_interrupted"
    assert "'up'" in info.value.message


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(b'{"choices": [1]}', id="choice-not-object"),
        pytest.param(b'{"choices": [], "usage": "lots"}', id="usage-string"),
    ],
)
def test_a_chunk_with_non_object_parts_raises_stream_interrupted(event):
    decoder = OpenAIStreamDecoder(False, "up", SECRETS)

    with pytest.raises(StreamInterrupted):
        decoder.feed(sse(event))


def test_close_before_done_without_a_finish_reason_raises():
    decoder = OpenAIStreamDecoder(False, "up", SECRETS)
    decoder.feed(sse(chunk({"content": "partial"})))

    with pytest.raises(StreamInterrupted) as info:
        decoder.close()

    assert "closed the stream before it finished" in info.value.message


def test_close_of_an_empty_stream_raises():
    with pytest.raises(StreamInterrupted):
        OpenAIStreamDecoder(False, "up", SECRETS).close()


def test_close_after_a_finish_reason_without_done_is_complete():
    decoder = OpenAIStreamDecoder(False, "up", SECRETS)
    decoder.feed(sse(chunk({"content": "x"}), chunk({}, "length")))

    assert decoder.close() == []
    assert decoder.finished


def test_close_after_done_is_complete():
    decoder = OpenAIStreamDecoder(True, "up", SECRETS)

    chunks = decoder.feed(sse(b"[DONE]"))

    assert chunks == []
    assert decoder.done
    assert decoder.close() == []


# ---------------------------------------------------------------- errors


def parse_error(
    status: int, body: bytes | str | dict[str, Any], headers: Any = None
) -> GatewayError:
    raw = (
        body
        if isinstance(body, bytes)
        else body.encode()
        if isinstance(body, str)
        else orjson.dumps(body)
    )
    return OPENAI.parse_error(status, headers or {}, raw, "up", SECRETS)


OPENAI_ERROR = {
    "error": {
        "message": "Invalid value for 'temperature'",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "invalid_value",
    }
}


@pytest.mark.parametrize("status", [400, 404, 409, 413, 415, 422])
def test_client_errors_are_passed_through_with_message_param_and_code(status):
    error = parse_error(status, OPENAI_ERROR)

    assert isinstance(error, UpstreamRejected)
    assert error.status == status
    assert error.message == "Invalid value for 'temperature'"
    assert error.param == "temperature"
    assert error.code == "invalid_value"
    assert error.type == "invalid_request_error"
    assert not error.fallback
    spec.validate("ErrorResponse", to_openai_error(error))


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_are_502_without_the_upstreams_message(status):
    body = {"error": {"message": f"Incorrect API key provided: {KEY}", "code": "invalid_api_key"}}

    error = parse_error(status, body)

    assert type(error) is UpstreamError
    assert error.status == 502
    assert error.code == "upstream_auth_failed"
    assert "Incorrect API key" not in error.message
    assert f"({status})" in error.message
    assert error.fallback


@pytest.mark.parametrize("status", [408, 504])
def test_upstream_timeouts_are_504(status):
    error = parse_error(status, "Gateway Timeout")

    assert isinstance(error, UpstreamTimeout)
    assert error.status == 504
    assert error.code == "upstream_timeout"
    assert error.fallback


def test_rate_limits_are_429_keeping_retry_after_headers():
    headers = httpx.Headers({"Retry-After": "7", "Retry-After-Ms": "6500", "X-Other": "no"})
    body = {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit"}}

    error = parse_error(429, body, headers)

    assert isinstance(error, RateLimited)
    assert error.status == 429
    assert error.type == "rate_limit_error"
    assert error.headers == {"retry-after": "7", "retry-after-ms": "6500"}
    assert "Rate limit reached" in error.message
    assert error.fallback


def test_a_rate_limit_without_retry_after_has_no_headers():
    assert parse_error(429, "slow down").headers == {}


@pytest.mark.parametrize("status", [503, 529])
def test_overload_is_503(status):
    error = parse_error(status, {"error": {"message": "Overloaded"}})

    assert type(error) is UpstreamError
    assert error.status == 503
    assert error.code == "upstream_overloaded"
    assert "Overloaded" in error.message
    assert error.fallback


@pytest.mark.parametrize("status", [500, 502, 520, 418])
def test_other_statuses_are_502_naming_the_status(status):
    error = parse_error(status, "Internal Server Error")

    assert type(error) is UpstreamError
    assert error.status == 502
    assert error.code == "upstream_error"
    assert f"status {status}: Internal Server Error" in error.message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            OPENAI_ERROR,
            (
                "Invalid value for 'temperature'",
                "invalid_request_error",
                "temperature",
                "invalid_value",
            ),
            id="openai",
        ),
        pytest.param(
            {"error": {"message": None, "code": 400}},
            ("no error message", None, None, "400"),
            id="openai-without-message",
        ),
        pytest.param(
            {"error": "Input validation error: `inputs` too long", "error_type": "validation"},
            ("Input validation error: `inputs` too long", "validation", None, None),
            id="tgi",
        ),
        pytest.param({"detail": "Not Found"}, ("Not Found", None, None, None), id="fastapi"),
        pytest.param(
            {"message": "model is loading", "type": "unavailable"},
            ("model is loading", "unavailable", None, None),
            id="bare-message",
        ),
        pytest.param(
            "upstream connect error\n", ("upstream connect error", None, None, None), id="text"
        ),
        pytest.param(b"", ("no error message", None, None, None), id="empty"),
        pytest.param(b"  \n", ("no error message", None, None, None), id="whitespace"),
        pytest.param(b"\xff\xfe oops", ("\ufffd\ufffd oops", None, None, None), id="binary"),
        pytest.param(b"[1, 2]", ("[1, 2]", None, None, None), id="json-array"),
    ],
)
def test_error_details_read_every_error_body_shape(body, expected):
    raw = (
        body
        if isinstance(body, bytes)
        else body.encode()
        if isinstance(body, str)
        else orjson.dumps(body)
    )

    assert error_details(raw) == expected


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"error": {"message": "Bad: too long"}}, id="openai"),
        pytest.param({"error": "Bad: too long", "error_type": "validation"}, id="tgi"),
        pytest.param({"detail": "Bad: too long"}, id="fastapi"),
        pytest.param("Bad: too long", id="text"),
    ],
)
def test_every_body_shape_reaches_the_client_as_the_message(body):
    error = parse_error(422, body)

    assert error.message == "Bad: too long"
    assert error.status == 422


def test_an_empty_error_body_still_gives_a_message():
    error = parse_error(400, b"")

    assert error.message == "no error message"


def test_an_upstream_error_type_is_kept_for_passed_through_errors():
    error = parse_error(400, {"error": "bad input", "error_type": "validation"})

    assert error.type == "validation"


def test_long_error_messages_are_truncated():
    error = parse_error(400, "x" * 5000)

    assert error.message == "x" * MAX_ERROR_MESSAGE


KEY_BODIES = [
    pytest.param({"error": {"message": f"Incorrect API key provided: {KEY}."}}, id="openai"),
    pytest.param({"error": f"bad key {KEY}", "error_type": "auth"}, id="tgi"),
    pytest.param({"detail": f"Authorization: Bearer {KEY}"}, id="fastapi"),
    pytest.param(f"echo: {KEY} and {OTHER_SECRET}", id="text"),
    pytest.param(f"https://up.example/v1?key={KEY}", id="url"),
]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 408, 422, 429, 500, 503, 504, 529])
@pytest.mark.parametrize("body", KEY_BODIES)
def test_the_upstream_key_never_appears_in_any_message(status, body):
    error = parse_error(status, body)

    rendered = json.dumps(to_openai_error(error)) + str(error) + repr(error.headers)
    assert KEY not in rendered
    assert OTHER_SECRET not in rendered


def test_a_key_cut_by_truncation_is_not_shown_in_part():
    key = "upstream-custom-key-0123456789"  # not `sk-` shaped: only the known secret masks it
    body = "x" * (MAX_ERROR_MESSAGE - 12) + key

    error = OPENAI.parse_error(400, {}, body.encode(), "up", (key,))

    assert key[:12] not in error.message


def test_models_are_listed_from_the_models_endpoint():
    probe = OPENAI.models_request(UPSTREAM)
    body = b'{"object": "list", "data": [{"id": "gpt-4o", "object": "model"}, {"id": "o3"}, 7]}'

    assert (probe.method, probe.url) == ("GET", "https://api.example.com/v1/models")
    assert probe.headers["authorization"] == "Bearer " + KEY
    assert OPENAI.parse_models(body) == ("gpt-4o", "o3")


@pytest.mark.parametrize("body", [b"<html>", b'{"data": 3}', b"[]"])
def test_a_model_list_that_is_not_one_is_an_upstream_error(body: bytes):
    with pytest.raises(UpstreamError):
        OPENAI.parse_models(body)
