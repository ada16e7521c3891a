"""A fake Anthropic upstream: the Messages API as a `Dialect` of `tests/fakes/upstream.py`.

`FakeAnthropic()` is a `FakeUpstream` speaking it; `base_url` is `http://127.0.0.1:<port>`, what
gateway.yaml's `base_url` is for Anthropic (no `/v1`). What it copies from Anthropic:
- `POST /v1/messages` with `x-api-key` and `anthropic-version`; `GET /v1/models` lists models as
  `{data: [{type, id, display_name, created_at}], has_more, first_id, last_id}`
  (https://docs.claude.com/en/api/messages, https://docs.claude.com/en/api/models-list);
- every response carries `request-id: req_...`; errors are `{"type": "error", "error": {"type",
  "message"}, "request_id"}` with the type per status, 529 `overloaded_error` among them
  (https://docs.claude.com/en/api/errors);
- a Message is `{id: msg_..., type: "message", role, model, content: [text | tool_use blocks],
  stop_reason, stop_sequence, usage: {input_tokens, cache_creation_input_tokens,
  cache_read_input_tokens, output_tokens, service_tier}}`; `input_tokens` excludes cache reads
  (https://docs.claude.com/en/docs/build-with-claude/prompt-caching);
- streams are named SSE events: message_start (the message skeleton, with input usage), per
  block content_block_start / content_block_delta (text_delta, input_json_delta: first an empty
  `partial_json`, then fragments) / content_block_stop, a `ping` after the first block starts,
  message_delta (stop_reason and cumulative usage), message_stop
  (https://docs.claude.com/en/docs/build-with-claude/streaming).

A `Reply`'s finish_reason in OpenAI words is said in Anthropic's (stop -> end_turn, length ->
max_tokens, tool_calls -> tool_use, content_filter -> refusal); Anthropic's own words
(stop_sequence, pause_turn, ...) pass as given. `reply.usage` takes prompt_tokens (all input,
cache included), completion_tokens, cached_tokens (cache reads) and cache_creation_tokens.
`error_event()` builds the mid-stream `error` event for `Reply.raw` streams.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

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
    completion_tokens,
    finish_reason,
    fragments,
    pieces,
    random_id,
    sse,
    words_in,
)

__all__ = [
    "ANY_PATH",
    "MESSAGES_PATH",
    "MODELS_PATH",
    "OVERLOADED_STATUS",
    "AnthropicDialect",
    "Behaviour",
    "FakeAnthropic",
    "RecordedRequest",
    "Reply",
    "ToolCall",
    "error_event",
]

MESSAGES_PATH = "/v1/messages"
MODELS_PATH = "/v1/models"
OVERLOADED_STATUS = 529
AUTH_PROBLEM = "x-api-key header is required"

# Anthropic's error `type` and message by status (https://docs.claude.com/en/api/errors).
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "This request would exceed your organization's rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
_NATIVE_STOP_REASONS = frozenset(
    {
        "end_turn",
        "max_tokens",
        "stop_sequence",
        "tool_use",
        "pause_turn",
        "refusal",
        "model_context_window_exceeded",
    }
)

# The top-level fields of `MessageCreateParams` in anthropic-sdk-python
# (src/anthropic/types/message_create_params.py), plus the beta `output_format` the API still
# takes; anything else is refused with "Extra inputs are not permitted".
_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "cache_control",
        "container",
        "inference_geo",
        "metadata",
        "output_config",
        "output_format",
        "service_tier",
        "stop_sequences",
        "stream",
        "system",
        "temperature",
        "thinking",
        "tool_choice",
        "tools",
        "top_k",
        "top_p",
    }
)
# `ToolParam` (src/anthropic/types/tool_param.py): a custom tool's fields.
_TOOL_FIELDS = frozenset(
    {"name", "description", "input_schema", "cache_control", "type", "strict", "input_examples"}
)
# `Base64ImageSourceParam.media_type` (src/anthropic/types/base64_image_source_param.py).
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
# Tool names: https://docs.claude.com/en/docs/agents-and-tools/tool-use/implement-tool-use
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")
_TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})


def error_event(error_type: str = "overloaded_error", message: str = "Overloaded") -> bytes:
    """The `error` event Anthropic sends when a stream fails after its 200 (streaming docs)."""
    return sse(
        compact({"type": "error", "error": {"type": error_type, "message": message}}), "error"
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_block(block: object, where: str, role: str) -> list[str]:
    """Problems of one content block of a `role` message (MessageParam's block types)."""
    if not isinstance(block, dict):
        return [f"{where}: Input should be a valid dictionary"]
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str):
            return [f"{where}.text: Field required"]
        # "messages: text content blocks must be non-empty" / "... must contain non-whitespace
        # text", the API's answers to empty text (observed; the docs ask for non-empty content).
        if not text.strip():
            return [f"{where}: text content blocks must contain non-whitespace text"]
        return []
    if kind in ("image", "document"):
        source = block.get("source")
        if not isinstance(source, dict):
            return [f"{where}.source: Field required"]
        if source.get("type") == "url":
            ok = isinstance(source.get("url"), str)
            return [] if ok else [f"{where}.source.url: Field required"]
        if source.get("type") != "base64" or not isinstance(source.get("data"), str):
            return [f"{where}.source: Input tag does not match any of the expected tags"]
        allowed = _IMAGE_TYPES if kind == "image" else frozenset({"application/pdf"})
        if source.get("media_type") not in allowed:
            return [f"{where}.source.media_type: Input should be one of {sorted(allowed)}"]
        return []
    if kind == "tool_use":
        # tool_use blocks are the assistant's (implement-tool-use docs)
        if role != "assistant":
            return [f"{where}: tool_use blocks can only be in assistant messages"]
        problems = [
            f"{where}.{name}: Field required"
            for name in ("id", "name")
            if not isinstance(block.get(name), str)
        ]
        if not isinstance(block.get("input"), dict):
            problems.append(f"{where}.input: Input should be a valid dictionary")
        return problems
    if kind == "tool_result":
        # tool_result blocks are the user's (implement-tool-use docs)
        if role != "user":
            return [f"{where}: tool_result blocks can only be in user messages"]
        if not isinstance(block.get("tool_use_id"), str):
            return [f"{where}.tool_use_id: Field required"]
        content = block.get("content")
        if content is None or isinstance(content, str):
            return []
        if not isinstance(content, list):
            return [f"{where}.content: Input should be a valid list"]
        return [
            problem
            for k, inner in enumerate(content)
            for problem in _check_block(inner, f"{where}.content.{k}", "user")
        ]
    if kind in ("thinking", "redacted_thinking"):
        return []
    return [f"{where}: Input tag '{kind}' found using 'type' does not match any expected tag"]


