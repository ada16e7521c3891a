"""Public model name -> the ordered chain of (upstream, target) that may serve it (pure)."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.config import Target
from gateway.errors import ModelNotFound
from gateway.upstreams.registry import Registry, Upstream

Chain = tuple[tuple[Upstream, Target], ...]


class Routes:
    def __init__(self, models: Mapping[str, tuple[Target, ...]], upstreams: Registry) -> None:
        self._chains: dict[str, Chain] = {
            model: tuple((upstreams[t.upstream], t) for t in targets)
            for model, targets in models.items()
        }

    def chain_for(self, model: str) -> Chain:
        """The targets for `model` in priority order. Raises ModelNotFound (404)."""
        chain = self._chains.get(model)
        if chain is None:
            raise ModelNotFound(
                f"The model '{model[:256]}' does not exist or you do not have access to it.",
                param="model",
            )
        return chain

    @property
    def models(self) -> list[str]:
        return list(self._chains)
