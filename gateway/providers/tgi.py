"""Hugging Face Text Generation Inference (TGI): its OpenAI-compatible Messages API.

Chat goes to `POST {base_url}/v1/chat/completions` (base_url without `/v1`), health is
`GET /health` and the served model is `GET /info`'s `model_id`. The request is rebuilt from the
fields TGI's `ChatRequest` has, so nothing TGI would silently ignore reaches it; the answer is
the OpenAI reader's (`openai.py`) after TGI's departures from OpenAI are repaired. Quirks, from
the Messages API guide (https://huggingface.co/docs/text-generation-inference/messages_api), the
API reference (https://huggingface.github.io/text-generation-inference/) and the router source
(https://github.com/huggingface/text-generation-inference/blob/main/router/src/server.rs,
router/src/lib.rs, router/src/chat.rs, router/src/validation.rs):
- Unknown request fields are ignored by serde, so OpenAI parameters TGI lacks would be lost
  silently: `max_completion_tokens` becomes `max_tokens`; `n` > 1 (documented "UNUSED"),
  `logit_bias` (UNUSED, and a list rather than OpenAI's map), `audio`, `modalities`,
  `prediction`, `reasoning_effort`, `web_search_options` and the legacy `functions` /
  `function_call` follow the `drop_unsupported` policy. Ignored because they change no output:
  `store`, `metadata`, `service_tier`, `user`, `prompt_cache_key`, `safety_identifier`, and
  `parallel_tool_calls` (TGI makes at most one call, which satisfies either value).
- `stop` is a list only (a string fails deserialization with a 422): a string is wrapped.
- `top_p` must be > 0 and < 1 (validation.rs, "`top_p` must be > 0.0 and < 1.0"): 1 means no
  nucleus filtering, the same as leaving it out, so it is left out.
- `response_format` is TGI's grammar, `{"type": "json", "value": <JSON Schema>}` (guidance docs,
  https://huggingface.co/docs/text-generation-inference/conceptual/guidance; a bare
  `json_object` without `value` is refused, issue #2899): `json_schema` sends its schema,
  `json_object` the schema `{"type": "object"}`, `text` nothing. Grammar and tools are mutually
  exclusive in TGI ("Grammar and tools are mutually exclusive"), so both together follow the
  `drop_unsupported` policy for `response_format`.
- Chat templates know system/user/assistant/tool roles: `developer` is sent as `system`.
- Answers: `id` is "" (the gateway's request id is used instead), `object` was
  "text_completion" in older versions, `finish_reason` is "stop" (or "eos_token") even when the
  answer is a tool call, and a tool call's `arguments` is a JSON object, not a string
  (issues #2136, #2461), with an extra `description: null`.
- Streams: every delta repeats `role`; a tool call's id, type and index come on every fragment
  and its name on the first; a tool-call stream may end with no finish_reason at all (chat.rs
  stops emitting once the call's JSON is complete), so `data: [DONE]` ends it with
  "tool_calls"; usage comes on the finish chunk (2.x) or a chunk with `choices: []` (3.x) and is
  always re-sent as one trailing chunk (the others then say `usage: null`, as OpenAI's do);
  the role chunk has `content: null` when the answer opens with a tool call. An error
  mid-stream is `data: {"error": "...", "error_type": "..."}`.
- Errors are `{"error": "<message>", "error_type": "<kind>"}` with 422 validation /
  template_error / tool_error (-> 400, passed through), 424 generation (-> 502), 429
  overloaded (TGI's queue is full: -> 429 like any rate limit, so the client's SDK backs off
  and the gateway pauses that upstream for its retry-after; an overload reported with another
  status -> 503) and 500 incomplete_generation (-> 502). `/health` answers 200 with an empty
  body, 503 otherwise.
- Auth, when TGI runs with `--api-key`, is `Authorization: Bearer`; TGI sends no request-id
  header of its own, `x-request-id` is what Inference Endpoints and most proxies add.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.config import Target, UpstreamConfig
from gateway.errors import GatewayError, InvalidRequest, StreamInterrupted, UpstreamError
from gateway.logs import redact
from gateway.openai_types import ChatCompletion, ChatCompletionChunk, ChatRequest, Usage
from gateway.providers.base import UpstreamRequest, request_body
from gateway.providers.openai import (
    MAX_ERROR_MESSAGE,
    USER_AGENT,
    error_details,
    error_from_status,
    normalize_completion,
)
from gateway.sse import SSEDecoder

PROVIDER = "tgi"
# Fields of TGI's ChatRequest (router/src/lib.rs); anything else would be ignored by TGI.
TGI_FIELDS = frozenset(
    {
        "model",
        "messages",
        "frequency_penalty",
        "presence_penalty",
        "logprobs",
        "top_logprobs",
        "max_tokens",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "tool_prompt",
        "response_format",
        "guideline",
    }
)
UNSUPPORTED = (
    "logit_bias",
    "audio",
    "modalities",
    "prediction",
    "reasoning_effort",
    "web_search_options",
    "functions",
    "function_call",
)
_PART_TYPES = ("text", "image_url")
_STOP_REASONS = {"eos_token": "stop", "stop_sequence": "stop", "stop": "stop"}
# TGI error_type -> what the gateway answers (status 422 ones are the client's, see parse_error).
_OVERLOADED = "overloaded"


class TGITranslator:
    """Translator for `provider: tgi`."""

    request_id_header = "x-request-id"

    def build_request(
        self, request: ChatRequest, target: Target, upstream: UpstreamConfig
    ) -> UpstreamRequest:
        body = request_body(request, upstream, PROVIDER, UNSUPPORTED, _unsupported_if(request.body))
        out: dict[str, Any] = {k: v for k, v in body.items() if k in TGI_FIELDS}
        out["model"] = target.model
        out["messages"] = to_tgi_messages(body.get("messages"))
        if out.get("max_tokens") is None and body.get("max_completion_tokens") is not None:
            out["max_tokens"] = body["max_completion_tokens"]
        if isinstance(out.get("stop"), str):
            out["stop"] = [out["stop"]]
        top_p = out.get("top_p")
        if isinstance(top_p, int | float) and top_p >= 1:
            del out["top_p"]
        if "response_format" in out:
            grammar = to_tgi_grammar(out.pop("response_format"))
            if grammar is not None:
                out["response_format"] = grammar
        if request.stream:
            out["stream_options"] = {"include_usage": True}
        else:
            out.pop("stream_options", None)
        return UpstreamRequest(
            "POST",
            _base(upstream) + "/v1/chat/completions",
            self._headers(request, upstream, stream=request.stream),
            orjson.dumps(out),
        )

    def _headers(
        self, request: ChatRequest | None, upstream: UpstreamConfig, *, stream: bool = False
    ) -> dict[str, str]:
        headers = {
            **(request.forward_headers if request is not None else {}),
            **upstream.headers,
            "accept": "text/event-stream" if stream else "application/json",
            "user-agent": USER_AGENT,
        }
        if request is not None:
            headers["content-type"] = "application/json"
        if "authorization" not in upstream.headers:
            headers.pop("authorization", None)  # only ever the upstream's own credentials
        if upstream.api_key:
            headers["authorization"] = "Bearer " + upstream.api_key.reveal()
        return headers

    def parse_response(self, body: bytes, request: ChatRequest, upstream: str) -> ChatCompletion:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"upstream '{upstream}' returned a body that is not JSON") from None
        if isinstance(data, dict):
            if not data.get("id"):
                data["id"] = request.id
            for choice in data.get("choices") or ():
                if isinstance(choice, dict):
                    _repair_choice(choice, upstream)
        return normalize_completion(data, upstream)

    def parse_error(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        upstream: str,
        secrets: tuple[str, ...],
    ) -> GatewayError:
        message, kind, param, code = error_details(body)
        if kind == _OVERLOADED and status != 429:
            status = 503
        elif status == 422:
            status = 400  # input validation: OpenAI clients expect a 400 for a bad request
            code = code or kind
            kind = "invalid_request_error"
        return error_from_status(status, headers, message, kind, param, code, upstream, secrets)

    def stream_decoder(
        self, request: ChatRequest, upstream: str, secrets: tuple[str, ...]
    ) -> TGIStreamDecoder:
        return TGIStreamDecoder(request, upstream, secrets)

    def health_probe(self, upstream: UpstreamConfig) -> UpstreamRequest:
        """`GET /health`: 200 once the model is loaded, 503 before."""
        return UpstreamRequest("GET", _base(upstream) + "/health", self._headers(None, upstream))

    def models_request(self, upstream: UpstreamConfig) -> UpstreamRequest:
        return UpstreamRequest("GET", _base(upstream) + "/info", self._headers(None, upstream))

    def parse_models(self, body: bytes) -> tuple[str, ...]:
        """`{"model_id": "...", ...}`: TGI serves exactly one model."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError("the model info is not JSON") from None
        model = data.get("model_id") if isinstance(data, dict) else None
        if not isinstance(model, str):
            raise UpstreamError("the model info has no model_id")
        return (model,)


