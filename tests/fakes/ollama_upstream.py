"""A fake Ollama server: Ollama's native API as a `Dialect` of `tests/fakes/upstream.py`.

`FakeOllama()` is a `FakeUpstream` speaking it. What it copies from Ollama (docs/api.md,
docs.ollama.com and the server's Go source, api/types.go and server/routes.go):
- `POST /api/chat` streams unless the request says `"stream": false` (the Go field is a
  `*bool` defaulting to true); a stream is `application/x-ndjson`, one compact JSON object per
  line, text by words, each tool call whole in its own line, and a last line with
  `"done": true`, `done_reason`, durations in ns and the token counts;
- tool calls have `function: {index, name, arguments: <object>}` and no id unless the scripted
  `ToolCall` has one (older Ollama versions send none; newer ones `call_xxxxxxxx`);
- `done_reason` is "stop" also for tool calls, "length" at the token limit; Ollama has no
  content filter, so content_filter is said as "stop";
- counts are dropped when 0 (Go's `omitempty`); `Reply.usage` sets `prompt_eval_count` and
  `eval_count` (Ollama reports no cached tokens, so `cached_tokens` is not said);
- errors are `{"error": "..."}`; no request id header; an unknown path is Gin's plain-text
  `404 page not found`;
- `GET /api/tags` lists the models, `GET /api/version` the version;
- with an `api_key` (ollama.com) it wants `Authorization: Bearer <key>`.

`problems()` holds what Ollama refuses (missing model, messages that are no list, arguments as a
string, images that are no base64, bad option types, an unknown format) and, flagged though
Ollama only ignores them, what it would drop without a word: unknown option keys (it logs
"invalid option provided"), unknown fields and roles. Each rule cites its source.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from tests.fakes.upstream import (
    ApiError,
    Dialect,
    FakeUpstream,
    RecordedRequest,
    Reply,
    ToolCall,
    completion_tokens,
    finish_reason,
    fragments,
    pieces,
    words_in,
)

__all__ = [
    "CHAT_PATH",
    "OVERLOADED_STATUS",
    "TAGS_PATH",
    "VERSION_PATH",
    "FakeOllama",
    "OllamaDialect",
    "Reply",
    "ToolCall",
    "error_line",
]

CHAT_PATH = "/api/chat"
TAGS_PATH = "/api/tags"
VERSION_PATH = "/api/version"
OLLAMA_VERSION = "0.12.6"
# server/sched.go: a full request queue is ErrMaxQueue, answered 503 (handleScheduleError).
OVERLOADED_STATUS = 503

# Default messages by status, in Ollama's words where it has them.
_MESSAGES: dict[int, str] = {
    400: "invalid request",
    401: "unauthorized",
    403: "forbidden",
    404: 'model "{model}" not found, try pulling it first',  # server/routes.go
    429: "too many requests",
    500: "an error was encountered while running the model",  # docs/api/errors.mdx
    502: "bad gateway",
    503: "server busy, please try again.  maximum pending requests exceeded",  # server/sched.go
}

# https://github.com/ollama/ollama/blob/main/api/types.go `ChatRequest`: the top-level fields.
_REQUEST_KEYS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "format",
        "keep_alive",
        "tools",
        "options",
        "think",
        "truncate",
        "shift",
        "logprobs",
        "top_logprobs",
    }
)
# api/types.go `Message`.
_MESSAGE_KEYS = frozenset({"role", "content", "thinking", "images", "tool_calls", "tool_name"})
# docs/api.md "Generate a chat completion": "role: either system, user, assistant, or tool".
_ROLES = frozenset({"system", "user", "assistant", "tool"})
# api/types.go `Options` and `Runner` (json tags), with their Go kinds for FromMap's type checks.
_OPTIONS: dict[str, type | tuple[type, ...]] = {
    **dict.fromkeys(
        ("num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "mirostat"), (int, float)
    ),
    **dict.fromkeys(
        (
            "top_p",
            "min_p",
            "typical_p",
            "temperature",
            "repeat_penalty",
            "presence_penalty",
            "frequency_penalty",
            "mirostat_tau",
            "mirostat_eta",
        ),
        (int, float),
    ),
    **dict.fromkeys(("num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread"), (int, float)),
    **dict.fromkeys(
        ("penalize_newline", "numa", "low_vram", "vocab_only", "use_mmap", "use_mlock"), bool
    ),
    "stop": list,
}


def error_line(message: str) -> bytes:
    """The line Ollama writes when a stream fails after it started (docs/api/errors.mdx)."""
    return json.dumps({"error": message}).encode() + b"\n"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _arguments(call: ToolCall) -> dict[str, Any]:
    """A scripted call's JSON arguments as the object Ollama sends."""
    value = json.loads("".join(fragments(call.arguments)) or "{}")
    if not isinstance(value, dict):
        raise ValueError(f"Ollama sends tool arguments as an object, not {value!r}")
    return value


