"""One circuit breaker per upstream: pybreaker's state machine, driven for asyncio.

pybreaker decides the closed→open and half-open→closed/open transitions (its state objects count
consecutive failures against `fail_max` and act on a trial's outcome); this module adapts it where
it does not fit an asyncio gateway:

- pybreaker wraps the call itself (`call()`; `call_async()` needs Tornado) and counts any exception
  from it, `CancelledError` included. Here the caller classifies: `admit()` hands out a `Trial`,
  and the pipeline ends it with `success()`, `failure()` or a neutral `release()` (client errors,
  client disconnects, the gateway's own rejections). Outcomes are fed to pybreaker through
  `call()` with a function that returns or raises, so its own state objects do the counting.
- pybreaker's half-open state lets every caller through. Here half-open admits at most
  `half_open_max_calls` trials at once, counted in slots; the rest get `CircuitOpen`.
- pybreaker times the open state with `datetime.now()`, a wall clock that jumps. Its storage
  (`_Storage`) records the injected monotonic clock when the circuit opens, and this module
  moves open→half-open itself, lazily, when `reset_timeout` has passed on that clock; pybreaker's
  open state (the only code reading its datetime) is never called.
- Outcomes of trials admitted in an earlier state (stragglers) are ignored: every transition
  starts a new generation, and a trial counts only in the generation that admitted it. A slow
  request admitted before the circuit opened cannot re-open it later, extend its timeout, or
  close it with a late success.

Transitions reach a pybreaker listener, are logged on `gateway.breaker` (one line each: upstream,
from, to) and passed to `on_change`. Nothing here does I/O or sleeps; asyncio runs it on one
thread, so there are no locks of ours (pybreaker takes its own `RLock` when an outcome is
recorded, never in `admit()` while closed).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Literal

import pybreaker

from gateway.config import BreakerSettings
from gateway.errors import CircuitOpen

log = logging.getLogger("gateway.breaker")

BreakerState = Literal["closed", "open", "half_open"]
_NAMES: dict[str, BreakerState] = {
    pybreaker.STATE_CLOSED: "closed",
    pybreaker.STATE_OPEN: "open",
    pybreaker.STATE_HALF_OPEN: "half_open",
}
# The wait hinted while half-open with every trial slot taken: the trials' outcomes decide it.
_TRIALS_BUSY_WAIT = 1.0


class _UpstreamFailed(Exception):
    """Raised inside pybreaker's `call()` to report a failure the pipeline classified."""


def _succeed() -> None:
    pass


def _fail() -> None:
    raise _UpstreamFailed


