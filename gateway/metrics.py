"""Every Prometheus metric of the gateway: names, labels, buckets, on the app's own registry.

Two kinds. Events (requests, attempts, tokens, cost, fallbacks, retries, waits, transitions)
are counters and histograms the request path updates through the methods below; their label
children are bound once per upstream and model (`.labels()` is a lock and a dict walk) and kept
in plain dicts, so a request costs a few dict lookups and increments. States (pool figures,
breaker state, connection state, enabled, last health check) are read from the runtime when
scraped, by a collector: nothing on the request path keeps them.

Label values come only from config-known sets: upstream names, public model names (a model the
config does not know is "unknown"), status classes ("2xx", "4xx", "5xx") and the fixed words of
`OUTCOMES` and `reason_of()`. No label ever carries request text, so no secret can reach a scrape.

With several workers (`gateway serve --workers N`) prometheus-client's multiprocess mode is on
(`PROMETHEUS_MULTIPROC_DIR`, which prometheus-client itself reads when it is imported): events
go to per-process files that a scrape sums, and every worker writes its state figures to
gauges of its own once a second (and when it serves a scrape): pool figures add up over
workers, a breaker or connection state reads 1 if any live worker is in it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, ClassVar

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.config import Config
from gateway.errors import (
    CircuitOpen,
    GatewayError,
    RateLimited,
    StreamInterrupted,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.upstreams.registry import ConnectionState

if TYPE_CHECKING:
    from gateway.runtime import Runtime

UNKNOWN = "unknown"
OUTCOMES = (
    "ok",
    "client_error",
    "upstream_error",
    "timeout",
    "connect_error",
    "rate_limited",
    "cancelled",
)
CODES = ("2xx", "4xx", "5xx")
BREAKER_STATES = ("closed", "open", "half_open")
_ERROR_OUTCOMES = frozenset({"upstream_error", "timeout", "connect_error", "rate_limited"})
_UNREACHABLE = "upstream_unreachable"  # clients.py's code for a refused or failed connect

# Seconds. Requests and upstream calls run from milliseconds (a cached reply) to minutes (a long
# stream); the overhead is the gateway's own time, tens of microseconds to milliseconds.
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
WAIT_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# The classic text format (0.0.4), which every Prometheus version reads; the generated text is
# the same (metric names here need none of 1.0.0's escaping).
_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
_MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own switch
_REFRESH_EVERY = 1.0  # seconds between a worker's writes of its state figures (multiprocess)


def multiprocess_dir() -> str | None:
    """The directory of prometheus-client's multiprocess mode, if it is on in this process."""
    return os.environ.get(_MULTIPROCESS_ENV) or None


def outcome_of(error: BaseException | None) -> str:
    """How an upstream attempt ended, as one of `OUTCOMES`."""
    if error is None:
        return "ok"
    if not isinstance(error, GatewayError):
        return "cancelled"
    if isinstance(error, RateLimited):
        return "rate_limited"
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamUnavailable) or error.code == _UNREACHABLE:
        return "connect_error"
    if isinstance(error, UpstreamRejected):
        return "client_error"
    return "upstream_error"


def reason_of(error: BaseException) -> str:
    """A fixed word for why an upstream was left (fallbacks, retries, stream errors)."""
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, CircuitOpen):
        return "circuit_open"
    if isinstance(error, StreamInterrupted):
        return "interrupted"
    if isinstance(error, UpstreamUnavailable):
        return "unavailable"
    if isinstance(error, GatewayError):
        outcome = outcome_of(error)
        return "context_length" if outcome == "client_error" else outcome
    return "cancelled"


def status_class(status: int) -> str:
    """The `code` label: "2xx", "4xx" (a client that left, 499, included) or "5xx"."""
    if status < 300:
        return "2xx"
    return "4xx" if status < 500 else "5xx"


class _Tokens:
    """One (upstream, public model)'s token and cost counters."""

    __slots__ = ("cached", "completion", "cost", "prompt")

    def __init__(self, metrics: Metrics, upstream: str, model: str) -> None:
        self.prompt = metrics.tokens.labels(upstream, model, "prompt")
        self.completion = metrics.tokens.labels(upstream, model, "completion")
        self.cached = metrics.tokens.labels(upstream, model, "cached")
        self.cost = metrics.cost.labels(upstream, model)


