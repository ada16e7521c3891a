"""The admin commands of `gateway` end to end against a running gateway: in process through
`gateway.cli.main` (stdout and stderr captured), and as `python -m gateway` subprocesses for the
entry point, exit codes and terminal colour."""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.config import load_config
from tests.conftest import GatewayServer
from tests.fakes.openai_upstream import FakeOpenAI, Reply
from tests.integration.conftest import UPSTREAM_KEY, refused_base_url, serve
from tests.integration.test_admin import ADMIN_KEY, admin_config

ROOT = Path(__file__).resolve().parents[2]
STATUS_COLUMNS = [
    "UPSTREAM",
    "PROVIDER",
    "ENABLED",
    "STATE",
    "HEALTH",
    "BREAKER",
    "IN-FLIGHT",
    "POOL",
    "REQUESTS",
    "ERRORS",
    "P50",
    "LAST USED",
]


@pytest.fixture
def config_file(tmp_path: Path, fake_openai: FakeOpenAI) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(admin_config(fake_openai), sort_keys=False))
    return path


@pytest.fixture
def gateway(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GatewayServer]:
    monkeypatch.setenv("GATEWAY_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.delenv("NO_COLOR", raising=False)
    with serve(load_config(config_file)) as server:
        yield server


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def gw(capsys: pytest.CaptureFixture[str], gateway: GatewayServer) -> Any:
    """`gw(*args)` runs `gateway <args> --url <the gateway>` in process."""

    def run(*args: str, url: str | None = None) -> Run:
        capsys.readouterr()
        code = main([*args, "--url", url or gateway.url])
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


def runtime_of(gateway: GatewayServer) -> Any:
    return gateway.app.state.runtime  # type: ignore[attr-defined]


# ------------------------------------------------------------------- status


def test_status_prints_an_aligned_table(gw, gateway, fake_openai):
    fake_openai.script(Reply(content="Hi"))
    gw("test", "fake")  # not counted as traffic: requests stay 0
    result = gw("status")
    assert result.code == 0, result.err
    assert "\x1b[" not in result.out  # stdout is no terminal: no colour
    header, *rows = result.out.splitlines()
    assert header.split() == [*STATUS_COLUMNS[:-1], "LAST", "USED"]
    assert len(rows) == 2
    fake_row = rows[0].split()
    assert fake_row[:6] == ["fake", "openai", "yes", "connected", "unchecked", "closed"]
    assert fake_row[6:10] == ["0", "0/100", "0", "0"]
    assert fake_row[10:] == ["-", "never"]
    # Columns line up: every cell of a column starts (or, right-aligned, ends) in one place.
    for column, cells in [("PROVIDER", ("openai", "mock")), ("STATE", ("connected",) * 2)]:
        at = header.index(column)
        assert [row[at:].split()[0] for row in rows] == list(cells)
    assert len({len(row) for row in rows}) == 1  # the last column ends in one place too


def test_status_json_is_the_admin_api_answer(gw, gateway):
    result = gw("status", "--json")
    assert result.code == 0
    listing = result.json
    assert [u["name"] for u in listing["data"]] == ["fake", "mock"]
    assert listing["data"][0]["pool"]["max_connections"] == 100
    assert listing["data"][1]["provider"] == "mock"


def test_status_shows_traffic_and_states(gw, gateway, fake_openai):
    import httpx

    fake_openai.script(Reply(content="one"))
    reply = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert reply.status_code == 200
    assert gw("disable", "mock").code == 0
    rows = [line.split() for line in gw("status").out.splitlines()[1:]]
    fake, mock = rows
    assert fake[8:10] == ["1", "0"]  # requests, errors
    assert fake[10] == "ms" or fake[11] == "ms"  # a p50 like "3 ms"
    assert fake[-2:] == ["s", "ago"] or fake[-1] == "ago"
    assert mock[2] == "no"


# ------------------------------------------------------------------- actions


def test_enable_and_disable(gw, gateway):
    upstream = runtime_of(gateway).upstreams["fake"]
    result = gw("disable", "fake")
    assert (result.code, result.out) == (0, "fake: disabled (state connected)\n")
    assert upstream.enabled is False
    result = gw("enable", "fake", "--json")
    assert result.code == 0
    assert result.json["name"] == "fake"
    assert result.json["enabled"] is True
    assert upstream.enabled is True


def test_disconnect_and_connect_all_or_one(gw, gateway):
    upstreams = runtime_of(gateway).upstreams
    result = gw("disconnect")
    assert result.code == 0, result.err
    assert sorted(result.out.splitlines()) == ["fake: disconnected", "mock: disconnected"]
    assert {u.state.value for u in upstreams.values()} == {"disconnected"}

    result = gw("connect", "fake", "--json")
    assert result.code == 0
    [view] = result.json
    assert (view["name"], view["state"]) == ("fake", "connected")
    assert upstreams["mock"].state.value == "disconnected"

    result = gw("connect", "--json")
    assert result.code == 0
    assert {v["name"]: v["state"] for v in result.json} == {
        "fake": "connected",
        "mock": "connected",
    }
    result = gw("disconnect", "mock", "--json")
    assert [(v["name"], v["state"]) for v in result.json] == [("mock", "disconnected")]


def test_connect_that_fails_its_probe_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GATEWAY_ADMIN_KEY", ADMIN_KEY)
    with refused_base_url() as url, serve(admin_config(url)) as gateway:
        code = main(["connect", "fake", "--url", gateway.url])
        out, _ = capsys.readouterr()
        assert code == 1
        assert out.startswith("fake: unhealthy: connect failed")
        code = main(["connect", "--url", gateway.url, "--json"])  # mock connects, fake fails
        assert code == 1
        states = {v["name"]: v["state"] for v in json.loads(capsys.readouterr().out)}
        assert states == {"fake": "unhealthy", "mock": "connected"}


def test_test_prints_the_reply_and_exits_by_outcome(gw, gateway, fake_openai):
    fake_openai.script(Reply(content="pong"))
    result = gw("test", "fake")
    assert result.code == 0, result.err
    first, reply = result.out.splitlines()
    assert first.startswith("ok  fake (gpt-4o-mini): status 200, ")
    assert reply == "pong"

    fake_openai.script(Reply(content="custom"))
    result = gw("test", "fake", "--prompt", "Say custom", "--model", "gpt-4o", "--json")
    assert result.code == 0
    assert (result.json["reply"], result.json["model"]) == ("custom", "gpt-4o")
    assert fake_openai.chat_requests[-1].json["messages"][0]["content"] == "Say custom"

    fake_openai.script(Reply.error(500, f"boom with {UPSTREAM_KEY}"))
    result = gw("test", "fake")
    assert result.code == 1
    assert result.out.startswith("failed  fake (gpt-4o-mini): status 500")
    assert UPSTREAM_KEY not in result.out
    fake_openai.script(Reply.error(500))
    result = gw("test", "fake", "--json")
    assert result.code == 1
    assert result.json["ok"] is False
    assert result.json["status"] == 500

    result = gw("test", "mock")
    assert result.code == 0
    assert result.out.startswith("ok  mock (mock-1): status 200")


def test_reload_applies_or_reports_every_error(gw, gateway, config_file):
    config = yaml.safe_load(config_file.read_text())
    config["upstreams"]["extra"] = {"provider": "mock"}
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    result = gw("reload")
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        f"reloaded {config_file}: 3 upstreams, 2 models",
        "  added: extra",
    ]
    assert gw("reload", "--json").json["added"] == []  # nothing changed since

    config_file.write_text("upstreams:\n  a: {provider: nope}\nmodels:\n  m: [{upstream: b}]\n")
    result = gw("reload")
    assert result.code == 1
    assert result.out == ""
    errors = result.err.splitlines()
    assert errors[0] == "error: the gateway answered 400: the config was not reloaded:"
    assert any(line.startswith(f"{config_file}:2: upstreams.a.provider") for line in errors)
    assert any(line.startswith(f"{config_file}:4: models.m[0]") for line in errors)
    assert "extra" in runtime_of(gateway).upstreams  # the running config stands


