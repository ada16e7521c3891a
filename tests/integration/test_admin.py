"""The admin API end to end: a real gateway (uvicorn on 127.0.0.1) over fake upstreams and the
built-in mock; every endpoint, its key check, and that its actions reach the next request."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.config import load_config
from gateway.upstreams.registry import ConnectionState
from tests.conftest import GatewayServer, StartGateway
from tests.fakes.openai_upstream import FakeOpenAI, Reply
from tests.integration.conftest import (
    CHAT,
    UPSTREAM_KEY,
    chat_body,
    error_of,
    log_text,
    openai_upstream,
    refused_base_url,
    serve,
    wait_until,
)

ADMIN_KEY = "adm-canary-7f3a9c2e51d84b60aa1e"  # planted: must never come back out
NO_PROBES = {"interval": 0}
ACTIONS = ("enable", "disable", "connect", "disconnect", "test")


def admin_config(fake: FakeOpenAI | str, **upstream: Any) -> dict[str, Any]:
    """`fake` (first) and the mock behind gpt-4o-mini, the mock alone behind mock-1."""
    return {
        "auth": {"admin_key": ADMIN_KEY},
        "upstreams": {
            "fake": openai_upstream(fake, health=NO_PROBES, **upstream),
            "mock": {"provider": "mock", "health": NO_PROBES},
        },
        "models": {
            "gpt-4o-mini": [
                {"upstream": "fake", "model": "gpt-4o-mini"},
                {"upstream": "mock", "model": "mock-1"},
            ],
            "mock-1": [{"upstream": "mock", "model": "mock-1"}],
        },
    }


class Admin:
    """An httpx client on a gateway that sends the admin key and remembers every answer."""

    def __init__(self, gateway: GatewayServer, key: str | None = ADMIN_KEY) -> None:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=gateway.url, headers=headers, timeout=30)
        self.seen: list[httpx.Response] = []

    def get(self, path: str) -> httpx.Response:
        return self._keep(self.client.get(path))

    def post(self, path: str, **options: Any) -> httpx.Response:
        return self._keep(self.client.post(path, **options))

    def chat(self, model: str = "gpt-4o-mini") -> httpx.Response:
        return self._keep(self.client.post(CHAT, json=chat_body(model)))

    def view(self, name: str) -> dict[str, Any]:
        response = self.get(f"/admin/upstreams/{name}")
        assert response.status_code == 200, response.text
        view: dict[str, Any] = response.json()
        return view

    def act(self, name: str, action: str, **options: Any) -> dict[str, Any]:
        response = self.post(f"/admin/upstreams/{name}/{action}", **options)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def _keep(self, response: httpx.Response) -> httpx.Response:
        self.seen.append(response)
        return response

    def leaked(self, secret: str) -> list[str]:
        """Every answer whose headers or body hold `secret`."""
        return [
            f"{r.request.method} {r.request.url}"
            for r in self.seen
            if secret in r.text or any(secret in v for v in r.headers.values())
        ]


@pytest.fixture
def admin_of() -> Iterator[Any]:
    clients: list[Admin] = []

    def make(gateway: GatewayServer, key: str | None = ADMIN_KEY) -> Admin:
        clients.append(Admin(gateway, key))
        return clients[-1]

    yield make
    for client in clients:
        client.client.close()


def runtime_of(gateway: GatewayServer) -> Any:
    return gateway.app.state.runtime  # type: ignore[attr-defined]


# ------------------------------------------------------------------- access


def test_admin_api_is_absent_without_an_admin_key(gateway_server: StartGateway, fake_openai):
    config = admin_config(fake_openai)
    del config["auth"]
    gateway = gateway_server(config)
    with httpx.Client(base_url=gateway.url) as client:
        nowhere = error_of(client.get("/nowhere"), 404)
        for method, path in [
            ("GET", "/admin/upstreams"),
            ("GET", "/admin/upstreams/fake"),
            ("POST", "/admin/upstreams/fake/disable"),
            ("GET", "/admin/usage"),
            ("POST", "/admin/reload"),
            ("GET", "/admin/whatever"),
        ]:
            for headers in ({}, {"authorization": f"Bearer {ADMIN_KEY}"}):
                error = error_of(client.request(method, path, headers=headers), 404)
                assert error == {**nowhere, "message": f"no route for {method} {path}"}
    assert runtime_of(gateway).upstreams["fake"].enabled  # the disable did nothing


def test_missing_or_wrong_admin_key_is_401(gateway_server: StartGateway, fake_openai, admin_of):
    gateway = gateway_server(admin_config(fake_openai))
    attempts = {
        "no header": {},
        "wrong key": {"authorization": "Bearer adm-wrong-key"},
        "key prefix": {"authorization": f"Bearer {ADMIN_KEY[:-1]}"},
        "key plus": {"authorization": f"Bearer {ADMIN_KEY}x"},
        "not bearer": {"authorization": f"Basic {ADMIN_KEY}"},
        "bare key": {"authorization": ADMIN_KEY},
        "empty bearer": {"authorization": "Bearer"},
    }
    with httpx.Client(base_url=gateway.url) as client:
        for what, headers in attempts.items():
            for method, path in [
                ("GET", "/admin/upstreams"),
                ("POST", "/admin/upstreams/fake/disable"),
                ("POST", "/admin/reload"),
                ("GET", "/admin/no-such-path"),  # 401 too: paths are not revealed
            ]:
                response = client.request(method, path, headers=headers)
                error = error_of(response, 401)
                assert error["type"] == "authentication_error", what
                assert error["code"] == "invalid_api_key"
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert ADMIN_KEY not in response.text
    assert runtime_of(gateway).upstreams["fake"].enabled
    # The right key, also with a lower-case scheme.
    with httpx.Client(base_url=gateway.url) as client:
        response = client.get("/admin/upstreams", headers={"authorization": f"bearer {ADMIN_KEY}"})
        assert response.status_code == 200


# ------------------------------------------------------------------- reading


def test_list_upstreams_reports_every_upstream(gateway_server: StartGateway, fake_openai, admin_of):
    gateway = gateway_server(
        admin_config(
            fake_openai,
            pool={"max_connections": 7},
            rate_limit={"requests_per_minute": 600, "max_concurrent": 9},
        )
    )
    admin = admin_of(gateway)
    fake_openai.script(Reply(content="Hi"))
    served = admin.chat()
    assert served.status_code == 200
    assert served.headers["x-gateway-upstream"] == "fake"

    listing = admin.get("/admin/upstreams").json()
    assert listing["object"] == "list"
    assert [u["name"] for u in listing["data"]] == ["fake", "mock"]
    fake, mock = listing["data"]
    assert fake["provider"] == "openai"
    assert mock["provider"] == "mock"
    assert fake["enabled"] is True
    assert fake["configured"] is True
    assert fake["state"] == "connected"
    assert fake["breaker"] == {"state": "closed", "rejections": 0, "retry_after": 0.0}
    assert fake["in_flight"] == 0
    assert fake["pool"]["max_connections"] == 7
    assert fake["pool"]["active"] == 0
    assert fake["pool"]["idle"] == 1  # the connection the request used, kept alive
    assert fake["limiter"]["requests_per_minute"] == 600
    assert fake["limiter"]["max_concurrent"] == 9
    assert fake["limiter"]["in_flight"] == 0
    assert mock["limiter"]["requests_per_minute"] is None
    assert fake["models"] == ["gpt-4o-mini"]
    assert mock["models"] == ["gpt-4o-mini", "mock-1"]
    assert fake["last_used"] is not None
    assert abs(fake["last_used"] - listing["now"]) < 10
    assert mock["last_used"] is None
    assert fake["health"]["checks"] == 0  # probes are off here
    assert (fake["requests"], fake["errors"]) == (1, 0)
    assert fake["p50_ms"] > 0
    assert (mock["requests"], mock["errors"], mock["p50_ms"]) == (0, 0, None)

    assert admin.view("fake") == {**fake}
    assert admin.view("mock")["name"] == "mock"


def test_unknown_upstream_is_404(gateway_server: StartGateway, fake_openai, admin_of):
    admin = admin_of(gateway_server(admin_config(fake_openai)))
    responses = [admin.get("/admin/upstreams/nope")]
    responses += [admin.post(f"/admin/upstreams/nope/{action}") for action in ACTIONS]
    for response in responses:
        error = error_of(response, 404)
        assert error["code"] == "upstream_not_found"
        assert "'nope'" in error["message"]
    error_of(admin.get("/admin/upstreams/fake/enable"), 404)  # a GET on an action: no such name
    error_of(admin.post("/admin/upstreams"), 405)


def test_connect_reports_the_health_the_probe_found(
    gateway_server: StartGateway, fake_openai, admin_of
):
    admin = admin_of(gateway_server(admin_config(fake_openai)))
    view = admin.act("fake", "connect")
    assert view["state"] == "connected"
    assert view["health"]["checks"] == 1
    assert view["health"]["models"] == fake_openai.models
    assert view["health"]["latency_ms"] > 0
    assert view["health"]["last_success"] is not None
    assert view["health"]["last_error"] is None


# ------------------------------------------------------------------- actions


def test_disable_and_enable_take_effect_for_the_next_request(
    gateway_server: StartGateway, fake_openai, admin_of, caplog
):
    caplog.set_level(logging.INFO, logger="gateway.admin")
    gateway = gateway_server(admin_config(fake_openai))
    admin = admin_of(gateway)

    view = admin.act("fake", "disable")
    assert view["enabled"] is False
    assert view["state"] == "connected"  # the switch is independent of the connection
    served = admin.chat()
    assert served.status_code == 200
    assert served.headers["x-gateway-upstream"] == "mock"
    assert served.headers["x-gateway-attempts"] == "fake:disabled,mock:ok"
    assert fake_openai.chat_requests == []

    assert admin.act("fake", "enable")["enabled"] is True
    fake_openai.script(Reply(content="back"))
    served = admin.chat()
    assert served.headers["x-gateway-upstream"] == "fake"
    assert served.json()["choices"][0]["message"]["content"] == "back"

    actions = [(r.action, r.upstream, r.admin) for r in caplog.records if r.name == "gateway.admin"]
    assert actions == [("disable", "fake", _fingerprint()), ("enable", "fake", _fingerprint())]


def test_disable_of_the_only_target_fails_requests_until_enabled(
    gateway_server: StartGateway, fake_openai, admin_of
):
    admin = admin_of(gateway_server(admin_config(fake_openai)))
    admin.act("mock", "disable")
    error = error_of(admin.chat("mock-1"), 503)
    assert error["code"] == "no_upstream_available"
    admin.act("mock", "enable")
    assert admin.chat("mock-1").status_code == 200


def test_disconnect_drains_in_flight_then_connect_brings_it_back(
    gateway_server: StartGateway, fake_openai, admin_of
):
    gateway = gateway_server(admin_config(fake_openai))
    admin = admin_of(gateway)
    upstream = runtime_of(gateway).upstreams["fake"]

    # A slow request in flight through the fake when the disconnect comes.
    fake_openai.script(Reply(content="slow but whole", first_byte_delay=0.6))
    slow: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: slow.append(admin.chat()))
    sender.start()
    fake_openai.wait_for_requests(1)
    assert upstream.in_flight == 1

    done: list[dict[str, Any]] = []
    closer = threading.Thread(target=lambda: done.append(admin.act("fake", "disconnect")))
    closer.start()
    # No new traffic within 1 s, while the slow request still runs.
    wait_until(lambda: upstream.state is ConnectionState.DISCONNECTING, timeout=1.0)
    assert admin.view("fake")["state"] == "disconnecting"
    meanwhile = admin.chat()
    assert meanwhile.headers["x-gateway-attempts"] == "fake:disconnecting,mock:ok"

    closer.join(10)
    sender.join(10)
    assert slow[0].status_code == 200  # drained, not cut
    assert slow[0].json()["choices"][0]["message"]["content"] == "slow but whole"
    [view] = done
    assert view["state"] == "disconnected"
    assert view["pool"]["active"] == view["pool"]["idle"] == 0
    assert admin.chat().headers["x-gateway-attempts"] == "fake:disconnected,mock:ok"
    assert len(fake_openai.chat_requests) == 1

    view = admin.act("fake", "connect")
    assert view["state"] == "connected"
    fake_openai.script(Reply(content="reconnected"))
    served = admin.chat()
    assert served.headers["x-gateway-upstream"] == "fake"
    assert served.json()["choices"][0]["message"]["content"] == "reconnected"


def test_connect_to_an_unreachable_upstream_leaves_it_unhealthy(
    gateway_server: StartGateway, admin_of
):
    with refused_base_url() as url:
        admin = admin_of(gateway_server(admin_config(url)))
        view = admin.act("fake", "connect")
    assert view["state"] == "unhealthy"
    assert "connect failed" in view["state_reason"]
    assert view["health"]["last_error"]
    assert view["health"]["consecutive_failures"] == 1
    assert admin.chat().headers["x-gateway-attempts"].startswith("fake:unhealthy,")


# ------------------------------------------------------------------- test


def test_test_sends_a_prompt_through_that_upstream_alone(
    gateway_server: StartGateway, fake_openai, admin_of
):
    gateway = gateway_server(
        admin_config(fake_openai, breaker={"fail_max": 1}, rate_limit={"requests_per_minute": 1})
    )
    admin = admin_of(gateway)
    # Open the breaker, use up the limiter and disable the upstream: the test ignores all three.
    fake_openai.script(Reply.error(500))
    assert admin.chat().headers["x-gateway-attempts"] == "fake:500,mock:ok"
    admin.act("fake", "disable")
    assert admin.view("fake")["breaker"]["state"] == "open"

    fake_openai.script(Reply(content="pong"))
    result = admin.act("fake", "test")
    assert result["ok"] is True
    assert result["status"] == 200
    assert result["reply"] == "pong"
    assert result["upstream"] == "fake"
    assert result["model"] == "gpt-4o-mini"
    assert result["error"] is None
    assert 0 < result["latency_ms"] < 5000
    sent = fake_openai.chat_requests[-1].json
    assert sent["model"] == "gpt-4o-mini"
    assert sent["messages"][0]["content"] == "Reply with the single word: pong"
    assert admin.view("fake")["breaker"]["state"] == "open"  # a test is not counted

    fake_openai.script(Reply(content="custom"))
    result = admin.act("fake", "test", json={"prompt": "Say custom", "model": "gpt-4o"})
    assert result["reply"] == "custom"
    assert result["model"] == "gpt-4o"
    sent = fake_openai.chat_requests[-1].json
    assert (sent["model"], sent["messages"][0]["content"]) == ("gpt-4o", "Say custom")


def test_test_reports_an_upstream_failure(gateway_server: StartGateway, fake_openai, admin_of):
    admin = admin_of(gateway_server(admin_config(fake_openai)))
    fake_openai.script(Reply.error(503, f"overloaded, key {UPSTREAM_KEY}"))
    result = admin.act("fake", "test")
    assert result["ok"] is False
    assert result["status"] == 503
    assert result["reply"] is None
    assert "overloaded" in result["error"]
    assert UPSTREAM_KEY not in result["error"]

    with refused_base_url() as url:
        admin = admin_of(gateway_server(admin_config(url)))
        result = admin.act("fake", "test")
    assert result["ok"] is False
    assert result["status"] is None
    assert "fake" in result["error"]


def test_test_through_the_mock(gateway_server: StartGateway, fake_openai, admin_of):
    admin = admin_of(gateway_server(admin_config(fake_openai)))
    result = admin.act("mock", "test", json={"prompt": "Hello mock"})
    assert result["ok"] is True
    assert result["status"] == 200
    assert result["model"] == "mock-1"
    assert isinstance(result["reply"], str)
    assert result["reply"]


def test_test_refuses_bad_options(gateway_server: StartGateway, fake_openai, admin_of):
    config = admin_config(fake_openai)
    config["upstreams"]["spare"] = {"provider": "mock"}  # in no model's targets
    admin = admin_of(gateway_server(config))
    error = error_of(admin.post("/admin/upstreams/spare/test"), 400)
    assert error["param"] == "model"
    assert error_of(admin.post("/admin/upstreams/fake/test", json={"prompt": 5}), 400)["param"] == (
        "prompt"
    )
    error_of(admin.post("/admin/upstreams/fake/test", content=b"[1]"), 400)
    error_of(admin.post("/admin/upstreams/fake/test", content=b"{nope"), 400)
    assert admin.act("spare", "test", json={"model": "anything"})["ok"] is True
    assert fake_openai.chat_requests == []


# ------------------------------------------------------------------- usage and reload


def test_usage_reports_tokens_and_cost(gateway_server: StartGateway, fake_openai, admin_of):
    gateway = gateway_server(
        admin_config(fake_openai, pricing={"gpt-4o-mini": {"input": 1.0, "output": 2.0}})
    )
    admin = admin_of(gateway)
    fake_openai.script(
        Reply(content="counted", usage={"prompt_tokens": 1000, "completion_tokens": 500})
    )
    assert admin.chat().status_code == 200
    report = admin.get("/admin/usage").json()
    assert set(report) == {"since", "keys", "models", "upstreams"}
    assert report["since"] == runtime_of(gateway).started
    expected = {
        "requests": 1,
        "prompt_tokens": 1000,
        "completion_tokens": 500,
        "cached_tokens": 0,
        "cost_usd": pytest.approx(0.002),
    }
    assert report["keys"] == {"anonymous": expected}
    assert report["models"] == {"gpt-4o-mini": expected}
    assert report["upstreams"] == {"fake": expected}


@pytest.fixture
def config_file(tmp_path: Path, fake_openai) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(admin_config(fake_openai), sort_keys=False))
    return path


def test_reload_applies_a_valid_file_and_refuses_an_invalid_one(config_file: Path, admin_of):
    with serve(load_config(config_file)) as gateway:
        admin = admin_of(gateway)
        config = yaml.safe_load(config_file.read_text())
        config["upstreams"]["extra"] = {"provider": "mock", "health": NO_PROBES}
        config["models"]["extra-1"] = [{"upstream": "extra", "model": "mock-1"}]
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))

        response = admin.post("/admin/reload")
        assert response.status_code == 200, response.text
        summary = response.json()
        assert summary["reloaded"] is True
        assert summary["source"] == str(config_file)
        assert summary["upstreams"] == ["extra", "fake", "mock"]
        assert summary["models"] == ["extra-1", "gpt-4o-mini", "mock-1"]
        assert (summary["added"], summary["removed"], summary["changed"]) == (["extra"], [], [])
        assert [u["name"] for u in admin.get("/admin/upstreams").json()["data"]] == [
            "fake",
            "mock",
            "extra",
        ]
        assert admin.chat("extra-1").headers["x-gateway-upstream"] == "extra"

        config_file.write_text(
            "upstreams:\n  a: {provider: openai, colour: red}\nmodels:\n  m: [{upstream: b}]\n"
        )
        error = error_of(admin.post("/admin/reload"), 400)
        assert error["code"] == "config_invalid"
        lines = error["message"].splitlines()
        assert lines[0] == "the config was not reloaded:"
        assert any(f"{config_file}:2: upstreams.a.colour" in line for line in lines[1:])
        assert any(f"{config_file}:4: models.m[0]" in line for line in lines[1:])
        assert len(admin.get("/admin/upstreams").json()["data"]) == 3  # unchanged


# ------------------------------------------------------------------- secrets


def test_admin_key_never_appears_in_logs_or_answers(
    config_file: Path, fake_openai, admin_of, caplog
):
    caplog.set_level(logging.DEBUG)
    with serve(load_config(config_file)) as gateway:
        admin = admin_of(gateway)
        intruder = admin_of(gateway, key="adm-wrong-" + ADMIN_KEY[::-1])
        intruder.get("/admin/upstreams")
        fake_openai.script(Reply(content="pong"))
        for path in ("/admin/upstreams", "/admin/upstreams/fake", "/admin/usage"):
            assert admin.get(path).status_code == 200
        for action in ("disable", "enable", "test", "disconnect", "connect"):
            admin.act("fake", action)
        assert admin.post("/admin/reload").status_code == 200
        config_file.write_text("upstreams: [")
        error_of(admin.post("/admin/reload"), 400)
    assert admin.leaked(ADMIN_KEY) == []
    assert intruder.leaked(ADMIN_KEY) == []
    text = log_text(caplog)
    assert ADMIN_KEY not in text
    assert ADMIN_KEY[::-1] not in text
    audited = [r for r in caplog.records if r.name == "gateway.admin"]
    assert [r.action for r in audited] == [
        "disable",
        "enable",
        "test",
        "disconnect",
        "connect",
        "reload",
        "reload",
    ]
    assert {r.admin for r in audited} == {_fingerprint()}


def _fingerprint() -> str:
    from gateway.auth import fingerprint

    return fingerprint(hashlib.sha256(ADMIN_KEY.encode()).digest())