def _tool_call(call: ToolCall, index: int) -> dict[str, Any]:
    rendered: dict[str, Any] = {
        "function": {"index": index, "name": call.name, "arguments": _arguments(call)}
    }
    if call.id is not None:
        rendered = {"id": call.id, **rendered}
    return rendered


_DONE_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop"}


class OllamaDialect:
    """Ollama's native chat API (see the module docstring)."""

    name = "ollama"
    chat_route = CHAT_PATH
    info_routes: Mapping[str, str] = {TAGS_PATH: "GET", VERSION_PATH: "GET"}
    stream_content_type = "application/x-ndjson"

    def request_id(self) -> str:
        return "ollama-" + secrets.token_hex(8)  # the fake's own record only: Ollama sends none

    def response_headers(self, record: RecordedRequest) -> dict[str, str]:
        return {}  # Ollama sends no request id

    def authorized(self, record: RecordedRequest, api_key: str) -> bool:
        # https://docs.ollama.com/api/authentication: `Authorization: Bearer` on ollama.com.
        return record.headers.get("authorization") == f"Bearer {api_key}"

    def problems(self, record: RecordedRequest) -> list[str]:
        data = record.json
        if not isinstance(data, dict):
            # server/routes.go ChatHandler: c.ShouldBindJSON fails with 400 {"error": err}.
            return ["invalid character in request body: not a JSON object"]
        found: list[str] = []
        # Go's encoding/json ignores unknown fields, so Ollama would silently drop these; the fake
        # flags them, as a field Ollama never reads is a translation bug (e.g. OpenAI's
        # top-level `temperature` or `tool_choice`).
        found += [
            f"unknown field {key!r} (Ollama ignores it)" for key in data.keys() - _REQUEST_KEYS
        ]
        model = data.get("model")
        if not isinstance(model, str) or not model:
            found.append("model is required")  # server/routes.go: 400 "model is required"
        if "stream" in data and not isinstance(data["stream"], bool):
            found.append(
                "json: cannot unmarshal into Go struct field ChatRequest.stream of type bool"
            )
        messages = data.get("messages")
        if not isinstance(messages, list):
            # api/types.go: Messages []Message; a non-array fails ShouldBindJSON (400).
            found.append(
                "json: cannot unmarshal into Go struct field ChatRequest.messages "
                "of type []api.Message"
            )
        else:
            for i, message in enumerate(messages):
                found += _message_problems(message, f"messages[{i}]")
        found += _options_problems(data.get("options"))
        found += _format_problems(data)
        found += _tools_problems(data.get("tools"))
        top = data.get("top_logprobs")
        if top is not None and (not isinstance(top, int) or not 0 <= top <= 20):
            found.append("top_logprobs must be between 0 and 20")  # server/routes.go
        return found

    def is_stream(self, record: RecordedRequest) -> bool:
        # api/types.go: "Stream enables streaming of returned responses; true by default."
        return not (isinstance(record.json, dict) and record.json.get("stream") is False)

    def _model(self, record: RecordedRequest, reply: Reply) -> str:
        requested = record.json.get("model") if isinstance(record.json, dict) else None
        return reply.model or (requested if isinstance(requested, str) else "llama3.2")

    def _final(self, record: RecordedRequest, reply: Reply) -> dict[str, Any]:
        """The counts and timings of the last object (a stream's last line)."""
        usage = dict(reply.usage or {})
        prompt = usage.get("prompt_tokens", max(words_in(record.json), 1))
        completion = usage.get("completion_tokens", completion_tokens(reply))
        final: dict[str, Any] = {
            "done_reason": _DONE_REASONS.get(finish_reason(reply), "stop"),
            "done": True,
            "total_duration": 1_234_567_890,
            "load_duration": 12_345_678,
            "prompt_eval_count": prompt,
            "prompt_eval_duration": 123_456_789,
            "eval_count": completion,
            "eval_duration": 987_654_321,
        }
        # Go's `omitempty` drops zero counts (api/types.go Metrics).
        return {key: value for key, value in final.items() if value != 0}

    def completion(self, record: RecordedRequest, reply: Reply) -> bytes:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(pieces(reply.content)),
        }
        if reply.tool_calls:
            message["tool_calls"] = [
                _tool_call(call, index) for index, call in enumerate(reply.tool_calls)
            ]
        body = {
            "model": self._model(record, reply),
            "created_at": _now(),
            "message": message,
            **self._final(record, reply),
        }
        return json.dumps(body, ensure_ascii=False).encode()

    def stream(self, record: RecordedRequest, reply: Reply) -> list[bytes]:
        model = self._model(record, reply)

        def line(message: dict[str, Any], **extra: Any) -> bytes:
            body = {"model": model, "created_at": _now(), "message": message, **extra}
            return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"

        lines = [
            line({"role": "assistant", "content": piece}, done=False)
            for piece in pieces(reply.content)
        ]
        lines += [
            line(
                {"role": "assistant", "content": "", "tool_calls": [_tool_call(call, index)]},
                done=False,
            )
            for index, call in enumerate(reply.tool_calls)
        ]
        if reply.send_done:
            lines.append(line({"role": "assistant", "content": ""}, **self._final(record, reply)))
        return lines

    def info(self, record: RecordedRequest, models: Sequence[str]) -> bytes:
        if record.path == VERSION_PATH:
            return json.dumps({"version": OLLAMA_VERSION}).encode()
        listing = {
            "models": [
                {
                    "name": name,
                    "model": name,
                    "modified_at": "2025-05-01T10:00:00.000000000Z",
                    "size": 2019393189,
                    "digest": secrets.token_hex(32),
                    "details": {
                        "parent_model": "",
                        "format": "gguf",
                        "family": "llama",
                        "families": ["llama"],
                        "parameter_size": "3.2B",
                        "quantization_level": "Q4_K_M",
                    },
                }
                for name in models
            ]
        }
        return json.dumps(listing).encode()

    def error_body(self, status: int, error: ApiError) -> bytes:
        default = _MESSAGES.get(status, "an error occurred").replace("{model}", "llama3.2")
        return json.dumps({"error": error.message or default}).encode()

    def unauthorized(self) -> Reply:
        return Reply.error(401, "unauthorized")

    def invalid(self, problems: list[str]) -> Reply:
        return Reply.error(400, problems[0][:2000])

    def not_found(self, record: RecordedRequest) -> Reply:
        # Gin's default for an unknown route.
        return Reply.raw("404 page not found", status=404, content_type="text/plain")


