"""SIGTERM drains a real `gateway serve` process (gateway/lifecycle.py), with requests in flight.

The gateway runs as a user runs it (a process, uvloop, httptools, one worker or several) in
front of the fake OpenAI, which plays slow streams and calls that never answer; each request
runs in a thread of its own (`Call`). What the tests watch: readiness fails at once and
liveness does not, new requests get a 503 `shutting_down` with `connection: close` on new and
kept-alive connections alike, requests in flight finish normally when they end within
`server.drain_seconds`, those that do not are cut (a stream with an SSE error event, others
with the 503) and their upstream connections closed, and the process exits 0 long before a
30 s kill. Every wait is bounded; every process started is stopped at teardown by its PID.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests import spec
from tests.fakes.openai_upstream import FakeOpenAI, RecordedRequest, Reply
from tests.integration.conftest import (
    CHAT,
    MOCK_CONFIG,
    chat_body,
    error_of,
    single_upstream,
    wait_until,
)
from tests.servers import ServerThread

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = [sys.executable, "-m", "gateway"]
START_TIMEOUT = 30.0  # seconds for `gateway serve` to listen and be ready
KILL_AFTER = 30.0  # what a platform would allow (Kubernetes' default grace period)

# Requests tell the fake how to answer by their message (the fake's default answer picks).
SHORT_STREAM = "a stream that ends within the drain"
SLOW_PLAIN = "a plain call that ends within the drain"
LONG_STREAM = "a stream that outlasts the drain"
HANGING = "a plain call the upstream never answers"
SLOW_START = "a stream whose upstream takes a minute to start"
SHORT_WORDS = 20
EVENT_DELAY = 0.1  # seconds between a short stream's events: ~2 s in all

REPLIES = {
    SHORT_STREAM: Reply(content=["word "] * SHORT_WORDS, event_delay=EVENT_DELAY),
    SLOW_PLAIN: Reply(first_byte_delay=2.0),
    LONG_STREAM: Reply(content=["word "] * 5000, event_delay=0.02),
    HANGING: Reply.hanging(),
    SLOW_START: Reply(first_byte_delay=60),
}


def by_message(record: RecordedRequest) -> Reply:
    return REPLIES[record.json["messages"][0]["content"]]


class Gateway:
    """A `gateway serve` process; its stderr (JSON log lines) read by a thread into `lines`."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self.url = ""
        self.terminated_at = 0.0
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="gateway-stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()  # the end: the process exited

    def log(self) -> list[dict[str, Any]]:
        with self._changed:
            lines = list(self.lines)
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 10.0) -> list[Any]:
        """The first `count` log records whose message matches `pattern` (a regex, whole),
        waiting up to `timeout` seconds; AssertionError if they do not come or the process
        exits first. (Log lines are written in batches, up to 0.2 s after the fact.)"""

        def found() -> list[dict[str, Any]]:
            return [r for r in self.log() if re.fullmatch(pattern, r.get("message", ""))]

        with self._changed:
            if (
                not self._changed.wait_for(
                    lambda: len(found()) >= count or not self._reader.is_alive(), timeout
                )
                or len(found()) < count
            ):
                raise AssertionError(
                    f"no {count} log line(s) matching {pattern!r} within {timeout} s:\n"
                    + "".join(self.lines[-30:])
                )
        return found()[:count]

    def workers(self) -> list[int]:
        """The PIDs of the processes serving (the process itself with one worker)."""
        started = re.compile(r"Started server process \[(\d+)\]")
        return [int(m[1]) for r in self.log() if (m := started.search(r.get("message", "")))]

    def terminate(self) -> None:
        """SIGTERM, as a platform stops an instance."""
        self.terminated_at = time.monotonic()
        self.process.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float) -> tuple[int, float]:
        """The exit code, and seconds from SIGTERM to exit; AssertionError after `timeout`."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the gateway did not exit within {timeout} s") from None
        return code, time.monotonic() - self.terminated_at


@contextlib.contextmanager
def gateway_process(
    tmp_path: Path, fake: FakeOpenAI, drain_seconds: float, workers: int = 1
) -> Iterator[Gateway]:
    """`gateway serve` on a free port, in front of `fake`, ready (its /readyz is 200)."""
    config = single_upstream(fake, server={"drain_seconds": drain_seconds})
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [*GATEWAY, "serve", "--config", str(path), "--port", "0", "--log-format", "json"]
    if workers > 1:
        command += ["--workers", str(workers)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    gateway = Gateway(process)
    try:
        [running] = gateway.wait_for_log(r"Uvicorn running on http://\S+ .*", 1, START_TIMEOUT)
        gateway.url = running["message"].split()[3]
        gateway.wait_for_log("Application startup complete.", workers, START_TIMEOUT)
        wait_until(lambda: _ready(gateway.url), START_TIMEOUT, "the gateway to be ready")
        yield gateway
    finally:
        pids = [process.pid, *(pid for pid in gateway.workers() if pid != process.pid)]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(KILL_AFTER)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in pids[1:]:  # workers the parent left behind, if it was killed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        gateway._reader.join(5)
        assert process.stderr is not None
        process.stderr.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


class Call(threading.Thread):
    """One chat request in a thread of its own: its status, headers and raw body (a stream's
    events as they come), and the transport error if the connection broke."""

    def __init__(self, url: str, message: str, *, stream: bool) -> None:
        super().__init__(name=f"call-{message[:20]}", daemon=True)
        self.url = url
        self.body_sent = chat_body(content=message, stream=stream)
        self.status: int | None = None
        self.headers: httpx.Headers | None = None
        self.body = bytearray()
        self.error: httpx.HTTPError | None = None
        self.first_event = threading.Event()  # a stream's first event, or the response's end
        self.start()

    def run(self) -> None:
        try:
            with (
                httpx.Client(timeout=30) as client,
                client.stream("POST", self.url + CHAT, json=self.body_sent) as response,
            ):
                self.status, self.headers = response.status_code, response.headers
                for part in response.iter_raw():
                    self.body += part
                    if b"data: " in self.body:
                        self.first_event.set()
        except httpx.HTTPError as exc:
            self.error = exc
        finally:
            self.first_event.set()

    def result(self, timeout: float = 15.0) -> Call:
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} still running after {timeout} s"
        assert self.error is None, f"{self.name}: the connection broke: {self.error!r}"
        return self

    def response(self) -> httpx.Response:
        assert self.status is not None
        return httpx.Response(self.status, headers=self.headers, content=bytes(self.body))

    def started(self, timeout: float = 10.0) -> None:
        assert self.first_event.wait(timeout), f"{self.name}: no first event in {timeout} s"
        assert self.status == 200, (self.status, bytes(self.body))


def port_of(gateway: Gateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


def exchange(
    sock: socket.socket, method: str, path: str, body: Any = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on an open connection (kept alive by HTTP/1.1's default), and its answer."""
    payload = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(payload)}\r\n"
    if body is not None:
        head += "content-type: application/json\r\n"
    sock.sendall(head.encode() + b"\r\n" + payload)
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, response.headers, response.read()


