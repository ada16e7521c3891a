"""The upstream HTTP clients: one pooled client per upstream, and the only place that builds them.

`Clients.open()` (called by the app's lifespan) builds a client for every upstream on the
running loop; `send()` is how everyone else talks to an upstream; `close()` and `reopen()` close
and rebuild one upstream's client (the connection manager's disconnect and connect);
`aclose()` closes every pool.
Network errors become `GatewayError`s here, in one table, and nothing below this module knows
which HTTP library is in use.

The transport is chosen by measurement (bench/README.md): httpx's client API over httpcore's
pool costs a proxy most of its throughput (its async pool rescans every connection on each
request start and close), and aiohttp's ClientSession still spends about ten times what the
request needs, so plain HTTP/1.1 upstreams go through the gateway's own small pool
(`upstreams/http1.py`, `transport: native`, the default). httpx serves the rest: HTTP/2
(`http2: true`), the in-process mock, transports that tests inject, and `transport: httpx` for
anyone who wants it. Redirects are never followed and a URL off the upstream's origin is
refused: an upstream key must only ever go to its configured host.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import zlib
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from gateway.config import UpstreamConfig
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.providers.base import UpstreamRequest
from gateway.upstreams import http1
from gateway.upstreams.mock import MockTransport
from gateway.upstreams.pool import Pool


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Read from the pool in use, not estimated."""

    active: int
    idle: int
    waiting: int
    max_connections: int


class UpstreamResponse(Protocol):
    """An upstream's answer with its headers read and its body not yet. Always `aclose()` it."""

    status: int
    headers: Mapping[str, str]  # case-insensitive

    async def read(self) -> bytes: ...

    async def receive(self) -> bytes:
        """The next piece of the body as it arrives (decompressed); b"" at its end.

        Raises GatewayError if the body breaks off.
        """
        ...

    async def aclose(self) -> None:
        """Returns the connection to the pool if the body was read, else closes it."""
        ...


class _Client(Protocol):
    async def send(self, request: UpstreamRequest) -> UpstreamResponse: ...
    def pool_stats(self) -> PoolStats: ...
    async def aclose(self) -> None: ...


class Clients:
    """One client per upstream name. Build with `open()` inside a running event loop."""

    def __init__(
        self,
        clients: dict[str, _Client],
        upstreams: Mapping[str, UpstreamConfig] | None = None,
        transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
    ) -> None:
        self._clients = clients
        self._upstreams = dict(upstreams or {})  # what reopen() builds from
        self._transports = dict(transports or {})
        self._retiring: set[asyncio.Task[None]] = set()
        self._acquire_observers: dict[str, Callable[[float], None]] = {}

    @classmethod
    async def open(
        cls,
        upstreams: Mapping[str, UpstreamConfig],
        transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
    ) -> Clients:
        """`transports` replaces the network for the named upstreams (tests)."""
        transports = transports or {}
        clients = {
            name: _build(name, upstream, transports.get(name))
            for name, upstream in upstreams.items()
        }
        return cls(clients, upstreams, transports)

    async def send(self, upstream: str, request: UpstreamRequest) -> UpstreamResponse:
        """Send `request` to `upstream`; returns once the status and headers are in.

        Raises UpstreamError (unreachable, broken) or UpstreamTimeout. The caller owns the
        response and must `aclose()` it, also when cancelled.
        """
        return await self._clients[upstream].send(request)

    def pool_stats(self, upstream: str) -> PoolStats:
        return self._clients[upstream].pool_stats()

    def observe_acquire(self, upstream: str, observer: Callable[[float], None]) -> None:
        """Have `upstream`'s pool call `observer` with the seconds each request waited for a
        connection (native pool only; kept across `reopen()`)."""
        self._acquire_observers[upstream] = observer
        client = self._clients[upstream]
        if isinstance(client, _NativeClient):
            client.pool.on_acquire = observer

    async def close(self, upstream: str, *, grace: float = 0.0) -> None:
        """Close `upstream`'s client: from now on `send()` to it raises UpstreamUnavailable.

        Requests already sent keep their connections for up to `grace` seconds to finish; then
        the pool is closed, cutting whatever is still open (their reads raise UpstreamError).
        Callers that must not cut anything drain first (`Prober.disconnect` does). Closing a
        closed upstream does nothing.
        """
        old = self._clients[upstream]
        if isinstance(old, _ClosedClient):
            return
        self._clients[upstream] = _ClosedClient(upstream, self._upstreams[upstream])
        await _retire(old, grace)

    async def reopen(self, upstream: str) -> None:
        """Give `upstream` a fresh client, built from its config (and test transport) as
        `open()` did. An open client it replaces is retired in the background: closed once its
        requests in flight are done, after `RETIRE_GRACE` seconds at most, or at `aclose()`."""
        old = self._clients[upstream]
        config = self._upstreams[upstream]
        self._clients[upstream] = _build(upstream, config, self._transports.get(upstream))
        if upstream in self._acquire_observers:
            self.observe_acquire(upstream, self._acquire_observers[upstream])
        if not isinstance(old, _ClosedClient):
            task = asyncio.create_task(_retire(old, RETIRE_GRACE), name=f"retire:{upstream}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def successor(
        self, upstreams: Mapping[str, UpstreamConfig], keep: Collection[str]
    ) -> Clients:
        """The clients for a reloaded config: the upstreams named in `keep` share this object's
        clients (their pools go on), every other one gets a fresh client, built as `open()`
        does (with this object's test transports). This object keeps serving its requests in
        flight; close its other upstreams with `close()` once they are done, never `aclose()`
        (that would close the shared ones too). Clients being retired in the background move
        to the successor, whose `aclose()` ends them."""
        clients: dict[str, _Client] = {}
        try:
            for name, upstream in upstreams.items():
                clients[name] = (
                    self._clients[name]
                    if name in keep
                    else _build(name, upstream, self._transports.get(name))
                )
        except BaseException:
            await asyncio.gather(
                *(c.aclose() for n, c in clients.items() if n not in keep),
                return_exceptions=True,
            )
            raise
        successor = Clients(clients, upstreams, self._transports)
        successor._retiring, self._retiring = self._retiring, set()
        return successor

    async def aclose(self) -> None:
        for task in self._retiring:
            task.cancel()  # _retire closes its client on the way out
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await asyncio.gather(*(c.aclose() for c in self._clients.values()))