def _base(upstream: UpstreamConfig) -> str:
    if not upstream.base_url:
        raise UpstreamError("a tgi upstream needs a base_url")
    return upstream.base_url.rstrip("/")


def _unsupported_if(body: Mapping[str, object]) -> dict[str, str]:
    why: dict[str, str] = {}
    n = body.get("n")
    if n is not None and n != 1:
        why["n"] = "it generates one choice per request"
    if body.get("response_format") is not None and body.get("tools"):
        why["response_format"] = "it cannot combine a response format with tools"
    return why


# ------------------------------------------------------------------- requests


def to_tgi_messages(messages: object) -> list[object]:
    """The client's messages with `developer` as `system`; parts TGI cannot read are refused."""
    if not isinstance(messages, list):
        return []
    out: list[object] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            out.append(message)
            continue
        message = dict(message)
        if message.get("role") == "developer":
            message["role"] = "system"
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind not in _PART_TYPES:
                    raise InvalidRequest(
                        f"content part type {kind!r} is not supported by provider {PROVIDER} "
                        "(it reads text and image_url parts)",
                        param=f"messages[{i}].content[{j}]",
                        code="unsupported_content",
                    )
        out.append(message)
    return out


def to_tgi_grammar(response_format: object) -> dict[str, Any] | None:
    """OpenAI's `response_format` as TGI's grammar (None: no constraint)."""
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object" and "value" not in response_format:
        return {"type": "json", "value": {"type": "object"}}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return {"type": "json", "value": schema if isinstance(schema, dict) else {}}
    return response_format  # TGI's own {"type": "json"|"regex", "value": ...}


