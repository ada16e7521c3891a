"""Runtime: everything a running gateway holds (upstream state, routes, clients, and each
upstream's breaker, limiter and retry budget, and the health prober), opened and closed
together by the app's lifespan, or built by a test and handed to `create_app`."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from gateway.config import Config
from gateway.resilience.breaker import Breaker
from gateway.resilience.limiter import Limiter
from gateway.resilience.retry import RetryBudget
from gateway.routing import Routes
from gateway.upstreams.clients import Clients
from gateway.upstreams.probes import Prober
from gateway.upstreams.registry import Registry


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
    draw: Callable[[], float] = random.random  # routing and backoff jitter (tests fix it)
    started: float = field(default_factory=time.time)

    @classmethod
    async def open(
        cls, config: Config, transports: Mapping[str, httpx.AsyncBaseTransport] | None = None
    ) -> Runtime:
        """Build the runtime on the running loop (aiolimiter binds to the loop that first uses
        it). `transports` replace upstreams' networks (tests)."""
        upstreams = Registry(config.upstreams)
        clients = await Clients.open(config.upstreams, transports)
        guards = {
            name: Guards(
                Breaker(name, upstream.breaker),
                Limiter(name, upstream.rate_limit),
                RetryBudget(upstream.retry),
            )
            for name, upstream in config.upstreams.items()
        }
        routes = Routes(config.models, upstreams, config.server.load_balancing)
        return cls(config, upstreams, routes, clients, guards, Prober(upstreams, clients))

    async def aclose(self) -> None:
        await self.clients.aclose()
