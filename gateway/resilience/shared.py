"""Rate limits shared by every replica (`limits.backend: redis`), counted in Redis.

`SharedLimiter` is a drop-in `Limiter` whose buckets (those of `limiter.py`: a bucket of `limit`
that drains at `limit / 60` per second, so up to a minute's worth may come in one burst) live in
Redis, through `redis_store.py`. A request that fits only later, within its `max_wait`, has its
capacity reserved by the store and sleeps off the wait here; a request cancelled while it sleeps
gives its reservation back. Otherwise it is refused with the same `retry-after`,
`retry-after-ms` and `x-ratelimit-*` headers as the local limiter's. The tokens estimate is
reconciled with the usage the upstream reported on release, by a fire-and-forget adjustment.

What stays in the process: `max_concurrent` (requests in flight are this process's), and the
pause after an upstream's 429 (each replica learns it from its own 429s, within one request).
While the store is degraded, `on_backend_failure: local` counts in a local `Limiter` of the same
settings (every replica then allows the whole limit), `deny` refuses with 503
`LimitsBackendUnavailable`.
"""

from __future__ import annotations

import asyncio
import math

import msgspec

from gateway.config import RateLimit
from gateway.errors import LimitsBackendUnavailable, RateLimited
from gateway.resilience.limiter import PERIOD, Limiter, Permit, format_reset
from gateway.resilience.redis_store import RedisStore

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