class _Storage(pybreaker.CircuitMemoryStorage):
    """pybreaker's in-memory storage, also recording when it opened on a monotonic clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(pybreaker.STATE_CLOSED)
        self._clock = clock
        self.opened_at_monotonic = 0.0

    @property
    def opened_at(self) -> datetime | None:
        return self._opened_at

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        # pybreaker's `open()` passes `datetime.now()`; kept for it, but timing uses the clock.
        self._opened_at = value
        self.opened_at_monotonic = self._clock()


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        # Called while pybreaker is mid-transition (its storage still holds the old state), so
        # only note it here; `Breaker._announce()` reports it once pybreaker has returned.
        old = old_state.name if old_state is not None else new_state.name
        self._breaker._transitioned(_NAMES[old], _NAMES[new_state.name])


class Breaker:
    """The circuit breaker of upstream `name`.

    `clock` is seconds on a monotonic clock; `on_change(name, old, new)` hears every transition
    (states as `state` names them) after it has happened.
    """

    def __init__(
        self,
        name: str,
        settings: BreakerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.name = name
        self._reset_timeout = settings.reset_timeout
        self._max_trials = settings.half_open_max_calls
        self._clock = clock
        self._on_change = on_change
        self._storage = _Storage(clock)
        self._circuit = pybreaker.CircuitBreaker(
            fail_max=settings.fail_max,
            reset_timeout=settings.reset_timeout,
            state_storage=self._storage,
            listeners=[_Listener(self)],
            name=name,
        )
        self._generation = 0  # bumped by every transition: older trials are stragglers
        self._trials = 0  # half-open trials in flight in this generation
        self._pending: list[tuple[BreakerState, BreakerState]] = []
        self._rejections = 0

    @property
    def state(self) -> BreakerState:
        """pybreaker's state; an open circuit whose `reset_timeout` has passed turns half-open."""
        state = self._storage.state
        if state == pybreaker.STATE_OPEN and self._clock() >= self._reopens_at():
            self._circuit.half_open()
            self._announce()
            state = self._storage.state
        return _NAMES[state]

    @property
    def rejections(self) -> int:
        """How many `admit()` calls were refused."""
        return self._rejections

    def admit(self) -> Trial:
        """A trial for one upstream request, to be ended by the caller (or a `with` block).

        Raises `CircuitOpen` (503, with `retry-after` in whole seconds, at least 1) while open,
        or while half-open with all `half_open_max_calls` trial slots taken.
        """
        if self._storage.state == pybreaker.STATE_CLOSED:  # the hot path: no clock, no lock
            return Trial(self, self._generation, False)
        if self.state == "half_open" and self._trials < self._max_trials:
            self._trials += 1
            return Trial(self, self._generation, True)
        self._rejections += 1
        wait = self.retry_after()
        what = "open" if self._storage.state == pybreaker.STATE_OPEN else "half-open, trial running"
        raise CircuitOpen(
            f"upstream '{self.name}' is not tried: its circuit breaker is {what}",
            headers={"retry-after": str(max(1, math.ceil(wait)))},
        )

    def retry_after(self) -> float:
        """Seconds until `admit()` may let a request through (0: it would now).

        While half-open with every trial slot taken the trials' outcomes decide; the hint is 1 s.
        """
        state = self.state
        if state == "closed":
            return 0.0
        if state == "half_open":
            return 0.0 if self._trials < self._max_trials else _TRIALS_BUSY_WAIT
        return max(0.0, self._reopens_at() - self._clock())

    def _reopens_at(self) -> float:
        return self._storage.opened_at_monotonic + self._reset_timeout

    def _settle(self, trial: Trial, outcome: bool | None) -> None:
        """Record `trial`'s outcome: True success, False failure, None neutral."""
        if trial._generation != self._generation:
            return  # a straggler: admitted in an earlier state, says nothing about this one
        if trial._slot:
            self._trials -= 1
        if outcome is None:
            return
        if outcome:
            # Closed with no failures counted: pybreaker would only reset a zero counter.
            if self._storage.state == pybreaker.STATE_CLOSED and self._storage.counter == 0:
                return
            self._circuit.call(_succeed)
        else:
            # pybreaker re-raises the failure, or CircuitBreakerError when it tripped the circuit.
            with contextlib.suppress(_UpstreamFailed, pybreaker.CircuitBreakerError):
                self._circuit.call(_fail)
        self._announce()

    def _transitioned(self, old: BreakerState, new: BreakerState) -> None:
        self._generation += 1
        self._trials = 0
        self._pending.append((old, new))

    def _announce(self) -> None:
        while self._pending:
            old, new = self._pending.pop(0)
            log.log(
                logging.WARNING if new == "open" else logging.INFO,
                "circuit breaker %s",
                new,
                extra={"upstream": self.name, "from": old, "to": new},
            )
            if self._on_change is not None:
                try:
                    self._on_change(self.name, old, new)
                except Exception:
                    log.exception("circuit breaker on_change failed", extra={"upstream": self.name})


class Trial:
    """One admitted request. End it once: the first of `success()`, `failure()` or `release()`
    counts, later calls do nothing; leaving a `with` block releases it if nothing else did.

    A trial that is never ended holds a half-open slot until the circuit changes state.
    """

    __slots__ = ("_breaker", "_done", "_generation", "_slot")

    def __init__(self, breaker: Breaker, generation: int, slot: bool) -> None:
        self._breaker = breaker
        self._generation = generation
        self._slot = slot
        self._done = False

    def success(self) -> None:
        """The upstream served the request: closes a half-open circuit."""
        if not self._done:
            self._done = True
            self._breaker._settle(self, True)

    def failure(self) -> None:
        """An upstream fault (5xx, timeout, connection, malformed body): counts toward opening."""
        if not self._done:
            self._done = True
            self._breaker._settle(self, False)

    def release(self) -> None:
        """A neutral end (client error, cancellation, gateway rejection): frees the slot only."""
        if not self._done:
            self._done = True
            self._breaker._settle(self, None)

    def __enter__(self) -> Trial:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