def _check_messages(messages: object) -> list[str]:
    if messages is None:
        return ["messages: Field required"]
    if not isinstance(messages, list):
        return ["messages: Input should be a valid list"]
    if not messages:
        return ["messages: at least one message is required"]
    problems: list[str] = []
    previous_role: str | None = None
    previous_tool_uses: list[str] = []
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            problems.append(f"{where}: Input should be a valid dictionary")
            continue
        role = message.get("role")
        # No "system" role: "there is no "system" role for input messages in the Messages API"
        # (MessageCreateParams.messages docstring); roles are user and assistant.
        if role not in ("user", "assistant"):
            problems.append(f"{where}.role: Input should be 'user' or 'assistant'")
            continue
        # The first turn is the user's and turns alternate: the API's historic "messages: roles
        # must alternate between "user" and "assistant"" and "first message must use the "user"
        # role". Today's API merges consecutive same-role turns (MessageCreateParams docstring);
        # the fake keeps the stricter rule so the translator keeps sending canonical turns.
        if i == 0 and role != "user":
            problems.append('messages: first message must use the "user" role')
        if role == previous_role:
            problems.append('messages: roles must alternate between "user" and "assistant"')
        content = message.get("content")
        final_assistant = i == len(messages) - 1 and role == "assistant"
        blocks: list[Any]
        if isinstance(content, str):
            # "all messages must have non-empty content except for the optional final assistant
            # message" (the API's 400 for empty content)
            if not content and not final_assistant:
                problems.append(
                    f"{where}: all messages must have non-empty content except for the optional "
                    "final assistant message"
                )
            blocks = [{"type": "text", "text": content}] if content else []
        elif isinstance(content, list):
            if not content and not final_assistant:
                problems.append(
                    f"{where}: all messages must have non-empty content except for the optional "
                    "final assistant message"
                )
            blocks = content
            for j, block in enumerate(content):
                problems += _check_block(block, f"{where}.content.{j}", role)
        else:
            problems.append(f"{where}.content: Field required")
            blocks = []
        kinds = [block.get("type") if isinstance(block, dict) else None for block in blocks]
        results = [
            block.get("tool_use_id")
            for block in blocks
            if isinstance(block, dict) and block.get("type") == "tool_result"
        ]
        # "messages.N: tool_use ids were found without tool_result blocks immediately after:
        # ... Each tool_use block must have a corresponding tool_result block in the next
        # message." and "Did not find N tool_result block(s) at the beginning of this message"
        # (the API's 400s, quoted in github.com/github/copilot-cli/issues/102 and
        # github.com/apify/tester-mcp-client/issues/12; implement-tool-use docs: tool results
        # come first in the user message).
        if previous_tool_uses:
            missing = [u for u in previous_tool_uses if u not in results]
            if role != "user" or missing:
                problems.append(
                    f"messages.{i - 1}: tool_use ids were found without tool_result blocks "
                    f"immediately after: {', '.join(missing or previous_tool_uses)}"
                )
            if kinds[: len(results)] != ["tool_result"] * len(results):
                problems.append(
                    f"{where}: Did not find {len(previous_tool_uses)} tool_result block(s) at the "
                    "beginning of this message"
                )
        # "unexpected tool_use_id found in tool_result blocks: ... Each tool_result block must
        # have a corresponding tool_use block in the previous message." (the API's 400, quoted
        # in github.com/openai/openai-agents-python/issues/1797)
        for tool_use_id in results:
            if tool_use_id not in previous_tool_uses:
                problems.append(
                    f"{where}: unexpected tool_use_id found in tool_result blocks: {tool_use_id}"
                )
        # A prefill may not end in whitespace: the API's 400 "final assistant content cannot
        # end with trailing whitespace".
        if final_assistant and blocks:
            last = blocks[-1]
            text = last.get("text") if isinstance(last, dict) else None
            if isinstance(text, str) and text != text.rstrip():
                problems.append(
                    "messages: final assistant content cannot end with trailing whitespace"
                )
        previous_tool_uses = [
            block["id"]
            for block in blocks
            if isinstance(block, dict)
            and block.get("type") == "tool_use"
            and isinstance(block.get("id"), str)
        ]
        previous_role = role
    if previous_tool_uses:
        problems.append(
            f"messages.{len(messages) - 1}: tool_use ids were found without tool_result blocks "
            f"immediately after: {', '.join(previous_tool_uses)}"
        )
    return problems