RETIRE_GRACE = 600.0  # seconds a replaced client's requests may run on (a long stream)
_RETIRE_POLL = 0.05


def _build(
    name: str, upstream: UpstreamConfig, transport: httpx.AsyncBaseTransport | None
) -> _Client:
    if transport is None and upstream.provider == "mock":
        transport = MockTransport(upstream)
    if transport is not None or upstream.http2 or upstream.transport == "httpx":
        return _HttpxClient(name, upstream, transport)
    return _NativeClient(name, upstream)


async def _retire(client: _Client, grace: float) -> None:
    """Close `client` once its pool has no request in flight, or after `grace` seconds."""
    try:
        if grace > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    # A poll: the pools signal nothing when they go idle.
                    while client.pool_stats().active:  # noqa: ASYNC110
                        await asyncio.sleep(_RETIRE_POLL)
    finally:
        await client.aclose()


class _ClosedClient:
    """Stands in for a closed upstream's client: refuses every request without a network call."""

    def __init__(self, name: str, upstream: UpstreamConfig) -> None:
        self._name = name
        self._max_connections = upstream.pool.max_connections

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        raise UpstreamUnavailable(f"upstream '{self._name}' is disconnected")

    def pool_stats(self) -> PoolStats:
        return PoolStats(0, 0, 0, self._max_connections)

    async def aclose(self) -> None:
        pass


# ------------------------------------------------------------------- native


class _NativeClient:
    """The gateway's own HTTP/1.1 pool (upstreams/http1.py) for one upstream's origin."""

    def __init__(self, name: str, upstream: UpstreamConfig) -> None:
        self._name = name
        base = urlsplit(upstream.base_url or "")
        self._origin = http1.Origin(
            base.scheme, base.hostname or "", base.port or (443 if base.scheme == "https" else 80)
        )
        timeouts, pool = upstream.timeouts, upstream.pool
        self.pool = Pool(
            self._origin,
            http1.Limits(
                max_connections=pool.max_connections,
                max_keepalive=pool.max_keepalive,
                keepalive_expiry=pool.keepalive_expiry,
                connect_timeout=timeouts.connect,
                read_timeout=timeouts.read,
                write_timeout=timeouts.write,
                pool_timeout=timeouts.pool,
            ),
            _tls_context(upstream.ca_file) if base.scheme == "https" else None,
        )
        self._targets: dict[str, str] = {}

    def _target(self, url: str) -> str:
        """The request target of `url`, which must be on this upstream's origin."""
        target = self._targets.get(url)
        if target is None:
            parts = urlsplit(url)
            origin = (parts.scheme, parts.hostname, parts.port or self._origin.port)
            if origin != (self._origin.scheme, self._origin.host, self._origin.port):
                # Credentials go only to the configured host.
                raise UpstreamError(f"upstream '{self._name}': refusing a URL off its origin")
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            if len(self._targets) < 64:
                self._targets[url] = target
        return target

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        target = self._target(request.url)
        try:
            response = await self.pool.request(
                request.method, target, dict(request.headers), request.body
            )
        except Exception as exc:
            raise _translate(exc, self._name) from None
        return _NativeResponse(response, self._name)

    def pool_stats(self) -> PoolStats:
        pool = self.pool
        return PoolStats(pool.active, pool.idle, pool.waiting, pool.limits.max_connections)

    async def aclose(self) -> None:
        await self.pool.aclose()


