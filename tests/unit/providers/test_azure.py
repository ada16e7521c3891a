"""gateway/providers/azure.py: deployment URLs, api-key, and Azure's extra stream chunks."""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
import pytest

from gateway.config import Secret, Target, UpstreamConfig
from gateway.errors import RateLimited, StreamInterrupted, UpstreamError, UpstreamRejected
from gateway.openai_types import ChatRequest
from gateway.providers.azure import AZURE
from gateway.request_parser import parse_chat_request
from tests import spec
from tests.fakes.azure_upstream import CHAT_PATH, DEPLOYED_MODEL, AzureDialect
from tests.fakes.upstream import ApiError, RecordedRequest, Reply, ToolCall

KEY = "azure-key-0123456789abcdef"
TARGET = Target(upstream="azure", model="chat prod/1")
UPSTREAM = UpstreamConfig(
    provider="azure", base_url="https://myres.openai.azure.com/", api_key=Secret(KEY)
)
DIALECT = AzureDialect()
URL = "https://myres.openai.azure.com/openai/deployments/chat%20prod%2F1/chat/completions"


def chat(forward: dict[str, str] | None = None, **fields: Any) -> ChatRequest:
    body: dict[str, Any] = {"model": "public", "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    return parse_chat_request(json.dumps(body).encode(), forward or {})


def sent(request: ChatRequest, upstream: UpstreamConfig = UPSTREAM) -> dict[str, Any]:
    outgoing = AZURE.build_request(request, TARGET, upstream)
    assert outgoing.body is not None
    body: dict[str, Any] = orjson.loads(outgoing.body)
    return body


def record(body: dict[str, Any], query: str = "api-version=2024-10-21") -> RecordedRequest:
    return RecordedRequest(
        "POST",
        "/openai/deployments/d/chat/completions",
        query,
        {},
        json.dumps(body).encode(),
        body,
        "r1",
        time.monotonic(),
        route=CHAT_PATH,
        path_params={"deployment": "d"},
    )


# ---------------------------------------------------------------- requests


def test_build_request_uses_the_deployment_url_api_version_and_api_key():
    request = chat({"x-trace": "t1", "authorization": "Bearer client", "api-key": "client"})

    outgoing = AZURE.build_request(request, TARGET, UPSTREAM)

    assert outgoing.url == URL + "?api-version=2024-10-21"
    assert outgoing.headers["api-key"] == KEY
    assert "authorization" not in outgoing.headers
    assert outgoing.headers["x-trace"] == "t1"
    assert KEY not in repr(outgoing)


def test_the_api_version_comes_from_the_upstream():
    upstream = UpstreamConfig(
        provider="azure", base_url="https://r.openai.azure.com", api_version="2025-01-01-preview"
    )

    outgoing = AZURE.build_request(chat(), TARGET, upstream)

    assert outgoing.url.endswith("/chat/completions?api-version=2025-01-01-preview")
    assert "api-key" not in outgoing.headers


def test_the_body_is_openais_with_the_deployment_and_without_what_azure_does_not_know():
    request = chat(temperature=0.3, store=True, metadata={"a": "b"}, service_tier="auto", n=2)

    body = sent(request)

    assert DIALECT.problems(record(body)) == []
    assert body["model"] == "chat prod/1"
    assert body["temperature"] == 0.3
    assert body["n"] == 2
    for name in ("store", "metadata", "service_tier"):
        assert name not in body


def test_streams_ask_for_usage():
    body = sent(chat(stream=True))

    assert body["stream_options"] == {"include_usage": True}
    assert DIALECT.problems(record(body)) == []


def test_health_probe_lists_models_with_the_key():
    probe = AZURE.health_probe(UPSTREAM)

    assert probe.url == "https://myres.openai.azure.com/openai/models?api-version=2024-10-21"
    assert probe.headers["api-key"] == KEY
    listing = DIALECT.info(record({}), [DEPLOYED_MODEL])
    assert AZURE.parse_models(listing) == (DEPLOYED_MODEL,)


def test_an_upstream_without_base_url_is_an_upstream_error():
    with pytest.raises(UpstreamError):
        AZURE.build_request(chat(), TARGET, UpstreamConfig(provider="azure"))


# ---------------------------------------------------------------- completions


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(Reply(content="Hello"), id="text"),
        pytest.param(Reply.tools(ToolCall("f", '{"a": 1}')), id="tool"),
        pytest.param(Reply(content=None, finish_reason="content_filter"), id="filtered"),
    ],
)
def test_completions_are_spec_valid_and_keep_the_filter_results(reply):
    request = chat()
    body = DIALECT.completion(record(sent(request)), reply)

    completion = AZURE.parse_response(body, request, "azure")

    spec.validate("CreateChatCompletionResponse", completion)
    assert completion["model"] == DEPLOYED_MODEL
    assert "prompt_filter_results" in completion
    assert completion["choices"][0]["finish_reason"] == (reply.finish_reason or
        ("tool_calls" if reply.tool_calls else "stop"))  # fmt: skip


