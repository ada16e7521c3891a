"""Anthropic's Messages API (`POST {base_url}/v1/messages`) behind OpenAI's chat completions.

Owns the translation both ways: an OpenAI request becomes a Messages request, a Message (or its
SSE stream) becomes a `chat.completion` (or chunks), and Anthropic's errors become the gateway's.
Quirks, with where they come from:
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

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.config import Target, UpstreamConfig
from gateway.errors import GatewayError, InvalidRequest, StreamInterrupted, UpstreamError
from gateway.logs import redact
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
from gateway.providers.base import UpstreamRequest, request_body
from gateway.providers.openai import (
    MAX_ERROR_MESSAGE,
    USER_AGENT,
    error_details,
    error_from_status,
)
from gateway.sse import SSEDecoder

PROVIDER = "anthropic"
API_VERSION = "2023-06-01"
RESPONSE_TOOL = "json_response"
OPENING = "(The conversation starts here.)"
MODELS_PAGE = 1000  # the list endpoint's largest page

_STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_DATA_URL = re.compile(r"data:([\w.+/-]+);base64,(.*)", re.DOTALL)
_NOT_ID = re.compile(r"[^A-Za-z0-9_-]")
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
        data = _load(body)
        content = data.get("content") if isinstance(data, dict) else None
        if (
            not isinstance(data, dict)
            or data.get("type") != "message"
            or not isinstance(content, list)
        ):
            raise UpstreamError(f"upstream '{upstream}' returned a body that is not a message")
        json_tool = _response_tool(request.body)
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
        message: dict[str, object] = {
            "role": "assistant",
            "content": answer if answer is not None else ("".join(texts) if texts else None),
            "refusal": None,
        }
        if calls:
            message["tool_calls"] = calls
        completion: dict[str, object] = {
            "id": request.id,
            "object": "chat.completion",
            "created": request.created,
            "model": data["model"] if isinstance(data.get("model"), str) else request.model,
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
        return completion  # type: ignore[return-value]  # built to the TypedDict's shape

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
        return AnthropicStreamDecoder(request, upstream, secrets)

    def health_probe(self, upstream: UpstreamConfig) -> UpstreamRequest:
        return UpstreamRequest(
            "GET", _base(upstream) + "/v1/models?limit=1", _headers(upstream, "application/json")
        )

    def models_request(self, upstream: UpstreamConfig) -> UpstreamRequest:
        url = f"{_base(upstream)}/v1/models?limit={MODELS_PAGE}"
        return UpstreamRequest("GET", url, _headers(upstream, "application/json"))

    def parse_models(self, body: bytes) -> tuple[str, ...]:
        """`{"data": [{"type": "model", "id", "display_name", "created_at"}], "has_more", ...}`."""
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
    base = (upstream.base_url or "").rstrip("/")
    return base.removesuffix("/v1")


def _headers(upstream: UpstreamConfig, accept: str) -> dict[str, str]:
    headers = {name.lower(): value for name, value in upstream.headers.items()}
    headers.setdefault("anthropic-version", API_VERSION)
    headers["accept"] = accept
    headers["user-agent"] = USER_AGENT
    if upstream.api_key:
        headers["x-api-key"] = upstream.api_key.reveal()
    return headers


def _load(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamError("the upstream returned a body that is not JSON") from None


# ------------------------------------------------------------------- requests


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


@dataclass
class _Pending:
    """The tool calls of the last assistant message that still wait for their tool message."""

    path: str
    ids: list[str]


def to_anthropic_messages(
    messages: list[dict[str, Any]],
) -> tuple[list[dict[str, object]], list[dict[str, Any]]]:
    """OpenAI messages as Anthropic's (system blocks, alternating turns). Raises InvalidRequest."""
    system: list[dict[str, object]] = []
    turns: list[dict[str, Any]] = []
    pending: _Pending | None = None
    for i, message in enumerate(messages):
        role, path = message["role"], f"messages[{i}]"
        if role in ("system", "developer"):
            system.extend(_text_blocks(message["content"], f"{path}.content"))
            continue
        if role == "tool":
            call_id = message["tool_call_id"]
            if pending is None or call_id not in pending.ids:
                raise InvalidRequest(
                    f"'{path}' answers tool call '{call_id[:64]}', which the assistant message "
                    "before it did not make",
                    param=f"{path}.tool_call_id",
                )
            pending.ids.remove(call_id)
            blocks = [_tool_result(message, path)]
            turn_role = "user"
        else:
            _check_answered(pending)
            pending = None
            if role == "user":
                blocks = _user_blocks(message["content"], f"{path}.content")
                turn_role = "user"
            elif role == "assistant":
                blocks, ids = _assistant_blocks(message, path)
                pending = _Pending(path, ids) if ids else None
                turn_role = "assistant"
            else:
                raise InvalidRequest(
                    f"'{path}.role' {role} is not supported by provider anthropic; use tool "
                    "messages",
                    param=f"{path}.role",
                )
        if not blocks:
            continue  # nothing but empty text: Anthropic refuses empty content
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": turn_role, "content": blocks})
    _check_answered(pending)
    if not turns:
        raise InvalidRequest(
            "provider anthropic needs at least one user or assistant message with content",
            param="messages",
        )
    for turn in turns:
        if turn["role"] == "user":  # tool results open their turn (Anthropic's rule)
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    if turns[0]["role"] == "assistant":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": OPENING}]})
    _trim_final_assistant(turns)
    return system, turns


