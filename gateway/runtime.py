"""Runtime: everything a running gateway holds (upstream state, routes, clients), opened and
closed together by the app's lifespan, or built by a test and handed to `create_app`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from gateway.config import Config
from gateway.routing import Routes
from gateway.upstreams.clients import Clients
from gateway.upstreams.registry import Registry


@dataclass(slots=True)
class Runtime:
    config: Config
    upstreams: Registry
    routes: Routes
    clients: Clients
    started: float = field(default_factory=time.time)

    @classmethod
    async def open(
        cls, config: Config, transports: Mapping[str, httpx.AsyncBaseTransport] | None = None
    ) -> Runtime:
        """Build the runtime on the running loop. `transports` replace upstreams' networks."""
        upstreams = Registry(config.upstreams)
        clients = await Clients.open(config.upstreams, transports)
        return cls(config, upstreams, Routes(config.models, upstreams), clients)

    async def aclose(self) -> None:
        await self.clients.aclose()
