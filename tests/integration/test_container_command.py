"""The image's command line, run as a real process outside Docker (there is no engine here).

Everything comes from the Dockerfile (`tests/dockerfile.py`): the CMD, word for word; the
runtime stage's ENV, with `/opt/venv/bin` standing for this virtualenv's bin directory (which
holds `gateway` and `python`, as the image's does) and $GATEWAY_CONFIG for the file the
Dockerfile copies there (deploy/gateway.yaml); and the HEALTHCHECK command. The test adds what
`docker run -e` would: a client key and, instead of `-p`, GATEWAY_LISTEN_PORT, a free port
(the config and the health check both read it). The process binds 0.0.0.0 as in the
container; the test talks to it on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests import dockerfile

CLIENT_KEY = "container-client-key-0123456789"
START_TIMEOUT = 30.0  # seconds for the process to listen
STOP_TIMEOUT = 40.0  # the Kubernetes manifests' terminationGracePeriodSeconds


def container_env(port: int, **extra: str) -> dict[str, str]:
    """The environment `docker run -e GATEWAY_API_KEY=... IMAGE` gives the process."""
    image = dockerfile.parse()
    final = image.final
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    bin_dir = str(Path(sys.executable).parent)
    for key, value in final.env().items():
        value = value.replace("/opt/venv/bin", bin_dir)
        env[key] = re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: env.get(m[1] or m[2], ""), value)
    # the file the Dockerfile copies to $GATEWAY_CONFIG
    (source,) = [
        copy.args.split()[0]
        for copy in final.all("COPY")
        if copy.args.split()[-1] == final.env()["GATEWAY_CONFIG"]
    ]
    env["GATEWAY_CONFIG"] = str(dockerfile.ROOT / source)
    env["GATEWAY_LISTEN_PORT"] = str(port)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Container:
    process: subprocess.Popen[str]
    port: int
    env: dict[str, str]
    lines: queue.Queue[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def drain(stream: object, lines: queue.Queue[str]) -> None:
    """Read the process's log as it comes: a pipe left unread would block the server."""
    assert hasattr(stream, "readline")
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put("")  # end of output


@pytest.fixture
def container(tmp_path) -> Iterator[Container]:
    command = dockerfile.exec_form(dockerfile.parse().final.one("CMD").args)
    port = free_port()
    env = container_env(port, GATEWAY_API_KEY=CLIENT_KEY)
    process = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=drain, args=(process.stderr, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not any(f"Uvicorn running on http://0.0.0.0:{port}" in line for line in seen):
            remaining = deadline - time.monotonic()
            assert remaining > 0, "did not start in time:\n" + "".join(seen)
            with contextlib.suppress(queue.Empty):
                line = lines.get(timeout=remaining)
                assert line, "exited before listening:\n" + "".join(seen)
                seen.append(line)
        yield Container(process, port, env, lines)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(timeout=10)
        assert process.stderr is not None
        process.stderr.close()


def healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The Dockerfile's HEALTHCHECK command, run to its end."""
    _, command = dockerfile.healthcheck(dockerfile.parse().final)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def output(container: Container) -> str:
    """What the process logged so far, for failure messages."""
    lines = []
    with contextlib.suppress(queue.Empty):
        while True:
            lines.append(container.lines.get_nowait())
    return "".join(lines)


def test_cmd_serves_with_the_container_config_and_requires_the_client_key(container):
    with httpx.Client(base_url=container.url, timeout=10) as client:
        health = client.get("/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        assert client.get("/readyz").status_code == 200  # the built-in mock is usable
        body = {"model": "mock-1", "messages": [{"role": "user", "content": "hello"}]}
        refused = client.post("/v1/chat/completions", json=body)
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "invalid_request_error"
        answered = client.post(
            "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {CLIENT_KEY}"}
        )
        assert answered.status_code == 200, answered.text + output(container)
        assert answered.json()["choices"][0]["message"]["content"]
        assert client.get("/metrics").status_code == 200  # what Prometheus scrapes, no key


def test_healthcheck_passes_while_serving_and_fails_once_sigterm_stopped_it(container):
    result = healthcheck(container.env)
    assert result.returncode == 0, result.stderr
    # SIGTERM reaches the process (exec form: it is PID 1 in the container) and it exits 0
    container.process.send_signal(signal.SIGTERM)
    assert container.process.wait(timeout=STOP_TIMEOUT) == 0, output(container)
    result = healthcheck(container.env)
    assert result.returncode != 0


class _Unhealthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503 if self.path == "/healthz" else 404)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_healthcheck_fails_on_an_error_status():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unhealthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = healthcheck(container_env(server.server_address[1]))
        assert result.returncode == 1, result.stderr
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_other_gateway_commands_run_in_the_same_environment():
    """`docker run IMAGE gateway check`: the CMD is replaced, the environment stays."""
    env = container_env(8080, GATEWAY_API_KEY=CLIENT_KEY)
    checked = subprocess.run(
        ["gateway", "check"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert checked.returncode == 0, checked.stderr
    assert env["GATEWAY_CONFIG"] in checked.stdout
    del env["GATEWAY_API_KEY"]
    refused = subprocess.run(
        ["gateway", "check"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert refused.returncode == 1
    assert "GATEWAY_API_KEY" in refused.stderr
