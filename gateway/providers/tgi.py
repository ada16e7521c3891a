"""Hugging Face Text Generation Inference (TGI): its OpenAI-compatible Messages API.

Chat goes to `POST {base_url}/v1/chat/completions` (base_url without `/v1`), health is
`GET /health` and the served model is `GET /info`'s `model_id`. The request is rebuilt from the
fields TGI's `ChatRequest` has, so nothing TGI would silently ignore reaches it; the answer is
the OpenAI reader's (`openai.py`) after TGI's departures from OpenAI are repaired
(`tgi_responses.py`). Quirks, from
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
from gateway.errors import GatewayError, InvalidRequest, UpstreamError
from gateway.openai_types import ChatCompletion, ChatRequest
from gateway.providers.base import (
    USER_AGENT,
    UpstreamRequest,
    error_details,
    error_from_status,
    json_object,
    request_body,
)
from gateway.providers.tgi_responses import TGIStreamDecoder, to_openai_completion

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
_OVERLOADED = "overloaded"  # TGI's error_type when its queue is full


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
        return to_openai_completion(json_object(body, "a body", upstream), request, upstream)

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
        model = json_object(body, "an /info body").get("model_id")
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


TGI = TGITranslator()
