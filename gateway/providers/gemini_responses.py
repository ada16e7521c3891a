"""Gemini's answers in OpenAI's shapes: a `GenerateContentResponse` as a chat completion, its SSE
stream as chunks, `usageMetadata` as usage and Google's error body as its parts. The rules
(finish reasons, thought parts, blocked prompts, call ids carrying thought signatures) are listed
with the translator in `gemini.py`; the request direction lives there too.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from gateway.errors import StreamInterrupted, UpstreamError
from gateway.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Choice,
    Delta,
    FinishReason,
    Message,
    ToolCall,
    Usage,
)
from gateway.providers.base import (
    json_object,
    new_chunk,
    new_usage,
    stream_event,
    stream_failure,
    usage_chunk,
)
from gateway.sse import SSEDecoder

SIGNATURE_MARK = ".sig."  # a tool call id is `<id>.sig.<thoughtSignature>` when Gemini sent one

_CONTENT_FILTER = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "LANGUAGE",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
_ID_SAFE = re.compile(r"[^A-Za-z0-9]")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)s")

JSON = dict[str, Any]


def to_completion(body: bytes, request: ChatRequest, upstream: str) -> ChatCompletion:
    """A generateContent answer as an OpenAI completion. Raises UpstreamError if it is not one."""
    data = json_object(body, "an answer", upstream)
    candidates = data.get("candidates") or []
    if not isinstance(candidates, list):
        raise _malformed(upstream, "candidates that are not a list")
    base = _call_id_base(request)
    choices: list[Choice] = []
    for position, candidate in enumerate(candidates):
        if not isinstance(candidate, dict):
            raise _malformed(upstream, "a malformed candidate")
        index = _index(candidate, position)
        texts, calls = _read_parts(candidate, upstream, base, index, 0)
        message: Message = {
            "role": "assistant",
            "content": "".join(texts) if texts or not calls else None,
            "refusal": None,
        }
        if calls:
            message["tool_calls"] = calls
        finish = _finish_reason(candidate.get("finishReason"), bool(calls))
        choices.append(
            {"index": index, "message": message, "logprobs": None, "finish_reason": finish}
        )
    if not choices:
        if not _blocked(data):
            raise _malformed(upstream, "an answer without candidates")
        choices = [
            {
                "index": index,
                "message": {"role": "assistant", "content": None, "refusal": None},
                "logprobs": None,
                "finish_reason": "content_filter",
            }
            for index in range(_choice_count(request))
        ]
    choices.sort(key=lambda choice: choice["index"])
    completion: ChatCompletion = {
        "id": request.id,
        "object": "chat.completion",
        "created": request.created,
        "model": _model_of(data, request),
        "choices": choices,
    }
    usage = to_usage(data.get("usageMetadata"))
    if usage is not None:
        completion["usage"] = usage
    return completion


def to_usage(metadata: object) -> Usage | None:
    """OpenAI usage from Gemini's `usageMetadata` (None when there is none)."""
    if not isinstance(metadata, dict):
        return None
    prompt = _count(metadata, "promptTokenCount") + _count(metadata, "toolUsePromptTokenCount")
    thoughts = _count(metadata, "thoughtsTokenCount")
    completion = _count(metadata, "candidatesTokenCount") + thoughts
    cached = (
        _count(metadata, "cachedContentTokenCount")
        if "cachedContentTokenCount" in metadata
        else None
    )
    usage = new_usage(prompt, completion, cached)
    if thoughts:
        details = {"reasoning_tokens": thoughts}  # in the spec; our Usage does not declare it
        usage["completion_tokens_details"] = details  # type: ignore[typeddict-unknown-key]
    return usage


def _choice_count(request: ChatRequest) -> int:
    n = request.body.get("n")
    return n if isinstance(n, int) and n > 0 else 1


def _call_id_base(request: ChatRequest) -> str:
    """A tool call id prefix unique to this answer (the request id, letters and digits only)."""
    return "call_" + _ID_SAFE.sub("", request.id.removeprefix("chatcmpl-"))[-24:]


def _index(candidate: JSON, position: int) -> int:
    index = candidate.get("index", position)
    return index if isinstance(index, int) and not isinstance(index, bool) else position