class _KeyFigures:
    """One client key's counters."""

    __slots__ = ("cached", "completion", "cost", "prompt", "requests")

    def __init__(self, metrics: Metrics, key: str) -> None:
        self.requests = {code: metrics.key_requests.labels(key, code) for code in CODES}
        self.prompt = metrics.key_tokens.labels(key, "prompt")
        self.completion = metrics.key_tokens.labels(key, "completion")
        self.cached = metrics.key_tokens.labels(key, "cached")
        self.cost = metrics.key_cost.labels(key)


class Metrics:
    """The gateway's metrics for one app (tests may build several in one process)."""

    def __init__(self, config: Config) -> None:
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` twin of every counter
        self.registry = CollectorRegistry(auto_describe=True)
        self._multiprocess = multiprocess_dir()
        self._runtime: Runtime | None = None
        self._timer: asyncio.TimerHandle | None = None
        r = self.registry

        self.requests = Counter(
            "gateway_requests", "Client chat requests by public model and status class.",
            ["model", "code"], registry=r,
        )  # fmt: skip
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Client chat request time, to the last byte (streams included).",
            ["model"], buckets=REQUEST_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = 0  # client requests being served: a plain int, read when scraped
        self.upstream_requests = Counter(
            "gateway_upstream_requests", "Upstream attempts by how they ended.",
            ["upstream", "outcome"], registry=r,
        )  # fmt: skip
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds",
            "Upstream attempt time, from sending to the end of the answer (of a stream: its end).",
            ["upstream"], buckets=REQUEST_BUCKETS, registry=r,
        )  # fmt: skip
        self.first_token = Histogram(
            "gateway_upstream_time_to_first_token_seconds",
            "Streamed attempts: from sending to the upstream's first event.",
            ["upstream"], buckets=FIRST_TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Request time minus upstream time: what the gateway adds to a request.",
            buckets=OVERHEAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "gateway_tokens", "Tokens used, by upstream, public model and kind.",
            ["upstream", "model", "kind"], registry=r,
        )  # fmt: skip
        self.cost = Counter(
            "gateway_cost_usd", "What the upstreams charged, in USD, from their price tables.",
            ["upstream", "model"], registry=r,
        )  # fmt: skip
        self.pool_acquire = Histogram(
            "gateway_pool_acquire_seconds",
            "Time a request waited for a connection of the upstream's pool (native pool only).",
            ["upstream"], buckets=WAIT_BUCKETS, registry=r,
        )  # fmt: skip
        self.breaker_transitions = Counter(
            "gateway_breaker_transitions", "Circuit breaker state changes, by new state.",
            ["upstream", "to"], registry=r,
        )  # fmt: skip
        self.breaker_rejections = Counter(
            "gateway_breaker_rejections", "Attempts the circuit breaker refused.",
            ["upstream"], registry=r,
        )  # fmt: skip
        self.ratelimit_wait = Histogram(
            "gateway_ratelimit_wait_seconds",
            "Time an admitted attempt waited in the upstream's rate limiter.",
            ["upstream"], buckets=WAIT_BUCKETS, registry=r,
        )  # fmt: skip
        self.ratelimit_rejections = Counter(
            "gateway_ratelimit_rejections", "Requests a rate limiter refused, by scope and name.",
            ["scope", "name"], registry=r,
        )  # fmt: skip
        self.fallbacks = Counter(
            "gateway_fallbacks", "Moves to the next target of a model's chain, and why.",
            ["model", "from_upstream", "reason"], registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "gateway_retries", "Retries of the same upstream, and why.",
            ["upstream", "reason"], registry=r,
        )  # fmt: skip
        self.stream_errors = Counter(
            "gateway_stream_errors", "Streams that failed after their first byte, and why.",
            ["upstream", "reason"], registry=r,
        )  # fmt: skip
        build_info = Gauge(
            "gateway_build_info", "The gateway's version (always 1).",
            ["version"], registry=r, multiprocess_mode="max",
        )  # fmt: skip
        build_info.labels(__version__).set(1)

        self._states = _States()
        if self._multiprocess:
            self._state_gauges = self._states.gauges(r)
        else:
            r.register(_StateCollector(self))

        # Label children, bound up front for what the config knows (and on first use for what a
        # reload adds).
        self._models = frozenset(config.models)
        self._requests: dict[tuple[str, str], Counter] = {}
        self._request_duration: dict[str, Histogram] = {}
        self._attempts: dict[tuple[str, str], Counter] = {}
        self._upstream_duration: dict[str, Histogram] = {}
        self._first_token: dict[str, Histogram] = {}
        self._ratelimit_wait: dict[str, Histogram] = {}
        self._tokens: dict[tuple[str, str], _Tokens] = {}
        for model in (*config.models, UNKNOWN):
            self._bind_model(model)
        for name in config.upstreams:
            self._bind_upstream(name)
        for model, targets in config.models.items():
            for target in targets:
                if target.upstream in config.upstreams:
                    self._tokens[target.upstream, model] = _Tokens(self, target.upstream, model)

        # Per client key (issue 6), by the key's configured name; requests without a key (no
        # auth.keys) are not counted here.
        self.key_requests = Counter(
            "gateway_key_requests", "Client chat requests by client key name and status class.",
            ["key", "code"], registry=r,
        )  # fmt: skip
        self.key_tokens = Counter(
            "gateway_key_tokens", "Tokens used by client key name and kind.",
            ["key", "kind"], registry=r,
        )  # fmt: skip
        self.key_cost = Counter(
            "gateway_key_cost_usd", "What a client key's requests cost, in USD.",
            ["key"], registry=r,
        )  # fmt: skip
        self._keys: dict[str, _KeyFigures] = {}
        for key in config.auth.keys:
            self._keys[key.name] = _KeyFigures(self, key.name)

        # The shared rate limits' store (limits.backend: redis, gateway/resilience/redis_store.py):
        # 1 while this process cannot reach it and applies `limits.on_backend_failure`.
        self.limits_degraded = Gauge(
            "gateway_limits_backend_degraded",
            "1 while the shared rate limits' Redis is unreachable (local counting or deny).",
            registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.limits_backend_errors = Counter(
            "gateway_limits_backend_errors",
            "Calls to the shared rate limits' Redis that failed (refused, timed out, errors).",
            registry=r,
        )  # fmt: skip

    def _bind_model(self, model: str) -> None:
        self._request_duration[model] = self.request_duration.labels(model)
        for code in CODES:
            self._requests[model, code] = self.requests.labels(model, code)

    def _bind_upstream(self, name: str) -> None:
        self._upstream_duration[name] = self.upstream_duration.labels(name)
        self._first_token[name] = self.first_token.labels(name)
        self._ratelimit_wait[name] = self.ratelimit_wait.labels(name)
        for outcome in OUTCOMES:
            self._attempts[name, outcome] = self.upstream_requests.labels(name, outcome)
        for state in BREAKER_STATES:
            self.breaker_transitions.labels(name, state)
        self.breaker_rejections.labels(name)
        self.pool_acquire.labels(name)

    # ------------------------------------------------------------ the runtime's states

    def watch(self, runtime: Runtime) -> None:
        """Read state figures from `runtime` from now on (a reloaded runtime replaces the old
        one). In multiprocess mode, also write them every second: call on the running loop,
        and `close()` at shutdown."""
        self._runtime = runtime
        for name in runtime.config.upstreams:
            if name not in self._upstream_duration:
                self._bind_upstream(name)
        for model in runtime.config.models:
            if model not in self._request_duration:
                self._bind_model(model)  # a model a reload added
        self._models = frozenset(runtime.config.models)
        if self._multiprocess and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(_REFRESH_EVERY, self._tick)

    def close(self) -> None:
        """At shutdown. In multiprocess mode this worker's live gauges also leave the sums: a
        worker that ends on SIGTERM dies by the re-raised signal (uvicorn), without atexit."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._multiprocess:
            mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    def _tick(self) -> None:
        self._refresh()
        self._timer = asyncio.get_running_loop().call_later(_REFRESH_EVERY, self._tick)

    def _refresh(self) -> None:
        """Multiprocess mode: write this worker's state figures to its gauge files."""
        for name, labels, value in self.state_samples():
            gauge = self._state_gauges[name]
            (gauge.labels(*labels) if labels else gauge).set(value)

    def state_samples(self) -> Iterator[tuple[str, tuple[str, ...], float]]:
        """(metric name, label values, value) of every state figure, read now."""
        yield "gateway_in_flight_requests", (), self.in_flight
        if self._runtime is not None:
            yield from self._states.read(self._runtime)

    def render(self) -> tuple[bytes, str]:
        """The scrape: exposition text and its content type."""
        if not self._multiprocess:
            return generate_latest(self.registry), _CONTENT_TYPE
        self._refresh()
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self._multiprocess)  # type: ignore[no-untyped-call]
        return generate_latest(merged), _CONTENT_TYPE

    # ------------------------------------------------------------ events (the request path)

    def request_started(self) -> None:
        self.in_flight += 1

    def request_ended(
        self, model: str | None, status: int, seconds: float, upstream_seconds: float
    ) -> None:
        """A client request ended with `status` after `seconds`, `upstream_seconds` of which
        were spent in upstream attempts."""
        self.in_flight -= 1
        if model is None or model not in self._models:
            model = UNKNOWN
        self._requests[model, status_class(status)].inc()
        self._request_duration[model].observe(seconds)
        if upstream_seconds:
            self.overhead.observe(max(seconds - upstream_seconds, 0.0))

    def attempt(self, upstream: str, outcome: str, seconds: float) -> None:
        """An upstream attempt that was sent ended (`outcome` one of `OUTCOMES`)."""
        child = self._attempts.get((upstream, outcome))
        if child is None:
            self._bind_upstream(upstream)
            child = self._attempts[upstream, outcome]
        child.inc()
        self._upstream_duration[upstream].observe(seconds)

    def first_event(self, upstream: str, seconds: float) -> None:
        self._first_token[upstream].observe(seconds)

    def usage(
        self, upstream: str, model: str, prompt: int, completion: int, cached: int, cost: float
    ) -> None:
        tokens = self._tokens.get((upstream, model))
        if tokens is None:
            tokens = self._tokens[upstream, model] = _Tokens(self, upstream, model)
        tokens.prompt.inc(prompt)
        tokens.completion.inc(completion)
        if cached:
            tokens.cached.inc(cached)
        if cost:
            tokens.cost.inc(cost)

    def ratelimit_waited(self, upstream: str, seconds: float) -> None:
        self._ratelimit_wait[upstream].observe(seconds)

    def ratelimit_rejected(self, scope: str, name: str) -> None:
        """A limiter refused a request; `scope` is "upstream" (or "key", issue 6)."""
        self.ratelimit_rejections.labels(scope, name).inc()

    def breaker_rejected(self, upstream: str) -> None:
        self.breaker_rejections.labels(upstream).inc()

    def breaker_changed(self, upstream: str, old: str, new: str) -> None:
        """The breaker's `on_change`."""
        self.breaker_transitions.labels(upstream, new).inc()

    def fallback(self, model: str, from_upstream: str, error: BaseException) -> None:
        model = model if model in self._models else UNKNOWN
        self.fallbacks.labels(model, from_upstream, reason_of(error)).inc()

    def retry(self, upstream: str, error: BaseException) -> None:
        self.retries.labels(upstream, reason_of(error)).inc()

    def stream_error(self, upstream: str, error: BaseException) -> None:
        self.stream_errors.labels(upstream, reason_of(error)).inc()

    def acquire_observer(self, upstream: str) -> Callable[[float], None]:
        """What a pool calls with the seconds a request waited for a connection."""
        return self.pool_acquire.labels(upstream).observe

    # ------------------------------------------------------------ for the admin API

    def upstream_summary(self, name: str) -> dict[str, int | float | None]:
        """Attempts sent to `name`, those that failed by the upstream's fault (errors,
        timeouts, connect errors, 429s) and the median attempt time (ms, estimated from the
        histogram's buckets; None before the first). This process's figures only."""
        requests = errors = 0
        for family in self.upstream_requests.collect():
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels["upstream"] == name:
                    requests += int(sample.value)
                    if sample.labels["outcome"] in _ERROR_OUTCOMES:
                        errors += int(sample.value)
        buckets: list[tuple[float, float]] = []
        for family in self.upstream_duration.collect():
            for sample in family.samples:
                if sample.name.endswith("_bucket") and sample.labels["upstream"] == name:
                    buckets.append((float(sample.labels["le"]), sample.value))
        p50 = _quantile(0.5, sorted(buckets))
        return {
            "requests": requests,
            "errors": errors,
            "p50_ms": None if p50 is None else round(p50 * 1000.0, 3),
        }

    # ------------------------------------------------------------ per client key

    def _key(self, name: str) -> _KeyFigures:
        figures = self._keys.get(name)
        if figures is None:  # a key a reload added
            figures = self._keys[name] = _KeyFigures(self, name)
        return figures

    def key_request(self, name: str, status: int) -> None:
        """A chat request that presented client key `name` ended with `status`."""
        self._key(name).requests[status_class(status)].inc()

    def key_usage(self, name: str, prompt: int, completion: int, cached: int, cost: float) -> None:
        """What the request of client key `name` used, once its serving attempt reported it."""
        figures = self._key(name)
        figures.prompt.inc(prompt)
        figures.completion.inc(completion)
        if cached:
            figures.cached.inc(cached)
        if cost:
            figures.cost.inc(cost)

    # ------------------------------------------------------------ shared limits' backend

    def limits_backend_changed(self, degraded: bool) -> None:
        """The shared limits' Redis became unreachable (`degraded`), or reachable again."""
        self.limits_degraded.set(1.0 if degraded else 0.0)

    def limits_backend_failed(self) -> None:
        """A call to the shared limits' Redis failed."""
        self.limits_backend_errors.inc()


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """`histogram_quantile` on cumulative (upper bound, count) pairs, +Inf last."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower  # in the open-ended bucket: its lower edge, as Prometheus does
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


# ------------------------------------------------------------------- state figures


class _States:
    """The state figures and how to read them from a runtime."""

    FAMILIES: ClassVar[dict[str, tuple[str, tuple[str, ...], str]]] = {
        # name: (help, labels, multiprocess mode)
        "gateway_in_flight_requests": ("Client chat requests being served.", (), "livesum"),
        "gateway_pool_connections": (
            "Connections of the upstream's pool, by state (read from the pool in use).",
            ("upstream", "state"), "livesum",
        ),
        "gateway_pool_max_connections": (
            "The upstream's pool size limit.", ("upstream",), "livesum",
        ),
        "gateway_pool_waiting_requests": (
            "Requests waiting for a connection of the upstream's pool.", ("upstream",), "livesum",
        ),
        "gateway_breaker_state": (
            "Circuit breaker state set: 1 for the current state, 0 for the others.",
            ("upstream", "state"), "livemax",
        ),
        "gateway_upstream_up": (
            "1 if the upstream is connected (in service), else 0.", ("upstream",), "livemin",
        ),
        "gateway_upstream_state": (
            "Connection state set: 1 for the current state, 0 for the others.",
            ("upstream", "state"), "livemax",
        ),
        "gateway_upstream_enabled": (
            "1 if the upstream is enabled, else 0.", ("upstream",), "livemin",
        ),
        "gateway_health_check_duration_seconds": (
            "How long the upstream's last health check took.", ("upstream",), "livemax",
        ),
    }  # fmt: skip

    def gauges(self, registry: CollectorRegistry) -> dict[str, Gauge]:
        return {
            name: Gauge(name, help, list(labels), registry=registry, multiprocess_mode=mode)  # type: ignore[arg-type]
            for name, (help, labels, mode) in self.FAMILIES.items()
        }

    def read(self, rt: Runtime) -> Iterator[tuple[str, tuple[str, ...], float]]:
        for name, upstream in rt.upstreams.items():
            try:
                pool = rt.clients.pool_stats(name)
            except KeyError:  # an upstream a reload is adding or removing
                continue
            yield "gateway_pool_connections", (name, "active"), pool.active
            yield "gateway_pool_connections", (name, "idle"), pool.idle
            yield "gateway_pool_max_connections", (name,), pool.max_connections
            yield "gateway_pool_waiting_requests", (name,), pool.waiting
            guards = rt.guards.get(name)
            if guards is not None:
                current = guards.breaker.state
                for state in BREAKER_STATES:
                    yield "gateway_breaker_state", (name, state), float(state == current)
            connected = upstream.state is ConnectionState.CONNECTED
            yield "gateway_upstream_up", (name,), float(connected)
            for state in ConnectionState:
                yield "gateway_upstream_state", (name, str(state)), float(upstream.state is state)
            yield "gateway_upstream_enabled", (name,), float(upstream.enabled)
            latency = upstream.health.latency_ms
            if latency is not None:
                yield "gateway_health_check_duration_seconds", (name,), latency / 1000.0


class _StateCollector(Collector):
    """Single-process mode: the state figures, read from the runtime at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # unchecked: the series depend on the runtime being watched

    def collect(self) -> Iterator[Metric]:
        families = {
            name: GaugeMetricFamily(name, help, labels=list(labels))
            for name, (help, labels, _) in _States.FAMILIES.items()
        }
        for name, labels, value in self._metrics.state_samples():
            families[name].add_metric(list(labels), value)
        yield from families.values()
