"""Azure OpenAI: OpenAI's chat format behind a per-deployment URL, an `api-version` and `api-key`.

A target's `model` is the deployment name: the request goes to
`POST {base_url}/openai/deployments/{deployment}/chat/completions?api-version={api_version}`
with the key in the `api-key` header (REST reference,
https://learn.microsoft.com/en-us/azure/ai-services/openai/reference). Bodies, answers and
errors are OpenAI's, so `openai.py` reads them; what differs:
- The body's `model` is ignored by Azure (the deployment in the URL decides); the deployment
  name is sent in it, as Azure's own SDK does.
- Azure refuses arguments its api-version does not know with a 400 "Unrecognized request
  argument supplied: <name>" (the 2024-10-21 request schema,
  https://github.com/Azure/azure-rest-api-specs/blob/main/specification/cognitiveservices/data-plane/AzureOpenAI/inference/stable/2024-10-21/inference.json).
  OpenAI-only fields that change no output (`store`, `metadata`, `service_tier`,
  `prompt_cache_key`, `safety_identifier`) are therefore left out; the others go as sent, so
  Azure itself names the one a given api-version lacks. Streams ask for usage with
  `stream_options`, known from api-version 2024-09-01-preview / 2024-10-21 on.
- Content filtering (https://learn.microsoft.com/en-us/azure/ai-services/openai/concepts/content-filter):
  a blocked prompt is a 400 with `code: "content_filter"`, `param: "prompt"` and an
  `innererror` (passed through as a 400 with that code); a cut completion has
  `finish_reason: "content_filter"`; answers carry `prompt_filter_results` and
  `content_filter_results`, kept (OpenAI's schema and SDK allow extra fields).
- Streams (https://learn.microsoft.com/en-us/azure/ai-services/openai/concepts/content-streaming)
  open with an annotation chunk (`choices: []`, `prompt_filter_results`, empty id/model/object)
  and may carry annotation-only choices (empty delta, no finish_reason): both are dropped, so
  the only `choices: []` chunk a client sees is the usage chunk it asked for.
- Errors from Azure's gateway (401, 404, 429) are `{"error": {"code": "401", "message": ...}}`;
  a missing or unknown api-version is a 404 "Resource not found". Rate limits send
  `retry-after` and `retry-after-ms`.
- The request id is `apim-request-id` (what Azure support asks for; `x-request-id` is sent too).
- Health and models: `GET {base_url}/openai/models?api-version=...` (Models - List,
  https://learn.microsoft.com/en-us/rest/api/azureopenai/models/list) lists the models the
  resource can deploy (base and fine-tuned), not its deployments: the data-plane deployment
  listing was retired after 2023-03-15-preview, deployments are listed by the management API.
"""

from __future__ import annotations

from urllib.parse import quote

import orjson

from gateway.config import Target, UpstreamConfig
from gateway.errors import UpstreamError
from gateway.openai_types import ChatCompletionChunk, ChatRequest
from gateway.providers.base import USER_AGENT, UpstreamRequest, request_body
from gateway.providers.openai import OpenAIStreamDecoder, OpenAITranslator

PROVIDER = "azure"
# OpenAI fields Azure does not know and that change nothing in the answer.
IGNORED = ("store", "metadata", "service_tier", "prompt_cache_key", "safety_identifier")
_CREDENTIALS = ("api-key", "authorization")
_CONTENT_KEYS = ("role", "content", "tool_calls", "refusal", "function_call")


class AzureTranslator(OpenAITranslator):
    """Translator for `provider: azure`; reading answers and errors is OpenAI's."""

    request_id_header = "apim-request-id"

    def build_request(
        self, request: ChatRequest, target: Target, upstream: UpstreamConfig
    ) -> UpstreamRequest:
        body = request_body(request, upstream, PROVIDER)
        for name in IGNORED:
            body.pop(name, None)
        body["model"] = target.model
        if request.stream:
            options = body.get("stream_options")
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        forwarded = {k: v for k, v in request.forward_headers.items() if k not in _CREDENTIALS}
        headers = {
            **forwarded,
            **self._headers(upstream),
            "content-type": "application/json",
            "accept": "text/event-stream" if request.stream else "application/json",
        }
        url = deployment_url(upstream, target.model) + "/chat/completions?" + _version(upstream)
        return UpstreamRequest("POST", url, headers, orjson.dumps(body))

    def _headers(self, upstream: UpstreamConfig) -> dict[str, str]:
        headers = {**upstream.headers, "accept": "application/json", "user-agent": USER_AGENT}
        if upstream.api_key:
            headers["api-key"] = upstream.api_key.reveal()
        return headers

    def stream_decoder(
        self, request: ChatRequest, upstream: str, secrets: tuple[str, ...]
    ) -> AzureStreamDecoder:
        return AzureStreamDecoder(request.include_usage, upstream, secrets)

    def health_probe(self, upstream: UpstreamConfig) -> UpstreamRequest:
        """`GET /openai/models`: cheap, and it fails on a wrong key or api-version."""
        url = _base(upstream) + "/openai/models?" + _version(upstream)
        return UpstreamRequest("GET", url, self._headers(upstream))

    def models_request(self, upstream: UpstreamConfig) -> UpstreamRequest:
        return self.health_probe(upstream)


def _base(upstream: UpstreamConfig) -> str:
    if not upstream.base_url:
        raise UpstreamError("an azure upstream needs a base_url (https://<name>.openai.azure.com)")
    return upstream.base_url.rstrip("/")


def _version(upstream: UpstreamConfig) -> str:
    return "api-version=" + quote(upstream.api_version, safe="")


def deployment_url(upstream: UpstreamConfig, deployment: str) -> str:
    """`{base_url}/openai/deployments/{deployment}`, the deployment name escaped."""
    return f"{_base(upstream)}/openai/deployments/{quote(deployment, safe='')}"


class AzureStreamDecoder(OpenAIStreamDecoder):
    """OpenAI's decoder without Azure's annotation-only chunks (see the module docstring)."""

    def feed(self, data: bytes) -> list[ChatCompletionChunk]:
        kept: list[ChatCompletionChunk] = []
        for chunk in super().feed(data):
            choices = [c for c in chunk["choices"] if not _annotation_only(c)]
            if not choices and not chunk.get("usage"):
                continue  # prompt_filter_results, or content-filter annotations
            chunk["choices"] = choices
            kept.append(chunk)
        return kept


def _annotation_only(choice: object) -> bool:
    if not isinstance(choice, dict) or choice.get("finish_reason") is not None:
        return False
    delta = choice.get("delta")
    return isinstance(delta, dict) and not any(key in delta for key in _CONTENT_KEYS)


AZURE = AzureTranslator()
