"""The interface every provider implements, and the pieces the translators share.

A `Translator` turns a validated OpenAI request plus an upstream's settings into an
`UpstreamRequest` (method, URL, headers, body), and the upstream's status and bytes back into
OpenAI shapes or a typed `GatewayError`. It does no I/O, reads no clock or globals and logs
nothing: `upstreams/clients.py` moves the bytes and `pipeline.py` decides what happens next.
Streams are decoded by a `StreamDecoder` that is fed bytes and returns OpenAI chunks.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from gateway.config import Target, UpstreamConfig
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)
from gateway.logs import redact
from gateway.openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    ChunkChoice,
    Delta,
    FinishReason,
    Usage,
)

MAX_ERROR_MESSAGE = 1000  # characters of an upstream's error message passed on
USER_AGENT = "llm-gateway"
_PASSED_THROUGH = frozenset({400, 404, 409, 413, 415, 422})


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """What to send upstream. `headers` include the upstream's credentials: never log them."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None = None

    def __repr__(self) -> str:  # headers hold keys
        return f"UpstreamRequest({self.method} {self.url})"


class StreamDecoder(Protocol):
    """Turns an upstream stream into OpenAI chunks, one `feed()` per received piece of bytes."""

    usage: Usage | None

    def feed(self, data: bytes) -> list[ChatCompletionChunk]:
        """Chunks completed by `data`. Raises GatewayError for an error event or a bad body."""
        ...

    def close(self) -> list[ChatCompletionChunk]:
        """At the upstream's end of body. Raises StreamInterrupted if the stream was cut short."""
        ...


class Translator(Protocol):
    request_id_header: str
    """The response header that carries the upstream's own id for a request."""

    def build_request(
        self, request: ChatRequest, target: Target, upstream: UpstreamConfig
    ) -> UpstreamRequest: ...

    def parse_response(self, body: bytes, request: ChatRequest, upstream: str) -> ChatCompletion:
        """A 2xx body as an OpenAI completion. Raises UpstreamError if it is not one."""
        ...

    def parse_error(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        upstream: str,
        secrets: tuple[str, ...],
    ) -> GatewayError:
        """A non-2xx answer as the error the client gets; `secrets` are masked in messages."""
        ...

    def stream_decoder(
        self, request: ChatRequest, upstream: str, secrets: tuple[str, ...]
    ) -> StreamDecoder: ...

    def health_probe(self, upstream: UpstreamConfig) -> UpstreamRequest:
        """A cheap request that succeeds when the upstream is up and our key works."""
        ...

    def models_request(self, upstream: UpstreamConfig) -> UpstreamRequest:
        """The request that lists the models the upstream serves."""
        ...

    def parse_models(self, body: bytes) -> tuple[str, ...]:
        """Model names from the 2xx answer to `models_request`. Raises UpstreamError."""
        ...


