"""gateway/resilience/limiter.py: bounded waits, bounded queues, headers, pauses, reconciling.

Each test runs its own event loop. Bucket arithmetic runs on an injected `Clock` wherever a test
would otherwise wait for a bucket to drain; real time is used only for short waits (a
`max_wait` of a fraction of a second, or a bucket that drains 1000 tokens a second), each bounded
by `run()`'s guard. "Refused at once" is checked by stepping the coroutine once: it must raise
without ever suspending.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from gateway.config import RateLimit
from gateway.errors import RateLimited
from gateway.resilience.limiter import (
    MAX_PAUSE,
    Limiter,
    Permit,
    estimate_tokens,
    format_reset,
)

Runner = Callable[[Coroutine[Any, Any, None]], None]
RUNNERS = [pytest.param(asyncio.run, id="asyncio"), pytest.param(uvloop.run, id="uvloop")]
DEADLINE = 3.0  # seconds any single wait in a test may take before it counts as a hang


def run(main: Callable[[], Awaitable[None]], runner: Runner = asyncio.run) -> None:
    async def guarded() -> None:
        async with asyncio.timeout(8):
            await main()

    runner(guarded())


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def until(condition: Callable[[], bool], what: str = "condition") -> None:
    """Yield to the loop until `condition` holds; fail after DEADLINE seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


def refused_at_once(awaitable: Coroutine[Any, Any, Permit]) -> RateLimited:
    """The RateLimited the coroutine raises on its first step, without suspending."""
    with pytest.raises(RateLimited) as caught:
        awaitable.send(None)
    return caught.value


def admitted_at_once(awaitable: Coroutine[Any, Any, Permit]) -> Permit:
    """The Permit the coroutine returns on its first step, without suspending."""
    with pytest.raises(StopIteration) as caught:
        awaitable.send(None)
    permit = caught.value.value
    assert isinstance(permit, Permit)
    return permit


def others() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}


def assert_idle(limiter: Limiter, in_flight: int) -> None:
    """No waiter is left behind: none queued, no tokens reserved for one, no drain timer."""
    assert limiter.snapshot()["waiters"] == 0
    assert limiter.snapshot()["in_flight"] == in_flight
    assert limiter._queued_tokens == 0
    assert limiter._timer is None or limiter._timer.cancelled()


# The proof: 200 concurrent requests, a limit of 10 a minute, max_wait 0.5 s.


