"""Log setup, request ids and secret redaction.

Logs are one line per event, as text or JSON (`--log-format`). Anything that may carry a
credential (an upstream's error text, an exception message) goes through `redact()` before it
reaches a log line or a client: the known key itself and the shapes keys come in
(`sk-...`, `Bearer ...`, `key=...` in URLs) are masked.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from typing import BinaryIO, Literal

import orjson

LogFormat = Literal["text", "json"]

_SECRET_SHAPES = re.compile(
    r"(?i)(bearer\s+)[^\s\"',;]+"
    r"|\b(?:sk|pk|rk|sess)-[A-Za-z0-9_\-*]{8,}"
    r"|\bAIza[0-9A-Za-z_\-]{20,}"
    r"|([?&](?:key|api[_-]?key|access_token|token)=)[^&\s\"']+"
)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_MASK = "[REDACTED]"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with the given secrets and anything shaped like a credential masked."""
    for secret in sorted(secrets, key=len, reverse=True):  # a longer secret may hold a shorter
        if len(secret) >= 4:
            text = text.replace(secret, _MASK)

    def mask(match: re.Match[str]) -> str:
        prefix = match.group(1) or match.group(2) or ""
        return prefix + _MASK

    return _SECRET_SHAPES.sub(mask, text)


# A random per-process prefix and a counter: unique across processes and restarts, and a
# fraction of uuid4's cost on the hot path.
_ID_PREFIX = "req_" + os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):010x}"


def request_id_of(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The request id for ASGI `headers`: the client's `x-request-id` if sane, else a new one."""
    for key, value in headers:
        if key == b"x-request-id":
            return accept_request_id(value)
    return new_request_id()


def accept_request_id(value: bytes | None) -> str:
    """The client's `x-request-id` if it is a sane token, else a new id."""
    if value:
        text = value.decode("latin-1")
        if _REQUEST_ID.fullmatch(text):
            return text
    return new_request_id()


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    # uvicorn adds `color_message` for its own formatter
    _STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {
        "message",
        "asctime",
        "color_message",
    }

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """`time level logger message key=value ...`: readable in a terminal."""

    _STANDARD = JSONFormatter._STANDARD

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in self._STANDARD and not key.startswith("_")
        ]
        return f"{line} {' '.join(extras)}" if extras else line


class BufferedHandler(logging.Handler):
    """Writes formatted lines to a byte stream from a thread of its own, in batches.

    `logging.StreamHandler` writes and flushes every record on the caller's thread (Python's
    stderr is line-buffered too): at thousands of request lines a second that is a sixth of the
    gateway's CPU, on the event loop. Here a record becomes one line on a queue (a deque:
    appends need no lock) and a daemon thread writes what has collected every `interval`
    seconds, at once after a warning or an error, and at shutdown (`logging` flushes every
    handler at exit). If the stream blocks (a full pipe), at most `limit` lines wait; older
    ones are dropped and the next batch says how many.
    """

    def __init__(self, stream: BinaryIO, interval: float = 0.2, limit: int = 100_000) -> None:
        super().__init__()
        self._stream = stream
        self._interval = interval
        self._queue: collections.deque[bytes] = collections.deque(maxlen=limit)
        self._dropped = 0  # lines pushed out of a full queue since the last batch
        self._wake = threading.Event()
        self._write_lock = threading.Lock()
        threading.Thread(target=self._flush_often, name="log-writer", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record).encode("utf-8", "replace") + b"\n"
            if len(self._queue) == self._queue.maxlen:
                self._dropped += 1
            self._queue.append(line)
        except Exception:
            self.handleError(record)
        if record.levelno >= logging.WARNING:
            self._wake.set()

    def flush(self) -> None:
        with self._write_lock:
            lines: list[bytes] = []
            with contextlib.suppress(IndexError):
                while True:
                    lines.append(self._queue.popleft())
            if not lines:
                return
            dropped, self._dropped = self._dropped, 0
            if dropped:
                lines.insert(0, b'{"level":"warning","message":"%d log lines dropped"}\n' % dropped)
            with contextlib.suppress(OSError, ValueError):
                self._stream.write(b"".join(lines))
                self._stream.flush()

    def _flush_often(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            self.flush()


def setup_logging(level: str = "info", fmt: LogFormat = "text") -> None:
    # Fields no formatter of ours prints: not collected for every record.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BufferedHandler(sys.stderr.buffer)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the request line replaces it
    # httpx logs every request URL at INFO; ours are logged by the gateway, redacted.
    logging.getLogger("httpx").setLevel(logging.WARNING)