def _check_answered(pending: _Pending | None) -> None:
    if pending is not None and pending.ids:
        raise InvalidRequest(
            f"'{pending.path}.tool_calls' has no tool message answering '{pending.ids[0][:64]}'; "
            "each tool call needs its tool message right after the assistant message",
            param=f"{pending.path}.tool_calls",
        )


def _trim_final_assistant(turns: list[dict[str, Any]]) -> None:
    """A final assistant turn (a prefill) may not end in whitespace, Anthropic says."""
    last = turns[-1]
    if last["role"] != "assistant" or last["content"][-1]["type"] != "text":
        return
    last["content"][-1]["text"] = last["content"][-1]["text"].rstrip()
    # the block held more than whitespace (blank ones are never added), so it is not empty


def _text_blocks(content: object, path: str) -> list[dict[str, object]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    assert isinstance(content, list)  # the request parser checked it
    blocks: list[dict[str, object]] = []
    for part in content:
        text = part.get("text") if part.get("type") == "text" else part.get("refusal")
        if isinstance(text, str) and text.strip():
            blocks.append({"type": "text", "text": text})
    return blocks


def _user_blocks(content: object, path: str) -> list[dict[str, object]]:
    if isinstance(content, str):
        return _text_blocks(content, path)
    assert isinstance(content, list)
    blocks: list[dict[str, object]] = []
    for j, part in enumerate(content):
        where = f"{path}[{j}]"
        kind = part["type"]
        if kind == "text":
            blocks.extend(_text_blocks([part], where))
        elif kind == "image_url":
            blocks.append(_image(part["image_url"]["url"], f"{where}.image_url.url"))
        elif kind == "file":
            blocks.append(_document(part["file"], f"{where}.file"))
        else:
            raise InvalidRequest(
                f"'{where}': provider anthropic does not accept {kind} parts", param=where
            )
    return blocks


def _image(url: str, param: str) -> dict[str, object]:
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise InvalidRequest(f"'{param}' must be an http(s) URL or a base64 data: URL", param=param)
    media_type = match.group(1).lower().replace("image/jpg", "image/jpeg")
    if media_type not in _IMAGE_TYPES:
        raise InvalidRequest(
            f"'{param}': provider anthropic takes JPEG, PNG, GIF or WebP images, not "
            f"{media_type[:64]}",
            param=param,
        )
    source = {"type": "base64", "media_type": media_type, "data": match.group(2)}
    return {"type": "image", "source": source}


def _document(file: Mapping[str, object], param: str) -> dict[str, object]:
    data = file.get("file_data")
    match = _DATA_URL.fullmatch(data) if isinstance(data, str) else None
    if match is None or match.group(1).lower() != "application/pdf":
        raise InvalidRequest(
            f"'{param}': provider anthropic takes files as PDF data: URLs in 'file_data' only",
            param=param,
        )
    source = {"type": "base64", "media_type": "application/pdf", "data": match.group(2)}
    return {"type": "document", "source": source}


def _assistant_blocks(
    message: Mapping[str, Any], path: str
) -> tuple[list[dict[str, object]], list[str]]:
    content = message.get("content")
    blocks = [] if content is None else _text_blocks(content, f"{path}.content")
    ids: list[str] = []
    for j, call in enumerate(message.get("tool_calls") or ()):
        where = f"{path}.tool_calls[{j}]"
        if call.get("type", "function") != "function":
            raise InvalidRequest(
                f"'{where}': provider anthropic takes function tool calls only", param=where
            )
        function = call["function"]
        arguments = function["arguments"]
        try:
            parsed = orjson.loads(arguments) if arguments.strip() else {}
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise InvalidRequest(
                f"'{where}.function.arguments' must be a JSON object for provider anthropic",
                param=f"{where}.function.arguments",
            )
        ids.append(call["id"])
        blocks.append(
            {
                "type": "tool_use",
                "id": _tool_id(call["id"]),
                "name": function["name"],
                "input": parsed,
            }
        )
    return blocks, ids


def _tool_result(message: Mapping[str, Any], path: str) -> dict[str, object]:
    block: dict[str, object] = {
        "type": "tool_result",
        "tool_use_id": _tool_id(message["tool_call_id"]),
    }
    text = _text_blocks(message["content"], f"{path}.content")
    if text:
        block["content"] = text
    return block


def _tool_id(call_id: str) -> str:
    return _NOT_ID.sub("_", call_id) or "_"


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


# ------------------------------------------------------------------- answers


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

    cache_read = _count(pick("cache_read_input_tokens"))
    prompt = _count(pick("input_tokens")) + cache_read + _count(pick("cache_creation_input_tokens"))
    completion = _count(pick("output_tokens"))
    out: Usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if pick("cache_read_input_tokens") is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cache_read}
    return out