def _check_tools(tools: object, tool_choice: object) -> list[str]:
    problems: list[str] = []
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            return ["tools: Input should be a valid list"]
        for i, tool in enumerate(tools):
            where = f"tools.{i}"
            if not isinstance(tool, dict):
                problems.append(f"{where}: Input should be a valid dictionary")
                continue
            problems += [
                f"{where}.{name}: Extra inputs are not permitted"
                for name in tool
                if name not in _TOOL_FIELDS
            ]
            name = tool.get("name")
            if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
                problems.append(
                    f"{where}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
                )
            else:
                names.append(name)
            # `InputSchema.type: Required[Literal["object"]]` (tool_param.py)
            schema = tool.get("input_schema")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                problems.append(f"{where}.input_schema.type: Input should be 'object'")
        if len(set(names)) != len(names):
            problems.append("tools: Tool names must be unique.")
    if tool_choice is not None:
        # ToolChoiceParam: auto | any | tool (with name) | none (tool_choice_param.py)
        if not isinstance(tool_choice, dict) or tool_choice.get("type") not in _TOOL_CHOICES:
            problems.append("tool_choice: Input tag does not match any of the expected tags")
        else:
            if tool_choice["type"] == "tool" and tool_choice.get("name") not in names:
                problems.append(f"tool_choice.name: no tool named {tool_choice.get('name')!r}")
            parallel = tool_choice.get("disable_parallel_tool_use")
            if parallel is not None and not isinstance(parallel, bool):
                problems.append("tool_choice.disable_parallel_tool_use: Input should be a bool")
            if not tools:
                problems.append("tool_choice: may only be specified while providing tools")
    return problems


