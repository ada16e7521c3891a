"""Clients that keep what they read, and a check of it all against OpenAI's schemas.

A `Wiretap` is shared by the clients built on it (httpx's, sync and async, and the OpenAI SDK's,
which runs on httpx's fork httpx2): their transport keeps a copy of each response body as the
client reads it. `Wiretap.check()` then validates every one with `tests/spec.py`: a JSON error
against `ErrorResponse`, a completion against `CreateChatCompletionResponse`, a model list
against `ListModelsResponse`, a model against `Model`, a stream event by event with
`validate_stream` (as far as the client read it; read whole, it ends with `data: [DONE]` and
no error event, or with exactly one error event, the gateway's rule). So a test asserts what it
is about, and no body slips by unchecked, not even one the SDK parsed.
"""

from __future__ import annotations

import functools
import json
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx2
import openai

from tests import spec

CHAT = "/v1/chat/completions"
CLIENT_TIMEOUT = 10.0  # no test waits this long; it only keeps a broken server from hanging one


@dataclass(eq=False)
class Exchange:
    """One response a client received: what it answered and the body bytes read so far."""

    method: str
    path: str
    status: int
    content_type: str
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False  # the client read the body to its end

    def check(self) -> None:
        """Raise AssertionError if what the client saw is not what OpenAI's spec allows."""
        if self.content_type.startswith("text/event-stream"):
            assert self.status == 200, f"a stream with status {self.status}"
            done = spec.sse_data(bytes(self.body))[-1:] == ["[DONE]"]
            events = spec.validate_stream(bytes(self.body), expect_done=done)
            errors = [position for position, e in enumerate(events) if "error" in e]
            if done:
                assert not errors, "a stream with an error event ends with [DONE]"
            elif self.complete:  # the whole stream, no [DONE]: it must end in one error event
                assert errors == [len(events) - 1], "a broken stream ends with one error event"
            return
        if not self.complete:
            return  # never read to its end (the test gave up on it): nothing seen to check
        assert self.content_type.startswith("application/json"), (
            f"{self.method} {self.path} answered {self.status} with {self.content_type!r}"
        )
        payload = json.loads(self.body)
        if self.path in ("/healthz", "/readyz"):  # the gateway's own, not OpenAI's
            assert isinstance(payload, dict)
            assert isinstance(payload.get("status"), str)
        elif self.status >= 400:
            spec.validate("ErrorResponse", payload)
        elif self.path == CHAT:
            spec.validate("CreateChatCompletionResponse", payload)
        elif self.path == "/v1/models":
            spec.validate("ListModelsResponse", payload)
        elif self.path.startswith("/v1/models/"):
            spec.validate("Model", payload)
        else:
            raise AssertionError(f"no schema for a {self.status} from {self.method} {self.path}")


class Wiretap:
    """Records the responses of every client built on it; `check()` validates them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.exchanges: list[Exchange] = []

    def open(self, method: str, path: str, status: int, content_type: str) -> Exchange:
        exchange = Exchange(method, path, status, content_type)
        with self._lock:
            self.exchanges.append(exchange)
        return exchange

    def check(self) -> None:
        with self._lock:
            exchanges = list(self.exchanges)
        for position, exchange in enumerate(exchanges):
            try:
                exchange.check()
            except (AssertionError, ValueError) as exc:
                raise AssertionError(
                    f"response {position} ({exchange.method} {exchange.path} -> "
                    f"{exchange.status}) breaks OpenAI's spec:\n{exc}\n"
                    f"body: {bytes(exchange.body)[:2000]!r}"
                ) from None


class _TeeStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, exchange: Exchange) -> None:
        self._inner = inner
        self._exchange = exchange

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._exchange.body += chunk
            yield chunk
        self._exchange.complete = True

    def close(self) -> None:
        self._inner.close()


class _AsyncTeeStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, exchange: Exchange) -> None:
        self._inner = inner
        self._exchange = exchange

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._exchange.body += chunk
            yield chunk
        self._exchange.complete = True

    async def aclose(self) -> None:
        await self._inner.aclose()


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every client (building one costs ~50 ms; nothing here uses TLS)."""
    return ssl.create_default_context()


