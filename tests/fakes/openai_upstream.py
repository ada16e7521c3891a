"""A fake OpenAI upstream on a real socket, speaking OpenAI's wire format, scripted per test.

`FakeOpenAI` is a small Starlette app under a real uvicorn (`tests/servers.py`) on
`127.0.0.1:<free port>`. Each request is answered by the next scripted `Reply` for its path
(`fake.script(...)`, first in first out), or by the path's default. A `Reply` describes the
whole exchange: a `chat.completion`, or an SSE stream when the request says `stream: true`
(role chunk, content deltas, tool-call deltas, finish chunk, usage chunk with
`stream_options.include_usage`, `data: [DONE]`); an error status with OpenAI's error body; a raw
non-JSON body; delays before the first byte, before the first event and between events; a
connection cut or a stall after N events; or a hang that lasts until the client gives up or the
fake stops.

What OpenAI does that the fake copies, from the API reference and observed responses:
- every response carries `x-request-id: req_<32 hex>`, `openai-version` and
  `openai-processing-ms`; errors are `{"error": {"message", "type", "param", "code"}}`, also on
  a `stream: true` request, also for unknown URLs (404 "Invalid URL (POST /v1/x)");
- a completion's message always has `content`, `refusal` (null) and `annotations`, its choice
  always `logprobs` (null); bodies are indented JSON, stream events compact, both raw UTF-8
  (so a multi-byte character can straddle two reads);
- with `include_usage`, every chunk has `usage: null` but the last, whose `choices` is `[]`;
  chunks carry an `obfuscation` field unless `stream_options.include_obfuscation` is false;
- a tool-call stream puts the first call's id and name in the role chunk (`content: null`),
  then sends `arguments` in fragments under each call's `index`.

Every request is recorded (`fake.requests`) with its headers, parsed JSON body, the request id
it was answered with, and whether and when the client dropped the connection before the response
was complete: the disconnect is seen as ASGI `http.disconnect` from a task that watches
`receive()` for the whole exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import logging
import random
import re
import secrets
import string
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import EllipsisType, TracebackType
from typing import Any, Self

from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests import spec
from tests.servers import LoopName, ServerThread

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
ANY_PATH = "*"
OPENAI_VERSION = "2020-10-01"
ARGUMENT_FRAGMENT = 6  # characters of tool-call arguments per stream delta

# uvicorn logs these at ERROR when an app returns mid-response, which is how the fake cuts a
# connection on purpose; they are dropped for the fake's own thread only.
_DELIBERATE = frozenset(
    {
        "ASGI callable returned without starting response.",
        "ASGI callable returned without completing response.",
    }
)

# OpenAI's `type`, `code` and message by status, for `Reply.error(status)`.
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided: sk-fake."),
    403: (
        "request_forbidden",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    413: ("invalid_request_error", None, "Request too large."),
    422: ("invalid_request_error", None, "Unprocessable request."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached. Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("server_error", None, "Gateway timeout."),
}


@dataclass(frozen=True)
class ToolCall:
    """One function call the fake model makes. `arguments` is JSON text sent as given; a string
    is streamed in fragments of a few characters, a sequence as exactly those fragments."""

    name: str
    arguments: str | Sequence[str] = "{}"
    id: str | None = None  # default: a fresh `call_...`


@dataclass(frozen=True)
class Reply:
    """How the fake answers one request. The defaults answer a chat request successfully.

    Chat content: `content` is the assistant text (a string streams word by word, a sequence
    as exactly those deltas; None for no text), `tool_calls` the calls made, `finish_reason`
    defaults to `tool_calls` or `stop`, `model` to the requested one, `usage` overrides the
    computed token counts (prompt: words in the messages; completion: deltas sent).

    Any path: `status` and `body` (sent verbatim with `content_type`) replace the natural
    answer; `headers` are added (a None value removes one the fake sends, e.g. `x-request-id`).
    Timing, in seconds: `first_byte_delay` before the status line, `first_event_delay` after
    the headers of a stream, `event_delay` between stream events. Failures: `cut_after=N`
    closes the connection after N stream events (for a JSON body: after half of it),
    `stall_after=N` goes silent after N events, `send_done=False` ends a stream cleanly without
    `data: [DONE]`, `hang=True` never answers. Whatever waits ends when the client disconnects
    or the fake stops.
    """

    content: str | Sequence[str] | None = "Hello! How can I help you today?"
    tool_calls: Sequence[ToolCall] = ()
    finish_reason: str | None = None
    model: str | None = None
    usage: Mapping[str, int] | None = None
    status: int = 200
    body: bytes | None = None
    content_type: str = "application/json"
    headers: Mapping[str, str | None] = field(default_factory=dict)
    first_byte_delay: float = 0.0
    first_event_delay: float = 0.0
    event_delay: float = 0.0
    cut_after: int | None = None
    stall_after: int | None = None
    send_done: bool = True
    hang: bool = False

    @classmethod
    def tools(cls, *calls: ToolCall, content: str | Sequence[str] | None = None) -> Reply:
        """The model calls `calls` (and says `content`, if any first)."""
        return cls(content=content, tool_calls=calls)

    @classmethod
    def error(
        cls,
        status: int,
        message: str | None = None,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | EllipsisType | None = ...,
        retry_after: float | None = None,
        headers: Mapping[str, str | None] | None = None,
        first_byte_delay: float = 0.0,
    ) -> Reply:
        """`status` with OpenAI's error body; type, code and message default per status
        (pass `code=None` for a null code).

        A 429 gets `retry-after: 1` unless `retry_after` says otherwise.
        """
        default_type, default_code, default_message = _ERRORS.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None, "Error.")
        )
        envelope = {
            "error": {
                "message": message or default_message,
                "type": type or default_type,
                "param": param,
                "code": default_code if code is ... else code,
            }
        }
        all_headers: dict[str, str | None] = dict(headers or {})
        if retry_after is None and status == 429:
            retry_after = 1
        if retry_after is not None:
            all_headers["retry-after"] = f"{retry_after:g}"
        return cls(
            status=status,
            body=json.dumps(envelope, indent=4).encode() + b"\n",
            headers=all_headers,
            first_byte_delay=first_byte_delay,
        )

    @classmethod
    def raw(
        cls,
        body: bytes | str,
        *,
        status: int = 200,
        content_type: str = "text/html; charset=utf-8",
        headers: Mapping[str, str | None] | None = None,
    ) -> Reply:
        """Exactly `body` (e.g. a proxy's HTML error page), not JSON."""
        data = body.encode() if isinstance(body, str) else body
        return cls(status=status, body=data, content_type=content_type, headers=headers or {})

    @classmethod
    def hanging(cls) -> Reply:
        """Never answers: no status line, until the client disconnects or the fake stops."""
        return cls(hang=True)


Behaviour = Reply | Callable[["RecordedRequest"], Reply]


@dataclass(eq=False)
class RecordedRequest:
    """One request the fake received, and what became of its connection.

    Times are `time.monotonic()`. `disconnected_at` is set when the client closed the
    connection before the fake finished its response (a cancelled upstream call);
    `finished_at` when the fake sent the whole response. Both are written by the server's
    thread: wait with `wait_disconnected()` or `wait_ended()` before reading them.
    """

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lowercased names; repeated headers joined with ", "
    body: bytes
    json: Any  # the parsed body, None if it is not JSON (Any: tests index into it freely)
    request_id: str  # the x-request-id the fake answered with
    received_at: float
    reply: Reply | None = None
    disconnected_at: float | None = None
    finished_at: float | None = None
    _disconnected: threading.Event = field(default_factory=threading.Event, repr=False)
    _ended: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def disconnected(self) -> bool:
        return self._disconnected.is_set()

    def wait_disconnected(self, timeout: float = 5.0) -> bool:
        """Block until the client dropped this request's connection; False on timeout."""
        return self._disconnected.wait(timeout)

    def wait_ended(self, timeout: float = 5.0) -> bool:
        """Block until the fake is done with this request, whichever way (sent, cut, dropped)."""
        return self._ended.wait(timeout)

    def _mark_disconnected(self) -> None:
        self.disconnected_at = time.monotonic()
        self._disconnected.set()


def _random_id(prefix: str, length: int) -> str:
    return prefix + "".join(random.choices(string.ascii_letters + string.digits, k=length))


def _pieces(text: str | Sequence[str] | None) -> list[str]:
    """Stream deltas: a string by words with their leading space ("Hi", " there"), as models
    tokenize; a sequence as given."""
    if text is None:
        return []
    if isinstance(text, str):
        return re.findall(r"\s*\S+|\s+", text)
    return list(text)


def _fragments(arguments: str | Sequence[str]) -> list[str]:
    if isinstance(arguments, str):
        step = ARGUMENT_FRAGMENT
        return [arguments[i : i + step] for i in range(0, len(arguments), step)] or [""]
    return list(arguments)


def _prompt_tokens(request: Mapping[str, Any]) -> int:
    """Words in the messages' text: deterministic, close enough for usage assertions."""
    words = 0
    for message in request.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        parts = content if isinstance(content, list) else [{"text": content}]
        for part in parts:
            text = part.get("text") if isinstance(part, dict) else None
            if isinstance(text, str):
                words += len(text.split())
    return max(words, 1)


def _choices(request: Mapping[str, Any]) -> int:
    n = request.get("n")
    return n if isinstance(n, int) and n > 0 else 1


def _usage(request: Mapping[str, Any], reply: Reply) -> dict[str, Any]:
    per_choice = len(_pieces(reply.content)) + sum(
        len(_fragments(call.arguments)) + 1 for call in reply.tool_calls
    )
    prompt, completion = _prompt_tokens(request), per_choice * _choices(request)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    usage.update(reply.usage or {})
    return usage


def _model(request: Mapping[str, Any], reply: Reply) -> str:
    requested = request.get("model")
    return reply.model or (requested if isinstance(requested, str) else "gpt-4o-mini")


def _finish_reason(reply: Reply) -> str:
    return reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")


def _call_ids(reply: Reply) -> list[str]:
    return [call.id or _random_id("call_", 24) for call in reply.tool_calls]


def build_completion(request: Mapping[str, Any], reply: Reply | None = None) -> dict[str, Any]:
    """The `chat.completion` OpenAI would answer `request` with (a JSON body as a dict)."""
    reply = reply or Reply()
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if reply.content is None else "".join(_pieces(reply.content)),
        "refusal": None,
        "annotations": [],
    }
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": "".join(_fragments(call.arguments))},
            }
            for call, call_id in zip(reply.tool_calls, _call_ids(reply), strict=True)
        ]
    return {
        "id": _random_id("chatcmpl-", 29),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": _model(request, reply),
        "choices": [
            {
                "index": index,
                "message": copy.deepcopy(message),
                "logprobs": None,
                "finish_reason": _finish_reason(reply),
            }
            for index in range(_choices(request))
        ],
        "usage": _usage(request, reply),
        "service_tier": "default",
        "system_fingerprint": "fp_" + secrets.token_hex(5),
    }


