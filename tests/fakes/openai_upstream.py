"""A fake OpenAI upstream: OpenAI's wire format as a `Dialect` of `tests/fakes/upstream.py`.

`FakeOpenAI()` is a `FakeUpstream` speaking it; `Reply`, `ToolCall` and the rest of the
scripting are provider-neutral and re-exported here.

What OpenAI does that the fake copies, from the API reference and observed responses:
- every response carries `x-request-id: req_<32 hex>`, `openai-version` and
  `openai-processing-ms`; errors are `{"error": {"message", "type", "param", "code"}}`, also on
  a `stream: true` request, also for unknown URLs (404 "Invalid URL (POST /v1/x)");
- a request that is not valid against the OpenAPI spec's `CreateChatCompletionRequest` is
  answered with a 400 (and fails the test, see `FakeUpstream`);
- a completion's message always has `content`, `refusal` (null) and `annotations`, its choice
  always `logprobs` (null); bodies are indented JSON, stream events compact, both raw UTF-8
  (so a multi-byte character can straddle two reads);
- with `include_usage`, every chunk has `usage: null` but the last, whose `choices` is `[]`;
  chunks carry an `obfuscation` field unless `stream_options.include_obfuscation` is false;
- a tool-call stream puts the first call's id and name in the role chunk (`content: null`),
  then sends `arguments` in fragments under each call's `index`.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tests import spec
from tests.fakes.upstream import (
    ANY_PATH,
    ApiError,
    Behaviour,
    Dialect,
    FakeUpstream,
    RecordedRequest,
    Reply,
    ToolCall,
    compact,
    random_id,
    sse,
)
from tests.fakes.upstream import fragments as _fragments
from tests.fakes.upstream import pieces as _pieces

__all__ = [
    "ANY_PATH",
    "CHAT_PATH",
    "MODELS_PATH",
    "Behaviour",
    "FakeOpenAI",
    "OpenAIDialect",
    "RecordedRequest",
    "Reply",
    "ToolCall",
    "build_chunks",
    "build_completion",
]

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
OPENAI_VERSION = "2020-10-01"
_NOT_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you "
    "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
    "but what was sent was not valid JSON.)"
)

# OpenAI's `type`, `code` and message by status, for `Reply.error(status)`.
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided: sk-fake."),
    403: (
        "request_forbidden",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    413: ("invalid_request_error", None, "Request too large."),
    422: ("invalid_request_error", None, "Unprocessable request."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached. Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("server_error", None, "Gateway timeout."),
}


def _random_id(prefix: str, length: int) -> str:
    return random_id(prefix, length)


def _prompt_tokens(request: Mapping[str, Any]) -> int:
    """Words in the messages' text: deterministic, close enough for usage assertions."""
    words = 0
    for message in request.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        parts = content if isinstance(content, list) else [{"text": content}]
        for part in parts:
            text = part.get("text") if isinstance(part, dict) else None
            if isinstance(text, str):
                words += len(text.split())
    return max(words, 1)


def _choices(request: Mapping[str, Any]) -> int:
    n = request.get("n")
    return n if isinstance(n, int) and n > 0 else 1


def _usage(request: Mapping[str, Any], reply: Reply) -> dict[str, Any]:
    per_choice = len(_pieces(reply.content)) + sum(
        len(_fragments(call.arguments)) + 1 for call in reply.tool_calls
    )
    prompt, completion = _prompt_tokens(request), per_choice * _choices(request)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    given = dict(reply.usage or {})
    if "cached_tokens" in given:
        usage["prompt_tokens_details"]["cached_tokens"] = given.pop("cached_tokens")
    usage.update(given)
    if "total_tokens" not in given:
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage


def _model(request: Mapping[str, Any], reply: Reply) -> str:
    requested = request.get("model")
    return reply.model or (requested if isinstance(requested, str) else "gpt-4o-mini")


def _finish_reason(reply: Reply) -> str:
    return reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")


def _call_ids(reply: Reply) -> list[str]:
    return [call.id or _random_id("call_", 24) for call in reply.tool_calls]


def build_completion(request: Mapping[str, Any], reply: Reply | None = None) -> dict[str, Any]:
    """The `chat.completion` OpenAI would answer `request` with (a JSON body as a dict)."""
    reply = reply or Reply()
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if reply.content is None else "".join(_pieces(reply.content)),
        "refusal": None,
        "annotations": [],
    }
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": "".join(_fragments(call.arguments))},
            }
            for call, call_id in zip(reply.tool_calls, _call_ids(reply), strict=True)
        ]
    return {
        "id": _random_id("chatcmpl-", 29),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": _model(request, reply),
        "choices": [
            {
                "index": index,
                "message": copy.deepcopy(message),
                "logprobs": None,
                "finish_reason": _finish_reason(reply),
            }
            for index in range(_choices(request))
        ],
        "usage": _usage(request, reply),
        "service_tier": "default",
        "system_fingerprint": "fp_" + secrets.token_hex(5),
    }


