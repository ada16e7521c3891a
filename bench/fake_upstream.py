"""A fast fake OpenAI-compatible upstream for the benchmark.

Raw asyncio Protocol on uvloop with httptools request parsing and HTTP/1.1 keep-alive, so that
it is never the bottleneck of a measurement. It answers:

* ``POST .../chat/completions``: a fixed small ``chat.completion`` JSON, or with
  ``"stream": true`` an SSE stream of ``chat.completion.chunk`` events paced by
  ``loop.call_later`` (time to first token, then a fixed delay between chunks).
* ``POST /v1/messages``: the same answers in Anthropic's Messages API format (a ``message``
  JSON, or the ``message_start`` ... ``message_stop`` SSE events with the same number of body
  writes and the same pacing), so that translation cost can be measured against the same load.
* ``GET .../models``: a one-model list.
* ``GET /__stats``: request counters (used by run.py to spot retries or caching).

Run: ``python bench/fake_upstream.py --port 9001 [--ttft-ms 20 --chunks 20 --interval-ms 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import httptools
import orjson
import uvloop

CREATED = int(time.time())
COMPLETION_ID = "chatcmpl-bench0000000000000000000001"
CONTENT_TEXT = "The quick brown fox jumps over the lazy dog while the benchmark keeps on going"
CONTENT_WORDS = CONTENT_TEXT.split()
PROMPT_TOKENS = 42


@dataclass(frozen=True)
class StreamShape:
    ttft: float  # seconds before the first event
    chunks: int  # chat.completion.chunk events, role and finish events included
    interval: float  # seconds between events


@dataclass
class Stats:
    chat: int = 0
    streams: int = 0
    streams_done: int = 0
    models: int = 0
    other: int = 0
    bad: int = 0
    connections: int = 0

    def as_json(self) -> bytes:
        return orjson.dumps(self.__dict__)


@dataclass
class Request:
    method: bytes
    url: bytes
    body: bytes
    keep_alive: bool


def _http_response(
    status: str, body: bytes, content_type: bytes = b"application/json", keep_alive: bool = True
) -> bytes:
    head = (
        b"HTTP/1.1 " + status.encode() + b"\r\n"
        b"content-type: " + content_type + b"\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
    )
    if not keep_alive:
        head += b"connection: close\r\n"
    return head + b"\r\n" + body


def _chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 transfer-encoding chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _sse(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _usage(completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
    }


@dataclass
class Responses:
    """Pre-encoded responses, cached per requested model name."""

    shape: StreamShape
    _plain: dict[tuple[bytes, bool], bytes] = field(default_factory=dict)
    _streams: dict[tuple[bytes, bool], list[bytes]] = field(default_factory=dict)

    def plain(self, model: str, keep_alive: bool) -> bytes:
        key = (model.encode(), keep_alive)
        cached = self._plain.get(key)
        if cached is None:
            content = " ".join(CONTENT_WORDS[:8])
            body = orjson.dumps(
                {
                    "id": COMPLETION_ID,
                    "object": "chat.completion",
                    "created": CREATED,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content, "refusal": None},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": _usage(8),
                    "system_fingerprint": "fp_bench",
                }
            )
            cached = self._plain[key] = _http_response("200 OK", body, keep_alive=keep_alive)
        return cached

    def stream_frames(self, model: str, include_usage: bool) -> list[bytes]:
        """The body writes of one stream: one per event, the last one closes the stream."""
        key = (model.encode(), include_usage)
        cached = self._streams.get(key)
        if cached is None:
            cached = self._streams[key] = self._build_frames(model, include_usage)
        return cached

    def _build_frames(self, model: str, include_usage: bool) -> list[bytes]:
        n = max(2, self.shape.chunks)

        def event(delta: dict[str, object], finish: str | None) -> bytes:
            return _sse(
                {
                    "id": COMPLETION_ID,
                    "object": "chat.completion.chunk",
                    "created": CREATED,
                    "model": model,
                    "system_fingerprint": "fp_bench",
                    "choices": [
                        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                    ],
                }
            )

        frames = [_chunk(event({"role": "assistant", "content": "", "refusal": None}, None))]
        for i in range(n - 2):
            word = CONTENT_WORDS[i % len(CONTENT_WORDS)]
            frames.append(_chunk(event({"content": word if i == 0 else " " + word}, None)))
        last = _chunk(event({}, "stop"))
        if include_usage:
            last += _chunk(
                _sse(
                    {
                        "id": COMPLETION_ID,
                        "object": "chat.completion.chunk",
                        "created": CREATED,
                        "model": model,
                        "system_fingerprint": "fp_bench",
                        "choices": [],
                        "usage": _usage(n - 2),
                    }
                )
            )
        last += _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        frames.append(last)
        return frames


def _anthropic_event(kind: str, obj: Mapping[str, object]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **obj}) + b"\n\n"


@dataclass
class AnthropicResponses:
    """Pre-encoded Messages API answers (docs.anthropic.com/en/api/messages), per model."""

    shape: StreamShape
    _plain: dict[tuple[bytes, bool], bytes] = field(default_factory=dict)
    _streams: dict[bytes, list[bytes]] = field(default_factory=dict)

    def plain(self, model: str, keep_alive: bool) -> bytes:
        key = (model.encode(), keep_alive)
        cached = self._plain.get(key)
        if cached is None:
            body = orjson.dumps(
                {
                    "id": "msg_bench000000000000000001",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": " ".join(CONTENT_WORDS[:8])}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 8},
                }
            )
            cached = self._plain[key] = _http_response("200 OK", body, keep_alive=keep_alive)
        return cached

    def stream_frames(self, model: str, include_usage: bool) -> list[bytes]:
        """As many body writes as the OpenAI stream; usage is always sent (Anthropic does)."""
        cached = self._streams.get(model.encode())
        if cached is None:
            cached = self._streams[model.encode()] = self._build_frames(model)
        return cached

    def _build_frames(self, model: str) -> list[bytes]:
        n = max(2, self.shape.chunks)
        start: dict[str, object] = {
            "message": {
                "id": "msg_bench000000000000000001",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1},
            }
        }
        block = {"index": 0, "content_block": {"type": "text", "text": ""}}
        frames = [
            _chunk(
                _anthropic_event("message_start", start)
                + _anthropic_event("content_block_start", block)
                + _anthropic_event("ping", {})
            )
        ]
        for i in range(n - 2):
            word = CONTENT_WORDS[i % len(CONTENT_WORDS)]
            delta = {
                "index": 0,
                "delta": {"type": "text_delta", "text": word if i == 0 else " " + word},
            }
            frames.append(_chunk(_anthropic_event("content_block_delta", delta)))
        end = {
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": n - 2},
        }
        frames.append(
            _chunk(
                _anthropic_event("content_block_stop", {"index": 0})
                + _anthropic_event("message_delta", end)
                + _anthropic_event("message_stop", {})
            )
            + b"0\r\n\r\n"
        )
        return frames


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n"
)


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parse requests, answer in order (pipelining-safe)."""

    def __init__(self, responses: Responses, anthropic: AnthropicResponses, stats: Stats) -> None:
        self._responses = responses
        self._anthropic = anthropic
        self._stats = stats
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._queue: collections.deque[Request] = collections.deque()
        self._busy = False  # a stream is being written on this connection
        self._timer: asyncio.TimerHandle | None = None
        self._frames: list[bytes] = []
        self._frame = 0
        self._stream_keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._stats.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        self._queue.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._stats.bad += 1
            self._send(_http_response("400 Bad Request", b"{}", keep_alive=False), close=True)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        request = Request(
            self._parser.get_method(),
            self._url,
            b"".join(self._body),
            self._parser.should_keep_alive(),
        )
        if self._busy:
            self._queue.append(request)
        else:
            self._handle(request)

    # request handling
    def _send(self, data: bytes, close: bool = False) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if close:
            transport.close()

    def _handle(self, request: Request) -> None:
        path = request.url.split(b"?", 1)[0]
        keep_alive = request.keep_alive
        if request.method == b"POST" and path.endswith(b"/chat/completions"):
            self._chat(request.body, keep_alive, self._responses)
        elif request.method == b"POST" and path == b"/v1/messages":
            self._chat(request.body, keep_alive, self._anthropic)
        elif request.method == b"GET" and path.endswith(b"/models"):
            self._stats.models += 1
            body = orjson.dumps(
                {
                    "object": "list",
                    "data": [
                        {
                            "id": "bench-model",
                            "object": "model",
                            "created": CREATED,
                            "owned_by": "bench",
                        }
                    ],
                }
            )
            self._send(_http_response("200 OK", body, keep_alive=keep_alive), not keep_alive)
        elif request.method == b"GET" and path == b"/__stats":
            self._send(
                _http_response("200 OK", self._stats.as_json(), keep_alive=keep_alive),
                not keep_alive,
            )
        else:
            self._stats.other += 1
            body = b'{"error":{"message":"not found","type":"invalid_request_error"}}'
            self._send(_http_response("404 Not Found", body, keep_alive=keep_alive), not keep_alive)

    def _chat(
        self, raw: bytes, keep_alive: bool, responses: Responses | AnthropicResponses
    ) -> None:
        try:
            payload = orjson.loads(raw)
            if not isinstance(payload, dict):
                raise TypeError("body is not a JSON object")
        except (orjson.JSONDecodeError, TypeError):
            self._stats.bad += 1
            body = b'{"error":{"message":"invalid JSON body","type":"invalid_request_error"}}'
            self._send(
                _http_response("400 Bad Request", body, keep_alive=keep_alive), not keep_alive
            )
            return
        self._stats.chat += 1
        model = payload.get("model")
        model = model if isinstance(model, str) else "bench-model"
        if payload.get("stream") is not True:
            self._send(responses.plain(model, keep_alive), not keep_alive)
            return
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        self._stats.streams += 1
        self._busy = True
        self._frames = responses.stream_frames(model, include_usage)
        self._frame = 0
        self._stream_keep_alive = keep_alive
        self._send(STREAM_HEAD + (b"\r\n" if keep_alive else b"connection: close\r\n\r\n"))
        self._timer = self._loop.call_later(self._responses.shape.ttft, self._next_frame)

    def _next_frame(self) -> None:
        self._timer = None
        if self._transport is None or self._transport.is_closing():
            return
        frames = self._frames
        self._transport.write(frames[self._frame])
        self._frame += 1
        if self._frame < len(frames):
            self._timer = self._loop.call_later(self._responses.shape.interval, self._next_frame)
            return
        self._stats.streams_done += 1
        self._busy = False
        if not self._stream_keep_alive:
            self._transport.close()
            return
        while self._queue and not self._busy:
            self._handle(self._queue.popleft())


async def serve(host: str, port: int, shape: StreamShape) -> None:
    loop = asyncio.get_running_loop()
    responses = Responses(shape)
    anthropic = AnthropicResponses(shape)
    stats = Stats()
    server = await loop.create_server(
        lambda: UpstreamProtocol(responses, anthropic, stats),
        host,
        port,
        backlog=4096,
        reuse_address=True,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--ttft-ms", type=float, default=20.0, help="time to first token")
    parser.add_argument("--chunks", type=int, default=20, help="chunk events per stream")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="delay between chunks")
    args = parser.parse_args()
    shape = StreamShape(args.ttft_ms / 1000, args.chunks, args.interval_ms / 1000)
    uvloop.run(serve(args.host, args.port, shape))


if __name__ == "__main__":
    main()