def quiet(gateway: Gateway) -> None:
    """No error in the gateway's log (an ASGI exception, a task cut by uvicorn, ...)."""
    errors = [r for r in gateway.log() if r.get("level") in ("error", "critical")]
    assert not errors, errors


def assert_refused(status: int, headers: Any, body: bytes) -> None:
    """A 503 `shutting_down` in OpenAI's envelope, closing its connection, saying when to retry."""
    assert status == 503, (status, body)
    headers = {k.lower(): v for k, v in headers.items()}
    assert headers["connection"] == "close"
    assert int(headers["retry-after"]) >= 1
    assert headers["x-request-id"]
    payload = json.loads(body)
    spec.validate("ErrorResponse", payload)
    assert payload["error"]["code"] == "shutting_down"


# ------------------------------------------------------------------- tests


def test_sigterm_drains_requests_in_flight_and_refuses_new_ones(tmp_path):
    with FakeOpenAI() as fake, gateway_process(tmp_path, fake, drain_seconds=20) as gateway:
        fake.set_default(by_message)
        streams = [Call(gateway.url, SHORT_STREAM, stream=True) for _ in range(2)]
        plain = Call(gateway.url, SLOW_PLAIN, stream=False)
        for stream in streams:
            stream.started()
        fake.wait_for_requests(3)
        kept = socket.create_connection(("127.0.0.1", port_of(gateway)), timeout=5)
        assert exchange(kept, "GET", "/v1/models")[0] == 200  # the connection stays open

        gateway.terminate()

        with kept, httpx.Client(base_url=gateway.url, timeout=5) as client:
            wait_until(lambda: client.get("/readyz").status_code == 503, 3, "/readyz to fail")
            assert_refused(*exchange(kept, "POST", CHAT, chat_body()))
            assert kept.recv(1) == b"", "the gateway left the connection open"
            assert client.get("/readyz").json()["status"] == "draining"
            assert client.get("/healthz").status_code == 200
            assert client.get("/metrics").status_code == 200
            refused = client.post(CHAT, json=chat_body(content=SHORT_STREAM))
            assert error_of(refused, 503)["code"] == "shutting_down"
            assert_refused(refused.status_code, refused.headers, refused.content)
            assert client.get("/v1/models").status_code == 503

        for stream in streams:
            stream.result()
            assert stream.status == 200
            events = spec.validate_stream(bytes(stream.body))  # ends with [DONE], no error
            assert sum(bool(e["choices"]) for e in events) >= SHORT_WORDS
        assert plain.result().status == 200
        spec.validate("CreateChatCompletionResponse", json.loads(plain.body))
        code, seconds = gateway.wait_exit(15)

    assert code == 0
    assert seconds < 10, f"the drain did not end when its requests did ({seconds:.1f} s)"
    assert all(r.finished_at is not None for r in fake.chat_requests[:3])
    [began] = gateway.wait_for_log("shutdown: draining")
    [ended] = gateway.wait_for_log("shutdown: drained")
    assert began["in_flight"] == 3
    assert began["upstream_in_flight"] == "fake=3"
    assert (ended["finished"], ended["cut"]) == (3, 0)
    quiet(gateway)


