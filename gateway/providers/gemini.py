"""Google's Gemini API (generativelanguage.googleapis.com): generateContent and its SSE stream.

Owns the translator: endpoints, headers, errors and the model list here, the request's body in
`gemini_requests.py` (`GenerateContentRequest`) and answers and streams in `gemini_responses.py`
(`GenerateContentResponse`). Quirks of both directions, with the documentation they come from:

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

from collections.abc import Mapping
from urllib.parse import quote

import orjson

from gateway.config import Target, UpstreamConfig
from gateway.errors import GatewayError, UpstreamError
from gateway.openai_types import ChatCompletion, ChatRequest
from gateway.providers.base import (
    USER_AGENT,
    UpstreamRequest,
    error_from_status,
    json_object,
    names_in,
    request_body,
)
from gateway.providers.gemini_requests import DUMMY_SIGNATURE, to_gemini_request
from gateway.providers.gemini_responses import (
    SIGNATURE_MARK,
    GeminiStreamDecoder,
    error_details,
    to_completion,
)

PROVIDER = "gemini"
API_VERSION = "v1beta"
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
        return UpstreamRequest("POST", url, headers, orjson.dumps(to_gemini_request(body)))

    # ------------------------------------------------------------ answers

    def parse_response(self, body: bytes, request: ChatRequest, upstream: str) -> ChatCompletion:
        return to_completion(body, request, upstream)

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
        entries = json_object(body, "a model list").get("models")
        if isinstance(entries, list):  # skip embedding and other models that cannot chat
            entries = [e for e in entries if _can_chat(e)]
        return tuple(name.removeprefix("models/") for name in names_in(entries, "name"))


def _can_chat(entry: object) -> bool:
    methods = entry.get("supportedGenerationMethods") if isinstance(entry, dict) else None
    return not isinstance(methods, list) or "generateContent" in methods


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


GEMINI = GeminiTranslator()

__all__ = ["DUMMY_SIGNATURE", "GEMINI", "SIGNATURE_MARK", "GeminiTranslator"]
