"""A fake Hugging Face TGI server: TGI's Messages API as a `Dialect` of `tests/fakes/upstream.py`.

What TGI (3.x router) does that the fake copies, from the router source
(https://github.com/huggingface/text-generation-inference/tree/main/router/src: server.rs,
lib.rs, chat.rs, validation.rs) and the Messages API guide
(https://huggingface.co/docs/text-generation-inference/messages_api):
- routes `POST /v1/chat/completions`, `GET /health` (200, empty body) and `GET /info`
  (`{"model_id": ..., "max_total_tokens": ..., ...}`); with `--api-key`, `Authorization: Bearer`
  (401 with an empty body otherwise); unknown paths are a 404 with an empty body (axum);
- a completion's `id` is "", `model` the served model id, `system_fingerprint`
  "<version>-<docker label>"; `finish_reason` is "stop" for an end of sequence, also for a tool
  call, whose `arguments` is a JSON object (with `description: null`) and whose id is "0";
- stream chunks repeat `role: "assistant"` in every delta; a text stream's last chunk has
  content "" (the special end token) and the finish_reason; a tool call streams
  `{"index", "id", "type", "function": {"name", "arguments"}}` on every fragment, the name on
  the first only, and the stream has no finish chunk (chat.rs emits nothing once the call's
  JSON is complete); usage, with `stream_options.include_usage`, is a last chunk with
  `choices: []`; then `data: [DONE]`;
- errors are `{"error": "...", "error_type": "..."}`: 422 validation, 424 generation, 429
  overloaded, 500 incomplete_generation.
TGI emits at most one tool call; a `Reply` with several is rendered call by call the same way
(index and id counting up) so the cross-provider cases still run.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tests.fakes.upstream import (
    ApiError,
    Dialect,
    FakeUpstream,
    RecordedRequest,
    Reply,
    compact,
    completion_tokens,
    finish_reason,
    fragments,
    pieces,
    sse,
    words_in,
)

CHAT_PATH = "/v1/chat/completions"
HEALTH_PATH = "/health"
INFO_PATH = "/info"
OVERLOADED_STATUS = 503
VERSION = "3.0.1"
FINGERPRINT = f"{VERSION}-sha-b70f29d"
MAX_TOTAL_TOKENS = 4096
MAX_STOP_SEQUENCES = 4
MAX_TOP_N_TOKENS = 5
# TGI's ChatRequest fields (router/src/lib.rs). serde ignores others without a word, which would
# lose what they ask for: the fake counts a field outside this set as a gateway bug.
CHAT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "max_tokens",
        "n",
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
ROLES = ("system", "user", "assistant", "tool")

# TGI's error_type and message by status (server.rs, `impl From<InferError>`).
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("validation", "Input validation error"),
    422: ("validation", "Input validation error"),
    424: ("generation", "Request failed during generation"),
    429: ("overloaded", "Model is overloaded"),
    500: ("incomplete_generation", "Incomplete generation"),
    503: ("overloaded", "Model is overloaded"),
}


def _tgi_reason(reply: Reply) -> str:
    """TGI's finish_reason: "length" or "stop" (FinishReason::format(true))."""
    return "length" if finish_reason(reply) == "length" else "stop"


def _arguments_object(arguments: str | Sequence[str]) -> Any:
    text = "".join(fragments(arguments))
    try:
        return json.loads(text)
    except ValueError:
        return text  # not JSON: TGI would never produce it, sent as text for the test's sake


def _usage(record: RecordedRequest, reply: Reply) -> dict[str, int]:
    prompt = words_in(record.json)
    completion = completion_tokens(reply)
    values = dict(reply.usage or {})
    prompt = values.get("prompt_tokens", prompt)
    completion = values.get("completion_tokens", completion)
    total = prompt + completion
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


