"""The circuit breaker on an injected clock: counting, timing, half-open slots, stragglers."""

from __future__ import annotations

import asyncio
import logging

import pybreaker
import pytest

from gateway.config import BreakerSettings
from gateway.errors import CircuitOpen
from gateway.resilience.breaker import Breaker, Trial


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Change = tuple[str, str, str]


def make(
    fail_max: int = 3, reset_timeout: float = 30.0, half_open_max_calls: int = 1
) -> tuple[Breaker, Clock, list[Change]]:
    clock = Clock()
    changes: list[Change] = []
    settings = BreakerSettings(
        fail_max=fail_max, reset_timeout=reset_timeout, half_open_max_calls=half_open_max_calls
    )
    breaker = Breaker(
        "primary", settings, clock=clock, on_change=lambda *c: changes.append((c[0], c[1], c[2]))
    )
    return breaker, clock, changes


def fail(breaker: Breaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.admit().failure()


def trip(breaker: Breaker) -> None:
    fail(breaker, breaker._circuit.fail_max)
    assert state(breaker) == "open"


def state(breaker: Breaker) -> str:
    """`breaker.state`, re-read: each read may move it (mypy would narrow the property)."""
    return breaker.state


def pybreaker_state(breaker: Breaker) -> str:
    state: str = breaker._circuit.current_state
    return state


def test_opens_after_exactly_fail_max_consecutive_failures():
    breaker, _, changes = make(fail_max=3)
    fail(breaker, 2)
    assert state(breaker) == "closed"
    assert breaker._circuit.fail_counter == 2
    breaker.admit().failure()
    assert state(breaker) == "open"
    assert pybreaker_state(breaker) == pybreaker.STATE_OPEN
    assert changes == [("primary", "closed", "open")]


def test_success_in_between_resets_the_count():
    breaker, _, _ = make(fail_max=3)
    fail(breaker, 2)
    breaker.admit().success()
    assert breaker._circuit.fail_counter == 0
    fail(breaker, 2)
    assert state(breaker) == "closed"
    fail(breaker)
    assert state(breaker) == "open"


def test_release_neither_counts_nor_resets():
    breaker, _, _ = make(fail_max=3)
    fail(breaker, 2)
    breaker.admit().release()
    with breaker.admit():
        pass
    assert breaker._circuit.fail_counter == 2
    fail(breaker)
    assert state(breaker) == "open"


def test_rejects_while_open_with_retry_after():
    breaker, clock, _ = make(fail_max=1, reset_timeout=30.0)
    trip(breaker)
    clock.now += 10.4
    assert breaker.retry_after() == pytest.approx(19.6)
    with pytest.raises(CircuitOpen) as caught:
        breaker.admit()
    error = caught.value
    assert (error.status, error.code, error.fallback) == (503, "circuit_open", True)
    assert error.headers == {"retry-after": "20"}
    assert "primary" in error.message
    assert breaker.rejections == 1
    clock.now += 19.5  # 0.1 s left: rounds up to the 1 s minimum
    with pytest.raises(CircuitOpen) as caught:
        breaker.admit()
    assert caught.value.headers == {"retry-after": "1"}
    assert breaker.rejections == 2
    assert state(breaker) == "open"


def test_half_open_after_reset_timeout_on_the_injected_clock():
    breaker, clock, changes = make(fail_max=1, reset_timeout=30.0)
    trip(breaker)
    clock.now += 29.999
    assert state(breaker) == "open"
    clock.now += 0.001
    assert breaker.retry_after() == 0.0
    assert state(breaker) == "half_open"
    assert pybreaker_state(breaker) == pybreaker.STATE_HALF_OPEN
    assert changes == [("primary", "closed", "open"), ("primary", "open", "half_open")]


def test_open_time_ignores_the_wall_clock(monkeypatch: pytest.MonkeyPatch):
    # pybreaker's own open state compares datetime.now(); the breaker must not.
    breaker, clock, _ = make(fail_max=1, reset_timeout=30.0)
    trip(breaker)
    assert breaker._storage.opened_at is not None
    breaker._storage._opened_at = breaker._storage.opened_at.replace(year=2000)  # wall clock jump
    assert state(breaker) == "open"
    clock.now += 30
    assert state(breaker) == "half_open"


async def _race(breaker: Breaker, tasks: int) -> tuple[int, int, asyncio.Event]:
    """`tasks` tasks call admit() at once; the admitted ones hold their trial until released."""
    gate = asyncio.Event()
    arrived = asyncio.Event()
    admitted = rejected = 0

    async def request() -> None:
        nonlocal admitted, rejected
        try:
            trial = breaker.admit()
        except CircuitOpen:
            rejected += 1
            if admitted + rejected == tasks:
                arrived.set()
            return
        admitted += 1
        if admitted + rejected == tasks:
            arrived.set()
        await gate.wait()  # the upstream call
        trial.success()

    async with asyncio.TaskGroup() as group:
        for _ in range(tasks):
            group.create_task(request())
        await asyncio.wait_for(arrived.wait(), 5)
        counts = (admitted, rejected)
        assert state(breaker) == "half_open"
        gate.set()
    return counts[0], counts[1], gate


@pytest.mark.parametrize("max_calls", [1, 3])
def test_half_open_admits_exactly_max_calls_of_100_concurrent(max_calls: int):
    breaker, clock, changes = make(fail_max=2, reset_timeout=5.0, half_open_max_calls=max_calls)
    trip(breaker)
    clock.now += 5
    admitted, rejected, _ = asyncio.run(_race(breaker, 100))
    assert (admitted, rejected) == (max_calls, 100 - max_calls)
    assert breaker.rejections == 100 - max_calls
    assert state(breaker) == "closed"
    assert pybreaker_state(breaker) == pybreaker.STATE_CLOSED
    assert [c[1:] for c in changes] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_half_open_refusal_carries_retry_after():
    breaker, clock, _ = make(fail_max=1, reset_timeout=5.0)
    trip(breaker)
    clock.now += 5
    trial = breaker.admit()
    assert breaker.retry_after() > 0
    with pytest.raises(CircuitOpen) as caught:
        breaker.admit()
    assert caught.value.headers == {"retry-after": "1"}
    trial.release()
    assert breaker.retry_after() == 0.0


def test_trial_success_closes():
    breaker, clock, _ = make(fail_max=2, reset_timeout=5.0)
    trip(breaker)
    clock.now += 5
    breaker.admit().success()
    assert state(breaker) == "closed"
    assert breaker._circuit.fail_counter == 0
    fail(breaker)  # a fresh count: one failure does not re-open
    assert state(breaker) == "closed"


def test_trial_failure_reopens_for_a_fresh_reset_timeout():
    breaker, clock, changes = make(fail_max=2, reset_timeout=5.0)
    trip(breaker)
    clock.now += 7  # opened at t, tried at t+7
    breaker.admit().failure()
    assert state(breaker) == "open"
    assert breaker.retry_after() == pytest.approx(5.0)
    clock.now += 4.9
    assert state(breaker) == "open"
    clock.now += 0.1
    assert state(breaker) == "half_open"
    assert [c[1:] for c in changes] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
    ]


