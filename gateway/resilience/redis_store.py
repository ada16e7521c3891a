"""The Redis side of the shared rate limits (`limits.backend: redis`; gateway/resilience/shared.py
has the limiter that uses it): the one Lua script, one connection pool per event loop, and
whether Redis is usable now.

A bucket is kept in Redis as one number: the time, on Redis's clock, at which it is empty again
(absent: empty). A bucket's level is `(empty_at - now) * rate`; charging `n` moves `empty_at` on
by `n / rate`. The script checks and charges the requests and the tokens bucket of a request
together, atomically, in one round trip, with the time from Redis's `TIME`, so replicas' clocks
do not matter; within the `max_wait` it is given, it reserves capacity ahead and answers the
wait. Each key expires once its bucket is empty, so nothing grows without bound. Keys:
`<key_prefix>:{<scope>:<name>}:rpm` and `...:tpm` (one hash tag per limiter: both keys of a
script are in one Redis Cluster slot).

Redis unreachable, slow (each call is bounded by `limits.redis_timeout`) or failing: the store
is degraded for `limits.retry_interval` seconds, during which Redis is not called at all (a dead
Redis is not hammered), then one request tries it again. Every transition is a log line (naming
Redis's host, port and database, never its credentials) and the `gateway_limits_backend_degraded`
gauge of every app on the loop (`watch()`).

One `RedisStore` (one connection pool) per event loop and `LimitsConfig`, shared by all the
limiters built on that loop, upstreams' and client keys' alike, and by the runtimes a reload
derives. It is the one piece of module state here, because `runtime.new_limiter` is handed only
the config: stores are created on the running loop by the first limiter that needs one and
closed with the runtime (`aclose_stores()`). redis-py is imported only then: a gateway whose
backend is memory never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol
from urllib.parse import urlsplit

from gateway.config import LimitsConfig
from gateway.logs import redact
from gateway.resilience.limiter import PERIOD

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

log = logging.getLogger("gateway.limits")

# Connections to Redis per store: an admission holds one for a round trip (well under a
# millisecond), so a few dozen serve tens of thousands a second; more wait, at most
# `redis_timeout`.
MAX_CONNECTIONS: Final = 64
# Seconds `aclose_stores()` gives each store's last adjustments and its pool.
_CLOSE_TIMEOUT: Final = 1.0
# A request that fits within this many seconds fits now (float noise in the script's sums).
_SLACK: Final = 1e-6

# KEYS: the buckets. ARGV: op ("admit" or "adjust"), max_wait (s), period (s), now (s; "" for
# Redis's TIME: tests pass a clock), then per bucket its limit and the amount to charge
# (negative: give back). A bucket's value is the time it is empty again; absent = empty.
# "admit" charges every bucket if the request fits within max_wait, none otherwise; "adjust"
# charges (or gives back, never below empty) unconditionally. Replies {admitted, wait in µs,
# then per bucket the µs until it is empty again}: integers, as Lua numbers become integer
# replies.
_SCRIPT: Final = """
local op, max_wait, period = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = tonumber(ARGV[4])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local empty_at, step = {}, {}
local wait = 0
for i = 1, #KEYS do
  local rate = tonumber(ARGV[3 + 2 * i]) / period
  step[i] = tonumber(ARGV[4 + 2 * i]) / rate
  local at = tonumber(redis.call('GET', KEYS[i]) or now)
  if at < now then at = now end
  empty_at[i] = at
  local w = at + step[i] - now - period
  if w > wait then wait = w end
end
if wait <= SLACK then wait = 0 end
local admitted = 0
if op == 'adjust' or wait == 0 or wait <= max_wait then
  admitted = 1
  for i = 1, #KEYS do
    local at = empty_at[i] + step[i]
    if at > now then
      redis.call('SET', KEYS[i], string.format('%.6f', at), 'PX',
                 math.ceil((at - now) * 1000) + 1000)
    else
      at = now
      redis.call('DEL', KEYS[i])
    end
    empty_at[i] = at
  end
end
local reply = {admitted, math.ceil(wait * 1000000)}
for i = 1, #KEYS do
  reply[i + 2] = math.ceil((empty_at[i] - now) * 1000000)
