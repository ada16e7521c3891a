"""A fake Gemini API upstream: Google's generateContent wire format as a `Dialect`.

`FakeGemini()` is a `FakeUpstream` speaking it (`base_url` is what gateway.yaml takes, like
`https://generativelanguage.googleapis.com`). What it copies from the API reference
(ai.google.dev/api/generate-content) and observed answers:
- `POST /v1beta/models/{model}:generateContent` answers one `GenerateContentResponse`;
  `:streamGenerateContent?alt=sse` streams them as `data: {...}` events separated by CRLF
  blank lines, with no terminal marker: the last event carries `finishReason` (and the final
  `usageMetadata`; every event carries the counts so far). Function calls arrive whole, in the
  last event, and say `finishReason: STOP`.
- `GET /v1beta/models` lists `{"models": [{"name": "models/<id>", ...}]}`.
- The key is the `x-goog-api-key` header (or `?key=`, which the API takes but the gateway must
  never send: a problem); a wrong or missing key is Google's 400 API_KEY_INVALID.
- Errors are `{"error": {"code", "message", "status", "details"}}`; an unknown URL is Google's
  HTML 404 page. Answers carry `responseId` and `modelVersion`, and no request id header.
- Gemini 3 models return a `thoughtSignature` on the first function call of a turn and require
  it back (ai.google.dev/gemini-api/docs/thought-signatures).

`problems()` holds what the real API rejects, each rule with its source.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tests.fakes.upstream import (
    ANY_PATH,
    ApiError,
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
    words_in,
)

__all__ = [
    "ANY_PATH",
    "CHAT_ROUTE",
    "MODELS_PATH",
    "OVERLOADED_STATUS",
    "SIGNATURE",
    "FakeGemini",
    "GeminiDialect",
    "RecordedRequest",
    "Reply",
    "ToolCall",
]

CHAT_ROUTE = "/v1beta/models/{call}"  # {call} is "<model>:<method>"
MODELS_PATH = "/v1beta/models"
OVERLOADED_STATUS = 503  # UNAVAILABLE: "The model is overloaded. Please try again later."
SIGNATURE = base64.b64encode(b"fake-thought-signature").decode()
_NOT_FOUND_PAGE = (
    "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <title>Error 404 (Not Found)!!1"
    "</title>\n  <p><b>404.</b> <ins>That\u2019s an error.</ins>\n"
    "  <p>The requested URL <code>{path}</code> was not found on this server."
    "  <ins>That\u2019s all we know.</ins>\n"
)

# Google's canonical status names and default messages (cloud.google.com/apis/design/errors).
_STATUSES: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: (
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    500: ("INTERNAL", "An internal error has occurred. Please retry or report it."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "The request timed out. Please try again."),
}

_FINISH = {"stop": "STOP", "tool_calls": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}

# Field names of each message of GenerateContentRequest, from the API reference
# (ai.google.dev/api/generate-content#request-body, ai.google.dev/api/caching#Content,
# #Part, #Tool, #FunctionDeclaration, #ToolConfig, ai.google.dev/api/generate-content#
# generationconfig). The API parses JSON into protos and refuses any other name with
# `Invalid JSON payload received. Unknown name "x" at '...': Cannot find field.` (observed:
# github.com/router-for-me/CLIProxyAPI/issues/97). Proto JSON also takes snake_case names.
_FIELDS: dict[str, frozenset[str]] = {
    "request": frozenset(
        {
            "model",
            "contents",
            "tools",
            "toolConfig",
            "safetySettings",
            "systemInstruction",
            "generationConfig",
            "cachedContent",
        }
    ),
    "content": frozenset({"role", "parts"}),
    "part": frozenset(
        {
            "text",
            "inlineData",
            "functionCall",
            "functionResponse",
            "fileData",
            "executableCode",
            "codeExecutionResult",
            "thought",
            "thoughtSignature",
            "videoMetadata",
            "partMetadata",
            "mediaResolution",
        }
    ),
    "inlineData": frozenset({"mimeType", "data"}),
    "fileData": frozenset({"mimeType", "fileUri"}),
    "functionCall": frozenset({"id", "name", "args"}),
    "functionResponse": frozenset(
        {"id", "name", "response", "parts", "willContinue", "scheduling"}
    ),
    "tool": frozenset(
        {
            "functionDeclarations",
            "googleSearchRetrieval",
            "codeExecution",
            "googleSearch",
            "urlContext",
            "computerUse",
            "fileSearch",
            "googleMaps",
        }
    ),
    "functionDeclaration": frozenset(
        {
            "name",
            "description",
            "behavior",
            "parameters",
            "parametersJsonSchema",
            "response",
            "responseJsonSchema",
        }
    ),
    "toolConfig": frozenset({"functionCallingConfig", "retrievalConfig"}),
    "functionCallingConfig": frozenset({"mode", "allowedFunctionNames"}),
    "generationConfig": frozenset(
        {
            "stopSequences",
            "responseMimeType",
            "responseSchema",
            "responseJsonSchema",
            "responseModalities",
            "candidateCount",
            "maxOutputTokens",
            "temperature",
            "topP",
            "topK",
            "seed",
            "presencePenalty",
            "frequencyPenalty",
            "responseLogprobs",
            "logprobs",
            "enableEnhancedCivicAnswers",
            "speechConfig",
            "thinkingConfig",
            "imageConfig",
            "mediaResolution",
        }
    ),
    # The OpenAPI subset of `parameters` / `responseSchema` (ai.google.dev/api/caching#Schema);
    # `$schema`, `additionalProperties`, `const`, `exclusiveMinimum`... are refused (observed:
    # github.com/openswarm-ai/openswarm/issues/24, github.com/zed-industries/zed/issues/44875).
    "schema": frozenset(
        {
            "type",
            "format",
            "title",
            "description",
            "nullable",
            "enum",
            "maxItems",
            "minItems",
            "properties",
            "required",
            "minProperties",
            "maxProperties",
            "minLength",
            "maxLength",
            "pattern",
            "example",
            "anyOf",
            "propertyOrdering",
            "default",
            "items",
            "minimum",
            "maximum",
        }
    ),
}
# A Part holds one of these (the `data` oneof of ai.google.dev/api/caching#Part).
_PART_DATA = (
    "text",
    "inlineData",
    "functionCall",
    "functionResponse",
    "fileData",
    "executableCode",
    "codeExecutionResult",
)
_MODES = frozenset({"MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"})


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def _call(record: RecordedRequest) -> tuple[str, str]:
    """(model, method) of a chat request's path."""
    model, _, method = record.path_params.get("call", "").rpartition(":")
    return model, method


