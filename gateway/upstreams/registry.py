"""Per-upstream runtime state: its settings, translator, secrets and whether it may take traffic.

The admin API and health checks change this state at runtime; everything that routes a request
reads it here, so there is one answer to "may this upstream be used right now".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from gateway.config import UpstreamConfig
from gateway.providers import TRANSLATORS, Translator


@dataclass(slots=True)
class Upstream:
    name: str
    config: UpstreamConfig
    translator: Translator = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False)  # masked in every message that leaves
    enabled: bool = True

    @property
    def provider(self) -> str:
        return self.config.provider

    @property
    def unusable(self) -> str | None:
        """Why this upstream takes no traffic now, or None if it may."""
        if not self.config.configured:
            return f"upstream '{self.name}' is not configured (its api_key is empty)"
        if not self.enabled:
            return f"upstream '{self.name}' is disabled"
        return None


class Registry(Mapping[str, Upstream]):
    def __init__(self, upstreams: Mapping[str, UpstreamConfig]) -> None:
        self._upstreams = {
            name: Upstream(name, config, TRANSLATORS[config.provider], _secrets_of(config))
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
