"""The official `openai` SDK, unmodified, pointed at the gateway: what README's users do.

Most behaviours run twice, against a fake OpenAI upstream on a real socket and against the
built-in mock upstream (`backend` fixture). The errors run against the fake, which can fail on
demand; each must surface as the SDK's typed exception. Every body the SDK received is checked
against OpenAI's schemas by the `sdk` fixture's wiretap.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from jsonschema import Draft202012Validator

from tests.conftest import GatewayServer
from tests.fakes.openai_upstream import FakeOpenAI, RecordedRequest, Reply, ToolCall
from tests.integration.conftest import (
    UPSTREAM_KEY,
    FakeView,
    MakeSDK,
    async_sdk,
    openai_upstream,
    refused_base_url,
    serve,
    settle,
)
from tests.integration.wiretap import Wiretap

FAKE_TEXT = "Hello! How can I help you today?"  # what the fake says unless scripted otherwise
HELLO: Any = [{"role": "user", "content": "Hello there!"}]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
# The mock calls a tool the prompt names, with arguments built from its schema: the last
# capitalised word for a string, an enum's first value.
WEATHER_PROMPT: Any = [{"role": "user", "content": "Please call get_weather for Paris"}]
WEATHER_ARGUMENTS = {"city": "Paris", "unit": "celsius"}


@pytest.fixture(scope="module")
def fake_gateway(shared_fake: FakeOpenAI) -> Iterator[GatewayServer]:
    """The gateway on the module's fake: `gpt-4o-mini` and `gpt-4o` as they are, `team/default`
    as `gpt-4o-2024-08-06`, `slow` with a 0.3 s read timeout, `refused` on a closed port."""
    with refused_base_url() as refused:
        config = {
            "upstreams": {
                "up": openai_upstream(shared_fake),
                "slow": openai_upstream(shared_fake, timeouts={"read": 0.3}),
                "refused": openai_upstream(refused),
            },
            "models": {
                "gpt-4o-mini": [{"upstream": "up", "model": "gpt-4o-mini"}],
                "gpt-4o": [{"upstream": "up", "model": "gpt-4o"}],
                "team/default": [{"upstream": "up", "model": "gpt-4o-2024-08-06"}],
                "slow": [{"upstream": "slow", "model": "gpt-4o-mini"}],
                "refused": [{"upstream": "refused", "model": "gpt-4o-mini"}],
            },
        }
        with serve(config) as gateway:
            yield gateway


@pytest.fixture(scope="module")
def mock_gateway() -> Iterator[GatewayServer]:
    """The gateway on the built-in mock: `gpt-4o-mini` and `gpt-4o` are both `mock-1`."""
    targets = [{"upstream": "up", "model": "mock-1"}]
    config = {
        "upstreams": {"up": {"provider": "mock"}},
        "models": {"gpt-4o-mini": targets, "gpt-4o": targets},
    }
    with serve(config) as gateway:
        yield gateway


@dataclass(frozen=True)
class Backend:
    """The gateway on the fake upstream or on the mock, and an SDK client on it."""

    kind: str
    gateway: GatewayServer
    client: openai.OpenAI
    fake: FakeView | None

    def script(self, *replies: Reply) -> None:
        """Script the fake; the mock decides for itself."""
        if self.fake is not None:
            self.fake.script(*replies)

    def last_upstream_body(self) -> Any:
        assert self.fake is not None
        return self.fake.chat_requests[-1].json


@pytest.fixture(params=["fake", "mock"])
def backend(request: pytest.FixtureRequest, sdk: MakeSDK) -> Backend:
    if request.param == "fake":
        fake: FakeView | None = request.getfixturevalue("fake")
        gateway: GatewayServer = request.getfixturevalue("fake_gateway")
    else:
        fake, gateway = None, request.getfixturevalue("mock_gateway")
    return Backend(request.param, gateway, sdk(gateway), fake)


def expected_text(backend: Backend, client: openai.OpenAI, **request: Any) -> str:
    """The whole answer the backend gives to `request` (the mock answers deterministically)."""
    if backend.kind == "fake":
        return FAKE_TEXT
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, **request)
    text = completion.choices[0].message.content
    assert isinstance(text, str)
    assert text.startswith('You said "Hello there!". Mock answer:')
    return text


def body_of(error: openai.APIError) -> dict[str, Any]:
    """The `error` object the SDK parsed from the gateway's answer."""
    assert isinstance(error.body, dict), error.body
    return error.body


