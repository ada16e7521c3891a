"""Config hot reload end to end: under load through a real uvicorn, and by SIGHUP to `serve`.

The reload under load calls `gateway.reload.reload(app)` on the gateway's own loop (the admin
route, `POST /admin/reload`, is tested with the admin API); SIGHUP needs the main thread of a
real `gateway serve` process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import pytest
import yaml

from gateway.app import create_app
from gateway.config import Config, ConfigError, load_config
from gateway.reload import reload
from gateway.runtime import Runtime
from tests.fakes.openai_upstream import FakeOpenAI, Reply
from tests.integration.conftest import UPSTREAM_KEY, chat_body
from tests.processes import stop
from tests.servers import ServerThread

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = [sys.executable, "-m", "gateway"]
T = TypeVar("T")

IN_FLIGHT = 1000
# Seconds after the first request is sent at which the upstream answers them all at once: enough
# for every request to arrive (about 1 s on an idle 2-core machine) and both reloads to run.
RELEASE = 5.0


def config(fake: FakeOpenAI, models: tuple[str, ...], read_timeout: float) -> dict[str, Any]:
    return {
        "upstreams": {
            "fake": {
                "provider": "openai",
                "base_url": fake.base_url,
                "api_key": UPSTREAM_KEY,
                "timeouts": {"read": read_timeout},
                "pool": {"max_connections": IN_FLIGHT + 100},
                "health": {"interval": 0},
            }
        },
        "models": {m: [{"upstream": "fake", "model": "gpt-4o-mini"}] for m in models},
    }


def write(path: Path, document: dict[str, Any] | str) -> None:
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))


def test_reload_under_load_drops_nothing_and_applies_only_the_valid_file(
    tmp_path, fake_openai, caplog
):
    caplog.set_level(logging.INFO, "gateway.reload")
    path = tmp_path / "gateway.yaml"
    write(path, config(fake_openai, ("gpt-4o-mini",), read_timeout=60))
    app = create_app(load_config(path))

    with ServerThread(app, name="gateway") as gateway:

        async def on_gateway(work: Awaitable[T]) -> T:
            """Run `work` on the gateway's loop, from this test's."""

            async def wrapped() -> T:
                return await work

            future = asyncio.run_coroutine_threadsafe(wrapped(), gateway.loop)
            return await asyncio.wrap_future(future)

        async def load() -> None:
            limits = httpx.Limits(max_connections=IN_FLIGHT + 10, max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=gateway.url, limits=limits, timeout=60) as http:
                release = time.monotonic() + RELEASE  # the fake runs in this process: same clock
                fake_openai.set_default(
                    lambda _: Reply(first_byte_delay=max(release - time.monotonic(), 0.0))
                )
                replies = [
                    asyncio.create_task(http.post("/v1/chat/completions", json=chat_body()))
                    for _ in range(IN_FLIGHT)
                ]
                # Every request has reached the upstream and none has its answer yet.
                await asyncio.to_thread(fake_openai.wait_for_requests, IN_FLIGHT, timeout=60)
                old: Runtime = app.state.runtime
                assert old.upstreams["fake"].in_flight == IN_FLIGHT

                # Valid: a new model, and a changed setting of the upstream serving them all.
                write(path, config(fake_openai, ("gpt-4o-mini", "gpt-4o-new"), read_timeout=30))
                reloaded: Config = await on_gateway(reload(app))
                assert set(reloaded.models) == {"gpt-4o-mini", "gpt-4o-new"}
                new: Runtime = app.state.runtime
                assert new is not old
                assert new.upstreams["fake"].config.timeouts.read == 30

                # Invalid: changes nothing, says why.
                write(path, "models: {gpt-4o-mini: [{upstream: nowhere, model: x}]}\n")
                with pytest.raises(ConfigError, match="unknown upstream 'nowhere'"):
                    await on_gateway(reload(app))
                assert app.state.runtime is new
                assert not any(r.done() for r in replies)  # the reloads ran under full load

                fake_openai.set_default(Reply())
                served = await http.post("/v1/chat/completions", json=chat_body(model="gpt-4o-new"))
                assert served.status_code == 200, served.text
                assert served.json()["model"] == "gpt-4o-mini"  # the upstream's name for it

                statuses = [r.status_code for r in await asyncio.gather(*replies)]
                assert statuses == [200] * IN_FLIGHT
                assert old.upstreams["fake"].in_flight == 0
                models = (await http.get("/v1/models")).json()
                assert {m["id"] for m in models["data"]} == {"gpt-4o-mini", "gpt-4o-new"}

        asyncio.run(load())

    lines = [r for r in caplog.records if r.name == "gateway.reload"]
    assert [(r.levelname, r.getMessage()) for r in lines] == [
        ("INFO", "config reloaded"),
        ("ERROR", "config reload failed; the running config is unchanged"),
    ]
    assert lines[0].__dict__["models_added"] == "gpt-4o-new"
    assert lines[0].__dict__["upstreams_changed"] == "fake"
    assert "unknown upstream 'nowhere'" in lines[1].__dict__["error"]


# ------------------------------------------------------------------- SIGHUP


class Lines:
    """A process's stderr, read by a thread so the pipe never fills; `wait_for` a line."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)

    def join(self) -> None:
        """Once the process has exited: the reader has seen the pipe's end."""
        self._thread.join(timeout=30)
        assert not self._thread.is_alive()

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r}:\n" + "".join(self.seen))


MOCK_CONFIG = "upstreams:\n  mock: {provider: mock}\nmodels:\n"


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[subprocess.Popen[str], Lines, str, Path]]:
    """`gateway serve` as a real process on a free port, its config file, its log lines."""
    path = tmp_path / "gateway.yaml"
    path.write_text(MOCK_CONFIG + "  mock-1: [{upstream: mock, model: mock-1}]\n")
    process = subprocess.Popen(
        [*GATEWAY, "serve", "--config", str(path), "--port", "0", "--log-format", "json"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stderr is not None
    lines = Lines(process.stderr)
    try:
        url = lines.wait_for(r"Uvicorn running on (http://127\.0\.0\.1:\d+)").group(1)
        yield process, lines, url, path
    finally:
        stop(process, timeout=30)
        lines.join()
        process.stderr.close()


def test_sighup_reloads_the_config_of_gateway_serve(served):
    process, lines, url, path = served
    with httpx.Client(base_url=url, timeout=10) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["mock-1"]

        path.write_text(
            MOCK_CONFIG
            + "  mock-1: [{upstream: mock, model: mock-1}]\n"
            + "  mock-2: [{upstream: mock, model: mock-2}]\n"
        )
        process.send_signal(signal.SIGHUP)
        entry = json.loads(lines.wait_for(r'^\{.*"logger": ?"gateway\.reload".*$').group(0))
        assert entry["message"] == "config reloaded"
        assert entry["models_added"] == "mock-2"
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["mock-1", "mock-2"]
        reply = client.post(
            "/v1/chat/completions",
            json={"model": "mock-2", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert reply.status_code == 200

        path.write_text("upstreams: {mock: {provider: nope}}\n")
        process.send_signal(signal.SIGHUP)
        entry = json.loads(lines.wait_for(r'^\{.*"logger": ?"gateway\.reload".*$').group(0))
        assert entry["level"] == "error"
        assert "upstreams.mock.provider" in entry["error"]
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["mock-1", "mock-2"]

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