def _deltas(reply: Reply, call_ids: list[str]) -> list[dict[str, Any]]:
    """One choice's deltas, role chunk first."""
    pieces = _pieces(reply.content)
    headers = [
        {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        for index, (call, call_id) in enumerate(zip(reply.tool_calls, call_ids, strict=True))
    ]
    role: dict[str, Any] = {"role": "assistant", "content": None if reply.content is None else ""}
    if headers and reply.content is None:
        role["tool_calls"] = [headers.pop(0)]
    role["refusal"] = None
    deltas = [role, *({"content": piece} for piece in pieces)]
    for index, call in enumerate(reply.tool_calls):
        if headers and headers[0]["index"] == index:
            deltas.append({"tool_calls": [headers.pop(0)]})
        deltas.extend(
            {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}
            for fragment in _fragments(call.arguments)
        )
    return deltas


def build_chunks(request: Mapping[str, Any], reply: Reply | None = None) -> list[dict[str, Any]]:
    """The `chat.completion.chunk` events OpenAI would stream for `request`, without [DONE]."""
    reply = reply or Reply()
    options = request.get("stream_options")
    options = options if isinstance(options, dict) else {}
    include_usage = options.get("include_usage") is True
    obfuscate = options.get("include_obfuscation") is not False
    base = {
        "id": _random_id("chatcmpl-", 29),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": _model(request, reply),
        "service_tier": "default",
        "system_fingerprint": "fp_" + secrets.token_hex(5),
    }

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
        event = {**base, "choices": choices}
        if include_usage:
            event["usage"] = usage
        if obfuscate:
            event["obfuscation"] = _random_id("", random.randint(1, 12))
        return event

    call_ids = _call_ids(reply)
    per_choice: list[list[dict[str, Any]]] = [
        [
            *(
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
                for delta in _deltas(reply, call_ids)
            ),
            {"index": index, "delta": {}, "logprobs": None, "finish_reason": _finish_reason(reply)},
        ]
        for index in range(_choices(request))
    ]
    # With n > 1 OpenAI interleaves the choices' chunks; each chunk carries one choice.
    events = [
        chunk([choice])
        for step in itertools.zip_longest(*per_choice)
        for choice in step
        if choice is not None
    ]
    if include_usage:
        events.append(chunk([], _usage(request, reply)))
    return events


class OpenAIDialect:
    """OpenAI's chat completions API (see the module docstring)."""

    name = "openai"
    chat_route = CHAT_PATH
    info_routes: Mapping[str, str] = {MODELS_PATH: "GET"}
    stream_content_type = "text/event-stream; charset=utf-8"

    def request_id(self) -> str:
        return "req_" + secrets.token_hex(16)

    def response_headers(self, record: RecordedRequest) -> dict[str, str]:
        return {
            "x-request-id": record.request_id,
            "openai-version": OPENAI_VERSION,
            "openai-processing-ms": str(int((time.monotonic() - record.received_at) * 1000)),
        }

    def authorized(self, record: RecordedRequest, api_key: str) -> bool:
        return record.headers.get("authorization") == f"Bearer {api_key}"

    def problems(self, record: RecordedRequest) -> list[str]:
        if not isinstance(record.json, dict):
            return [_NOT_JSON]
        try:
            spec.validate("CreateChatCompletionRequest", record.json)
        except AssertionError as exc:
            return [str(exc)]
        return []

    def is_stream(self, record: RecordedRequest) -> bool:
        return isinstance(record.json, dict) and record.json.get("stream") is True

    def completion(self, record: RecordedRequest, reply: Reply) -> bytes:
        completion = build_completion(record.json, reply)
        return json.dumps(completion, ensure_ascii=False, indent=2).encode()

    def stream(self, record: RecordedRequest, reply: Reply) -> list[bytes]:
        events = [sse(compact(chunk)) for chunk in build_chunks(record.json, reply)]
        return [*events, sse("[DONE]")] if reply.send_done else events

    def info(self, record: RecordedRequest, models: Sequence[str]) -> bytes:
        listing = {
            "object": "list",
            "data": [
                {"id": model, "object": "model", "created": 1715367049, "owned_by": "system"}
                for model in models
            ],
        }
        return json.dumps(listing, indent=2).encode()

    def error_body(self, status: int, error: ApiError) -> bytes:
        default_type, default_code, default_message = _ERRORS.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None, "Error.")
        )
        envelope = {
            "error": {
                "message": error.message or default_message,
                "type": error.type or default_type,
                "param": error.param,
                "code": default_code if error.code is ... else error.code,
            }
        }
        return json.dumps(envelope, indent=4).encode() + b"\n"

    def unauthorized(self) -> Reply:
        return Reply.error(401)

    def invalid(self, problems: list[str]) -> Reply:
        message = problems[0] if problems[0] == _NOT_JSON else "Invalid request: " + problems[0]
        return Reply.error(400, message[:2000])

    def not_found(self, record: RecordedRequest) -> Reply:
        return Reply.error(404, f"Invalid URL ({record.method} {record.path})", code=None)


class FakeOpenAI(FakeUpstream):
    """A fake OpenAI API on `127.0.0.1:<free port>`; use as a context manager.

    `base_url` ("http://127.0.0.1:PORT/v1") is what an OpenAI client or a gateway upstream
    takes. `api_key`, if set, is required as `Authorization: Bearer <key>` (401 otherwise).
    `models` are listed by `GET /v1/models`.
    """

    default_models = ("gpt-4o-mini", "gpt-4o")

    def new_dialect(self, models: Sequence[str]) -> Dialect:
        return OpenAIDialect()

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>/v1`, OpenAI's base URL layout."""
        return self.url + "/v1"
