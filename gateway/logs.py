"""Log setup, request ids and secret redaction.

Logs are one line per event, as text or JSON (`--log-format`). Anything that may carry a
credential (an upstream's error text, an exception message) goes through `redact()` before it
reaches a log line or a client: the known key itself and the shapes keys come in
(`sk-...`, `Bearer ...`, `key=...` in URLs) are masked.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from typing import Literal

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


def setup_logging(level: str = "info", fmt: LogFormat = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
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