class TappedTransport(httpx.BaseTransport):
    """httpx's transport, with every response body recorded on `tap`."""

    def __init__(self, tap: Wiretap) -> None:
        self._tap = tap
        self._inner = httpx.HTTPTransport(verify=_tls())

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        assert isinstance(response.stream, httpx.SyncByteStream)
        exchange = self._tap.open(
            request.method,
            request.url.path,
            response.status_code,
            response.headers.get("content-type", ""),
        )
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_TeeStream(response.stream, exchange),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._inner.close()


class AsyncTappedTransport(httpx.AsyncBaseTransport):
    def __init__(self, tap: Wiretap) -> None:
        self._tap = tap
        self._inner = httpx.AsyncHTTPTransport(verify=_tls())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        exchange = self._tap.open(
            request.method,
            request.url.path,
            response.status_code,
            response.headers.get("content-type", ""),
        )
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_AsyncTeeStream(response.stream, exchange),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


# The OpenAI SDK runs on httpx2, httpx's fork with the same transport interface.


class _Tee2Stream(httpx2.SyncByteStream):
    def __init__(self, inner: httpx2.SyncByteStream, exchange: Exchange) -> None:
        self._inner = inner
        self._exchange = exchange

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._exchange.body += chunk
            yield chunk
        self._exchange.complete = True

    def close(self) -> None:
        self._inner.close()


class _AsyncTee2Stream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, exchange: Exchange) -> None:
        self._inner = inner
        self._exchange = exchange

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._exchange.body += chunk
            yield chunk
        self._exchange.complete = True

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Tapped2Transport(httpx2.BaseTransport):
    def __init__(self, tap: Wiretap) -> None:
        self._tap = tap
        self._inner = httpx2.HTTPTransport(verify=_tls())

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = self._inner.handle_request(request)
        assert isinstance(response.stream, httpx2.SyncByteStream)
        exchange = self._tap.open(
            request.method,
            request.url.path,
            response.status_code,
            response.headers.get("content-type", ""),
        )
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=_Tee2Stream(response.stream, exchange),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._inner.close()


class _AsyncTapped2Transport(httpx2.AsyncBaseTransport):
    def __init__(self, tap: Wiretap) -> None:
        self._tap = tap
        self._inner = httpx2.AsyncHTTPTransport(verify=_tls())

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        exchange = self._tap.open(
            request.method,
            request.url.path,
            response.status_code,
            response.headers.get("content-type", ""),
        )
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=_AsyncTee2Stream(response.stream, exchange),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


def http_client(tap: Wiretap, **options: Any) -> httpx.Client:
    """A tapped `httpx.Client`."""
    options.setdefault("timeout", CLIENT_TIMEOUT)
    return httpx.Client(transport=TappedTransport(tap), **options)


def async_http_client(tap: Wiretap, **options: Any) -> httpx.AsyncClient:
    """A tapped `httpx.AsyncClient`; build it inside the event loop that uses it."""
    options.setdefault("timeout", CLIENT_TIMEOUT)
    return httpx.AsyncClient(transport=AsyncTappedTransport(tap), **options)


def openai_client(tap: Wiretap, base_url: str, **options: Any) -> openai.OpenAI:
    """The official SDK's client on `base_url`, tapped, without retries unless asked."""
    options.setdefault("max_retries", 0)
    options.setdefault("api_key", "anything")
    http = httpx2.Client(transport=_Tapped2Transport(tap), timeout=CLIENT_TIMEOUT)
    return openai.OpenAI(base_url=base_url, http_client=http, **options)


def async_openai_client(tap: Wiretap, base_url: str, **options: Any) -> openai.AsyncOpenAI:
    """The SDK's async client, tapped; build it inside the event loop that uses it."""
    options.setdefault("max_retries", 0)
    options.setdefault("api_key", "anything")
    http = httpx2.AsyncClient(transport=_AsyncTapped2Transport(tap), timeout=CLIENT_TIMEOUT)
    return openai.AsyncOpenAI(base_url=base_url, http_client=http, **options)