# ------------------------------------------------------------------- success paths


def test_create_returns_the_upstream_completion(backend: Backend):
    raw = backend.client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO
    )
    completion = raw.parse()

    assert raw.headers["x-gateway-upstream"] == "up"
    [choice] = completion.choices
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == expected_text(backend, backend.client)
    assert completion.usage is not None
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert completion.usage.completion_tokens > 0
    if backend.fake is not None:
        assert backend.last_upstream_body()["messages"] == HELLO
        assert completion.model == "gpt-4o-mini"


def test_stream_without_include_usage_has_no_usage_chunk_though_upstream_was_asked(
    backend: Backend,
):
    chunks = list(
        backend.client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True)
    )

    assert chunks, "no chunks"
    assert all(chunk.choices for chunk in chunks), "a chunk with empty choices (usage) leaked"
    assert all(chunk.usage is None for chunk in chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == expected_text(backend, backend.client)
    assert chunks[-1].choices[0].finish_reason == "stop"
    if backend.fake is not None:
        upstream = backend.last_upstream_body()
        assert upstream["stream"] is True
        assert upstream["stream_options"] == {"include_usage": True}


def test_stream_with_include_usage_ends_with_one_usage_chunk(backend: Backend):
    chunks = list(
        backend.client.chat.completions.create(
            model="gpt-4o-mini",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    *content, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(chunk.choices and chunk.usage is None for chunk in content)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in content)
    assert text == expected_text(backend, backend.client)
    if backend.fake is not None:
        assert backend.last_upstream_body()["stream_options"] == {"include_usage": True}


def test_stream_helper_final_completion_holds_the_whole_answer(backend: Backend):
    with backend.client.chat.completions.stream(model="gpt-4o-mini", messages=HELLO) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()

    [choice] = final.choices
    assert choice.message.content == expected_text(backend, backend.client)
    assert "".join(deltas) == choice.message.content
    assert len(deltas) > 1, "the answer did not arrive in pieces"
    assert choice.finish_reason == "stop"


def test_stream_helper_assembles_tool_call_arguments_from_deltas(backend: Backend):
    backend.script(Reply.tools(ToolCall("get_weather", json.dumps(WEATHER_ARGUMENTS))))

    with backend.client.chat.completions.stream(
        model="gpt-4o-mini", messages=WEATHER_PROMPT, tools=[WEATHER_TOOL]
    ) as stream:
        fragments = [
            event.arguments_delta
            for event in stream
            if event.type == "tool_calls.function.arguments.delta"
        ]
        final = stream.get_final_completion()

    [choice] = final.choices
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGUMENTS
    assert len(fragments) > 1, "the arguments did not arrive in fragments"
    assert "".join(fragments) == call.function.arguments
    if backend.fake is not None:
        assert backend.last_upstream_body()["tools"] == [WEATHER_TOOL]


def test_tool_call_plain(backend: Backend):
    backend.script(Reply.tools(ToolCall("get_weather", json.dumps(WEATHER_ARGUMENTS))))

    completion = backend.client.chat.completions.create(
        model="gpt-4o-mini", messages=WEATHER_PROMPT, tools=[WEATHER_TOOL], tool_choice="auto"
    )

    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGUMENTS
    if backend.fake is not None:
        upstream = backend.last_upstream_body()
        assert upstream["tools"] == [WEATHER_TOOL]
        assert upstream["tool_choice"] == "auto"


def test_tool_call_streamed_with_create(backend: Backend):
    backend.script(Reply.tools(ToolCall("get_weather", json.dumps(WEATHER_ARGUMENTS))))

    stream = backend.client.chat.completions.create(
        model="gpt-4o-mini", messages=WEATHER_PROMPT, tools=[WEATHER_TOOL], stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish

    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["id"]
    assert calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == WEATHER_ARGUMENTS


def test_tool_result_round_trip(backend: Backend):
    """The conversation after a tool call (assistant tool_calls + tool message) is accepted."""
    messages: Any = [
        *WEATHER_PROMPT,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
    ]
    backend.script(Reply(content="It is 18 degrees and sunny in Paris."))

    completion = backend.client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL]
    )

    content = completion.choices[0].message.content or ""
    assert "18 degrees and sunny" in content
    if backend.fake is not None:
        assert backend.last_upstream_body()["messages"] == messages


def test_models_list_and_retrieve(backend: Backend):
    models = list(backend.client.models.list())
    model = backend.client.models.retrieve("gpt-4o")
    with pytest.raises(openai.NotFoundError) as missing:
        backend.client.models.retrieve("no-such-model")

    assert [m.id for m in models] == list(backend.gateway.config.models)
    assert all(m.object == "model" for m in models)
    assert model.id == "gpt-4o"
    assert missing.value.code == "model_not_found"


def test_async_client_plain_stream_helper_and_models(backend: Backend, wiretap: Wiretap):
    backend.script(Reply(), Reply(), Reply())

    async def session() -> tuple[str | None, str, str | None, list[str]]:
        async with async_sdk(wiretap, backend.gateway) as client:
            completion = await client.chat.completions.create(model="gpt-4o", messages=HELLO)
            stream = await client.chat.completions.create(
                model="gpt-4o",
                messages=HELLO,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
            assert chunks[-1].usage is not None
            assert chunks[-1].choices == []
            streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            async with client.chat.completions.stream(model="gpt-4o", messages=HELLO) as helper:
                final = await helper.get_final_completion()
            models = [m.id async for m in client.models.list()]
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="gpt-5-nope", messages=HELLO)
        return (
            completion.choices[0].message.content,
            streamed,
            final.choices[0].message.content,
            models,
        )

    plain, streamed, helped, models = asyncio.run(session())

    expected = expected_text(backend, backend.client)
    assert plain == streamed == helped == expected
    assert models == list(backend.gateway.config.models)


def test_json_object_mode(backend: Backend):
    backend.script(Reply(content='{"answer": "hi"}'))

    completion = backend.client.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, response_format={"type": "json_object"}
    )

    answer = json.loads(completion.choices[0].message.content or "")
    assert isinstance(answer, dict)
    assert isinstance(answer["answer"], str)
    if backend.fake is not None:
        assert backend.last_upstream_body()["response_format"] == {"type": "json_object"}