def test_usage_prints_tables_and_json(gw, gateway, fake_openai):
    import httpx

    fake_openai.script(Reply(content="x", usage={"prompt_tokens": 40, "completion_tokens": 2}))
    reply = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert reply.status_code == 200
    result = gw("usage")
    assert result.code == 0, result.err
    tables = [block.splitlines() for block in result.out.split("\n\n")]
    assert [t[0].split()[0] for t in tables] == ["KEY", "MODEL", "UPSTREAM"]
    assert tables[0][1].split() == ["anonymous", "1", "40", "2", "0", "0.000000"]
    assert tables[1][1].split()[0] == "gpt-4o-mini"
    assert tables[2][1].split()[0] == "fake"
    report = gw("usage", "--json").json
    assert report["upstreams"]["fake"]["prompt_tokens"] == 40


# ------------------------------------------------------------------- exit codes


def test_gateway_errors_exit_1(gw, gateway, monkeypatch):
    result = gw("enable", "nope")
    assert result.code == 1
    assert result.err == "error: the gateway answered 404: no upstream named 'nope'\n"
    assert result.out == ""

    monkeypatch.setenv("GATEWAY_ADMIN_KEY", "adm-not-the-key")
    result = gw("status")
    assert result.code == 1
    assert result.err.splitlines() == [
        "error: the gateway answered 401: the admin key is wrong",
        "hint: check $GATEWAY_ADMIN_KEY",
    ]
    monkeypatch.delenv("GATEWAY_ADMIN_KEY")
    result = gw("usage")
    assert result.code == 1
    assert result.err.splitlines()[-1] == "hint: set $GATEWAY_ADMIN_KEY"
    assert "adm-not-the-key" not in result.err + result.out


