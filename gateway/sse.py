"""Incremental Server-Sent Events and NDJSON decoding, and SSE encoding (pure, no I/O).

The decoder is fed bytes as they arrive and returns the complete events so far, the h11 way, so
a stream is relayed event by event with nothing buffered beyond one partial event. It follows
the WHATWG rules that matter for LLM APIs: CRLF, LF or CR line ends (a CR at the end of a chunk
may be the first half of a CRLF), `data:` lines of one event joined with LF, `event:` names
(Anthropic uses them), comments and unknown fields ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: bytes
    event: str | None = None


class SSEDecoder:
    """Feed bytes, get whole events. `pending` tells whether a partial event is buffered."""

    __slots__ = ("_buffer", "_data", "_event")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._event: str | None = None

    @property
    def pending(self) -> bool:
        return bool(self._buffer.strip() or self._data)

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buffer = self._buffer + chunk if self._buffer else chunk
        end = max(buffer.rfind(b"\n"), buffer.rfind(b"\r"))
        if end < 0:
            self._buffer = buffer
            return []
        if buffer[end] == 13 and end == len(buffer) - 1:  # a CR that may precede an LF
            end = max(buffer.rfind(b"\n", 0, end), buffer.rfind(b"\r", 0, end))
            if end < 0:
                self._buffer = buffer
                return []
        self._buffer = buffer[end + 1 :]
        events: list[SSEEvent] = []
        complete = buffer[: end + 1]
        for line in complete.splitlines():
            if not line:
                if self._data:
                    events.append(SSEEvent(b"\n".join(self._data), self._event))
                self._data = []
                self._event = None
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
            elif line.startswith(b"event:"):
                self._event = line[6:].strip().decode("utf-8", "replace")
            # comments (":...") and id/retry/unknown fields carry nothing we relay
        return events


class NDJSONDecoder:
    """Feed bytes, get whole lines of newline-delimited JSON (Ollama), blank lines skipped.

    A line is only complete at its LF, so a multi-byte character split across reads is joined
    before anyone decodes it. `pending` tells whether a partial line is buffered.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    @property
    def pending(self) -> bool:
        return bool(self._buffer.strip())

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer + chunk if self._buffer else chunk
        end = buffer.rfind(b"\n")
        if end < 0:
            self._buffer = buffer
            return []
        self._buffer = buffer[end + 1 :]
        return [line for line in buffer[:end].split(b"\n") if line.strip()]


def encode_event(payload: object) -> bytes:
    """One `data: {json}` event."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"
