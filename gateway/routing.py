"""Public model name -> the order in which its targets are tried for one request (pure).

A model's targets are grouped by `priority` (lower first; a target without one takes its
1-based position in the list, so a plain list is an ordered fallback chain). Within a group,
targets share the load: `weighted` draws an order at random in proportion to `weight`
(a weighted shuffle, so the rest of the group is still tried after the first pick);
`least_in_flight` orders by requests in flight, ties by weight and then list order. The caller
passes the random draws, so this module keeps no state of its own.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

from gateway.config import Balancing, Target
from gateway.errors import ModelNotFound
from gateway.upstreams.registry import Registry, Upstream

Chain = tuple[tuple[Upstream, Target], ...]


class Routes:
    def __init__(
        self,
        models: Mapping[str, tuple[Target, ...]],
        upstreams: Registry,
        balancing: Balancing = "weighted",
    ) -> None:
        self._balancing = balancing
        self._chains: dict[str, Chain] = {}
        self._groups: dict[str, tuple[Chain, ...]] = {}
        self._fixed: dict[str, Chain] = {}  # models whose order never varies: no draw needed
        for model, targets in models.items():
            chain = tuple((upstreams[t.upstream], t) for t in targets)
            self._chains[model] = chain
            levels: dict[int, list[tuple[Upstream, Target]]] = {}
            for position, pair in enumerate(chain, 1):
                priority = pair[1].priority
                levels.setdefault(position if priority is None else priority, []).append(pair)
            groups = tuple(tuple(levels[p]) for p in sorted(levels))
            self._groups[model] = groups
            if all(len(group) == 1 for group in groups):
                self._fixed[model] = tuple(pair for group in groups for pair in group)

    def chain_for(self, model: str) -> Chain:
        """The targets for `model` as configured. Raises ModelNotFound (404)."""
        chain = self._chains.get(model)
        if chain is None:
            raise ModelNotFound(
                f"The model '{model[:256]}' does not exist or you do not have access to it.",
                param="model",
            )
        return chain

    def plan(self, model: str, draw: Callable[[], float] = random.random) -> Chain:
        """The order in which to try `model`'s targets for one request. Raises ModelNotFound."""
        fixed = self._fixed.get(model)
        if fixed is not None:
            return fixed
        groups = self._groups.get(model)
        if groups is None:
            self.chain_for(model)  # raises ModelNotFound
            raise AssertionError("unreachable")
        ordered: list[tuple[Upstream, Target]] = []
        for group in groups:
            if len(group) == 1:
                ordered.extend(group)
            elif self._balancing == "least_in_flight":
                ordered.extend(sorted(group, key=lambda pair: (pair[0].in_flight, -pair[1].weight)))
            else:
                ordered.extend(_weighted_order(group, draw))
        return tuple(ordered)

    @property
    def models(self) -> list[str]:
        return list(self._chains)


def _weighted_order(group: Chain, draw: Callable[[], float]) -> list[tuple[Upstream, Target]]:
    """A random order where each target comes first with probability weight / total weight.

    Efraimidis and Spirakis' weighted sampling without replacement: sort by u ** (1 / w).
    """
    keyed = [(draw() ** (1.0 / pair[1].weight), i, pair) for i, pair in enumerate(group)]
    keyed.sort(key=lambda item: (-item[0], item[1]))
    return [pair for _, _, pair in keyed]