class TGIDialect:
    """TGI's Messages API (see the module docstring)."""

    name = "tgi"
    chat_route = CHAT_PATH
    info_routes: Mapping[str, str] = {HEALTH_PATH: "GET", INFO_PATH: "GET"}
    stream_content_type = "text/event-stream"

    def __init__(self, model_id: str = "meta-llama/Llama-3.1-8B-Instruct") -> None:
        self.model_id = model_id

    def request_id(self) -> str:
        return secrets.token_hex(8)  # TGI has none; only for the fake's records

    def response_headers(self, record: RecordedRequest) -> dict[str, str]:
        return {"x-compute-type": "gpu+optimized", "x-compute-characters": "42"}

    def authorized(self, record: RecordedRequest, api_key: str) -> bool:
        return record.headers.get("authorization") == f"Bearer {api_key}"

    def problems(self, record: RecordedRequest) -> list[str]:
        body = record.json
        if not isinstance(body, dict):
            # axum's Json extractor: 400 for bad syntax, 422 for the wrong shape.
            return ["Failed to parse the request body as JSON"]
        found = [
            f"`{name}` is not a field of TGI's ChatRequest: TGI would ignore it"
            for name in body
            if name not in CHAT_FIELDS
        ]
        found += _message_problems(body.get("messages"))
        found += _parameter_problems(body)
        return found

    def is_stream(self, record: RecordedRequest) -> bool:
        return isinstance(record.json, dict) and record.json.get("stream") is True

    def _model(self, reply: Reply) -> str:
        return reply.model or self.model_id

    def completion(self, record: RecordedRequest, reply: Reply) -> bytes:
        message: dict[str, Any] = {"role": "assistant"}
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id or str(index),
                    "type": "function",
                    "function": {
                        "description": None,
                        "name": call.name,
                        "arguments": _arguments_object(call.arguments),
                    },
                }
                for index, call in enumerate(reply.tool_calls)
            ]
        else:
            message["content"] = "".join(pieces(reply.content))
        body = {
            "object": "chat.completion",
            "id": "",
            "created": int(time.time()),
            "model": self._model(reply),
            "system_fingerprint": FINGERPRINT,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": _tgi_reason(reply),
                }
            ],
            "usage": _usage(record, reply),
        }
        return json.dumps(body, ensure_ascii=False).encode()

    def stream(self, record: RecordedRequest, reply: Reply) -> list[bytes]:
        created = int(time.time())
        options = record.json.get("stream_options") or {}

        def chunk(choices: list[dict[str, Any]], usage: object = None) -> bytes:
            event = {
                "object": "chat.completion.chunk",
                "id": "",
                "created": created,
                "model": self._model(reply),
                "system_fingerprint": FINGERPRINT,
                "choices": choices,
                "usage": usage,
            }
            return sse(compact(event))

        def choice(delta: dict[str, Any], reason: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]

        events: list[bytes] = []
        if reply.tool_calls:
            for index, call in enumerate(reply.tool_calls):
                call_id = call.id or str(index)
                for position, fragment in enumerate(fragments(call.arguments)):
                    tool = {
                        "index": index,
                        "id": call_id,
                        "type": "function",
                        "function": {
                            "name": call.name if position == 0 else None,
                            "arguments": fragment,
                        },
                    }
                    events.append(chunk(choice({"role": "assistant", "tool_calls": [tool]})))
        else:
            for piece in pieces(reply.content):
                events.append(chunk(choice({"role": "assistant", "content": piece})))
            events.append(chunk(choice({"role": "assistant", "content": ""}, _tgi_reason(reply))))
        if isinstance(options, dict) and options.get("include_usage") is True:
            events.append(chunk([], _usage(record, reply)))
        if reply.send_done:
            events.append(sse("[DONE]"))
        return events

    def info(self, record: RecordedRequest, models: Sequence[str]) -> bytes:
        if record.route == HEALTH_PATH:
            return b""
        info = {
            "model_id": models[0] if models else self.model_id,
            "model_sha": "0e9e39f249a16976918f6564b8830bc894c89659",
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 128,
            "max_best_of": 2,
            "max_stop_sequences": MAX_STOP_SEQUENCES,
            "max_input_tokens": MAX_TOTAL_TOKENS - 1,
            "max_total_tokens": MAX_TOTAL_TOKENS,
            "validation_workers": 2,
            "max_client_batch_size": 4,
            "router": "text-generation-router",
            "version": VERSION,
            "sha": "b70f29d159d5f6a7da6a8ea2e1d0f8b2e8a8c1d2",
            "docker_label": "sha-b70f29d",
        }
        return json.dumps(info).encode()

    def error_body(self, status: int, error: ApiError) -> bytes:
        if status == 401:
            return b""  # the router's auth layer answers a bare 401
        kind, message = _ERRORS.get(status, ("generation", "Request failed during generation"))
        body = {"error": error.message or message, "error_type": error.type or kind}
        return json.dumps(body).encode()

    def unauthorized(self) -> Reply:
        return Reply(status=401, body=b"", content_type="text/plain")

    def invalid(self, problems: list[str]) -> Reply:
        kind = "tool_error" if "mutually exclusive" in problems[0] else "validation"
        return Reply.error(422, "Input validation error: " + problems[0][:2000], type=kind)

    def not_found(self, record: RecordedRequest) -> Reply:
        return Reply(status=404, body=b"", content_type="text/plain")


