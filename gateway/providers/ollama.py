"""Ollama's native chat API (`POST {base_url}/api/chat`, NDJSON streams) behind OpenAI's format.

This module owns the translator and the request direction: an OpenAI chat request becomes an
Ollama chat request. Ollama's answer (one JSON body, or NDJSON lines) becomes an OpenAI
completion or chunks in `ollama_responses.py`. Both are pure: ids and times come from the
`ChatRequest`.

Ollama's quirks, and what the gateway does about them:
- Ollama streams unless told otherwise, so `stream` is always sent (true or false). A stream is
  `application/x-ndjson`, one JSON object per line; the last has `"done": true`, `done_reason`,
  the token counts and durations (ns). A stream without that line was cut short.
  https://docs.ollama.com/api/streaming, https://github.com/ollama/ollama/blob/main/docs/api.md
- Sampling settings go in `options`: temperature, top_p, num_predict (from
  max_completion_tokens, else max_tokens), stop (always a list), seed, presence_penalty,
  frequency_penalty (all in api/types.go `Options`). Ollama only logs "invalid option provided"
  for an unknown option key and ignores it (api/types.go `Options.FromMap`), so only these
  known keys are ever sent.
- `format` is "json" (response_format json_object) or a JSON Schema object (json_schema).
  https://docs.ollama.com/capabilities/structured-outputs
- Roles are system, user, assistant and tool; developer messages go as system. Images travel as
  a message's `images: [<base64>]`: data: URLs are unwrapped, http(s) URLs refused with a 400
  naming the part (a pure translator cannot fetch). Text parts are joined with newlines.
  https://docs.ollama.com/capabilities/vision
- Tool calls are `{"function": {"name", "arguments": <object>}}`: arguments are an object,
  not a JSON string, both ways. Older Ollama versions send no call ids (newer ones send
  `call_xxxxxxxx`, server/routes.go `toolCallId`): a missing id is made up from the request
  id and the call's position, the same on every read. A tool result goes back as
  `{"role": "tool", "tool_name", "content"}`; the name is found by looking up its
  `tool_call_id` among the earlier assistant calls.
  https://docs.ollama.com/capabilities/tool-calling
- A stream sends each tool call whole in one line: it is announced with index, id and name,
  then its whole arguments string follows as one delta. `done_reason` is "stop" also when the
  model called tools, so finish_reason is "tool_calls" whenever the answer holds calls; "length"
  is length, anything else (stop, load, unload) is stop. Usage comes from `prompt_eval_count`
  and `eval_count` (Go's omitempty drops them when 0: missing counts are 0).
- Errors are `{"error": "..."}` with 400, 404 (model not found), 500, 503 (queue full); an
  error can also arrive mid-stream as a line `{"error": "..."}` (StreamInterrupted).
  https://docs.ollama.com/api/errors
- The local server needs no key; ollama.com takes `Authorization: Bearer <key>`.
  https://docs.ollama.com/api/authentication
- Health is `GET /api/version`; `GET /api/tags` lists the local models (`models[].name`).
- Ollama sends no request id header; `x-request-id` names one it never sets, so none is logged.
- Thinking models may add `message.thinking`: OpenAI's chat format has no place for it, so it is
  not relayed.

Refused (400, or dropped with `drop_unsupported`): n > 1, logprobs / top_logprobs (recent
Ollama has them, but an older server ignores them silently, so the answer would lack them
without a word), logit_bias, audio and audio modalities, prediction, the legacy functions /
function_call, tool_choice "required" or a named tool, parallel_tool_calls false. Ignored as
harmless: user, store, metadata, service_tier, stream_options (usage is always reported),
reasoning_effort, tool_choice "auto"; tool_choice "none" sends no tools.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.config import Target, UpstreamConfig
from gateway.errors import GatewayError, InvalidRequest
from gateway.openai_types import ChatCompletion, ChatRequest
from gateway.providers.base import (
    USER_AGENT,
    UpstreamRequest,
    error_details,
    error_from_status,
    json_object,
    names_in,
    request_body,
)
from gateway.providers.ollama_responses import OllamaStreamDecoder, to_openai_completion

PROVIDER = "ollama"
DEFAULT_BASE_URL = "http://127.0.0.1:11434"
CHAT_PATH = "/api/chat"
VERSION_PATH = "/api/version"
TAGS_PATH = "/api/tags"
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class OllamaTranslator:
    """Translator for `provider: ollama`."""

    request_id_header = "x-request-id"  # Ollama sends none: nothing to log

    def build_request(
        self, request: ChatRequest, target: Target, upstream: UpstreamConfig
    ) -> UpstreamRequest:
        body = request_body(
            request,
            upstream,
            PROVIDER,
            unsupported=(
                "top_logprobs",
                "audio",
                "prediction",
                "functions",
                "function_call",
            ),
            unsupported_if=_unsupported_values(request.body),
        )
        out: dict[str, Any] = {
            "model": target.model,
            "messages": to_ollama_messages(body["messages"]),
            "stream": request.stream,
        }
        options = _options(body)
        if options:
            out["options"] = options
        fmt = _format(body.get("response_format"))
        if fmt is not None:
            out["format"] = fmt
        tools = body.get("tools")
        if tools and body.get("tool_choice") != "none":
            out["tools"] = _tools(tools)
        headers = _headers(
            upstream, "application/x-ndjson" if request.stream else "application/json"
        )
        headers["content-type"] = "application/json"
        return UpstreamRequest("POST", _base(upstream) + CHAT_PATH, headers, orjson.dumps(out))

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
        message, kind, param, code = error_details(body)  # {"error": "..."} is one of its shapes
        if status == 404 and code is None:
            code = "model_not_found"
        return error_from_status(status, headers, message, kind, param, code, upstream, secrets)

    def stream_decoder(
        self, request: ChatRequest, upstream: str, secrets: tuple[str, ...]
    ) -> OllamaStreamDecoder:
        return OllamaStreamDecoder(request, upstream, secrets)

    def health_probe(self, upstream: UpstreamConfig) -> UpstreamRequest:
        return self._get(upstream, VERSION_PATH)

    def models_request(self, upstream: UpstreamConfig) -> UpstreamRequest:
        return self._get(upstream, TAGS_PATH)

    def parse_models(self, body: bytes) -> tuple[str, ...]:
        """`{"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest", ...}]}`."""
        return names_in(json_object(body, "a model list").get("models"), "name")

    def _get(self, upstream: UpstreamConfig, path: str) -> UpstreamRequest:
        return UpstreamRequest(
            "GET", _base(upstream) + path, _headers(upstream, "application/json")
        )


def _base(upstream: UpstreamConfig) -> str:
    return (upstream.base_url or DEFAULT_BASE_URL).rstrip("/")


def _headers(upstream: UpstreamConfig, accept: str) -> dict[str, str]:
    """The upstream's own headers, and its key (ollama.com) as a bearer token."""
    headers = {**upstream.headers, "accept": accept, "user-agent": USER_AGENT}
    if upstream.api_key:
        headers["authorization"] = "Bearer " + upstream.api_key.reveal()
    return headers


