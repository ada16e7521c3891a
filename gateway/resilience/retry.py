"""Retries and deadlines: when a request may try the same upstream again, and for how long.

- `Deadline`: one per request, from `server.request_timeout` or the client's shorter
  `x-gateway-timeout`, carried through every retry and fallback; nothing is started once it
  has passed, and a retry's backoff that would end after it is not slept.
- `backoff()`: exponential backoff with full jitter (a uniform draw in [0, base * 2**retry],
  capped at `backoff_max`), unless the upstream said how long to wait (`retry-after-ms`,
  `retry-after`), which is honoured up to 60 s.
- `RetryBudget`: per upstream, the retries started in the last `WINDOW` seconds may be at most
  `budget` (20%) of the first attempts started in that window, and never fewer than
  `min_retries` (3), so a quiet upstream can still retry; an outage then costs the upstream at
  most 20% more requests instead of `attempts` times as many. Moving on to the next target of
  a chain is not a retry and is not counted here.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping

from gateway.config import RetrySettings

MAX_RETRY_AFTER = 60.0  # seconds: an upstream's longer retry-after is not honoured
WINDOW = 10.0  # seconds of recent requests a retry budget looks at


class Deadline:
    """The monotonic time by which a request must be answered."""

    __slots__ = ("_clock", "at", "seconds")

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.seconds = seconds
        self.at = clock() + seconds

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self.at - self._clock()

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0


def requested_timeout(headers: Mapping[str, str], default: float) -> float:
    """The deadline in seconds: `x-gateway-timeout` when it is a positive number below the
    configured default, else the default (a client may shorten its deadline, never extend it)."""
    raw = headers.get("x-gateway-timeout")
    if raw is None:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        return default
    return seconds if 0 < seconds < default and math.isfinite(seconds) else default


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait an upstream asked for, in seconds (`retry-after-ms` first), capped at 60 s."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue  # an HTTP date: not worth parsing for a retry
        if math.isfinite(seconds) and seconds >= 0:
            return min(seconds, MAX_RETRY_AFTER)
    return None


def backoff(
    retry: int,
    settings: RetrySettings,
    asked: float | None = None,
    draw: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number `retry` (1 for the first retry)."""
    if asked is not None:
        return asked
    ceiling: float = min(settings.backoff_max, settings.backoff_base * 2.0 ** (retry - 1))
    return draw() * ceiling


class RetryBudget:
    """How many retries an upstream may take now (see the module docstring)."""

    __slots__ = ("_clock", "_minimum", "_ratio", "_requests", "_retries")

    def __init__(
        self, settings: RetrySettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._ratio = settings.budget
        self._minimum = settings.min_retries
        self._requests: deque[float] = deque()  # start times of first attempts, in the window
        self._retries: deque[float] = deque()  # start times of retries, in the window

    def _trim(self, now: float) -> None:
        horizon = now - WINDOW
        for times in (self._requests, self._retries):
            while times and times[0] < horizon:
                times.popleft()

    def record_request(self) -> None:
        """A first attempt started (only upstreams that may retry need to call this)."""
        self._requests.append(self._clock())

    def try_retry(self) -> bool:
        """Take one retry from the budget, or False when it is spent."""
        now = self._clock()
        self._trim(now)
        if len(self._retries) >= max(self._ratio * len(self._requests), self._minimum):
            return False
        self._retries.append(now)
        return True
