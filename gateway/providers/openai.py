"""OpenAI and every OpenAI-compatible server (vLLM, llama.cpp, LiteLLM, Groq, Together, Mistral,
DeepSeek, TGI's Messages API), and the built-in mock, which speaks this format too.

The request goes out as the client sent it (unknown fields included) with the target's model
name, so new OpenAI parameters work before the gateway knows them. Quirks handled here, from
the API reference (platform.openai.com/docs/api-reference/chat) and the servers in the wild:
- Streams always ask for usage (`stream_options.include_usage`) so the gateway can count tokens;
  the trailing usage chunk and the `usage: null` on other chunks are removed again when the
  client did not ask for them.
- The spec requires `choices[].logprobs`, `message.refusal`, `message.content` and each chunk's
  `finish_reason` even when null; compatible servers often omit them, so they are filled in.
- Errors come as `{"error": {message, type, param, code}}` (OpenAI, vLLM), `{"error": "...",
  "error_type": ...}` (TGI), `{"detail": ...}` (FastAPI-based servers) or plain text.
- A stream that ends without `data: [DONE]` is complete only if a finish_reason was seen.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from gateway.config import Target, UpstreamConfig
from gateway.errors import (
    GatewayError,
    StreamInterrupted,
    UpstreamError,
)
from gateway.openai_types import ChatCompletion, ChatCompletionChunk, ChatRequest, Usage
from gateway.providers.base import (
    USER_AGENT,
    UpstreamRequest,
    error_details,
    error_from_status,
    request_body,
    stream_event,
    stream_failure,
)
from gateway.sse import SSEDecoder

MOCK_BASE_URL = "http://mock.gateway.internal/v1"


class OpenAITranslator:
    """Translator for `provider: openai` and `provider: mock`."""

    request_id_header = "x-request-id"

    def build_request(
        self, request: ChatRequest, target: Target, upstream: UpstreamConfig
    ) -> UpstreamRequest:
        body = request_body(request, upstream, "openai")
        body["model"] = target.model
        if request.stream:
            options = body.get("stream_options")
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        headers = {
            **request.forward_headers,
            **upstream.headers,
            "content-type": "application/json",
            "accept": "text/event-stream" if request.stream else "application/json",
            "user-agent": USER_AGENT,
        }
        if "authorization" not in upstream.headers:
            headers.pop("authorization", None)  # only ever the upstream's own credentials
        if upstream.api_key:
            headers["authorization"] = "Bearer " + upstream.api_key.reveal()
        return UpstreamRequest("POST", _base(upstream) + "/chat/completions", headers, _dumps(body))

    def parse_response(self, body: bytes, request: ChatRequest, upstream: str) -> ChatCompletion:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"upstream '{upstream}' returned a body that is not JSON") from None
        return normalize_completion(data, upstream)

    def parse_error(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        upstream: str,
        secrets: tuple[str, ...],
    ) -> GatewayError:
        return error_from_status(status, headers, *error_details(body), upstream, secrets)

    def stream_decoder(
        self, request: ChatRequest, upstream: str, secrets: tuple[str, ...]
    ) -> OpenAIStreamDecoder:
        return OpenAIStreamDecoder(request.include_usage, upstream, secrets)

    def health_probe(self, upstream: UpstreamConfig) -> UpstreamRequest:
        headers = {**upstream.headers, "accept": "application/json", "user-agent": USER_AGENT}
        if upstream.api_key:
            headers["authorization"] = "Bearer " + upstream.api_key.reveal()
        return UpstreamRequest("GET", _base(upstream) + "/models", headers)

    def models_request(self, upstream: UpstreamConfig) -> UpstreamRequest:
        return self.health_probe(upstream)

    def parse_models(self, body: bytes) -> tuple[str, ...]:
        """`{"object": "list", "data": [{"id": ...}, ...]}`."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError("the model list is not JSON") from None
        entries = data.get("data") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise UpstreamError("the model list has no data array")
        return tuple(
            e["id"] for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)
        )


def _base(upstream: UpstreamConfig) -> str:
    return (upstream.base_url or MOCK_BASE_URL).rstrip("/")


def _dumps(body: object) -> bytes:
    return orjson.dumps(body)


# ------------------------------------------------------------------- responses


