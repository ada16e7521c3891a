"""The fake Anthropic upstream (tests/fakes/anthropic_upstream.py) speaks and refuses as Anthropic.

httpx is the client: requests the real API refuses get its 400 (one case per rule), errors come
in Anthropic's shape, streams in its named-SSE framing, and the translator reads them back.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.sse import SSEDecoder
from tests.fakes.anthropic_upstream import (
    MESSAGES_PATH,
    MODELS_PATH,
    OVERLOADED_STATUS,
    FakeAnthropic,
    Reply,
    ToolCall,
    error_event,
)

KEY = "sk-ant-test-key"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "Say hi to me"}],
}
TOOL = {"name": "f", "input_schema": {"type": "object"}}
CALL = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}


@pytest.fixture(scope="module")
def lenient() -> Iterator[FakeAnthropic]:
    """A fake that is sent invalid requests on purpose (no teardown check)."""
    with FakeAnthropic(validate_requests=False) as fake:
        yield fake


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    """A checked fake: any request it would refuse fails the test at teardown."""
    with FakeAnthropic(api_key=KEY) as fake:
        yield fake
        fake.check_requests()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:
        yield http


def post(client: httpx.Client, fake: FakeAnthropic, body: object, **headers: str) -> httpx.Response:
    return client.post(
        fake.base_url + MESSAGES_PATH,
        content=json.dumps(body).encode(),
        headers={**HEADERS, **headers},
    )


def with_fields(**fields: Any) -> dict[str, Any]:
    body = copy.deepcopy(BODY)
    for name, value in fields.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def turns(*messages: tuple[str, Any]) -> dict[str, Any]:
    return with_fields(messages=[{"role": role, "content": content} for role, content in messages])


# One case per rule: (body, expected words in the 400's message).
REFUSED = [
    pytest.param(with_fields(max_tokens=None), "max_tokens: Field required", id="no-max-tokens"),
    pytest.param(with_fields(max_tokens=-1), "max_tokens", id="negative-max-tokens"),
    pytest.param(with_fields(model=None), "model: Field required", id="no-model"),
    pytest.param(with_fields(messages=[]), "at least one message", id="no-messages"),
    pytest.param(
        turns(("system", "be nice"), ("user", "hi")), "Input should be 'user'", id="system-role"
    ),
    pytest.param(turns(("assistant", "hello"), ("user", "hi")), "first message", id="starts-asst"),
    pytest.param(turns(("user", "a"), ("user", "b")), "roles must alternate", id="not-alternating"),
    pytest.param(turns(("user", "")), "non-empty content", id="empty-string"),
    pytest.param(turns(("user", [])), "non-empty content", id="empty-list"),
    pytest.param(
        turns(("user", [{"type": "text", "text": " "}])), "non-whitespace", id="blank-text"
    ),
    pytest.param(
        turns(("user", "hi"), ("assistant", "So ")), "trailing whitespace", id="prefill-space"
    ),
    pytest.param(with_fields(n=2), "n: Extra inputs are not permitted", id="unknown-field"),
    pytest.param(with_fields(temperature=1.5), "temperature", id="temperature"),
    pytest.param(with_fields(top_p=2), "top_p", id="top-p"),
    pytest.param(with_fields(stop_sequences="END"), "stop_sequences", id="stop-string"),
    pytest.param(with_fields(metadata={"user": "x"}), "metadata.user", id="metadata-field"),
    pytest.param(with_fields(system=[{"type": "image"}]), "system.0", id="system-not-text"),
    pytest.param(
        with_fields(tools=[{"name": "f", "parameters": {}}]),
        "tools.0.parameters: Extra inputs",
        id="openai-tool-shape",
    ),
    pytest.param(
        with_fields(tools=[{"name": "f", "input_schema": {"type": "array"}}]),
        "input_schema.type",
        id="schema-not-object",
    ),
    pytest.param(
        with_fields(tools=[{"name": "bad name", "input_schema": {"type": "object"}}]),
        "tools.0.name",
        id="tool-name",
    ),
    pytest.param(with_fields(tools=[TOOL, TOOL]), "unique", id="duplicate-tools"),
    pytest.param(
        with_fields(tool_choice={"type": "auto"}), "providing tools", id="choice-no-tools"
    ),
    pytest.param(
        with_fields(tools=[TOOL], tool_choice={"type": "required"}),
        "tool_choice",
        id="choice-openai-word",
    ),
    pytest.param(
        with_fields(tools=[TOOL], tool_choice={"type": "tool", "name": "g"}),
        "no tool named",
        id="choice-unknown-tool",
    ),
    pytest.param(
        turns(("user", [CALL])), "tool_use blocks can only be in assistant", id="tool-use-by-user"
    ),
    pytest.param(
        turns(("user", "go"), ("assistant", [RESULT])),
        "tool_result blocks can only be in user",
        id="tool-result-by-assistant",
    ),
    pytest.param(
        turns(("user", "go"), ("assistant", [CALL]), ("user", "and?")),
        "tool_use ids were found without tool_result",
        id="call-without-result",
    ),
    pytest.param(
        turns(("user", "go"), ("assistant", [CALL])),
        "tool_use ids were found without tool_result",
        id="call-at-the-end",
    ),
    pytest.param(
        turns(
            ("user", "go"), ("assistant", [CALL]), ("user", [{"type": "text", "text": "x"}, RESULT])
        ),
        "at the beginning of this message",
        id="result-not-first",
    ),
    pytest.param(
        turns(("user", "go"), ("assistant", "ok"), ("user", [RESULT])),
        "unexpected tool_use_id",
        id="result-without-call",
    ),
    pytest.param(
        turns(
            (
                "user",
                [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/bmp", "data": "x"},
                    }
                ],
            )
        ),
        "media_type",
        id="image-type",
    ),
    pytest.param(turns(("user", [{"type": "image_url"}])), "does not match", id="openai-part"),
    pytest.param(with_fields(stream="yes"), "stream", id="stream-not-bool"),
]


@pytest.mark.parametrize(("body", "words"), REFUSED)
def test_requests_anthropic_refuses_get_its_400(lenient, client, body, words):
    response = post(client, lenient, body)

    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert words in error["error"]["message"]
    assert response.headers["request-id"].startswith("req_")
    [record] = [r for r in lenient.chat_requests if r.request_id == response.headers["request-id"]]
    assert record.problems


def test_a_body_that_is_not_json_is_refused(lenient, client):
    response = client.post(lenient.base_url + MESSAGES_PATH, content=b"{", headers=HEADERS)

    assert response.status_code == 400
    assert "parsing the body" in response.json()["error"]["message"]


def test_a_valid_tool_round_trip_is_accepted(lenient, client):
    body = turns(
        ("user", "go"),
        ("assistant", [{"type": "text", "text": "calling"}, CALL]),
        ("user", [RESULT, {"type": "text", "text": "now answer"}]),
    )
    body["tools"] = [TOOL]
    body["tool_choice"] = {"type": "tool", "name": "f", "disable_parallel_tool_use": True}
    body["system"] = [{"type": "text", "text": "be brief"}]

    assert post(client, lenient, body).status_code == 200


def test_missing_headers_are_refused(lenient, client):
    no_key = client.post(
        lenient.base_url + MESSAGES_PATH, json=BODY, headers={"anthropic-version": "2023-06-01"}
    )
    no_version = client.post(
        lenient.base_url + MESSAGES_PATH, json=BODY, headers={"x-api-key": KEY}
    )

    assert no_key.status_code == 401
    assert no_key.json()["error"]["type"] == "authentication_error"
    assert no_version.status_code == 400
    assert "anthropic-version" in no_version.json()["error"]["message"]


def test_a_wrong_key_is_a_401(fake_anthropic, client):
    response = post(client, fake_anthropic, BODY, **{"x-api-key": "wrong"})

    assert response.status_code == 401
    assert response.json()["error"] == {
        "type": "authentication_error",
        "message": "invalid x-api-key",
    }


def test_a_message_answer_has_anthropics_shape(fake_anthropic, client):
    fake_anthropic.script(
        Reply.tools(ToolCall("f", '{"a": 1}', id="toolu_x"), content="Hi there"),
    )

    response = post(client, fake_anthropic, BODY)

    message = response.json()
    assert response.headers["request-id"] == fake_anthropic.chat_requests[0].request_id
    assert message["id"].startswith("msg_")
    assert message["type"] == "message"
    assert message["content"] == [
        {"type": "text", "text": "Hi there"},
        {"type": "tool_use", "id": "toolu_x", "name": "f", "input": {"a": 1}},
    ]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"] == {
        "input_tokens": 4,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 2 + 3,  # two words, a call and its two fragments
        "service_tier": "standard",
    }


def test_usage_overrides_split_cache_reads_out_of_input(fake_anthropic, client):
    fake_anthropic.script(
        Reply(usage={"prompt_tokens": 100, "cached_tokens": 60, "completion_tokens": 7})
    )

    usage = post(client, fake_anthropic, BODY).json()["usage"]

    assert (usage["input_tokens"], usage["cache_read_input_tokens"], usage["output_tokens"]) == (
        40,
        60,
        7,
    )


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("content_filter", "refusal"),
        ("stop_sequence", "stop_sequence"),
    ],
)
def test_finish_reasons_are_said_in_anthropics_words(fake_anthropic, client, finish, stop_reason):
    fake_anthropic.script(Reply(finish_reason=finish))

    message = post(client, fake_anthropic, with_fields(stop_sequences=["END"])).json()

    assert message["stop_reason"] == stop_reason
    assert message["stop_sequence"] == ("END" if stop_reason == "stop_sequence" else None)


def events_of(raw: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    return [(e.event, json.loads(e.data)) for e in SSEDecoder().feed(raw)]


def test_a_stream_is_named_sse_in_anthropics_order(fake_anthropic, client):
    fake_anthropic.script(Reply.tools(ToolCall("f", '{"city": "Paris"}'), content="Hi you"))

    with client.stream(
        "POST",
        fake_anthropic.base_url + MESSAGES_PATH,
        json={**BODY, "stream": True},
        headers=HEADERS,
    ) as response:
        raw = response.read()

    assert response.headers["content-type"].startswith("text/event-stream")
    assert raw.startswith(b"event: message_start\ndata: {")
    events = events_of(raw)
    assert all(name == payload["type"] for name, payload in events)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == []
    assert start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == 4
    tool_start = events[6][1]["content_block"]
    assert tool_start["type"] == "tool_use"
    assert tool_start["input"] == {}
    fragments = [p["delta"]["partial_json"] for _, p in events[7:11]]
    assert fragments[0] == ""
    assert "".join(fragments) == '{"city": "Paris"}'
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert events[-2][1]["usage"]["output_tokens"] == 2 + 4


def test_stream_failures_are_counted_in_events(fake_anthropic, client):
    fake_anthropic.script(Reply(send_done=False), Reply(cut_after=3))
    url = fake_anthropic.base_url + MESSAGES_PATH

    with client.stream("POST", url, json={**BODY, "stream": True}, headers=HEADERS) as response:
        names = [name for name, _ in events_of(response.read())]
    assert names[-1] == "message_delta"

    with (
        client.stream("POST", url, json={**BODY, "stream": True}, headers=HEADERS) as response,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        response.read()


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (OVERLOADED_STATUS, "overloaded_error"),
    ],
)
def test_errors_come_in_anthropics_shape(fake_anthropic, client, status, kind):
    fake_anthropic.script(Reply.error(status))

    response = post(client, fake_anthropic, {**BODY, "stream": True})

    assert response.status_code == status
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    assert body["error"]["message"]
    assert body["request_id"].startswith("req_")
    if status == 429:
        assert response.headers["retry-after"] == "1"


def test_a_mid_stream_error_event_can_be_scripted(fake_anthropic, client):
    fake_anthropic.script(Reply.raw(error_event(), content_type="text/event-stream"))

    response = post(client, fake_anthropic, {**BODY, "stream": True})

    assert events_of(response.content) == [
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    ]


def test_models_are_listed_and_unknown_paths_are_404(fake_anthropic, client):
    listing = client.get(fake_anthropic.base_url + MODELS_PATH, headers=HEADERS).json()
    missing = client.get(fake_anthropic.base_url + "/v1/complete", headers=HEADERS)

    assert [m["id"] for m in listing["data"]] == ["claude-sonnet-4-5", "claude-haiku-4-5"]
    assert listing["data"][0]["type"] == "model"
    assert listing["has_more"] is False
    assert listing["first_id"] == "claude-sonnet-4-5"
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
