"""Per-upstream rate limits: admit a request within a bounded wait, or raise `RateLimited`.

One `Limiter` per upstream holds three limits, each optional: requests per minute and tokens per
minute, as aiolimiter leaky buckets (a bucket of `limit` that drains at `limit / 60` per second,
so a full minute's worth may come in one burst), and a maximum of requests in flight. A request
charges its estimated prompt tokens when admitted; `Permit.release()` frees its concurrency slot
and reconciles the estimate with the usage the upstream reported.

aiolimiter supplies the buckets' arithmetic (its level, its leak and `has_capacity`), not its
`acquire()`: that waits forever and keeps every waiter in an unbounded heap, where a gateway must
refuse in milliseconds what it cannot admit within `max_wait`. So waiting is done here: waiters
queue first in, first out, at most `max_waiters` of them; one timer wakes the head of the queue
when the buckets will have drained enough for it, and a released slot wakes it at once. Capacity
is taken on the waiter's behalf before it is woken, so a burst of wake-ups cannot overshoot, and
a waiter cancelled after that gives it back. A request that cannot be admitted before its
`max_wait` even if nothing else were queued is refused without waiting at all.

Refusals carry `retry-after`, `retry-after-ms` and OpenAI's `x-ratelimit-*` headers
(https://platform.openai.com/docs/guides/rate-limits: limit, remaining and reset, for requests
and tokens; a reset is a duration such as `1s`, `6m0s` or `12ms`, the time until the bucket is
empty again). An upstream's own 429 with a retry-after pauses its limiter for everyone
(`pause()`, at most 60 s); while paused every request is refused at once.

A limiter uses the event loop it is created on (futures and timers), so it is created on the
running loop, in the app's lifespan. Without settings it only honours pauses, and `acquire()`
costs one `Permit`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from typing import Final

from aiolimiter import AsyncLimiter

from gateway.config import RateLimit
from gateway.errors import RateLimited

PERIOD: Final = 60.0  # seconds: the limits are per minute
MAX_PAUSE: Final = 60.0  # seconds: an upstream's longer retry-after is not honoured
# The hint sent when only the concurrency limit refused: when a slot frees is unknowable.
CONCURRENCY_RETRY_AFTER: Final = 1.0
# asyncio runs a timer up to its clock's resolution early; a bucket that still lacks less than
# this much drain time when the timer fires counts as having room.
_TIMER_SLACK: Final = 1e-6

# Token estimate: ~4 characters a token for English text and JSON (OpenAI's rule of thumb); a few
# tokens of framing per message and for priming the reply, as in OpenAI's cookbook count; a fixed
# amount per image or other media part (a 1024x1024 high-detail image costs 765 on OpenAI).
CHARS_PER_TOKEN: Final = 4
TOKENS_PER_MESSAGE: Final = 4
TOKENS_PER_REPLY: Final = 3
TOKENS_PER_MEDIA_PART: Final = 765


def estimate_tokens(body: Mapping[str, object]) -> int:
    """Prompt tokens of an OpenAI chat request, roughly and cheaply: its messages' text, tool
    calls and tool definitions at ~4 characters a token, rounded up, plus a few per message;
    images and other media parts a fixed amount each. Shapes it does not know count nothing."""
    chars = 0
    tokens = TOKENS_PER_REPLY
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            tokens += TOKENS_PER_MESSAGE
            if not isinstance(message, dict):
                continue
            for key, value in message.items():
                if key == "content":
                    if isinstance(value, str):
                        chars += len(value)
                    elif isinstance(value, list):
                        for part in value:
                            if not isinstance(part, dict):
                                continue
                            if part.get("type") == "text":
                                chars += _text_chars(part.get("text"))
                            else:
                                tokens += TOKENS_PER_MEDIA_PART  # its base64 data is no measure
                elif key != "role":
                    chars += _text_chars(value)  # name, tool_calls, tool_call_id, ...
    for key in ("tools", "functions", "response_format"):
        if key in body:
            chars += _text_chars(body[key])
    return tokens + -(-chars // CHARS_PER_TOKEN)


def _text_chars(value: object) -> int:
    """Characters of every string (keys included) and number in parsed JSON."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(str(k)) + _text_chars(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(_text_chars(item) for item in value)
    if value is None:
        return 0
    if isinstance(value, bool):
        return 4
    if isinstance(value, int | float):
        return len(repr(value))
    return 0


