"""Runtime: everything a running gateway holds (upstream state, routes, clients, and each
upstream's breaker, limiter and retry budget, and the health prober), opened and closed
together by the app's lifespan, or built by a test and handed to `create_app`."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import httpx

from gateway.auth import KeyTable
from gateway.config import Config, RateLimit
from gateway.metrics import Metrics
from gateway.resilience import redis_store, shared
from gateway.resilience.breaker import Breaker
from gateway.resilience.limiter import Limiter
from gateway.resilience.retry import RetryBudget
from gateway.routing import Routes
from gateway.upstreams.clients import Clients
from gateway.upstreams.probes import Prober
from gateway.upstreams.registry import Registry, Upstream
from gateway.usage import Usage


@dataclass(slots=True)
class Guards:
    """One upstream's protections, shared by every request to it."""

    breaker: Breaker
    limiter: Limiter
    budget: RetryBudget


@dataclass(slots=True)
class Runtime:
    config: Config
    upstreams: Registry
    routes: Routes
    clients: Clients
    guards: dict[str, Guards]
    prober: Prober
    metrics: Metrics
    usage: Usage
    draw: Callable[[], float] = random.random  # routing and backoff jitter (tests fix it)
    started: float = field(default_factory=time.time)
    keys: KeyTable | None = None  # client keys (gateway/auth.py); None: no client auth

    @classmethod
    async def open(
        cls, config: Config, transports: Mapping[str, httpx.AsyncBaseTransport] | None = None
    ) -> Runtime:
        """Build the runtime on the running loop (aiolimiter binds to the loop that first uses
        it). `transports` replace upstreams' networks (tests)."""
        upstreams = Registry(config.upstreams)
        metrics = Metrics(config)
        redis_store.watch(metrics)  # the shared limits' degraded gauge
        clients = await Clients.open(config.upstreams, transports)
        for name in config.upstreams:
            clients.observe_acquire(name, metrics.acquire_observer(name))
        guards = {
            name: Guards(
                Breaker(name, upstream.breaker, on_change=metrics.breaker_changed),
                new_limiter(config, "upstream", name, upstream.rate_limit),
                RetryBudget(upstream.retry),
            )
            for name, upstream in config.upstreams.items()
        }
        routes = Routes(config.models, upstreams, config.server.load_balancing)
        prober = Prober(upstreams, clients)
        keys = KeyTable.build(config, new_limiter)
        runtime = cls(
            config, upstreams, routes, clients, guards, prober, metrics, Usage(), keys=keys
        )
        metrics.watch(runtime)
        return runtime

    async def aclose(self) -> None:
        self.metrics.close()
        await self.clients.aclose()
        await redis_store.aclose_stores()  # the shared limits' Redis pool, if any

    async def derive(self, config: Config) -> Runtime:
        """The runtime for `config` (a reload), built from this one. An upstream whose
        `UpstreamConfig` is unchanged keeps its `Upstream` (state, health, requests in flight),
        its `Guards` and its client; a new or changed one gets fresh ones; routes and the prober
        are rebuilt over them. Everything else (metrics, usage, clock, jitter) carries over, and
        the metrics read the new runtime from now on. This runtime goes on serving the requests
        that started on it: `retire()` it once the new one is in place. Raises what building a
        client raises, having changed nothing."""
        kept = {
            name: self.upstreams[name]
            for name, upstream in config.upstreams.items()
            if self.config.upstreams.get(name) == upstream
        }
        clients = await self.clients.successor(config.upstreams, keep=kept)
        for name in config.upstreams:
            clients.observe_acquire(name, self.metrics.acquire_observer(name))
        upstreams = Registry(config.upstreams, keep=kept)
        same_limits = config.limits == self.config.limits  # else every limiter is rebuilt
        guards = {
            name: self.guards[name]
            if name in kept and same_limits
            else Guards(
                self.guards[name].breaker
                if name in kept
                else Breaker(name, upstream.breaker, on_change=self.metrics.breaker_changed),
                new_limiter(config, "upstream", name, upstream.rate_limit),
                self.guards[name].budget if name in kept else RetryBudget(upstream.retry),
            )
            for name, upstream in config.upstreams.items()
        }
        routes = Routes(config.models, upstreams, config.server.load_balancing)
        successor = replace(
            self,
            config=config,
            upstreams=upstreams,
            routes=routes,
            clients=clients,
            guards=guards,
            prober=Prober(upstreams, clients),
            keys=KeyTable.build(config, new_limiter, previous=self.keys),
        )
        self.metrics.watch(successor)
        return successor

    async def retire(self, successor: Runtime, drain: float) -> None:
        """Close this runtime's clients that `successor` does not share (its removed and
        changed upstreams), each once its requests in flight are done (their `in_flight` is 0
        and the pool idle), or after `drain` seconds, cutting what still runs. Cancelled (at
        shutdown), it closes them at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain

        async def close(upstream: Upstream) -> None:
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        # A poll, as Prober.disconnect's: `in_flight` stays a bare int.
                        while upstream.in_flight > 0:  # noqa: ASYNC110
                            await asyncio.sleep(_DRAIN_POLL)
            finally:
                await self.clients.close(upstream.name, grace=max(deadline - loop.time(), 0.0))

        gone = [u for name, u in self.upstreams.items() if successor.upstreams.get(name) is not u]
        await asyncio.gather(*(close(u) for u in gone))


def new_limiter(config: Config, scope: str, name: str, settings: RateLimit | None) -> Limiter:
    """The limiter of one upstream (`scope` "upstream") or client key (`scope` "key"): counted
    in Redis when `limits.backend` is redis and it has per-minute limits, else in this process
    (no Redis round trip)."""
    if (
        config.limits.backend == "redis"
        and settings is not None
        and (settings.requests_per_minute or settings.tokens_per_minute)
    ):
        store = redis_store.store_for(config.limits)
        return shared.SharedLimiter(scope, name, settings, store, label=_LABELS[scope])
    return Limiter(name, settings, label=_LABELS[scope])


_LABELS = {"upstream": "upstream", "key": "client key"}  # how refusals name whose limit it is


_DRAIN_POLL = 0.05  # seconds between looks at a retiring upstream's `in_flight`
