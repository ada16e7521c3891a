"""Google's Gemini API (generativelanguage.googleapis.com): generateContent and its SSE stream.

Owns the translation between OpenAI's chat completions and Gemini's `GenerateContentRequest` /
`GenerateContentResponse`, both ways, for plain answers and streams, plus Gemini's error shape
and model list. Quirks, with the documentation they come from:

- Endpoints: `POST {base_url}/v1beta/models/{model}:generateContent` and
  `:streamGenerateContent?alt=sse`; without `alt=sse` the stream is one JSON array, so the SSE
  form is always asked for. A target model may be written `gemini-2.0-flash`,
  `models/gemini-2.0-flash` or `tunedModels/x`. (ai.google.dev/api/generate-content)
- The key goes in the `x-goog-api-key` header, never in the URL (`?key=` ends up in proxy and
  access logs). (ai.google.dev/gemini-api/docs/api-key) Platforms identify themselves with
  `x-goog-api-client`. (ai.google.dev/gemini-api/docs/partner-integration)
- Roles are only `user` and `model`; system and developer messages become `systemInstruction`
  (text only, in order; a later system message is moved there too). Consecutive messages of
  one role are merged into one content, and consecutive tool results into one `user` content of
  `functionResponse` parts that directly follows the model's `functionCall` turn.
  (ai.google.dev/api/caching#Content, ai.google.dev/gemini-api/docs/function-calling)
- Function calls carry no id the client can rely on, so the gateway makes one per call from the
  request id, choice and position. A tool result names only its `tool_call_id`: the function
  name is found statelessly by looking back through the request's messages for the assistant
  tool call with that id (the nearest one, so a reused id still maps right). Results are sent as
  `functionResponse.response = {"result": <text>}`, the shape the docs use.
- Thinking models (Gemini 3) require each function-call turn sent back to carry the
  `thoughtSignature` they returned on its first `functionCall` part, or answer 400. The
  signature travels inside the tool call id (`<id>.sig.<signature>`), so no state is kept; a
  call without one (another model's, or a client's own) gets the dummy signature the docs give
  for exactly that case. (ai.google.dev/gemini-api/docs/thought-signatures)
- Tools: `functionDeclarations` with `parametersJsonSchema`, which takes JSON Schema as it is
  (`additionalProperties`, `$ref`, `anyOf`, type arrays...), where the older `parameters` takes
  only an OpenAPI subset and rejects whole requests over one unknown keyword. Only the root
  `$schema` is removed. The two fields are mutually exclusive.
  (ai.google.dev/api/caching#FunctionDeclaration)
- JSON mode: `json_object` -> `responseMimeType: application/json`; `json_schema` -> also
  `responseJsonSchema` (JSON Schema, same reasoning; `responseSchema` is the OpenAPI subset).
  OpenAI's `strict` has no equivalent: Gemini always constrains decoding to the schema it
  supports. (ai.google.dev/api/generate-content#generationconfig,
  ai.google.dev/gemini-api/docs/structured-output)
- `tool_choice` none/auto/required/named -> `functionCallingConfig.mode` NONE/AUTO/ANY/ANY with
  `allowedFunctionNames`; `allowed_tools` sends only the allowed declarations. Custom (non
  function) tools cannot be represented: 400.
- generationConfig: temperature, top_p -> topP, max_completion_tokens / max_tokens ->
  maxOutputTokens, stop -> stopSequences, n -> candidateCount, seed, presence_penalty,
  frequency_penalty.
- Images: `data:` URLs -> `inlineData{mimeType, data}`; http(s) URLs -> `fileData{fileUri}`
  (with a mimeType guessed from the extension when it is a known image type), which the API
  fetches itself since January 2026 (blog.google/innovation-and-ai/technology/developers-tools/
  gemini-api-new-file-limits, ai.google.dev/gemini-api/docs/file-input-methods). `detail` is
  ignored. `input_audio` -> `inlineData` audio/wav or audio/mp3; `file` parts with `file_data`
  -> `inlineData`; an OpenAI `file_id` means nothing to Google: 400.
- Answers: each candidate is a choice; `thought` parts (thought summaries) are not content.
  finishReason STOP -> stop, MAX_TOKENS -> length, SAFETY / RECITATION / LANGUAGE / BLOCKLIST /
  PROHIBITED_CONTENT / SPII / IMAGE_* -> content_filter, anything else -> stop; and tool_calls
  whenever the candidate holds function calls (Gemini says STOP there, also in streams).
  (ai.google.dev/api/generate-content#FinishReason)
- A prompt blocked before generation (`promptFeedback.blockReason`, no candidates) becomes an
  answer with `finish_reason: content_filter` and no content, one per requested choice: the
  request was valid, the model declined it, and retrying elsewhere would not help.
- usageMetadata: prompt = promptTokenCount + toolUsePromptTokenCount, completion =
  candidatesTokenCount + thoughtsTokenCount (thinking is billed as output, as OpenAI counts
  reasoning), cachedContentTokenCount -> prompt_tokens_details.cached_tokens.
- Streams are `data: {GenerateContentResponse}` events with no terminal marker: the last one of
  each candidate carries its finishReason (usageMetadata is cumulative on each event). A stream
  that ends before every candidate finished was cut. Function calls arrive whole, so each is
  announced and its arguments sent in one fragment.
- Errors are `{"error": {"code", "message", "status", "details"}}`. A bad key is a 400
  INVALID_ARGUMENT with reason API_KEY_INVALID: it is treated as the auth failure it is. A 429's
  `RetryInfo.retryDelay` becomes `retry-after` when no header says so.
  (ai.google.dev/gemini-api/docs/troubleshooting, cloud.google.com/apis/design/errors)
- There is no id or creation time in an answer except `responseId`: the gateway's request id
  and time are used; `modelVersion` is the model. Gemini sends no request id header.
- Not supported (400, or dropped with `drop_unsupported`): logprobs / top_logprobs (Gemini's
  logprobsResult is not translated), logit_bias, audio and audio modalities, prediction,
  reasoning_effort (budgets and levels differ per model family), web_search_options, the legacy
  functions / function_call, and parallel_tool_calls: false (Gemini has no such switch).
  Ignored as harmless: user, store, metadata, service_tier, stream_options (usage is always
  reported), safety_identifier, prompt_cache_key, verbosity.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from gateway.config import Target, UpstreamConfig
from gateway.errors import GatewayError, InvalidRequest, StreamInterrupted, UpstreamError
from gateway.logs import redact
from gateway.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    ChunkChoice,
    FinishReason,
    ToolCall,
    Usage,
)
from gateway.providers.base import UpstreamRequest, request_body
from gateway.providers.openai import MAX_ERROR_MESSAGE, USER_AGENT, error_from_status
from gateway.sse import SSEDecoder

PROVIDER = "gemini"
API_VERSION = "v1beta"
SIGNATURE_MARK = ".sig."
# "Use this dummy signature ... when transferring a trace from a different model" (the docs).
DUMMY_SIGNATURE = "skip_thought_signature_validator"
MODEL_PAGE_SIZE = 1000  # the maximum pageSize of models.list

_UNSUPPORTED = (
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "audio",
    "prediction",
    "reasoning_effort",
    "web_search_options",
    "functions",
    "function_call",
)
_CONTENT_FILTER = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "LANGUAGE",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".heic": "image/heic",
    ".heif": "image/heif",
}
_AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3"}
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)((?:;[^;,]*)*);base64,(.*)", re.DOTALL)
_ID_SAFE = re.compile(r"[^A-Za-z0-9]")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)s")
# "Must start with a letter or an underscore" (ai.google.dev/api/caching#FunctionDeclaration).
_FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")

JSON = dict[str, Any]


class GeminiTranslator:
    """Translator for `provider: gemini` (see the module docstring)."""

    request_id_header = "x-request-id"  # Gemini sends none; kept for proxies that add one

    # ------------------------------------------------------------ requests

    def build_request(
        self, request: ChatRequest, target: Target, upstream: UpstreamConfig
    ) -> UpstreamRequest:
        """Raises InvalidRequest for what Gemini cannot represent, naming the param."""
        refusals: dict[str, str] = {}
        if request.body.get("parallel_tool_calls") is False:
            refusals["parallel_tool_calls"] = "Gemini cannot be kept to one call per turn"
        modalities = request.body.get("modalities")
        if isinstance(modalities, list) and any(m != "text" for m in modalities):
            refusals["modalities"] = "only text output is translated"
        body = request_body(request, upstream, PROVIDER, _UNSUPPORTED, refusals)
        outgoing: JSON = {}
        system, contents = to_gemini_contents(body["messages"])
        if not contents:
            raise InvalidRequest(
                "provider gemini needs at least one user or assistant message",
                param="messages",
            )
        outgoing["contents"] = contents
        if system:
            outgoing["systemInstruction"] = {"parts": system}
        tools, config = _tools(body)
        if tools:
            outgoing["tools"] = [{"functionDeclarations": tools}]
        if config:
            outgoing["toolConfig"] = {"functionCallingConfig": config}
        generation = _generation_config(body)
        if generation:
            outgoing["generationConfig"] = generation
        method = "streamGenerateContent?alt=sse" if request.stream else "generateContent"
        url = f"{_base(upstream)}/{API_VERSION}/{_model_path(target.model)}:{method}"
        headers = {
            **upstream.headers,
            "content-type": "application/json",
            "accept": "text/event-stream" if request.stream else "application/json",
            "user-agent": USER_AGENT,
            "x-goog-api-client": USER_AGENT,
        }
        _authorize(headers, upstream)
        return UpstreamRequest("POST", url, headers, orjson.dumps(outgoing))

    # ------------------------------------------------------------ answers

    def parse_response(self, body: bytes, request: ChatRequest, upstream: str) -> ChatCompletion:
        data = _loads(body)
        if not isinstance(data, dict):
            raise UpstreamError(f"upstream '{upstream}' returned a body that is not an answer")
        candidates = data.get("candidates") or []
        if not isinstance(candidates, list):
            raise UpstreamError(f"upstream '{upstream}' returned candidates that are not a list")
        choices: list[Any] = []
        base = _call_id_base(request)
        for position, candidate in enumerate(candidates):
            if not isinstance(candidate, dict):
                raise UpstreamError(f"upstream '{upstream}' returned a malformed candidate")
            index = _index(candidate, position)
            text, calls = _read_parts(candidate, upstream, base, index, 0)
            message: JSON = {
                "role": "assistant",
                "content": "".join(text) if text or not calls else None,
                "refusal": None,
            }
            if calls:
                message["tool_calls"] = calls
            reason = _finish_reason(candidate.get("finishReason"), bool(calls))
            choices.append(
                {"index": index, "message": message, "logprobs": None, "finish_reason": reason}
            )
        if not choices:
            if not _blocked(data):
                raise UpstreamError(f"upstream '{upstream}' returned an answer without candidates")
            choices = [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": None, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "content_filter",
                }
                for index in range(_choice_count(request))
            ]
        choices.sort(key=lambda choice: choice["index"])
        completion: JSON = {
            "id": request.id,
            "object": "chat.completion",
            "created": request.created,
            "model": _model_of(data, request),
            "choices": choices,
        }
        usage = to_usage(data.get("usageMetadata"))
        if usage is not None:
            completion["usage"] = usage
        return completion  # type: ignore[return-value]  # built to the TypedDict's shape

    def parse_error(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        upstream: str,
        secrets: tuple[str, ...],
    ) -> GatewayError:
        message, reason, code, retry_delay = error_details(body)
        if status == 400 and reason == "API_KEY_INVALID":
            status = 401  # Google says 400 for a wrong key; for the client it is our auth failure
        merged = {k.lower(): v for k, v in headers.items()}
        if status == 429 and retry_delay is not None and "retry-after" not in merged:
            merged["retry-after"] = retry_delay
        code = code.lower() if code else None
        return error_from_status(status, merged, message, None, None, code, upstream, secrets)

    def stream_decoder(
        self, request: ChatRequest, upstream: str, secrets: tuple[str, ...]
    ) -> GeminiStreamDecoder:
        return GeminiStreamDecoder(request, upstream, secrets)

    # ------------------------------------------------------------ models

    def health_probe(self, upstream: UpstreamConfig) -> UpstreamRequest:
        return self._list(upstream, 1)

    def models_request(self, upstream: UpstreamConfig) -> UpstreamRequest:
        return self._list(upstream, MODEL_PAGE_SIZE)

    def _list(self, upstream: UpstreamConfig, page_size: int) -> UpstreamRequest:
        headers = {**upstream.headers, "accept": "application/json", "user-agent": USER_AGENT}
        _authorize(headers, upstream)
        url = f"{_base(upstream)}/{API_VERSION}/models?pageSize={page_size}"
        return UpstreamRequest("GET", url, headers)

    def parse_models(self, body: bytes) -> tuple[str, ...]:
        """`{"models": [{"name": "models/gemini-2.0-flash", "supportedGenerationMethods":
        [...]}, ...]}`: the names without `models/`, of models that can generateContent."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError("the model list is not JSON") from None
        entries = data.get("models") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise UpstreamError("the model list has no models array")
        names = []
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                continue
            methods = entry.get("supportedGenerationMethods")
            if isinstance(methods, list) and "generateContent" not in methods:
                continue  # embedding and other non-chat models
            names.append(entry["name"].removeprefix("models/"))
        return tuple(names)


