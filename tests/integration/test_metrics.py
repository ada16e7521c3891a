"""GET /metrics end to end: scripted traffic against fake upstreams, then the scrape's VALUES.

The breaker's state set and transitions after `fail_max` failures, the pool figures read from
the real pool under 20 held streams, tokens and cost from known usage and prices, the unknown
model bucket, fallbacks and retries, `promtool check metrics` on a real scrape, no upstream key
anywhere in it, and `gateway serve --workers 2` adding up the counters of both workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GatewayServer, StartGateway
from tests.fakes.openai_upstream import FakeOpenAI, Reply
from tests.integration.conftest import (
    CHAT,
    UPSTREAM_KEY,
    chat_body,
    openai_upstream,
    request_log,
    wait_until,
)
from tests.integration.test_resilience import MakeFake, chain_config, runtime_of
from tests.processes import stop

MODEL = "gpt-4o-mini"
ROOT = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(url: str) -> tuple[str, Samples]:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text, parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no sample {name}{labels}"
    return samples[key]


def post(gateway: GatewayServer, **fields: Any) -> httpx.Response:
    return httpx.post(gateway.url + CHAT, json=chat_body(**fields), timeout=10)


# ------------------------------------------------------------------- breaker


def test_five_failures_open_the_breaker_and_the_state_set_shows_it(
    gateway_server: StartGateway, fake_openai: FakeOpenAI
):
    fake_openai.set_default(Reply.error(500))
    gateway = gateway_server(
        chain_config({"up": openai_upstream(fake_openai, breaker={"fail_max": 5})})
    )
    _, before = scrape(gateway.url)
    assert value(before, "gateway_breaker_state", upstream="up", state="closed") == 1
    assert value(before, "gateway_breaker_state", upstream="up", state="open") == 0

    for _ in range(5):
        assert post(gateway).status_code == 502
    _, after = scrape(gateway.url)
    assert value(after, "gateway_breaker_state", upstream="up", state="open") == 1
    assert value(after, "gateway_breaker_state", upstream="up", state="closed") == 0
    assert value(after, "gateway_breaker_state", upstream="up", state="half_open") == 0
    assert value(after, "gateway_breaker_transitions_total", upstream="up", to="open") == 1
    assert value(after, "gateway_breaker_transitions_total", upstream="up", to="closed") == 0
    assert (
        value(after, "gateway_upstream_requests_total", upstream="up", outcome="upstream_error")
        == 5
    )
    assert value(after, "gateway_upstream_duration_seconds_count", upstream="up") == 5
    assert value(after, "gateway_requests_total", model=MODEL, code="5xx") == 5

    # The sixth is refused by the breaker without reaching the upstream.
    assert post(gateway).status_code == 503
    _, refused = scrape(gateway.url)
    assert value(refused, "gateway_breaker_rejections_total", upstream="up") == 1
    assert len(fake_openai.chat_requests) == 5
    assert value(refused, "gateway_upstream_duration_seconds_count", upstream="up") == 5


# ------------------------------------------------------------------- pool


def test_twenty_held_streams_read_twenty_active_connections(
    gateway_server: StartGateway, fake_openai: FakeOpenAI
):
    # Each stream sends its first event, then stalls until the client leaves.
    fake_openai.set_default(Reply(content=["Hel", "lo"], stall_after=1))
    gateway = gateway_server(chain_config({"up": openai_upstream(fake_openai)}))
    _, idle = scrape(gateway.url)
    assert value(idle, "gateway_pool_connections", upstream="up", state="active") == 0
    assert value(idle, "gateway_pool_max_connections", upstream="up") == 100

    async def hold_streams() -> Samples:
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=30)) as client:
            opened = []
            async with asyncio.TaskGroup() as group:
                for _ in range(20):
                    request = client.build_request(
                        "POST", gateway.url + CHAT, json=chat_body(stream=True)
                    )
                    opened.append(group.create_task(client.send(request, stream=True)))
            responses = [task.result() for task in opened]
            # Kept referenced: a body iterator collected as garbage closes its response.
            bodies = [response.aiter_raw() for response in responses]
            try:
                for response, body in zip(responses, bodies, strict=True):
                    assert response.status_code == 200
                    await anext(body)  # the first event is in: the stream is up
                text = (await client.get(gateway.url + "/metrics")).text
                return parse(text)
            finally:
                for response in responses:
                    await response.aclose()

    held = asyncio.run(hold_streams())
    assert value(held, "gateway_pool_connections", upstream="up", state="active") == 20
    assert value(held, "gateway_pool_waiting_requests", upstream="up") == 0
    assert value(held, "gateway_in_flight_requests") == 20
    assert value(held, "gateway_upstream_time_to_first_token_seconds_count", upstream="up") == 20
    assert value(held, "gateway_pool_acquire_seconds_count", upstream="up") >= 20

    # The clients left: the upstream connections are closed, nothing is active or in flight.
    def released() -> bool:
        _, now = scrape(gateway.url)
        return (
            value(now, "gateway_pool_connections", upstream="up", state="active") == 0
            and value(now, "gateway_in_flight_requests") == 0
        )

    wait_until(released, what="the pool to be released")
    _, after = scrape(gateway.url)
    assert value(after, "gateway_upstream_requests_total", upstream="up", outcome="cancelled") == 20
    assert value(after, "gateway_requests_total", model=MODEL, code="4xx") == 20  # 499s


# ------------------------------------------------------------------- tokens, cost, usage


def test_tokens_and_cost_per_upstream_and_model_from_known_usage(
    gateway_server: StartGateway, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
):
    caplog.set_level("INFO", logger="gateway.request")
    usage = {"prompt_tokens": 1000, "completion_tokens": 200, "cached_tokens": 400}
    fake_openai.set_default(Reply(usage=usage))
    pricing = {MODEL: {"input": 2.5, "output": 10.0, "cached_input": 1.25}}
    gateway = gateway_server(
        chain_config({"priced": openai_upstream(fake_openai, pricing=pricing)})
    )
    responses = [post(gateway) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]

    # One request: 600 x 2.5 + 400 x 1.25 + 200 x 10.0 = 4000 micro-dollars.
    _, samples = scrape(gateway.url)
    tokens = "gateway_tokens_total"
    assert value(samples, tokens, upstream="priced", model=MODEL, kind="prompt") == 3000
    assert value(samples, tokens, upstream="priced", model=MODEL, kind="completion") == 600
    assert value(samples, tokens, upstream="priced", model=MODEL, kind="cached") == 1200
    cost = value(samples, "gateway_cost_usd_total", upstream="priced", model=MODEL)
    assert cost == pytest.approx(0.012)
    assert value(samples, "gateway_requests_total", model=MODEL, code="2xx") == 3
    assert value(samples, "gateway_upstream_requests_total", upstream="priced", outcome="ok") == 3
    assert value(samples, "gateway_overhead_seconds_count") == 3
    assert value(samples, "gateway_request_duration_seconds_count", model=MODEL) == 3

    figures = {
        "requests": 3,
        "prompt_tokens": 3000,
        "completion_tokens": 600,
        "cached_tokens": 1200,
        "cost_usd": pytest.approx(0.012),
    }
    snapshot = runtime_of(gateway).usage.snapshot()
    assert snapshot["keys"]["anonymous"] == figures
    assert snapshot["models"][MODEL] == figures
    assert snapshot["upstreams"]["priced"] == figures

    line = request_log(caplog, responses[0].headers["x-request-id"])
    fields = line.__dict__
    assert fields["cost_usd"] == pytest.approx(0.004)
    assert fields["cached_tokens"] == 400
    [attempt] = fields["upstream_attempts"]
    assert attempt["upstream"] == "priced"
    assert attempt["outcome"] == "ok"
    assert 0 < attempt["latency_ms"] < 10_000


# ------------------------------------------------------------------- labels and routing


def test_an_unknown_model_counts_as_unknown_and_the_upstream_key_never_shows(
    gateway_server: StartGateway, fake_openai: FakeOpenAI
):
    gateway = gateway_server(chain_config({"up": openai_upstream(fake_openai)}))
    assert post(gateway, model="no-such-model").status_code == 404
    fake_openai.script(Reply.error(401), Reply.error(500))
    post(gateway)
    post(gateway)
    text, samples = scrape(gateway.url)
    assert value(samples, "gateway_requests_total", model="unknown", code="4xx") == 1
    assert "no-such-model" not in text
    assert UPSTREAM_KEY not in text
    assert UPSTREAM_KEY[:12] not in text
    assert value(samples, "gateway_build_info", version="0.1.0") == 1
    assert value(samples, "gateway_upstream_enabled", upstream="up") == 1
    # The 401 (our key, refused) marked the upstream unhealthy.
    assert value(samples, "gateway_upstream_state", upstream="up", state="unhealthy") == 1
    assert value(samples, "gateway_upstream_state", upstream="up", state="connected") == 0
    assert value(samples, "gateway_upstream_up", upstream="up") == 0


def test_retries_and_fallbacks_are_counted_with_their_reasons(
    gateway_server: StartGateway, fake_openai_factory: MakeFake
):
    primary, backup = fake_openai_factory(), fake_openai_factory()
    primary.set_default(Reply.error(503))
    retry = {"attempts": 2, "backoff_base": 0.0}
    gateway = gateway_server(
        chain_config(
            {
                "primary": openai_upstream(primary, retry=retry),
                "backup": openai_upstream(backup),
            }
        )
    )
    response = post(gateway)
    assert response.headers["x-gateway-attempts"] == "primary:503,primary:503,backup:ok"
    _, samples = scrape(gateway.url)
    assert value(samples, "gateway_retries_total", upstream="primary", reason="upstream_error") == 1
    assert (
        value(
            samples,
            "gateway_fallbacks_total",
            model=MODEL,
            from_upstream="primary",
            reason="upstream_error",
        )
        == 1
    )
    assert (
        value(
            samples, "gateway_upstream_requests_total", upstream="primary", outcome="upstream_error"
        )
        == 2
    )
    assert value(samples, "gateway_upstream_requests_total", upstream="backup", outcome="ok") == 1


def test_a_stream_cut_after_its_first_byte_is_a_stream_error(
    gateway_server: StartGateway, fake_openai: FakeOpenAI
):
    fake_openai.script(Reply(content=["a", "b", "c"], cut_after=2))
    gateway = gateway_server(chain_config({"up": openai_upstream(fake_openai)}))
    response = post(gateway, stream=True)
    assert response.status_code == 200
    assert b'"error"' in response.content
    _, samples = scrape(gateway.url)
    assert (
        value(samples, "gateway_stream_errors_total", upstream="up", reason="upstream_error") == 1
    )
    assert (
        value(samples, "gateway_upstream_requests_total", upstream="up", outcome="upstream_error")
        == 1
    )


# ------------------------------------------------------------------- promtool


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_a_real_scrape(gateway_server: StartGateway, fake_openai: FakeOpenAI):
    gateway = gateway_server(
        chain_config(
            {"up": openai_upstream(fake_openai, pricing={MODEL: {"input": 1, "output": 2}})}
        )
    )
    post(gateway)
    post(gateway, stream=True)
    post(gateway, model="no-such-model")
    text, samples = scrape(gateway.url)
    assert value(samples, "gateway_requests_total", model=MODEL, code="2xx") == 2
    checked = subprocess.run(
        ["promtool", "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "", checked.stdout
    assert checked.stderr.strip() == "", checked.stderr


# ------------------------------------------------------------------- serve --workers 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`gateway serve --workers 2` on a free port, with its multiprocess directory."""
    with _two_workers(tmp_path) as (url, directory, _):
        yield url, directory


