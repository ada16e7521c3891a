"""Anthropic's Messages API (`POST {base_url}/v1/messages`) behind OpenAI's chat completions.

Owns the translator and the request direction: an OpenAI request becomes a Messages request, and
Anthropic's errors become the gateway's. The conversation itself is turned into Anthropic's turns
by `anthropic_requests.py`, and the answers, a Message (or its SSE stream) as a `chat.completion`
(or chunks), by `anthropic_responses.py`. The quirks of all three, with their sources:
- Auth is `x-api-key`, plus `anthropic-version: 2023-06-01` unless the upstream's `headers:`
  set another; every response carries a `request-id` header; `base_url` has no `/v1` (a trailing
  `/v1` is tolerated). https://docs.claude.com/en/api/versioning, https://docs.claude.com/en/api/errors
- There is no system role: system and developer messages (wherever they stand) become the
  top-level `system` text blocks, in order. Turns alternate user/assistant and start with
  user, so consecutive same-role messages are merged, a conversation that opens with the
  assistant gets a short placeholder user turn (`OPENING`), and empty or whitespace-only text is
  left out (Anthropic refuses empty text blocks). https://docs.claude.com/en/api/messages
- Tool calls are `tool_use` blocks in the assistant turn, tool messages are `tool_result` blocks
  at the start of the next user turn, all results of one turn together; every `tool_use` needs its
  result in the very next turn, so a history that breaks the pairing is refused here with the
  message named. Ids are kept, characters outside `[A-Za-z0-9_-]` replaced (Anthropic's pattern).
  https://docs.claude.com/en/docs/agents-and-tools/tool-use/implement-tool-use
- Images: `data:` URLs become base64 sources (jpeg, png, gif, webp), http(s) URLs become url
  sources; `detail` has no equivalent and is ignored. PDF `file` parts with `file_data` become
  `document` blocks. Audio input and file ids are refused.
  https://docs.claude.com/en/docs/build-with-claude/vision, .../pdf-support
- `max_tokens` is required: `max_completion_tokens`, else `max_tokens`, else the upstream's
  `max_tokens[model]`, else its `default_max_tokens`.
- `temperature` is 0..1 (OpenAI: 0..2): above 1 is refused (or dropped with `drop_unsupported`),
  never clamped. `stop` -> `stop_sequences`; `user` (or `safety_identifier`) ->
  `metadata.user_id`. Newer models refuse `temperature` together with `top_p`; that is the
  upstream's 400 to give. https://docs.claude.com/en/api/messages
- `tool_choice` auto/none/required/named -> auto/none/any/tool, `parallel_tool_calls: false` ->
  `disable_parallel_tool_use`; `tool_choice` is only sent with tools. A function's `strict` flag
  is not sent (strict tool use exists only on some models).
- JSON mode (`response_format` json_schema or json_object) is a forced tool, `RESPONSE_TOOL`
  (renamed if a client tool has that name), whose input schema is the client's schema (an open
  object for json_object); its input comes back as the message content, a JSON string, with
  finish_reason "stop". Chosen over `output_config.format` (structured outputs) because that works
  only on Claude 4.5 and later, while a forced tool works on every model.
  With client tools and tool_choice auto, the model must call a tool (`any`), the response tool
  being its way to answer. https://docs.claude.com/en/docs/build-with-claude/structured-outputs,
  https://docs.claude.com/en/docs/test-and-evaluate/strengthen-guardrails/increase-consistency
- Refused as unsupported (400 naming them, or dropped with `drop_unsupported`): `n` > 1,
  `logprobs`, `top_logprobs`, `logit_bias`, non-zero `presence_penalty`/`frequency_penalty`,
  `seed` (the API has none), `audio`, `modalities` other than text, `prediction`, `functions`,
  `function_call`, `web_search_options`, `reasoning_effort`, `verbosity`, and any parameter the
  gateway does not know (Anthropic rejects unknown fields, so nothing is passed through).
  Ignored as harmless: `store`, `metadata` (OpenAI's stored-completion tags), `service_tier`,
  `prompt_cache_key`, `prompt_cache_retention`, `stream_options` (usage always comes).
- Answers: text blocks are joined into `content`; thinking and server-tool blocks are skipped.
  `stop_reason` end_turn/stop_sequence/pause_turn -> stop, max_tokens and
  model_context_window_exceeded -> length, tool_use -> tool_calls, refusal -> content_filter;
  "tool_calls" whenever the answer holds calls (unless cut by length or refused).
  https://docs.claude.com/en/api/handling-stop-reasons
- Usage: prompt = input + cache read + cache creation tokens (Anthropic's `input_tokens` counts
  neither), `cached_tokens` = cache read. In streams, message_start carries input usage and
  message_delta the cumulative output (and, lately, input) counts.
  https://docs.claude.com/en/docs/build-with-claude/prompt-caching
- Streams: `event:` named SSE (message_start, content_block_start/delta/stop, message_delta,
  message_stop, ping, error); unknown event and delta types are skipped, as Anthropic asks of
  clients; an `error` event, or a body that ends before message_stop, interrupts the stream.
  A tool call streamed without any input JSON gets arguments "{}".
  https://docs.claude.com/en/docs/build-with-claude/streaming
- Errors: `{"type": "error", "error": {"type", "message"}}`; statuses 400/401/403/404/413/429/
  500/529 (overloaded: 503 to the client, retriable). https://docs.claude.com/en/api/errors
- Models: `GET /v1/models` pages `{data: [{id, type, display_name, created_at}], has_more,
  first_id, last_id}`. https://docs.claude.com/en/api/models-list
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.config import Target, UpstreamConfig
from gateway.errors import GatewayError, InvalidRequest
from gateway.openai_types import ChatCompletion, ChatRequest
from gateway.providers.anthropic_requests import to_anthropic_messages
from gateway.providers.anthropic_responses import AnthropicStreamDecoder, to_openai_completion
from gateway.providers.base import (
    USER_AGENT,
    UpstreamRequest,
    error_details,
    error_from_status,
    json_object,
    names_in,
    request_body,
)

PROVIDER = "anthropic"
API_VERSION = "2023-06-01"
RESPONSE_TOOL = "json_response"
MODELS_PAGE = 1000  # the list endpoint's largest page

_TRANSLATED = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "user",
        "safety_identifier",
    }
)
_IGNORED = frozenset(
    {"store", "metadata", "service_tier", "prompt_cache_key", "prompt_cache_retention"}
)
_UNSUPPORTED = (
    "top_logprobs",
    "seed",
    "audio",
    "prediction",
    "functions",
    "function_call",
    "web_search_options",
    "reasoning_effort",
    "verbosity",
)
_CONDITIONAL = frozenset(
    {"n", "logprobs", "logit_bias", "presence_penalty", "frequency_penalty", "modalities"}
)
_KNOWN = _TRANSLATED | _IGNORED | _CONDITIONAL | frozenset(_UNSUPPORTED)


class AnthropicTranslator:
    """Translator for `provider: anthropic` (see the module docstring)."""

    request_id_header = "request-id"

    def build_request(
        self, request: ChatRequest, target: Target, upstream: UpstreamConfig
    ) -> UpstreamRequest:
        body = request_body(
            request, upstream, PROVIDER, unsupported=_UNSUPPORTED, unsupported_if=_unfit(request)
        )
        system, messages = to_anthropic_messages(body["messages"])
        out: dict[str, object] = {"model": target.model}
        if system:
            out["system"] = system
        out["messages"] = messages
        out["max_tokens"] = (
            body.get("max_completion_tokens")
            or body.get("max_tokens")
            or upstream.max_tokens.get(target.model, upstream.default_max_tokens)
        )
        for name in ("temperature", "top_p"):
            if body.get(name) is not None:
                out[name] = body[name]
        stop = body.get("stop")
        if stop:
            out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        user = body.get("user") or body.get("safety_identifier")
        if isinstance(user, str) and user:
            out["metadata"] = {"user_id": user}
        out.update(_tools_and_choice(body, _response_tool(request.body)))
        if request.stream:
            out["stream"] = True
        headers = _headers(upstream, "text/event-stream" if request.stream else "application/json")
        headers["content-type"] = "application/json"
        return UpstreamRequest("POST", _base(upstream) + "/v1/messages", headers, orjson.dumps(out))

    def parse_response(self, body: bytes, request: ChatRequest, upstream: str) -> ChatCompletion:
        message = json_object(body, "a message", upstream)
        return to_openai_completion(message, request, upstream, _response_tool(request.body))

    def parse_error(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        upstream: str,
        secrets: tuple[str, ...],
    ) -> GatewayError:
        # `{"type": "error", "error": {"type", "message"}, "request_id"}`: error_details reads it.
        return error_from_status(status, headers, *error_details(body), upstream, secrets)

    def stream_decoder(
        self, request: ChatRequest, upstream: str, secrets: tuple[str, ...]
    ) -> AnthropicStreamDecoder:
        return AnthropicStreamDecoder(request, upstream, secrets, _response_tool(request.body))

    def health_probe(self, upstream: UpstreamConfig) -> UpstreamRequest:
        return _models_page(upstream, 1)

    def models_request(self, upstream: UpstreamConfig) -> UpstreamRequest:
        return _models_page(upstream, MODELS_PAGE)

    def parse_models(self, body: bytes) -> tuple[str, ...]:
        """`{"data": [{"type": "model", "id", "display_name", "created_at"}], "has_more", ...}`."""
        return names_in(json_object(body, "a model list").get("data"), "id")


def _base(upstream: UpstreamConfig) -> str:
    base = (upstream.base_url or "").rstrip("/")
    return base.removesuffix("/v1")


def _models_page(upstream: UpstreamConfig, limit: int) -> UpstreamRequest:
    url = f"{_base(upstream)}/v1/models?limit={limit}"
    return UpstreamRequest("GET", url, _headers(upstream, "application/json"))


def _headers(upstream: UpstreamConfig, accept: str) -> dict[str, str]:
    headers = {name.lower(): value for name, value in upstream.headers.items()}
    headers.setdefault("anthropic-version", API_VERSION)
    headers["accept"] = accept
    headers["user-agent"] = USER_AGENT
    if upstream.api_key:
        headers["x-api-key"] = upstream.api_key.reveal()
    return headers


# ------------------------------------------------------------------- parameters and tools


def _unfit(request: ChatRequest) -> dict[str, str]:
    """Parameters set to values Anthropic cannot honour, with why (see `request_body`)."""
    body = request.body
    unfit: dict[str, str] = {}
    if body.get("n") not in (None, 1):
        unfit["n"] = "it returns one choice"
    if body.get("logprobs") is True:
        unfit["logprobs"] = "it returns no log probabilities"
    if body.get("logit_bias"):
        unfit["logit_bias"] = ""
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0):
            unfit[name] = "it has no penalties"
    if body.get("modalities") not in (None, ["text"]):
        unfit["modalities"] = "it answers in text only"
    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and temperature > 1:
        unfit["temperature"] = "it accepts 0 to 1"
    for name in body:
        if name not in _KNOWN:
            unfit[name] = "the gateway does not translate it, and Anthropic rejects unknown fields"
    return unfit


def _response_tool(body: Mapping[str, object]) -> str | None:
    """The forced tool's name when `response_format` asks for JSON, else None."""
    response_format = body.get("response_format")
    if not isinstance(response_format, dict) or response_format.get("type") not in (
        "json_object",
        "json_schema",
    ):
        return None
    tools = body.get("tools")
    taken = {
        tool["function"].get("name")
        for tool in (tools if isinstance(tools, list) else ())
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict)
    }
    name = RESPONSE_TOOL
    while name in taken:
        name += "_"
    return name