def _message_problems(messages: object) -> list[str]:
    if not isinstance(messages, list) or not messages:
        return ["`messages` must be a non-empty list"]
    found: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            found.append(f"messages[{i}] is not an object")
            continue
        # Chat templates raise on roles they do not know (template_error).
        if message.get("role") not in ROLES:
            found.append(f"messages[{i}].role {message.get('role')!r} is unknown to the template")
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                # MessageChunk is tagged by `type`: text or image_url only (lib.rs).
                if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
                    found.append(f"messages[{i}].content[{j}]: unknown variant")
        elif content is None and not message.get("tool_calls"):
            found.append(f"messages[{i}]: missing field `content`")
    return found


def _parameter_problems(body: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    stop = body.get("stop")
    # `stop: Option<Vec<String>>` (lib.rs): a bare string fails deserialization.
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        found.append("stop: invalid type: expected a sequence")
    elif isinstance(stop, list) and len(stop) > MAX_STOP_SEQUENCES:
        found.append(
            f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. Given: {len(stop)}"
        )
    # `logit_bias: Option<Vec<f32>>` (lib.rs): OpenAI's map fails deserialization.
    if body.get("logit_bias") is not None:
        found.append("logit_bias: invalid type: map, expected a sequence")
    # n is documented "UNUSED": more than one choice would silently become one.
    if body.get("n") not in (None, 1):
        found.append("`n` is unused by TGI: it would answer with one choice")
    top_p = body.get("top_p")
    # validation.rs: ValidationError::TopP.
    if top_p is not None and not 0 < top_p < 1:
        found.append("`top_p` must be > 0.0 and < 1.0")
    temperature = body.get("temperature")
    if temperature is not None and temperature < 0:
        found.append("`temperature` must be strictly positive")
    top_n = body.get("top_logprobs")
    if top_n is not None and not 0 <= top_n <= MAX_TOP_N_TOKENS:
        found.append(f"`top_n_tokens` must be >= 0 and <= {MAX_TOP_N_TOKENS}. Given: {top_n}")
    max_tokens = body.get("max_tokens")
    prompt = words_in(body.get("messages"))
    if max_tokens is not None and max_tokens <= 0:
        found.append("`max_new_tokens` must be strictly positive")
    elif isinstance(max_tokens, int) and prompt + max_tokens > MAX_TOTAL_TOKENS:
        found.append(
            f"`inputs` tokens + `max_new_tokens` must be <= {MAX_TOTAL_TOKENS}. "
            f"Given: {prompt} `inputs` tokens and {max_tokens} `max_new_tokens`"
        )
    response_format = body.get("response_format")
    if response_format is not None:
        # GrammarType is `#[serde(tag = "type", content = "value")]`: json/json_object/regex with
        # a value (issue #2899: "missing field `value`").
        if not isinstance(response_format, dict) or "value" not in response_format:
            found.append("response_format: missing field `value`")
        elif response_format.get("type") not in ("json", "json_object", "regex"):
            found.append(f"response_format: unknown variant `{response_format.get('type')}`")
        if body.get("tools"):
            found.append("Grammar and tools are mutually exclusive")  # server.rs
    choice = body.get("tool_choice")
    if (
        choice is not None
        and choice not in ("auto", "none", "required")
        and not (isinstance(choice, dict) and isinstance(choice.get("function"), dict))
    ):
        found.append("tool_choice: data did not match any variant")
    return found


class FakeTGI(FakeUpstream):
    """A fake TGI server on `127.0.0.1:<free port>`; use as a context manager.

    `base_url` is `http://127.0.0.1:PORT` (gateway.yaml's `base_url` for TGI, without `/v1`).
    `api_key`, if set, is required as `Authorization: Bearer <key>`. `models[0]` is the served
    model id that `/info` and the answers report.
    """

    default_models = ("meta-llama/Llama-3.1-8B-Instruct",)

    def new_dialect(self, models: Sequence[str]) -> Dialect:
        return TGIDialect(models[0] if models else "meta-llama/Llama-3.1-8B-Instruct")