def _message_problems(message: object, path: str) -> list[str]:
    if not isinstance(message, dict):
        return [f"{path}: json: cannot unmarshal into Go value of type api.Message"]
    found = [
        f"{path}: unknown field {key!r} (Ollama ignores it)"
        for key in message.keys() - _MESSAGE_KEYS
    ]
    role = message.get("role")
    if role not in _ROLES:
        # docs/api.md: role is "either system, user, assistant, or tool".
        found.append(f"{path}.role: {role!r} is not one of system, user, assistant, tool")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        # api/types.go: Content string.
        found.append(f"{path}.content: json: cannot unmarshal {type(content).__name__} into string")
    tool_name = message.get("tool_name")
    if tool_name is not None and not isinstance(tool_name, str):
        found.append(f"{path}.tool_name must be a string")  # api/types.go: ToolName string
    if tool_name is not None and role != "tool":
        found.append(f"{path}.tool_name is only for tool messages")
    images = message.get("images")
    if images is not None:
        if not isinstance(images, list):
            found.append(f"{path}.images must be an array of base64 strings")
        else:
            for j, image in enumerate(images):
                # api/types.go: Images []ImageData ([]byte), which Go decodes from base64 text.
                if not isinstance(image, str) or not _is_base64(image):
                    found.append(f"{path}.images[{j}]: illegal base64 data")
    calls = message.get("tool_calls")
    if calls is not None:
        if role != "assistant":
            found.append(f"{path}.tool_calls are only for assistant messages")
        if not isinstance(calls, list):
            found.append(f"{path}.tool_calls must be an array")
        else:
            for j, call in enumerate(calls):
                found += _call_problems(call, f"{path}.tool_calls[{j}]")
    return found


