"""A fake Azure OpenAI resource: Azure's flavour of OpenAI's wire format as a `Dialect`.

It is OpenAI's dialect (`tests/fakes/openai_upstream.py`) with what Azure changes, from the
REST reference (https://learn.microsoft.com/en-us/azure/ai-services/openai/reference), the
content-filtering and content-streaming guides
(https://learn.microsoft.com/en-us/azure/ai-services/openai/concepts/content-filter,
https://learn.microsoft.com/en-us/azure/ai-services/openai/concepts/content-streaming) and the
2024-10-21 inference schema (https://github.com/Azure/azure-rest-api-specs/blob/main/
specification/cognitiveservices/data-plane/AzureOpenAI/inference/stable/2024-10-21/inference.json):
- chat is `POST /openai/deployments/{deployment}/chat/completions?api-version=...`, models
  `GET /openai/models?api-version=...`; the key is the `api-key` header;
- a missing or malformed `api-version` is a 404 `{"error": {"code": "404", "message":
  "Resource not found"}}`, as is any unknown path; a wrong key a 401 with code "401";
- arguments the api-version does not know are a 400 "Unrecognized request argument supplied";
- answers report the deployed model's name (not the deployment), carry `prompt_filter_results`
  and per-choice `content_filter_results`, and headers `apim-request-id`, `x-request-id`,
  `x-ms-region`, `x-ms-deployment-name`;
- a stream opens with an annotation chunk (`choices: []`, empty id/model/object,
  `prompt_filter_results`) and closes with a content-filter annotation chunk (a choice with an
  empty delta) before the usage chunk and `data: [DONE]`;
- `ApiError(code="content_filter")` on a 400 renders the prompt-filter error with `innererror`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from tests.fakes.openai_upstream import OpenAIDialect, build_chunks, build_completion
from tests.fakes.upstream import (
    ApiError,
    Dialect,
    FakeUpstream,
    RecordedRequest,
    Reply,
    compact,
    sse,
)

CHAT_PATH = "/openai/deployments/{deployment}/chat/completions"
MODELS_PATH = "/openai/models"
OVERLOADED_STATUS = 503
DEPLOYED_MODEL = "gpt-4o-2024-11-20"
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
_NO_API_VERSION = "Resource not found (no valid api-version query parameter)"
# createChatCompletionRequest of the 2024-10-21 schema (plus `model`, which Azure ignores).
KNOWN_ARGUMENTS = frozenset(
    {
        "model",
        "messages",
        "temperature",
        "top_p",
        "stream",
        "stream_options",
        "stop",
        "max_tokens",
        "max_completion_tokens",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "user",
        "data_sources",
        "logprobs",
        "top_logprobs",
        "n",
        "parallel_tool_calls",
        "response_format",
        "seed",
        "tools",
        "tool_choice",
        "function_call",
        "functions",
    }
)
_SAFE = {"filtered": False, "severity": "safe"}
FILTER_RESULTS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
OFFSETS = {"check_offset": 0, "start_offset": 0, "end_offset": 40}
PROMPT_FILTER_RESULTS = [{"prompt_index": 0, "content_filter_results": FILTER_RESULTS}]
# Azure's gateway errors: {"error": {"code": "<status>", "message": ...}}.
_GATEWAY_ERRORS = {
    401: (
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
        "provide a valid key for an active subscription and use a correct regional API "
        "endpoint for your resource."
    ),
    404: "Resource not found",
    429: (
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
        "2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. "
        "Please retry after 1 second."
    ),
}
_PROMPT_FILTERED = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content management "
    "policy. Please modify your prompt and retry. To learn more about our content filtering "
    "policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766"
)


class AzureDialect(OpenAIDialect):
    """Azure OpenAI's chat completions (see the module docstring)."""

    name = "azure"
    chat_route = CHAT_PATH
    info_routes: Mapping[str, str] = {MODELS_PATH: "GET"}
    stream_content_type = "text/event-stream; charset=utf-8"

    def request_id(self) -> str:
        return str(uuid.uuid4())

    def response_headers(self, record: RecordedRequest) -> dict[str, str]:
        headers = {
            "apim-request-id": record.request_id,
            "x-request-id": str(uuid.uuid5(uuid.NAMESPACE_URL, record.request_id)),
            "x-ms-region": "Sweden Central",
            "x-ms-rai-invoked": "true",
        }
        if "deployment" in record.path_params:
            headers["x-ms-deployment-name"] = record.path_params["deployment"]
        return headers

    def authorized(self, record: RecordedRequest, api_key: str) -> bool:
        return record.headers.get("api-key") == api_key

    def problems(self, record: RecordedRequest) -> list[str]:
        # Checked first: Azure answers 404 before it reads the body.
        if not _API_VERSION.match(_api_version(record)):
            return [_NO_API_VERSION]
        found = super().problems(record)
        if isinstance(record.json, dict):
            found += [
                f"Unrecognized request argument supplied: {name}"
                for name in record.json
                if name not in KNOWN_ARGUMENTS
            ]
        return found

    def completion(self, record: RecordedRequest, reply: Reply) -> bytes:
        completion = build_completion(record.json, _with_model(reply))
        completion.pop("service_tier", None)
        _settle_usage(completion.get("usage"))
        completion["prompt_filter_results"] = PROMPT_FILTER_RESULTS
        for choice in completion["choices"]:
            choice["content_filter_results"] = (
                {} if choice["finish_reason"] == "content_filter" else FILTER_RESULTS
            )
        return json.dumps(completion, ensure_ascii=False, indent=2).encode()

    def stream(self, record: RecordedRequest, reply: Reply) -> list[bytes]:
        request = dict(record.json)
        options = request.get("stream_options")
        # Azure sends no `obfuscation` field.
        request["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_obfuscation": False,
        }
        chunks = build_chunks(request, _with_model(reply))
        usage = chunks.pop() if chunks and chunks[-1]["choices"] == [] else None
        if usage is not None:
            _settle_usage(usage.get("usage"))
        for chunk in chunks:
            chunk.pop("service_tier", None)
            for choice in chunk["choices"]:
                first = "role" in choice["delta"]
                choice["content_filter_results"] = {} if first else FILTER_RESULTS
        opening = {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": PROMPT_FILTER_RESULTS,
        }
        closing = {
            **{k: v for k, v in chunks[-1].items() if k != "choices"},
            "choices": [
                {
                    "index": 0,
                    "delta": {},
                    "finish_reason": None,
                    "content_filter_results": FILTER_RESULTS,
                    "content_filter_offsets": OFFSETS,
                }
            ],
        }
        events = [opening, *chunks, closing, *([usage] if usage is not None else [])]
        framed = [sse(compact(event)) for event in events]
        return [*framed, sse("[DONE]")] if reply.send_done else framed

    def info(self, record: RecordedRequest, models: Sequence[str]) -> bytes:
        listing = {
            "data": [
                {
                    "id": model,
                    "status": "succeeded",
                    "capabilities": {
                        "fine_tune": False,
                        "inference": True,
                        "completion": False,
                        "chat_completion": True,
                        "embeddings": False,
                    },
                    "lifecycle_status": "generally-available",
                    "deprecation": {"inference": 1767225600},
                    "created_at": 1732060800,
                    "object": "model",
                }
                for model in models
            ],
            "object": "list",
        }
        return json.dumps(listing, indent=2).encode()

    def error_body(self, status: int, error: ApiError) -> bytes:
        if status in _GATEWAY_ERRORS:
            code = str(status) if error.code is ... else error.code
            envelope: dict[str, Any] = {
                "error": {"code": code, "message": error.message or _GATEWAY_ERRORS[status]}
            }
            return json.dumps(envelope).encode()
        if status == 400 and error.code == "content_filter":
            filtered = {**FILTER_RESULTS, "violence": {"filtered": True, "severity": "high"}}
            envelope = {
                "error": {
                    "message": error.message or _PROMPT_FILTERED,
                    "type": None,
                    "param": "prompt",
                    "code": "content_filter",
                    "status": 400,
                    "innererror": {
                        "code": "ResponsibleAIPolicyViolation",
                        "content_filter_result": filtered,
                    },
                }
            }
            return json.dumps(envelope).encode()
        return super().error_body(status, error)

    def unauthorized(self) -> Reply:
        return Reply.error(401)

    def invalid(self, problems: list[str]) -> Reply:
        if problems[0] == _NO_API_VERSION:
            return Reply.error(404)
        return Reply.error(400, problems[0][:2000], code=None)

    def not_found(self, record: RecordedRequest) -> Reply:
        return Reply.error(404)


