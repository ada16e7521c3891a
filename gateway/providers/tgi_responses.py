"""TGI's answers as OpenAI's: its departures from OpenAI's format repaired, its stream re-chunked.

This module owns the answer direction of `provider: tgi` (the quirks are in `tgi.py`'s
docstring): the gateway's id where TGI sends "", tool arguments as JSON text rather than an
object, "tool_calls" as the finish reason whenever the answer holds a call, and streams that
keep the gateway's chunk contract (one opening role chunk, one finish chunk even when TGI sends
none, usage as one trailing chunk).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import StreamInterrupted, UpstreamError
from gateway.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Delta,
    ToolCallDelta,
    Usage,
)
from gateway.providers.base import (
    error_details,
    new_chunk,
    stream_event,
    stream_failure,
    usage_chunk,
)
from gateway.providers.openai import normalize_completion
from gateway.sse import SSEDecoder

_STOP_REASONS = {"eos_token": "stop", "stop_sequence": "stop", "stop": "stop"}


def to_openai_completion(
    data: dict[str, Any], request: ChatRequest, upstream: str
) -> ChatCompletion:
    """TGI's whole answer as a completion. Raises UpstreamError if it is not one."""
    if not data.get("id"):
        data["id"] = request.id
    for choice in data.get("choices") or ():
        if isinstance(choice, dict):
            _repair_choice(choice, upstream)
    return normalize_completion(data, upstream)


