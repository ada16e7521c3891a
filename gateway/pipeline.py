"""The request path, top to bottom: chain -> translate -> send -> translate back, with fallback.

`complete()` serves a plain request; `open_stream()` serves a streamed one up to its first
event, so that every failure before the first byte can still fall back or become a clean error
status; after that the handler relays the `Stream` and a failure ends it with an SSE error.
Only errors whose `fallback` flag is set move on to the next target; a client error from an
upstream (400, 404, 413, 422) is returned at once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.errors import (
    AllUpstreamsFailed,
    GatewayError,
    StreamInterrupted,
    UpstreamFailure,
    UpstreamUnavailable,
)
from gateway.openai_types import ChatCompletion, ChatCompletionChunk, ChatRequest
from gateway.providers import StreamDecoder
from gateway.runtime import Runtime
from gateway.upstreams.clients import UpstreamResponse

log = logging.getLogger("gateway.pipeline")


@dataclass(frozen=True, slots=True)
class Served:
    """Which upstream answered, and its own id for the request (returned and logged)."""

    upstream: str
    upstream_request_id: str | None


async def complete(request: ChatRequest, rt: Runtime) -> tuple[ChatCompletion, Served]:
    """Serve a non-streaming request. Raises GatewayError (AllUpstreamsFailed when exhausted)."""
    failures: list[UpstreamFailure] = []
    for upstream, target in rt.routes.chain_for(request.model):
        if reason := upstream.unusable:
            failures.append(UpstreamFailure(upstream.name, UpstreamUnavailable(reason)))
            continue
        translator = upstream.translator
        try:
            outgoing = translator.build_request(request, target, upstream.config)
            reply = await rt.clients.send(upstream.name, outgoing)
            try:
                body = await reply.read()
            finally:
                await reply.aclose()
            if not 200 <= reply.status < 300:
                raise translator.parse_error(
                    reply.status, reply.headers, body, upstream.name, upstream.secrets
                )
            completion = translator.parse_response(body, request, upstream.name)
            return completion, Served(upstream.name, reply.headers.get("x-request-id"))
        except GatewayError as exc:
            if not exc.fallback:
                raise
            failures.append(UpstreamFailure(upstream.name, exc))
            log.warning("upstream failed", extra={"upstream": upstream.name, "reason": exc.message})
    raise AllUpstreamsFailed(request.model, failures)


class Stream:
    """An upstream stream whose first chunks are in. Iterate for the rest; always `aclose()`."""

    def __init__(
        self,
        reply: UpstreamResponse,
        body: AsyncIterator[bytes],
        decoder: StreamDecoder,
        first: list[ChatCompletionChunk],
        served: Served,
    ) -> None:
        self._reply = reply
        self._body = body
        self._decoder = decoder
        self.first = first
        self.served = served

    @property
    def decoder(self) -> StreamDecoder:
        return self._decoder

    async def __aiter__(self) -> AsyncIterator[list[ChatCompletionChunk]]:
        """Batches of chunks as the upstream sends them. Raises GatewayError if it breaks."""
        decoder = self._decoder
        async for data in self._body:
            chunks = decoder.feed(data)
            if chunks:
                yield chunks
        tail = decoder.close()
        if tail:
            yield tail

    async def aclose(self) -> None:
        await self._reply.aclose()


async def open_stream(request: ChatRequest, rt: Runtime) -> Stream:
    """Open a stream on the first target that produces a first event. Raises GatewayError."""
    failures: list[UpstreamFailure] = []
    for upstream, target in rt.routes.chain_for(request.model):
        if reason := upstream.unusable:
            failures.append(UpstreamFailure(upstream.name, UpstreamUnavailable(reason)))
            continue
        translator = upstream.translator
        try:
            outgoing = translator.build_request(request, target, upstream.config)
            reply = await rt.clients.send(upstream.name, outgoing)
        except GatewayError as exc:
            if not exc.fallback:
                raise
            failures.append(UpstreamFailure(upstream.name, exc))
            continue
        try:
            if not 200 <= reply.status < 300:
                body = await reply.read()
                raise translator.parse_error(
                    reply.status, reply.headers, body, upstream.name, upstream.secrets
                )
            decoder = translator.stream_decoder(request, upstream.name, upstream.secrets)
            chunks = reply.chunks()
            first: list[ChatCompletionChunk] = []
            async for data in chunks:
                first = decoder.feed(data)
                if first:
                    break
            else:
                first = decoder.close()
                if not first:
                    raise StreamInterrupted(
                        f"upstream '{upstream.name}' ended the stream without an event"
                    )
            served = Served(upstream.name, reply.headers.get("x-request-id"))
            return Stream(reply, chunks, decoder, first, served)
        except GatewayError as exc:
            await reply.aclose()
            if not exc.fallback:
                raise
            failures.append(UpstreamFailure(upstream.name, exc))
            log.warning("upstream failed", extra={"upstream": upstream.name, "reason": exc.message})
        except BaseException:
            await reply.aclose()
            raise
    raise AllUpstreamsFailed(request.model, failures)
