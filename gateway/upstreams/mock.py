"""The built-in mock upstream: an in-process httpx transport that speaks OpenAI's wire format.

It goes through the same client, translator and pipeline as a real OpenAI-compatible server (no
special case anywhere), needs no key and no network, and answers deterministically: the same
request always gets the same words. Streams are real SSE, paced by `ttft` (seconds before the
first token) and `tokens_per_second` from the upstream's config. It calls a tool when tools are
offered and the prompt names one (or `tool_choice` demands one), answers a tool result by
quoting it, honours JSON mode (json_object and json_schema), `n`, `stop` and max tokens, and
reports usage (a token here is one word).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from gateway.config import UpstreamConfig

_WORDS = [
    "gateway",
    "stream",
    "token",
    "upstream",
    "model",
    "answer",
    "request",
    "latency",
    "pool",
    "breaker",
    "fallback",
    "route",
    "prompt",
    "reply",
    "cache",
    "limit",
    "health",
    "metric",
    "budget",
    "signal",
    "packet",
    "socket",
    "buffer",
    "queue",
    "worker",
    "thread",
    "async",
    "await",
    "future",
    "promise",
    "result",
    "value",
    "schema",
    "object",
    "field",
    "array",
    "string",
    "number",
    "vector",
    "matrix",
    "kernel",
    "cluster",
    "replica",
    "shard",
    "leader",
    "follower",
    "commit",
    "branch",
    "merge",
    "rebase",
]
_ID_CHARS = 24


class MockTransport(httpx.AsyncBaseTransport):
    """Serves `POST .../chat/completions` and `GET .../models` for one mock upstream."""

    def __init__(self, upstream: UpstreamConfig) -> None:
        self._ttft = upstream.ttft
        self._interval = 1.0 / upstream.tokens_per_second if upstream.tokens_per_second else 0.0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and path.endswith("/models"):
            return _json(200, {"object": "list", "data": [_model_card("mock-1")]})
        if request.method != "POST" or not path.endswith("/chat/completions"):
            return _error(404, f"the mock serves no {request.method} {path}", "not_found")
        try:
            body = orjson.loads(await request.aread())
        except orjson.JSONDecodeError:
            return _error(400, "the body is not valid JSON", "invalid_json")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "'messages' is required", "missing_messages", "messages")
        answers = [_answer(body, index) for index in range(_int(body.get("n"), 1))]
        if body.get("stream"):
            return httpx.Response(
                200,
                headers={"content-type": "text/event-stream", "x-request-id": _id("req", body)},
                stream=_Stream(body, answers, self._ttft, self._interval),
            )
        longest = max(len(a.pieces) for a in answers)
        await asyncio.sleep(self._ttft + self._interval * max(longest - 1, 0))
        return _json(200, _completion(body, answers), {"x-request-id": _id("req", body)})


class _Answer:
    """One choice: text pieces (a piece is a token) or tool calls, and how it finished."""

    def __init__(self, pieces: list[str], finish: str, tool_calls: list[dict[str, Any]]) -> None:
        self.pieces = pieces
        self.finish = finish
        self.tool_calls = tool_calls

    @property
    def text(self) -> str | None:
        return None if self.tool_calls else "".join(self.pieces)

    def deltas(self) -> list[dict[str, Any]]:
        """The streamed deltas: one per token; a tool call is announced, then its arguments."""
        if not self.tool_calls:
            return [{"content": piece} for piece in self.pieces]
        out: list[dict[str, Any]] = []
        for index, call in enumerate(self.tool_calls):
            function = call["function"]
            head = {**call, "index": index, "function": {"name": function["name"], "arguments": ""}}
            out.append({"tool_calls": [head]})
            arguments = function["arguments"]
            out.extend(
                {"tool_calls": [{"index": index, "function": {"arguments": arguments[i : i + 8]}}]}
                for i in range(0, len(arguments), 8)
            )
        return out


def _answer(body: dict[str, Any], index: int) -> _Answer:
    messages = body["messages"]
    prompt = _text(messages[-1].get("content")) if messages else ""
    seed = hashlib.sha256(f"{index}:{_text_of_all(messages)}".encode()).digest()
    calls = _tool_calls(body, prompt, seed)
    if calls:
        arguments = "".join(c["function"]["arguments"] for c in calls)
        return _Answer(
            [arguments[i : i + 8] for i in range(0, len(arguments), 8)], "tool_calls", calls
        )
    if messages and messages[-1].get("role") == "tool":
        text = f"The tool returned: {prompt[:200]}"
    else:
        echo = " ".join(prompt.split()[:8])
        count = 8 + seed[0] % 17
        invented = " ".join(_WORDS[b % len(_WORDS)] for b in seed[1 : 1 + count])
        text = f'You said "{echo}". Mock answer: {invented}.'
    text = _json_mode(body.get("response_format"), text)
    pieces = _split(text)
    finish = "stop"
    for stop in _stops(body.get("stop")):
        cut = "".join(pieces).find(stop)
        if cut >= 0:
            pieces = _split("".join(pieces)[:cut])
            break
    limit = _int(body.get("max_completion_tokens") or body.get("max_tokens"), 0)
    if limit and len(pieces) > limit:
        pieces, finish = pieces[:limit], "length"
    return _Answer(pieces, finish, [])


def _tool_calls(body: dict[str, Any], prompt: str, seed: bytes) -> list[dict[str, Any]]:
    tools = [t["function"] for t in body.get("tools") or () if t.get("type") == "function"]
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none" or body["messages"][-1].get("role") == "tool":
        return []
    lowered = prompt.lower()
    if isinstance(choice, dict):
        named = choice.get("function", {}).get("name")
        chosen = [t for t in tools if t.get("name") == named]
    else:
        chosen = [
            t
            for t in tools
            if t["name"].lower() in lowered or t["name"].lower().replace("_", " ") in lowered
        ]
        if not chosen and choice == "required":
            chosen = tools[:1]
    if body.get("parallel_tool_calls") is False:
        chosen = chosen[:1]
    return [
        {
            "id": f"call_{hashlib.sha256(seed + t['name'].encode()).hexdigest()[:_ID_CHARS]}",
            "type": "function",
            "function": {
                "name": t["name"],
                "arguments": orjson.dumps(_instance(t.get("parameters") or {}, prompt)).decode(),
            },
        }
        for t in chosen
    ]


def _instance(schema: dict[str, Any], prompt: str) -> object:
    """A small deterministic value that satisfies a (simple) JSON Schema."""
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or {}
        required = schema.get("required") or list(properties)
        return {k: _instance(properties[k], prompt) for k in required if k in properties}
    if kind == "array":
        items = schema.get("items")
        return [_instance(items, prompt)] if isinstance(items, dict) else []
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    words = [w.strip(".,!?\"'") for w in prompt.split()]
    capitalised = [w for w in words if w[:1].isupper() and len(w) > 1]
    return capitalised[-1] if capitalised else "mock"


def _json_mode(response_format: object, text: str) -> str:
    if not isinstance(response_format, dict):
        return text
    if response_format.get("type") == "json_object":
        return orjson.dumps({"answer": text}).decode()
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        return orjson.dumps(_instance(schema, text)).decode()
    return text


def _completion(body: dict[str, Any], answers: list[_Answer]) -> dict[str, Any]:
    choices = []
    for index, answer in enumerate(answers):
        message: dict[str, Any] = {"role": "assistant", "content": answer.text, "refusal": None}
        if answer.tool_calls:
            message["tool_calls"] = answer.tool_calls
        choices.append(
            {"index": index, "message": message, "logprobs": None, "finish_reason": answer.finish}
        )
    return {
        "id": _id("chatcmpl", body),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(body.get("model", "mock-1")),
        "choices": choices,
        "usage": _usage(body, answers),
        "system_fingerprint": "mock",
    }


def _usage(body: dict[str, Any], answers: list[_Answer]) -> dict[str, int]:
    prompt = sum(4 + len(_text(m.get("content")).split()) for m in body["messages"])
    completion = sum(len(a.pieces) for a in answers)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class _Stream(httpx.AsyncByteStream):
    """The SSE body: role chunk, token chunks (paced), finish chunk, usage chunk, [DONE]."""

    def __init__(
        self, body: dict[str, Any], answers: list[_Answer], ttft: float, interval: float
    ) -> None:
        self._body = body
        self._answers = answers
        self._ttft = ttft
        self._interval = interval

    async def __aiter__(self) -> AsyncIterator[bytes]:
        body, answers = self._body, self._answers
        base = {
            "id": _id("chatcmpl", body),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": str(body.get("model", "mock-1")),
            "system_fingerprint": "mock",
        }
        options = body.get("stream_options")
        with_usage = isinstance(options, dict) and options.get("include_usage") is True
        extra = {"usage": None} if with_usage else {}

        def event(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            return b"data: " + orjson.dumps({**base, "choices": [choice], **extra}) + b"\n\n"

        await asyncio.sleep(self._ttft)
        yield b"".join(
            event(i, {"role": "assistant", "content": "" if a.text is not None else None})
            for i, a in enumerate(answers)
        )
        deltas = [answer.deltas() for answer in answers]
        for step in range(max(map(len, deltas))):
            if step and self._interval:
                await asyncio.sleep(self._interval)
            yield b"".join(event(i, d[step]) for i, d in enumerate(deltas) if step < len(d))
        yield b"".join(event(i, {}, a.finish) for i, a in enumerate(answers))
        if with_usage:
            usage = {**base, "choices": [], "usage": _usage(body, answers)}
            yield b"data: " + orjson.dumps(usage) + b"\n\n"
        yield b"data: [DONE]\n\n"


def _split(text: str) -> list[str]:
    """Words with their leading space: the mock's tokens."""
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]] if text else []


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _text_of_all(messages: list[dict[str, Any]]) -> str:
    return "\n".join(f"{m.get('role')}:{_text(m.get('content'))}" for m in messages)


def _stops(stop: object) -> list[str]:
    if isinstance(stop, str):
        return [stop]
    return [s for s in stop if isinstance(s, str) and s] if isinstance(stop, list) else []


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _id(prefix: str, body: dict[str, Any]) -> str:
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"{prefix}-mock{digest[:_ID_CHARS]}"


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "gateway-mock"}


def _json(status: int, payload: object, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status,
        content=orjson.dumps(payload),
        headers={"content-type": "application/json", **(headers or {})},
    )


def _error(status: int, message: str, code: str, param: str | None = None) -> httpx.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param}}
    body["error"]["code"] = code
    return _json(status, body)