def _call_problems(call: object, path: str) -> list[str]:
    # api/types.go ToolCall{ID?, Function ToolCallFunction{Index, Name, Arguments map[string]any}};
    # docs/capabilities/tool-calling.mdx sends `type: "function"` too.
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        return [f"{path}.function must be an object"]
    found = []
    if isinstance(call, dict) and call.keys() - {"id", "type", "function"}:
        found.append(f"{path}: unknown fields {sorted(call.keys() - {'id', 'type', 'function'})}")
    if not isinstance(function.get("name"), str) or not function["name"]:
        found.append(f"{path}.function.name is required")
    arguments = function.get("arguments")
    if not isinstance(arguments, dict):
        # A JSON string fails: "json: cannot unmarshal string into Go struct field
        # ToolCallFunction.arguments of type api.ToolCallFunctionArguments".
        found.append(
            f"{path}.function.arguments: json: cannot unmarshal "
            f"{type(arguments).__name__} into api.ToolCallFunctionArguments (an object)"
        )
    return found


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return bool(text)


def _options_problems(options: object) -> list[str]:
    if options is None:
        return []
    if not isinstance(options, dict):
        return ["json: cannot unmarshal into Go struct field ChatRequest.options of type map"]
    found = []
    for key, value in options.items():
        kind = _OPTIONS.get(key)
        if kind is None:
            # api/types.go Options.FromMap: slog.Warn("invalid option provided") and the key is
            # ignored; the fake flags it, since the setting would be lost without a word.
            found.append(f"invalid option provided: {key!r}")
        elif value is not None and not _is_kind(value, kind):
            # api/types.go Options.FromMap: `option %q must be of type ...`.
            found.append(f"option {key!r} must be of type {getattr(kind, '__name__', 'number')}")
        elif key == "stop" and not all(isinstance(s, str) for s in value):
            found.append('option "stop" must be of an array of strings')
    return found


def _is_kind(value: object, kind: type | tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # a JSON true is no number to Go
        return kind is bool
    return isinstance(value, kind)


def _format_problems(data: Mapping[str, Any]) -> list[str]:
    # https://docs.ollama.com/capabilities/structured-outputs: "json" or a JSON Schema object
    # (llm/server.go rejects anything else: `invalid format: ...; expected "json" or a valid
    # JSON Schema`).
    if "format" not in data or data["format"] in ("", "json", None):
        return []
    if isinstance(data["format"], dict):
        return []
    return [f'invalid format: {data["format"]!r}; expected "json" or a valid JSON Schema']


def _tools_problems(tools: object) -> list[str]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        return ["tools must be an array"]
    found = []
    for i, tool in enumerate(tools):
        # api/types.go Tool{Type, Function ToolFunction{Name, Description, Parameters}}.
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function":
            found.append(f"tools[{i}].type must be function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            found.append(f"tools[{i}].function.name is required")
        elif not isinstance(function.get("parameters", {}), dict):
            found.append(f"tools[{i}].function.parameters must be an object")
    return found


class FakeOllama(FakeUpstream):
    """A fake Ollama server on `127.0.0.1:<free port>`; use as a context manager.

    `base_url` ("http://127.0.0.1:PORT") is what gateway.yaml's `base_url` takes. `api_key`, if
    set, is required as `Authorization: Bearer <key>` (ollama.com; 401 otherwise). `models` are
    listed by `GET /api/tags`.
    """

    default_models = ("llama3.2:latest", "qwen3:8b")

    def new_dialect(self, models: Sequence[str]) -> Dialect:
        return OllamaDialect()