def request_problems(record: RecordedRequest) -> list[str]:
    """What Anthropic would refuse in a Messages request, each rule with its source."""
    problems: list[str] = []
    # Both headers are required on every request (API reference, "Headers";
    # https://docs.claude.com/en/api/versioning); a missing key is a 401.
    if not record.headers.get("x-api-key"):
        problems.append(AUTH_PROBLEM)
    if not record.headers.get("anthropic-version"):
        problems.append("anthropic-version: header is required")
    body = record.json
    if not isinstance(body, dict):
        return [*problems, "There was an error parsing the body of your request"]
    # Unknown fields: MessageCreateParams lists every field the API takes.
    problems += [f"{name}: Extra inputs are not permitted" for name in body if name not in _FIELDS]
    if not isinstance(body.get("model"), str) or not body["model"]:
        problems.append("model: Field required")
    # `max_tokens: Required[int]` (MessageCreateParams); 0 only warms the prompt cache.
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        problems.append("max_tokens: Field required")
    elif not _is_int(max_tokens) or max_tokens < 0:
        problems.append("max_tokens: Input should be a valid integer greater than or equal to 0")
    # `system: Union[str, Iterable[TextBlockParam]]`
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list):
            problems.append("system: Input should be a valid string or list")
        else:
            for i, block in enumerate(system):
                if not isinstance(block, dict) or block.get("type") != "text":
                    problems.append(f"system.{i}: Input should be a text block")
                else:
                    problems += _check_block(block, f"system.{i}", "user")
    problems += _check_messages(body.get("messages"))
    # temperature "Ranges from 0.0 to 1.0"; top_p is a probability (MessageCreateParams).
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (not _is_number(value) or not 0 <= value <= 1):
            problems.append(f"{name}: Input should be less than or equal to 1")
    top_k = body.get("top_k")
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        problems.append("top_k: Input should be a non-negative integer")
    # `stop_sequences: SequenceNotStr[str]`: a list, never a bare string.
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        problems.append("stop_sequences: Input should be a valid list of strings")
    # `MetadataParam`: only `user_id`.
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            problems.append("metadata: Input should be a valid dictionary")
        else:
            problems += [
                f"metadata.{key}: Extra inputs are not permitted"
                for key in metadata
                if key != "user_id"
            ]
    problems += _check_tools(body.get("tools"), body.get("tool_choice"))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        problems.append("stream: Input should be a valid boolean")
    return problems


def _model(request: Mapping[str, Any], reply: Reply) -> str:
    requested = request.get("model")
    return reply.model or (requested if isinstance(requested, str) else "claude-sonnet-4-5")


def _stop_reason(reply: Reply) -> str:
    reason = finish_reason(reply)
    return reason if reason in _NATIVE_STOP_REASONS else _STOP_REASONS.get(reason, reason)


def _stop_sequence(request: Mapping[str, Any], stop_reason: str) -> str | None:
    stops = request.get("stop_sequences")
    if stop_reason == "stop_sequence" and isinstance(stops, list) and stops:
        return str(stops[0])
    return None


def _usage(request: Mapping[str, Any], reply: Reply) -> dict[str, int]:
    given = reply.usage or {}
    prompt = given.get("prompt_tokens", max(words_in(request), 1))
    cached = given.get("cached_tokens", 0)
    created = given.get("cache_creation_tokens", 0)
    return {
        "input_tokens": prompt - cached - created,
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": cached,
        "output_tokens": given.get("completion_tokens", completion_tokens(reply)),
    }


def _call_ids(reply: Reply) -> list[str]:
    return [call.id or random_id("toolu_01", 22) for call in reply.tool_calls]


def build_message(request: Mapping[str, Any], reply: Reply | None = None) -> dict[str, Any]:
    """The Message Anthropic would answer `request` with (a JSON body as a dict)."""
    reply = reply or Reply()
    content: list[dict[str, Any]] = []
    text = "".join(pieces(reply.content))
    if text:
        content.append({"type": "text", "text": text})
    for call, call_id in zip(reply.tool_calls, _call_ids(reply), strict=True):
        arguments = "".join(fragments(call.arguments))
        content.append(
            {"type": "tool_use", "id": call_id, "name": call.name, "input": json.loads(arguments)}
        )
    stop_reason = _stop_reason(reply)
    return {
        "id": random_id("msg_01", 22),
        "type": "message",
        "role": "assistant",
        "model": _model(request, reply),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": _stop_sequence(request, stop_reason),
        "usage": {**_usage(request, reply), "service_tier": "standard"},
    }