def request_body(
    request: ChatRequest,
    upstream: UpstreamConfig,
    provider: str,
    unsupported: Collection[str] = (),
    unsupported_if: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A copy of the client's body ready to translate for `provider`.

    The upstream's `drop_params` are removed first. Then every parameter in `unsupported` that the
    client set (to anything but null), and every one in `unsupported_if` (name -> why) whose value
    the caller found it cannot honour, is dropped when the upstream has `drop_unsupported`, and
    otherwise refused with a 400 naming the parameter and the provider: meaning never changes
    silently.
    """
    body = dict(request.body)
    for name in upstream.drop_params:
        body.pop(name, None)
    refused = {name: "" for name in unsupported if body.get(name) is not None}
    if unsupported_if:
        refused.update((name, why) for name, why in unsupported_if.items() if name in body)
    for name, why in refused.items():
        if upstream.drop_unsupported:
            del body[name]
            continue
        detail = f" ({why})" if why else ""
        raise InvalidRequest(
            f"'{name}' is not supported by provider {provider}{detail}; remove it, or set "
            "drop_unsupported: true on the upstream to have the gateway drop it",
            param=name,
            code="unsupported_parameter",
        )
    return body


# ------------------------------------------------------------------- shared by the translators


def json_object(body: bytes, what: str, upstream: str | None = None) -> dict[str, Any]:
    """A 2xx body that must be a JSON object. Raises UpstreamError naming `what` it should be
    (and the upstream, when known)."""
    source = f"upstream '{upstream}' returned {what}" if upstream else what
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"{source} that is not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamError(f"{source} that is not a JSON object")
    return data


def names_in(entries: object, key: str) -> tuple[str, ...]:
    """The string `key` of each object in the list `entries` (a model listing's names)."""
    if not isinstance(entries, list):
        raise UpstreamError("the model list has no list of models")
    return tuple(e[key] for e in entries if isinstance(e, dict) and isinstance(e.get(key), str))


def stream_event(raw: bytes, upstream: str) -> dict[str, Any]:
    """One stream event's JSON object. Raises StreamInterrupted for anything else."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise StreamInterrupted(
            f"upstream '{upstream}' sent a stream event that is not JSON"
        ) from None
    if not isinstance(data, dict):
        raise StreamInterrupted(f"upstream '{upstream}' sent a malformed stream event")
    return data


def stream_failure(
    upstream: str, secrets: tuple[str, ...], message: str, code: str | None
) -> StreamInterrupted:
    """An upstream's error event in the middle of a stream, its message redacted and cut."""
    return StreamInterrupted(
        f"upstream '{upstream}' failed mid-stream: "
        + redact(message, secrets)[:MAX_ERROR_MESSAGE],  # redact first: a cut key hides
        code=code or "stream_interrupted",
    )


def new_chunk(
    request: ChatRequest,
    model: str,
    delta: Delta,
    finish: FinishReason | None = None,
    index: int = 0,
) -> ChatCompletionChunk:
    """A `chat.completion.chunk` of one choice built by the gateway (id and time: the request's).

    With `include_usage`, every chunk says `usage: null` but the last, as OpenAI's do.
    """
    choice: ChunkChoice = {
        "index": index,
        "delta": delta,
        "logprobs": None,
        "finish_reason": finish,
    }
    chunk: ChatCompletionChunk = {
        "id": request.id,
        "object": "chat.completion.chunk",
        "created": request.created,
        "model": model,
        "choices": [choice],
    }
    if request.include_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(request: ChatRequest, model: str, usage: Usage) -> ChatCompletionChunk:
    """The last chunk of a stream whose client asked for usage: no choices, the usage."""
    return {
        "id": request.id,
        "object": "chat.completion.chunk",
        "created": request.created,
        "model": model,
        "choices": [],
        "usage": usage,
    }


def new_usage(prompt: int, completion: int, cached: int | None = None) -> Usage:
    """OpenAI's usage object from token counts (`cached`: prompt tokens read from a cache)."""
    usage: Usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


# ------------------------------------------------------------------- upstream errors


def error_details(body: bytes) -> tuple[str, str | None, str | None, str | None]:
    """(message, type, param, code) from any of the error shapes OpenAI-like servers send.

    The message is whole: callers redact it before they shorten it.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text or "no error message"), None, None, None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return (
            str(error.get("message") or "no error message"),
            _text(error.get("type")),
            _text(error.get("param")),
            _text(error.get("code")),
        )
    if isinstance(error, str):  # TGI: {"error": "...", "error_type": "validation"}
        return error, _text(data.get("error_type")), None, None
    if isinstance(data, dict) and "detail" in data:  # FastAPI
        return str(data["detail"]), None, None, None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return data["message"], _text(data.get("type")), None, None
    return body.decode("utf-8", "replace"), None, None, None


def _text(value: object) -> str | None:
    return None if value is None else str(value)[:200]


def error_from_status(
    status: int,
    headers: Mapping[str, str],
    message: str,
    kind: str | None,
    param: str | None,
    code: str | None,
    upstream: str,
    secrets: tuple[str, ...],
) -> GatewayError:
    """The gateway's answer to an upstream's non-2xx status (shared by every provider)."""
    error = _error_for(status, headers, message, kind, param, code, upstream, secrets)
    error.upstream_status = status
    return error


def _error_for(
    status: int,
    headers: Mapping[str, str],
    message: str,
    kind: str | None,
    param: str | None,
    code: str | None,
    upstream: str,
    secrets: tuple[str, ...],
) -> GatewayError:
    message = redact(message, secrets)[:MAX_ERROR_MESSAGE]  # redact first: a cut key hides
    if status in _PASSED_THROUGH:
        rejected = UpstreamRejected(message, param=param, code=code, status=status)
        if kind:
            rejected.type = kind
        return rejected
    if status in (401, 403):
        return UpstreamError(
            f"upstream '{upstream}' refused the gateway's credentials ({status})",
            code="upstream_auth_failed",
        )
    # When to try again, if the upstream said: honoured by retries, passed on to the client.
    retry = {k: headers[k] for k in ("retry-after", "retry-after-ms") if k in headers}
    if status == 429:
        return RateLimited(f"upstream '{upstream}' is rate limited: {message}", headers=retry)
    if status in (408, 504):
        return UpstreamTimeout(f"upstream '{upstream}' timed out ({status})", headers=retry)
    if status in (503, 529):
        return UpstreamError(
            f"upstream '{upstream}' is overloaded ({status}): {message}",
            status=503,
            code="upstream_overloaded",
            headers=retry,
        )
    if 300 <= status < 400:  # never followed: the upstream's key goes to its own host only
        return UpstreamError(
            f"upstream '{upstream}' answered with a redirect ({status}), which the gateway "
            "does not follow; check the upstream's base_url",
            code="upstream_redirect",
        )
    return UpstreamError(
        f"upstream '{upstream}' failed with status {status}: {message}", headers=retry
    )
