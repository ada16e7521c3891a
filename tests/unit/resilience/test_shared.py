"""gateway/resilience/shared.py and redis_store.py against a real redis-server: the script's
arithmetic (burst, drain, both buckets at once, reservations, reconciling, expiry), limiters
sharing a bucket, and the failure policies.

The script's arithmetic is checked on a clock the test passes in (the script's `now`), so no
test waits for a bucket to drain; the limiter tests use Redis's own clock with limits that
drain fast (thousands of tokens a second). Each test has its own event loop and an empty
database.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgspec
import pytest

from gateway.config import Config, LimitsConfig, RateLimit, Secret
from gateway.errors import LimitsBackendUnavailable, RateLimited
from gateway.resilience.limiter import Limiter
from gateway.resilience.redis_store import (
    BackendObserver,
    RedisStore,
    Verdict,
    aclose_stores,
    store_for,
)
from gateway.resilience.shared import SharedLimiter
from gateway.runtime import new_limiter
from tests.processes import RedisServer, free_port

NOW = 1_700_000_000.0  # the clock passed to the script, in seconds
RPM = ["gateway:rl:{upstream:u}:rpm"]
BOTH = ["gateway:rl:{upstream:u}:rpm", "gateway:rl:{upstream:u}:tpm"]
PASSWORD = "hunter2-redis-secret"


_STORES: list[RedisStore] = []  # what `new_store()` opened, for `run()` to close


def run(main: Callable[[], Awaitable[None]]) -> None:
    async def guarded() -> None:
        async with asyncio.timeout(10):
            try:
                await main()
            finally:
                await aclose_stores()
                while _STORES:
                    await _STORES.pop().aclose()

    asyncio.run(guarded())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis"), password=PASSWORD) as redis:
        yield redis


@pytest.fixture
def redis(server: RedisServer) -> RedisServer:
    with server.client() as client:
        client.flushdb()
    return server


class Observer:
    """What `Metrics` hears of the store."""

    def __init__(self) -> None:
        self.changes: list[bool] = []
        self.failures = 0

    def limits_backend_changed(self, degraded: bool) -> None:
        self.changes.append(degraded)

    def limits_backend_failed(self) -> None:
        self.failures += 1


def limits(url: str, **settings: Any) -> LimitsConfig:
    return LimitsConfig(backend="redis", redis_url=Secret(url), **settings)


def new_store(url: str, *observers: BackendObserver, **settings: Any) -> RedisStore:
    watched: weakref.WeakSet[BackendObserver] = weakref.WeakSet(observers)
    store = RedisStore(limits(url, **settings), watched)
    _STORES.append(store)
    return store


def shared(store: RedisStore, name: str = "u", **settings: Any) -> SharedLimiter:
    return SharedLimiter("upstream", name, RateLimit(**settings), store)


def fits(verdict: Verdict | None) -> Verdict:
    """The verdict of a request the script admitted."""
    assert verdict is not None
    assert verdict.admitted
    return verdict


def refused(verdict: Verdict | None) -> Verdict:
    """The verdict of a request the script refused."""
    assert verdict is not None
    assert not verdict.admitted
    return verdict


# ------------------------------------------------------------------ the script


def test_a_minutes_worth_bursts_then_the_next_waits_for_one_to_drain(redis):
    async def main() -> None:
        store = new_store(redis.url)
        for _ in range(60):
            assert fits(await store.admit(RPM, [60], [1], 0.0, now=NOW)).wait == 0
        full = refused(await store.admit(RPM, [60], [1], 0.0, now=NOW))
        assert full.wait == pytest.approx(1.0)  # one request's worth drains in 1 s
        assert full.resets == pytest.approx((60.0,))  # a full bucket empties in a minute
        # Refusing charged nothing: half a second later it still lacks half a second.
        later = refused(await store.admit(RPM, [60], [1], 0.0, now=NOW + 0.5))
        assert later.wait == pytest.approx(0.5)
        fits(await store.admit(RPM, [60], [1], 0.0, now=NOW + 1.0))
        # 30 s on, half the bucket has drained: 30 more fit at once, not 31.
        for _ in range(30):
            fits(await store.admit(RPM, [60], [1], 0.0, now=NOW + 31.0))
        refused(await store.admit(RPM, [60], [1], 0.0, now=NOW + 31.0))

    run(main)


def test_both_buckets_are_checked_and_charged_together(redis):
    async def main() -> None:
        store = new_store(redis.url)
        first = fits(await store.admit(BOTH, [100, 1000], [1, 600], 0.0, now=NOW))
        assert first.resets == pytest.approx((0.6, 36.0))
        # 600 more tokens do not fit: 200 over the limit drain in 12 s. The requests bucket
        # had room but is not charged either.
        second = refused(await store.admit(BOTH, [100, 1000], [1, 600], 0.0, now=NOW))
        assert second.wait == pytest.approx(12.0)
        assert second.resets == pytest.approx((0.6, 36.0))
        small = fits(await store.admit(BOTH, [100, 1000], [1, 400], 0.0, now=NOW))
        assert small.resets == pytest.approx((1.2, 60.0))

    run(main)


def test_a_request_within_max_wait_reserves_its_capacity_ahead(redis):
    async def main() -> None:
        store = new_store(redis.url)
        for _ in range(60):
            await store.admit(RPM, [60], [1], 0.0, now=NOW)
        waits = []
        for _ in range(3):
            verdict = await store.admit(RPM, [60], [1], 2.0, now=NOW)
            assert verdict is not None
            waits.append((verdict.admitted, round(verdict.wait, 6)))
        # The 61st and 62nd fit within 2 s (charged now, to sleep it off); the 63rd does not.
        assert waits == [(True, 1.0), (True, 2.0), (False, 3.0)]

    run(main)


def test_adjust_charges_a_debt_and_gives_back_never_below_empty(redis):
    async def main() -> None:
        store = new_store(redis.url)
        tpm = BOTH[1:]
        await store.admit(tpm, [6000], [100], 0.0, now=NOW)
        assert await store.adjust(tpm, [6000], [7000], now=NOW) == pytest.approx((71.0,))
        # Over the limit: a debt, refused until it drains below a minute's worth.
        debt = refused(await store.admit(tpm, [6000], [1], 0.0, now=NOW))
        assert debt.wait == pytest.approx(11.01)
        assert await store.adjust(tpm, [6000], [-100_000], now=NOW) == (0.0,)
        with redis.client() as client:
            assert client.exists(tpm[0]) == 0  # empty: nothing kept

    run(main)


def test_keys_are_namespaced_and_expire_once_their_bucket_is_empty(redis):
    async def main() -> None:
        store = new_store(redis.url)
        limiter = shared(store, requests_per_minute=60, tokens_per_minute=6000)
        await limiter.acquire(600)
        with redis.client() as client:
            keys = sorted(k.decode() for k in client.keys("*"))
            assert keys == BOTH
            # Empty in 1 s (rpm) and 6 s (tpm); each key lives until then, plus a second.
            assert 1_500 < client.pttl(BOTH[0]) <= 2_000
            assert 6_500 < client.pttl(BOTH[1]) <= 7_000

    run(main)


# ------------------------------------------------------------------ the limiter


def test_two_limiters_with_their_own_pools_share_one_bucket(redis):
    async def main() -> None:
        one, two = new_store(redis.url), new_store(redis.url)  # as two replicas
        a, b = shared(one, requests_per_minute=4, max_wait=0), shared(two, requests_per_minute=4)
        for limiter in (a, b, a, b):
            await limiter.acquire(0)
        with pytest.raises(RateLimited) as caught:
            await a.acquire(0)
        headers = caught.value.headers
        assert headers["retry-after"] == "15"  # a quarter of a minute: one request's worth
        assert 14_900 < int(headers["retry-after-ms"]) <= 15_000
        assert headers["x-ratelimit-limit-requests"] == "4"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"].startswith("59.9")
        assert "4 requests per minute" in caught.value.message
        assert a.snapshot()["remaining_requests"] == 0
        assert b.snapshot()["remaining_requests"] == 0  # what b saw last, after the 4th

    run(main)


def test_refusals_carry_the_same_headers_as_the_local_limiter(redis):
    async def main() -> None:
        settings = RateLimit(requests_per_minute=2, tokens_per_minute=1000, max_wait=0)
        local = Limiter("u", settings)
        remote = SharedLimiter("upstream", "u", settings, new_store(redis.url))
        refusals = []
        for limiter in (local, remote):
            await limiter.acquire(10)
            await limiter.acquire(10)
            with pytest.raises(RateLimited) as caught:
                await limiter.acquire(10)
            refusals.append(caught.value.headers)
        assert refusals[0].keys() == refusals[1].keys()
        for name in ("retry-after", "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens"):
            assert refusals[0][name] == refusals[1][name]
        too_large = [Limiter("u", settings), remote]
        for limiter in too_large:
            with pytest.raises(RateLimited) as caught:
                await limiter.acquire(1001)
            assert "retry-after" not in caught.value.headers  # waiting cannot help

    run(main)


def test_a_bounded_wait_sleeps_off_its_reservation(redis):
    async def main() -> None:
        limiter = shared(new_store(redis.url), tokens_per_minute=6000, max_wait=0.5)
        await limiter.acquire(6000)  # full: drains 100 tokens a second
        started = time.monotonic()
        permit = await limiter.acquire(10)  # fits in 0.1 s
        waited = time.monotonic() - started
        assert 0.09 < waited < 0.4
        assert limiter.snapshot()["in_flight"] == 2
        permit.release(10)
        with pytest.raises(RateLimited):
            await limiter.acquire(100)  # 1.1 s away: beyond max_wait

    run(main)


def test_a_wait_cancelled_gives_its_reservation_back(redis):
    async def main() -> None:
        store = new_store(redis.url)
        limiter = shared(store, tokens_per_minute=6000, max_wait=5)
        await limiter.acquire(6000)
        waiting = asyncio.create_task(limiter.acquire(300))  # 3 s away
        await until(lambda: limiter.snapshot()["waiters"] == 1)
        assert await pttl(redis, BOTH[1]) > 63_000  # 3 s of reservation on the full minute
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await until_pttl(redis, BOTH[1], lambda ms: ms <= 61_000)
        assert limiter.snapshot()["waiters"] == 0

    run(main)


def test_release_reconciles_the_estimate_with_the_tokens_used(redis):
    async def main() -> None:
        limiter = shared(new_store(redis.url), tokens_per_minute=60_000)
        permit = await limiter.acquire(1000)  # empty in 1 s
        permit.release(3000)  # 2000 more than estimated: empty in 3 s
        await until_pttl(redis, BOTH[1], lambda ms: 3_500 < ms <= 4_000)
        permit = await limiter.acquire(3000)  # about 6 s in all
        permit.release(1000)  # back to about 4 s
        await until_pttl(redis, BOTH[1], lambda ms: 4_500 < ms <= 5_000)

    run(main)


def test_max_concurrent_and_pauses_stay_in_the_process(redis):
    async def main() -> None:
        store = new_store(redis.url)
        limiter = shared(store, requests_per_minute=100, max_concurrent=1, max_wait=0)
        permit = await limiter.acquire(0)
        with pytest.raises(RateLimited) as caught:
            await limiter.acquire(0)
        assert "1 concurrent requests" in caught.value.message
        permit.release()
        (await limiter.acquire(0)).release()
        limiter.pause(5)
        with pytest.raises(RateLimited) as caught:
            await limiter.acquire(0)
        assert caught.value.headers["retry-after"] == "5"
        assert store_requests(redis) == 2  # the refusals never reached Redis
        limiter.resume()
        await limiter.acquire(0)

    run(main)


def store_requests(redis: RedisServer) -> int:
    """Requests charged to the requests bucket (0.6 s of it each, at 100 a minute)."""
    with redis.client() as client:
        value = client.get(BOTH[0])
        now = client.time()
    if value is None:
        return 0
    left = float(value) - (float(now[0]) + float(now[1]) / 1e6)
    return round(left / 0.6)


# ------------------------------------------------------------------ Redis unreachable


def test_local_policy_counts_locally_while_redis_is_down_and_recovers(tmp_path, caplog):
    caplog.set_level(logging.INFO, "gateway.limits")
    redis = RedisServer(tmp_path, password=PASSWORD)  # its port, not listening yet

    async def main() -> None:
        observer = Observer()
        store = new_store(redis.url, observer, retry_interval=0.2)
        limiter = shared(store, requests_per_minute=2, max_wait=0)
        started = time.monotonic()
        for _ in range(2):
            (await limiter.acquire(0)).release()
        assert time.monotonic() - started < 0.5  # a refused connection fails fast
        with pytest.raises(RateLimited):  # the local limiter of the same settings
            await limiter.acquire(0)
        assert observer.changes == [True]
        assert observer.failures == 1  # one try; then none until retry_interval
        assert limiter.snapshot()["degraded"] == 1
        redis.start()
        try:
            await asyncio.sleep(0.25)  # retry_interval: the store waits, not the test
            await limiter.acquire(0)  # Redis again: an empty bucket there
            assert observer.changes == [True, False]
            assert limiter.snapshot()["degraded"] == 0
        finally:
            redis.stop()

    run(main)
    records = [r for r in caplog.records if r.name == "gateway.limits"]
    assert [r.getMessage() for r in records] == [
        "shared rate limits degraded: redis unreachable",
        "shared rate limits recovered: redis reachable",
    ]
    degraded: Any = records[0]
    assert degraded.redis == f"127.0.0.1:{redis.port}/0"
    assert "ConnectionError" in degraded.error
    text = caplog.text + repr([r.__dict__ for r in caplog.records])
    assert PASSWORD not in text


def test_deny_policy_refuses_with_503_while_redis_is_down():
    async def main() -> None:
        url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
        limiter = shared(
            new_store(url, on_backend_failure="deny", retry_interval=2.0), requests_per_minute=5
        )
        with pytest.raises(LimitsBackendUnavailable) as caught:
            await limiter.acquire(0)
        error = caught.value
        assert (error.status, error.code, error.fallback) == (
            503,
            "rate_limit_backend_unavailable",
            True,
        )
        assert error.headers["retry-after"] == "2"
        assert PASSWORD not in error.message

    run(main)


def test_a_stalled_redis_times_out_instead_of_stalling_requests(tmp_path):
    with RedisServer(tmp_path) as redis:

        async def main() -> None:
            store = new_store(redis.url, redis_timeout=0.05)
            limiter = shared(store, requests_per_minute=100)
            (await limiter.acquire(0)).release()  # connected
            os.kill(redis.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                (await limiter.acquire(0)).release()  # admitted locally
                assert time.monotonic() - started < 0.3
                assert store.degraded
                started = time.monotonic()
                (await limiter.acquire(0)).release()  # degraded: Redis is not asked
                assert time.monotonic() - started < 0.01
            finally:
                os.kill(redis.pid, signal.SIGCONT)

        run(main)


# ------------------------------------------------------------------ new_limiter


def test_new_limiter_counts_in_redis_only_with_the_redis_backend_and_rate_limits(redis):
    async def main() -> None:
        rates = RateLimit(requests_per_minute=10)
        memory = Config()
        remote = msgspec.structs.replace(memory, limits=limits(redis.url))
        assert type(new_limiter(memory, "upstream", "u", rates)) is Limiter
        assert type(new_limiter(remote, "upstream", "u", None)) is Limiter
        slots = RateLimit(max_concurrent=3)
        assert type(new_limiter(remote, "key", "k", slots)) is Limiter
        one = new_limiter(remote, "upstream", "u", rates)
        two = new_limiter(remote, "key", "team-a", RateLimit(tokens_per_minute=10))
        assert isinstance(one, SharedLimiter)
        assert isinstance(two, SharedLimiter)
        assert one._store is two._store is store_for(remote.limits)  # one pool per loop
        await two.acquire(5)
        with redis.client() as client:
            assert client.exists("gateway:rl:{key:team-a}:tpm") == 1

    run(main)


# ------------------------------------------------------------------ helpers


async def until(condition: Callable[[], bool], what: str = "condition") -> None:
    deadline = time.monotonic() + 3
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def pttl(redis: RedisServer, key: str) -> int:
    with redis.client() as client:
        ttl: int = client.pttl(key)
        return ttl


async def until_pttl(redis: RedisServer, key: str, condition: Callable[[int], bool]) -> None:
    """Wait for the fire-and-forget adjustment to land: the key's time to live matches."""
    deadline = time.monotonic() + 3
    while not condition(ms := await pttl(redis, key)):
        if time.monotonic() > deadline:
            raise AssertionError(f"{key} lives {ms} ms")
        await asyncio.sleep(0.005)