def test_cancelled_trial_does_not_count_and_frees_the_slot():
    breaker, clock, changes = make(fail_max=2, reset_timeout=5.0)

    async def hold(entered: asyncio.Event) -> None:
        with breaker.admit() as trial:
            entered.set()
            await asyncio.Event().wait()  # an upstream that never answers
            trial.failure()

    async def cancel_one() -> None:
        entered = asyncio.Event()
        task = asyncio.create_task(hold(entered))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    fail(breaker)
    asyncio.run(cancel_one())  # closed: not a failure
    assert breaker._circuit.fail_counter == 1
    assert state(breaker) == "closed"
    fail(breaker)
    clock.now += 5
    assert state(breaker) == "half_open"
    asyncio.run(cancel_one())  # half-open: neither reopens nor closes, and frees the slot
    assert state(breaker) == "half_open"
    breaker.admit().success()
    assert state(breaker) == "closed"
    assert breaker.rejections == 0
    assert [c[1:] for c in changes] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_first_outcome_wins():
    breaker, _, _ = make(fail_max=2)
    trial = breaker.admit()
    trial.failure()
    trial.failure()
    trial.success()
    assert breaker._circuit.fail_counter == 1
    trial = breaker.admit()
    trial.release()
    trial.failure()
    assert breaker._circuit.fail_counter == 1