def _read_parts(
    candidate: JSON, upstream: str, base: str, index: int, first_call: int
) -> tuple[list[str], list[ToolCall]]:
    """(texts, tool calls) of a candidate's parts; calls numbered from `first_call`."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    if parts is None:
        return [], []
    if not isinstance(parts, list):
        raise _malformed(upstream, "content parts that are not a list")
    texts: list[str] = []
    calls: list[ToolCall] = []
    for part in parts:
        if not isinstance(part, dict):
            raise _malformed(upstream, "a part that is not an object")
        if part.get("thought") is True:
            continue  # a thought summary, not the answer
        text = part.get("text")
        if isinstance(text, str):
            texts.append(text)
        call = part.get("functionCall")
        if call is None:
            continue
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise _malformed(upstream, "a functionCall without a name")
        call_id = f"{base}_{index}_{first_call + len(calls)}"
        signature = part.get("thoughtSignature")
        if isinstance(signature, str) and signature:
            call_id += SIGNATURE_MARK + signature
        args = call.get("args")
        arguments = orjson.dumps({} if args is None else args).decode()
        calls.append(
            {
                "id": call_id,
                "type": "function",
                "function": {"name": call["name"], "arguments": arguments},
            }
        )
    return texts, calls


def _malformed(upstream: str, what: str) -> UpstreamError:
    return UpstreamError(f"upstream '{upstream}' returned {what}")


def _finish_reason(reason: object, has_calls: bool) -> FinishReason:
    if has_calls:
        return "tool_calls"  # Gemini says STOP after function calls
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _CONTENT_FILTER:
        return "content_filter"
    return "stop"


def _blocked(data: JSON) -> bool:
    feedback = data.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def _model_of(data: JSON, request: ChatRequest) -> str:
    version = data.get("modelVersion")
    return version if isinstance(version, str) and version else request.model


def _count(usage: JSON, key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# ------------------------------------------------------------------- streams


class GeminiStreamDecoder:
    """Gemini SSE events in, OpenAI chunks out (see the module docstring of gemini.py)."""

    def __init__(self, request: ChatRequest, upstream: str, secrets: tuple[str, ...]) -> None:
        self._sse = SSEDecoder()
        self._request = request
        self._upstream = upstream
        self._secrets = secrets
        self._base = _call_id_base(request)
        self._model: str | None = None
        self._calls: dict[int, int] = {}  # candidate index -> calls announced
        self._finished: set[int] = set()
        self._blocked = False
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> list[ChatCompletionChunk]:
        chunks: list[ChatCompletionChunk] = []
        for event in self._sse.feed(data):
            payload = stream_event(_unwrapped(event.data), self._upstream)
            if "error" in payload:
                message, _, code, _ = error_details(event.data)
                code = code.lower() if code else None
                raise stream_failure(self._upstream, self._secrets, message, code)
            chunks.extend(self._event(payload))
        return chunks

    def _event(self, payload: JSON) -> list[ChatCompletionChunk]:
        if self._model is None:
            self._model = _model_of(payload, self._request)
        usage = to_usage(payload.get("usageMetadata"))
        if usage is not None:
            self.usage = usage
        candidates = payload.get("candidates") or []
        if not isinstance(candidates, list):
            raise self._interrupted("sent candidates that are not a list")
        chunks: list[ChatCompletionChunk] = []
        if not candidates and _blocked(payload) and not self._calls:
            self._blocked = True
            for index in range(_choice_count(self._request)):
                chunks.append(self._chunk(index, {"role": "assistant", "content": ""}))
                chunks.append(self._chunk(index, {}, "content_filter"))
                self._finished.add(index)
            return chunks
        for position, candidate in enumerate(candidates):
            if not isinstance(candidate, dict):
                raise self._interrupted("sent a malformed candidate")
            index = _index(candidate, position)
            if index in self._finished:
                continue  # nothing may follow a candidate's finish
            if index not in self._calls:
                self._calls[index] = 0
                chunks.append(self._chunk(index, {"role": "assistant", "content": ""}))
            try:
                texts, calls = _read_parts(
                    candidate, self._upstream, self._base, index, self._calls[index]
                )
            except UpstreamError as exc:
                raise StreamInterrupted(exc.message) from None
            text = "".join(texts)
            if text:
                chunks.append(self._chunk(index, {"content": text}))
            for call in calls:  # calls arrive whole: announced, then all arguments at once
                k = self._calls[index]
                self._calls[index] += 1
                function = call["function"]
                announce: Delta = {
                    "tool_calls": [
                        {
                            "index": k,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": function["name"], "arguments": ""},
                        }
                    ]
                }
                chunks.append(self._chunk(index, announce))
                arguments: Delta = {
                    "tool_calls": [{"index": k, "function": {"arguments": function["arguments"]}}]
                }
                chunks.append(self._chunk(index, arguments))
            reason = candidate.get("finishReason")
            if isinstance(reason, str) and reason:
                finish = _finish_reason(reason, self._calls[index] > 0)
                chunks.append(self._chunk(index, {}, finish))
                self._finished.add(index)
        return chunks

    def _chunk(
        self, index: int, delta: Delta, finish: FinishReason | None = None
    ) -> ChatCompletionChunk:
        return new_chunk(self._request, self._model or self._request.model, delta, finish, index)

    def close(self) -> list[ChatCompletionChunk]:
        """Raises StreamInterrupted unless every candidate that started has finished."""
        started = set(self._calls) | ({0} if self._blocked else set())
        if not started or self._sse.pending or not started <= self._finished:
            raise self._interrupted("closed the stream before it finished")
        if not self._request.include_usage or self.usage is None:
            return []
        return [usage_chunk(self._request, self._model or self._request.model, self.usage)]

    def _interrupted(self, what: str) -> StreamInterrupted:
        return StreamInterrupted(f"upstream '{self._upstream}' {what}")


def _unwrapped(raw: bytes) -> bytes:
    """An event's JSON out of the one-element array an error event may come in (more elements
    than one leave text that is not JSON)."""
    raw = raw.strip()
    return raw[1:-1] if raw.startswith(b"[") and raw.endswith(b"]") else raw


# ------------------------------------------------------------------- errors


def error_details(body: bytes) -> tuple[str, str | None, str | None, str | None]:
    """(message, ErrorInfo reason, status, RetryInfo delay in seconds) from Google's error body
    `{"error": {"code", "message", "status", "details": [...]}}` (or a one-element array of it,
    as streamGenerateContent without SSE sends), or from any text."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text or "no error message"), None, None, None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return body.decode("utf-8", "replace"), None, None, None
    message = str(error.get("message") or "no error message")
    status = error.get("status")
    reason = delay = None
    for detail in error.get("details") or ():
        if not isinstance(detail, dict):
            continue
        kind = str(detail.get("@type", ""))
        if kind.endswith("google.rpc.ErrorInfo") and isinstance(detail.get("reason"), str):
            reason = detail["reason"]
        elif kind.endswith("google.rpc.RetryInfo"):
            match = _DURATION.fullmatch(str(detail.get("retryDelay", "")))
            if match:
                delay = str(max(1, round(float(match.group(1)))))
    return message, reason, status if isinstance(status, str) else None, delay
