"""Anthropic's answers as OpenAI's: a Message becomes a `chat.completion`, its SSE stream becomes
`chat.completion.chunk`s, with stop reasons and token usage mapped on the way. The quirks behind
these mappings are listed with the translator, in `gateway/providers/anthropic.py`; the forced
response tool of JSON mode is named by the request side and passed in as `json_tool`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import StreamInterrupted, UpstreamError
from gateway.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Delta,
    FinishReason,
    Message,
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
from gateway.sse import SSEDecoder

_STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def to_openai_completion(
    data: Mapping[str, Any], request: ChatRequest, upstream: str, json_tool: str | None
) -> ChatCompletion:
    """A Message (a 2xx body's JSON object) as a completion. Raises UpstreamError."""
    content = data.get("content")
    if data.get("type") != "message" or not isinstance(content, list):
        raise UpstreamError(f"upstream '{upstream}' returned a body that is not a message")
    texts: list[str] = []
    calls: list[ToolCall] = []
    answer: str | None = None
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            call_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise UpstreamError(f"upstream '{upstream}' returned a malformed tool_use")
            text = orjson.dumps(arguments if arguments is not None else {}).decode()
            if name == json_tool:
                answer = text
            else:
                calls.append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": text},
                    }
                )
        elif not isinstance(kind, str):
            raise UpstreamError(f"upstream '{upstream}' returned a malformed content block")
        # thinking, redacted_thinking and server-tool blocks have no OpenAI equivalent
    message: Message = {
        "role": "assistant",
        "content": answer if answer is not None else ("".join(texts) if texts else None),
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    model = data.get("model")
    completion: ChatCompletion = {
        "id": request.id,
        "object": "chat.completion",
        "created": request.created,
        "model": model if isinstance(model, str) else request.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _finish_reason(data.get("stop_reason"), bool(calls)),
            }
        ],
    }
    usage = data.get("usage")
    if isinstance(usage, dict):
        completion["usage"] = _usage(usage, {})
    return completion


def _finish_reason(stop_reason: object, has_calls: bool) -> FinishReason:
    reason = _STOP_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"
    if has_calls and reason not in ("length", "content_filter"):
        return "tool_calls"
    if reason == "tool_calls" and not has_calls:
        return "stop"  # only the response tool was called: the JSON answer is the content
    return reason


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _usage(usage: Mapping[str, object], start: Mapping[str, object]) -> Usage:
    """OpenAI usage from Anthropic's; `start` holds message_start's counts in a stream (the
    message_delta counts are cumulative and win where given)."""

    def pick(name: str) -> object:
        return usage[name] if usage.get(name) is not None else start.get(name)

    cache_read = pick("cache_read_input_tokens")
    prompt = (
        _count(pick("input_tokens"))
        + _count(cache_read)
        + _count(pick("cache_creation_input_tokens"))
    )
    cached = None if cache_read is None else _count(cache_read)
    return new_usage(prompt, _count(pick("output_tokens")), cached)


@dataclass
class _Block:
    kind: str  # "text", "tool" (a client tool call), "json" (the response tool), "other"
    tool_index: int = -1
    sent_input: bool = False