# ---------------------------------------------------------------- streams


def decode(request: ChatRequest, data: bytes, size: int) -> list[Any]:
    decoder = AZURE.stream_decoder(request, "azure", (KEY,))
    chunks: list[Any] = []
    for i in range(0, len(data), size):
        chunks.extend(decoder.feed(data[i : i + size]))
    chunks.extend(decoder.close())
    for chunk in chunks:
        spec.validate("CreateChatCompletionStreamResponse", chunk)
    assert decoder.usage is not None
    return chunks


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(Reply(content="Grüße ✓ aus Azure"), id="text"),
        pytest.param(Reply.tools(ToolCall("f", '{"city": "Zürich"}'), ToolCall("g")), id="tools"),
    ],
)
def test_annotation_chunks_are_dropped_at_every_split(reply, include_usage):
    request = chat(stream=True, stream_options={"include_usage": include_usage})
    data = b"".join(DIALECT.stream(record(sent(request)), reply))
    assert b"prompt_filter_results" in data

    for size in (1, 3, len(data)):
        chunks = decode(request, data, size)
        empty = [c for c in chunks if not c["choices"]]
        assert len(empty) == (1 if include_usage else 0)
        if include_usage:
            assert chunks[-1] is empty[0]
            assert chunks[-1]["usage"]["total_tokens"] > 0
        choices = [c for c in chunks if c["choices"]]
        assert choices[-1]["choices"][0]["finish_reason"] == (
            "tool_calls" if reply.tool_calls else "stop"
        )
        assert all(c["choices"][0]["delta"] for c in choices[:-1])
        assert all(c["id"] and c["object"] == "chat.completion.chunk" for c in chunks)


def test_a_filtered_stream_ends_with_content_filter():
    request = chat(stream=True)
    data = b"".join(DIALECT.stream(record(sent(request)), Reply(finish_reason="content_filter")))

    chunks = decode(request, data, 9)

    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"


def test_an_error_event_mid_stream_is_interrupted():
    decoder = AZURE.stream_decoder(chat(stream=True), "azure", (KEY,))

    with pytest.raises(StreamInterrupted):
        decoder.feed(b'data: {"error": {"message": "server_error", "code": "500"}}\n\n')


# ---------------------------------------------------------------- errors


def test_a_prompt_blocked_by_the_content_filter_is_a_400_with_its_code():
    body = DIALECT.error_body(400, ApiError(code="content_filter"))

    error = AZURE.parse_error(400, {}, body, "azure", (KEY,))

    assert isinstance(error, UpstreamRejected)
    assert error.status == 400
    assert error.code == "content_filter"
    assert error.param == "prompt"
    assert "content management policy" in error.message


def test_a_missing_deployment_or_api_version_is_a_404():
    error = AZURE.parse_error(404, {}, DIALECT.error_body(404, ApiError()), "azure", ())

    assert error.status == 404
    assert error.message == "Resource not found"
    assert error.code == "404"


def test_rate_limits_keep_retry_after():
    headers = {"retry-after": "1", "retry-after-ms": "800"}

    error = AZURE.parse_error(429, headers, DIALECT.error_body(429, ApiError()), "azure", ())

    assert isinstance(error, RateLimited)
    assert error.headers == headers


def test_a_wrong_key_is_an_auth_failure_without_the_message():
    error = AZURE.parse_error(401, {}, DIALECT.error_body(401, ApiError()), "azure", (KEY,))

    assert error.code == "upstream_auth_failed"
    assert "subscription key" not in error.message
