"""Per-upstream runtime state: its settings, translator, secrets and whether it may take traffic.

Each upstream has a connection state (`ConnectionState`), an `enabled` switch independent of it,
its last health results (`HealthRecord`) and the pipeline's bookkeeping (`in_flight`,
`last_used`). The health prober (`upstreams/probes.py`) and the admin API change this state at
runtime; everything that routes a request reads it here, through `Upstream.unusable`, so there
is one answer to "may this upstream be used right now".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from gateway.config import UpstreamConfig
from gateway.providers import TRANSLATORS, Translator


class ConnectionState(StrEnum):
    """Where an upstream's connection stands. Only `connected` takes traffic."""

    DISCONNECTED = "disconnected"  # its client is closed (admin disconnect)
    CONNECTING = "connecting"  # its client is being (re)opened and probed
    CONNECTED = "connected"  # in service
    UNHEALTHY = "unhealthy"  # failed its health checks (or rejected our key); probes continue
    DISCONNECTING = "disconnecting"  # draining its requests in flight before its client closes


@dataclass(frozen=True, slots=True)
class HealthRecord:
    """The last health results of one upstream (a value: each check replaces it).

    Times are unix seconds; `last_error` is already redacted with the upstream's secrets.
    """

    last_success: float | None = None
    last_error_at: float | None = None
    last_error: str | None = None
    latency_ms: float | None = None  # how long the last check took, passed or failed
    models: tuple[str, ...] = ()  # as the upstream last listed them
    consecutive_failures: int = 0
    checks: int = 0


@dataclass(slots=True)
class Upstream:
    name: str
    config: UpstreamConfig
    translator: Translator = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False)  # masked in every message that leaves
    enabled: bool = True
    state: ConnectionState = ConnectionState.CONNECTED
    state_reason: str = ""  # why the state last changed (for logs and the admin API)
    health: HealthRecord = field(default_factory=HealthRecord)
    in_flight: int = 0  # requests the pipeline is serving through it now
    last_used: float | None = None  # unix seconds, set by the pipeline

    @property
    def provider(self) -> str:
        return self.config.provider

    @property
    def unusable(self) -> str | None:
        """Why this upstream takes no traffic now, or None if it may (the hot path: one
        identity test, two attribute reads and a property in the common case)."""
        if self.state is ConnectionState.CONNECTED and self.enabled and self.config.configured:
            return None
        if not self.config.configured:
            return f"upstream '{self.name}' is not configured (its api_key is empty)"
        if not self.enabled:
            return f"upstream '{self.name}' is disabled"
        if self.state is ConnectionState.UNHEALTHY:
            why = f": {self.state_reason}" if self.state_reason else ""
            return f"upstream '{self.name}' is unhealthy{why}"
        return f"upstream '{self.name}' is {self.state}"


class Registry(Mapping[str, Upstream]):
    """Every configured upstream by name; each starts `connected`, enabled as configured.

    `keep` (a config reload) hands over existing `Upstream` objects by name, with their state,
    health and requests in flight, instead of fresh ones; the caller checks their configs match.
    """

    def __init__(
        self, upstreams: Mapping[str, UpstreamConfig], keep: Mapping[str, Upstream] | None = None
    ) -> None:
        keep = keep or {}
        self._upstreams = {
            name: keep[name]
            if name in keep
            else Upstream(
                name,
                config,
                TRANSLATORS[config.provider],
                _secrets_of(config),
                enabled=config.enabled,
            )
            for name, config in upstreams.items()
        }

    def __getitem__(self, name: str) -> Upstream:
        return self._upstreams[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._upstreams)

    def __len__(self) -> int:
        return len(self._upstreams)


def _secrets_of(config: UpstreamConfig) -> tuple[str, ...]:
    # Extra headers often carry credentials of their own (custom auth, org ids): mask them too.
    values = [config.api_key.reveal() if config.api_key else "", *config.headers.values()]
    return tuple(v for v in values if len(v) >= 8)