def _api_version(record: RecordedRequest) -> str:
    for pair in record.query.split("&"):
        name, _, value = pair.partition("=")
        if name == "api-version":
            return value
    return ""


def _settle_usage(usage: object) -> None:
    """`Reply.usage` overrides as the dialect contract says: OpenAI's builder copies the keys as
    given, so `cached_tokens` moves under `prompt_tokens_details` and the total is recounted."""
    if not isinstance(usage, dict):
        return
    if "cached_tokens" in usage:
        usage.setdefault("prompt_tokens_details", {})["cached_tokens"] = usage.pop("cached_tokens")
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]


def _with_model(reply: Reply) -> Reply:
    """Azure reports the deployed model's name, not the deployment's."""
    if reply.model is not None:
        return reply
    return replace(reply, model=DEPLOYED_MODEL)


class FakeAzure(FakeUpstream):
    """A fake Azure OpenAI resource on `127.0.0.1:<free port>`; use as a context manager.

    `base_url` is the resource endpoint (`http://127.0.0.1:PORT`, gateway.yaml's `base_url`).
    Any deployment name is served. `api_key`, if set, is required in the `api-key` header.
    `models` are what `GET /openai/models` lists.
    """

    default_models = (DEPLOYED_MODEL, "gpt-4o-mini-2024-07-18")

    def new_dialect(self, models: Sequence[str]) -> Dialect:
        return AzureDialect()


__all__ = ["CHAT_PATH", "MODELS_PATH", "OVERLOADED_STATUS", "AzureDialect", "FakeAzure"]