@pytest.mark.parametrize("runner", RUNNERS)
def test_burst_admits_exactly_the_limit_and_refuses_the_rest_fast(runner: Runner) -> None:
    async def main() -> None:
        limiter = Limiter("primary", RateLimit(requests_per_minute=10, max_wait=0.5))
        started = time.monotonic()
        results = await asyncio.gather(
            *(limiter.acquire(20) for _ in range(200)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        permits = [r for r in results if isinstance(r, Permit)]
        refusals = [r for r in results if isinstance(r, RateLimited)]
        assert (len(permits), len(refusals)) == (10, 190)
        assert elapsed < 0.6
        assert not others()
        assert_idle(limiter, in_flight=10)
        for refusal in refusals:
            assert refusal.status == 429
            assert refusal.fallback
            headers = refusal.headers
            # The bucket is full: the next request fits once a sixth of a minute has drained.
            assert headers["retry-after"] == "6"
            assert 5_900 < int(headers["retry-after-ms"]) <= 6_000
            assert headers["x-ratelimit-limit-requests"] == "10"
            assert headers["x-ratelimit-remaining-requests"] == "0"
            assert re.fullmatch(r"59\.\d{1,3}s|1m0s", headers["x-ratelimit-reset-requests"])
            assert "x-ratelimit-limit-tokens" not in headers  # no token limit configured
            assert "primary" in refusal.message
            assert "10 requests per minute" in refusal.message
        for permit in permits:
            permit.release()
        assert_idle(limiter, in_flight=0)

    run(main, runner)


def test_burst_against_concurrency_leaves_no_waiter_behind() -> None:
    async def main() -> None:
        limiter = Limiter("primary", RateLimit(max_concurrent=10, max_waiters=50, max_wait=0.2))
        started = time.monotonic()
        results = await asyncio.gather(
            *(limiter.acquire(1) for _ in range(200)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        permits = [r for r in results if isinstance(r, Permit)]
        refusals = [r for r in results if isinstance(r, RateLimited)]
        assert (len(permits), len(refusals)) == (10, 190)
        assert sum("already waiting" in r.message for r in refusals) == 140
        assert sum("10 concurrent requests" in r.message for r in refusals) == 50
        assert 0.19 < elapsed < 1.5
        assert not others()
        assert_idle(limiter, in_flight=10)
        for permit in permits:
            permit.release()
        assert_idle(limiter, in_flight=0)

    run(main)


# Concurrency


def test_waiter_gets_the_slot_a_release_frees() -> None:
    async def main() -> None:
        limiter = Limiter("primary", RateLimit(max_concurrent=2, max_wait=DEADLINE))
        first, second = await limiter.acquire(1), await limiter.acquire(1)
        third = asyncio.create_task(limiter.acquire(1))
        await until(lambda: limiter.snapshot()["waiters"] == 1, "the third to queue")
        assert not third.done()
        first.release()
        permit = await third
        assert_idle(limiter, in_flight=2)
        second.release()
        permit.release()
        assert_idle(limiter, in_flight=0)

    run(main)


def test_waiter_is_refused_after_max_wait() -> None:
    async def main() -> None:
        limiter = Limiter("primary", RateLimit(max_concurrent=1, max_wait=0.1))
        held = await limiter.acquire(1)
        started = time.monotonic()
        with pytest.raises(RateLimited) as caught:
            await limiter.acquire(1)
        assert 0.09 < time.monotonic() - started < 1.0
        # When a slot frees is unknowable: a one-second hint, and no bucket to report.
        assert caught.value.headers == {"retry-after": "1", "retry-after-ms": "1000"}
        assert "1 concurrent requests" in caught.value.message
        assert_idle(limiter, in_flight=1)
        held.release()
        admitted_at_once(limiter.acquire(1)).release()
        assert_idle(limiter, in_flight=0)

    run(main)


def test_waiters_are_admitted_first_in_first_out() -> None:
    async def main() -> None:
        limiter = Limiter("primary", RateLimit(max_concurrent=1, max_wait=DEADLINE))
        held = await limiter.acquire(1)
        first = asyncio.create_task(limiter.acquire(1))
        await until(lambda: limiter.snapshot()["waiters"] == 1)
        second = asyncio.create_task(limiter.acquire(1))
        await until(lambda: limiter.snapshot()["waiters"] == 2)
        held.release()
        permit = await first
        assert not second.done()
        # A newcomer does not jump the queue, even when a slot is free at the moment.
        permit.release()
        late = asyncio.create_task(limiter.acquire(1))
        (await second).release()
        (await late).release()
        assert_idle(limiter, in_flight=0)

    run(main)


def test_max_waiters_refusal_is_immediate() -> None:
    async def main() -> None:
        limiter = Limiter("primary", RateLimit(max_concurrent=1, max_waiters=2, max_wait=60))
        held = await limiter.acquire(1)
        waiting = [asyncio.create_task(limiter.acquire(1)) for _ in range(2)]
        await until(lambda: limiter.snapshot()["waiters"] == 2)
        refusal = refused_at_once(limiter.acquire(1))
        assert "2 requests are already waiting" in refusal.message
        assert refusal.headers["retry-after"] == "1"
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        assert_idle(limiter, in_flight=1)
        held.release()

    run(main)


def test_max_wait_zero_never_queues() -> None:
    async def main() -> None:
        limiter = Limiter("primary", RateLimit(max_concurrent=1, max_wait=0))
        held = admitted_at_once(limiter.acquire(1))
        refused_at_once(limiter.acquire(1))
        assert_idle(limiter, in_flight=1)
        held.release()

    run(main)


# Cancellation


def test_cancelled_waiter_leaves_no_trace() -> None:
    async def main() -> None:
        limiter = Limiter(
            "primary", RateLimit(max_concurrent=1, tokens_per_minute=1000, max_wait=DEADLINE)
        )
        held = await limiter.acquire(100)
        waiter = asyncio.create_task(limiter.acquire(300))
        await until(lambda: limiter.snapshot()["waiters"] == 1)
        assert limiter._queued_tokens == 300
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert_idle(limiter, in_flight=1)
        assert limiter.snapshot()["remaining_tokens"] == 900
        held.release()
        admitted_at_once(limiter.acquire(1)).release()
        assert_idle(limiter, in_flight=0)

    run(main)


def test_waiter_cancelled_after_admission_gives_its_capacity_back() -> None:
    async def main() -> None:
        clock = Clock()
        limiter = Limiter(
            "primary",
            RateLimit(requests_per_minute=100, max_concurrent=1, max_wait=DEADLINE),
            clock=clock,
        )
        held = await limiter.acquire(1)
        waiter = asyncio.create_task(limiter.acquire(1))
        await until(lambda: limiter.snapshot()["waiters"] == 1)
        held.release()  # admits the waiter: its slot and request are taken for it ...
        assert limiter.snapshot()["in_flight"] == 1
        assert limiter.snapshot()["remaining_requests"] == 98
        waiter.cancel()  # ... and it is cancelled before it resumes
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert_idle(limiter, in_flight=0)
        assert limiter.snapshot()["remaining_requests"] == 99

    run(main)


# Tokens per minute


def test_tokens_are_estimated_then_reconciled() -> None:
    async def main() -> None:
        clock = Clock()
        limiter = Limiter("primary", RateLimit(tokens_per_minute=1000, max_wait=0.5), clock=clock)
        first = admitted_at_once(limiter.acquire(600))
        assert limiter.snapshot()["remaining_tokens"] == 400
        refusal = refused_at_once(limiter.acquire(600))
        # 200 tokens short at 1000 a minute: 12 s, more than max_wait, so no wait at all.
        assert refusal.headers["retry-after"] == "12"
        assert refusal.headers["retry-after-ms"] == "12000"
        assert refusal.headers["x-ratelimit-limit-tokens"] == "1000"
        assert refusal.headers["x-ratelimit-remaining-tokens"] == "400"
        assert refusal.headers["x-ratelimit-reset-tokens"] == "36s"
        assert "1000 tokens per minute" in refusal.message
        first.release(used_tokens=100)  # overestimated: 500 given back
        assert limiter.snapshot()["remaining_tokens"] == 900
        second = admitted_at_once(limiter.acquire(600))
        second.release(used_tokens=900)  # underestimated: 300 more charged
        assert limiter.snapshot()["remaining_tokens"] == 0
        second.release(used_tokens=0)  # idempotent: no second refund, no second slot freed
        assert limiter.snapshot() == {
            "requests_per_minute": None,
            "tokens_per_minute": 1000,
            "max_concurrent": None,
            "remaining_requests": None,
            "remaining_tokens": 0,
            "in_flight": 0,
            "waiters": 0,
            "paused_for": 0.0,
        }
        clock.advance(6)  # a tenth of a minute drains a tenth of the limit
        assert limiter.snapshot()["remaining_tokens"] == 100
        third = admitted_at_once(limiter.acquire(50))
        third.release(used_tokens=0)
        assert limiter.snapshot()["remaining_tokens"] == 100
        fourth = admitted_at_once(limiter.acquire(10))
        clock.advance(60)
        fourth.release(used_tokens=0)  # a refund never goes below empty
        assert limiter.snapshot()["remaining_tokens"] == 1000

    run(main)


def test_usage_beyond_the_limit_is_a_debt_later_requests_wait_out() -> None:
    async def main() -> None:
        clock = Clock()
        limiter = Limiter("primary", RateLimit(tokens_per_minute=1000, max_wait=0.5), clock=clock)
        admitted_at_once(limiter.acquire(100)).release(used_tokens=1600)
        assert limiter.snapshot()["remaining_tokens"] == 0
        refusal = refused_at_once(limiter.acquire(0))
        assert refusal.headers["retry-after-ms"] == "36000"  # 600 over the limit
        assert refusal.headers["x-ratelimit-reset-tokens"] == "1m36s"
        clock.advance(36)
        admitted_at_once(limiter.acquire(0)).release()

    run(main)


def test_request_that_can_never_fit_is_refused_at_once() -> None:
    async def main() -> None:
        limiter = Limiter("primary", RateLimit(tokens_per_minute=100, max_wait=60))
        refusal = refused_at_once(limiter.acquire(101))
        assert "about 101 tokens" in refusal.message
        assert "retry-after" not in refusal.headers  # waiting cannot help
        assert refusal.headers["x-ratelimit-limit-tokens"] == "100"
        assert refusal.headers["x-ratelimit-remaining-tokens"] == "100"
        assert refusal.headers["x-ratelimit-reset-tokens"] == "0s"
        admitted_at_once(limiter.acquire(100)).release()

    run(main)


def test_waiter_wakes_when_the_bucket_has_drained_enough() -> None:
    async def main() -> None:
        # 60000 a minute drains 1000 tokens a second: 50 tokens take 50 ms.
        limiter = Limiter("primary", RateLimit(tokens_per_minute=60_000, max_wait=1.0))
        loop = asyncio.get_running_loop()
        (await limiter.acquire(60_000)).release()
        started = time.monotonic()
        waiter = asyncio.create_task(limiter.acquire(50))
        await until(lambda: limiter.snapshot()["waiters"] == 1)
        # It sleeps on one timer set for when there is room, not in a polling loop.
        timer = limiter._timer
        assert timer is not None
        assert 0.02 < timer.when() - loop.time() <= 0.05
        (await waiter).release()
        assert 0.04 < time.monotonic() - started < 0.9
        assert_idle(limiter, in_flight=0)

    run(main)


def test_queue_ahead_counts_towards_the_wait() -> None:
    async def main() -> None:
        # 600 a minute: 10 tokens a second. Each waiter needs 4 tokens (0.4 s) after the one
        # ahead of it, so the second cannot make a max_wait of 0.5 s and is refused at once.
        limiter = Limiter("primary", RateLimit(tokens_per_minute=600, max_wait=0.5))
        (await limiter.acquire(600)).release()
        first = asyncio.create_task(limiter.acquire(4))
        await until(lambda: limiter.snapshot()["waiters"] == 1)
        refusal = refused_at_once(limiter.acquire(4))
        assert 700 < int(refusal.headers["retry-after-ms"]) <= 800
        (await first).release()
        assert_idle(limiter, in_flight=0)

    run(main)


def test_small_request_does_not_overtake_a_waiting_large_one() -> None:
    async def main() -> None:
        clock = Clock()
        limiter = Limiter("primary", RateLimit(tokens_per_minute=1000, max_wait=60), clock=clock)
        admitted_at_once(limiter.acquire(900)).release()
        large = asyncio.create_task(limiter.acquire(150))  # fits in 3 s
        await until(lambda: limiter.snapshot()["waiters"] == 1)
        small = asyncio.create_task(limiter.acquire(50))  # would fit now, but queues behind
        await until(lambda: limiter.snapshot()["waiters"] == 2)
        assert limiter.snapshot()["remaining_tokens"] == 100
        # A pause refuses both: the small one is not admitted when the large one leaves.
        limiter.pause(1)
        for task in (large, small):
            with pytest.raises(RateLimited):
                await task
        assert_idle(limiter, in_flight=0)
        assert limiter.snapshot()["remaining_tokens"] == 100

    run(main)


# Pauses


def test_pause_refuses_at_once_with_the_remaining_pause() -> None:
    async def main() -> None:
        clock = Clock()
        limiter = Limiter("primary", RateLimit(requests_per_minute=100, max_wait=0.5), clock=clock)
        limiter.pause(2.5)
        assert limiter.paused_for() == 2.5
        refusal = refused_at_once(limiter.acquire(1))
        assert refusal.headers["retry-after"] == "3"
        assert refusal.headers["retry-after-ms"] == "2500"
        assert refusal.headers["x-ratelimit-remaining-requests"] == "100"
        assert "answered 429" in refusal.message
        clock.advance(1)
        assert refused_at_once(limiter.acquire(1)).headers["retry-after-ms"] == "1500"
        limiter.pause(0.5)  # a shorter pause does not cut the longer one short
        assert limiter.paused_for() == 1.5
        clock.advance(1.5)
        assert limiter.paused_for() == 0
        admitted_at_once(limiter.acquire(1)).release()

    run(main)


def test_pause_is_capped() -> None:
    async def main() -> None:
        clock = Clock()
        limiter = Limiter("primary", None, clock=clock)
        limiter.pause(3600)
        assert limiter.paused_for() == MAX_PAUSE == 60
        refusal = refused_at_once(limiter.acquire(1))
        assert refusal.headers == {"retry-after": "60", "retry-after-ms": "60000"}
        limiter.pause(0)
        limiter.pause(-1)
        limiter.pause(float("nan"))
        assert limiter.paused_for() == 60
        clock.advance(60)
        admitted_at_once(limiter.acquire(1)).release()

    run(main)


def test_pause_refuses_the_requests_already_waiting() -> None:
    async def main() -> None:
        clock = Clock()
        limiter = Limiter("primary", RateLimit(max_concurrent=1, max_wait=60), clock=clock)
        held = await limiter.acquire(1)
        waiting = [asyncio.create_task(limiter.acquire(1)) for _ in range(3)]
        await until(lambda: limiter.snapshot()["waiters"] == 3)
        limiter.pause(1)
        async with asyncio.timeout(DEADLINE):  # at once, not after their max_wait
            for task in waiting:
                with pytest.raises(RateLimited) as caught:
                    await task
                assert caught.value.headers["retry-after-ms"] == "1000"
        held.release()  # frees the slot, but nobody is waiting any more
        assert_idle(limiter, in_flight=0)

    run(main)


# Unlimited


def test_unlimited_admits_without_suspending_and_honours_pauses() -> None:
    async def main() -> None:
        clock = Clock()
        for settings in (None, RateLimit(max_wait=0)):  # no limit set is no limit
            limiter = Limiter("local", settings, clock=clock)
            permits = [admitted_at_once(limiter.acquire(10**9)) for _ in range(1000)]
            assert limiter.snapshot()["in_flight"] == 1000
            for permit in permits:
                permit.release(used_tokens=5)
            assert limiter.snapshot() == {
                "requests_per_minute": None,
                "tokens_per_minute": None,
                "max_concurrent": None,
                "remaining_requests": None,
                "remaining_tokens": None,
                "in_flight": 0,
                "waiters": 0,
                "paused_for": 0.0,
            }
            limiter.pause(1)
            refused_at_once(limiter.acquire(1))
            clock.advance(1)
            admitted_at_once(limiter.acquire(1)).release()
        assert not others()

    run(main)


def test_unlimited_acquire_is_cheap() -> None:
    async def main() -> None:
        limiter = Limiter("local", None)
        started = time.perf_counter()
        for _ in range(20_000):
            (await limiter.acquire(100)).release(used_tokens=120)
        # A few microseconds each on any machine; 50 us each would mean a lock, task or timer.
        assert time.perf_counter() - started < 1.0

    run(main)


def test_unlimited_limiter_needs_no_loop_but_a_limited_one_does() -> None:
    limiter = Limiter("local", None, clock=Clock())
    admitted_at_once(limiter.acquire(1)).release()
    with pytest.raises(RuntimeError):
        Limiter("primary", RateLimit(requests_per_minute=1), clock=Clock())
    with pytest.raises(RuntimeError):
        Limiter("local", None)  # the default clock is the running loop's


# Headers and estimates


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-1, "0s"),
        (0.0001, "1ms"),
        (0.012, "12ms"),
        (0.999, "999ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (1.25, "1.25s"),
        (1.2501, "1.251s"),
        (59.9991, "1m0s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (361.5, "6m1.5s"),
        (3600, "1h0m0s"),
        (3661, "1h1m1s"),
    ],
)
def test_reset_is_written_as_openai_writes_it(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


def test_retry_after_rounds_up() -> None:
    async def main() -> None:
        clock = Clock()
        limiter = Limiter("primary", None, clock=clock)
        limiter.pause(0.0001)
        headers = refused_at_once(limiter.acquire(1)).headers
        assert headers == {"retry-after": "1", "retry-after-ms": "1"}
        clock.advance(1)
        limiter.pause(1.2)
        headers = refused_at_once(limiter.acquire(1)).headers
        assert headers == {"retry-after": "2", "retry-after-ms": "1200"}

    run(main)


def test_estimate_counts_text_at_four_characters_a_token() -> None:
    one = {"messages": [{"role": "user", "content": "x" * 400}]}
    assert estimate_tokens(one) == 3 + 4 + 100
    two = {"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "abcde"}]}
    assert estimate_tokens(two) == 3 + 2 * 4 + 2  # 6 characters round up to 2 tokens
    assert estimate_tokens({}) == 3
    assert estimate_tokens({"messages": "nonsense"}) == 3
    assert estimate_tokens({"messages": [None, 7]}) == 3 + 2 * 4


def test_estimate_counts_parts_tools_and_images() -> None:
    text = {"messages": [{"role": "user", "content": [{"type": "text", "text": "y" * 400}]}]}
    base = estimate_tokens(text)
    assert base == 3 + 4 + 100
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100_000}}
    with_image = {"messages": [{"role": "user", "content": [image]}]}
    assert estimate_tokens(with_image) == 3 + 4 + 765  # a fixed amount, whatever its size
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert estimate_tokens({**text, "tools": tools}) > base
    calls = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "z" * 400}}],
    }
    assert estimate_tokens({"messages": [calls]}) > 3 + 4 + 100
