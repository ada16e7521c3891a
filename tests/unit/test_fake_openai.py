"""The fake OpenAI upstream (tests/fakes/openai_upstream.py) does what its docstring promises.

The gateway's integration tests trust the fake to behave like OpenAI and to fail exactly as
scripted; these tests hold it to that, with httpx and the official SDK as its clients. Every
body they read is checked against OpenAI's schemas (a wiretap, see tests/integration/wiretap.py)
except the raw, deliberately non-OpenAI ones.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests import spec
from tests.fakes.openai_upstream import (
    CHAT_PATH,
    MODELS_PATH,
    FakeOpenAI,
    RecordedRequest,
    Reply,
    ToolCall,
)
from tests.integration.wiretap import (
    Wiretap,
    async_openai_client,
    http_client,
    openai_client,
)
from tests.servers import LoopName

MESSAGES: Any = [{"role": "user", "content": "Say hi to me"}]
BODY = {"model": "gpt-4o-mini", "messages": MESSAGES}
STREAM_BODY = {**BODY, "stream": True}
DEFAULT_TEXT = "Hello! How can I help you today?"


@pytest.fixture
def tap() -> Iterator[Wiretap]:
    wiretap = Wiretap()
    yield wiretap
    wiretap.check()


@pytest.fixture
def client(tap: Wiretap) -> Iterator[httpx.Client]:
    with http_client(tap) as http:
        yield http


@pytest.fixture
def sdk(tap: Wiretap, fake_openai: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai_client(tap, fake_openai.base_url, api_key="sk-test-key") as client:
        yield client


def chat_url(fake: FakeOpenAI) -> str:
    return fake.base_url + "/chat/completions"


def only_request(fake: FakeOpenAI) -> RecordedRequest:
    [record] = fake.chat_requests
    return record


# ------------------------------------------------------------------- answers


def test_completion_is_openai_shaped_and_the_request_is_recorded(
    fake_openai: FakeOpenAI, sdk: openai.OpenAI
):
    raw = sdk.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    completion = raw.parse()

    assert completion.choices[0].message.content == DEFAULT_TEXT
    assert completion.model == "gpt-4o-mini"
    assert completion.usage is not None
    record = only_request(fake_openai)
    assert raw.headers["x-request-id"] == record.request_id
    assert record.request_id.startswith("req_")
    assert raw.headers["openai-version"]
    assert record.headers["authorization"] == "Bearer sk-test-key"
    assert record.json["messages"] == MESSAGES
    assert record.wait_ended()
    assert record.finished_at is not None
    assert not record.disconnected


def test_stream_with_include_usage_ends_with_a_usage_chunk(
    fake_openai: FakeOpenAI, sdk: openai.OpenAI
):
    chunks = list(
        sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    *content, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.total_tokens > 0
    assert all(chunk.usage is None for chunk in content)
    assert "".join(c.choices[0].delta.content or "" for c in content) == DEFAULT_TEXT


def test_streamed_tool_calls_assemble_to_the_scripted_calls(
    fake_openai: FakeOpenAI, client: httpx.Client
):
    fake_openai.script(
        Reply.tools(ToolCall("get_weather", '{"city": "Paris", "unit": "c"}'), ToolCall("f2"))
    )

    response = client.post(
        chat_url(fake_openai), json={**STREAM_BODY, "stream_options": {"include_usage": True}}
    )

    assert response.headers["content-type"].startswith("text/event-stream")
    [choice] = spec.assemble(spec.validate_stream(response.content))
    first, second = choice["tool_calls"]
    assert first["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Paris", "unit": "c"}',
    }
    assert first["id"].startswith("call_")
    assert second["function"] == {"name": "f2", "arguments": "{}"}
    assert choice["finish_reason"] == "tool_calls"
    assert choice["content"] is None


def test_tool_call_arguments_stream_in_the_given_fragments(
    fake_openai: FakeOpenAI, client: httpx.Client
):
    fake_openai.script(Reply.tools(ToolCall("f", ['{"a"', ": 1", "}"], id="call_fixed")))

    response = client.post(chat_url(fake_openai), json=STREAM_BODY)

    fragments = [
        call["function"]["arguments"]
        for event in spec.validate_stream(response.content)
        for choice in event["choices"]
        for call in choice["delta"].get("tool_calls") or []
    ]
    assert [f for f in fragments if f] == ['{"a"', ": 1", "}"]
    [choice] = spec.assemble(spec.validate_stream(response.content))
    assert choice["tool_calls"][0]["id"] == "call_fixed"


def test_n_choices_plain_and_streamed(fake_openai: FakeOpenAI, client: httpx.Client):
    fake_openai.script(Reply.tools(ToolCall("x", '{"a":1}'), content="thinking"))

    plain = client.post(chat_url(fake_openai), json={**BODY, "n": 2}).json()
    streamed = client.post(chat_url(fake_openai), json={**STREAM_BODY, "n": 2})

    assert [c["index"] for c in plain["choices"]] == [0, 1]
    assert plain["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "x"
    assert plain["choices"][0]["message"]["content"] == "thinking"
    choices = spec.assemble(spec.validate_stream(streamed.content))
    assert [c["content"] for c in choices] == [DEFAULT_TEXT] * 2


def test_unicode_content_is_sent_raw_and_intact(fake_openai: FakeOpenAI, client: httpx.Client):
    fake_openai.script(Reply(content=["你好", "\u2028", " wörld 🎉"]))

    response = client.post(chat_url(fake_openai), json=STREAM_BODY)

    assert "你好".encode() in response.content  # raw UTF-8, not \\u escapes
    [choice] = spec.assemble(spec.validate_stream(response.content))
    assert choice["content"] == "你好\u2028 wörld 🎉"


def test_callable_behaviour_sees_the_request(fake_openai: FakeOpenAI, client: httpx.Client):
    fake_openai.set_default(lambda request: Reply(content=request.json["model"] + "!"))

    response = client.post(chat_url(fake_openai), json={**BODY, "model": "gpt-4o"})

    assert response.json()["choices"][0]["message"]["content"] == "gpt-4o!"
    assert response.json()["model"] == "gpt-4o"


def test_scripted_replies_are_used_in_order_then_the_default(
    fake_openai: FakeOpenAI, client: httpx.Client
):
    fake_openai.script(Reply(content="one"), Reply(content="two"))

    answers = [
        client.post(chat_url(fake_openai), json=BODY).json()["choices"][0]["message"]["content"]
        for _ in range(3)
    ]

    assert answers == ["one", "two", DEFAULT_TEXT]
    assert fake_openai.pending() == 0


def test_models_listing_and_a_scripted_models_error(fake_openai: FakeOpenAI, client: httpx.Client):
    listing = client.get(fake_openai.base_url + "/models")
    fake_openai.script(Reply.error(500), path=MODELS_PATH)
    failed = client.get(fake_openai.base_url + "/models")

    assert [m["id"] for m in listing.json()["data"]] == ["gpt-4o-mini", "gpt-4o"]
    assert failed.status_code == 500


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (422, openai.UnprocessableEntityError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_error_replies_raise_the_sdks_typed_exceptions(
    fake_openai: FakeOpenAI,
    sdk: openai.OpenAI,
    status: int,
    exception: type[openai.APIStatusError],
):
    fake_openai.script(Reply.error(status))

    with pytest.raises(exception) as raised:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert raised.value.status_code == status
    assert raised.value.response.headers["x-request-id"].startswith("req_")
    if status == 429:
        assert raised.value.response.headers["retry-after"] == "1"
        assert raised.value.code == "rate_limit_exceeded"


def test_error_reply_on_a_stream_request_is_a_json_error(
    fake_openai: FakeOpenAI, client: httpx.Client
):
    fake_openai.script(Reply.error(400, "Bad stream.", param="stream", code=None))

    response = client.post(chat_url(fake_openai), json=STREAM_BODY)

    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "Bad stream.",
        "type": "invalid_request_error",
        "param": "stream",
        "code": None,
    }


def test_unknown_path_is_openais_invalid_url_404(fake_openai: FakeOpenAI, client: httpx.Client):
    response = client.post(fake_openai.base_url + "/nope", json={})

    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (POST /v1/nope)"
    assert response.json()["error"]["code"] is None


def test_non_json_chat_body_is_400(fake_openai: FakeOpenAI, client: httpx.Client):
    fake_openai.validate_requests = False  # the request is invalid on purpose

    response = client.post(chat_url(fake_openai), content=b"{not json")

    assert response.status_code == 400
    assert "could not parse the JSON body" in response.json()["error"]["message"]


def test_api_key_is_required_when_configured(tap: Wiretap):
    with FakeOpenAI(api_key="sk-right") as fake, http_client(tap) as client:
        wrong = client.post(chat_url(fake), json=BODY, headers={"authorization": "Bearer sk-no"})
        right = client.post(chat_url(fake), json=BODY, headers={"authorization": "Bearer sk-right"})

    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert right.status_code == 200


def test_raw_reply_is_sent_verbatim(fake_openai: FakeOpenAI):
    fake_openai.script(Reply.raw("<html>bad gateway</html>", status=502))

    with httpx.Client() as client:  # not tapped: the body is not OpenAI's on purpose
        response = client.post(chat_url(fake_openai), json=BODY)

    assert response.status_code == 502
    assert response.text == "<html>bad gateway</html>"
    assert response.headers["content-type"].startswith("text/html")


def test_reply_headers_are_added_and_removed(fake_openai: FakeOpenAI, client: httpx.Client):
    fake_openai.script(Reply(headers={"x-request-id": None, "X-Extra": "1"}))

    response = client.post(chat_url(fake_openai), json=BODY)

    assert "x-request-id" not in response.headers
    assert response.headers["x-extra"] == "1"


# ------------------------------------------------------------------- failures and timing


def test_cut_after_n_events_breaks_the_connection(fake_openai: FakeOpenAI, client: httpx.Client):
    fake_openai.script(Reply(cut_after=3))
    lines: list[str] = []

    with (
        client.stream("POST", chat_url(fake_openai), json=STREAM_BODY) as response,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        lines.extend(response.iter_lines())

    assert len(spec.validate_stream(lines, expect_done=False)) == 3


def test_cut_json_body_breaks_the_connection(fake_openai: FakeOpenAI, client: httpx.Client):
    fake_openai.script(Reply(cut_after=0))

    with pytest.raises(httpx.RemoteProtocolError):
        client.post(chat_url(fake_openai), json=BODY)


def test_send_done_false_ends_the_stream_without_done(fake_openai: FakeOpenAI):
    fake_openai.script(Reply(send_done=False))

    with httpx.Client() as client:  # not tapped: it holds streams to the gateway's rules
        response = client.post(chat_url(fake_openai), json=STREAM_BODY)

    events = spec.validate_stream(response.content, expect_done=False)
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_hanging_reply_records_the_client_giving_up(fake_openai: FakeOpenAI, tap: Wiretap):
    fake_openai.script(Reply.hanging())

    with http_client(tap, timeout=0.3) as client, pytest.raises(httpx.ReadTimeout):
        client.post(chat_url(fake_openai), json=BODY)

    record = only_request(fake_openai)
    assert record.wait_disconnected(2)
    assert record.disconnected_at is not None
    assert record.disconnected_at - record.received_at >= 0.25
    assert record.finished_at is None


def test_hanging_reply_is_released_when_the_fake_stops():
    fake = FakeOpenAI()
    fake.start()
    fake.script(Reply.hanging())
    outcome: list[httpx.HTTPError | httpx.Response] = []

    def call() -> None:
        try:
            with httpx.Client(timeout=10) as client:
                outcome.append(client.post(chat_url(fake), json=BODY))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    try:
        fake.wait_for_requests(1)
    finally:
        started = time.monotonic()
        fake.stop()
        caller.join(5)

    assert not caller.is_alive()
    assert time.monotonic() - started < 2
    [result] = outcome  # the connection dropped, or uvicorn's 500 for an app that gave up
    assert isinstance(result, httpx.HTTPError) or result.status_code == 500, result


def test_client_leaving_a_stream_is_recorded_as_a_disconnect(
    fake_openai: FakeOpenAI, client: httpx.Client
):
    fake_openai.script(Reply(content=["a"] * 200, event_delay=0.02))

    with client.stream("POST", chat_url(fake_openai), json=STREAM_BODY) as response:
        lines = response.iter_lines()
        next(lines)

    record = only_request(fake_openai)
    assert record.wait_disconnected(2)
    assert record.finished_at is None


def test_first_byte_delay_holds_the_status_line(fake_openai: FakeOpenAI, client: httpx.Client):
    fake_openai.script(Reply(first_byte_delay=0.2))

    started = time.monotonic()
    response = client.post(chat_url(fake_openai), json=BODY)

    assert time.monotonic() - started >= 0.2
    assert response.status_code == 200


def test_stream_headers_come_before_the_first_event(fake_openai: FakeOpenAI, client: httpx.Client):
    fake_openai.script(Reply(stall_after=0))  # headers, then silence until the client leaves

    with client.stream("POST", chat_url(fake_openai), json=STREAM_BODY) as response:
        status = response.status_code

    assert status == 200
    assert only_request(fake_openai).wait_disconnected(2)


def test_first_event_delay_and_event_delay_pace_the_stream(
    fake_openai: FakeOpenAI, client: httpx.Client
):
    fake_openai.script(Reply(content=["a", "b"], first_event_delay=0.1, event_delay=0.05))

    started = time.monotonic()
    response = client.post(chat_url(fake_openai), json=STREAM_BODY)

    # role, "a", "b", finish, [DONE]: 0.1 s, then 4 gaps of 0.05 s
    assert time.monotonic() - started >= 0.3
    spec.validate_stream(response.content)


def test_stall_after_n_events_goes_silent(fake_openai: FakeOpenAI, tap: Wiretap):
    fake_openai.script(Reply(stall_after=2))
    lines: list[str] = []

    with (
        http_client(tap, timeout=httpx.Timeout(5, read=0.3)) as client,
        client.stream("POST", chat_url(fake_openai), json=STREAM_BODY) as response,
        pytest.raises(httpx.ReadTimeout),
    ):
        lines.extend(response.iter_lines())

    assert len(spec.sse_data(lines)) == 2
    assert only_request(fake_openai).wait_disconnected(2)


# ------------------------------------------------------------------- request checks and loops


def test_check_requests_flags_an_invalid_chat_request(tap: Wiretap):
    with FakeOpenAI() as fake, http_client(tap) as client:
        response = client.post(chat_url(fake), json={"model": "x", "messages": []})

        assert response.status_code == 400  # as OpenAI answers a request its schema refuses
        assert response.json()["error"]["message"].startswith("Invalid request: ")
        with pytest.raises(AssertionError, match="received an invalid request"):
            fake.check_requests()


def test_wait_for_requests_times_out_with_an_assertion(fake_openai: FakeOpenAI):
    with pytest.raises(AssertionError, match="expected 1 request"):
        fake_openai.wait_for_requests(1, timeout=0.05)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_async_sdk_streams_on_either_loop(tap: Wiretap, loop: LoopName):
    with FakeOpenAI(loop=loop) as fake:

        async def main() -> str:
            async with async_openai_client(tap, fake.base_url) as sdk:
                stream = await sdk.chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES, stream=True
                )
                return "".join([c.choices[0].delta.content or "" async for c in stream])

        assert asyncio.run(main()) == DEFAULT_TEXT
        assert json.loads(fake.chat_requests[0].body)["stream"] is True
        assert fake.chat_requests[0].path == CHAT_PATH