def test_json_schema_mode(backend: Backend):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    response_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "city", "schema": schema, "strict": True},
    }
    backend.script(Reply(content='{"city": "Paris", "population": 2100000}'))

    completion = backend.client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "The biggest city of France?"}],
        response_format=response_format,
    )

    answer = json.loads(completion.choices[0].message.content or "")
    assert not list(Draft202012Validator(schema).iter_errors(answer)), answer
    if backend.fake is not None:
        assert backend.last_upstream_body()["response_format"] == response_format


def test_image_content_parts_reach_the_upstream_unchanged(
    fake: FakeView, fake_gateway: GatewayServer, sdk: MakeSDK
):
    messages: Any = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://example.com/cat.png", "detail": "low"},
                },
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="},
                },
            ],
        }
    ]

    completion = sdk(fake_gateway).chat.completions.create(model="gpt-4o-mini", messages=messages)

    assert completion.choices[0].message.content == FAKE_TEXT
    assert fake.chat_requests[-1].json["messages"] == messages


def test_unknown_body_fields_reach_the_upstream_unchanged(
    fake: FakeView, fake_gateway: GatewayServer, sdk: MakeSDK
):
    extra = {
        "x_vendor_option": {"nested": [1, "two", None, {"deep": True}], "ratio": 0.25},
        "reasoning_effort": "low",
        "seed": 7,
    }

    for stream in (False, True):
        response = sdk(fake_gateway).chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, stream=stream, extra_body=extra
        )
        if stream:
            assert isinstance(response, openai.Stream)
            list(response)

    plain, streamed = (record.json for record in fake.chat_requests)
    assert plain == {"model": "gpt-4o-mini", "messages": HELLO, "stream": False, **extra}
    assert streamed == {
        "model": "gpt-4o-mini",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }


