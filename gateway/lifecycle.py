"""Graceful shutdown: what SIGTERM does to a running gateway, and the drain state that `/readyz`
and the request gate in `Gateway.__call__` read.

SIGTERM starts a drain (`Lifecycle.begin`). From that moment readiness fails (`/readyz` answers
503 "draining") and every new request but `/healthz`, `/readyz` and `/metrics` gets a 503
`shutting_down` with `connection: close` and `retry-after`, on new connections and on kept-alive
ones alike; the listening socket stays open meanwhile, so a load balancer that has not yet seen
the readiness change gets that 503 (which clients retry) rather than a refused connection. Chat
requests already running (`in_flight`, which the gateway keeps) go on for up to
`server.drain_seconds`; the drain ends as soon as none is left. Those still running then are
cancelled with `DRAIN_CUT` as the cancellation's message, which the chat endpoint tells from a
client's disconnect (`cut_by_drain`): a stream that has sent its 200 ends with an SSE error
event, any other request gets the 503; the cancellation also stops their upstream calls and
frees those connections. Then the drain hands over to the SIGTERM handler uvicorn installed
(chained, so uvicorn exits as on a plain SIGTERM): its graceful shutdown (short: the drain is
over; `timeout_graceful_shutdown` in gateway/cli.py) closes the socket and the connections,
and the lifespan's shutdown closes the runtime's pools. SIGINT is not intercepted: uvicorn's
quick stop.

Signals reach only the main thread: the handler is installed under `gateway serve` (each worker
of `serve --workers N` too, where uvicorn's supervisor forwards SIGTERM to every worker and each
drains on its own), never in a test's server thread, where `begin()` is called directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from gateway.errors import ShuttingDown

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logging.getLogger("gateway.lifecycle")

# The message of the drain's cancellation: how a request tells it from a client that left.
DRAIN_CUT = "gateway shutdown: server.drain_seconds elapsed"
# Paths served as usual while draining: probes and scrapes must see the state, not a 503.
ALWAYS_SERVED = frozenset({"/healthz", "/readyz", "/metrics"})
RETRY_AFTER = "1"  # seconds; by then a load balancer has usually moved on from this instance
_CUT_GRACE = 1.0  # seconds the cut requests get to send their 503 or error event


def refusal() -> ShuttingDown:
    """The 503 of a request that arrives while the gateway drains."""
    return ShuttingDown(
        "the gateway is shutting down and takes no new requests; retry the request",
        headers={"connection": "close", "retry-after": RETRY_AFTER},
    )


def cut_short() -> ShuttingDown:
    """The 503 (or, after a stream's 200, the SSE error event) of a request the drain cut."""
    return ShuttingDown(
        "the gateway shut down before the request finished (its drain time, "
        "server.drain_seconds, ran out); retry the request",
        headers={"connection": "close", "retry-after": RETRY_AFTER},
    )


def cut_by_drain(exc: asyncio.CancelledError) -> bool:
    """True if `exc` is the drain's cut (not a client's disconnect, nor uvicorn's own cancel).
    The cancellation is then taken back, so that the request can still send its answer."""
    if exc.args and exc.args[0] == DRAIN_CUT:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return True
    return False


class Lifecycle:
    """One app's drain state. `draining` flips once and stays; `in_flight` holds the tasks of
    the chat requests running (a set add and discard per request: the chat path is hot)."""

    __slots__ = ("_drain", "_idle", "draining", "in_flight")

    def __init__(self) -> None:
        self.draining = False
        self.in_flight: set[asyncio.Task[Any]] = set()
        self._idle: asyncio.Event | None = None  # made when the drain starts
        self._drain: asyncio.Task[None] | None = None

    def idle(self) -> None:
        """A request ended while draining with none left: the drain may end now."""
        if self._idle is not None and not self.in_flight:
            self._idle.set()

    def begin(
        self,
        seconds: float,
        handover: Callable[[], None],
        fields: Mapping[str, object] | None = None,
    ) -> None:
        """Start draining on the running loop (a repeat is ignored): wait up to `seconds` for
        the requests in flight, cut the rest, then call `handover` (uvicorn's shutdown).
        `fields` go on the drain's first log line."""
        self.draining = True
        if self._drain is not None:
            return
        self._idle = asyncio.Event()
        self._drain = asyncio.get_running_loop().create_task(
            self._run(seconds, handover, dict(fields or {})), name="drain"
        )

    async def wait(self) -> None:
        """Until the drain is over and handed over (tests)."""
        if self._drain is not None:
            await asyncio.shield(self._drain)

    async def _run(
        self, seconds: float, handover: Callable[[], None], fields: dict[str, object]
    ) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        running = len(self.in_flight)
        log.info(
            "shutdown: draining",
            extra={"in_flight": running, "drain_seconds": seconds, **fields},
        )
        assert self._idle is not None
        if not self.in_flight:
            self._idle.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._idle.wait()
        cut = list(self.in_flight)
        for task in cut:
            task.cancel(DRAIN_CUT)
        if cut:  # each sends its 503 or error event; one stuck on a client uvicorn ends
            await asyncio.wait(cut, timeout=_CUT_GRACE)
        log.info(
            "shutdown: drained",
            extra={
                "seconds": round(loop.time() - started, 3),
                "finished": running - len(cut),
                "cut": len(cut),
            },
        )
        handover()

    async def aclose(self) -> None:
        """Stop a drain still running (uvicorn stopped first: a SIGINT); the lifespan calls it."""
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain


def install_sigterm(lifecycle: Lifecycle, runtime: Callable[[], Runtime]) -> Callable[[], None]:
    """Drain on SIGTERM, then chain to the handler installed before (uvicorn's), when this
    loop can take signals (the main thread of `gateway serve` or of a worker); elsewhere a
    no-op. `runtime()` is the app's current runtime (its `server.drain_seconds` applies).
    Returns what uninstalls it."""
    if threading.current_thread() is not threading.main_thread():
        return _nothing
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)

    def handover() -> None:
        if callable(previous):  # uvicorn's Server.handle_exit: sets should_exit
            previous(signal.SIGTERM, None)
        elif previous == signal.SIG_DFL:  # not under uvicorn: die as SIGTERM would have
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)

    def start() -> None:
        rt = runtime()
        busy = ",".join(f"{u.name}={u.in_flight}" for u in rt.upstreams.values() if u.in_flight)
        lifecycle.begin(
            rt.config.server.drain_seconds, handover, {"upstream_in_flight": busy or "none"}
        )

    def on_term(signum: int, frame: object) -> None:
        # A Python-level handler runs between two bytecodes of the main thread, maybe inside
        # the loop's own code: flip the flag (readiness and the gate see it at once) and let
        # the loop start the drain.
        if lifecycle.draining:
            return  # a repeat (e.g. a process group's and the supervisor's): draining already
        lifecycle.draining = True
        loop.call_soon_threadsafe(start)

    signal.signal(signal.SIGTERM, on_term)

    def uninstall() -> None:
        if signal.getsignal(signal.SIGTERM) is on_term and previous is not None:
            signal.signal(signal.SIGTERM, previous)

    return uninstall


def _nothing() -> None:
    pass
