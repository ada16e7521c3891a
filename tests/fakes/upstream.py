"""A fake model provider on a real socket, scripted per test, in any provider's wire format.

`FakeUpstream` is a small Starlette app under a real uvicorn (`tests/servers.py`) on
`127.0.0.1:<free port>`. What is provider-neutral lives here: a `Reply` describes one exchange
in neutral terms (assistant text, tool calls, finish reason, usage, an error status, timing and
failures), requests are recorded, scripted replies are queued per route, and the exchange is
played while a task watches for the client going away. What a provider's API looks like on the
wire (its paths, authentication, the requests it rejects, its bodies, stream framing and error
shape) is a `Dialect`: `tests/fakes/openai_upstream.py` is OpenAI's, and each other provider's
fake module defines its own.

A dialect's `problems()` is the provider's own request validation: a request with problems is
answered with the provider's 400 at once (as the real service would) and, unless the fake was
made with `validate_requests=False`, the fixture that owns the fake fails the test at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import string
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import EllipsisType, TracebackType
from typing import Any, Protocol, Self

from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.servers import LoopName, ServerThread

ANY_PATH = "*"
ARGUMENT_FRAGMENT = 6  # characters of tool-call arguments per stream delta

# uvicorn logs these at ERROR when an app returns mid-response, which is how the fake cuts a
# connection on purpose; they are dropped for the fake's own thread only.
_DELIBERATE = frozenset(
    {
        "ASGI callable returned without starting response.",
        "ASGI callable returned without completing response.",
    }
)


@dataclass(frozen=True)
class ToolCall:
    """One function call the fake model makes. `arguments` is JSON text sent as given; a string
    is streamed in fragments of a few characters, a sequence as exactly those fragments."""

    name: str
    arguments: str | Sequence[str] = "{}"
    id: str | None = None  # default: a fresh id in the provider's style


@dataclass(frozen=True)
class ApiError:
    """An error the fake answers with, rendered in the dialect's error shape. None fields take
    the dialect's defaults for the status; `code=...` too (None is an explicit null code)."""

    message: str | None = None
    type: str | None = None
    param: str | None = None
    code: str | EllipsisType | None = ...


