"""The interface every provider implements: pure translation, described by small values.

A `Translator` turns a validated OpenAI request plus an upstream's settings into an
`UpstreamRequest` (method, URL, headers, body), and the upstream's status and bytes back into
OpenAI shapes or a typed `GatewayError`. It does no I/O, reads no clock or globals and logs
nothing: `upstreams/clients.py` moves the bytes and `pipeline.py` decides what happens next.
Streams are decoded by a `StreamDecoder` that is fed bytes and returns OpenAI chunks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.config import Target, UpstreamConfig
from gateway.errors import GatewayError
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