@contextlib.contextmanager
def _two_workers(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "upstreams:\n  mock: {provider: mock, ttft: 0.05, tokens_per_second: 1000}\n"
        "models:\n  mock-1: [{upstream: mock, model: mock-1}]\n"
    )
    directory = tmp_path / "prometheus"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"left over")  # wiped at start
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port),
         "--workers", "2", "--log-level", "warning"],
        cwd=ROOT,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, "gateway serve --workers 2 exited"
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, timeout=30, what="the workers to serve")
        yield url, directory, process
    finally:
        stop(process, timeout=30)


def _per_worker_requests(directory: Path, scratch: Path) -> dict[str, float]:
    """Each worker's own `gateway_requests_total`, read from its file alone."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        pid = re.sub(r"\D", "", path.name)
        alone = scratch / pid
        alone.mkdir(exist_ok=True)
        shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
        counts[pid] = sum(
            sample.value
            for family in registry.collect()
            for sample in family.samples
            if sample.name == "gateway_requests_total"
        )
    return counts


def test_workers_stopped_by_sigterm_leave_no_live_gauges_behind(tmp_path: Path):
    with _two_workers(tmp_path) as (url, directory, process):
        assert httpx.post(url + CHAT, json=chat_body(model="mock-1"), timeout=10).is_success
        wait_until(
            lambda: len(list(directory.glob("gauge_live*_*.db"))) >= 2,
            timeout=10,
            what="both workers' live gauge files",
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    # In-flight requests, pool and breaker states of dead workers would add to the next ones'.
    assert list(directory.glob("gauge_live*_*.db")) == []


def test_two_workers_counters_add_up_over_both(two_workers: tuple[str, Path], tmp_path: Path):
    url, directory = two_workers
    assert not (directory / "counter_999999.db").exists()
    body = chat_body(model="mock-1")
    sent = 0

    async def burst() -> None:
        # New connections at once: the kernel hands them to whichever worker accepts first.
        async def one() -> None:
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.post(url + CHAT, json=body)
                assert response.status_code == 200

        async with asyncio.TaskGroup() as group:
            for _ in range(20):
                group.create_task(one())

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for _ in range(20):  # until both workers served some
        asyncio.run(burst())
        sent += 20
        per_worker = _per_worker_requests(directory, scratch)
        if sum(1 for count in per_worker.values() if count > 0) >= 2:
            break
    busy = {pid: count for pid, count in per_worker.items() if count > 0}
    assert len(busy) == 2, per_worker
    assert sum(busy.values()) == sent

    # Whichever worker serves the scrape, it counts both.
    for _ in range(4):
        _, samples = scrape(url)
        assert value(samples, "gateway_requests_total", model="mock-1", code="2xx") == sent
        assert value(samples, "gateway_upstream_requests_total", upstream="mock", outcome="ok") == (
            sent
        )
        assert value(samples, "gateway_request_duration_seconds_count", model="mock-1") == sent
        assert value(samples, "gateway_build_info", version="0.1.0") == 1
    # Live gauges reach the multiprocess files once a second: the burst's end shows by then.
    wait_until(
        lambda: value(scrape(url)[1], "gateway_in_flight_requests") == 0,
        timeout=5,
        what="in-flight requests to read 0 in both workers' gauge files",
    )