def _base(upstream: UpstreamConfig) -> str:
    if not upstream.base_url:
        raise UpstreamError("a gemini upstream needs a base_url")
    return upstream.base_url.rstrip("/")


def _model_path(model: str) -> str:
    if model.startswith("tunedModels/"):
        return "tunedModels/" + quote(model.removeprefix("tunedModels/"), safe="")
    return "models/" + quote(model.removeprefix("models/"), safe="")


def _authorize(headers: dict[str, str], upstream: UpstreamConfig) -> None:
    if upstream.api_key:
        headers["x-goog-api-key"] = upstream.api_key.reveal()


def _loads(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamError("upstream returned a body that is not JSON") from None


# ------------------------------------------------------------------- messages


def to_gemini_contents(messages: list[Any]) -> tuple[list[JSON], list[JSON]]:
    """(systemInstruction parts, contents) for OpenAI `messages`. Raises InvalidRequest."""
    system: list[JSON] = []
    contents: list[JSON] = []
    previous_kind = ""
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message["role"]
        if role in ("system", "developer"):
            system.extend(_text_parts(message["content"], f"{where}.content"))
            continue
        if role == "user":
            parts, kind, gemini_role = _user_parts(message["content"], where), "user", "user"
        elif role == "assistant":
            parts, kind, gemini_role = _model_parts(message, where), "model", "model"
        elif role == "tool":
            parts = [_function_response(messages, i)]
            kind, gemini_role = "tool", "user"
        else:
            raise InvalidRequest(
                f"'{where}.role' {role!r} (legacy function messages) is not supported by "
                "provider gemini; use tools",
                param=f"{where}.role",
            )
        if not parts:
            continue  # e.g. an assistant message with empty content
        if contents and kind == previous_kind:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": gemini_role, "parts": parts})
        previous_kind = kind
    return system, contents


def _text_parts(content: str | list[Any], where: str) -> list[JSON]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts = []
    for j, part in enumerate(content):  # shapes checked by parse_chat_request
        if part.get("type") != "text":
            raise InvalidRequest(
                f"'{where}[{j}]' must be text for provider gemini", param=f"{where}[{j}]"
            )
        if part["text"]:
            parts.append({"text": part["text"]})
    return parts


def _user_parts(content: str | list[Any], where: str) -> list[JSON]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[JSON] = []
    for j, part in enumerate(content):  # shapes checked by parse_chat_request
        at = f"{where}.content[{j}]"
        kind = part["type"]
        if kind == "text":
            if part["text"]:
                parts.append({"text": part["text"]})
        elif kind == "image_url":
            parts.append(_image_part(part["image_url"]["url"], f"{at}.image_url.url"))
        elif kind == "input_audio":
            audio = part["input_audio"]
            mime = _AUDIO_TYPES.get(audio["format"])
            if mime is None:
                raise InvalidRequest(
                    f"'{at}.input_audio.format' must be wav or mp3",
                    param=f"{at}.input_audio.format",
                )
            parts.append({"inlineData": {"mimeType": mime, "data": audio["data"]}})
        elif kind == "file":
            data = part["file"].get("file_data")
            if not isinstance(data, str):
                raise InvalidRequest(
                    f"'{at}.file' needs file_data (a data: URL) for provider gemini: OpenAI file "
                    "ids are not readable there",
                    param=f"{at}.file",
                )
            parts.append(_data_url_part(data, f"{at}.file.file_data"))
    return parts


def _image_part(url: str, where: str) -> JSON:
    if url.startswith("data:"):
        return _data_url_part(url, where)
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidRequest(
            f"'{where}' must be a data: URL or an http(s) URL for provider gemini", param=where
        )
    file_data: JSON = {"fileUri": url}
    path = urlsplit(url).path.lower()
    for extension, mime in _IMAGE_TYPES.items():
        if path.endswith(extension):
            file_data["mimeType"] = mime
            break
    return {"fileData": file_data}


def _data_url_part(url: str, where: str) -> JSON:
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise InvalidRequest(
            f"'{where}' must be a base64 data: URL (data:<type>;base64,<data>)", param=where
        )
    mime, _, data = match.groups()
    try:
        binascii.a2b_base64(data.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise InvalidRequest(f"'{where}' holds invalid base64 data", param=where) from None
    return {"inlineData": {"mimeType": mime, "data": data}}


def _model_parts(message: JSON, where: str) -> list[JSON]:
    content = message.get("content")
    parts: list[JSON] = []
    if isinstance(content, str):
        if content:
            parts.append({"text": content})
    elif isinstance(content, list):
        for piece in content:
            text = piece.get("text") if piece.get("type") == "text" else piece.get("refusal")
            if text:
                parts.append({"text": text})
    first_call = True
    for k, call in enumerate(message.get("tool_calls") or ()):
        at = f"{where}.tool_calls[{k}]"
        if call.get("type", "function") != "function":
            raise InvalidRequest(
                f"'{at}' is not a function call; provider gemini has only those", param=at
            )
        function = call["function"]
        arguments = _arguments(function["arguments"], f"{at}.function.arguments")
        part: JSON = {"functionCall": {"name": function["name"], "args": arguments}}
        if first_call:
            # The first call of a turn carries the turn's signature (Gemini 3 requires it).
            _, _, signature = call["id"].partition(SIGNATURE_MARK)
            part["thoughtSignature"] = signature or DUMMY_SIGNATURE
            first_call = False
        parts.append(part)
    return parts


def _arguments(text: str, where: str) -> JSON:
    if not text.strip():
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise InvalidRequest(f"'{where}' is not valid JSON", param=where) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{where}' must be a JSON object for provider gemini", param=where)
    return value


def _function_response(messages: list[Any], i: int) -> JSON:
    """The tool result `messages[i]` as a functionResponse, named by looking back for its call."""
    call_id = messages[i]["tool_call_id"]
    name = None
    for earlier in reversed(messages[:i]):
        if earlier.get("role") != "assistant":
            continue
        for call in earlier.get("tool_calls") or ():
            if call.get("id") == call_id:
                name = call["function"]["name"]
                break
        if name is not None:
            break
    if name is None:
        raise InvalidRequest(
            f"'messages[{i}].tool_call_id' {call_id!r} matches no earlier assistant tool call; "
            "provider gemini needs it to name the function",
            param=f"messages[{i}].tool_call_id",
        )
    content = messages[i]["content"]
    text = content if isinstance(content, str) else "".join(p["text"] for p in content)
    return {"functionResponse": {"name": name, "response": {"result": text}}}


# ------------------------------------------------------------------- parameters


def _tools(body: JSON) -> tuple[list[JSON], JSON]:
    """(functionDeclarations, functionCallingConfig) for the request's tools and tool_choice."""
    declarations: list[JSON] = []
    for i, tool in enumerate(body.get("tools") or ()):
        if tool["type"] != "function":
            raise InvalidRequest(
                f"'tools[{i}]' of type {tool['type']!r} is not supported by provider gemini",
                param=f"tools[{i}].type",
            )
        function = tool["function"]
        if not _FUNCTION_NAME.fullmatch(function["name"]):
            raise InvalidRequest(
                f"'tools[{i}].function.name' must start with a letter or '_' for provider gemini",
                param=f"tools[{i}].function.name",
            )
        declaration: JSON = {"name": function["name"]}
        if isinstance(function.get("description"), str):
            declaration["description"] = function["description"]
        parameters = function.get("parameters")
        if parameters:
            declaration["parametersJsonSchema"] = {
                k: v for k, v in parameters.items() if k != "$schema"
            }
        declarations.append(declaration)
    choice = body.get("tool_choice")
    if choice is None:
        return declarations, {}
    if not declarations:
        if choice in ("none", "auto"):
            return [], {}
        raise InvalidRequest("'tool_choice' needs 'tools'", param="tool_choice")
    if choice == "none":
        return declarations, {"mode": "NONE"}
    if choice == "auto":
        return declarations, {"mode": "AUTO"}
    if choice == "required":
        return declarations, {"mode": "ANY"}
    kind = choice["type"]
    if kind == "function":
        name = choice["function"]["name"]
        if name not in {d["name"] for d in declarations}:
            raise InvalidRequest(
                f"'tool_choice.function.name' {name!r} is not one of the tools",
                param="tool_choice.function.name",
            )
        return declarations, {"mode": "ANY", "allowedFunctionNames": [name]}
    if kind == "allowed_tools":
        allowed = choice.get("allowed_tools")
        allowed = allowed if isinstance(allowed, dict) else {}
        names = {
            t["function"]["name"]
            for t in allowed.get("tools") or ()
            if isinstance(t, dict) and isinstance(t.get("function"), dict)
        }
        kept = [d for d in declarations if d["name"] in names]
        if not kept:
            raise InvalidRequest(
                "'tool_choice.allowed_tools.tools' names none of the tools",
                param="tool_choice.allowed_tools.tools",
            )
        mode = "ANY" if allowed.get("mode") == "required" else "AUTO"
        return kept, {"mode": mode}
    raise InvalidRequest(
        f"'tool_choice' of type {kind!r} is not supported by provider gemini",
        param="tool_choice.type",
    )


def _generation_config(body: JSON) -> JSON:
    config: JSON = {}
    for ours, theirs in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        if body.get(ours) is not None:
            config[theirs] = body[ours]
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    if limit is not None:
        config["maxOutputTokens"] = limit
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else stop
    n = body.get("n")
    if n is not None and n != 1:
        config["candidateCount"] = n
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format["type"]
        if kind in ("json_object", "json_schema"):
            config["responseMimeType"] = "application/json"
        if kind == "json_schema":
            schema = response_format["json_schema"].get("schema")
            if schema:
                config["responseJsonSchema"] = {k: v for k, v in schema.items() if k != "$schema"}
    return config


def _choice_count(request: ChatRequest) -> int:
    n = request.body.get("n")
    return n if isinstance(n, int) and n > 0 else 1


# ------------------------------------------------------------------- answers


def _call_id_base(request: ChatRequest) -> str:
    """A tool call id prefix unique to this answer (the request id, letters and digits only)."""
    return "call_" + _ID_SAFE.sub("", request.id.removeprefix("chatcmpl-"))[-24:]


def _index(candidate: JSON, position: int) -> int:
    index = candidate.get("index", position)
    return index if isinstance(index, int) and not isinstance(index, bool) else position


def _read_parts(
    candidate: JSON, upstream: str, base: str, index: int, first_call: int
) -> tuple[list[str], list[ToolCall]]:
    """(texts, tool calls) of a candidate's parts; calls numbered from `first_call`."""
    content = candidate.get("content")
    if content is None:
        return [], []
    parts = content.get("parts") if isinstance(content, dict) else None
    if parts is None:
        return [], []
    if not isinstance(parts, list):
        raise _malformed(upstream, "content parts that are not a list")
    texts: list[str] = []
    calls: list[ToolCall] = []
    for part in parts:
        if not isinstance(part, dict):
            raise _malformed(upstream, "a part that is not an object")
        if part.get("thought") is True:
            continue  # a thought summary, not the answer
        text = part.get("text")
        if isinstance(text, str):
            texts.append(text)
        call = part.get("functionCall")
        if call is not None:
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise _malformed(upstream, "a functionCall without a name")
            args = call.get("args")
            if args is None:
                args = {}
            call_id = f"{base}_{index}_{first_call + len(calls)}"
            signature = part.get("thoughtSignature")
            if isinstance(signature, str) and signature:
                call_id += SIGNATURE_MARK + signature
            calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {
                        "name": call["name"],
                        "arguments": orjson.dumps(args).decode(),
                    },
                }
            )
    return texts, calls