def test_drain_end_cuts_streams_with_an_error_event_and_calls_with_503(tmp_path):
    with FakeOpenAI() as fake, gateway_process(tmp_path, fake, drain_seconds=2) as gateway:
        fake.set_default(by_message)
        stream = Call(gateway.url, LONG_STREAM, stream=True)
        hanging = Call(gateway.url, HANGING, stream=False)
        slow_start = Call(gateway.url, SLOW_START, stream=True)
        stream.started()
        upstream = {r.json["messages"][0]["content"]: r for r in fake.wait_for_requests(3)}

        gateway.terminate()

        stream.result()
        assert stream.status == 200
        events = spec.validate_stream(bytes(stream.body), expect_done=False)
        assert events[-1]["error"]["code"] == "shutting_down"
        assert not any("error" in e for e in events[:-1])
        for call in (hanging.result(), slow_start.result()):
            assert error_of(call.response(), 503)["code"] == "shutting_down"
            assert_refused(call.status or 0, call.headers, bytes(call.body))
        for message in (LONG_STREAM, HANGING, SLOW_START):
            record = upstream[message]
            assert record.wait_disconnected(5), f"the upstream call of {message!r} went on"
            assert record.finished_at is None
        code, seconds = gateway.wait_exit(KILL_AFTER)

    assert code == 0
    assert 2 <= seconds < 10, f"exited {seconds:.1f} s after SIGTERM (drain_seconds: 2)"
    [ended] = gateway.wait_for_log("shutdown: drained")
    assert (ended["finished"], ended["cut"]) == (0, 3)
    lines = [r for r in gateway.log() if r.get("message") == "chat completion"]
    assert sorted(r["status"] for r in lines) == [200, 503, 503]
    assert {r.get("error") for r in lines} == {"shutting_down"}
    quiet(gateway)


def test_idle_gateway_exits_at_once_on_sigterm(tmp_path):
    with FakeOpenAI() as fake, gateway_process(tmp_path, fake, drain_seconds=20) as gateway:
        gateway.terminate()
        code, seconds = gateway.wait_exit(15)

    assert code == 0
    assert seconds < 5, f"an idle gateway took {seconds:.1f} s to stop"
    [ended] = gateway.wait_for_log("shutdown: drained")
    assert (ended["finished"], ended["cut"]) == (0, 0)
    quiet(gateway)


def test_every_worker_drains_and_the_server_exits_0(tmp_path):
    with (
        FakeOpenAI() as fake,
        gateway_process(tmp_path, fake, drain_seconds=20, workers=2) as gateway,
    ):
        fake.set_default(by_message)
        streams = [Call(gateway.url, SHORT_STREAM, stream=True) for _ in range(3)]
        for stream in streams:
            stream.started()
        workers = gateway.workers()
        assert len(workers) == 2, workers
        assert gateway.process.pid not in workers

        gateway.terminate()

        # uvicorn's supervisor passes SIGTERM on within half a second; each worker drains.
        began = gateway.wait_for_log("shutdown: draining", count=2)
        assert sum(b["in_flight"] for b in began) == 3
        with httpx.Client(base_url=gateway.url, timeout=5) as client:
            assert client.get("/readyz").status_code == 503
            refused = client.post(CHAT, json=chat_body(content=SHORT_STREAM))
            assert error_of(refused, 503)["code"] == "shutting_down"
        for stream in streams:
            spec.validate_stream(bytes(stream.result().body))
        code, seconds = gateway.wait_exit(15)

    assert code == 0
    assert seconds < 10
    ended = gateway.wait_for_log("shutdown: drained", count=2)
    assert sum(e["finished"] for e in ended) == 3
    quiet(gateway)
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_request_cut_while_its_body_comes_gets_the_503(caplog: pytest.LogCaptureFixture):
    """In process (the drain started by hand, no signal): a client still sending its body when
    the drain ends gets the 503 too, and its request line says so."""
    caplog.set_level(logging.INFO, logger="gateway.request")
    from gateway.app import create_app
    from gateway.config import parse_config

    app = create_app(parse_config(yaml.safe_dump(MOCK_CONFIG), source="<test>"))
    handed_over = threading.Event()
    with ServerThread(app, name="gateway") as server:
        head = (
            f"POST {CHAT} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            "content-length: 1000\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(head + b'{"model": "mock-1", "mess')
            wait_until(lambda: bool(app.lifecycle.in_flight), what="the request to be in flight")
            server.loop.call_soon_threadsafe(app.lifecycle.begin, 0.0, handed_over.set)
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert_refused(response.status, response.headers, response.read())
        assert handed_over.wait(5)
        assert not app.lifecycle.in_flight
    lines = [r for r in caplog.records if r.getMessage() == "chat completion"]
    assert [(getattr(r, "status", None), getattr(r, "error", None)) for r in lines] == [
        (503, "shutting_down")
    ]
