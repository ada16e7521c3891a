"""The request path, top to bottom: chain -> translate -> send -> translate back, with fallback.

`complete()` serves a plain request; `open_stream()` serves a streamed one up to its first
event, so that every failure before the first byte can still fall back or become a clean error
status; after that the handler relays the `Stream` and a failure ends it with an SSE error.
Only errors whose `fallback` flag is set move on to the next target; a client error from an
upstream (400, 404, 413, 422) is returned at once.
"""

from __future__ import annotations

import logging
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
from gateway.routing import Chain
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
    for upstream, target in _usable_targets(request, rt, failures):
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
            return completion, Served(
                upstream.name, reply.headers.get(translator.request_id_header)
            )
        except GatewayError as exc:
            if not exc.fallback:
                raise
            failures.append(_failed(upstream.name, exc))
    raise AllUpstreamsFailed(request.model, failures)


class Stream:
    """An upstream stream whose first chunks are in. Iterate for the rest; always `aclose()`.

    Iterating yields batches of OpenAI chunks as the upstream sends them, and raises
    GatewayError if the upstream breaks off or sends something it should not.
    """

    __slots__ = ("_decoder", "_ended", "_reply", "first", "served")

    def __init__(
        self,
        reply: UpstreamResponse,
        decoder: StreamDecoder,
        first: list[ChatCompletionChunk],
        served: Served,
    ) -> None:
        self._reply = reply
        self._decoder = decoder
        self._ended = False
        self.first = first
        self.served = served

    @property
    def decoder(self) -> StreamDecoder:
        return self._decoder

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> list[ChatCompletionChunk]:
        while not self._ended:
            data = await self._reply.receive()
            if not data:
                self._ended = True
                tail = self._decoder.close()  # raises if the stream was cut short
                if tail:
                    return tail
                break
            chunks = self._decoder.feed(data)
            if chunks:
                return chunks
        raise StopAsyncIteration

    async def aclose(self) -> None:
        await self._reply.aclose()


async def open_stream(request: ChatRequest, rt: Runtime) -> Stream:
    """Open a stream on the first target that produces a first event. Raises GatewayError."""
    failures: list[UpstreamFailure] = []
    for upstream, target in _usable_targets(request, rt, failures):
        translator = upstream.translator
        try:
            outgoing = translator.build_request(request, target, upstream.config)
            reply = await rt.clients.send(upstream.name, outgoing)
        except GatewayError as exc:
            if not exc.fallback:
                raise
            failures.append(_failed(upstream.name, exc))
            continue
        try:
            if not 200 <= reply.status < 300:
                body = await reply.read()
                raise translator.parse_error(
                    reply.status, reply.headers, body, upstream.name, upstream.secrets
                )
            decoder = translator.stream_decoder(request, upstream.name, upstream.secrets)
            first: list[ChatCompletionChunk] = []
            while not first:
                data = await reply.receive()
                if not data:
                    first = decoder.close()
                    if not first:
                        raise StreamInterrupted(
                            f"upstream '{upstream.name}' ended the stream without an event"
                        )
                    break
                first = decoder.feed(data)
            served = Served(upstream.name, reply.headers.get(translator.request_id_header))
            return Stream(reply, decoder, first, served)
        except GatewayError as exc:
            await reply.aclose()
            if not exc.fallback:
                raise
            failures.append(_failed(upstream.name, exc))
        except BaseException:
            await reply.aclose()
            raise
    raise AllUpstreamsFailed(request.model, failures)


def _usable_targets(request: ChatRequest, rt: Runtime, failures: list[UpstreamFailure]) -> Chain:
    """The chain in order, less the upstreams that may take no traffic now (noted as failures)."""
    usable = []
    for upstream, target in rt.routes.chain_for(request.model):
        if reason := upstream.unusable:
            failures.append(UpstreamFailure(upstream.name, UpstreamUnavailable(reason)))
        else:
            usable.append((upstream, target))
    return tuple(usable)


def _failed(upstream: str, exc: GatewayError) -> UpstreamFailure:
    log.warning("upstream failed", extra={"upstream": upstream, "reason": exc.message})
    return UpstreamFailure(upstream, exc)