def _tools_and_choice(body: Mapping[str, Any], json_tool: str | None) -> dict[str, object]:
    tools: list[dict[str, object]] = []
    for i, tool in enumerate(body.get("tools") or ()):
        if tool["type"] != "function":
            raise InvalidRequest(
                f"'tools[{i}].type': provider anthropic takes function tools only",
                param=f"tools[{i}].type",
            )
        function = tool["function"]
        converted: dict[str, object] = {"name": function["name"]}
        if isinstance(function.get("description"), str):
            converted["description"] = function["description"]
        converted["input_schema"] = _object_schema(
            function.get("parameters"), f"tools[{i}].function.parameters"
        )
        tools.append(converted)
    choice = _tool_choice(body.get("tool_choice"))
    if json_tool is not None and choice["type"] not in ("any", "tool"):
        response_format = body["response_format"]
        spec = response_format.get("json_schema") or {}
        schema = _object_schema(spec.get("schema"), "response_format.json_schema.schema")
        description = spec.get("description")
        tools.append(
            {
                "name": json_tool,
                "description": description
                if isinstance(description, str)
                else "Give your answer as this tool's input: a JSON value in this schema.",
                "input_schema": schema,
            }
        )
        if len(tools) == 1 or choice["type"] == "none":
            choice = {"type": "tool", "name": json_tool, "disable_parallel_tool_use": True}
        else:
            choice = {"type": "any"}  # call a client tool, or answer through the response tool
    if not tools:
        return {}
    if body.get("parallel_tool_calls") is False and choice["type"] != "none":
        choice["disable_parallel_tool_use"] = True
    out: dict[str, object] = {"tools": tools}
    if choice != {"type": "auto"}:
        out["tool_choice"] = choice
    return out


def _tool_choice(choice: object) -> dict[str, object]:
    if choice is None or choice == "auto":
        return {"type": "auto"}
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": choice["function"]["name"]}
    raise InvalidRequest(
        "'tool_choice': provider anthropic takes none, auto, required or a named function",
        param="tool_choice",
    )


def _object_schema(schema: object, param: str) -> dict[str, object]:
    """Anthropic's `input_schema` must be an object schema; OpenAI lets `type` go unsaid."""
    if schema is None:
        return {"type": "object", "properties": {}}
    assert isinstance(schema, dict)  # the request parser checked it
    if schema.get("type", "object") != "object":
        raise InvalidRequest(
            f"'{param}' must describe a JSON object for provider anthropic", param=param
        )
    return {"type": "object", **schema}


ANTHROPIC = AnthropicTranslator()
