"""Tokens and cost since start, per client key, per public model and per upstream (`/admin/usage`).

A client key counts under its configured name (never the key); with no `auth.keys` every request
counts under "anonymous".

In memory and per process: with several workers each keeps its own (Prometheus'
`gateway_tokens_total` and `gateway_cost_usd_total` are the totals over workers). A request
counts once, when the attempt that served it ends with its usage known.
"""

from __future__ import annotations

from typing import TypedDict

ANONYMOUS = "anonymous"  # the key name of requests when no client keys (auth.keys) are set


class Figures(TypedDict):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float


class Snapshot(TypedDict):
    keys: dict[str, Figures]
    models: dict[str, Figures]
    upstreams: dict[str, Figures]


class _Tally:
    __slots__ = ("cached", "completion", "cost", "prompt", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.prompt = 0
        self.completion = 0
        self.cached = 0
        self.cost = 0.0

    def add(self, prompt: int, completion: int, cached: int, cost: float) -> None:
        self.requests += 1
        self.prompt += prompt
        self.completion += completion
        self.cached += cached
        self.cost += cost

    def figures(self) -> Figures:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "cached_tokens": self.cached,
            "cost_usd": round(self.cost, 10),
        }


class Usage:
    """Running totals. `record()` is on the request path: three dict lookups and some adds."""

    def __init__(self) -> None:
        self._keys: dict[str, _Tally] = {}
        self._models: dict[str, _Tally] = {}
        self._upstreams: dict[str, _Tally] = {}

    def record(
        self,
        key: str | None,
        model: str,
        upstream: str,
        prompt: int,
        completion: int,
        cached: int,
        cost_usd: float,
    ) -> None:
        """One served request's usage; `key` is the client key's name (None: anonymous)."""
        for table, name in (
            (self._keys, key or ANONYMOUS),
            (self._models, model),
            (self._upstreams, upstream),
        ):
            tally = table.get(name)
            if tally is None:
                tally = table[name] = _Tally()
            tally.add(prompt, completion, cached, cost_usd)

    def snapshot(self) -> Snapshot:
        return {
            "keys": {n: t.figures() for n, t in self._keys.items()},
            "models": {n: t.figures() for n, t in self._models.items()},
            "upstreams": {n: t.figures() for n, t in self._upstreams.items()},
        }