def _arguments(value: object) -> str:
    """TGI sends tool arguments as a JSON object; OpenAI as JSON text."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value if value is not None else {}).decode()


def _repair_choice(choice: dict[str, Any], upstream: str) -> None:
    message = choice.get("message")
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    if isinstance(calls, list):
        for index, call in enumerate(calls):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                raise UpstreamError(f"upstream '{upstream}' returned a malformed tool call")
            if not call.get("id"):
                call["id"] = f"call_{index}"
            function.pop("description", None)
            function["arguments"] = _arguments(function.get("arguments"))
    choice["finish_reason"] = finish_reason(choice.get("finish_reason"), bool(calls))


def finish_reason(reported: object, has_calls: bool) -> str:
    """TGI's reason in OpenAI's words; "tool_calls" whenever the answer holds a call."""
    reason = _STOP_REASONS.get(str(reported), str(reported)) if reported else "stop"
    if has_calls and reason != "length":
        return "tool_calls"
    return reason


class TGIStreamDecoder:
    """TGI's chunk stream in, the gateway's chunk contract out (see the module docstring)."""

    __slots__ = (
        "_calls",
        "_fingerprint",
        "_finished",
        "_model",
        "_request",
        "_secrets",
        "_sse",
        "_started",
        "_upstream",
        "done",
        "usage",
    )

    def __init__(self, request: ChatRequest, upstream: str, secrets: tuple[str, ...]) -> None:
        self._sse = SSEDecoder()
        self._request = request
        self._upstream = upstream
        self._secrets = secrets
        self._model: str | None = None  # TGI's served model, from the first event
        self._fingerprint: str | None = None
        self._started = False
        self._calls: set[int] = set()  # upstream indexes announced
        self._finished = False
        self.done = False
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> list[ChatCompletionChunk]:
        chunks: list[ChatCompletionChunk] = []
        for event in self._sse.feed(data):
            if self.done:
                continue
            if event.data == b"[DONE]":
                self.done = True
                chunks.extend(self._end())
                continue
            chunks.extend(self._chunk(self._load(event.data)))
        return chunks

    def close(self) -> list[ChatCompletionChunk]:
        if self.done:
            return []
        if not self._finished:
            raise StreamInterrupted(
                f"upstream '{self._upstream}' closed the stream before it finished"
            )
        self.done = True
        return self._end()

    def _load(self, raw: bytes) -> dict[str, Any]:
        event = stream_event(raw, self._upstream)
        if "error" in event:
            message, kind, _, code = error_details(raw)
            raise stream_failure(self._upstream, self._secrets, message, code or kind)
        if not isinstance(event.get("choices"), list):
            raise StreamInterrupted(f"upstream '{self._upstream}' sent a chunk without choices")
        return event

    def _make(
        self, delta: Delta, reason: str | None = None, logprobs: object = None
    ) -> ChatCompletionChunk:
        chunk = new_chunk(
            self._request,
            self._model or self._request.model,
            delta,
            reason,  # type: ignore[arg-type]  # TGI's reasons in OpenAI's words
        )
        if logprobs is not None:
            chunk["choices"][0]["logprobs"] = logprobs  # type: ignore[typeddict-item]  # TGI's
        return self._stamped(chunk)

    def _stamped(self, chunk: ChatCompletionChunk) -> ChatCompletionChunk:
        if self._fingerprint:
            chunk["system_fingerprint"] = self._fingerprint  # type: ignore[typeddict-unknown-key]
        return chunk

    def _chunk(self, event: dict[str, Any]) -> list[ChatCompletionChunk]:
        if self._model is None:
            model = event.get("model")
            self._model = model if isinstance(model, str) else ""
            fingerprint = event.get("system_fingerprint")
            self._fingerprint = fingerprint if isinstance(fingerprint, str) else None
        usage = event.get("usage")
        if usage is not None:
            if not isinstance(usage, dict):
                raise StreamInterrupted(f"upstream '{self._upstream}' sent a malformed usage")
            prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
            usage.setdefault("total_tokens", prompt + completion)
            self.usage = usage  # type: ignore[assignment]  # an object, completed above
        out: list[ChatCompletionChunk] = []
        for choice in event["choices"]:
            if not isinstance(choice, dict) or not isinstance(choice.get("delta", {}), dict):
                raise StreamInterrupted(f"upstream '{self._upstream}' sent a malformed choice")
            if self._finished:
                continue  # nothing may follow the finish chunk
            delta = choice.get("delta") or {}
            if not self._started:
                self._started = True
                # OpenAI opens a tool-call answer with `content: null`, a text one with "".
                opening = None if delta.get("tool_calls") else ""
                out.append(self._make({"role": "assistant", "content": opening}))
            content = delta.get("content")
            if isinstance(content, str) and content:
                out.append(self._make({"content": content}, logprobs=choice.get("logprobs")))
            for call in delta.get("tool_calls") or ():
                out.extend(self._call_deltas(call))
            if choice.get("finish_reason"):
                out.append(self._finish(choice["finish_reason"]))
        return out

    def _call_deltas(self, call: object) -> list[ChatCompletionChunk]:
        if not isinstance(call, dict) or not isinstance(call.get("function", {}), dict):
            raise StreamInterrupted(f"upstream '{self._upstream}' sent a malformed tool call")
        index = call.get("index", 0)
        index = index if isinstance(index, int) else 0
        function = call.get("function") or {}
        fragment = _arguments(function.get("arguments"))
        out: list[ChatCompletionChunk] = []
        if index not in self._calls:
            self._calls.add(index)
            announce: ToolCallDelta = {
                "index": index,
                "id": call.get("id") or f"call_{index}",
                "type": "function",
                "function": {"name": function.get("name") or "", "arguments": ""},
            }
            out.append(self._make({"tool_calls": [announce]}))
        if fragment:
            out.append(
                self._make({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
            )
        return out

    def _finish(self, reported: object) -> ChatCompletionChunk:
        self._finished = True
        return self._make({}, finish_reason(reported, bool(self._calls)))

    def _end(self) -> list[ChatCompletionChunk]:
        """At `[DONE]` (or a clean end): the finish chunk if TGI sent none, then usage."""
        out: list[ChatCompletionChunk] = []
        if not self._started:
            self._started = True
            out.append(self._make({"role": "assistant", "content": ""}))
        if not self._finished:
            out.append(self._finish(None))
        if self._request.include_usage and self.usage is not None:
            model = self._model or self._request.model
            out.append(self._stamped(usage_chunk(self._request, model, self.usage)))
        return out