class AnthropicStreamDecoder:
    """Anthropic's SSE events in, OpenAI chunks out (see the translator's module docstring)."""

    def __init__(
        self, request: ChatRequest, upstream: str, secrets: tuple[str, ...], json_tool: str | None
    ) -> None:
        self._sse = SSEDecoder()
        self._request = request
        self._model = request.model
        self._json_tool = json_tool
        self._upstream = upstream
        self._secrets = secrets
        self._blocks: dict[int, _Block] = {}
        self._tools = 0
        self._start_usage: dict[str, object] = {}
        self._stop_reason: object = None
        self._started = False
        self._done = False
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> list[ChatCompletionChunk]:
        chunks: list[ChatCompletionChunk] = []
        for event in self._sse.feed(data):
            if self._done:
                continue
            payload = stream_event(event.data, self._upstream)
            kind = payload.get("type", event.event)
            if kind == "error":
                message, error_type, _, _ = error_details(event.data)
                raise stream_failure(self._upstream, self._secrets, message, error_type)
            if kind == "message_start":
                chunks.append(self._start(payload))
            elif kind in ("content_block_start", "content_block_delta", "content_block_stop"):
                if not self._started:
                    raise self._broken(f"sent {kind} before message_start")
                chunks.extend(self._content(kind, payload))
            elif kind == "message_delta":
                self._delta(payload)
            elif kind == "message_stop":
                if not self._started:
                    raise self._broken("sent message_stop before message_start")
                chunks.extend(self._stop())
            # ping, and event types added later: nothing to relay
        return chunks

    def close(self) -> list[ChatCompletionChunk]:
        if not self._done:
            raise self._broken("closed the stream before message_stop")
        return []

    def _broken(self, what: str) -> StreamInterrupted:
        return StreamInterrupted(f"upstream '{self._upstream}' {what}")

    def _chunk(self, delta: Delta, finish: FinishReason | None = None) -> ChatCompletionChunk:
        return new_chunk(self._request, self._model, delta, finish)

    def _start(self, payload: dict[str, object]) -> ChatCompletionChunk:
        message = payload.get("message")
        if not isinstance(message, dict):
            raise self._broken("sent a message_start without a message")
        if isinstance(message.get("model"), str):
            self._model = message["model"]
        usage = message.get("usage")
        if isinstance(usage, dict):
            self._start_usage = usage
            self.usage = _usage(usage, {})
        self._started = True
        return self._chunk({"role": "assistant", "content": ""})

    def _content(self, kind: str, payload: dict[str, object]) -> list[ChatCompletionChunk]:
        index = payload.get("index")
        if not isinstance(index, int):
            raise self._broken(f"sent {kind} without an index")
        if kind == "content_block_start":
            block = payload.get("content_block")
            if not isinstance(block, dict):
                raise self._broken("sent content_block_start without a content_block")
            return self._open(index, block)
        state = self._blocks.get(index)
        if state is None:
            raise self._broken(f"sent {kind} for a block it never started")
        if kind == "content_block_stop":
            if state.kind in ("tool", "json") and not state.sent_input:
                return [self._input(state, "{}")]  # a call without input still has arguments
            return []
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            raise self._broken("sent content_block_delta without a delta")
        if delta.get("type") == "text_delta" and state.kind == "text":
            text = delta.get("text")
            if not isinstance(text, str):
                raise self._broken("sent a text_delta without text")
            return [self._chunk({"content": text})] if text else []
        if delta.get("type") == "input_json_delta" and state.kind in ("tool", "json"):
            fragment = delta.get("partial_json")
            if not isinstance(fragment, str):
                raise self._broken("sent an input_json_delta without partial_json")
            return [self._input(state, fragment)] if fragment else []
        return []  # thinking, signature and citation deltas have no OpenAI equivalent

    def _open(self, index: int, block: dict[str, object]) -> list[ChatCompletionChunk]:
        kind = block.get("type")
        if kind == "text":
            self._blocks[index] = _Block("text")
            text = block.get("text")
            return [self._chunk({"content": text})] if isinstance(text, str) and text else []
        if kind != "tool_use":
            self._blocks[index] = _Block("other")
            return []
        call_id, name = block.get("id"), block.get("name")
        if not isinstance(call_id, str) or not isinstance(name, str):
            raise self._broken("sent a tool_use block without id or name")
        chunks: list[ChatCompletionChunk] = []
        if name == self._json_tool:
            state = self._blocks[index] = _Block("json")
        else:
            state = self._blocks[index] = _Block("tool", self._tools)
            self._tools += 1
            announce: ToolCallDelta = {
                "index": state.tool_index,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            chunks.append(self._chunk({"tool_calls": [announce]}))
        given = block.get("input")
        if isinstance(given, dict) and given:  # the API starts with {}; keep anything else
            chunks.append(self._input(state, orjson.dumps(given).decode()))
        return chunks

    def _input(self, state: _Block, fragment: str) -> ChatCompletionChunk:
        state.sent_input = True
        if state.kind == "json":
            return self._chunk({"content": fragment})
        call: ToolCallDelta = {"index": state.tool_index, "function": {"arguments": fragment}}
        return self._chunk({"tool_calls": [call]})

    def _delta(self, payload: dict[str, object]) -> None:
        delta = payload.get("delta")
        if isinstance(delta, dict) and delta.get("stop_reason") is not None:
            self._stop_reason = delta["stop_reason"]
        usage = payload.get("usage")
        if isinstance(usage, dict):
            self.usage = _usage(usage, self._start_usage)

    def _stop(self) -> list[ChatCompletionChunk]:
        self._done = True
        chunks = [self._chunk({}, _finish_reason(self._stop_reason, self._tools > 0))]
        if self._request.include_usage and self.usage is not None:
            chunks.append(usage_chunk(self._request, self._model, self.usage))
        return chunks
