"""The gateway's error tree and the one table that turns an error into OpenAI's envelope.

Every failure a client can see is a `GatewayError`: it carries the HTTP status, OpenAI's error
`type` and `code`, the offending `param`, and whether trying the next upstream in the chain can
help (`fallback`). Foreign exceptions (network, JSON) are translated where they enter;
rendering happens once, in `app.py`, through `to_openai_error()`.
"""

from __future__ import annotations

from typing import ClassVar, TypedDict


class ErrorBody(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(TypedDict):
    error: ErrorBody


class GatewayError(Exception):
    """Base of every error the gateway answers with."""

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"
    fallback: ClassVar[bool] = False
    # The OpenAI SDKs honour `x-should-retry`; retrying a request the client got wrong cannot help.
    retryable: bool = True
    # The HTTP status the upstream answered with, when this error is its answer (logs, headers).
    upstream_status: int | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = headers or {}


class InvalidRequest(GatewayError):
    """The client's request is malformed: 400 naming the param."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"
    retryable = False


class ModelNotFound(InvalidRequest):
    status = 404
    code = "model_not_found"


class RequestTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class NotFound(InvalidRequest):
    """No such route."""

    status = 404
    code = "not_found"


class MethodNotAllowed(InvalidRequest):
    status = 405
    code = "method_not_allowed"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    retryable = False


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    fallback = True


class CircuitOpen(GatewayError):
    status = 503
    type = "server_error"
    code = "circuit_open"
    fallback = True


class UpstreamError(GatewayError):
    """The upstream could not serve: unreachable, timed out, 401/403/5xx or an unreadable body."""

    status = 502
    type = "server_error"
    code = "upstream_error"
    fallback = True


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamUnavailable(UpstreamError):
    """Nothing in the chain is usable (unconfigured or disabled), so nothing was tried."""

    status = 503
    code = "no_upstream_available"


class UpstreamRejected(GatewayError):
    """The upstream refused the request itself (400/404/413/422): passed through, no fallback."""

    status = 400
    type = "invalid_request_error"
    code = None
    retryable = False


class StreamInterrupted(UpstreamError):
    """The upstream stream broke after the first byte reached the client."""

    code = "stream_interrupted"


class UpstreamFailure:
    """One failed attempt of a chain: which upstream and why (no secrets)."""

    __slots__ = ("error", "upstream")

    def __init__(self, upstream: str, error: GatewayError) -> None:
        self.upstream = upstream
        self.error = error

    def __str__(self) -> str:
        return self.error.message  # names the upstream already


class AllUpstreamsFailed(GatewayError):
    """Every target of the chain failed; the most telling status, each attempt named."""

    status = 502
    type = "server_error"
    code = "all_upstreams_failed"
    # Every failure that reaches here is transient (rate limits, outages, timeouts): a later try
    # may succeed, so the client's own backoff is left to decide (client errors never get here).

    def __init__(self, model: str, failures: list[UpstreamFailure]) -> None:
        statuses = {f.error.status for f in failures}
        if len(failures) == 1:
            only = failures[0].error
            status, code = only.status, only.code
        elif statuses == {429}:
            status, code = 429, "rate_limit_exceeded"
        elif statuses == {503}:
            status, code = 503, "no_upstream_available"
        elif statuses == {504}:
            status, code = 504, "upstream_timeout"
        else:
            status, code = 502, "all_upstreams_failed"
        tried = "; ".join(str(f) for f in failures)
        # The soonest any of them may work again, when they said (retry-after-ms with it), and
        # on a 429 the rate-limit figures of that limit (`x-ratelimit-*`).
        said = [f.error.headers for f in failures if f.error.headers]
        source = min(said, key=lambda h: _seconds(h.get("retry-after", "inf")), default={})
        headers = {
            k: v
            for k, v in source.items()
            if k in ("retry-after", "retry-after-ms")
            or (status == 429 and k.startswith("x-ratelimit-"))
        }
        super().__init__(
            f"no upstream could serve model '{model}' ({tried})",
            code=code,
            status=status,
            headers=headers,
        )
        if status == 429:
            self.type = "rate_limit_error"
        self.failures = failures


def _seconds(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("inf")  # an HTTP date: rather any number than this


def to_openai_error(exc: GatewayError) -> ErrorEnvelope:
    """The JSON body for `exc`, in OpenAI's error envelope."""
    return {
        "error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}
    }


def internal_error(request_id: str) -> GatewayError:
    """What a client sees for a bug of ours: the request id to quote, nothing internal."""
    return GatewayError(f"internal error; quote request id {request_id} when reporting it")


class InvalidApiKey(AuthenticationFailed):
    """A client key missing or wrong (401), in OpenAI's words: its `type` for this is
    `invalid_request_error`. The message never echoes the key; `fingerprint` names a wrong
    one for the log line."""

    type = "invalid_request_error"
    fingerprint: str | None = None


class ModelNotAllowed(GatewayError):
    """The client key may not use the requested model (403)."""

    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"
    retryable = False


class LimitsBackendUnavailable(GatewayError):
    """The shared rate limits' store (Redis) is unreachable and `limits.on_backend_failure` is
    `deny`: nothing is sent that the shared limits could not count (503, retry-after). Another
    upstream of the chain may still serve, so the chain moves on."""

    status = 503
    type = "server_error"
    code = "rate_limit_backend_unavailable"
    fallback = True


class ShuttingDown(GatewayError):
    """The gateway is draining for shutdown (SIGTERM): a new request is refused, and one still
    running when `server.drain_seconds` ran out is cut (503; retryable, elsewhere)."""

    status = 503
    type = "server_error"
    code = "shutting_down"


class RequestHeadersTooLarge(InvalidRequest):
    """The request line and headers exceed `server.max_header_bytes` (431)."""

    status = 431
    code = "request_header_fields_too_large"


class RequestTimeout(InvalidRequest):
    """The client left its request unfinished for too long (408): headers or body dribbled."""

    status = 408
    code = "request_timeout"
    retryable = True  # a client on a slow link may well get through on the next try