class _Checker:
    """Walks one request body, collecting what Gemini would refuse."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fields(self, kind: str, value: object, at: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.problems.append(f"Invalid value at '{at}': expected an object")
            return {}
        known = _FIELDS[kind]
        for name in value:
            if _camel(name) not in known:
                self.problems.append(
                    f"Invalid JSON payload received. Unknown name \"{name}\" at '{at}': "
                    "Cannot find field."
                )
        return {_camel(k): v for k, v in value.items()}

    def schema(self, value: object, at: str) -> None:
        fields = self.fields("schema", value, at)
        if isinstance(fields.get("type"), list):
            self.problems.append(
                f"Invalid JSON payload received. Unknown name \"type\" at '{at}': "
                "Proto field is not repeating, cannot start list."
            )
        properties = fields.get("properties")
        if isinstance(properties, dict):
            for name, sub in properties.items():
                self.schema(sub, f"{at}.properties[{name}].value")
        if "items" in fields:
            self.schema(fields["items"], f"{at}.items")
        for k, sub in enumerate(fields.get("anyOf") or ()):
            self.schema(sub, f"{at}.any_of[{k}]")


class GeminiDialect:
    """Google's Gemini API (see the module docstring)."""

    name = "gemini"
    chat_route = CHAT_ROUTE
    info_routes: Mapping[str, str] = {MODELS_PATH: "GET"}
    stream_content_type = "text/event-stream"

    def request_id(self) -> str:
        return random_id("", 22)  # the `responseId` of the answer

    def response_headers(self, record: RecordedRequest) -> dict[str, str]:
        elapsed = int((time.monotonic() - record.received_at) * 1000)
        return {
            "server": "scaffolding on HTTPServer2",
            "vary": "Origin, X-Origin, Referer",
            "x-content-type-options": "nosniff",
            "x-frame-options": "SAMEORIGIN",
            "server-timing": f"gfet4t7; dur={elapsed}",
        }

    def authorized(self, record: RecordedRequest, api_key: str) -> bool:
        # ai.google.dev/gemini-api/docs/api-key: the header, or the `key` query parameter.
        return record.headers.get("x-goog-api-key") == api_key or f"key={api_key}" in record.query

    def problems(self, record: RecordedRequest) -> list[str]:
        problems: list[str] = []
        model, method = _call(record)
        if method not in ("generateContent", "streamGenerateContent") or not model:
            problems.append(f"unknown method {record.path} (404 on the real API)")
        if method == "streamGenerateContent" and "alt=sse" not in record.query:
            # Without alt=sse the stream is one JSON array (ai.google.dev/api/generate-content
            # #method:-models.streamgeneratecontent); the gateway decodes SSE only.
            problems.append("streamGenerateContent without alt=sse answers a JSON array")
        if "key=" in record.query:
            # The API takes ?key=, but keys in URLs end up in logs: the gateway must use the
            # x-goog-api-key header (ai.google.dev/gemini-api/docs/api-key).
            problems.append("the API key was sent in the URL")
        if not isinstance(record.json, dict):
            return [*problems, "Invalid JSON payload received. Expected an object."]
        check = _Checker()
        body = check.fields("request", record.json, "request")
        self._contents(check, body.get("contents"), model)
        if "systemInstruction" in body:
            system = check.fields("content", body["systemInstruction"], "system_instruction")
            for k, part in enumerate(system.get("parts") or ()):
                # "Currently, text only." (ai.google.dev/api/generate-content#request-body)
                if set(check.fields("part", part, f"system_instruction.parts[{k}]")) != {"text"}:
                    check.problems.append("system_instruction parts must be text only")
        names = self._tools(check, body.get("tools"))
        self._tool_config(check, body.get("toolConfig"), names)
        self._generation(check, body.get("generationConfig"))
        return problems + check.problems

    def _contents(self, check: _Checker, contents: object, model: str) -> None:
        if not isinstance(contents, list) or not contents:
            # Observed: 400 "* GenerateContentRequest.contents: contents is not specified".
            check.problems.append("* GenerateContentRequest.contents: contents is not specified")
            return
        previous: dict[str, Any] = {}
        last_user_text = -1
        turns: list[dict[str, Any]] = []
        for i, raw in enumerate(contents):
            at = f"contents[{i}]"
            content = check.fields("content", raw, at)
            role = content.get("role", "user")
            if role not in ("user", "model"):
                # "Must be either 'user' or 'model'." (ai.google.dev/api/caching#Content)
                check.problems.append(
                    f"Please use a valid role: user, model. (got {role!r} at {at})"
                )
            parts = content.get("parts")
            if not isinstance(parts, list) or not parts:
                check.problems.append(
                    f"* GenerateContentRequest.{at}.parts: contents.parts must not be empty."
                )
                parts = []
            kinds = [self._part(check, part, f"{at}.parts[{k}]") for k, part in enumerate(parts)]
            turn = {"role": role, "parts": [p for p in parts if isinstance(p, dict)]}
            calls = [p["functionCall"] for p in turn["parts"] if "functionCall" in p]
            responses = [p["functionResponse"] for p in turn["parts"] if "functionResponse" in p]
            if calls and role != "model":
                check.problems.append(f"{at}: function calls come only from the model")
            if calls and previous.get("role") == "model":
                # Function calling guide (ai.google.dev/gemini-api/docs/function-calling).
                check.problems.append(
                    "Please ensure that function call turn comes immediately after a user turn "
                    "or after a function response turn."
                )
            if responses:
                self._responses(check, previous, responses, role, at)
            if role == "user" and "text" in kinds:
                last_user_text = i
            turns.append(turn)
            previous = turn
        if model.removeprefix("models/").startswith("gemini-3"):
            # Gemini 3 validates the signatures of the current turn's function calls
            # (ai.google.dev/gemini-api/docs/thought-signatures).
            for turn in turns[last_user_text + 1 :]:
                first = next((p for p in turn["parts"] if "functionCall" in p), None)
                if first is not None and not first.get("thoughtSignature"):
                    check.problems.append(
                        "Function call is missing a thought_signature in functionCall parts."
                    )

    def _responses(
        self,
        check: _Checker,
        previous: dict[str, Any],
        responses: list[Any],
        role: str,
        at: str,
    ) -> None:
        # Function calling guide: the responses answer the model's preceding call turn, one
        # each (ai.google.dev/gemini-api/docs/function-calling). Observed messages.
        calls = [p["functionCall"] for p in previous.get("parts", ()) if "functionCall" in p]
        if role != "user" or not calls:
            check.problems.append(
                "Please ensure that function response turn comes immediately after a function "
                f"call turn. ({at})"
            )
            return
        if len(calls) != len(responses):
            check.problems.append(
                "Please ensure that the number of function response parts is equal to the "
                f"number of function call parts of the function call turn. ({at})"
            )
        called = sorted(str(c.get("name")) for c in calls if isinstance(c, dict))
        answered = sorted(str(r.get("name")) for r in responses if isinstance(r, dict))
        if called != answered:
            check.problems.append(
                f"{at}: function responses {answered} do not match the function calls {called}"
            )

    def _part(self, check: _Checker, raw: object, at: str) -> str:
        part = check.fields("part", raw, at)
        data = [kind for kind in _PART_DATA if kind in part]
        if len(data) != 1:
            # `data` is a oneof: exactly one per part (ai.google.dev/api/caching#Part).
            check.problems.append(f"{at}: a part holds exactly one of {', '.join(_PART_DATA)}")
            return ""
        kind = data[0]
        value = part[kind]
        if kind == "text" and not isinstance(value, str):
            check.problems.append(f"{at}.text must be a string")
        elif kind == "inlineData":
            blob = check.fields("inlineData", value, f"{at}.inline_data")
            if not isinstance(blob.get("mimeType"), str) or not isinstance(blob.get("data"), str):
                check.problems.append(f"{at}.inline_data needs mimeType and data")
            else:
                try:
                    binascii.a2b_base64(blob["data"].encode(), strict_mode=True)
                except (binascii.Error, UnicodeEncodeError):
                    check.problems.append(f"Invalid value at '{at}.inline_data.data': not base64")
        elif kind == "fileData":
            file = check.fields("fileData", value, f"{at}.file_data")
            if not isinstance(file.get("fileUri"), str):
                check.problems.append(f"{at}.file_data needs fileUri")
        elif kind == "functionCall":
            call = check.fields("functionCall", value, f"{at}.function_call")
            if not isinstance(call.get("name"), str):
                check.problems.append(f"{at}.function_call needs a name")
            if "args" in call and not isinstance(call["args"], dict):
                # args is a google.protobuf.Struct: a JSON object.
                check.problems.append(f"Invalid value at '{at}.function_call.args': not an object")
        elif kind == "functionResponse":
            response = check.fields("functionResponse", value, f"{at}.function_response")
            if not isinstance(response.get("name"), str):
                check.problems.append(f"{at}.function_response needs a name")
            if not isinstance(response.get("response"), dict):
                # "Required. The function response in JSON object format."
                check.problems.append(
                    f"Invalid value at '{at}.function_response.response': not an object"
                )
        return kind

    def _tools(self, check: _Checker, tools: object) -> set[str]:
        names: set[str] = set()
        if tools is None:
            return names
        if not isinstance(tools, list):
            check.problems.append("tools must be a list")
            return names
        for i, raw in enumerate(tools):
            tool = check.fields("tool", raw, f"tools[{i}]")
            for k, raw_declaration in enumerate(tool.get("functionDeclarations") or ()):
                at = f"tools[{i}].function_declarations[{k}]"
                declaration = check.fields("functionDeclaration", raw_declaration, at)
                name = declaration.get("name")
                # "Must start with a letter or an underscore ... maximum length of 64."
                # (ai.google.dev/api/caching#FunctionDeclaration)
                if not isinstance(name, str) or not re.fullmatch(
                    r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}", name
                ):
                    check.problems.append(f"{at}.name {name!r} is not a valid function name")
                else:
                    names.add(name)
                if "parameters" in declaration and "parametersJsonSchema" in declaration:
                    # "This field is mutually exclusive with parameters."
                    check.problems.append(f"{at}: parameters and parametersJsonSchema both set")
                if "parameters" in declaration:
                    check.schema(declaration["parameters"], f"{at}.parameters")
                schema = declaration.get("parametersJsonSchema")
                if schema is not None and (
                    not isinstance(schema, dict) or schema.get("type") != "object"
                ):
                    # "The schema must describe an object where the properties are the
                    # parameters to the function."
                    check.problems.append(f"{at}.parametersJsonSchema must describe an object")
        return names

    def _tool_config(self, check: _Checker, raw: object, names: set[str]) -> None:
        if raw is None:
            return
        config = check.fields("toolConfig", raw, "tool_config")
        if "functionCallingConfig" not in config:
            return
        calling = check.fields(
            "functionCallingConfig",
            config["functionCallingConfig"],
            "tool_config.function_calling_config",
        )
        mode = calling.get("mode", "MODE_UNSPECIFIED")
        if mode not in _MODES:
            check.problems.append("Invalid value at 'tool_config.function_calling_config.mode'")
        allowed = calling.get("allowedFunctionNames")
        if allowed is not None:
            # "should only be set when the Mode is ANY or VALIDATED"; each must be declared.
            # (ai.google.dev/api/caching#FunctionCallingConfig)
            if mode not in ("ANY", "VALIDATED"):
                check.problems.append("allowedFunctionNames is only allowed with mode ANY")
            if not isinstance(allowed, list) or not set(allowed) <= names:
                check.problems.append("allowedFunctionNames names undeclared functions")

    def _generation(self, check: _Checker, raw: object) -> None:
        if raw is None:
            return
        config = check.fields("generationConfig", raw, "generation_config")
        ranges = {"temperature": (0, 2), "topP": (0, 1), "candidateCount": (1, 8)}
        for name, (low, high) in ranges.items():
            value = config.get(name)
            if value is not None and (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not low <= value <= high
            ):
                check.problems.append(f"generation_config.{name} must be in [{low}, {high}]")
        limit = config.get("maxOutputTokens")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            check.problems.append("generation_config.max_output_tokens must be positive")
        stops = config.get("stopSequences")
        # "The set of character sequences (up to 5) that will stop output generation."
        if stops is not None and (
            not isinstance(stops, list)
            or len(stops) > 5
            or not all(isinstance(s, str) for s in stops)
        ):
            check.problems.append("generation_config.stop_sequences takes up to 5 strings")
        if "responseSchema" in config and "responseJsonSchema" in config:
            # "If set, response_schema must be omitted" (GenerationConfig.responseJsonSchema).
            check.problems.append("responseSchema and responseJsonSchema are mutually exclusive")
        if "responseSchema" in config:
            check.schema(config["responseSchema"], "generation_config.response_schema")
        if ("responseSchema" in config or "responseJsonSchema" in config) and config.get(
            "responseMimeType"
        ) != "application/json":
            # "If set, a compatible response_mime_type must also be set."
            check.problems.append("a response schema needs responseMimeType application/json")

    def is_stream(self, record: RecordedRequest) -> bool:
        return _call(record)[1] == "streamGenerateContent"

    def completion(self, record: RecordedRequest, reply: Reply) -> bytes:
        model = self._model(record, reply)
        text = None if reply.content is None else "".join(pieces(reply.content))
        candidates = [
            {
                "content": {"parts": self._parts(text, reply, model), "role": "model"},
                "finishReason": _FINISH.get(finish_reason(reply), "STOP"),
                "index": index,
            }
            for index in range(self._choices(record))
        ]
        answer = {
            "candidates": candidates,
            "usageMetadata": self._usage(record, reply, done=True),
            "modelVersion": model,
            "responseId": record.request_id,
        }
        return json.dumps(answer, ensure_ascii=False, indent=2).encode()

    def stream(self, record: RecordedRequest, reply: Reply) -> list[bytes]:
        model = self._model(record, reply)
        steps: list[list[dict[str, Any]]] = [[{"text": piece}] for piece in pieces(reply.content)]
        if reply.tool_calls:
            steps.append(self._parts(None, reply, model))
        if not steps:
            steps.append([{"text": ""}])
        events = []
        for position, parts in enumerate(steps):
            last = position == len(steps) - 1
            candidates = []
            for index in range(self._choices(record)):
                candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
                if last:
                    candidate["finishReason"] = _FINISH.get(finish_reason(reply), "STOP")
                candidate["index"] = index
                candidates.append(candidate)
            event = {
                "candidates": candidates,
                "usageMetadata": self._usage(record, reply, done=last),
                "modelVersion": model,
                "responseId": record.request_id,
            }
            events.append(f"data: {compact(event)}\r\n\r\n".encode())
        return events if reply.send_done else events[:-1]

    def _parts(self, text: str | None, reply: Reply, model: str) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = [] if text is None else [{"text": text}]
        for k, call in enumerate(reply.tool_calls):
            part: dict[str, Any] = {
                "functionCall": {
                    "name": call.name,
                    "args": json.loads("".join(fragments(call.arguments))),
                }
            }
            if k == 0 and model.startswith("gemini-3"):
                part["thoughtSignature"] = SIGNATURE
            parts.append(part)
        return parts or [{"text": ""}]

    def _choices(self, record: RecordedRequest) -> int:
        config = record.json.get("generationConfig") if isinstance(record.json, dict) else None
        count = config.get("candidateCount") if isinstance(config, dict) else None
        return count if isinstance(count, int) and count > 0 else 1

    def _model(self, record: RecordedRequest, reply: Reply) -> str:
        return reply.model or _call(record)[0].removeprefix("models/") or "gemini-2.0-flash"

    def _usage(self, record: RecordedRequest, reply: Reply, *, done: bool) -> dict[str, int]:
        overrides = reply.usage or {}
        prompt = overrides.get("prompt_tokens", max(words_in(record.json), 1))
        completion = overrides.get(
            "completion_tokens", completion_tokens(reply) * self._choices(record)
        )
        usage = {"promptTokenCount": prompt}
        if "cached_tokens" in overrides:
            usage["cachedContentTokenCount"] = overrides["cached_tokens"]
        if done:
            usage["candidatesTokenCount"] = completion
        usage["totalTokenCount"] = prompt + (completion if done else 0)
        return usage

    def info(self, record: RecordedRequest, models: Sequence[str]) -> bytes:
        listing = {
            "models": [
                {
                    "name": f"models/{model}",
                    "version": "001",
                    "displayName": model,
                    "inputTokenLimit": 1048576,
                    "outputTokenLimit": 8192,
                    "supportedGenerationMethods": ["generateContent", "countTokens"],
                }
                for model in models
            ]
            + [
                {
                    "name": "models/text-embedding-004",
                    "version": "004",
                    "supportedGenerationMethods": ["embedContent"],
                }
            ]
        }
        return json.dumps(listing, indent=2).encode()

    def error_body(self, status: int, error: ApiError) -> bytes:
        """ApiError.type is Google's status name, ApiError.code an ErrorInfo reason."""
        name, message = _STATUSES.get(status, ("UNKNOWN", "Unknown error."))
        details: list[dict[str, Any]] = []
        if isinstance(error.code, str):
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": error.code,
                    "domain": "googleapis.com",
                }
            )
        if status == 429:
            details.append(
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}
            )
        envelope: dict[str, Any] = {
            "error": {
                "code": status,
                "message": error.message or message,
                "status": error.type or name,
            }
        }
        if details:
            envelope["error"]["details"] = details
        return json.dumps(envelope, indent=2).encode() + b"\n"

    def unauthorized(self) -> Reply:
        # A wrong or missing key (ai.google.dev/gemini-api/docs/troubleshooting).
        return Reply.error(
            400, "API key not valid. Please pass a valid API key.", code="API_KEY_INVALID"
        )

    def invalid(self, problems: list[str]) -> Reply:
        return Reply.error(400, "\n".join(problems)[:4000], code=None)

    def not_found(self, record: RecordedRequest) -> Reply:
        return Reply.raw(_NOT_FOUND_PAGE.format(path=record.path), status=404)


class FakeGemini(FakeUpstream):
    """A fake Gemini API on `127.0.0.1:<free port>`; use as a context manager.

    `api_key`, if set, is required as `x-goog-api-key` (Google's 400 API_KEY_INVALID
    otherwise). `models` are listed by `GET /v1beta/models`.
    """

    default_models = ("gemini-2.0-flash", "gemini-2.5-pro", "gemini-3-pro-preview")

    def new_dialect(self, models: Sequence[str]) -> Dialect:
        return GeminiDialect()
