"""The request path, top to bottom: plan -> for each target: skip, or admit -> send -> translate.

`complete()` serves a plain request; `open_stream()` serves a streamed one up to its first
event, so that every failure before the first byte can still fall back or become a clean error
status; after that the handler relays the `Stream` and a failure ends it with an SSE error.

For each target of the request's plan (`routing.py`: priority groups, load shared by weight):
1. skip it without a network call when its upstream is unusable (unconfigured, disabled,
   disconnected, unhealthy), its breaker refuses (open, or half-open with its trials taken) or
   its limiter cannot admit the request within `max_wait`;
2. send, and read the answer; an error whose `fallback` flag is set moves on, others (the
   client's own 400/404/413/422) are returned at once. A context-length error moves on only
   to a later target marked `larger_context`;
3. retry the same upstream on connect errors, timeouts and 5xx, up to `retry.attempts` tries,
   with backoff (or the upstream's retry-after), within its retry budget and the deadline.
Only upstream faults count against the breaker (5xx, timeouts, connect errors, bad bodies); an
upstream 429 pauses that upstream for its retry-after instead, and a 401/403 (our key is wrong)
marks it unhealthy. The deadline is the caller's `asyncio.timeout`; here it only keeps a retry
from starting when its backoff would end after it. Every attempt and skip is listed in
`x-gateway-attempts` (`openai:503,anthropic:ok`); each attempt sent, and its usage and cost
when it served, are counted in `rt.metrics` and `rt.usage` when it ends (`Attempts.ended`), and
listed for the request's log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from gateway.config import Target
from gateway.cost import cached_tokens, cost_usd
from gateway.errors import (
    AllUpstreamsFailed,
    CircuitOpen,
    GatewayError,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
    UpstreamFailure,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.metrics import outcome_of
from gateway.openai_types import ChatCompletion, ChatCompletionChunk, ChatRequest, Usage
from gateway.providers import StreamDecoder
from gateway.resilience.breaker import Trial
from gateway.resilience.limiter import Permit
from gateway.resilience.retry import Deadline, backoff, retry_after
from gateway.runtime import Guards, Runtime
from gateway.upstreams.clients import UpstreamResponse
from gateway.upstreams.registry import Upstream

log = logging.getLogger("gateway.pipeline")

T = TypeVar("T")
_AUTH_FAILED = "upstream_auth_failed"
_CONTEXT_WORDS = ("context_length", "context length", "context window", "prompt is too long")


@dataclass(frozen=True, slots=True)
class Served:
    """Which upstream answered, its own id for the request, and every attempt made."""

    upstream: str
    upstream_request_id: str | None
    attempts: str


class Attempts:
    """One request's attempts: the `x-gateway-attempts` list (`upstream:outcome` per try or
    skip, in order), and what each attempt sent cost: (upstream, outcome, seconds) in
    `sent`, their summed time, and the serving attempt's tokens and USD cost."""

    __slots__ = ("_items", "cost_usd", "key", "model", "rt", "sent", "tokens", "upstream_seconds")

    def __init__(self, rt: Runtime, model: str, key: str | None = None) -> None:
        self._items: list[str] = []
        self.rt = rt
        self.model = model  # the public model (usage and metrics count under it)
        self.key = key  # the client key's name (None: anonymous)
        self.sent: list[tuple[str, str, float]] = []
        self.upstream_seconds = 0.0
        self.tokens: tuple[int, int, int] | None = None  # prompt, completion, cached
        self.cost_usd = 0.0

    def add(self, upstream: str, outcome: str) -> None:
        self._items.append(f"{upstream}:{outcome}")

    def header(self) -> str:
        return ",".join(self._items)

    def ended(
        self, upstream: Upstream, target: Target, error: BaseException | None, seconds: float,
        usage: Usage | None,
    ) -> None:  # fmt: skip
        """An attempt that was sent ended after `seconds`: count it, and its usage if any."""
        outcome = outcome_of(error)
        self.rt.metrics.attempt(upstream.name, outcome, seconds)
        self.sent.append((upstream.name, outcome, seconds))
        self.upstream_seconds += seconds
        if usage is None:
            return
        prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
        cached = cached_tokens(usage)
        cost = cost_usd(upstream.config.pricing.get(target.model), prompt, completion, cached)
        self.tokens, self.cost_usd = (prompt, completion, cached), cost
        self.rt.metrics.usage(upstream.name, self.model, prompt, completion, cached, cost)
        self.rt.usage.record(self.key, self.model, upstream.name, prompt, completion, cached, cost)


