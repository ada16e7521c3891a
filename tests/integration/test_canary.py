"""No secret leaves the gateway: a canary upstream key and a canary admin key are planted, every
kind of traffic that could carry them is made (answers, upstream errors that quote the key,
a mid-stream error event that quotes it, admin calls with right and wrong keys, an upstream
test, a refused reload), and then every response body and header, every log line (all
loggers, DEBUG, extra fields included) and the whole `/metrics` scrape are searched for them.
The same for client keys (auth.keys): right, wrong and missing keys, 401/403/429 answers, and
what the upstream received.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import yaml

from gateway.upstreams.registry import ConnectionState
from tests.conftest import GatewayServer, StartGateway
from tests.fakes.openai_upstream import FakeOpenAI, Reply
from tests.integration.conftest import CHAT, chat_body, log_text

UPSTREAM_CANARY = "sk-canary-upstream-7f3a9c2e51d84b06"
ADMIN_CANARY = "adm-canary-admin-1c9e5b7d3a2f4e68"


def test_no_secret_reaches_responses_logs_or_metrics(
    tmp_path: Path,
    gateway_server: StartGateway,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeOpenAI(api_key=UPSTREAM_CANARY) as fake:
        config = {
            "auth": {"admin_key": ADMIN_CANARY},
            "upstreams": {
                "up": {
                    "provider": "openai",
                    "base_url": fake.base_url,
                    "api_key": UPSTREAM_CANARY,
                    "breaker": {"fail_max": 1000},
                }
            },
            "models": {"m": [{"upstream": "up", "model": "gpt-4o-mini"}]},
        }
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        gateway = gateway_server(path.read_text())
        runtime = gateway.app.state.runtime  # type: ignore[attr-defined]
        runtime.config = msgspec.structs.replace(runtime.config, source=str(path))  # reloadable
        said = f"the key {UPSTREAM_CANARY} is wrong"
        fake.script(
            Reply(content="fine"),
            Reply.error(400, said),
            Reply.error(401, said),
            Reply.error(500, said),
            Reply.raw(f"<html>{UPSTREAM_CANARY}</html>", status=502),
        )
        admin = {"authorization": f"Bearer {ADMIN_CANARY}"}
        responses: list[httpx.Response] = []
        with httpx.Client(timeout=10) as http:
            for _ in range(5):
                responses.append(http.post(gateway.url + CHAT, json=chat_body("m")))
                _heal(gateway)  # a 401 marks the upstream unhealthy: the next case needs it
            fake.script(Reply(content="one two three four five", cut_after=3))
            responses.append(http.post(gateway.url + CHAT, json=chat_body("m", stream=True)))
            responses.append(http.get(gateway.url + "/admin/upstreams", headers=admin))
            responses.append(
                http.get(gateway.url + "/admin/upstreams", headers={"authorization": "Bearer no"})
            )
            responses.append(http.post(gateway.url + "/admin/upstreams/up/test", headers=admin))
            path.write_text(path.read_text() + "\nnonsense: [\n")  # a reload it must refuse
            responses.append(http.post(gateway.url + "/admin/reload", headers=admin))
            responses.append(http.get(gateway.url + "/admin/usage", headers=admin))
            scrape = http.get(gateway.url + "/metrics")

    statuses = [r.status_code for r in responses]
    assert statuses[:5] == [200, 400, 502, 502, 502]
    assert statuses[6:] == [200, 401, 200, 400, 200]
    assert scrape.status_code == 200
    assert "gateway_upstream_requests_total" in scrape.text
    logs = log_text(caplog)
    assert "[REDACTED]" in responses[1].text  # the upstream's message came back, masked
    for secret in (UPSTREAM_CANARY, ADMIN_CANARY):
        for piece in (secret, secret[:16], secret[-16:]):
            for response in [*responses, scrape]:
                assert piece not in response.text, response.request.url
                assert piece not in str(response.headers), response.request.url
            assert piece not in logs


def _heal(gateway: GatewayServer) -> None:
    runtime = gateway.app.state.runtime  # type: ignore[attr-defined]
    for upstream in runtime.upstreams.values():
        upstream.state = ConnectionState.CONNECTED


CLIENT_CANARY = "ck-canary-client-4e7b1d9a2c6f8035"
WRONG_CANARY = "ck-canary-wrong-0a9d3e6b7c1f2548"


def test_no_client_key_reaches_responses_logs_metrics_or_upstream(
    gateway_server: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeOpenAI(api_key=UPSTREAM_CANARY) as fake:
        gateway = gateway_server(
            {
                "auth": {
                    "admin_key": ADMIN_CANARY,
                    "keys": [
                        {
                            "name": "canary",
                            "key": CLIENT_CANARY,
                            "models": ["m"],
                            "rate_limit": {"requests_per_minute": 3, "max_wait": 0},
                        }
                    ],
                },
                "upstreams": {
                    "up": {
                        "provider": "openai",
                        "base_url": fake.base_url,
                        "api_key": UPSTREAM_CANARY,
                        "health": {"interval": 0},
                    }
                },
                "models": {
                    "m": [{"upstream": "up", "model": "gpt-4o-mini"}],
                    "other": [{"upstream": "up", "model": "gpt-4o"}],
                },
            }
        )
        right = {"authorization": f"Bearer {CLIENT_CANARY}"}
        near = CLIENT_CANARY[:-1] + ("0" if CLIENT_CANARY[-1] != "0" else "1")
        responses: list[httpx.Response] = []
        with httpx.Client(base_url=gateway.url, timeout=10) as http:

            def chat(headers: dict[str, str], model: str = "m", **fields: Any) -> None:
                responses.append(http.post(CHAT, json=chat_body(model, **fields), headers=headers))

            chat(right)
            chat(right, stream=True)
            chat({"api-key": CLIENT_CANARY})  # as Azure's clients send it
            chat({"authorization": f"Bearer {WRONG_CANARY}"})
            chat({"authorization": f"Bearer {near}"})
            chat({"api-key": WRONG_CANARY})
            chat({})
            chat(right, model="other")
            chat(right)  # the key's three requests a minute are spent
            responses.append(http.get("/v1/models", headers=right))
            responses.append(http.get("/v1/models", headers={"api-key": WRONG_CANARY}))
            admin = {"authorization": f"Bearer {ADMIN_CANARY}"}
            responses.append(http.get("/admin/usage", headers=admin))
            scrape = http.get("/metrics")
        upstream_saw = "\n".join(f"{r.headers} {r.query} {r.body!r}" for r in fake.requests)

    statuses = [r.status_code for r in responses]
    assert statuses == [200, 200, 200, 401, 401, 401, 401, 403, 429, 200, 401, 200]
    assert "canary" in responses[-1].text  # usage by the key's name
    assert scrape.status_code == 200
    logs = log_text(caplog)
    assert "canary" in logs  # the key's name is logged, not the key
    for secret in (CLIENT_CANARY, WRONG_CANARY, near):
        for piece in (secret, secret[:16], secret[-16:]):
            for response in [*responses, scrape]:
                assert piece not in response.text, response.request.url
                assert piece not in str(response.headers), response.request.url
            assert piece not in logs
            assert piece not in upstream_saw
