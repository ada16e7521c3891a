"""The interface every provider implements: pure translation, described by small values.

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

from gateway.config import Target, UpstreamConfig
from gateway.errors import GatewayError, InvalidRequest
from gateway.openai_types import ChatCompletion, ChatCompletionChunk, ChatRequest, Usage


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
    refused.update((name, why) for name, why in (unsupported_if or {}).items() if name in body)
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