def normalize_completion(data: object, upstream: str) -> ChatCompletion:
    """`data` as a spec-valid `chat.completion`. Raises UpstreamError if it cannot be one."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise UpstreamError(f"upstream '{upstream}' returned a body that is not a chat completion")
    data["object"] = "chat.completion"
    _fill_identity(data)
    for index, choice in enumerate(data["choices"]):
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise UpstreamError(f"upstream '{upstream}' returned a choice without a message")
        choice.setdefault("index", index)
        choice.setdefault("logprobs", None)
        if choice.get("finish_reason") is None:
            choice["finish_reason"] = "tool_calls" if message.get("tool_calls") else "stop"
        message.setdefault("role", "assistant")
        message.setdefault("content", None)
        message.setdefault("refusal", None)
        calls = message.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            raise UpstreamError(f"upstream '{upstream}' returned tool_calls that are not a list")
        for call in calls or ():
            if isinstance(call, dict):
                call.setdefault("type", "function")
    usage = data.get("usage")
    if isinstance(usage, dict):
        _complete_usage(usage)
    elif "usage" in data:
        del data["usage"]  # null or junk: the spec's usage is an object or absent
    return data  # type: ignore[return-value]  # shape checked above


def _fill_identity(data: dict[str, object]) -> None:
    """The spec requires id, created and model; some servers omit them or send null."""
    if not isinstance(data.get("id"), str):
        data["id"] = "chatcmpl-gateway"
    created = data.get("created")
    if not isinstance(created, int) or isinstance(created, bool):
        data["created"] = 0
    if not isinstance(data.get("model"), str):
        data["model"] = ""


def _complete_usage(usage: dict[str, object]) -> None:
    prompt = usage.setdefault("prompt_tokens", 0)
    completion = usage.setdefault("completion_tokens", 0)
    if "total_tokens" not in usage and isinstance(prompt, int) and isinstance(completion, int):
        usage["total_tokens"] = prompt + completion


class OpenAIStreamDecoder:
    """OpenAI SSE chunks in, spec-valid chunks out (see the module docstring for the rules)."""

    __slots__ = ("_include_usage", "_secrets", "_sse", "_upstream", "done", "finished", "usage")

    def __init__(self, include_usage: bool, upstream: str, secrets: tuple[str, ...]) -> None:
        self._sse = SSEDecoder()
        self._include_usage = include_usage
        self._upstream = upstream
        self._secrets = secrets
        self.done = False
        self.finished = False
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> list[ChatCompletionChunk]:
        chunks: list[ChatCompletionChunk] = []
        for event in self._sse.feed(data):
            if event.data == b"[DONE]":
                self.done = True
                continue
            chunk = stream_event(event.data, self._upstream)
            if "error" in chunk:
                message, kind, _, code = error_details(event.data)
                raise stream_failure(self._upstream, self._secrets, message, code or kind)
            usage = chunk.get("usage")
            if usage:
                if not isinstance(usage, dict):
                    raise StreamInterrupted(f"upstream '{self._upstream}' sent a malformed usage")
                _complete_usage(usage)
                self.usage = usage  # type: ignore[assignment]  # an object, completed above
            choices = chunk.get("choices")
            if not isinstance(choices, list):
                raise StreamInterrupted(f"upstream '{self._upstream}' sent a chunk without choices")
            if not self._include_usage:
                if not choices:
                    continue  # the usage chunk we asked for on our own account
                chunk.pop("usage", None)
            chunk["object"] = "chat.completion.chunk"
            _fill_identity(chunk)
            for index, choice in enumerate(choices):
                if not isinstance(choice, dict):
                    raise StreamInterrupted(f"upstream '{self._upstream}' sent a malformed choice")
                choice.setdefault("index", index)
                choice.setdefault("delta", {})
                if choice.setdefault("finish_reason", None) is not None:
                    self.finished = True
            chunks.append(chunk)  # type: ignore[arg-type]  # shape checked above
        return chunks

    def close(self) -> list[ChatCompletionChunk]:
        if not (self.done or self.finished):
            raise StreamInterrupted(
                f"upstream '{self._upstream}' closed the stream before it finished"
            )
        return []


OPENAI = OpenAITranslator()
