"""The request parser: `parse_chat_request()` is the one gate untrusted chat bodies pass.

It decodes strictly (no NaN, no invalid UTF-8 or lone surrogates, no duplicate keys, bounded
depth and number of messages) and checks the types and required fields of
`CreateChatCompletionRequest` in the OpenAI spec. It keeps the body as sent, so fields the
gateway does not know still reach OpenAI-compatible upstreams (re-serialised from the parsed
value, never the client's bytes), except top-level fields named like a URL, host, credential or
header set (`api_base`, `base_url`, `api_key`, `extra_headers`, ...): proxies such as LiteLLM
honour those from a request body, which would let a client send the upstream's key elsewhere,
so they are refused. Every rejection is an `InvalidRequest` naming the param, in the spec's own
words where it has them.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType

import orjson

from gateway.errors import InvalidRequest
from gateway.openai_types import ChatRequest, JSONObject

MAX_JSON_DEPTH = 64  # defaults of server.max_json_depth and server.max_messages
MAX_MESSAGES = 4096
MAX_MODEL_NAME = 256


# ------------------------------------------------------------------- decoding


def decode_json(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> object:
    """Decode an untrusted JSON body. Raises InvalidRequest for anything a strict parser refuses
    and for nesting deeper than `max_depth` (orjson stops at 1024 on its own)."""
    try:
        data = orjson.loads(body)  # refuses NaN/Infinity, invalid UTF-8 and lone surrogates
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    try:
        # The walk that counts keys (below) is one the parse needs anyway: depth costs nothing.
        keys = _count_keys(data, 1, max_depth)
    except RecursionError:  # a limit set above what Python's stack allows
        raise InvalidRequest("the request body nests JSON deeper than the gateway reads") from None
    # Every object key is followed by exactly one ':' outside strings; orjson keeps the last of
    # duplicate keys silently. When the colons add up to the keys, no key repeats; otherwise
    # (colons inside strings, or repeats) a second, slower parser decides.
    if body.count(b":") != keys:
        _reject_duplicate_keys(body)
    return data


def _count_keys(value: object, depth: int, max_depth: int) -> int:
    if depth > max_depth:
        raise _too_deep(max_depth)
    if isinstance(value, dict):
        keys = len(value)
        for item in value.values():
            if isinstance(item, dict | list):
                keys += _count_keys(item, depth + 1, max_depth)
        return keys
    if isinstance(value, list):
        keys = 0
        for item in value:
            if isinstance(item, dict | list):
                keys += _count_keys(item, depth + 1, max_depth)
        return keys
    return 0


def _too_deep(max_depth: int) -> InvalidRequest:
    return InvalidRequest(f"the request body nests JSON deeper than {max_depth} levels")


def _pairs_without_repeats(pairs: list[tuple[str, object]]) -> JSONObject:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidRequest(f"the request body repeats the key '{key[:64]}'", param=key)
            seen.add(key)
    return out


_STRICT_DECODER = json.JSONDecoder(object_pairs_hook=_pairs_without_repeats)


def _reject_duplicate_keys(body: bytes) -> None:
    _STRICT_DECODER.decode(body.decode("utf-8"))  # orjson accepted it: it is valid UTF-8 JSON


# ------------------------------------------------------------------- validation

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_TEXT_ONLY = frozenset({"text"})
_USER_PARTS = frozenset({"text", "image_url", "input_audio", "file"})
_ASSISTANT_PARTS = frozenset({"text", "refusal"})


def parse_chat_request(
    body: bytes,
    forward_headers: Mapping[str, str] = MappingProxyType({}),
    *,
    request_id: str = "gateway",
    created: int = 0,
    max_depth: int = MAX_JSON_DEPTH,
    max_messages: int = MAX_MESSAGES,
) -> ChatRequest:
    """Decode and validate a `CreateChatCompletionRequest`. Raises InvalidRequest.

    `forward_headers` are the client's headers that may go upstream (see api/chat.py);
    `request_id` and `created` give completions built by the gateway their id and time;
    `max_depth` bounds the JSON's nesting and `max_messages` the number of messages.
    """
    data = decode_json(body, max_depth)
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if not _SPEC_FIELDS.issuperset(data):
        _refuse_routing_fields(data)
    model = data.get("model")
    if model is None:
        raise InvalidRequest("you must provide a model parameter", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string", param="model")
    if len(model) > MAX_MODEL_NAME or not model.isprintable():
        raise InvalidRequest(
            "'model' must be printable text of at most 256 characters", param="model"
        )
    messages = data.get("messages")
    if messages is None:
        raise InvalidRequest("missing required parameter: 'messages'", param="messages")
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be an array", param="messages")
    if not messages:
        raise InvalidRequest("'messages' must contain at least one message", param="messages")
    if len(messages) > max_messages:
        raise InvalidRequest(
            f"'messages' has {len(messages)} messages; the gateway takes at most {max_messages}",
            param="messages",
        )
    for i, message in enumerate(messages):
        _check_message(message, f"messages[{i}]")
    for name, check in _PARAMS.items():
        value = data.get(name)
        if value is not None:
            check(value, name)
    stream = data.get("stream") is True
    options = data.get("stream_options")
    include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    return ChatRequest(
        data, model, stream, include_usage, forward_headers, "chatcmpl-" + request_id, created
    )


def _check_message(message: object, path: str) -> None:
    if not isinstance(message, dict):
        raise InvalidRequest(f"'{path}' must be an object", param=path)
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidRequest(
            f"'{path}.role' must be one of system, developer, user, assistant, tool",
            param=f"{path}.role",
        )
    content = message.get("content")
    if role == "assistant":
        if content is None and not message.get("tool_calls") and not message.get("function_call"):
            if "audio" not in message and "refusal" not in message:
                raise InvalidRequest(
                    f"'{path}.content' is required unless 'tool_calls' is given",
                    param=f"{path}.content",
                )
        elif content is not None:
            _check_content(content, f"{path}.content", _ASSISTANT_PARTS)
        tool_calls = message.get("tool_calls")
        if tool_calls is not None:
            _check_tool_calls(tool_calls, f"{path}.tool_calls")
    else:
        if content is None:
            raise InvalidRequest(f"'{path}.content' is required", param=f"{path}.content")
        parts = _USER_PARTS if role == "user" else _TEXT_ONLY
        _check_content(content, f"{path}.content", parts)
    if role == "tool":
        _need_str(message.get("tool_call_id"), f"{path}.tool_call_id")
    if role == "function":
        _need_str(message.get("name"), f"{path}.name")
    name = message.get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidRequest(f"'{path}.name' must be a string", param=f"{path}.name")


def _check_content(content: object, path: str, allowed: frozenset[str]) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidRequest(f"'{path}' must be a string or an array of parts", param=path)
    for i, part in enumerate(content):
        where = f"{path}[{i}]"
        if not isinstance(part, dict):
            raise InvalidRequest(f"'{where}' must be an object", param=where)
        kind = part.get("type")
        if not isinstance(kind, str) or kind not in allowed:
            names = ", ".join(sorted(allowed))
            raise InvalidRequest(f"'{where}.type' must be one of {names}", param=f"{where}.type")
        if kind == "text":
            _need_str(part.get("text"), f"{where}.text")
        elif kind == "refusal":
            _need_str(part.get("refusal"), f"{where}.refusal")
        elif kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict):
                raise InvalidRequest(
                    f"'{where}.image_url' must be an object", param=f"{where}.image_url"
                )
            _need_str(image.get("url"), f"{where}.image_url.url")
            detail = image.get("detail")
            if detail is not None and detail not in ("auto", "low", "high"):
                raise InvalidRequest(
                    f"'{where}.image_url.detail' must be auto, low or high",
                    param=f"{where}.image_url.detail",
                )
        elif kind == "input_audio":
            audio = part.get("input_audio")
            if not isinstance(audio, dict):
                raise InvalidRequest(
                    f"'{where}.input_audio' must be an object", param=f"{where}.input_audio"
                )
            _need_str(audio.get("data"), f"{where}.input_audio.data")
            _need_str(audio.get("format"), f"{where}.input_audio.format")
        elif kind == "file" and not isinstance(part.get("file"), dict):
            raise InvalidRequest(f"'{where}.file' must be an object", param=f"{where}.file")


def _check_tool_calls(tool_calls: object, path: str) -> None:
    if not isinstance(tool_calls, list):
        raise InvalidRequest(f"'{path}' must be an array", param=path)
    for i, call in enumerate(tool_calls):
        where = f"{path}[{i}]"
        if not isinstance(call, dict):
            raise InvalidRequest(f"'{where}' must be an object", param=where)
        _need_str(call.get("id"), f"{where}.id")
        if call.get("type", "function") == "function":
            function = call.get("function")
            if not isinstance(function, dict):
                raise InvalidRequest(
                    f"'{where}.function' must be an object", param=f"{where}.function"
                )
            _need_str(function.get("name"), f"{where}.function.name")
            _need_str(function.get("arguments"), f"{where}.function.arguments")


def _need_str(value: object, path: str) -> None:
    if not isinstance(value, str):
        problem = "is required" if value is None else "must be a string"
        raise InvalidRequest(f"'{path}' {problem}", param=path)


# Checks of the optional top-level params; None (JSON null) means "not given" for all of them.


def _number(low: float, high: float) -> Callable[[object, str], None]:
    def check(value: object, name: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequest(f"'{name}' must be a number", param=name)
        if not low <= value <= high:
            raise InvalidRequest(f"'{name}' must be between {low:g} and {high:g}", param=name)

    return check


def _integer(low: int, high: int | None = None) -> Callable[[object, str], None]:
    def check(value: object, name: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"'{name}' must be an integer", param=name)
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"between {low} and {high}"
            raise InvalidRequest(f"'{name}' must be {bound}", param=name)

    return check


def _boolean(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a boolean", param=name)


def _string(value: object, name: str) -> None:
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string", param=name)


def _stop(value: object, name: str) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise InvalidRequest("'stop' must be a string or an array of strings", param=name)
    if len(value) > 4:
        raise InvalidRequest("'stop' takes at most 4 sequences", param=name)


def _object(value: object, name: str) -> None:
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{name}' must be an object", param=name)


def _metadata(value: object, name: str) -> None:
    _object(value, name)
    assert isinstance(value, dict)
    for key, item in value.items():
        if not isinstance(item, str):
            raise InvalidRequest(f"'metadata.{key}' must be a string", param=f"metadata.{key}")


def _stream_options(value: object, name: str) -> None:
    _object(value, name)
    assert isinstance(value, dict)
    include = value.get("include_usage")
    if include is not None:
        _boolean(include, "stream_options.include_usage")


def _tools(value: object, name: str) -> None:
    if not isinstance(value, list):
        raise InvalidRequest("'tools' must be an array", param=name)
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise InvalidRequest(f"'{where}' must be an object with a 'type'", param=where)
        if tool["type"] != "function":
            continue  # custom tools etc.: the upstream decides
        function = tool.get("function")
        if not isinstance(function, dict):
            raise InvalidRequest(f"'{where}.function' must be an object", param=f"{where}.function")
        fname = function.get("name")
        if not isinstance(fname, str) or not _valid_function_name(fname):
            raise InvalidRequest(
                f"'{where}.function.name' must be 1-64 letters, digits, '_' or '-'",
                param=f"{where}.function.name",
            )
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidRequest(
                f"'{where}.function.parameters' must be a JSON Schema object",
                param=f"{where}.function.parameters",
            )


def _valid_function_name(name: str) -> bool:
    return 0 < len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)


def _tool_choice(value: object, name: str) -> None:
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise InvalidRequest(
                "'tool_choice' must be none, auto, required or a named tool", param=name
            )
        return
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise InvalidRequest("'tool_choice' must be a string or an object", param=name)
    if value["type"] == "function":
        function = value.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest(
                "'tool_choice.function.name' is required", param="tool_choice.function.name"
            )


def _response_format(value: object, name: str) -> None:
    if not isinstance(value, dict):
        raise InvalidRequest("'response_format' must be an object", param=name)
    kind = value.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        raise InvalidRequest(
            "'response_format.type' must be text, json_object or json_schema",
            param="response_format.type",
        )
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise InvalidRequest(
                "'response_format.json_schema' is required for type json_schema",
                param="response_format.json_schema",
            )
        _need_str(spec.get("name"), "response_format.json_schema.name")
        schema = spec.get("schema")
        if schema is not None and not isinstance(schema, dict):
            raise InvalidRequest(
                "'response_format.json_schema.schema' must be an object",
                param="response_format.json_schema.schema",
            )


_PARAMS: dict[str, Callable[[object, str], None]] = {
    "stream": _boolean,
    "stream_options": _stream_options,
    "n": _integer(1, 128),
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "max_tokens": _integer(1),
    "max_completion_tokens": _integer(1),
    "presence_penalty": _number(-2, 2),
    "frequency_penalty": _number(-2, 2),
    "seed": _integer(-(2**63), 2**63 - 1),
    "stop": _stop,
    "user": _string,
    "logprobs": _boolean,
    "top_logprobs": _integer(0, 20),
    "parallel_tool_calls": _boolean,
    "metadata": _metadata,
    "logit_bias": _object,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "response_format": _response_format,
    "store": _boolean,
}


# ------------------------------------------------------------------- routing fields

# The top-level fields of `CreateChatCompletionRequest` in the OpenAI spec (tests/data).
_SPEC_FIELDS = frozenset(
    {
        "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
        "max_completion_tokens", "max_tokens", "messages", "metadata", "modalities", "model",
        "moderation", "n", "parallel_tool_calls", "prediction", "presence_penalty",
        "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention", "reasoning_effort",
        "response_format", "safety_identifier", "seed", "service_tier", "stop", "store", "stream",
        "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user",
        "verbosity", "web_search_options",
    }
)  # fmt: skip
# Words of a field name that say it picks where a request goes or what credentials it carries;
# e.g. LiteLLM takes `api_base`, `base_url`, `api_key`, `api_version`, `extra_headers`,
# `aws_region_name`, `vertex_project` and `user_config` from a request body.
_ROUTING_WORDS = frozenset(
    {
        "url", "uri", "base", "apibase", "baseurl", "host", "hostname", "endpoint", "domain",
        "proxy", "key", "apikey", "secret", "password", "credential", "credentials", "auth",
        "authorization", "bearer", "cookie", "header", "headers", "organization", "project",
        "region", "location", "deployment", "version", "config", "aws", "azure", "vertex",
        "bedrock", "litellm",
    }
)  # fmt: skip
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def _refuse_routing_fields(data: JSONObject) -> None:
    """Raises InvalidRequest for the first field outside the spec named like a routing field."""
    for name in data:
        if name not in _SPEC_FIELDS and _is_routing_field(name):
            raise InvalidRequest(
                f"'{name[:64]}' is not accepted: the gateway alone chooses upstream URLs, "
                "hosts, headers and credentials",
                param=name[:64],
                code="forbidden_parameter",
            )


@functools.lru_cache(maxsize=1024)  # bounded: names come from clients
def _is_routing_field(name: str) -> bool:
    return any(word.lower() in _ROUTING_WORDS for word in _WORDS.findall(name))
