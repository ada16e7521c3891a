"""The fake Ollama (tests/fakes/ollama_upstream.py) speaks Ollama's wire format and rejects what
Ollama rejects (or silently ignores), so the gateway's Ollama tests can trust it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.ollama_upstream import (
    CHAT_PATH,
    OVERLOADED_STATUS,
    TAGS_PATH,
    VERSION_PATH,
    FakeOllama,
    Reply,
    ToolCall,
)

MESSAGES: Any = [{"role": "user", "content": "Say hi to me"}]
BODY: dict[str, Any] = {"model": "llama3.2:latest", "messages": MESSAGES, "stream": False}
PNG_B64 = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    """A running FakeOllama whose chat requests must all be valid (checked at teardown)."""
    with FakeOllama() as server:
        yield server
        if server.validate_requests:
            server.check_requests()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:
        yield http


def chat(client: httpx.Client, fake: FakeOllama, body: Any) -> httpx.Response:
    return client.post(fake.base_url + CHAT_PATH, json=body)


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.text.endswith("\n")
    return [json.loads(line) for line in response.text.splitlines()]


# ------------------------------------------------------------------- answers


def test_a_non_stream_answer_is_one_ollama_chat_object(fake, client):
    response = chat(client, fake, BODY)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert "x-request-id" not in response.headers  # Ollama sends no request id
    body = response.json()
    assert body["model"] == "llama3.2:latest"
    assert body["message"] == {"role": "assistant", "content": "Hello! How can I help you today?"}
    assert body["done"] is True
    assert body["done_reason"] == "stop"
    assert body["prompt_eval_count"] == 4
    assert body["eval_count"] == 7
    assert isinstance(body["total_duration"], int)
    assert body["created_at"].endswith("Z")
    assert fake.base_url == fake.url  # gateway.yaml's base_url: no path, Ollama's start /api


def test_ollama_streams_when_stream_is_not_given(fake, client):
    fake.script(Reply(content="Hi there"))

    lines = ndjson(chat(client, fake, {"model": "m", "messages": MESSAGES}))

    assert [line["message"]["content"] for line in lines] == ["Hi", " there", ""]
    assert [line["done"] for line in lines] == [False, False, True]
    assert lines[-1]["done_reason"] == "stop"
    assert lines[-1]["eval_count"] == 2


def test_a_stream_sends_each_tool_call_whole_with_object_arguments(fake, client):
    fake.script(Reply.tools(ToolCall("get_weather", '{"city": "Paris"}'), ToolCall("f", id="c1")))

    lines = ndjson(chat(client, fake, {**BODY, "stream": True}))

    assert [line["message"].get("tool_calls") for line in lines] == [
        [{"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}],
        [{"id": "c1", "function": {"index": 1, "name": "f", "arguments": {}}}],
        None,
    ]
    assert lines[-1]["done_reason"] == "stop"  # Ollama says stop for tool calls too


def test_a_whole_answer_holds_its_tool_calls(fake, client):
    fake.script(Reply.tools(ToolCall("f", ['{"a"', ": 1}"])))

    message = chat(client, fake, BODY).json()["message"]

    assert message == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"index": 0, "name": "f", "arguments": {"a": 1}}}],
    }


def test_length_and_usage_overrides_in_ollamas_words(fake, client):
    fake.script(Reply(finish_reason="length", usage={"prompt_tokens": 9, "completion_tokens": 0}))

    body = chat(client, fake, BODY).json()

    assert body["done_reason"] == "length"
    assert body["prompt_eval_count"] == 9
    assert "eval_count" not in body  # Go's omitempty drops a zero count


def test_send_done_false_and_cut_after_end_a_stream_without_its_done_line(fake, client):
    fake.script(
        Reply(content="one two three", send_done=False), Reply(content="a b c", cut_after=2)
    )

    assert [line["done"] for line in ndjson(chat(client, fake, {**BODY, "stream": True}))] == [
        False,
        False,
        False,
    ]
    with pytest.raises(httpx.RemoteProtocolError):
        chat(client, fake, {**BODY, "stream": True})


def test_tags_and_version(fake, client):
    tags = client.get(fake.base_url + TAGS_PATH).json()
    version = client.get(fake.base_url + VERSION_PATH).json()

    assert [m["name"] for m in tags["models"]] == ["llama3.2:latest", "qwen3:8b"]
    assert tags["models"][0]["details"]["format"] == "gguf"
    assert isinstance(version["version"], str)


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (400, "invalid request"),
        (404, "not found, try pulling it first"),
        (500, "an error was encountered while running the model"),
        (OVERLOADED_STATUS, "server busy"),
    ],
)
def test_errors_are_an_error_string(fake, client, status, words):
    fake.script(Reply.error(status))

    response = chat(client, fake, BODY)

    assert response.status_code == status
    assert list(response.json()) == ["error"]
    assert words in response.json()["error"]


def test_a_scripted_message_and_retry_after(fake, client):
    fake.script(Reply.error(429, "slow down"))

    response = chat(client, fake, BODY)

    assert response.json() == {"error": "slow down"}
    assert response.headers["retry-after"] == "1"


def test_an_unknown_path_is_gins_plain_404(fake, client):
    response = client.post(fake.base_url + "/v1/chat/completions", json=BODY)

    assert response.status_code == 404
    assert response.text == "404 page not found"


def test_with_a_key_it_wants_a_bearer_token(client):
    with FakeOllama(api_key="ok-key") as fake:
        refused = chat(client, fake, BODY)
        accepted = client.post(
            fake.base_url + CHAT_PATH, json=BODY, headers={"authorization": "Bearer ok-key"}
        )

    assert refused.status_code == 401
    assert refused.json() == {"error": "unauthorized"}
    assert accepted.status_code == 200


# ------------------------------------------------------------------- what it rejects


def with_message(**fields: Any) -> dict[str, Any]:
    return {**BODY, "messages": [{"role": "user", "content": "hi", **fields}]}


def assistant_call(arguments: Any) -> dict[str, Any]:
    call = {"type": "function", "function": {"name": "f", "arguments": arguments}}
    return {**BODY, "messages": [*MESSAGES, {"role": "assistant", "tool_calls": [call]}]}


VALID = [
    pytest.param(BODY, id="plain"),
    pytest.param(
        {**BODY, "options": {"temperature": 0, "num_predict": 5, "stop": ["x"]}}, id="options"
    ),
    pytest.param({**BODY, "format": "json"}, id="json"),
    pytest.param({**BODY, "format": {"type": "object"}}, id="schema"),
    pytest.param(with_message(images=[PNG_B64]), id="image"),
    pytest.param(assistant_call({"city": "Paris"}), id="tool-call"),
    pytest.param(
        {**BODY, "messages": [*MESSAGES, {"role": "tool", "tool_name": "f", "content": "1"}]},
        id="tool-result",
    ),
    pytest.param({**BODY, "keep_alive": "5m", "think": False}, id="ollama-fields"),
]


@pytest.mark.parametrize("body", VALID)
def test_what_ollama_takes_is_accepted(fake, client, body):
    assert chat(client, fake, body).status_code == 200


# One rule each: (body, words the 400 says), with the source of each rule in the fake.
INVALID = [
    pytest.param({"messages": MESSAGES, "stream": False}, "model is required", id="no-model"),
    pytest.param({**BODY, "model": ""}, "model is required", id="empty-model"),
    pytest.param({**BODY, "messages": "hi"}, "ChatRequest.messages", id="messages-not-a-list"),
    pytest.param({**BODY, "messages": ["hi"]}, "api.Message", id="message-not-an-object"),
    pytest.param(with_message(role="developer"), "'developer' is not one of", id="unknown-role"),
    pytest.param(
        with_message(content=[{"type": "text", "text": "hi"}]), "into string", id="content-parts"
    ),
    pytest.param(with_message(images=["not base64!"]), "illegal base64", id="image-not-base64"),
    pytest.param(with_message(images=["https://x/cat.png"]), "illegal base64", id="image-url"),
    pytest.param(with_message(images="abc"), "array of base64", id="images-not-a-list"),
    pytest.param(assistant_call('{"city": "Paris"}'), "arguments", id="arguments-string"),
    pytest.param(
        {**BODY, "messages": [*MESSAGES, {"role": "assistant", "tool_calls": [{"name": "f"}]}]},
        "function must be an object",
        id="call-without-function",
    ),
    pytest.param(
        with_message(tool_call_id="call_1"), "unknown field 'tool_call_id'", id="tool-call-id"
    ),
    pytest.param(with_message(tool_name="f"), "only for tool messages", id="tool-name-on-user"),
    pytest.param({**BODY, "options": {"max_tokens": 5}}, "invalid option", id="unknown-option"),
    pytest.param(
        {**BODY, "options": {"temperature": "hot"}}, "must be of type", id="option-wrong-type"
    ),
    pytest.param({**BODY, "options": {"stop": [1]}}, "array of strings", id="stop-not-strings"),
    pytest.param({**BODY, "options": [1]}, "ChatRequest.options", id="options-not-an-object"),
    pytest.param(
        {**BODY, "temperature": 0.5}, "unknown field 'temperature'", id="top-level-option"
    ),
    pytest.param({**BODY, "format": "yaml"}, "invalid format", id="format"),
    pytest.param({**BODY, "stream": "yes"}, "of type bool", id="stream-not-bool"),
    pytest.param(
        {**BODY, "tools": [{"type": "custom", "custom": {"name": "x"}}]},
        "type must be function",
        id="tool-not-function",
    ),
    pytest.param({**BODY, "top_logprobs": 21}, "between 0 and 20", id="top-logprobs"),
]


@pytest.mark.parametrize(("body", "words"), INVALID)
def test_what_ollama_rejects_or_would_ignore_is_a_400(fake, client, body, words):
    fake.validate_requests = False  # sent invalid on purpose

    response = chat(client, fake, body)

    assert response.status_code == 400
    assert words in response.json()["error"]
    [record] = fake.chat_requests
    assert record.problems
    with pytest.raises(AssertionError, match="invalid request"):
        fake.check_requests()


def test_a_body_that_is_not_json_is_a_400(fake, client):
    fake.validate_requests = False

    response = client.post(fake.base_url + CHAT_PATH, content=b"{not json")

    assert response.status_code == 400
    assert "error" in response.json()
