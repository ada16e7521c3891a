"""Token usage times an upstream's price table (USD per million tokens)."""

from __future__ import annotations

import pytest

from gateway.config import Price
from gateway.cost import cached_tokens, cost_usd
from gateway.openai_types import Usage
from gateway.providers.base import new_usage


def test_prompt_and_completion_are_priced_per_million_tokens():
    price = Price(input=2.5, output=10.0)
    assert cost_usd(price, 1_000_000, 0) == pytest.approx(2.5)
    assert cost_usd(price, 1000, 500) == pytest.approx(0.0025 + 0.005)


def test_cached_tokens_cost_the_cached_input_price():
    price = Price(input=2.0, output=8.0, cached_input=0.5)
    # 1000 prompt tokens, 400 of them from the cache: 600 x 2.0 + 400 x 0.5 + 100 x 8.0
    assert cost_usd(price, 1000, 100, cached=400) == pytest.approx((1200 + 200 + 800) / 1e6)


def test_cached_tokens_cost_the_input_price_without_a_cached_price():
    price = Price(input=2.0, output=8.0)
    assert cost_usd(price, 1000, 0, cached=400) == cost_usd(price, 1000, 0)


def test_cached_count_is_bounded_by_the_prompt():
    price = Price(input=2.0, output=0.0, cached_input=1.0)
    assert cost_usd(price, 100, 0, cached=1000) == pytest.approx(100 * 1.0 / 1e6)
    assert cost_usd(price, 100, 0, cached=-5) == pytest.approx(100 * 2.0 / 1e6)


def test_an_unpriced_model_costs_nothing():
    assert cost_usd(None, 1000, 1000, 10) == 0.0


@pytest.mark.parametrize(
    ("usage", "cached"),
    [
        (new_usage(10, 5), 0),
        (new_usage(10, 5, 7), 7),
        (new_usage(10, 5, 0), 0),
    ],
)
def test_cached_tokens_read_from_openai_usage(usage: Usage, cached: int):
    assert cached_tokens(usage) == cached