def _malformed(upstream: str, what: str) -> UpstreamError:
    return UpstreamError(f"upstream '{upstream}' returned {what}")


def _finish_reason(reason: object, has_calls: bool) -> FinishReason:
    if has_calls:
        return "tool_calls"
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _CONTENT_FILTER:
        return "content_filter"
    return "stop"


def _blocked(data: JSON) -> bool:
    feedback = data.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def _model_of(data: JSON, request: ChatRequest) -> str:
    version = data.get("modelVersion")
    return version if isinstance(version, str) and version else request.model


def _count(usage: JSON, key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def to_usage(metadata: object) -> Usage | None:
    """OpenAI usage from Gemini's `usageMetadata` (None when there is none)."""
    if not isinstance(metadata, dict):
        return None
    prompt = _count(metadata, "promptTokenCount") + _count(metadata, "toolUsePromptTokenCount")
    thoughts = _count(metadata, "thoughtsTokenCount")
    completion = _count(metadata, "candidatesTokenCount") + thoughts
    total = _count(metadata, "totalTokenCount") or prompt + completion
    usage: JSON = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
    if "cachedContentTokenCount" in metadata:
        usage["prompt_tokens_details"] = {
            "cached_tokens": _count(metadata, "cachedContentTokenCount")
        }
    if thoughts:
        usage["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    return usage  # type: ignore[return-value]  # Usage plus the spec's optional details


# ------------------------------------------------------------------- streams


class GeminiStreamDecoder:
    """Gemini SSE events in, OpenAI chunks out (see the module docstring for the rules)."""

    def __init__(self, request: ChatRequest, upstream: str, secrets: tuple[str, ...]) -> None:
        self._sse = SSEDecoder()
        self._request = request
        self._upstream = upstream
        self._secrets = secrets
        self._base = _call_id_base(request)
        self._model: str | None = None
        self._calls: dict[int, int] = {}  # candidate index -> calls announced
        self._finished: set[int] = set()
        self._blocked = False
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> list[ChatCompletionChunk]:
        chunks: list[ChatCompletionChunk] = []
        for event in self._sse.feed(data):
            try:
                payload = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                raise self._interrupted("sent a stream event that is not JSON") from None
            if isinstance(payload, list) and len(payload) == 1:
                payload = payload[0]  # an error event may come as a one-element array
            if not isinstance(payload, dict):
                raise self._interrupted("sent a malformed stream event")
            if "error" in payload:
                message, _, code, _ = error_details(event.data)
                raise StreamInterrupted(
                    f"upstream '{self._upstream}' failed mid-stream: "
                    + redact(message, self._secrets)[:MAX_ERROR_MESSAGE],
                    code=(code or "stream_interrupted").lower(),
                )
            chunks.extend(self._event(payload))
        return chunks

    def _event(self, payload: JSON) -> list[ChatCompletionChunk]:
        if self._model is None:
            self._model = _model_of(payload, self._request)
        usage = to_usage(payload.get("usageMetadata"))
        if usage is not None:
            self.usage = usage
        candidates = payload.get("candidates") or []
        if not isinstance(candidates, list):
            raise self._interrupted("sent candidates that are not a list")
        chunks: list[ChatCompletionChunk] = []
        if not candidates and _blocked(payload) and not self._calls:
            self._blocked = True
            for index in range(_choice_count(self._request)):
                chunks.append(self._chunk(index, {"role": "assistant", "content": ""}))
                chunks.append(self._chunk(index, {}, "content_filter"))
                self._finished.add(index)
            return chunks
        for position, candidate in enumerate(candidates):
            if not isinstance(candidate, dict):
                raise self._interrupted("sent a malformed candidate")
            index = _index(candidate, position)
            if index in self._finished:
                continue  # nothing may follow a candidate's finish
            if index not in self._calls:
                self._calls[index] = 0
                chunks.append(self._chunk(index, {"role": "assistant", "content": ""}))
            try:
                texts, calls = _read_parts(
                    candidate, self._upstream, self._base, index, self._calls[index]
                )
            except UpstreamError as exc:
                raise StreamInterrupted(exc.message) from None
            text = "".join(texts)
            if text:
                chunks.append(self._chunk(index, {"content": text}))
            for call in calls:
                k = self._calls[index]
                self._calls[index] += 1
                announce = {
                    "index": k,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""},
                }
                chunks.append(self._chunk(index, {"tool_calls": [announce]}))
                arguments = {"index": k, "function": {"arguments": call["function"]["arguments"]}}
                chunks.append(self._chunk(index, {"tool_calls": [arguments]}))
            reason = candidate.get("finishReason")
            if isinstance(reason, str) and reason:
                finish = _finish_reason(reason, self._calls[index] > 0)
                chunks.append(self._chunk(index, {}, finish))
                self._finished.add(index)
        return chunks

    def _chunk(
        self, index: int, delta: JSON, finish: FinishReason | None = None
    ) -> ChatCompletionChunk:
        choice: ChunkChoice = {
            "index": index,
            "delta": delta,  # type: ignore[typeddict-item]  # built to Delta's shape
            "logprobs": None,
            "finish_reason": finish,
        }
        chunk: ChatCompletionChunk = {
            "id": self._request.id,
            "object": "chat.completion.chunk",
            "created": self._request.created,
            "model": self._model or self._request.model,
            "choices": [choice],
        }
        if self._request.include_usage:
            chunk["usage"] = None
        return chunk

    def close(self) -> list[ChatCompletionChunk]:
        """Raises StreamInterrupted unless every candidate that started has finished."""
        started = set(self._calls) | ({0} if self._blocked else set())
        if not started or self._sse.pending or not started <= self._finished:
            raise self._interrupted("closed the stream before it finished")
        if not self._request.include_usage or self.usage is None:
            return []
        return [
            {
                "id": self._request.id,
                "object": "chat.completion.chunk",
                "created": self._request.created,
                "model": self._model or self._request.model,
                "choices": [],
                "usage": self.usage,
            }
        ]

    def _interrupted(self, what: str) -> StreamInterrupted:
        return StreamInterrupted(f"upstream '{self._upstream}' {what}")


# ------------------------------------------------------------------- errors


def error_details(body: bytes) -> tuple[str, str | None, str | None, str | None]:
    """(message, ErrorInfo reason, status, RetryInfo delay in seconds) from Google's error body
    `{"error": {"code", "message", "status", "details": [...]}}` (or a one-element array of it,
    as streamGenerateContent without SSE sends), or from any text."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text or "no error message"), None, None, None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return body.decode("utf-8", "replace"), None, None, None
    message = str(error.get("message") or "no error message")
    status = error.get("status")
    reason = delay = None
    for detail in error.get("details") or ():
        if not isinstance(detail, dict):
            continue
        kind = str(detail.get("@type", ""))
        if kind.endswith("google.rpc.ErrorInfo") and isinstance(detail.get("reason"), str):
            reason = detail["reason"]
        elif kind.endswith("google.rpc.RetryInfo"):
            match = _DURATION.fullmatch(str(detail.get("retryDelay", "")))
            if match:
                delay = str(max(1, round(float(match.group(1)))))
    return message, reason, status if isinstance(status, str) else None, delay


GEMINI = GeminiTranslator()

__all__ = ["GEMINI", "GeminiStreamDecoder", "GeminiTranslator", "error_details", "to_usage"]