@dataclass
class _Block:
    kind: str  # "text", "tool" (a client tool call), "json" (the response tool), "other"
    tool_index: int = -1
    sent_input: bool = False


class AnthropicStreamDecoder:
    """Anthropic's SSE events in, OpenAI chunks out (see the module docstring)."""

    def __init__(self, request: ChatRequest, upstream: str, secrets: tuple[str, ...]) -> None:
        self._sse = SSEDecoder()
        self._id = request.id
        self._created = request.created
        self._model = request.model
        self._include_usage = request.include_usage
        self._json_tool = _response_tool(request.body)
        self._upstream = upstream
        self._secrets = secrets
        self._blocks: dict[int, _Block] = {}
        self._tools = 0
        self._start_usage: dict[str, object] = {}
        self._stop_reason: object = None
        self.started = False
        self.done = False
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> list[ChatCompletionChunk]:
        chunks: list[ChatCompletionChunk] = []
        for event in self._sse.feed(data):
            if self.done:
                continue
            try:
                payload = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                raise self._broken("sent a stream event that is not JSON") from None
            if not isinstance(payload, dict):
                raise self._broken("sent a malformed stream event")
            kind = payload.get("type", event.event)
            if kind == "error":
                message, error_type, _, _ = error_details(event.data)
                raise StreamInterrupted(
                    f"upstream '{self._upstream}' failed mid-stream: "
                    + redact(message, self._secrets)[:MAX_ERROR_MESSAGE],
                    code=error_type or "stream_interrupted",
                )
            if kind == "message_start":
                chunks.append(self._start(payload))
            elif kind in ("content_block_start", "content_block_delta", "content_block_stop"):
                if not self.started:
                    raise self._broken(f"sent {kind} before message_start")
                chunks.extend(self._content(kind, payload))
            elif kind == "message_delta":
                self._delta(payload)
            elif kind == "message_stop":
                if not self.started:
                    raise self._broken("sent message_stop before message_start")
                chunks.extend(self._stop())
            # ping, and event types added later: nothing to relay
        return chunks

    def close(self) -> list[ChatCompletionChunk]:
        if not self.done:
            raise StreamInterrupted(
                f"upstream '{self._upstream}' closed the stream before message_stop"
            )
        return []

    def _broken(self, what: str) -> StreamInterrupted:
        return StreamInterrupted(f"upstream '{self._upstream}' {what}")

    def _chunk(self, delta: Delta, finish: FinishReason | None = None) -> ChatCompletionChunk:
        chunk: ChatCompletionChunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self._include_usage:
            chunk["usage"] = None  # as OpenAI does: only the last chunk carries usage
        return chunk

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
        self.started = True
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
        self.done = True
        finish = _finish_reason(self._stop_reason, self._tools > 0)
        chunks = [self._chunk({}, finish)]
        if self._include_usage and self.usage is not None:
            chunks.append(
                {
                    "id": self._id,
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self._model,
                    "choices": [],
                    "usage": self.usage,
                }
            )
        return chunks


ANTHROPIC = AnthropicTranslator()
