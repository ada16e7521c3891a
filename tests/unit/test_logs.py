"""gateway/logs.py: secret redaction, request ids and the JSON log formatter."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from gateway.logs import JSONFormatter, TextFormatter, accept_request_id, new_request_id, redact

MASK = "[REDACTED]"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "Incorrect API key provided: sk-proj-AbCdEf0123456789xyz.",
            f"Incorrect API key provided: {MASK}.",
            id="sk-key",
        ),
        pytest.param("key sk-abcdefgh end", f"key {MASK} end", id="sk-shortest"),
        pytest.param("masked sk-abc*****wxyz here", f"masked {MASK} here", id="sk-partly-masked"),
        pytest.param("rk-live_0123456789ab", MASK, id="rk-key"),
        pytest.param("sess-0123456789abcdef", MASK, id="session-key"),
        pytest.param(
            "Authorization: Bearer eyJhbGciOi.J9.abc, next",
            f"Authorization: Bearer {MASK}, next",
            id="bearer",
        ),
        pytest.param("BEARER   tok123", f"BEARER   {MASK}", id="bearer-any-case"),
        pytest.param(
            '{"auth": "Bearer abc123"}', f'{{"auth": "Bearer {MASK}"}}', id="bearer-in-json"
        ),
        pytest.param(
            "GET https://x.googleapis.com/v1/models?key=AIzaSyA-0123456789abcdefghij&alt=sse",
            f"GET https://x.googleapis.com/v1/models?key={MASK}&alt=sse",
            id="key-query-param",
        ),
        pytest.param(
            "/v1?a=1&api_key=secret123 x", f"/v1?a=1&api_key={MASK} x", id="api_key-param"
        ),
        pytest.param("/v1?api-key=secret123", f"/v1?api-key={MASK}", id="api-key-param"),
        pytest.param("/cb?access_token=tok&b=2", f"/cb?access_token={MASK}&b=2", id="access-token"),
        pytest.param("/cb?token=tok", f"/cb?token={MASK}", id="token-param"),
        pytest.param(
            "google key AIzaSyA-0123456789abcdefghijk in text",
            f"google key {MASK} in text",
            id="google-key",
        ),
    ],
)
def test_redact_masks_credential_shapes(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The model answered in 120 ms; 42 tokens used.",
        "ask-questions and task-force and risk-management are words",
        "sk-short is too short to be a key",
        "the token bearer-less request",
        "https://api.openai.com/v1/chat/completions?stream=true&monkey=1",
        "AIza is a prefix but AIzaShort is not a key",
        "upstream 'openai' is rate limited: Rate limit reached for gpt-4o",
        "",
    ],
)
def test_redact_leaves_ordinary_text_alone(text):
    assert redact(text) == text


def test_redact_masks_every_given_secret_wherever_it_appears():
    secrets = ["my-custom-upstream-key", "org-9f8e7d6c"]
    text = "key=my-custom-upstream-key org=org-9f8e7d6c again my-custom-upstream-key"

    assert redact(text, secrets) == f"key={MASK} org={MASK} again {MASK}"


def test_redact_masks_the_whole_of_a_secret_that_contains_another():
    secrets = ["org-12345678", "org-12345678-private-part"]

    assert redact("value org-12345678-private-part", secrets) == f"value {MASK}"


def test_redact_ignores_empty_and_very_short_secrets():
    assert redact("a b abc done", ["", "a", "abc"]) == "a b abc done"


def test_redact_masks_given_secrets_and_shapes_together():
    text = "custom-secret-value then sk-0123456789abcdef"

    assert redact(text, ("custom-secret-value",)) == f"{MASK} then {MASK}"


# ---------------------------------------------------------------- request ids


@pytest.mark.parametrize(
    "value",
    [
        b"abc",
        b"req_0123456789abcdef",
        b"3f2b8c1e-9d4a-4f6b-8a2c-1e9d4a4f6b8a",
        b"trace:span/1+2=3@host.example",
        b"x" * 128,
    ],
)
def test_accept_request_id_keeps_sane_ids(value):
    assert accept_request_id(value) == value.decode()


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="absent"),
        pytest.param(b"", id="empty"),
        pytest.param(b"x" * 129, id="too-long"),
        pytest.param(b"abc\r\nX-Injected: 1", id="crlf"),
        pytest.param(b"abc\n", id="trailing-lf"),
        pytest.param(b"abc\ndef", id="inner-lf"),
        pytest.param(b"abc def", id="space"),
        pytest.param(b"abc\tdef", id="tab"),
        pytest.param(b'"quoted"', id="quotes"),
        pytest.param(b"<script>", id="angle-brackets"),
        pytest.param("caf\u00e9".encode("latin-1"), id="non-ascii"),
        pytest.param(b"abc\x00", id="nul"),
    ],
)
def test_accept_request_id_replaces_bad_ids_with_a_new_one(value):
    accepted = accept_request_id(value)

    assert accepted != (value or b"").decode("latin-1")
    assert accepted.startswith("req_")
    assert accept_request_id(accepted.encode()) == accepted


def test_new_request_ids_are_unique_and_sane():
    ids = {new_request_id() for _ in range(100)}

    assert len(ids) == 100
    assert all(i.startswith("req_") and accept_request_id(i.encode()) == i for i in ids)


# ---------------------------------------------------------------- formatters


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("tests.unit.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def test_json_formatter_writes_one_json_object_per_line_with_extras(captured):
    logger, stream = captured

    logger.info("request done", extra={"request_id": "req_1", "status": 200, "upstream": "mock"})
    logger.warning("multi\nline %s", "message", extra={"reason": {"nested": [1, 2]}})
    logger.debug("plain")

    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["message"] == "request done"
    assert first["level"] == "info"
    assert first["logger"] == "tests.unit.logs"
    assert first["request_id"] == "req_1"
    assert first["status"] == 200
    assert first["upstream"] == "mock"
    assert first["time"].endswith("Z")
    assert len(first["time"]) == len("2024-01-01T00:00:00.000Z")
    assert second["message"] == "multi\nline message"
    assert second["level"] == "warning"
    assert second["reason"] == {"nested": [1, 2]}
    assert set(third) == {"time", "level", "logger", "message"}


def test_json_formatter_includes_the_traceback_and_stringifies_odd_values(captured):
    logger, stream = captured

    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed", extra={"odd": object(), "path": b"bytes"})

    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "error"
    assert "ValueError: boom" in entry["traceback"]
    assert entry["odd"].startswith("<object object")
    assert entry["path"] == "b'bytes'"


def test_text_formatter_appends_extras_as_key_value_pairs():
    record = logging.makeLogRecord(
        {"name": "gw", "levelname": "INFO", "levelno": 20, "msg": "done", "status": 200}
    )

    line = TextFormatter().format(record)

    assert "INFO" in line
    assert line.endswith("gw done status=200")


def test_the_buffered_handler_writes_lines_in_order_in_batches_and_at_flush():
    import io

    from gateway.logs import BufferedHandler

    stream = io.BytesIO()
    handler = BufferedHandler(stream, interval=3600)  # only explicit flushes here
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("test.buffered")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for i in range(3):
            logger.info("line %d", i)
        assert stream.getvalue() == b""  # nothing written on the caller's thread
        handler.flush()
        assert stream.getvalue() == b"line 0\nline 1\nline 2\n"
    finally:
        logger.removeHandler(handler)


def test_the_buffered_handler_says_how_many_lines_a_full_queue_dropped():
    import io

    from gateway.logs import BufferedHandler

    stream = io.BytesIO()
    handler = BufferedHandler(stream, interval=3600, limit=2)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(5):
        handler.handle(logging.makeLogRecord({"msg": f"m{i}", "levelno": logging.INFO}))

    handler.flush()

    assert stream.getvalue().splitlines() == [
        b'{"level":"warning","message":"3 log lines dropped"}',
        b"m3",
        b"m4",
    ]
