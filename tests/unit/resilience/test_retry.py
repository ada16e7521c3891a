"""gateway/resilience/retry.py: deadlines, backoff with full jitter, and the retry budget."""

from __future__ import annotations

import pytest

from gateway.config import RetrySettings
from gateway.resilience.retry import (
    MAX_RETRY_AFTER,
    WINDOW,
    Deadline,
    RetryBudget,
    backoff,
    requested_timeout,
    retry_after,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_deadline_counts_down_on_its_clock():
    clock = Clock()
    deadline = Deadline(2.0, clock)

    clock.now += 1.5
    assert deadline.remaining() == pytest.approx(0.5)
    assert not deadline.expired
    clock.now += 0.5
    assert deadline.expired


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, 600.0),
        ("2", 2.0),
        ("0.25", 0.25),
        ("900", 600.0),  # a client may shorten its deadline, never extend it
        ("0", 600.0),
        ("-1", 600.0),
        ("nan", 600.0),
        ("inf", 600.0),
        ("soon", 600.0),
    ],
)
def test_x_gateway_timeout_only_shortens_the_deadline(header: str | None, expected: float):
    headers = {} if header is None else {"x-gateway-timeout": header}

    assert requested_timeout(headers, 600.0) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),  # the precise one wins
        ({"retry-after": "3600"}, MAX_RETRY_AFTER),  # capped at 60 s
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        ({"retry-after": "-3"}, None),
    ],
)
def test_retry_after_reads_the_upstreams_wait(headers: dict[str, str], expected: float | None):
    assert retry_after(headers) == expected


def test_backoff_is_full_jitter_under_an_exponential_ceiling():
    settings = RetrySettings(attempts=5, backoff_base=0.2, backoff_max=1.0)

    assert [backoff(n, settings, draw=lambda: 1.0) for n in (1, 2, 3, 4)] == [0.2, 0.4, 0.8, 1.0]
    assert backoff(3, settings, draw=lambda: 0.0) == 0.0
    assert backoff(2, settings, draw=lambda: 0.5) == pytest.approx(0.2)


def test_backoff_honours_the_upstreams_retry_after():
    settings = RetrySettings(attempts=3, backoff_base=0.2, backoff_max=1.0)

    assert backoff(1, settings, asked=7.0, draw=lambda: 1.0) == 7.0


def test_the_budget_allows_a_minimum_then_a_share_of_recent_requests():
    clock = Clock()
    budget = RetryBudget(RetrySettings(budget=0.2, min_retries=3), clock)
    for _ in range(10):
        budget.record_request()

    granted = sum(budget.try_retry() for _ in range(10))

    assert granted == 3  # 20% of 10 is 2, but 3 are always allowed
    for _ in range(40):
        budget.record_request()
    assert sum(budget.try_retry() for _ in range(20)) == 7  # 20% of 50 = 10, 3 taken
    assert not budget.try_retry()


def test_the_budget_forgets_what_left_its_window():
    clock = Clock()
    budget = RetryBudget(RetrySettings(budget=0.2, min_retries=1), clock)
    budget.record_request()
    assert budget.try_retry()
    assert not budget.try_retry()

    clock.now += WINDOW + 0.1

    assert budget.try_retry()  # the old retry no longer counts