# ------------------------------------------------------------------- requests


def _unsupported_values(body: Mapping[str, object]) -> dict[str, str]:
    """Parameters whose value (not mere presence) Ollama cannot honour, with the reason."""
    refused: dict[str, str] = {}
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        refused["n"] = "Ollama returns one choice"
    if body.get("logprobs") is True:
        refused["logprobs"] = "not relayed from Ollama"
    if body.get("logit_bias"):
        refused["logit_bias"] = "Ollama has no logit bias"
    modalities = body.get("modalities")
    if isinstance(modalities, list) and any(m != "text" for m in modalities):
        refused["modalities"] = "Ollama answers with text only"
    choice = body.get("tool_choice")
    if choice == "required" or isinstance(choice, dict):
        refused["tool_choice"] = "Ollama cannot force a tool call"
    if body.get("parallel_tool_calls") is False:
        refused["parallel_tool_calls"] = "Ollama cannot limit the model to one call"
    return refused


def _options(body: Mapping[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
        if body.get(name) is not None:
            options[name] = body[name]
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    if limit is not None:
        options["num_predict"] = limit
    stop = body.get("stop")
    if stop is not None:
        options["stop"] = [stop] if isinstance(stop, str) else list(stop)
    return options


def _format(response_format: object) -> object:
    """Ollama's `format` for OpenAI's `response_format`, or None for free text."""
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_object":
        return "json"
    if response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return schema if isinstance(schema, dict) else "json"
    return None


def _tools(tools: list[Any]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise InvalidRequest(
                f"'tools[{i}].type' must be function: provider ollama has only function tools",
                param=f"tools[{i}].type",
            )
        function = tool["function"]
        spec: dict[str, Any] = {"name": function["name"]}
        if function.get("description") is not None:
            spec["description"] = function["description"]
        spec["parameters"] = function.get("parameters") or {"type": "object", "properties": {}}
        out.append({"type": "function", "function": spec})
    return out


def to_ollama_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages as Ollama messages. Raises InvalidRequest naming what cannot be sent."""
    names_by_id: dict[str, str] = {}  # tool_call_id -> function name, from earlier calls
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        path = f"messages[{i}]"
        role = message["role"]
        if role in ("tool", "function"):
            name = message.get("name") if role == "function" else None
            name = name or names_by_id.get(message.get("tool_call_id") or "")
            entry: dict[str, Any] = {"role": "tool", "content": _text(message["content"], path)}
            if name:
                entry["tool_name"] = name
            out.append(entry)
            continue
        entry = {"role": _ROLES[role]}
        text, images = _content(message.get("content"), f"{path}.content")
        entry["content"] = text
        if images:
            entry["images"] = images
        if role == "assistant":
            calls = _to_ollama_calls(message, path)
            names_by_id.update((call["id"], call["function"]["name"]) for call in calls)
            if calls:
                entry["tool_calls"] = calls
        out.append(entry)
    return out


def _text(content: object, path: str) -> str:
    text, _ = _content(content, f"{path}.content")
    return text


def _content(content: object, path: str) -> tuple[str, list[str]]:
    """(text, base64 images) of a message's content; parts checked by the request parser."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content if isinstance(content, list) else ()):
        kind = part.get("type")
        if kind == "text":
            texts.append(part["text"])
        elif kind == "refusal":
            texts.append(part["refusal"])
        elif kind == "image_url":
            images.append(_image(part["image_url"]["url"], f"{path}[{j}]"))
        else:
            raise InvalidRequest(
                f"'{path}[{j}]' is a {kind} part: provider ollama takes only text and images",
                param=f"{path}[{j}]",
            )
    return "\n".join(texts), images


def _image(url: str, path: str) -> str:
    if url.startswith("data:"):
        header, sep, data = url.partition(",")
        if sep and header.endswith(";base64") and data:
            return data
        raise InvalidRequest(
            f"'{path}.image_url.url' must be a base64 data: URL", param=f"{path}.image_url.url"
        )
    raise InvalidRequest(
        f"'{path}' is an image by URL: provider ollama takes images only as base64 data: URLs "
        "(the gateway does not fetch URLs)",
        param=path,
    )


def _to_ollama_calls(message: Mapping[str, Any], path: str) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    for j, call in enumerate(message.get("tool_calls") or ()):
        where = f"{path}.tool_calls[{j}]"
        if call.get("type", "function") != "function":
            raise InvalidRequest(
                f"'{where}.type' must be function for provider ollama", param=f"{where}.type"
            )
        function = call["function"]
        arguments = _arguments(function["arguments"], f"{where}.function.arguments")
        calls.append(
            {
                "id": call["id"],
                "type": "function",
                "function": {"index": j, "name": function["name"], "arguments": arguments},
            }
        )
    return calls


def _arguments(text: str, path: str) -> dict[str, Any]:
    """A call's JSON-string arguments as the object Ollama takes ("" means no arguments)."""
    if not text.strip():
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"'{path}' must be a JSON object for provider ollama, which takes arguments as one",
            param=path,
        )
    return value


OLLAMA = OllamaTranslator()