# ------------------------------------------------------------------- responses


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

    def __init__(self, request: ChatRequest, upstream: str, secrets: tuple[str, ...]) -> None:
        self._sse = SSEDecoder()
        self._request = request
        self._upstream = upstream
        self._secrets = secrets
        self._base: dict[str, Any] | None = None
        self._started = False
        self._calls: dict[int, bool] = {}  # upstream index -> announced
        self._reason: str | None = None
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
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise StreamInterrupted(
                f"upstream '{self._upstream}' sent a stream event that is not JSON"
            ) from None
        if not isinstance(event, dict):
            raise StreamInterrupted(f"upstream '{self._upstream}' sent a malformed event")
        if "error" in event:
            message, kind, _, code = error_details(raw)
            raise StreamInterrupted(
                f"upstream '{self._upstream}' failed mid-stream: "
                + redact(message, self._secrets)[:MAX_ERROR_MESSAGE],
                code=code or kind or "stream_interrupted",
            )
        if not isinstance(event.get("choices"), list):
            raise StreamInterrupted(f"upstream '{self._upstream}' sent a chunk without choices")
        return event

    def _make(
        self, delta: dict[str, Any], reason: str | None = None, logprobs: object = None
    ) -> ChatCompletionChunk:
        base = self._base or self._fallback_base()
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
        chunk: dict[str, Any] = {**base, "choices": [choice]}
        if self._request.include_usage:
            chunk["usage"] = None  # OpenAI's rule: every chunk but the usage one says null
        return chunk  # type: ignore[return-value]  # built to spec

    def _fallback_base(self) -> dict[str, Any]:
        return {
            "id": self._request.id,
            "object": "chat.completion.chunk",
            "created": self._request.created,
            "model": "",
        }

    def _chunk(self, event: dict[str, Any]) -> list[ChatCompletionChunk]:
        if self._base is None:
            created = event.get("created")
            self._base = {
                "id": event.get("id") or self._request.id,
                "object": "chat.completion.chunk",
                "created": created if isinstance(created, int) else self._request.created,
                "model": event.get("model") if isinstance(event.get("model"), str) else "",
            }
            if isinstance(event.get("system_fingerprint"), str):
                self._base["system_fingerprint"] = event["system_fingerprint"]
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
            logprobs = choice.get("logprobs")
            content = delta.get("content")
            if isinstance(content, str) and content:
                out.append(self._make({"content": content}, logprobs=logprobs))
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
        fragment = function.get("arguments")
        fragment = fragment if isinstance(fragment, str) else _arguments(fragment)
        out: list[ChatCompletionChunk] = []
        if index not in self._calls:
            self._calls[index] = True
            announce = {
                "index": index,
                "id": call.get("id") or f"call_{index}",
                "type": "function",
                "function": {"name": function.get("name") or "", "arguments": ""},
            }
            out.append(self._make({"tool_calls": [announce]}))
        if fragment:
            delta = {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}
            out.append(self._make(delta))
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
            base = self._base or self._fallback_base()
            out.append({**base, "choices": [], "usage": self.usage})  # type: ignore[typeddict-item]
        return out


TGI = TGITranslator()