class _Hold:
    """What one attempt holds until it ends: an in-flight count (taken in the same step as the
    usability check, so a draining disconnect sees it), a breaker trial and a limiter permit.
    `end()` settles them once, from how the attempt went, and reports a sent attempt (`sent`:
    when it left the limiter) to its `Attempts`."""

    __slots__ = ("_ended", "attempts", "permit", "sent", "target", "trial", "upstream")

    def __init__(
        self, upstream: Upstream, target: Target, trial: Trial, attempts: Attempts
    ) -> None:
        self.upstream = upstream
        self.target = target
        self.trial = trial
        self.attempts = attempts
        self.permit: Permit | None = None
        self.sent = 0.0  # perf_counter seconds; 0: never sent
        self._ended = False
        upstream.in_flight += 1
        upstream.last_used = time.time()

    def end(self, error: BaseException | None, usage: Usage | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        self.upstream.in_flight -= 1
        if error is None:
            self.trial.success()
        elif isinstance(error, GatewayError) and _upstream_fault(error):
            self.trial.failure()
        else:
            self.trial.release()  # client errors, cancellations, our own rejections
        if self.permit is not None:
            self.permit.release(usage["total_tokens"] if usage else None)
        if self.sent:
            seconds = time.perf_counter() - self.sent
            self.attempts.ended(self.upstream, self.target, error, seconds, usage)


async def complete(
    request: ChatRequest, rt: Runtime, deadline: Deadline, attempts: Attempts | None = None
) -> tuple[ChatCompletion, Served]:
    """Serve a non-streaming request. Raises GatewayError (AllUpstreamsFailed when exhausted),
    with `x-gateway-attempts` among its headers. `attempts` (the caller's, for its log line)
    collects the attempts made."""

    async def once(upstream: Upstream, target: Target, hold: _Hold) -> tuple[ChatCompletion, str]:
        translator = upstream.translator
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
        hold.end(None, completion.get("usage"))
        return completion, reply.headers.get(translator.request_id_header) or ""

    attempts = attempts or Attempts(rt, request.model)
    (completion, upstream_id), name = await _serve(request, rt, deadline, attempts, once)
    return completion, Served(name, upstream_id or None, attempts.header())


class Stream:
    """An upstream stream whose first chunks are in. Iterate for the rest; always `aclose()`.

    Iterating yields batches of OpenAI chunks as the upstream sends them, and raises
    GatewayError if the upstream breaks off or sends something it should not. The attempt's
    breaker trial, limiter permit and in-flight count are settled by `aclose()`: a stream
    that ended cleanly is a success, one the upstream broke a failure, one the client left
    neither.
    """

    __slots__ = ("_decoder", "_ended", "_error", "_hold", "_reply", "first", "served")

    def __init__(
        self,
        reply: UpstreamResponse,
        decoder: StreamDecoder,
        first: list[ChatCompletionChunk],
        served: Served,
        hold: _Hold,
    ) -> None:
        self._reply = reply
        self._decoder = decoder
        self._ended = False
        self._error: BaseException | None = None
        self._hold = hold
        self.first = first
        self.served = served

    @property
    def decoder(self) -> StreamDecoder:
        return self._decoder

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> list[ChatCompletionChunk]:
        try:
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
        except GatewayError as exc:
            self._error = exc
            raise
        raise StopAsyncIteration

    async def aclose(self) -> None:
        try:
            await self._reply.aclose()
        finally:
            if self._ended and self._error is None:
                self._hold.end(None, self._decoder.usage)
            else:  # broken by the upstream (counted), or left by the client (neutral)
                self._hold.end(self._error or asyncio.CancelledError())


async def open_stream(
    request: ChatRequest, rt: Runtime, deadline: Deadline, attempts: Attempts | None = None
) -> Stream:
    """Open a stream on the first target that produces a first event. Raises GatewayError
    (with `x-gateway-attempts`). `attempts` as for `complete()`."""
    attempts = attempts or Attempts(rt, request.model)

    async def once(upstream: Upstream, target: Target, hold: _Hold) -> Stream:
        translator = upstream.translator
        first_byte = upstream.config.timeouts.first_byte
        try:
            async with asyncio.timeout(first_byte):
                outgoing = translator.build_request(request, target, upstream.config)
                reply = await rt.clients.send(upstream.name, outgoing)
                try:
                    first, decoder = await _first_event(request, upstream, reply)
                except BaseException:
                    await reply.aclose()
                    raise
        except TimeoutError:
            raise UpstreamTimeout(
                f"upstream '{upstream.name}' sent no first event within {first_byte:g} s"
            ) from None
        rt.metrics.first_event(upstream.name, time.perf_counter() - hold.sent)
        upstream_id = reply.headers.get(translator.request_id_header)
        return Stream(reply, decoder, first, Served(upstream.name, upstream_id, ""), hold)

    stream, name = await _serve(request, rt, deadline, attempts, once)
    stream.served = Served(name, stream.served.upstream_request_id, attempts.header())
    return stream


async def _first_event(
    request: ChatRequest, upstream: Upstream, reply: UpstreamResponse
) -> tuple[list[ChatCompletionChunk], StreamDecoder]:
    translator = upstream.translator
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
    return first, decoder


# ------------------------------------------------------------------- the chain


Once = Callable[[Upstream, Target, _Hold], Awaitable[T]]


async def _serve(
    request: ChatRequest, rt: Runtime, deadline: Deadline, attempts: Attempts, once: Once[T]
) -> tuple[T, str]:
    """Run `once` on the plan's targets in turn (see the module docstring); returns its result
    and the upstream that gave it."""
    failures: list[UpstreamFailure] = []
    larger_only = False  # after a context-length error: only larger_context targets remain
    counted = 0  # failures already counted as fallbacks
    try:
        for upstream, target in rt.routes.plan(request.model, rt.draw):
            if larger_only and not target.larger_context:
                continue
            if len(failures) > counted:  # moving on from the last target's failure
                rt.metrics.fallback(request.model, failures[-1].upstream, failures[-1].error)
                counted = len(failures)
            if reason := upstream.unusable:
                attempts.add(upstream.name, _state_word(upstream))
                failures.append(UpstreamFailure(upstream.name, UpstreamUnavailable(reason)))
                continue
            try:
                return await _tries(request, rt, deadline, attempts, upstream, target, once), (
                    upstream.name
                )
            except UpstreamRejected as exc:
                if not _context_length(exc):
                    raise
                larger_only = True
                failures.append(_failed(upstream.name, exc))
            except GatewayError as exc:
                if not exc.fallback:
                    raise
                failures.append(_failed(upstream.name, exc))
        if larger_only and len(failures) == 1:
            raise failures[0].error  # no larger target: the client's own error, as it was
        raise AllUpstreamsFailed(request.model, failures)
    except GatewayError as exc:
        exc.headers = {**exc.headers, "x-gateway-attempts": attempts.header()}
        raise


async def _tries(
    request: ChatRequest,
    rt: Runtime,
    deadline: Deadline,
    attempts: Attempts,
    upstream: Upstream,
    target: Target,
    once: Once[T],
) -> T:
    """Up to `retry.attempts` tries of one upstream. Raises the last attempt's GatewayError."""
    guards = rt.guards[upstream.name]
    settings = upstream.config.retry
    error: GatewayError | None = None
    for number in range(1, settings.attempts + 1):
        if error is None:
            if settings.attempts > 1:
                guards.budget.record_request()
        else:
            wait = backoff(number - 1, settings, retry_after(error.headers), rt.draw)
            if wait >= deadline.remaining() or not guards.budget.try_retry():
                raise error
            await asyncio.sleep(wait)
            if upstream.unusable:  # disabled, disconnected or unhealthy meanwhile
                raise error
            rt.metrics.retry(upstream.name, error)
        hold = await _admit(request, upstream, target, guards, attempts)
        try:
            result = await once(upstream, target, hold)
        except GatewayError as exc:
            hold.end(exc)
            attempts.add(upstream.name, _outcome(exc))
            _learn(rt, upstream, guards, exc)
            if not _retryable(exc) or number == settings.attempts:
                raise
            error = exc
            continue
        except BaseException as exc:  # cancelled: the client left, or the deadline passed
            hold.end(exc)
            attempts.add(upstream.name, "cancelled")
            raise
        attempts.add(upstream.name, "ok")
        return result
    raise AssertionError("unreachable: the last try returns or raises")


async def _admit(
    request: ChatRequest, upstream: Upstream, target: Target, guards: Guards, attempts: Attempts
) -> _Hold:
    """A breaker trial and a limiter permit for one attempt, or the GatewayError that skips it."""
    metrics = attempts.rt.metrics
    try:
        trial = guards.breaker.admit()
    except CircuitOpen as exc:
        metrics.breaker_rejected(upstream.name)
        attempts.add(upstream.name, "open")
        raise CircuitOpen(
            f"upstream '{upstream.name}' is failing: its circuit breaker is open",
            headers=exc.headers,
        ) from None
    hold = _Hold(upstream, target, trial, attempts)
    limits = upstream.config.rate_limit
    estimate = request.prompt_tokens() if limits and limits.tokens_per_minute else 0
    waiting = time.perf_counter()
    try:
        hold.permit = await guards.limiter.acquire(estimate)
    except BaseException as exc:
        hold.end(exc)
        if isinstance(exc, RateLimited):
            metrics.ratelimit_rejected("upstream", upstream.name)
            attempts.add(upstream.name, "limited")
            exc.message = f"upstream '{upstream.name}' is at its rate limit: {exc.message}"
        raise
    hold.sent = time.perf_counter()
    if limits is not None:
        metrics.ratelimit_waited(upstream.name, hold.sent - waiting)
    return hold


def _learn(rt: Runtime, upstream: Upstream, guards: Guards, exc: GatewayError) -> None:
    """What an upstream's error tells about the upstream, for the requests after this one."""
    if isinstance(exc, RateLimited):
        pause = retry_after(exc.headers)
        if pause:
            guards.limiter.pause(pause)
    elif exc.code == _AUTH_FAILED:
        rt.prober.mark_unhealthy(upstream.name, exc.message)


def _upstream_fault(exc: GatewayError) -> bool:
    """Counts against the breaker: 5xx, timeouts, connect errors, bad bodies; not a 429, not a
    401/403 (our key: the upstream is marked unhealthy instead), not the client's 4xx, not our
    own refusal (a client closed by a disconnect)."""
    return (
        isinstance(exc, UpstreamError)
        and exc.code != _AUTH_FAILED
        and not isinstance(exc, UpstreamUnavailable)
    )


def _retryable(exc: GatewayError) -> bool:
    """Worth another try of the same upstream (a 429 pauses it instead)."""
    return _upstream_fault(exc)


def _context_length(exc: UpstreamRejected) -> bool:
    text = f"{exc.code} {exc.message}".lower()
    return any(word in text for word in _CONTEXT_WORDS)


def _outcome(exc: GatewayError) -> str:
    """One word for `x-gateway-attempts`: the upstream's status when it answered, else why."""
    if exc.upstream_status is not None:
        return str(exc.upstream_status)
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, StreamInterrupted):
        return "interrupted"
    return exc.code or "error"


def _state_word(upstream: Upstream) -> str:
    if not upstream.config.configured:
        return "unconfigured"
    if not upstream.enabled:
        return "disabled"
    return str(upstream.state)


def _failed(upstream: str, exc: GatewayError) -> UpstreamFailure:
    log.warning("upstream failed", extra={"upstream": upstream, "reason": exc.message})
    return UpstreamFailure(upstream, exc)