@dataclass(frozen=True)
class Reply:
    """How the fake answers one request. The defaults answer a chat request successfully.

    Chat content: `content` is the assistant text (a string streams word by word, a sequence
    as exactly those deltas; None for no text), `tool_calls` the calls made, `finish_reason`
    (in OpenAI's words: stop, length, tool_calls, content_filter; the dialect says it in the
    provider's) defaults to `tool_calls` or `stop`, `model` to the requested one, `usage`
    overrides the computed token counts (OpenAI's keys: prompt_tokens, completion_tokens,
    and cached_tokens; the dialect renames them).

    Any path: `status` and `body` (sent verbatim with `content_type`) replace the natural
    answer; `api_error` renders the dialect's error body for `status`; `headers` are added (a None
    value removes one the fake sends, e.g. `x-request-id`). Timing, in seconds:
    `first_byte_delay` before the status line, `first_event_delay` after the headers of a
    stream, `event_delay` between stream events. Failures: `cut_after=N` closes the connection
    after N stream events (for a JSON body: after half of it), `stall_after=N` goes silent after
    N events, `send_done=False` ends a stream cleanly without its final event (OpenAI's
    `data: [DONE]`, Anthropic's `message_stop`, ...), `hang=True` never answers. Whatever waits
    ends when the client disconnects or the fake stops.
    """

    content: str | Sequence[str] | None = "Hello! How can I help you today?"
    tool_calls: Sequence[ToolCall] = ()
    finish_reason: str | None = None
    model: str | None = None
    usage: Mapping[str, int] | None = None
    status: int = 200
    body: bytes | None = None
    api_error: ApiError | None = None
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
        """`status` with the provider's error body; type, code and message default per status
        (pass `code=None` for a null code). A 429 gets `retry-after: 1` unless `retry_after`
        says otherwise."""
        all_headers: dict[str, str | None] = dict(headers or {})
        if retry_after is None and status == 429:
            retry_after = 1
        if retry_after is not None:
            all_headers["retry-after"] = f"{retry_after:g}"
        return cls(
            status=status,
            api_error=ApiError(message, type, param, code),
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

    `route` is the dialect's route pattern it matched (`ANY_PATH` for none); `problems` what
    the provider would have rejected in it. Times are `time.monotonic()`. `disconnected_at` is
    set when the client closed the connection before the fake finished its response (a
    cancelled upstream call); `finished_at` when the fake sent the whole response. Both are
    written by the server's thread: wait with `wait_disconnected()` or `wait_ended()` before
    reading them.
    """

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lowercased names; repeated headers joined with ", "
    body: bytes
    json: Any  # the parsed body, None if it is not JSON (Any: tests index into it freely)
    request_id: str  # the request id the fake answered with
    received_at: float
    route: str = ANY_PATH
    path_params: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
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


class Dialect(Protocol):
    """A provider's wire format, as the fake speaks it. Methods run on the server's thread."""

    name: str  # for messages and the server thread's name
    chat_route: str  # the Starlette path pattern of the chat endpoint (POST)
    info_routes: Mapping[str, str]  # other path patterns it serves -> method (GET)
    stream_content_type: str

    def request_id(self) -> str:
        """A fresh request id in the provider's style."""
        ...

    def response_headers(self, record: RecordedRequest) -> dict[str, str]:
        """Headers on every response (its request id header among them)."""
        ...

    def authorized(self, record: RecordedRequest, api_key: str) -> bool: ...

    def problems(self, record: RecordedRequest) -> list[str]:
        """What the real service would reject in this chat request (empty: nothing)."""
        ...

    def is_stream(self, record: RecordedRequest) -> bool: ...

    def completion(self, record: RecordedRequest, reply: Reply) -> bytes:
        """The whole non-streamed answer body."""
        ...

    def stream(self, record: RecordedRequest, reply: Reply) -> list[bytes]:
        """Every stream event, framed (SSE or NDJSON lines), honouring `reply.send_done`."""
        ...

    def info(self, record: RecordedRequest, models: Sequence[str]) -> bytes:
        """The body of a GET on one of `info_routes`."""
        ...

    def error_body(self, status: int, error: ApiError) -> bytes:
        """The provider's error body for `status`."""
        ...

    def unauthorized(self) -> Reply: ...

    def invalid(self, problems: list[str]) -> Reply:
        """The provider's 400 for a request with `problems`."""
        ...

    def not_found(self, record: RecordedRequest) -> Reply: ...


def random_id(prefix: str, length: int) -> str:
    return prefix + "".join(random.choices(string.ascii_letters + string.digits, k=length))


def pieces(text: str | Sequence[str] | None) -> list[str]:
    """Stream deltas: a string by words with their leading space ("Hi", " there"), as models
    tokenize; a sequence as given."""
    if text is None:
        return []
    if isinstance(text, str):
        return re.findall(r"\s*\S+|\s+", text)
    return list(text)


def fragments(arguments: str | Sequence[str]) -> list[str]:
    """A tool call's arguments as stream fragments."""
    if isinstance(arguments, str):
        step = ARGUMENT_FRAGMENT
        return [arguments[i : i + step] for i in range(0, len(arguments), step)] or [""]
    return list(arguments)


def words_in(value: object) -> int:
    """Words in every string under a `text` or `content` key: a deterministic prompt size."""
    if isinstance(value, dict):
        return sum(
            len(v.split()) if k in ("text", "content") and isinstance(v, str) else words_in(v)
            for k, v in value.items()
        )
    if isinstance(value, list):
        return sum(words_in(item) for item in value)
    return 0


def completion_tokens(reply: Reply) -> int:
    """Output tokens of one choice: deltas sent, plus one per tool call and its fragments."""
    return len(pieces(reply.content)) + sum(
        len(fragments(call.arguments)) + 1 for call in reply.tool_calls
    )


def finish_reason(reply: Reply) -> str:
    """The reply's finish reason in OpenAI's words."""
    return reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")


def sse(data: str, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n".encode()


def compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


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
        self,
        fake: FakeUpstream,
        record: RecordedRequest,
        reply: Reply,
        receive: Receive,
        send: Send,
    ) -> None:
        self.fake = fake
        self.dialect = fake.dialect
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
            **self.dialect.response_headers(self.record),
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
        chat = self.record.route == self.dialect.chat_route
        natural = reply.body is None and reply.api_error is None
        if chat and natural and self.dialect.is_stream(self.record):
            await self._play_stream(self.dialect.stream(self.record, reply))
            return
        body = self._body()
        await self._start(reply.status, reply.content_type, len(body))
        if reply.cut_after is not None:
            await self.send(
                {"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True}
            )
            return  # uvicorn closes the connection: the body stays incomplete
        await self._finish(body)

    def _body(self) -> bytes:
        reply, record = self.reply, self.record
        if reply.body is not None:
            return reply.body
        if reply.api_error is not None:
            return self.dialect.error_body(reply.status, reply.api_error)
        if record.route == self.dialect.chat_route:
            return self.dialect.completion(record, reply)
        return self.dialect.info(record, self.fake.models)

    async def _play_stream(self, events: list[bytes]) -> None:
        reply = self.reply
        await self._start(reply.status, self.dialect.stream_content_type)
        for position, event in enumerate(events):
            if position == reply.cut_after:
                return  # returning mid-response makes uvicorn close the connection
            if position == reply.stall_after:
                await self.fake._stopping.wait()
                return
            if not await self._pause(reply.event_delay if position else reply.first_event_delay):
                return
            await self.send({"type": "http.response.body", "body": event, "more_body": True})
        await self._finish()


class _Endpoint:
    """The ASGI app behind one route (a class instance, so Starlette passes raw ASGI)."""

    def __init__(self, fake: FakeUpstream, route: str) -> None:
        self.fake = fake
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        record = self.fake._record(scope, self.route, b"".join(chunks))
        try:
            reply = record.reply = self.fake._reply_for(record)
        finally:
            self.fake._append(record)
        await _Exchange(self.fake, record, reply, receive, send).run()


class FakeUpstream:
    """A fake provider speaking `dialect` on `127.0.0.1:<free port>`; use as a context manager.

    A provider's fake is a subclass that names its `default_models` and makes its dialect in
    `new_dialect()` (and says what its `base_url` is when that is not the bare `url`).

    `api_key`, if set, is required the way the provider takes it (401 otherwise). `models` are
    listed by the dialect's model listing. `validate_requests` asks the fixture that owns the
    fake to fail the test if any chat request had `problems` (see the module docstring).
    """

    default_models: tuple[str, ...] = ()  # a subclass's `models` when none are given

    def __init__(
        self,
        dialect: Dialect | None = None,
        *,
        api_key: str | None = None,
        models: Sequence[str] | None = None,
        loop: LoopName = "asyncio",
        validate_requests: bool = True,
    ) -> None:
        models = self.default_models if models is None else tuple(models)
        dialect = dialect or self.new_dialect(models)
        self.dialect = dialect
        self.api_key = api_key
        self.models = list(models)
        self.validate_requests = validate_requests
        self._lock = threading.Condition()  # guards requests and scripts; notified per request
        self._requests: list[RecordedRequest] = []
        self._scripts: dict[str, deque[Behaviour]] = {}
        self._defaults: dict[str, Behaviour] = {}
        self._stopping = asyncio.Event()  # bound to the server's loop on first use
        routes = [Route(dialect.chat_route, _Endpoint(self, dialect.chat_route), methods=["POST"])]
        routes += [
            Route(path, _Endpoint(self, path), methods=[method])
            for path, method in dialect.info_routes.items()
        ]
        routes.append(Route("/{path:path}", _Endpoint(self, ANY_PATH)))
        app = Starlette(routes=routes)
        self._server = ServerThread(app, name=f"fake-{dialect.name}", loop=loop, lifespan="off")
        self._log_filter = _QuietDeliberateCuts(self._server.name)

    def new_dialect(self, models: Sequence[str]) -> Dialect:
        """The dialect of a provider's fake (subclasses), when none is passed in."""
        raise TypeError(f"{type(self).__name__} needs a dialect")

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
        """`http://127.0.0.1:<port>`: the `base_url` of most providers' upstream config."""
        return self._server.url

    @property
    def base_url(self) -> str:
        """What the provider's `base_url` in gateway.yaml would be for this fake."""
        return self._server.url

    # -- scripting

    def script(self, *replies: Behaviour, path: str | None = None) -> None:
        """Queue replies for the next requests to route `path` (default: the chat route), in
        order; then the default answers. A behaviour is a `Reply` or a function of the
        `RecordedRequest` returning one."""
        with self._lock:
            self._scripts.setdefault(path or self.dialect.chat_route, deque()).extend(replies)

    def set_default(self, reply: Behaviour, path: str | None = None) -> None:
        """Answer route `path` (default: chat) with `reply` when nothing is scripted."""
        with self._lock:
            self._defaults[path or self.dialect.chat_route] = reply

    def pending(self, path: str | None = None) -> int:
        """How many scripted replies for route `path` (default: chat) are still unused."""
        with self._lock:
            return len(self._scripts.get(path or self.dialect.chat_route, ()))

    def clear_scripts(self) -> int:
        """Drop every unused scripted reply; how many there were."""
        with self._lock:
            count = sum(len(queue) for queue in self._scripts.values())
            self._scripts.clear()
            return count

    # -- assertions

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.route == self.dialect.chat_route]

    def wait_for_requests(
        self, count: int, timeout: float = 5.0, path: str | None = ""
    ) -> list[RecordedRequest]:
        """Block until `count` requests to route `path` ("": chat, None: any) arrived; raises
        AssertionError."""
        route = self.dialect.chat_route if path == "" else path

        def matching() -> list[RecordedRequest]:
            return [r for r in self._requests if route is None or r.route == route]

        with self._lock:
            if not self._lock.wait_for(lambda: len(matching()) >= count, timeout):
                raise AssertionError(
                    f"expected {count} request(s) to {route or 'any path'} within {timeout} s, "
                    f"got {len(matching())}"
                )
            return matching()

    def check_requests(self) -> None:
        """Raise AssertionError if the provider would have rejected any chat request."""
        for record in self.chat_requests:
            if record.problems:
                raise AssertionError(
                    f"the fake {self.dialect.name} upstream received an invalid request "
                    f"({record.request_id}):\n" + "\n".join(record.problems)
                )

    # -- serving (called on the server's thread)

    def _record(self, scope: Scope, route: str, body: bytes) -> RecordedRequest:
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
            request_id=self.dialect.request_id(),
            received_at=time.monotonic(),
            route=route,
            path_params={k: str(v) for k, v in scope.get("path_params", {}).items()},
        )

    def _append(self, record: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(record)
            self._lock.notify_all()

    def _reply_for(self, record: RecordedRequest) -> Reply:
        if self.api_key is not None and not self.dialect.authorized(record, self.api_key):
            return self.dialect.unauthorized()
        if record.route == ANY_PATH:
            return self.dialect.not_found(record)
        if record.route == self.dialect.chat_route:
            record.problems = self.dialect.problems(record)
            if record.problems:
                return self.dialect.invalid(record.problems)
        with self._lock:
            queue = self._scripts.get(record.route)
            behaviour = queue.popleft() if queue else self._defaults.get(record.route, Reply())
        return behaviour(record) if callable(behaviour) else behaviour