def _deltas(reply: Reply, call_ids: list[str]) -> list[dict[str, Any]]:
    """One choice's deltas, role chunk first."""
    pieces = _pieces(reply.content)
    headers = [
        {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        for index, (call, call_id) in enumerate(zip(reply.tool_calls, call_ids, strict=True))
    ]
    role: dict[str, Any] = {"role": "assistant", "content": None if reply.content is None else ""}
    if headers and reply.content is None:
        role["tool_calls"] = [headers.pop(0)]
    role["refusal"] = None
    deltas = [role, *({"content": piece} for piece in pieces)]
    for index, call in enumerate(reply.tool_calls):
        if headers and headers[0]["index"] == index:
            deltas.append({"tool_calls": [headers.pop(0)]})
        deltas.extend(
            {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}
            for fragment in _fragments(call.arguments)
        )
    return deltas


def build_chunks(request: Mapping[str, Any], reply: Reply | None = None) -> list[dict[str, Any]]:
    """The `chat.completion.chunk` events OpenAI would stream for `request`, without [DONE]."""
    reply = reply or Reply()
    options = request.get("stream_options")
    options = options if isinstance(options, dict) else {}
    include_usage = options.get("include_usage") is True
    obfuscate = options.get("include_obfuscation") is not False
    base = {
        "id": _random_id("chatcmpl-", 29),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": _model(request, reply),
        "service_tier": "default",
        "system_fingerprint": "fp_" + secrets.token_hex(5),
    }

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
        event = {**base, "choices": choices}
        if include_usage:
            event["usage"] = usage
        if obfuscate:
            event["obfuscation"] = _random_id("", random.randint(1, 12))
        return event

    call_ids = _call_ids(reply)
    per_choice: list[list[dict[str, Any]]] = [
        [
            *(
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
                for delta in _deltas(reply, call_ids)
            ),
            {"index": index, "delta": {}, "logprobs": None, "finish_reason": _finish_reason(reply)},
        ]
        for index in range(_choices(request))
    ]
    # With n > 1 OpenAI interleaves the choices' chunks; each chunk carries one choice.
    events = [
        chunk([choice])
        for step in itertools.zip_longest(*per_choice)
        for choice in step
        if choice is not None
    ]
    if include_usage:
        events.append(chunk([], _usage(request, reply)))
    return events


def _sse(data: str) -> bytes:
    return f"data: {data}\n\n".encode()


class _QuietDeliberateCuts(logging.Filter):
    def __init__(self, thread_name: str) -> None:
        super().__init__()
        self.thread_name = thread_name

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.threadName == self.thread_name and record.getMessage() in _DELIBERATE)