def test_admin_api_off_exits_1_with_a_hint(fake_openai, monkeypatch, capsys):
    monkeypatch.setenv("GATEWAY_ADMIN_KEY", ADMIN_KEY)
    config = admin_config(fake_openai)
    del config["auth"]
    with serve(config) as gateway:
        assert main(["status", "--url", gateway.url]) == 1
    err = capsys.readouterr().err
    assert "404" in err
    assert "auth.admin_key" in err


def test_unreachable_gateway_exits_3(capsys, monkeypatch):
    monkeypatch.setenv("GATEWAY_ADMIN_KEY", ADMIN_KEY)
    with refused_base_url() as base:
        url = base.removesuffix("/v1")
        for args in (["status"], ["enable", "x"], ["connect"], ["usage", "--json"]):
            assert main([*args, "--url", url]) == 3
            out, err = capsys.readouterr()
            assert out == ""
            assert err.startswith(f"error: cannot reach the gateway at {url}")
    # A listener that never answers: a timeout is unreachable too.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        assert main(["reload", "--url", url, "--timeout", "0.3"]) == 3
        assert "did not answer within 0.3 s" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["enable"],
        ["disable", "a", "b"],
        ["test"],
        ["status", "--bogus"],
        ["status", "--timeout", "soon"],
    ],
)
def test_usage_errors_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exit:
        main(args)
    assert exit.value.code == 2
    assert "usage: gateway" in capsys.readouterr().err


# ------------------------------------------------------------------- as a user runs it


def _gateway(*args: str, **options: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY}
    env.pop("NO_COLOR", None)
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
        check=False,
        **options,
    )


def test_python_m_gateway_exit_codes(gateway):
    result = _gateway("status", "--url", gateway.url, "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["data"]) == 2
    assert _gateway("enable", "nope", "--url", gateway.url).returncode == 1
    assert _gateway("enable").returncode == 2
    with refused_base_url() as base:
        assert _gateway("status", "--url", base.removesuffix("/v1")).returncode == 3


def test_status_in_a_terminal_is_coloured(gateway):
    leader, follower = pty.openpty()
    try:
        env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY}
        env.pop("NO_COLOR", None)
        process = subprocess.run(
            [sys.executable, "-m", "gateway", "status", "--url", gateway.url],
            stdout=follower,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=env,
            timeout=60,
            check=False,
        )
        os.close(follower)
        follower = -1
        output = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the writer is gone
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert process.returncode == 0, process.stderr
    text = output.decode()
    assert "\x1b[1mUPSTREAM" in text  # a bold header
    assert "\x1b[32mconnected" in text  # a green state