def test_target_model_name_replaces_the_public_one_upstream(
    fake: FakeView, fake_gateway: GatewayServer, sdk: MakeSDK
):
    client = sdk(fake_gateway)

    completion = client.chat.completions.create(model="team/default", messages=HELLO)
    list(client.chat.completions.create(model="team/default", messages=HELLO, stream=True))

    assert [r.json["model"] for r in fake.chat_requests] == ["gpt-4o-2024-08-06"] * 2
    assert completion.choices[0].message.content == FAKE_TEXT
    assert "team/default" in [m.id for m in client.models.list()]
    assert client.models.retrieve("team/default").id == "team/default"


def test_concurrent_streams_each_get_their_own_answer(
    fake: FakeView, fake_gateway: GatewayServer, wiretap: Wiretap
):
    """Twenty streams at once through the pooled upstream client: no answer crosses over."""

    def echo(request: RecordedRequest) -> Reply:
        prompt = request.json["messages"][0]["content"]
        return Reply(content=f"You asked: {prompt}", event_delay=0.005)

    fake.script(*[echo] * 20)

    async def ask(client: openai.AsyncOpenAI, number: int) -> str:
        prompt = f"question number {number}"
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def session() -> list[str]:
        async with async_sdk(wiretap, fake_gateway) as client:
            return list(await asyncio.gather(*(ask(client, n) for n in range(20))))

    answers = asyncio.run(session())

    assert answers == [f"You asked: question number {n}" for n in range(20)]


# ------------------------------------------------------------------- errors


def test_invalid_request_raises_bad_request_and_never_reaches_the_upstream(
    fake: FakeView, fake_gateway: GatewayServer, sdk: MakeSDK
):
    client = sdk(fake_gateway)

    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="gpt-4o-mini", messages=[])
    with pytest.raises(openai.BadRequestError) as hot:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, temperature=5)

    assert empty.value.status_code == 400
    assert empty.value.param == "messages"
    assert empty.value.code == "invalid_request"
    assert empty.value.type == "invalid_request_error"
    assert empty.value.response.headers["x-should-retry"] == "false"
    assert hot.value.param == "temperature"
    assert fake.chat_requests == []


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, openai.BadRequestError),
        (404, openai.NotFoundError),
        (413, openai.APIStatusError),
        (422, openai.UnprocessableEntityError),
    ],
)
def test_upstream_client_error_is_passed_through_with_message_param_and_code(
    fake: FakeView,
    fake_gateway: GatewayServer,
    sdk: MakeSDK,
    status: int,
    exception: type[openai.APIStatusError],
):
    fake.script(
        Reply.error(
            status,
            "Invalid value for 'top_logprobs': must be at most 20.",
            param="top_logprobs",
            code="invalid_value",
        )
    )

    with pytest.raises(exception) as raised:
        sdk(fake_gateway).chat.completions.create(model="gpt-4o-mini", messages=HELLO)

    error = raised.value
    assert error.status_code == status
    assert body_of(error)["message"] == "Invalid value for 'top_logprobs': must be at most 20."
    assert error.param == "top_logprobs"
    assert error.code == "invalid_value"
    assert error.type == "invalid_request_error"
    assert error.response.headers["x-should-retry"] == "false"
    assert len(fake.chat_requests) == 1


def test_upstream_error_message_has_the_upstream_key_masked(
    fake: FakeView, fake_gateway: GatewayServer, sdk: MakeSDK
):
    fake.script(Reply.error(400, f"Bad request made with key {UPSTREAM_KEY}."))

    with pytest.raises(openai.BadRequestError) as raised:
        sdk(fake_gateway).chat.completions.create(model="gpt-4o-mini", messages=HELLO)

    assert UPSTREAM_KEY not in raised.value.response.text
    assert body_of(raised.value)["message"] == "Bad request made with key [REDACTED]."


def test_unknown_model_raises_not_found_with_model_not_found(
    fake: FakeView, fake_gateway: GatewayServer, sdk: MakeSDK
):
    client = sdk(fake_gateway)

    with pytest.raises(openai.NotFoundError) as plain:
        client.chat.completions.create(model="gpt-9-imaginary", messages=HELLO)
    with pytest.raises(openai.NotFoundError) as streamed:
        client.chat.completions.create(model="gpt-9-imaginary", messages=HELLO, stream=True)

    for raised in (plain, streamed):
        assert raised.value.code == "model_not_found"
        assert raised.value.param == "model"
        assert "gpt-9-imaginary" in raised.value.message
    assert fake.chat_requests == []


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_upstream_429_raises_rate_limit_error_with_retry_after(
    fake: FakeView, fake_gateway: GatewayServer, sdk: MakeSDK, stream: bool
):
    fake.script(Reply.error(429, retry_after=7))

    with pytest.raises(openai.RateLimitError) as raised:
        sdk(fake_gateway).chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, stream=stream
        )

    assert raised.value.status_code == 429
    assert raised.value.response.headers["retry-after"] == "7"
    assert raised.value.type == "rate_limit_error"
    assert raised.value.code == "rate_limit_exceeded"


