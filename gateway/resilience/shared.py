"""Rate limits shared by every replica (`limits.backend: redis`), counted in Redis.

The buckets are those of `limiter.py` (a bucket of `limit` that drains at `limit / 60` per
second, so up to a minute's worth may come in one burst), kept in Redis as one number each:
the time, on Redis's clock, at which the bucket is empty again (absent: empty). A bucket's
level is `(empty_at - now) * rate`; charging `n` moves `empty_at` on by `n / rate`. One Lua
script checks and charges the requests and the tokens bucket of a request together, atomically,
in one round trip, with the time from Redis's `TIME`, so replicas' clocks do not matter. When a
request fits only later, within the `max_wait` left to it, the script reserves its capacity now
and answers the wait, which the request sleeps off here; a request cancelled while it sleeps
gives its reservation back. Otherwise it is refused with the same `retry-after`,
`retry-after-ms` and `x-ratelimit-*` headers as the local limiter's. The tokens estimate is
reconciled with the usage the upstream reported on release, by a fire-and-forget adjustment.
Each key expires once its bucket is empty, so nothing grows without bound. Keys:
`<key_prefix>:{<scope>:<name>}:rpm` and `...:tpm` (one hash tag per limiter: both keys of a
script are in one Redis Cluster slot).

What stays in the process: `max_concurrent` (requests in flight are this process's), and the
pause after an upstream's 429 (each replica learns it from its own 429s, within one request).

Redis unreachable, slow (each call is bounded by `limits.redis_timeout`) or failing: the store
is degraded for `limits.retry_interval` seconds, during which Redis is not called at all (a dead
Redis is not hammered), then one request tries it again. Meanwhile `on_backend_failure: local`
counts in a local `Limiter` of the same settings (every replica then allows the whole limit),
`deny` refuses with 503 `LimitsBackendUnavailable`. Every transition is a log line (naming
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
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol
from urllib.parse import urlsplit

import msgspec

from gateway.config import LimitsConfig, RateLimit
from gateway.errors import LimitsBackendUnavailable, RateLimited
from gateway.logs import redact
from gateway.resilience.limiter import PERIOD, Limiter, Permit, format_reset

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


# ------------------------------------------------------------------ the limiter


class SharedLimiter(Limiter):
    """The rate limits of one upstream or client key, counted in Redis: a drop-in `Limiter`.

    Its own `Limiter` part has no settings and keeps only the pause (`pause`, `resume`,
    `paused_for`); `max_concurrent` is a local limiter of slots, and a local limiter of the
    per-minute limits counts while the store is degraded under `on_backend_failure: local`."""

    def __init__(
        self,
        scope: str,
        name: str,
        settings: RateLimit,
        store: RedisStore,
        *,
        label: str = "upstream",
    ) -> None:
        super().__init__(name, None, label=label)
        self.settings = settings
        self.scope = scope
        self._store = store
        self._what = f"{label} '{name}'"
        rpm, tpm = settings.requests_per_minute, settings.tokens_per_minute
        base = f"{store.key_prefix}:{{{scope}:{name}}}"
        self._keys = [f"{base}:{kind}" for kind, limit in (("rpm", rpm), ("tpm", tpm)) if limit]
        self._limits = [limit for limit in (rpm, tpm) if limit]
        self._rpm, self._tpm = rpm, tpm
        self._max_concurrent = settings.max_concurrent
        self._max_wait = settings.max_wait
        self._max_waiters = settings.max_waiters
        self._slots = (
            Limiter(
                name,
                RateLimit(
                    max_concurrent=settings.max_concurrent,
                    max_wait=settings.max_wait,
                    max_waiters=settings.max_waiters,
                ),
                label=label,
            )
            if settings.max_concurrent
            else None
        )
        self._local = Limiter(
            name, msgspec.structs.replace(settings, max_concurrent=None), label=label
        )
        self._sleepers = 0  # requests sleeping off a reservation
        # The last answer of Redis: when (loop time) and each bucket's seconds to empty.
        self._seen_at = 0.0
        self._resets: tuple[float, ...] = tuple(0.0 for _ in self._limits)

    def __repr__(self) -> str:
        return f"<SharedLimiter {self.scope}:{self.name} {self.snapshot()}>"

    async def acquire(self, tokens: int) -> Permit:
        """Admit a request of about `tokens` prompt tokens, waiting at most `max_wait`
        seconds (for a concurrency slot, then for the shared buckets). Raises `RateLimited`
        (as `Limiter.acquire` does), or `LimitsBackendUnavailable` when Redis is unreachable
        under `on_backend_failure: deny`."""
        if self._paused_until and self.paused_for():
            raise self._refusal("paused")
        if self._tpm is not None and tokens > self._tpm:
            raise RateLimited(
                f"{self._what}: the request needs about {tokens} tokens, more than its limit of "
                f"{self._tpm} tokens per minute",
                headers=self._figures(None),
            )
        start = self._clock()
        slot = await self._slots.acquire(0) if self._slots is not None else None
        try:
            if self._store.available():
                permit = await self._admit(tokens, slot, self._max_wait - (self._clock() - start))
                if permit is not None:
                    return permit
            if self._store.deny:
                retry = self._store.retry_after()
                raise LimitsBackendUnavailable(
                    f"{self._what}: its shared rate limits cannot be checked (their store is "
                    "unreachable), and limits.on_backend_failure is deny",
                    headers=_retry_headers(retry),
                )
            inner = await self._local.acquire(tokens)
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        self._in_flight += 1
        return _SharedPermit(self, tokens, slot, inner)

    async def _admit(self, tokens: int, slot: Permit | None, budget: float) -> Permit | None:
        """Ask Redis; sleep off a reservation. None: Redis failed."""
        if self._sleepers >= self._max_waiters:
            budget = 0.0
        amounts = self._amounts(1, tokens)
        verdict = await self._store.admit(self._keys, self._limits, amounts, max(budget, 0.0))
        if verdict is None:
            return None
        self._seen_at, self._resets = self._clock(), verdict.resets
        if not verdict.admitted:
            raise RateLimited(
                f"{self._what} is at its limit of {self._binding(tokens)}",
                headers=self._figures(verdict.wait),
            )
        if verdict.wait > 0:
            self._sleepers += 1
            try:
                await asyncio.sleep(verdict.wait)
            except asyncio.CancelledError:
                self._store.adjust_later(self._keys, self._limits, self._amounts(-1, -tokens))
                raise
            finally:
                self._sleepers -= 1
            if self._paused_until and self.paused_for():
                self._store.adjust_later(self._keys, self._limits, self._amounts(-1, -tokens))
                raise self._refusal("paused")
        self._in_flight += 1
        return _SharedPermit(self, tokens, slot, None)

    def pause(self, seconds: float) -> None:
        """`Limiter.pause`, for the local limiter's waiters too."""
        super().pause(seconds)
        self._local.pause(seconds)

    def resume(self) -> None:
        super().resume()
        self._local.resume()

    def _amounts(self, requests: int, tokens: int) -> list[int]:
        return [amount for amount, limit in ((requests, self._rpm), (tokens, self._tpm)) if limit]

    def _reconcile(self, estimated: int, used: int | None) -> None:
        """Charge what the estimate missed, or give back what it overcounted."""
        if self._tpm is None or used is None or used == estimated:
            return
        self._store.adjust_later(self._keys[-1:], self._limits[-1:], [used - estimated])

    def _now(self) -> list[tuple[int, float]]:
        """Each bucket's limit and seconds to empty, as last seen, drained since."""
        elapsed = self._clock() - self._seen_at
        return [
            (limit, max(reset - elapsed, 0.0))
            for limit, reset in zip(self._limits, self._resets, strict=True)
        ]

    def _binding(self, tokens: int) -> str:
        reasons = []
        for (limit, reset), amount, kind in zip(
            self._now(), self._amounts(1, tokens), self._kinds(), strict=True
        ):
            if _remaining(limit, reset) < amount:
                reasons.append(f"{limit} {kind} per minute")
        return " and ".join(reasons) or "reservations ahead"

    def _kinds(self) -> list[str]:
        return [kind for kind, limit in (("requests", self._rpm), ("tokens", self._tpm)) if limit]

    def _figures(self, retry: float | None) -> dict[str, str]:
        """`retry-after` (when given) and the `x-ratelimit-*` headers, from Redis's last
        answer."""
        headers = _retry_headers(retry) if retry is not None else {}
        for kind, (limit, reset) in zip(self._kinds(), self._now(), strict=True):
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(_remaining(limit, reset))
            headers[f"x-ratelimit-reset-{kind}"] = format_reset(reset)
        return headers

    def headers(self) -> dict[str, str]:
        """The `x-ratelimit-*` headers as they stand (as this process last saw them)."""
        if self._store.degraded and not self._store.deny:
            return self._local.headers()
        return self._figures(None)

    def snapshot(self) -> dict[str, float | int | None]:
        """The limits and what is left of them (as this process last saw them), and whether
        the store is degraded, for the admin API."""
        if self._store.degraded and not self._store.deny:
            local = self._local.snapshot()
            remaining = [local["remaining_requests"], local["remaining_tokens"]]
        else:
            left = iter(_remaining(limit, reset) for limit, reset in self._now())
            remaining = [next(left) if limit else None for limit in (self._rpm, self._tpm)]
        slots = self._slots.snapshot()["waiters"] if self._slots is not None else 0
        return {
            "requests_per_minute": self._rpm,
            "tokens_per_minute": self._tpm,
            "max_concurrent": self._max_concurrent,
            "remaining_requests": remaining[0],
            "remaining_tokens": remaining[1],
            "in_flight": self._in_flight,
            "waiters": self._sleepers + (slots or 0),
            "paused_for": self.paused_for(),
            "shared": 1,
            "degraded": int(self._store.degraded),
        }


class _SharedPermit(Permit):
    """A request `SharedLimiter` admitted: its concurrency slot, and the local limiter's
    permit when it was admitted locally (store degraded)."""

    __slots__ = ("_inner", "_owner", "_slot")

    def __init__(
        self, owner: SharedLimiter, tokens: int, slot: Permit | None, inner: Permit | None
    ) -> None:
        super().__init__(owner, tokens)
        self._owner = owner
        self._slot = slot
        self._inner = inner

    def release(self, used_tokens: int | None = None) -> None:
        if self._released:
            return
        self._released = True
        self._owner._in_flight -= 1
        if self._slot is not None:
            self._slot.release()
        if self._inner is not None:
            self._inner.release(used_tokens)
        else:
            self._owner._reconcile(self._tokens, used_tokens)


def _remaining(limit: int, reset: float) -> int:
    return max(0, math.floor(limit - reset * limit / PERIOD + 1e-9))


def _retry_headers(retry: float) -> dict[str, str]:
    ms = max(1, math.ceil(retry * 1000 - 1e-6))
    return {"retry-after": str(max(1, math.ceil(ms / 1000))), "retry-after-ms": str(ms)}
