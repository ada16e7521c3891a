"""gateway/routing.py: priority groups, weighted shares and least-in-flight order."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from gateway.config import Balancing, Target, UpstreamConfig
from gateway.errors import ModelNotFound
from gateway.routing import Routes
from gateway.upstreams.registry import Registry

UPSTREAMS = Registry({name: UpstreamConfig(provider="mock") for name in ("a", "b", "c", "d")})


def routes(*targets: Target, balancing: Balancing = "weighted") -> Routes:
    return Routes({"m": targets}, UPSTREAMS, balancing)


def names(r: Routes, rng: random.Random | None = None) -> list[str]:
    chain = r.plan("m") if rng is None else r.plan("m", rng.random)
    return [upstream.name for upstream, _ in chain]


def test_a_plain_list_is_an_ordered_chain():
    r = routes(Target(upstream="b", model="x"), Target(upstream="a", model="x"))

    assert names(r) == ["b", "a"]
    assert r.plan("m") is r.plan("m")  # nothing to draw: the same tuple every time


def test_lower_priorities_come_first_whatever_the_list_order():
    r = routes(
        Target(upstream="c", model="x", priority=2),
        Target(upstream="a", model="x", priority=1),
        Target(upstream="b", model="x", priority=3),
    )

    assert names(r) == ["a", "c", "b"]


def test_equal_priorities_share_by_weight_and_the_rest_of_the_group_follows():
    r = routes(
        Target(upstream="a", model="x", priority=1, weight=3),
        Target(upstream="b", model="x", priority=1, weight=1),
        Target(upstream="c", model="x", priority=2),
    )
    rng = random.Random(7)

    firsts = Counter(names(r, rng)[0] for _ in range(4000))
    orders = {tuple(names(r, rng)) for _ in range(200)}

    assert firsts["a"] / 4000 == pytest.approx(0.75, abs=0.03)
    assert orders == {("a", "b", "c"), ("b", "a", "c")}  # c only after the whole group


def test_least_in_flight_picks_the_idlest_then_the_heavier_weight():
    r = routes(
        Target(upstream="a", model="x", priority=1, weight=1),
        Target(upstream="b", model="x", priority=1, weight=2),
        balancing="least_in_flight",
    )
    a, b = UPSTREAMS["a"], UPSTREAMS["b"]

    try:
        a.in_flight, b.in_flight = 0, 3
        assert names(r) == ["a", "b"]
        a.in_flight, b.in_flight = 2, 2
        assert names(r) == ["b", "a"]  # a tie: the heavier weight first
    finally:
        a.in_flight = b.in_flight = 0


def test_an_unknown_model_is_a_404():
    with pytest.raises(ModelNotFound):
        routes(Target(upstream="a", model="x")).plan("nope")


def test_every_permutation_of_a_group_can_come_up():
    r = routes(*(Target(upstream=n, model="x", priority=1) for n in "abcd"))
    rng = random.Random(1)

    seen = {tuple(names(r, rng)) for _ in range(3000)}

    assert seen == set(itertools.permutations("abcd"))
