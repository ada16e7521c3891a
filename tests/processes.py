"""Real servers a test runs as processes of their own: `redis-server`, `nginx`, `gateway serve`.

Each binds 127.0.0.1 only, keeps its files (config, log, pid, temp) in a directory the test
owns, runs in the foreground as the current user, and is stopped by its PID when its `with`
block ends: SIGTERM, then SIGKILL if it has not exited within a few seconds. Starting waits on a
condition (Redis answers PING, nginx and the gateway accept connections), never a sleep.

Neither Redis nor nginx can bind port 0 and report the port back, so a port is picked by binding
a socket to port 0 and closing it (`free_port()`); the moment between is the only race.

The binaries are Debian packages (`apt-get install redis-server nginx`) that `.ci/run` installs:
a test that needs one skips when it is missing on a developer's machine (`require()`), and fails
when `CI` or `GATEWAY_REQUIRE_SERVICES` is set, so a CI that lost its install step cannot go
green by skipping.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
REQUIRE_ENV = "GATEWAY_REQUIRE_SERVICES"
STOP_TIMEOUT = 10.0  # seconds a process has after SIGTERM before it is killed
# nginx lives in /usr/sbin, not on every user's PATH.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin"])


def require(binary: str, package: str) -> str:
    """The path of `binary`; skips the test without it, or fails it under CI."""
    path = shutil.which(binary, path=_SEARCH_PATH)
    if path:
        return path
    reason = f"{binary} is not installed (apt-get install {package})"
    if os.environ.get("CI") or os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{reason}; .ci/run installs it, and CI must not skip these tests")
    pytest.skip(reason)


def stop(process: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> None:
    """Stop a process a test started: SIGTERM by its PID (a gateway drains and exits 0), then
    SIGKILL if it has not exited within `timeout` seconds; returns once it has exited."""
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll `condition` every 20 ms until it holds; AssertionError naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


class _Process:
    """A child process whose output goes to `log` and that `stop()` ends by its PID."""

    name = "process"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.log = directory / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._process.pid

    def _spawn(self, argv: Sequence[str], **options: Any) -> None:
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **options
            )

    def _check_alive(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise AssertionError(
                f"{self.name} exited with {self._process.returncode}:\n{self.log_text()[-4000:]}"
            )

    def _wait_ready(self, ready: Callable[[], bool], timeout: float = 15.0) -> None:
        def check() -> bool:
            self._check_alive()
            return ready()

        try:
            wait_until(check, f"{self.name} to start", timeout)
        except BaseException:
            self.stop()
            raise

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL after `STOP_TIMEOUT`; returns once it has exited."""
        process, self._process = self._process, None
        if process is not None:
            stop(process)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RedisServer(_Process):
    """`redis-server` on a free port of 127.0.0.1, without persistence (an empty store at every
    start), optionally with a password. `stop()` then `start()` again restarts it on the same
    port."""

    name = "redis"

    def __init__(self, directory: Path, password: str | None = None) -> None:
        super().__init__(directory)
        self.binary = require("redis-server", "redis-server")
        self.password = password
        self.port = free_port()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    def start(self) -> Self:
        argv = [self.binary, "--port", str(self.port), "--bind", HOST, "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.directory), "--daemonize", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        self._spawn(argv)
        self._wait_ready(self._pong)
        return self

    def client(self) -> Any:
        """A synchronous redis-py client, for looking at the keys."""
        import redis

        return redis.Redis(
            host=HOST, port=self.port, password=self.password, socket_timeout=2, db=0
        )

    def _pong(self) -> bool:
        import redis

        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def __enter__(self) -> Self:
        return self.start()


class Nginx(_Process):
    """nginx on a free port of 127.0.0.1, balancing HTTP/1.1 over `backends` (`host:port`)
    with `least_conn` (the balancing the README recommends for long streams)."""

    name = "nginx"

    def __init__(self, directory: Path, backends: Sequence[str]) -> None:
        super().__init__(directory)
        self.binary = require("nginx", "nginx")
        self.port = free_port()
        self.backends = list(backends)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def config(self) -> str:
        d = self.directory
        servers = "".join(f"        server {b} max_fails=0;\n" for b in self.backends)
        # Only a master started as root switches users; run its workers as ourselves then.
        user = ""
        if os.geteuid() == 0:
            names = pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name
            user = "user {} {};".format(*names)
        return f"""\
{user}
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream gateways {{
        least_conn;
{servers}        keepalive 64;
    }}
    server {{
        listen {HOST}:{self.port};
        location / {{
            proxy_pass http://gateways;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""

    def start(self) -> Self:
        conf = self.directory / "nginx.conf"
        conf.write_text(self.config())
        argv = [self.binary, "-p", str(self.directory), "-c", str(conf)]
        argv += ["-e", str(self.directory / "error.log")]  # before the config is read
        self._spawn(argv)
        self._wait_ready(lambda: _accepts(self.port))
        return self

    def __enter__(self) -> Self:
        return self.start()


_RUNNING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


class GatewayProcess(_Process):
    """`gateway serve` with the config file `config`, on a free port (port 0, read back from
    its log), logging JSON lines to `<directory>/<name>.log`."""

    def __init__(self, directory: Path, config: Path, name: str = "gateway") -> None:
        self.name = name
        super().__init__(directory)
        self.config = config
        self.url = ""

    def start(self) -> Self:
        argv = [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)]
        argv += ["--port", "0", "--log-format", "json"]
        self._spawn(argv, cwd=ROOT)

        def running() -> bool:
            match = _RUNNING.search(self.log_text())
            if match:
                self.url = match.group(1)
            return match is not None

        self._wait_ready(running, timeout=30.0)
        return self

    @property
    def address(self) -> str:
        """`host:port`, for a load balancer's list."""
        return self.url.removeprefix("http://")

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        records = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue  # a line being written
        return records

    def __enter__(self) -> Self:
        return self.start()
