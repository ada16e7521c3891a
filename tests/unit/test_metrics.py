"""The metrics' words, label binding and figures, without a server (the scrape end to end is in
tests/integration/test_metrics.py)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import Config, parse_config
from gateway.errors import (
    CircuitOpen,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.metrics import OUTCOMES, Metrics, _quantile, outcome_of, reason_of, status_class
from gateway.runtime import Runtime
from gateway.usage import Usage

CONFIG = """
upstreams:
  a: {provider: mock}
  b: {provider: mock}
models:
  small: [{upstream: a, model: m-1}, {upstream: b, model: m-2}]
"""


def config() -> Config:
    return parse_config(CONFIG, source="<test>")


def values(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return values(metrics)[name, tuple(sorted(labels.items()))]


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, "ok"),
        (asyncio.CancelledError(), "cancelled"),
        (RateLimited("429"), "rate_limited"),
        (UpstreamTimeout("slow"), "timeout"),
        (UpstreamError("refused", code="upstream_unreachable"), "connect_error"),
        (UpstreamUnavailable("closed"), "connect_error"),
        (UpstreamRejected("bad", status=400), "client_error"),
        (UpstreamError("500", status=502), "upstream_error"),
        (StreamInterrupted("cut"), "upstream_error"),
    ],
)
def test_outcome_words(error: BaseException | None, outcome: str):
    assert outcome_of(error) == outcome
    assert outcome in OUTCOMES


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (CircuitOpen("open"), "circuit_open"),
        (UpstreamUnavailable("off"), "unavailable"),
        (StreamInterrupted("cut"), "interrupted"),
        (TimeoutError(), "timeout"),
        (UpstreamRejected("too long", status=400), "context_length"),
        (RateLimited("429"), "rate_limited"),
    ],
)
def test_reason_words(error: BaseException, reason: str):
    assert reason_of(error) == reason


def test_status_classes():
    assert [status_class(s) for s in (200, 404, 429, 499, 500, 504)] == [
        "2xx", "4xx", "4xx", "4xx", "5xx", "5xx",
    ]  # fmt: skip


def test_series_exist_at_zero_before_traffic():
    metrics = Metrics(config())
    assert value(metrics, "gateway_requests_total", model="small", code="2xx") == 0
    assert value(metrics, "gateway_requests_total", model="unknown", code="4xx") == 0
    assert value(metrics, "gateway_upstream_requests_total", upstream="b", outcome="timeout") == 0
    assert value(metrics, "gateway_tokens_total", upstream="a", model="small", kind="cached") == 0
    assert value(metrics, "gateway_build_info", version="0.1.0") == 1
    assert not any(name.endswith("_created") for name, _ in values(metrics))


def test_an_unknown_model_is_counted_as_unknown():
    metrics = Metrics(config())
    metrics.request_started()
    metrics.request_ended("gpt-made-up", 404, 0.001, 0.0)
    metrics.request_started()
    metrics.request_ended(None, 400, 0.001, 0.0)
    assert value(metrics, "gateway_requests_total", model="unknown", code="4xx") == 2
    assert ("gateway_requests_total", (("code", "4xx"), ("model", "gpt-made-up"))) not in values(
        metrics
    )
    assert value(metrics, "gateway_in_flight_requests") == 0


def test_a_model_a_reload_adds_is_counted_under_its_name():
    async def reload_then_serve() -> Metrics:
        runtime = await Runtime.open(config())
        reloaded = parse_config(CONFIG + "  big: [{upstream: a, model: m-9}]\n", source="<t>")
        successor = await runtime.derive(reloaded)  # watches the successor
        successor.metrics.request_started()
        successor.metrics.request_ended("big", 200, 0.001, 0.0)
        await successor.aclose()
        return successor.metrics

    metrics = asyncio.run(reload_then_serve())
    assert value(metrics, "gateway_requests_total", model="big", code="2xx") == 1


def test_overhead_is_request_time_minus_upstream_time():
    metrics = Metrics(config())
    metrics.request_started()
    metrics.request_ended("small", 200, 0.5, 0.4996)  # 0.4 ms of the gateway's own
    assert value(metrics, "gateway_overhead_seconds_count") == 1
    assert value(metrics, "gateway_overhead_seconds_sum") == pytest.approx(0.0004)
    assert value(metrics, "gateway_overhead_seconds_bucket", le="0.0005") == 1
    assert value(metrics, "gateway_overhead_seconds_bucket", le="0.00025") == 0


def test_tokens_and_cost_per_upstream_and_model():
    metrics = Metrics(config())
    metrics.usage("a", "small", 100, 20, 30, 0.25)
    metrics.usage("a", "small", 1, 2, 0, 0.5)
    assert value(metrics, "gateway_tokens_total", upstream="a", model="small", kind="prompt") == 101
    kinds = {"completion": 22, "cached": 30}
    for kind, count in kinds.items():
        assert (
            value(metrics, "gateway_tokens_total", upstream="a", model="small", kind=kind) == count
        )
    assert value(metrics, "gateway_cost_usd_total", upstream="a", model="small") == 0.75
    assert value(metrics, "gateway_cost_usd_total", upstream="b", model="small") == 0


def test_upstream_summary_counts_faults_and_estimates_the_median():
    metrics = Metrics(config())
    assert metrics.upstream_summary("a") == {"requests": 0, "errors": 0, "p50_ms": None}
    for _ in range(3):
        metrics.attempt("a", "ok", 0.2)  # in the (0.1, 0.25] bucket
    metrics.attempt("a", "timeout", 30.0)
    metrics.attempt("a", "client_error", 0.2)  # the client's fault: not an error
    metrics.attempt("b", "upstream_error", 0.2)
    summary = metrics.upstream_summary("a")
    assert summary["requests"] == 5
    assert summary["errors"] == 1
    p50 = summary["p50_ms"]
    assert p50 is not None
    assert 100 < p50 <= 250


def test_quantile_follows_histogram_quantile():
    inf = float("inf")
    assert _quantile(0.5, [(1.0, 0.0), (2.0, 10.0), (inf, 10.0)]) == pytest.approx(1.5)
    assert _quantile(0.5, [(1.0, 0.0), (inf, 4.0)]) == 1.0
    assert _quantile(0.5, [(1.0, 0.0), (inf, 0.0)]) is None


def test_breaker_transitions_and_rejections():
    metrics = Metrics(config())
    metrics.breaker_changed("a", "closed", "open")
    metrics.breaker_changed("a", "open", "half_open")
    metrics.breaker_rejected("a")
    assert value(metrics, "gateway_breaker_transitions_total", upstream="a", to="open") == 1
    assert value(metrics, "gateway_breaker_transitions_total", upstream="a", to="closed") == 0
    assert value(metrics, "gateway_breaker_rejections_total", upstream="a") == 1


def test_usage_totals_per_key_model_and_upstream():
    usage = Usage()
    usage.record(None, "small", "a", 10, 5, 2, 0.5)
    usage.record(None, "small", "b", 1, 1, 0, 0.25)
    snapshot = usage.snapshot()
    assert snapshot["keys"]["anonymous"] == {
        "requests": 2,
        "prompt_tokens": 11,
        "completion_tokens": 6,
        "cached_tokens": 2,
        "cost_usd": 0.75,
    }
    assert snapshot["models"]["small"]["requests"] == 2
    assert snapshot["upstreams"]["a"]["cost_usd"] == 0.5
    assert snapshot["upstreams"]["b"]["prompt_tokens"] == 1
