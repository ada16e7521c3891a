"""Ollama's answers as OpenAI's: a chat body becomes a completion, NDJSON lines become chunks.

This module owns the answer direction of `provider: ollama` (the rules are in `ollama.py`'s
docstring): tool calls get JSON-string arguments and made-up ids where Ollama sends none,
`done_reason` becomes finish_reason ("tool_calls" whenever the answer holds calls) and
`prompt_eval_count` / `eval_count` become usage. It is pure: ids and times come from the
`ChatRequest`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import StreamInterrupted, UpstreamError
from gateway.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Delta,
    FinishReason,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from gateway.providers.base import (
    error_details,
    new_chunk,
    new_usage,
    stream_event,
    stream_failure,
    usage_chunk,
)
from gateway.sse import NDJSONDecoder


def to_openai_completion(
    data: Mapping[str, Any], request: ChatRequest, upstream: str
) -> ChatCompletion:
    """Ollama's whole answer as a completion. Raises UpstreamError if it is not a chat."""
    message = data.get("message")
    if not isinstance(message, dict) or data.get("done") is not True:
        raise UpstreamError(f"upstream '{upstream}' returned a body that is not an Ollama chat")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise UpstreamError(f"upstream '{upstream}' returned content that is not text")
    calls = [
        _from_ollama_call(call, position, request.id, upstream)
        for position, call in enumerate(_call_list(message.get("tool_calls"), upstream))
    ]
    completion: ChatCompletion = {
        "id": request.id,
        "object": "chat.completion",
        "created": request.created,
        "model": _model(data, request),
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None if calls and not content else (content or ""),
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": _finish_reason(data.get("done_reason"), bool(calls)),
            }
        ],
        "usage": _usage(data),
    }
    if calls:
        completion["choices"][0]["message"]["tool_calls"] = calls
    return completion


def _model(data: Mapping[str, object], request: ChatRequest) -> str:
    model = data.get("model")
    return model if isinstance(model, str) and model else request.model


def _finish_reason(done_reason: object, has_calls: bool) -> FinishReason:
    if has_calls:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _usage(data: Mapping[str, object]) -> Usage:
    return new_usage(_count(data.get("prompt_eval_count")), _count(data.get("eval_count")))


def _call_list(calls: object, upstream: str) -> list[object]:
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise UpstreamError(f"upstream '{upstream}' returned tool_calls that are not a list")
    return calls


def call_id(request_id: str, position: int) -> str:
    """The id of the call at `position` in an answer to `request_id`, for calls sent without
    one: the same for every read of the same answer, different across requests."""
    return f"call_{request_id.removeprefix('chatcmpl-')}_{position}"


def _from_ollama_call(call: object, position: int, request_id: str, upstream: str) -> ToolCall:
    function = call.get("function") if isinstance(call, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(function, dict) or not isinstance(name, str):
        raise UpstreamError(f"upstream '{upstream}' returned a tool call without a name")
    arguments = function.get("arguments")
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):  # not Ollama's shape, but unambiguous: JSON text already
        text = arguments
    elif isinstance(arguments, dict):
        text = orjson.dumps(arguments).decode()
    else:
        raise UpstreamError(f"upstream '{upstream}' returned tool arguments that are not an object")
    given = call.get("id") if isinstance(call, dict) else None
    return {
        "id": given if isinstance(given, str) and given else call_id(request_id, position),
        "type": "function",
        "function": {"name": name, "arguments": text},
    }


class OllamaStreamDecoder:
    """Ollama NDJSON lines in, OpenAI chunks out (see `ollama.py`'s docstring for the rules)."""

    __slots__ = ("_calls", "_lines", "_model", "_request", "_secrets", "_upstream", "done", "usage")

    def __init__(self, request: ChatRequest, upstream: str, secrets: tuple[str, ...]) -> None:
        self._request = request
        self._upstream = upstream
        self._secrets = secrets
        self._lines = NDJSONDecoder()
        self._model: str | None = None  # set by the first line
        self._calls = 0
        self.done = False
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> list[ChatCompletionChunk]:
        chunks: list[ChatCompletionChunk] = []
        for line in self._lines.feed(data):
            chunks.extend(self._line(line))
        return chunks

    def close(self) -> list[ChatCompletionChunk]:
        chunks = self.feed(b"\n")  # a last line without its newline
        if not self.done:
            raise StreamInterrupted(
                f"upstream '{self._upstream}' closed the stream before it finished"
            )
        return chunks

    def _line(self, line: bytes) -> list[ChatCompletionChunk]:
        if self.done:
            return []
        data = stream_event(line, self._upstream)
        if "error" in data:
            text, kind, _, code = error_details(line)
            raise stream_failure(self._upstream, self._secrets, text, code or kind)
        message = data.get("message")
        if message is None:
            message = {}
        if not isinstance(message, dict) or not isinstance(data.get("done"), bool):
            raise StreamInterrupted(f"upstream '{self._upstream}' sent a malformed stream event")
        chunks: list[ChatCompletionChunk] = []
        if self._model is None:
            self._model = _model(data, self._request)
            chunks.append(self._chunk({"role": "assistant", "content": ""}))
        content = message.get("content")
        if isinstance(content, str) and content:
            chunks.append(self._chunk({"content": content}))
        try:
            for call in _call_list(message.get("tool_calls"), self._upstream):
                chunks.extend(self._call(call))
        except UpstreamError as exc:
            raise StreamInterrupted(exc.message) from None
        if data["done"]:
            self.done = True
            self.usage = _usage(data)
            chunks.append(self._chunk({}, _finish_reason(data.get("done_reason"), self._calls > 0)))
            if self._request.include_usage:
                chunks.append(usage_chunk(self._request, self._model, self.usage))
        return chunks

    def _call(self, call: object) -> list[ChatCompletionChunk]:
        """A whole call as two deltas: announced (index, id, name), then all its arguments."""
        index = self._calls
        self._calls += 1
        whole = _from_ollama_call(call, index, self._request.id, self._upstream)
        function = whole["function"]
        announce: ToolCallDelta = {
            "index": index,
            "id": whole["id"],
            "type": "function",
            "function": {"name": function["name"], "arguments": ""},
        }
        arguments: ToolCallDelta = {
            "index": index,
            "function": {"arguments": function["arguments"]},
        }
        return [self._chunk({"tool_calls": [announce]}), self._chunk({"tool_calls": [arguments]})]

    def _chunk(self, delta: Delta, finish: FinishReason | None = None) -> ChatCompletionChunk:
        return new_chunk(self._request, self._model or self._request.model, delta, finish)
