"""The connection manager: health probes and the connect/disconnect transitions of upstreams.

`Prober` owns every change of an upstream's `ConnectionState` (registry.py) and its
`HealthRecord`. `run()` is the background loop (one task per upstream with `health.interval` >
0, run in the app lifespan's TaskGroup); `check()` is one probe with the upstream's translator
(its `health_probe`, then its `models_request` when that is a different request: OpenAI-style
servers list their models at the probe's own `GET /models`, TGI answers `/health` and lists its
model at `/info`); `connect()`, `disconnect()` and `mark_unhealthy()` are what the pipeline and
the admin API call. Each state change is logged on `gateway.health`.

The rules: `health.failure_threshold` consecutive failed checks make a `connected` upstream
`unhealthy`, and one passing check brings an `unhealthy` one back; probes leave every other
state alone (connect and disconnect own those). State changes are plain assignments, done before
the first await of the call that makes them, so routing sees them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from gateway.errors import GatewayError
from gateway.logs import redact
from gateway.providers.base import UpstreamRequest
from gateway.upstreams.clients import Clients
from gateway.upstreams.registry import ConnectionState, HealthRecord, Registry, Upstream

log = logging.getLogger("gateway.health")

_DRAIN_POLL = 0.02  # seconds between looks at `in_flight` while draining (a read of an int)
_ERROR_CHARS = 500  # longest error text kept in a HealthRecord

_UNPROBED = frozenset({ConnectionState.DISCONNECTED, ConnectionState.DISCONNECTING})


class Prober:
    """Health checks and connection transitions for every upstream of `upstreams`.

    `clock` (monotonic seconds) times probes; `wall` (unix seconds) stamps health records.
    """

    def __init__(
        self,
        upstreams: Registry,
        clients: Clients,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._upstreams = upstreams
        self._clients = clients
        self._clock = clock
        self._wall = wall
        # connect() and disconnect() of one upstream take turns (an admin may click twice).
        self._locks = {name: asyncio.Lock() for name in upstreams}

    # ---------------------------------------------------------------- probing

    async def check(self, upstream: Upstream) -> bool:
        """Probe `upstream` once (at most `health.timeout` seconds), record the result in its
        HealthRecord and apply the state rules; True if it passed. Never raises but for
        cancellation: an unexpected error is logged and counts as a failed check."""
        settings = upstream.config.health
        models: tuple[str, ...] = ()
        error: str | None = None
        started = self._clock()
        try:
            async with asyncio.timeout(settings.timeout):
                models = await self._probe(upstream)
        except TimeoutError:
            error = f"health check timed out after {settings.timeout:g} s"
        except GatewayError as exc:
            error = exc.message
        except Exception as exc:  # a bug, or an exception no table translates: still a failure
            error = f"health check failed: {type(exc).__name__}: {exc}"
            # No traceback: its frames and message may hold the upstream's key.
            log.error(
                "health check crashed",
                extra={"upstream": upstream.name, "error": redact(error, upstream.secrets)},
            )

        latency = (self._clock() - started) * 1000.0  # also of a failure: how long it took
        now = self._wall()
        record = upstream.health
        if error is None:
            upstream.health = replace(
                record,
                last_success=now,
                latency_ms=latency,
                models=models,
                consecutive_failures=0,
                checks=record.checks + 1,
            )
            if upstream.state is ConnectionState.UNHEALTHY:
                self._move(upstream, ConnectionState.CONNECTED, "health check passed")
            return True

        error = redact(error, upstream.secrets)[:_ERROR_CHARS]
        failures = record.consecutive_failures + 1
        upstream.health = replace(
            record,
            last_error_at=now,
            last_error=error,
            latency_ms=latency,
            consecutive_failures=failures,
            checks=record.checks + 1,
        )
        if upstream.state is ConnectionState.CONNECTED and failures >= settings.failure_threshold:
            self._move(
                upstream,
                ConnectionState.UNHEALTHY,
                f"{failures} health checks failed in a row (last: {error})",
            )
        return False

    async def _probe(self, upstream: Upstream) -> tuple[str, ...]:
        """The models the upstream lists, if its probe passes. Raises GatewayError."""
        translator, config = upstream.translator, upstream.config
        probe = translator.health_probe(config)
        body = await self._get(upstream, probe)
        listing = translator.models_request(config)
        if listing != probe:
            body = await self._get(upstream, listing)
        return translator.parse_models(body)

    async def _get(self, upstream: Upstream, request: UpstreamRequest) -> bytes:
        """The 2xx body of `request`; any other answer raises the translator's error for it."""
        reply = await self._clients.send(upstream.name, request)
        try:
            body = await reply.read()
        finally:
            await reply.aclose()
        if not 200 <= reply.status < 300:
            raise upstream.translator.parse_error(
                reply.status, reply.headers, body, upstream.name, upstream.secrets
            )
        return body

    async def run(self) -> None:
        """Probe every upstream with `health.interval` > 0 at that interval, the first probe
        one interval after start, until cancelled. Disabled, unconfigured, disconnected and
        disconnecting upstreams are skipped; nothing a probe does ends the loop."""
        probed = [u for u in self._upstreams.values() if u.config.health.interval > 0]
        if not probed:  # nothing to probe: still run until cancelled, as documented
            await asyncio.get_running_loop().create_future()
        async with asyncio.TaskGroup() as group:
            for upstream in probed:
                group.create_task(self._watch(upstream), name=f"health:{upstream.name}")

    async def _watch(self, upstream: Upstream) -> None:
        interval = upstream.config.health.interval
        while True:
            await asyncio.sleep(interval)
            if not upstream.enabled or upstream.state in _UNPROBED:
                continue
            if not upstream.config.configured:
                continue  # no key to probe with: it takes no traffic anyway
            try:
                await self.check(upstream)
            except Exception:  # check() catches its own; this guards the loop against bugs
                log.exception("health loop error", extra={"upstream": upstream.name})

    # ---------------------------------------------------------------- transitions

    async def connect(self, name: str) -> HealthRecord:
        """Bring upstream `name` into service: `connecting` (no traffic), a fresh client, one
        probe; then `connected` if it passed, else `unhealthy` (the record says why, and the
        background probes keep trying). Returns its HealthRecord. Raises KeyError."""
        upstream = self._upstreams[name]
        async with self._locks[name]:
            self._move(upstream, ConnectionState.CONNECTING, "connect requested")
            await self._clients.reopen(name)
            if await self.check(upstream):
                self._move(upstream, ConnectionState.CONNECTED, "connected: health check passed")
            else:
                why = upstream.health.last_error or "health check failed"
                self._move(upstream, ConnectionState.UNHEALTHY, f"connect failed: {why}")
            return upstream.health

    async def disconnect(self, name: str, drain: float = 30.0) -> None:
        """Take upstream `name` out of service: `disconnecting` at once (no new traffic), wait
        up to `drain` seconds for its requests in flight to finish, close its client (cutting
        any still running), then `disconnected`. Does nothing if it is disconnected already.
        Raises KeyError."""
        upstream = self._upstreams[name]
        async with self._locks[name]:
            if upstream.state is ConnectionState.DISCONNECTED:
                return
            self._move(upstream, ConnectionState.DISCONNECTING, "disconnect requested")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain):
                    # A poll, not an event: the pipeline's `in_flight += 1` stays a bare int.
                    while upstream.in_flight > 0:  # noqa: ASYNC110
                        await asyncio.sleep(_DRAIN_POLL)
            cut = upstream.in_flight
            if cut:
                log.warning(
                    "disconnect cuts requests in flight",
                    extra={"upstream": name, "in_flight": cut, "drain": drain},
                )
            await self._clients.close(name)
            why = f"disconnected ({cut} request(s) cut)" if cut else "disconnected"
            self._move(upstream, ConnectionState.DISCONNECTED, why)

    def mark_unhealthy(self, name: str, reason: str) -> None:
        """Take a `connected` upstream out of traffic at once, e.g. when it answered 401/403
        (our key is wrong). `reason` is redacted and recorded as its last error; the next
        passing probe brings it back (with `health.interval` 0, only `connect()` does).
        Other states are left alone. Raises KeyError."""
        upstream = self._upstreams[name]
        reason = redact(reason, upstream.secrets)[:_ERROR_CHARS]
        upstream.health = replace(upstream.health, last_error_at=self._wall(), last_error=reason)
        if upstream.state is ConnectionState.CONNECTED:
            self._move(upstream, ConnectionState.UNHEALTHY, reason)

    def _move(self, upstream: Upstream, to: ConnectionState, reason: str) -> None:
        before = upstream.state
        upstream.state = to
        upstream.state_reason = reason
        if before is not to:
            level = logging.WARNING if to is ConnectionState.UNHEALTHY else logging.INFO
            log.log(
                level,
                "upstream state changed",
                extra={
                    "upstream": upstream.name,
                    "from": before.value,
                    "to": to.value,
                    "reason": reason,
                },
            )
