"""Streaming load client: N workers, each looping one SSE chat stream at a time.

Raw asyncio Protocol on uvloop with httptools response parsing over keep-alive connections.
For each stream it records the time from sending the request to the first ``data:`` line of
the body (TTFB) and reads to ``data: [DONE]``. A stream that answers non-200 or ends without
``[DONE]`` is an error. After ``--warmup`` seconds it counts, for ``--duration`` seconds, the
streams that complete, and prints one JSON object on stdout.

Run: ``python bench/stream_client.py --url http://127.0.0.1:9001/v1/chat/completions -c 16``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import cast

import httptools
import uvloop

DEFAULT_BODY = {
    "model": "bench-model",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write one short sentence about foxes."},
    ],
    "max_tokens": 64,
}


@dataclass
class StreamResult:
    status: int
    ttfb: float | None  # seconds to the first SSE data line
    done: bool  # saw data: [DONE]
    keep_alive: bool


class StreamConnection(asyncio.Protocol):
    """One keep-alive connection carrying one stream at a time."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[StreamResult] | None = None
        self._start = 0.0
        self._status = 0
        self._ttfb: float | None = None
        self._done = False
        self._tail = b""

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def request(self, raw: bytes) -> asyncio.Future[StreamResult]:
        assert self.transport is not None
        self._waiter = self._loop.create_future()
        self._status = 0
        self._ttfb = None
        self._done = False
        self._tail = b""
        self._start = time.perf_counter()
        self.transport.write(raw)
        return self._waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(ConnectionError("connection closed mid-response"))

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)
            self.close()

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        seen = self._tail + body
        if self._ttfb is None and b"data:" in seen:
            self._ttfb = time.perf_counter() - self._start
        if not self._done and b"data: [DONE]" in seen:
            self._done = True
        self._tail = seen[-16:]

    def on_message_complete(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            result = StreamResult(
                self._status, self._ttfb, self._done, self._parser.should_keep_alive()
            )
            self._waiter.set_result(result)


@dataclass
class Tally:
    measure_from: float
    measure_to: float
    completed: int = 0  # in the measured window
    total_completed: int = 0  # warm-up and tail included
    errors: int = 0  # in the measured window
    total_errors: int = 0
    ttfbs: list[float] = field(default_factory=list)
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)

    def in_window(self, t: float) -> bool:
        return self.measure_from <= t <= self.measure_to

    def error(self, reason: str, t: float) -> None:
        self.total_errors += 1
        if self.in_window(t):
            self.errors += 1
            self.reasons[reason] += 1


def build_request(url: urllib.parse.SplitResult, body: bytes, api_key: str | None) -> bytes:
    path = url.path + (f"?{url.query}" if url.query else "")
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {url.netloc}",
        "Content-Type: application/json",
        "Accept: text/event-stream",
        f"Content-Length: {len(body)}",
    ]
    if api_key:
        head.append(f"Authorization: Bearer {api_key}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def worker(
    host: str, port: int, raw: bytes, tally: Tally, limit: float, stop_at: float
) -> None:
    loop = asyncio.get_running_loop()
    conn: StreamConnection | None = None
    try:
        while time.perf_counter() < stop_at:
            if conn is None or not conn.usable:
                try:
                    async with asyncio.timeout(limit):
                        _, conn = await loop.create_connection(StreamConnection, host, port)
                except (OSError, TimeoutError) as exc:
                    tally.error(f"connect: {type(exc).__name__}", time.perf_counter())
                    conn = None
                    await asyncio.sleep(0.05)
                    continue
            try:
                async with asyncio.timeout(limit):
                    result = await conn.request(raw)
            except (OSError, TimeoutError, httptools.HttpParserError) as exc:
                tally.error(type(exc).__name__, time.perf_counter())
                conn.close()
                conn = None
                continue
            now = time.perf_counter()
            if result.status != 200:
                tally.error(f"status {result.status}", now)
            elif not result.done:
                tally.error("no [DONE]", now)
            else:
                tally.total_completed += 1
                if tally.in_window(now):
                    tally.completed += 1
                    if result.ttfb is not None:
                        tally.ttfbs.append(result.ttfb)
            if not result.keep_alive:
                conn.close()
                conn = None
    finally:
        if conn is not None:
            conn.close()


def percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(pct / 100 * len(ordered)) - 1  # nearest rank
    return ordered[max(0, min(len(ordered) - 1, rank))]


async def run(args: argparse.Namespace) -> dict[str, object]:
    url = urllib.parse.urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    body = dict(json.loads(args.body)) if args.body else dict(DEFAULT_BODY)
    body["stream"] = True
    raw = build_request(url, json.dumps(body, separators=(",", ":")).encode(), args.api_key)
    start = time.perf_counter()
    tally = Tally(start + args.warmup, start + args.warmup + args.duration)
    workers = [
        asyncio.create_task(worker(host, port, raw, tally, args.timeout, tally.measure_to))
        for _ in range(args.concurrency)
    ]
    await asyncio.gather(*workers)
    ms = [t * 1000 for t in tally.ttfbs]
    return {
        "concurrency": args.concurrency,
        "duration": args.duration,
        "streams": tally.completed,
        "rate": tally.completed / args.duration,
        "ttfb_p50_ms": percentile(ms, 50),
        "ttfb_p99_ms": percentile(ms, 99),
        "errors": tally.errors,
        "error_reasons": dict(tally.reasons),
        "total_completed": tally.total_completed,
        "total_errors": tally.total_errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="SSE streaming load client")
    parser.add_argument("--url", required=True, help="full chat/completions URL")
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--timeout", type=float, default=10.0, help="per stream, seconds")
    parser.add_argument("--body", help="request JSON (stream: true is added)")
    parser.add_argument("--api-key", help="sent as Authorization: Bearer")
    args = parser.parse_args()
    result = uvloop.run(run(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