class _NativeResponse:
    __slots__ = ("_name", "_response", "headers", "status")

    def __init__(self, response: http1.Response, name: str) -> None:
        self._response = response
        self._name = name
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except Exception as exc:
            raise _translate(exc, self._name) from None

    async def receive(self) -> bytes:
        try:
            return await self._response.receive()
        except Exception as exc:
            raise _translate(exc, self._name) from None

    async def aclose(self) -> None:
        await self._response.aclose()


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verifying TLS: the upstream's own CA file, else certifi's bundle (httpx depends on it),
    which slim container images may lack in their system store."""
    if ca_file is None:
        import certifi

        ca_file = certifi.where()
    return ssl.create_default_context(cafile=ca_file)


# ------------------------------------------------------------------- httpx


class _HttpxClient:
    def __init__(
        self, name: str, upstream: UpstreamConfig, transport: httpx.AsyncBaseTransport | None
    ) -> None:
        self._name = name
        timeouts, pool = upstream.timeouts, upstream.pool
        self._limits = pool.max_connections
        self._client = httpx.AsyncClient(
            transport=transport,
            http2=upstream.http2,
            verify=_tls_context(upstream.ca_file) if transport is None else True,
            timeout=httpx.Timeout(
                connect=timeouts.connect,
                read=timeouts.read,
                write=timeouts.write,
                pool=timeouts.pool,
            ),
            limits=httpx.Limits(
                max_connections=pool.max_connections,
                max_keepalive_connections=pool.max_keepalive,
                keepalive_expiry=pool.keepalive_expiry,
            ),
            follow_redirects=False,
            trust_env=False,
        )

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        built = self._client.build_request(
            request.method, request.url, headers=request.headers, content=request.body
        )
        try:
            response = await self._client.send(built, stream=True)
        except Exception as exc:
            raise _translate(exc, self._name) from None
        return _HttpxResponse(response, self._name)

    def pool_stats(self) -> PoolStats:
        pool = getattr(self._client._transport, "_pool", None)  # httpcore's, when it is in use
        connections = list(getattr(pool, "connections", ()))
        active = sum(1 for c in connections if not c.is_idle())
        waiting = len(getattr(pool, "_requests", ())) - active if pool is not None else 0
        return PoolStats(active, len(connections) - active, max(waiting, 0), self._limits)

    async def aclose(self) -> None:
        await self._client.aclose()


class _HttpxResponse:
    __slots__ = ("_body", "_name", "_response", "headers", "status")

    def __init__(self, response: httpx.Response, name: str) -> None:
        self._response = response
        self._name = name
        self._body: AsyncIterator[bytes] | None = None
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        try:
            return await self._response.aread()
        except Exception as exc:
            raise _translate(exc, self._name) from None

    async def receive(self) -> bytes:
        if self._body is None:
            self._body = self._response.aiter_bytes()
        try:
            return await anext(self._body, b"")
        except Exception as exc:
            raise _translate(exc, self._name) from None

    async def aclose(self) -> None:
        await self._response.aclose()


# ------------------------------------------------------------------- errors

_TIMEOUTS: tuple[type[BaseException], ...] = (TimeoutError, httpx.TimeoutException)
_UNREACHABLE: tuple[type[BaseException], ...] = (http1.ConnectError, httpx.ConnectError)
_BROKEN: tuple[type[BaseException], ...] = (
    http1.HTTPError,
    httpx.TransportError,
    httpx.DecodingError,
    httpx.StreamError,
    ConnectionError,
    OSError,
    zlib.error,
)


def _translate(exc: Exception, upstream: str) -> GatewayError:
    """The one table from network exceptions to gateway errors (messages name no URL or key)."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, _TIMEOUTS):
        return UpstreamTimeout(f"upstream '{upstream}' timed out")
    if isinstance(exc, _UNREACHABLE):
        return UpstreamError(f"upstream '{upstream}' is unreachable", code="upstream_unreachable")
    if isinstance(exc, _BROKEN):
        return UpstreamError(
            f"upstream '{upstream}' broke the connection ({type(exc).__name__})",
            code="upstream_connection_error",
        )
    raise exc