def build_events(request: Mapping[str, Any], reply: Reply | None = None) -> list[bytes]:
    """Every SSE event of the stream Anthropic would send, message_stop included."""
    reply = reply or Reply()
    usage = _usage(request, reply)
    start = {
        "type": "message_start",
        "message": {
            "id": random_id("msg_01", 22),
            "type": "message",
            "role": "assistant",
            "model": _model(request, reply),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**usage, "output_tokens": 1, "service_tier": "standard"},
        },
    }
    events = [sse(compact(start), "message_start")]

    def event(payload: dict[str, Any]) -> None:
        events.append(sse(compact(payload), str(payload["type"])))

    blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    text = pieces(reply.content)
    if text:
        deltas = [{"type": "text_delta", "text": piece} for piece in text]
        blocks.append(({"type": "text", "text": ""}, deltas))
    for call, call_id in zip(reply.tool_calls, _call_ids(reply), strict=True):
        deltas = [{"type": "input_json_delta", "partial_json": ""}]
        deltas += [
            {"type": "input_json_delta", "partial_json": fragment}
            for fragment in fragments(call.arguments)
            if fragment
        ]
        block = {"type": "tool_use", "id": call_id, "name": call.name, "input": {}}
        blocks.append((block, deltas))
    if not blocks:
        event({"type": "ping"})
    for index, (block, deltas) in enumerate(blocks):
        event({"type": "content_block_start", "index": index, "content_block": block})
        if index == 0:
            event({"type": "ping"})
        for delta in deltas:
            event({"type": "content_block_delta", "index": index, "delta": delta})
        event({"type": "content_block_stop", "index": index})
    stop_reason = _stop_reason(reply)
    event(
        {
            "type": "message_delta",
            "delta": {
                "stop_reason": stop_reason,
                "stop_sequence": _stop_sequence(request, stop_reason),
            },
            "usage": usage,  # cumulative, input counts included (as the API sends lately)
        }
    )
    if reply.send_done:
        event({"type": "message_stop"})
    return events


class AnthropicDialect:
    """Anthropic's Messages API (see the module docstring)."""

    name = "anthropic"
    chat_route = MESSAGES_PATH
    info_routes: Mapping[str, str] = {MODELS_PATH: "GET"}
    stream_content_type = "text/event-stream; charset=utf-8"

    def request_id(self) -> str:
        return random_id("req_011C", 20)

    def response_headers(self, record: RecordedRequest) -> dict[str, str]:
        return {
            "request-id": record.request_id,
            "anthropic-organization-id": "00000000-0000-4000-8000-000000000000",
            "x-envoy-upstream-service-time": str(
                int((time.monotonic() - record.received_at) * 1000)
            ),
        }

    def authorized(self, record: RecordedRequest, api_key: str) -> bool:
        return record.headers.get("x-api-key") == api_key

    def problems(self, record: RecordedRequest) -> list[str]:
        return request_problems(record)

    def is_stream(self, record: RecordedRequest) -> bool:
        return isinstance(record.json, dict) and record.json.get("stream") is True

    def completion(self, record: RecordedRequest, reply: Reply) -> bytes:
        return json.dumps(build_message(record.json, reply), ensure_ascii=False).encode()

    def stream(self, record: RecordedRequest, reply: Reply) -> list[bytes]:
        return build_events(record.json, reply)

    def info(self, record: RecordedRequest, models: Sequence[str]) -> bytes:
        data = [
            {
                "type": "model",
                "id": model,
                "display_name": model.replace("-", " ").title(),
                "created_at": "2025-09-29T00:00:00Z",
            }
            for model in models
        ]
        listing = {
            "data": data,
            "has_more": False,
            "first_id": models[0] if models else None,
            "last_id": models[-1] if models else None,
        }
        return json.dumps(listing).encode()

    def error_body(self, status: int, error: ApiError) -> bytes:
        default_type, default_message = _ERRORS.get(
            status, ("api_error" if status >= 500 else "invalid_request_error", "Error.")
        )
        envelope = {
            "type": "error",
            "error": {
                "type": error.type or default_type,
                "message": error.message or default_message,
            },
            "request_id": self.request_id(),
        }
        return json.dumps(envelope).encode()

    def unauthorized(self) -> Reply:
        return Reply.error(401)

    def invalid(self, problems: list[str]) -> Reply:
        if AUTH_PROBLEM in problems:
            return Reply.error(401, AUTH_PROBLEM)
        return Reply.error(400, problems[0][:2000])

    def not_found(self, record: RecordedRequest) -> Reply:
        return Reply.error(404, "Not Found")


class FakeAnthropic(FakeUpstream):
    """A fake Anthropic API on `127.0.0.1:<free port>`; use as a context manager.

    `api_key`, if set, is required as `x-api-key` (401 otherwise); without one any key is
    accepted, but a request without the header is still refused, as Anthropic does. `models`
    are listed by `GET /v1/models`.
    """

    default_models = ("claude-sonnet-4-5", "claude-haiku-4-5")

    def new_dialect(self, models: Sequence[str]) -> Dialect:
        return AnthropicDialect()
