"""Limits shared across replicas (issue 6), the way they run: a real redis-server, two real
`gateway serve` processes behind a real nginx (`least_conn`) on loopback, and the fake OpenAI
upstream in this process, limited to 60 requests a minute with no waiting.

The two replicas differ only in `limits.on_backend_failure` (`local` and `deny`), so one set of
processes shows both policies when Redis is stopped; while Redis is up the policy plays no
part. Redis has a password: it must appear in no log line.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration.conftest import CHAT, chat_body, openai_upstream
from tests.processes import GatewayProcess, Nginx, RedisServer, wait_until

LIMIT = 60  # requests per minute at the upstream
REQUESTS = 300
CONCURRENCY = 32
PASSWORD = "redis-pass-7f3a9c1e"
RETRY_INTERVAL = 0.3  # seconds a degraded replica waits before trying Redis again
DEGRADED = "shared rate limits degraded: redis unreachable"
RECOVERED = "shared rate limits recovered: redis reachable"


@dataclass
class Stack:
    redis: RedisServer
    fake: FakeOpenAI
    local: GatewayProcess  # on_backend_failure: local
    deny: GatewayProcess  # on_backend_failure: deny
    nginx: Nginx


def config(fake: FakeOpenAI, redis: RedisServer, policy: str) -> dict[str, Any]:
    upstream = openai_upstream(
        fake, rate_limit={"requests_per_minute": LIMIT, "max_wait": 0}, health={"interval": 0}
    )
    return {
        "server": {"drain_seconds": 1},
        "limits": {
            "backend": "redis",
            "redis_url": redis.url,
            "on_backend_failure": policy,
            "retry_interval": RETRY_INTERVAL,
        },
        "upstreams": {"fake": upstream},
        "models": {"gpt-4o-mini": [{"upstream": "fake", "model": "gpt-4o-mini"}]},
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("shared-limits")
    with (
        RedisServer(root / "redis", password=PASSWORD) as redis,
        FakeOpenAI() as fake,
    ):
        gateways = []
        for policy in ("local", "deny"):
            path = root / f"{policy}.yaml"
            path.write_text(yaml.safe_dump(config(fake, redis, policy), sort_keys=False))
            gateways.append(GatewayProcess(root / policy, path, name=f"gateway-{policy}"))
        with (
            gateways[0] as local,
            gateways[1] as deny,
            Nginx(root / "nginx", [local.address, deny.address]) as nginx,
        ):
            yield Stack(redis, fake, local, deny, nginx)
            for gateway in gateways:
                assert PASSWORD not in gateway.log_text()
        fake.check_requests()  # every request upstream was a valid OpenAI request


def send(url: str, count: int) -> tuple[list[httpx.Response], float]:
    """`count` chat requests to `url`, at most `CONCURRENCY` at once; the responses (bodies
    read) and the seconds it all took."""

    async def main() -> list[httpx.Response]:
        gate = asyncio.Semaphore(CONCURRENCY)
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

            async def one() -> httpx.Response:
                async with gate:
                    return await client.post(CHAT, json=chat_body())

            return await asyncio.gather(*(one() for _ in range(count)))

    started = time.monotonic()
    responses = asyncio.run(main())
    return responses, time.monotonic() - started


def scrape(gateway: GatewayProcess) -> dict[str, float]:
    """The gateway's /metrics: sample name and labels -> value."""
    text = httpx.get(gateway.url + "/metrics", timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def served(gateway: GatewayProcess) -> float:
    samples = scrape(gateway)
    return sum(v for k, v in samples.items() if k.startswith("gateway_requests_total{"))


def degraded(gateway: GatewayProcess) -> float:
    return scrape(gateway)["gateway_limits_backend_degraded{}"]


def messages(gateway: GatewayProcess) -> list[str]:
    return [r["message"] for r in gateway.log_records() if r.get("logger") == "gateway.limits"]


def test_two_replicas_behind_nginx_share_one_upstream_limit(stack):
    with stack.redis.client() as client:
        client.flushdb()
    before = len(stack.fake.chat_requests)
    served_before = served(stack.local), served(stack.deny)

    responses, elapsed = send(stack.nginx.url, REQUESTS)

    forwarded = len(stack.fake.chat_requests) - before
    ok = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(limited) == REQUESTS, {r.status_code for r in responses}
    assert len(ok) == forwarded
    # A minute's worth at once, plus what drained while the requests ran (one a second: the
    # run takes one to two seconds here, so 60 to 62).
    assert LIMIT <= forwarded <= LIMIT + 1 + int(elapsed), (forwarded, elapsed)
    for response in limited:
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        # The bucket is full: the next request fits once one request's worth has drained.
        assert response.headers["retry-after"] == "1"
        assert 0 < int(response.headers["retry-after-ms"]) <= 1000
        assert response.headers["x-ratelimit-limit-requests"] == str(LIMIT)
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
    # nginx spread them over both replicas, and both forwarded some upstream.
    for gateway, before_count in zip((stack.local, stack.deny), served_before, strict=True):
        assert served(gateway) - before_count >= REQUESTS / 10, gateway.name
    forwarded_by = {r.headers.get("x-gateway-upstream") for r in ok}
    assert forwarded_by == {"fake"}


def test_redis_down_local_keeps_flowing_deny_refuses_and_restart_recovers(stack):
    assert degraded(stack.local) == degraded(stack.deny) == 0
    stack.redis.stop()
    before = len(stack.fake.chat_requests)

    # local: the replica counts in its own limiter (a fresh bucket of 60), never a 503.
    responses, elapsed = send(stack.local.url, LIMIT + 20)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}
    assert LIMIT <= statuses.count(200) <= LIMIT + elapsed + 1
    assert len(stack.fake.chat_requests) - before == statuses.count(200)
    assert degraded(stack.local) == 1
    wait_until(lambda: DEGRADED in messages(stack.local), "the degraded log line")
    line = next(r for r in stack.local.log_records() if r.get("logger") == "gateway.limits")
    assert line["redis"] == f"127.0.0.1:{stack.redis.port}/0"
    assert line["policy"] == "local"

    # deny: 503 in OpenAI's envelope, with a retry-after; nothing reaches the upstream.
    before = len(stack.fake.chat_requests)
    refused = post(stack.deny)
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_backend_unavailable"
    assert "on_backend_failure is deny" in error["message"]
    assert refused.headers["retry-after"] == "1"  # the next try of Redis: within 0.3 s
    assert len(stack.fake.chat_requests) == before
    assert degraded(stack.deny) == 1

    # Redis back (empty): within a retry interval each replica uses it again.
    stack.redis.start()
    wait_until(lambda: post(stack.deny).status_code == 200, "the deny replica to recover", 10)
    assert degraded(stack.deny) == 0
    wait_until(lambda: recovered(stack.local), "the local replica to recover", 10)
    for gateway in (stack.local, stack.deny):
        wait_until(functools.partial(recovered_line, gateway), "the recovered log line")
    with stack.redis.client() as client:
        assert client.exists("gateway:rl:{upstream:fake}:rpm") == 1


def post(gateway: GatewayProcess) -> httpx.Response:
    return httpx.post(gateway.url + CHAT, json=chat_body(), timeout=10)


def recovered(gateway: GatewayProcess) -> bool:
    """Whether a request (which tries Redis again) leaves the replica no longer degraded."""
    post(gateway)
    return degraded(gateway) == 0


def recovered_line(gateway: GatewayProcess) -> bool:
    return messages(gateway)[-1:] == [RECOVERED]