def format_reset(seconds: float) -> str:
    """A duration the way OpenAI's `x-ratelimit-reset-*` headers write it: `12ms`, `1s`, `1.5s`,
    `6m0s`, `1h0m0s` (Go's notation), rounded up to the millisecond."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))  # float noise must not add a millisecond
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    whole, fraction = divmod(ms, 1000)
    text = f"{whole}.{fraction:03d}".rstrip("0") if fraction else str(whole)
    if hours:
        return f"{hours}h{minutes}m{text}s"
    if minutes:
        return f"{minutes}m{text}s"
    return f"{text}s"


class _Bucket(AsyncLimiter):
    """An aiolimiter bucket on an injected clock, with the two moves reconciling needs: charging
    past the limit (a debt later requests wait out) and giving back, never below empty."""

    __slots__ = ("_clock",)

    def __init__(self, limit: int, clock: Callable[[], float]) -> None:
        super().__init__(limit, PERIOD)
        self._clock = clock
        self._last_check = clock()

    def _leak(self) -> None:
        # aiolimiter leaks on its loop's clock; the same arithmetic on ours.
        now = self._clock()
        if self._level:
            self._level = max(self._level - (now - self._last_check) * self._rate_per_sec, 0.0)
        self._last_check = now

    def charge(self, amount: float) -> None:
        self._leak()
        self._level += amount

    def refund(self, amount: float) -> None:
        self._leak()
        self._level = max(self._level - amount, 0.0)

    def wait(self, amount: float) -> float:
        """Seconds until `amount` more fits (0 if it does now)."""
        self._leak()
        return max(self._level + amount - self.max_rate, 0.0) / self._rate_per_sec

    def remaining(self) -> int:
        self._leak()
        return max(0, math.floor(self.max_rate - self._level + 1e-9))

    def reset(self) -> float:
        """Seconds until the bucket is empty again."""
        self._leak()
        return self._level / self._rate_per_sec


class Permit:
    """One admitted request. `release()` exactly once it is done (more calls do nothing)."""

    __slots__ = ("_limiter", "_released", "_tokens")

    def __init__(self, limiter: Limiter, tokens: int) -> None:
        self._limiter = limiter
        self._tokens = tokens
        self._released = False

    def release(self, used_tokens: int | None = None) -> None:
        """Free the concurrency slot; with `used_tokens` (the total the upstream reported,
        prompt and completion), charge what the estimate missed or give back what it
        overcounted."""
        if self._released:
            return
        self._released = True
        self._limiter._release(self._tokens, used_tokens)


class Limiter:
    """The rate limits of one upstream (or client key). See the module docstring."""

    def __init__(
        self,
        name: str,
        settings: RateLimit | None,
        *,
        clock: Callable[[], float] | None = None,
        label: str = "upstream",
    ) -> None:
        self.name = name
        self.label = label  # whose limits, in refusals: "upstream 'x'", "client key 'x'"
        self.settings = settings
        limited = settings is not None and (
            settings.requests_per_minute is not None
            or settings.tokens_per_minute is not None
            or settings.max_concurrent is not None
        )
        self._limited = limited
        if clock is None or limited:
            loop = asyncio.get_running_loop()  # RuntimeError off the loop: create it in lifespan
            self._loop: asyncio.AbstractEventLoop | None = loop
            if clock is None:
                clock = loop.time
        else:
            self._loop = None
        self._clock = clock
        self._paused_until = 0.0
        self._in_flight = 0
        rpm = settings.requests_per_minute if settings else None
        tpm = settings.tokens_per_minute if settings else None
        self._requests = _Bucket(rpm, clock) if rpm else None
        self._tokens = _Bucket(tpm, clock) if tpm else None
        self._max_concurrent = settings.max_concurrent if settings else None
        self._max_wait = settings.max_wait if settings else 0.0
        self._max_waiters = settings.max_waiters if settings else 0
        # Waiting requests, first in first out: future -> tokens. A future's result is True
        # when capacity was taken for it, False when its wait is over without it.
        self._waiters: dict[asyncio.Future[bool], int] = {}
        self._queued_tokens = 0
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<Limiter {self.name!r} {self.snapshot()}>"

    async def acquire(self, tokens: int) -> Permit:
        """Admit a request of about `tokens` prompt tokens, waiting at most `max_wait` seconds.

        Raises `RateLimited` at once while paused, when the request can never fit (more tokens
        than a minute allows), when `max_waiters` are already waiting, or when the buckets
        cannot drain enough for it and the queue ahead of it within `max_wait`; otherwise,
        if it is still not admitted, after `max_wait`.
        """
        if self._paused_until and self.paused_for():
            raise self._refusal("paused")
        if not self._limited:
            self._in_flight += 1
            return Permit(self, 0)
        if self._tokens is not None and tokens > self._tokens.max_rate:
            raise self._refusal("too_large", tokens=tokens)
        if not self._waiters and self._fits(tokens):
            self._take(tokens)
            return Permit(self, tokens)
        if len(self._waiters) >= self._max_waiters:
            raise self._refusal("overloaded", tokens=tokens)
        # What the queue ahead and this request need of the buckets: if they cannot drain that
        # far within max_wait, waiting is pointless.
        drain = self._drain_time(len(self._waiters) + 1, self._queued_tokens + tokens)
        if drain > self._max_wait or self._max_wait <= 0:
            raise self._refusal("limited", tokens=tokens, wait=drain)
        return await self._wait(tokens)

    async def _wait(self, tokens: int) -> Permit:
        assert self._loop is not None
        future: asyncio.Future[bool] = self._loop.create_future()
        self._waiters[future] = tokens
        self._queued_tokens += tokens
        expiry = self._loop.call_later(self._max_wait, self._expire, future)
        if len(self._waiters) == 1:
            self._wake()  # head of the queue: set the drain timer
        try:
            admitted = await future
        except asyncio.CancelledError:
            expiry.cancel()
            if future.done() and not future.cancelled() and future.result():
                self._give_back(tokens)  # admitted, then cancelled before it resumed
            else:
                self._forget(future)
            raise
        expiry.cancel()
        if admitted:
            return Permit(self, tokens)
        if self._paused_until and self.paused_for():
            raise self._refusal("paused")
        raise self._refusal("limited", tokens=tokens)

    def _expire(self, future: asyncio.Future[bool]) -> None:
        if not future.done():
            self._forget(future)
            future.set_result(False)

    def _forget(self, future: asyncio.Future[bool]) -> None:
        """Take a waiter out of the queue; if it was the head, the next one is."""
        if future not in self._waiters:
            return
        was_head = next(iter(self._waiters)) is future
        self._queued_tokens -= self._waiters.pop(future)
        if was_head:
            self._wake()

    def _wake(self) -> None:
        """Admit waiters from the head while they fit; then time the head's next chance."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._paused_until and self.paused_for():
            return  # pause() refuses every waiter
        while self._waiters:
            if self._max_concurrent is not None and self._in_flight >= self._max_concurrent:
                return  # a release wakes us
            future, tokens = next(iter(self._waiters.items()))
            drain = self._drain_time(1, tokens)
            if drain > _TIMER_SLACK:
                assert self._loop is not None
                self._timer = self._loop.call_later(drain, self._wake)
                return
            del self._waiters[future]
            self._queued_tokens -= tokens
            self._take(tokens)
            future.set_result(True)

    def _fits(self, tokens: int) -> bool:
        if self._max_concurrent is not None and self._in_flight >= self._max_concurrent:
            return False
        if self._requests is not None and not self._requests.has_capacity(1):
            return False
        return self._tokens is None or self._tokens.has_capacity(tokens)

    def _drain_time(self, requests: int, tokens: int) -> float:
        """Seconds until both buckets have room for `requests` and `tokens` more."""
        wait = 0.0
        if self._requests is not None:
            wait = self._requests.wait(requests)
        if self._tokens is not None:
            wait = max(wait, self._tokens.wait(tokens))
        return wait

    def _take(self, tokens: int) -> None:
        self._in_flight += 1
        if self._requests is not None:
            self._requests.charge(1)
        if self._tokens is not None:
            self._tokens.charge(tokens)

    def _give_back(self, tokens: int) -> None:
        """Undo `_take()` for a request that was never sent."""
        self._in_flight -= 1
        if self._requests is not None:
            self._requests.refund(1)
        if self._tokens is not None:
            self._tokens.refund(tokens)
        if self._waiters:
            self._wake()

    def _release(self, estimated: int, used: int | None) -> None:
        self._in_flight -= 1
        if self._tokens is not None and used is not None and used != estimated:
            if used > estimated:
                self._tokens.charge(used - estimated)
            else:
                self._tokens.refund(estimated - used)
        if self._waiters:
            self._wake()

    def pause(self, seconds: float) -> None:
        """Refuse every request for `seconds` (at most 60; an earlier, longer pause stands):
        the upstream answered 429 with this retry-after. Requests waiting now are refused."""
        if not seconds > 0:  # also refuses NaN
            return
        self._paused_until = max(self._paused_until, self._clock() + min(seconds, MAX_PAUSE))
        for future in list(self._waiters):
            self._expire(future)

    def resume(self) -> None:
        """End a pause now (an operator re-enabling the upstream; tests)."""
        self._paused_until = 0.0

    def paused_for(self) -> float:
        """Seconds left of a pause; 0 if not paused."""
        if not self._paused_until:
            return 0.0
        left = self._paused_until - self._clock()
        if left > 0:
            return left
        self._paused_until = 0.0
        return 0.0

    def snapshot(self) -> dict[str, float | int | None]:
        """The limits and what is left of them, for the admin API."""
        requests, tokens = self._requests, self._tokens
        return {
            "requests_per_minute": requests.max_rate if requests else None,
            "tokens_per_minute": tokens.max_rate if tokens else None,
            "max_concurrent": self._max_concurrent,
            "remaining_requests": requests.remaining() if requests else None,
            "remaining_tokens": tokens.remaining() if tokens else None,
            "in_flight": self._in_flight,
            "waiters": len(self._waiters),
            "paused_for": self.paused_for(),
        }

    def headers(self) -> dict[str, str]:
        """The `x-ratelimit-*` headers of the limits as they stand now (a client key's
        limits on its successful responses); none for limits that are not per minute."""
        return self._headers(None)

    def _refusal(self, why: str, *, tokens: int = 0, wait: float | None = None) -> RateLimited:
        name = f"{self.label} '{self.name}'"
        retry: float | None
        if why == "paused":
            retry = self.paused_for()
            message = f"{name} is rate limited for {retry:.1f}s more (it answered 429)"
        elif why == "too_large":
            assert self._tokens is not None
            retry = None  # waiting cannot help
            message = (
                f"{name}: the request needs about {tokens} tokens, more than its limit of "
                f"{self._tokens.max_rate:.0f} tokens per minute"
            )
        elif why == "overloaded":
            retry = self._drain_time(1, tokens) or CONCURRENCY_RETRY_AFTER
            message = f"{name}: {self._max_waiters} requests are already waiting for its limits"
        else:
            retry = self._drain_time(1, tokens) if wait is None else wait
            message = f"{name} is at its limit of {self._binding(tokens)}"
            if retry <= 0:
                retry = CONCURRENCY_RETRY_AFTER
        return RateLimited(message, headers=self._headers(retry))

    def _binding(self, tokens: int) -> str:
        """Which limits stand in the way, for the message."""
        reasons = []
        if self._requests is not None and not self._requests.has_capacity(1):
            reasons.append(f"{self._requests.max_rate:.0f} requests per minute")
        if self._tokens is not None and not self._tokens.has_capacity(tokens):
            reasons.append(f"{self._tokens.max_rate:.0f} tokens per minute")
        if self._max_concurrent is not None and self._in_flight >= self._max_concurrent:
            reasons.append(f"{self._max_concurrent} concurrent requests")
        return " and ".join(reasons) or "requests waiting ahead"

    def _headers(self, retry: float | None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if retry is not None:
            ms = max(1, math.ceil(retry * 1000 - 1e-6))
            headers["retry-after"] = str(max(1, math.ceil(ms / 1000)))
            headers["retry-after-ms"] = str(ms)
        for kind, bucket in (("requests", self._requests), ("tokens", self._tokens)):
            if bucket is not None:
                headers[f"x-ratelimit-limit-{kind}"] = f"{bucket.max_rate:.0f}"
                headers[f"x-ratelimit-remaining-{kind}"] = str(bucket.remaining())
                headers[f"x-ratelimit-reset-{kind}"] = format_reset(bucket.reset())
        return headers
