"""gateway/errors.py: how a failed chain is summarised, and OpenAI's error envelope."""

from __future__ import annotations

import pytest

from gateway.errors import (
    AllUpstreamsFailed,
    CircuitOpen,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
    UpstreamFailure,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    internal_error,
    to_openai_error,
)
from tests import spec


def rate_limited(name: str, retry_after: str | None = None) -> UpstreamFailure:
    headers = {"retry-after": retry_after} if retry_after else {}
    return UpstreamFailure(name, RateLimited(f"upstream '{name}' is rate limited", headers=headers))


def unavailable(name: str) -> UpstreamFailure:
    return UpstreamFailure(name, UpstreamUnavailable(f"upstream '{name}' is disabled"))


def circuit_open(name: str) -> UpstreamFailure:
    return UpstreamFailure(name, CircuitOpen(f"upstream '{name}' has an open circuit"))


def overloaded(name: str) -> UpstreamFailure:
    error = UpstreamError(f"upstream '{name}' is overloaded (529)", status=503)
    return UpstreamFailure(name, error)


def timed_out(name: str) -> UpstreamFailure:
    return UpstreamFailure(name, UpstreamTimeout(f"upstream '{name}' timed out"))


def broken(name: str) -> UpstreamFailure:
    return UpstreamFailure(name, UpstreamError(f"upstream '{name}' is unreachable"))


def interrupted(name: str) -> UpstreamFailure:
    return UpstreamFailure(name, StreamInterrupted(f"upstream '{name}' closed the stream"))


@pytest.mark.parametrize(
    ("failures", "status", "code", "kind"),
    [
        pytest.param(
            [rate_limited("a"), rate_limited("b")],
            429,
            "rate_limit_exceeded",
            "rate_limit_error",
            id="all-rate-limited",
        ),
        pytest.param(
            [unavailable("a"), circuit_open("b"), overloaded("c")],
            503,
            "no_upstream_available",
            "server_error",
            id="all-unavailable",
        ),
        pytest.param(
            [timed_out("a"), timed_out("b")],
            504,
            "upstream_timeout",
            "server_error",
            id="all-timed-out",
        ),
        pytest.param(
            [rate_limited("a"), timed_out("b")],
            502,
            "all_upstreams_failed",
            "server_error",
            id="rate-limited-and-timed-out",
        ),
        pytest.param(
            [unavailable("a"), broken("b")],
            502,
            "all_upstreams_failed",
            "server_error",
            id="unavailable-and-broken",
        ),
        pytest.param(
            [broken("a"), broken("b"), interrupted("c")],
            502,
            "all_upstreams_failed",
            "server_error",
            id="all-broken",
        ),
        pytest.param(
            [rate_limited("a")], 429, "rate_limit_exceeded", "rate_limit_error", id="one-429"
        ),
        pytest.param([timed_out("a")], 504, "upstream_timeout", "server_error", id="one-504"),
        pytest.param(
            [unavailable("a")], 503, "no_upstream_available", "server_error", id="one-503"
        ),
        pytest.param([circuit_open("a")], 503, "circuit_open", "server_error", id="one-circuit"),
        pytest.param([broken("a")], 502, "upstream_error", "server_error", id="one-502"),
        pytest.param(
            [interrupted("a")], 502, "stream_interrupted", "server_error", id="one-stream"
        ),
    ],
)
def test_all_upstreams_failed_picks_the_most_telling_status(failures, status, code, kind):
    error = AllUpstreamsFailed("gpt-4o", failures)

    assert error.status == status
    assert error.code == code
    assert error.type == kind
    assert error.failures == failures
    # Only transient failures exhaust a chain, so the client's backoff may still help.
    assert error.retryable
    assert error.message.startswith("no upstream could serve model 'gpt-4o' (")
    for failure in failures:
        assert f"'{failure.upstream}'" in error.message
        assert failure.error.message in error.message


def test_all_upstreams_failed_keeps_retry_after():
    error = AllUpstreamsFailed("m", [timed_out("a"), rate_limited("b", retry_after="20")])

    assert error.headers == {"retry-after": "20"}
    assert error.status == 502


def test_all_upstreams_failed_without_retry_after_has_no_headers():
    assert AllUpstreamsFailed("m", [rate_limited("a"), rate_limited("b")]).headers == {}


def test_all_upstreams_failed_with_every_upstream_rate_limited_keeps_the_soonest_retry_after():
    error = AllUpstreamsFailed("m", [rate_limited("a", "9"), rate_limited("b", "5")])

    assert error.status == 429
    assert error.headers["retry-after"] == "5"  # the first that may work again


def test_all_upstreams_failed_renders_as_a_valid_openai_error():
    error = AllUpstreamsFailed("m", [rate_limited("a"), timed_out("b")])

    envelope = to_openai_error(error)

    spec.validate("ErrorResponse", envelope)
    assert envelope == {
        "error": {
            "message": error.message,
            "type": "server_error",
            "param": None,
            "code": "all_upstreams_failed",
        }
    }


def test_upstream_failure_str_is_its_errors_message():
    failure = timed_out("a")

    assert str(failure) == "upstream 'a' timed out"


@pytest.mark.parametrize(
    ("error", "status", "kind", "code", "param"),
    [
        pytest.param(
            InvalidRequest("bad", param="messages"),
            400,
            "invalid_request_error",
            "invalid_request",
            "messages",
            id="invalid-request",
        ),
        pytest.param(
            ModelNotFound("no such model", param="model"),
            404,
            "invalid_request_error",
            "model_not_found",
            "model",
            id="model-not-found",
        ),
        pytest.param(
            UpstreamRejected("bad temp", param="temperature", code="invalid_value", status=422),
            422,
            "invalid_request_error",
            "invalid_value",
            "temperature",
            id="upstream-rejected",
        ),
        pytest.param(
            UpstreamRejected("bad"),
            400,
            "invalid_request_error",
            None,
            None,
            id="upstream-rejected-without-code",
        ),
        pytest.param(
            RateLimited("slow"),
            429,
            "rate_limit_error",
            "rate_limit_exceeded",
            None,
            id="rate-limited",
        ),
        pytest.param(
            UpstreamTimeout("late"), 504, "server_error", "upstream_timeout", None, id="timeout"
        ),
        pytest.param(GatewayError("oops"), 500, "server_error", "internal_error", None, id="base"),
    ],
)
def test_to_openai_error_has_openais_envelope(error, status, kind, code, param):
    envelope = to_openai_error(error)

    spec.validate("ErrorResponse", envelope)
    assert error.status == status
    assert envelope == {
        "error": {"message": error.message, "type": kind, "param": param, "code": code}
    }


def test_a_status_or_code_given_to_one_error_does_not_change_its_class():
    UpstreamError("x", status=503, code="upstream_overloaded")

    fresh = UpstreamError("y")
    assert (fresh.status, fresh.code) == (502, "upstream_error")
    assert (UpstreamError.status, UpstreamError.code) == (502, "upstream_error")


def test_internal_error_names_only_the_request_id():
    error = internal_error("req_123")

    assert error.status == 500
    assert error.message == "internal error; quote request id req_123 when reporting it"
    spec.validate("ErrorResponse", to_openai_error(error))