class _Exchange:
    """One request/response on the fake: plays the reply while a task watches for the client
    going away; whichever ends first stops the other."""

    def __init__(
        self, fake: FakeOpenAI, record: RecordedRequest, reply: Reply, receive: Receive, send: Send
    ) -> None:
        self.fake = fake
        self.record = record
        self.reply = reply
        self.receive = receive
        self.send = send
        self.completing = False

    async def run(self) -> None:
        play = asyncio.ensure_future(self._play())
        watch = asyncio.ensure_future(self._watch())
        try:
            await asyncio.wait({play, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (play, watch):
                task.cancel()
            await asyncio.gather(play, watch, return_exceptions=True)
            self.record._ended.set()
        if not play.cancelled():
            play.result()  # the fake's own bugs surface in uvicorn's log and the test

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                # uvicorn also says http.disconnect once the response is complete.
                if not self.completing:
                    self.record._mark_disconnected()
                return

    async def _pause(self, seconds: float) -> bool:
        """Sleep; False (stop playing) if the fake is stopping."""
        stopping = self.fake._stopping
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), seconds)
        else:
            await asyncio.sleep(0)  # let a client's disconnect be seen between events
        return not stopping.is_set()

    async def _start(self, status: int, content_type: str, length: int | None = None) -> None:
        headers: dict[str, str | None] = {
            "content-type": content_type,
            "x-request-id": self.record.request_id,
            "openai-version": OPENAI_VERSION,
            "openai-processing-ms": str(int((time.monotonic() - self.record.received_at) * 1000)),
            **{name.lower(): value for name, value in self.reply.headers.items()},
        }
        if length is not None:
            headers["content-length"] = str(length)
        raw = [(k.encode(), v.encode()) for k, v in headers.items() if v is not None]
        await self.send({"type": "http.response.start", "status": status, "headers": raw})

    async def _finish(self, body: bytes = b"") -> None:
        self.completing = True
        await self.send({"type": "http.response.body", "body": body, "more_body": False})
        self.record.finished_at = time.monotonic()

    async def _play(self) -> None:
        reply = self.reply
        if reply.hang:
            await self.fake._stopping.wait()
            return
        if not await self._pause(reply.first_byte_delay):
            return
        streaming = isinstance(self.record.json, dict) and self.record.json.get("stream") is True
        if reply.body is None and self.record.path == CHAT_PATH and streaming:
            chunks = build_chunks(self.record.json, reply)
            compact = [json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in chunks]
            await self._play_stream(compact)
            return
        body = reply.body if reply.body is not None else self.fake._natural_body(self.record)
        await self._start(reply.status, reply.content_type, len(body))
        if reply.cut_after is not None:
            await self.send(
                {"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True}
            )
            return  # uvicorn closes the connection: the body stays incomplete
        await self._finish(body)

    async def _play_stream(self, datas: list[str]) -> None:
        reply = self.reply
        await self._start(reply.status, "text/event-stream; charset=utf-8")
        events = [*datas, "[DONE]"] if reply.send_done else datas
        for position, data in enumerate(events):
            if position == reply.cut_after:
                return  # returning mid-response makes uvicorn close the connection
            if position == reply.stall_after:
                await self.fake._stopping.wait()
                return
            if not await self._pause(reply.event_delay if position else reply.first_event_delay):
                return
            await self.send({"type": "http.response.body", "body": _sse(data), "more_body": True})
        await self._finish()


class _Endpoint:
    """The ASGI app behind one route (a class instance, so Starlette passes raw ASGI)."""

    def __init__(self, fake: FakeOpenAI, path: str) -> None:
        self.fake = fake
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        record = self.fake._record(scope, b"".join(chunks))
        try:
            reply = record.reply = self.fake._reply_for(self.path, record)
        finally:
            self.fake._append(record)
        await _Exchange(self.fake, record, reply, receive, send).run()


class FakeOpenAI:
    """A fake OpenAI API on `127.0.0.1:<free port>`; use as a context manager.

    `base_url` ("http://127.0.0.1:PORT/v1") is what an OpenAI client or a gateway upstream
    takes. `api_key`, if set, is required as `Authorization: Bearer <key>` (401 otherwise).
    `models` are listed by `GET /v1/models`. `validate_requests` asks the `fake_openai` fixture
    to check every chat request body against OpenAI's request schema at teardown.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        models: Sequence[str] = ("gpt-4o-mini", "gpt-4o"),
        loop: LoopName = "asyncio",
        validate_requests: bool = True,
    ) -> None:
        self.api_key = api_key
        self.models = list(models)
        self.validate_requests = validate_requests
        self._lock = threading.Condition()  # guards requests and scripts; notified per request
        self._requests: list[RecordedRequest] = []
        self._scripts: dict[str, deque[Behaviour]] = {}
        self._defaults: dict[str, Behaviour] = {}
        self._stopping = asyncio.Event()  # bound to the server's loop on first use
        app = Starlette(
            routes=[
                Route(CHAT_PATH, _Endpoint(self, CHAT_PATH), methods=["POST"]),
                Route(MODELS_PATH, _Endpoint(self, MODELS_PATH), methods=["GET"]),
                Route("/{path:path}", _Endpoint(self, ANY_PATH)),
            ]
        )
        self._server = ServerThread(app, name="fake-openai", loop=loop, lifespan="off")
        self._log_filter = _QuietDeliberateCuts(self._server.name)

    # -- lifecycle

    def start(self) -> None:
        logging.getLogger("uvicorn.error").addFilter(self._log_filter)
        try:
            self._server.start()
        except BaseException:
            logging.getLogger("uvicorn.error").removeFilter(self._log_filter)
            raise

    def stop(self) -> None:
        """Release hanging and stalled responses, then stop the server."""
        try:
            with contextlib.suppress(RuntimeError):  # never started, or its loop is closed
                self._server.loop.call_soon_threadsafe(self._stopping.set)
            self._server.stop()
        finally:
            logging.getLogger("uvicorn.error").removeFilter(self._log_filter)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`."""
        return self._server.url

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>/v1`, OpenAI's base URL layout."""
        return self._server.url + "/v1"

    # -- scripting

    def script(self, *replies: Behaviour, path: str = CHAT_PATH) -> None:
        """Queue replies for the next requests to `path`, in order; then the default answers.

        A behaviour is a `Reply` or a function of the `RecordedRequest` returning one.
        """
        with self._lock:
            self._scripts.setdefault(path, deque()).extend(replies)

    def set_default(self, reply: Behaviour, path: str = CHAT_PATH) -> None:
        """Answer `path` with `reply` whenever nothing is scripted (initially: `Reply()`)."""
        with self._lock:
            self._defaults[path] = reply

    def pending(self, path: str = CHAT_PATH) -> int:
        """How many scripted replies for `path` are still unused."""
        with self._lock:
            return len(self._scripts.get(path, ()))

    # -- assertions

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == CHAT_PATH]

    def wait_for_requests(
        self, count: int, timeout: float = 5.0, path: str | None = CHAT_PATH
    ) -> list[RecordedRequest]:
        """Block until `count` requests to `path` (None: any) arrived; raises AssertionError."""

        def matching() -> list[RecordedRequest]:
            return [r for r in self._requests if path is None or r.path == path]

        with self._lock:
            if not self._lock.wait_for(lambda: len(matching()) >= count, timeout):
                raise AssertionError(
                    f"expected {count} request(s) to {path or 'any path'} within {timeout} s, "
                    f"got {len(matching())}"
                )
            return matching()

    def check_requests(self) -> None:
        """Raise AssertionError unless every chat request body is a valid OpenAI request."""
        for record in self.chat_requests:
            try:
                spec.validate("CreateChatCompletionRequest", record.json)
            except AssertionError as exc:
                raise AssertionError(
                    f"the fake upstream received an invalid chat request "
                    f"(x-request-id {record.request_id}):\n{exc}"
                ) from None

    # -- serving (called on the server's thread)

    def _record(self, scope: Scope, body: bytes) -> RecordedRequest:
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        return RecordedRequest(
            method=scope["method"],
            path=scope["path"],
            query=scope["query_string"].decode("latin-1"),
            headers=headers,
            body=body,
            json=parsed,
            request_id="req_" + secrets.token_hex(16),
            received_at=time.monotonic(),
        )

    def _append(self, record: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(record)
            self._lock.notify_all()

    def _reply_for(self, path: str, record: RecordedRequest) -> Reply:
        if self.api_key is not None and record.headers.get("authorization") != (
            f"Bearer {self.api_key}"
        ):
            return Reply.error(401)
        if path == ANY_PATH:
            message = f"Invalid URL ({record.method} {record.path})"
            return Reply.error(404, message, code=None)
        if path == CHAT_PATH and not isinstance(record.json, dict):
            return Reply.error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
                "but what was sent was not valid JSON.)",
            )
        with self._lock:
            queue = self._scripts.get(path)
            behaviour = queue.popleft() if queue else self._defaults.get(path, Reply())
        return behaviour(record) if callable(behaviour) else behaviour

    def _natural_body(self, record: RecordedRequest) -> bytes:
        """What the path answers when the reply has no body of its own."""
        if record.path == MODELS_PATH:
            listing = {
                "object": "list",
                "data": [
                    {"id": model, "object": "model", "created": 1715367049, "owned_by": "system"}
                    for model in self.models
                ],
            }
            return json.dumps(listing, indent=2).encode()
        assert record.reply is not None
        completion = build_completion(record.json, record.reply)
        return json.dumps(completion, ensure_ascii=False, indent=2).encode()