def test_sdk_retries_an_upstream_429_after_retry_after(
    fake: FakeView, fake_gateway: GatewayServer, sdk: MakeSDK
):
    fake.script(Reply.error(429, retry_after=0.01))

    completion = sdk(fake_gateway, max_retries=1).chat.completions.create(
        model="gpt-4o-mini", messages=HELLO
    )

    assert completion.choices[0].message.content == FAKE_TEXT
    assert len(fake.chat_requests) == 2


@pytest.mark.parametrize(
    ("upstream_status", "status", "code"),
    [
        (500, 502, "upstream_error"),
        (502, 502, "upstream_error"),
        (503, 503, "upstream_overloaded"),
        (504, 504, "upstream_timeout"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_upstream_5xx_raises_internal_server_error(
    fake: FakeView,
    fake_gateway: GatewayServer,
    sdk: MakeSDK,
    upstream_status: int,
    status: int,
    code: str,
    stream: bool,
):
    fake.script(Reply.error(upstream_status))

    with pytest.raises(openai.InternalServerError) as raised:
        sdk(fake_gateway).chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, stream=stream
        )

    assert raised.value.status_code == status
    assert raised.value.code == code
    assert raised.value.type == "server_error"
    assert "'up'" in raised.value.message


def test_unreachable_upstream_raises_internal_server_error_502(
    fake_gateway: GatewayServer, sdk: MakeSDK
):
    with pytest.raises(openai.InternalServerError) as raised:
        sdk(fake_gateway).chat.completions.create(model="refused", messages=HELLO)

    assert raised.value.status_code == 502
    assert raised.value.code == "upstream_unreachable"
    assert "127.0.0.1" not in raised.value.message  # no URL of ours goes to the client


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_upstream_read_timeout_raises_internal_server_error_504(
    fake: FakeView, fake_gateway: GatewayServer, sdk: MakeSDK, stream: bool
):
    fake.script(Reply.hanging())

    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as raised:
        sdk(fake_gateway).chat.completions.create(model="slow", messages=HELLO, stream=stream)
    elapsed = time.monotonic() - started

    assert raised.value.status_code == 504
    assert raised.value.code == "upstream_timeout"
    assert 0.25 < elapsed < 3
    assert fake.chat_requests[0].wait_disconnected(1), "the hung call was not dropped"


def test_upstream_401_is_not_the_clients_authentication_error(
    fake: FakeView, fake_gateway: GatewayServer, sdk: MakeSDK
):
    fake.script(Reply.error(401), Reply.error(403))
    client = sdk(fake_gateway)

    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as raised:
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        settle(fake_gateway.app)  # the 401 marked the upstream unhealthy: not this test's point
        assert not isinstance(
            raised.value, openai.AuthenticationError | openai.PermissionDeniedError
        )
        assert isinstance(raised.value, openai.InternalServerError)
        assert raised.value.status_code == 502
        assert raised.value.code == "upstream_auth_failed"
        # The upstream's own words about the gateway's key are not the client's business.
        assert "Incorrect API key" not in raised.value.message
        assert "Country, region" not in raised.value.message


def test_mid_stream_failure_raises_api_error_after_the_first_chunks(
    fake: FakeView, fake_gateway: GatewayServer, sdk: MakeSDK
):
    fake.script(Reply(content=["One", " two", " three", " four", " five"], cut_after=3))
    received: list[str] = []

    stream = sdk(fake_gateway).chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, stream=True
    )

    def read_all() -> None:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as raised:
        read_all()

    assert not isinstance(raised.value, openai.APIStatusError | openai.APIConnectionError)
    assert "".join(received) == "One two"  # role chunk, "One", " two": then the cut
    assert raised.value.type == "server_error"
    assert "'up'" in raised.value.message
