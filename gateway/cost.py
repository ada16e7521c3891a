"""Token usage times an upstream's price table: USD (pure; no I/O, clock or globals).

Prices are USD per million tokens (`pricing` in an upstream's config, keyed by the upstream's
own model name). Prompt tokens read from a cache are part of `prompt_tokens` in OpenAI's usage
(`prompt_tokens_details.cached_tokens`), so they are billed at `cached_input` and the rest of
the prompt at `input`; without a `cached_input` price every prompt token costs `input`.
"""

from __future__ import annotations

from gateway.config import Price
from gateway.openai_types import Usage

_PER_TOKEN = 1e-6  # prices are per million tokens


def cached_tokens(usage: Usage) -> int:
    """Prompt tokens the upstream read from its cache (0 when it does not say)."""
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if details else None
    return cached if isinstance(cached, int) and cached > 0 else 0


def cost_usd(price: Price | None, prompt: int, completion: int, cached: int = 0) -> float:
    """What `prompt` (of which `cached` came from a cache) and `completion` tokens cost at
    `price`; 0.0 for an unpriced model."""
    if price is None:
        return 0.0
    cached = min(max(cached, 0), prompt)
    cached_price = price.input if price.cached_input is None else price.cached_input
    return (
        (prompt - cached) * price.input + cached * cached_price + completion * price.output
    ) * _PER_TOKEN