def test_stragglers_do_not_touch_an_open_circuit():
    breaker, clock, changes = make(fail_max=2, reset_timeout=10.0)
    late = [breaker.admit() for _ in range(4)]
    late[0].failure()
    late[1].failure()
    assert state(breaker) == "open"
    clock.now += 4
    late[2].failure()  # does not extend the open period
    assert breaker.retry_after() == pytest.approx(6.0)
    late[3].success()  # does not close it
    assert state(breaker) == "open"
    assert len(changes) == 1


def test_stragglers_do_not_decide_a_half_open_circuit():
    breaker, clock, _ = make(fail_max=1, reset_timeout=10.0)
    before = [breaker.admit() for _ in range(3)]
    before[0].failure()
    clock.now += 10
    trial = breaker.admit()
    before[1].success()  # admitted while closed: not the trial
    assert state(breaker) == "half_open"
    before[2].failure()
    assert state(breaker) == "half_open"
    with pytest.raises(CircuitOpen):
        breaker.admit()  # the stragglers freed no slot
    trial.success()
    assert state(breaker) == "closed"


def test_losing_trials_of_a_decided_half_open_change_nothing():
    breaker, clock, _ = make(fail_max=1, reset_timeout=10.0, half_open_max_calls=3)
    trip(breaker)
    clock.now += 10
    trials = [breaker.admit() for _ in range(3)]
    trials[0].failure()
    assert state(breaker) == "open"
    trials[1].success()
    assert state(breaker) == "open"
    assert breaker.retry_after() == pytest.approx(10.0)
    clock.now += 10
    fresh = breaker.admit()
    trials[2].failure()  # from the previous half-open round
    assert state(breaker) == "half_open"
    fresh.success()
    assert state(breaker) == "closed"


def test_old_closed_round_failures_do_not_count_after_recovery():
    breaker, clock, _ = make(fail_max=2, reset_timeout=10.0)
    slow = breaker.admit()
    trip(breaker)
    clock.now += 10
    breaker.admit().success()
    slow.failure()
    assert breaker._circuit.fail_counter == 0
    assert state(breaker) == "closed"


def test_each_transition_is_logged_once(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="gateway.breaker")
    breaker, clock, changes = make(fail_max=1, reset_timeout=1.0)
    trip(breaker)
    clock.now += 1
    breaker.admit().failure()
    clock.now += 1
    breaker.admit().success()
    lines = [
        (vars(r)["upstream"], vars(r)["from"], vars(r)["to"], r.levelname)
        for r in caplog.records
        if r.name == "gateway.breaker"
    ]
    assert lines == [
        ("primary", "closed", "open", "WARNING"),
        ("primary", "open", "half_open", "INFO"),
        ("primary", "half_open", "open", "WARNING"),
        ("primary", "open", "half_open", "INFO"),
        ("primary", "half_open", "closed", "INFO"),
    ]
    assert [("primary", *line[1:3]) for line in lines] == changes


def test_on_change_sees_the_new_state_and_may_fail(caplog: pytest.LogCaptureFixture):
    seen: list[tuple[str, str]] = []
    clock = Clock()

    def on_change(name: str, old: str, new: str) -> None:
        seen.append((new, breaker.state))
        raise RuntimeError("metrics broke")

    breaker = Breaker("primary", BreakerSettings(fail_max=1), clock=clock, on_change=on_change)
    with caplog.at_level(logging.ERROR, logger="gateway.breaker"):
        breaker.admit().failure()
    assert seen == [("open", "open")]
    assert state(breaker) == "open"
    assert pybreaker_state(breaker) == pybreaker.STATE_OPEN
    assert any("on_change failed" in r.getMessage() for r in caplog.records)


def test_closed_admit_takes_no_clock_reading():
    calls = 0

    def clock() -> float:
        nonlocal calls
        calls += 1
        return 0.0

    breaker = Breaker("primary", BreakerSettings(), clock=clock)
    for _ in range(100):
        trial = breaker.admit()
        assert isinstance(trial, Trial)
        trial.success()
    assert calls == 0