end
return reply
""".replace("SLACK", repr(_SLACK))


class BackendObserver(Protocol):
    """Who hears of the store's health: `Metrics`."""

    def limits_backend_changed(self, degraded: bool) -> None: ...

    def limits_backend_failed(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """The script's answer for one request."""

    admitted: bool
    wait: float  # seconds until it fits (admitted: its capacity is reserved that far ahead)
    resets: tuple[float, ...]  # per bucket: seconds until it is empty again


class RedisStore:
    """One connection pool to Redis, the script, and whether Redis is usable now."""

    def __init__(self, limits: LimitsConfig, observers: weakref.WeakSet[BackendObserver]) -> None:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        assert limits.redis_url is not None  # config.py requires it for the redis backend
        url = limits.redis_url.reveal()
        parts = urlsplit(url)
        self._secrets = [s for s in (parts.password, parts.username, url) if s]
        self.where = _where(url)
        self.deny = limits.on_backend_failure == "deny"
        self.key_prefix = limits.key_prefix
        self._retry_interval = limits.retry_interval
        self._observers = observers
        self._loop = asyncio.get_running_loop()
        timeout = limits.redis_timeout
        # No retries (a failure degrades at once, and the next try is `retry_interval` away);
        # every wait bounded by `redis_timeout`: connecting, a free connection, a reply.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._redis: Redis = Redis(connection_pool=pool)
        self._script: AsyncScript = self._redis.register_script(_SCRIPT)
        # A call that waits for a connection, connects and sends: three timeouts at most.
        self._deadline = 3 * timeout
        self._failures: tuple[type[Exception], ...] = (RedisError, OSError, TimeoutError)
        self.degraded = False
        self._retry_at = 0.0
        self._tasks: set[asyncio.Task[object]] = set()

    def available(self) -> bool:
        """Whether to ask Redis now: always when healthy; when degraded, once per
        `retry_interval` (that request's answer decides whether it recovered)."""
        if not self.degraded:
            return True
        now = self._loop.time()
        if now < self._retry_at:
            return False
        self._retry_at = now + self._retry_interval
        return True

    def retry_after(self) -> float:
        """Seconds until Redis is tried again (at least a millisecond)."""
        return max(self._retry_at - self._loop.time(), 0.001)

    async def admit(
        self,
        keys: Sequence[str],
        limits: Sequence[int],
        amounts: Sequence[int],
        max_wait: float,
        *,
        now: float | None = None,
    ) -> Verdict | None:
        """Charge `amounts` to the buckets `keys` (of `limits` per minute) if they fit within
        `max_wait` seconds; None if Redis failed (the store is degraded then). `now` replaces
        Redis's clock (tests)."""
        args = ["admit", repr(max_wait), repr(PERIOD), "" if now is None else repr(now)]
        reply = await self._call(keys, args, limits, amounts)
        if reply is None:
            return None
        return Verdict(
            admitted=bool(reply[0]),
            wait=reply[1] / 1e6,
            resets=tuple(r / 1e6 for r in reply[2:]),
        )

    async def adjust(
        self,
        keys: Sequence[str],
        limits: Sequence[int],
        amounts: Sequence[int],
        *,
        now: float | None = None,
    ) -> tuple[float, ...] | None:
        """Charge `amounts` (negative: give back, never below empty) whatever the level; the
        seconds until each bucket is empty, or None if Redis failed."""
        args = ["adjust", "0", repr(PERIOD), "" if now is None else repr(now)]
        reply = await self._call(keys, args, limits, amounts)
        return None if reply is None else tuple(r / 1e6 for r in reply[2:])

    def adjust_later(
        self, keys: Sequence[str], limits: Sequence[int], amounts: Sequence[int]
    ) -> None:
        """`adjust()` in the background (a release must not wait for Redis); skipped while
        degraded: the buckets it would correct are drained or forgotten by the time Redis is
        back."""
        if self.degraded:
            return
        task = self._loop.create_task(self.adjust(keys, limits, amounts))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(
        self,
        keys: Sequence[str],
        args: list[str],
        limits: Sequence[int],
        amounts: Sequence[int],
    ) -> list[int] | None:
        for limit, amount in zip(limits, amounts, strict=True):
            args += (str(limit), str(amount))
        try:
            async with asyncio.timeout(self._deadline):
                reply = await self._script(keys=keys, args=args)
        except self._failures as exc:
            self._failed(exc)
            return None
        if self.degraded:
            self._recovered()
        return [int(value) for value in reply]

    def _failed(self, exc: BaseException) -> None:
        self._retry_at = self._loop.time() + self._retry_interval
        for observer in self._observers:
            observer.limits_backend_failed()
        if self.degraded:
            return
        self.degraded = True
        for observer in self._observers:
            observer.limits_backend_changed(True)
        log.warning(
            "shared rate limits degraded: redis unreachable",
            extra={
                "redis": self.where,
                "error": redact(f"{type(exc).__name__}: {exc}", self._secrets),
                "policy": "deny" if self.deny else "local",
                "retry_in": self._retry_interval,
            },
        )

    def _recovered(self) -> None:
        self.degraded = False
        for observer in self._observers:
            observer.limits_backend_changed(False)
        log.info("shared rate limits recovered: redis reachable", extra={"redis": self.where})

    async def aclose(self) -> None:
        """Let the pending adjustments finish (each bounded by the deadline), then close the
        pool."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._redis.aclose(close_connection_pool=True)


def _where(url: str) -> str:
    """`host:port/db` of a Redis URL: what a log line may say of it (no credentials)."""
    parts = urlsplit(url)
    try:
        host = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    except ValueError:
        host = parts.hostname or "?"
    if parts.scheme == "unix":
        host = parts.path
    return f"{host}{parts.path if parts.scheme != 'unix' and parts.path else ''}"


# ------------------------------------------------------------------ one store per loop


@dataclass(slots=True)
class _LoopStores:
    stores: dict[LimitsConfig, RedisStore]
    observers: weakref.WeakSet[BackendObserver]


_LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopStores] = (
    weakref.WeakKeyDictionary()
)


def _on_loop() -> _LoopStores:
    loop = asyncio.get_running_loop()
    stores = _LOOPS.get(loop)
    if stores is None:
        stores = _LOOPS[loop] = _LoopStores({}, weakref.WeakSet())
    return stores


def store_for(limits: LimitsConfig) -> RedisStore:
    """The running loop's store for `limits` (created on first use)."""
    on_loop = _on_loop()
    store = on_loop.stores.get(limits)
    if store is None:
        store = on_loop.stores[limits] = RedisStore(limits, on_loop.observers)
    return store


def watch(observer: BackendObserver) -> None:
    """Tell `observer` of every transition of the running loop's stores, from now on (and of
    the state they are in now)."""
    on_loop = _on_loop()
    on_loop.observers.add(observer)
    observer.limits_backend_changed(any(s.degraded for s in on_loop.stores.values()))


async def aclose_stores() -> None:
    """Close the running loop's stores (the runtime's `aclose`); a later limiter opens anew."""
    on_loop = _LOOPS.get(asyncio.get_running_loop())
    if on_loop is None:
        return
    stores, on_loop.stores = list(on_loop.stores.values()), {}
    for store in stores:
        # Closing never holds up a shutdown: a pool Redis does not answer is dropped.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await store.aclose()
