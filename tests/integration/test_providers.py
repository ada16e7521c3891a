"""One suite, every provider: the official `openai` SDK -> the gateway -> a fake of the provider.

Each case runs once per provider (`case` fixture, parametrised): the gateway serves the public
model `m` from a fake that speaks that provider's exact wire format and rejects what the real
service would reject (a rejected request also fails the test at teardown). The SDK is the
client, and every body and chunk it reads is checked against OpenAI's schemas by the wiretap.
The cases are the translation bugs users report most: streamed tool calls ending with "stop",
tool arguments lost, usage missing from streams, system prompts dropped, errors with the wrong
status.

What each provider calls a setting on the wire (JSON mode, stop sequences, max tokens, images)
is checked through the small `Case` lookups, so the suite says what must arrive upstream
without repeating each translator's logic.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from gateway.config import UpstreamConfig
from gateway.providers import TRANSLATORS
from gateway.providers.base import UpstreamRequest
from tests.conftest import GatewayServer
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.azure_upstream import FakeAzure
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.ollama_upstream import FakeOllama
from tests.fakes.openai_upstream import FakeOpenAI, Reply, ToolCall
from tests.fakes.tgi_upstream import FakeTGI
from tests.fakes.upstream import FakeUpstream, RecordedRequest
from tests.integration.conftest import NO_BREAKER, UPSTREAM_KEY, FakeView, MakeSDK, serve

Json = Any
PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQ"
    "DwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
PNG_DATA = PNG.split(",", 1)[1]
HELLO: Json = [{"role": "user", "content": "Hello there!"}]
WEATHER_TOOL: Json = {
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
TIME_TOOL: Json = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
PARIS = '{"city": "Paris", "unit": "celsius"}'


def _get(data: Json, *path: str | int) -> Json:
    """data[path[0]][path[1]]..., or None where the path does not exist."""
    for key in path:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _dump(data: Json) -> str:
    return json.dumps(data)


@dataclass(frozen=True)
class Case:
    """One provider as the suite sees it: how to start its fake and where settings land."""

    provider: str
    make_fake: Callable[[], FakeUpstream]
    upstream_model: str
    overloaded_status: int
    keyed: bool  # whether the fake requires the test key
    json_mode: Callable[[Json], bool]  # the upstream request asks for JSON output
    stop: Callable[[Json], Json]  # the stop sequences the upstream received
    max_tokens: Callable[[Json], Json]  # the output limit the upstream received
    image: Callable[[Json], bool]  # the upstream received PNG_DATA as image data
    honours_logit_bias: bool = False  # else `logit_bias` is a 400, or dropped on request


def _openai_format(
    provider: str, make: Callable[[], FakeUpstream], model: str, keyed: bool
) -> Case:
    return Case(
        provider=provider,
        make_fake=make,
        upstream_model=model,
        overloaded_status=503,
        keyed=keyed,
        json_mode=lambda body: _get(body, "response_format", "type") == "json_object",
        stop=lambda body: body.get("stop"),
        max_tokens=lambda body: body.get("max_completion_tokens") or body.get("max_tokens"),
        image=lambda body: PNG in _dump(body["messages"]),
        honours_logit_bias=provider != "tgi",
    )


CASES = {
    "openai": _openai_format(
        "openai", lambda: FakeOpenAI(api_key=UPSTREAM_KEY), "gpt-4o-mini", keyed=True
    ),
    "azure": _openai_format(
        "azure", lambda: FakeAzure(api_key=UPSTREAM_KEY), "prod-gpt-4o-mini", keyed=True
    ),
    "tgi": Case(
        **{
            **_openai_format("tgi", lambda: FakeTGI(), "tgi", keyed=False).__dict__,
            # TGI's JSON mode is a grammar: {"type": "json", "value": <schema>}
            "json_mode": lambda body: _get(body, "response_format", "type") == "json",
        }
    ),
    "anthropic": Case(
        provider="anthropic",
        make_fake=lambda: FakeAnthropic(api_key=UPSTREAM_KEY),
        upstream_model="claude-sonnet-4-5",
        overloaded_status=529,
        keyed=True,
        json_mode=lambda body: (
            "json"
            in _dump(
                [body.get("tool_choice"), body.get("output_format"), body.get("output_config")]
            )
        ),
        stop=lambda body: body.get("stop_sequences"),
        max_tokens=lambda body: body.get("max_tokens"),
        image=lambda body: PNG_DATA in _dump(body["messages"]) and '"image"' in _dump(body),
    ),
    "gemini": Case(
        provider="gemini",
        make_fake=lambda: FakeGemini(api_key=UPSTREAM_KEY),
        upstream_model="gemini-2.0-flash",
        overloaded_status=503,
        keyed=True,
        json_mode=lambda body: (
            _get(body, "generationConfig", "responseMimeType") == "application/json"
        ),
        stop=lambda body: _get(body, "generationConfig", "stopSequences"),
        max_tokens=lambda body: _get(body, "generationConfig", "maxOutputTokens"),
        image=lambda body: PNG_DATA in _dump(body["contents"]) and "inlineData" in _dump(body),
    ),
    "ollama": Case(
        provider="ollama",
        make_fake=lambda: FakeOllama(),
        upstream_model="llama3.2",
        overloaded_status=503,
        keyed=False,
        json_mode=lambda body: body.get("format") == "json",
        stop=lambda body: _get(body, "options", "stop"),
        max_tokens=lambda body: _get(body, "options", "num_predict"),
        image=lambda body: _get(body, "messages", 0, "images") == [PNG_DATA],
    ),
}


@dataclass
class Served:
    case: Case
    fake: FakeUpstream
    gateway: GatewayServer

    @property
    def upstream(self) -> UpstreamConfig:
        return self.gateway.config.upstreams["up"]


@pytest.fixture(scope="module", params=list(CASES))
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    """The provider's fake and a gateway serving `m` from it (one pair per provider)."""
    case = CASES[request.param]
    with case.make_fake() as fake:
        upstream: dict[str, Any] = {
            "provider": case.provider,
            "base_url": fake.base_url,
            "breaker": NO_BREAKER,  # the error cases fail on purpose, many times
        }
        if case.keyed:
            upstream["api_key"] = UPSTREAM_KEY
        config = {
            "upstreams": {"up": upstream, "lenient": {**upstream, "drop_unsupported": True}},
            "models": {
                "m": [{"upstream": "up", "model": case.upstream_model}],
                "m-lenient": [{"upstream": "lenient", "model": case.upstream_model}],
            },
        }
        with serve(config) as gateway:
            yield Served(case, fake, gateway)
        fake.check_requests()


@dataclass
class Provider:
    """This test's view: the case, the fake (scripting, requests), and the SDK on the gateway."""

    case: Case
    fake: FakeView
    client: openai.OpenAI

    def last_request(self) -> Json:
        """The body of the one upstream chat request this test made."""
        [record] = self.fake.chat_requests
        return record.json

    @property
    def records(self) -> list[RecordedRequest]:
        return self.fake.chat_requests


@pytest.fixture
def served_view(served: Served) -> Iterator[Served]:
    """`served`, with this test's requests checked to be over at its end."""
    view = FakeView(served.fake)
    yield served
    view.finish()


@pytest.fixture
def provider(served: Served, sdk: MakeSDK) -> Iterator[Provider]:
    view = FakeView(served.fake)
    yield Provider(served.case, view, sdk(served.gateway))
    view.finish()


def chat(p: Provider, **fields: Any) -> Any:
    fields.setdefault("messages", HELLO)
    return p.client.chat.completions.create(model="m", **fields)


def stream_chunks(p: Provider, **fields: Any) -> list[Any]:
    fields.setdefault("messages", HELLO)
    return list(p.client.chat.completions.create(model="m", stream=True, **fields))


def choice_chunks(chunks: list[Any]) -> list[Any]:
    return [c.choices[0] for c in chunks if c.choices]


# ------------------------------------------------------------------- text


def test_plain_text(provider: Provider) -> None:
    provider.fake.script(Reply(content="The sky is blue."))

    completion = chat(
        provider,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What colour is the sky?"},
        ],
    )

    assert completion.choices[0].message.content == "The sky is blue."
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    sent = _dump(provider.last_request())
    assert "You are terse." in sent  # the system prompt reached the provider
    assert "What colour is the sky?" in sent


def test_streamed_text(provider: Provider) -> None:
    provider.fake.script(Reply(content="One two three four."))

    chunks = stream_chunks(provider)

    choices = choice_chunks(chunks)
    assert choices[0].delta.role == "assistant"
    assert "".join(c.delta.content or "" for c in choices) == "One two three four."
    assert [c.finish_reason for c in choices if c.finish_reason] == ["stop"]
    assert choices[-1].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # not asked for


def test_usage_in_stream_when_asked(provider: Provider) -> None:
    provider.fake.script(
        Reply(content="Counted.", usage={"prompt_tokens": 11, "completion_tokens": 7})
    )

    chunks = stream_chunks(provider, stream_options={"include_usage": True})

    *content, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (11, 7)
    assert last.usage.total_tokens == 18
    assert all(c.usage is None for c in content)
    assert "".join(c.delta.content or "" for c in choice_chunks(content)) == "Counted."


# ------------------------------------------------------------------- tools


def test_one_tool_call(provider: Provider) -> None:
    provider.fake.script(Reply.tools(ToolCall("get_weather", PARIS)))

    completion = chat(
        provider, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL]
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == json.loads(PARIS)
    assert "get_weather" in _dump(provider.last_request())  # the tool was declared upstream


def test_several_tool_calls(provider: Provider) -> None:
    provider.fake.script(
        Reply.tools(ToolCall("get_weather", PARIS), ToolCall("get_time", '{"city": "Tokyo"}'))
    )

    completion = chat(provider, tools=[WEATHER_TOOL, TIME_TOOL])

    calls = completion.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c.function.arguments) for c in calls] == [
        json.loads(PARIS),
        {"city": "Tokyo"},
    ]
    assert len({c.id for c in calls}) == 2
    assert completion.choices[0].finish_reason == "tool_calls"


def test_streamed_tool_calls_reassembled_by_the_sdk(provider: Provider) -> None:
    provider.fake.script(
        Reply.tools(
            ToolCall("get_weather", PARIS),
            ToolCall("get_time", '{"city": "Tokyo"}'),
            content="Let me check.",
        )
    )

    with provider.client.chat.completions.stream(
        model="m", messages=HELLO, tools=[WEATHER_TOOL, TIME_TOOL]
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()

    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"  # never "stop" after calls
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c.function.arguments) for c in calls] == [
        json.loads(PARIS),
        {"city": "Tokyo"},
    ]
    assert all(c.id for c in calls)
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert [e.name for e in done] == ["get_weather", "get_time"]
    assert choice.message.content in ("Let me check.", None)


def test_tool_results_fed_back(provider: Provider) -> None:
    provider.fake.script(
        Reply.tools(ToolCall("get_weather", PARIS), ToolCall("get_time", '{"city": "Tokyo"}'))
    )
    first = chat(provider, tools=[WEATHER_TOOL, TIME_TOOL])
    calls = first.choices[0].message.tool_calls or []
    provider.fake.script(Reply(content="It is 22 degrees in Paris and 9pm in Tokyo."))

    second = chat(
        provider,
        tools=[WEATHER_TOOL, TIME_TOOL],
        messages=[
            *HELLO,
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": calls[0].id, "content": "22 degrees, sunny"},
            {"role": "tool", "tool_call_id": calls[1].id, "content": "21:00 local time"},
        ],
    )

    assert second.choices[0].message.content == "It is 22 degrees in Paris and 9pm in Tokyo."
    sent = _dump(provider.records[-1].json)
    assert "22 degrees, sunny" in sent
    assert "21:00 local time" in sent
    assert "get_weather" in sent
    assert "Paris" in sent


# ------------------------------------------------------------------- settings


def test_json_mode(provider: Provider) -> None:
    provider.fake.script(Reply(content='{"colour": "blue"}'))

    completion = chat(
        provider,
        response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Sky colour as JSON"}],
    )

    assert json.loads(completion.choices[0].message.content or "") == {"colour": "blue"}
    assert completion.choices[0].finish_reason == "stop"
    assert provider.case.json_mode(provider.last_request())


def test_image_input(provider: Provider) -> None:
    provider.fake.script(Reply(content="A single pixel."))

    completion = chat(
        provider,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": PNG}},
                ],
            }
        ],
    )

    assert completion.choices[0].message.content == "A single pixel."
    assert provider.case.image(provider.last_request())


def test_stop_sequences(provider: Provider) -> None:
    provider.fake.script(Reply(content="Counting: one two", finish_reason="stop"))

    completion = chat(provider, stop=["three", "END"])

    assert completion.choices[0].finish_reason == "stop"
    assert provider.case.stop(provider.last_request()) == ["three", "END"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_max_tokens_reached(provider: Provider, stream: bool) -> None:
    provider.fake.script(Reply(content="This answer is cut", finish_reason="length"))

    if stream:
        chunks = stream_chunks(provider, max_completion_tokens=5)
        finish = [c.finish_reason for c in choice_chunks(chunks) if c.finish_reason]
    else:
        finish = [chat(provider, max_completion_tokens=5).choices[0].finish_reason]

    assert finish == ["length"]
    assert provider.case.max_tokens(provider.last_request()) == 5


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("upstream_status", "client_status", "exception"),
    [
        (400, 400, openai.BadRequestError),
        (401, 502, openai.InternalServerError),
        (429, 429, openai.RateLimitError),
        (500, 502, openai.InternalServerError),
        ("overloaded", 503, openai.InternalServerError),
    ],
)
def test_upstream_errors(
    provider: Provider,
    upstream_status: int | str,
    client_status: int,
    exception: type[openai.APIStatusError],
) -> None:
    status = provider.case.overloaded_status if upstream_status == "overloaded" else upstream_status
    assert isinstance(status, int)
    provider.fake.script(Reply.error(status, "The upstream says no."))

    with pytest.raises(exception) as caught:
        chat(provider)

    assert caught.value.status_code == client_status
    body = caught.value.body
    assert isinstance(body, dict)
    assert isinstance(body.get("message"), str)
    if client_status == 400:
        assert "The upstream says no." in body["message"]  # the client's own error, kept
    if client_status == 429:
        assert caught.value.response.headers.get("retry-after") == "1"
    assert UPSTREAM_KEY not in caught.value.response.text


def test_stream_cut_midway(provider: Provider) -> None:
    provider.fake.script(Reply(content="one two three four five six seven", cut_after=5))

    received: list[str] = []

    def read_all() -> None:
        stream = provider.client.chat.completions.create(model="m", messages=HELLO, stream=True)
        for chunk in stream:
            received.extend(c.delta.content or "" for c in chunk.choices)

    with pytest.raises(openai.APIError):
        read_all()

    assert received, "the stream should have been cut after content began"
    assert "".join(received) != "one two three four five six seven"  # never passed off as whole


# ------------------------------------------------------------------- parameters and probes


def test_a_parameter_the_provider_cannot_honour_is_a_400_or_dropped_on_request(
    provider: Provider,
) -> None:
    bias = {"50256": -100}
    if provider.case.honours_logit_bias:
        chat(provider, logit_bias=bias)
        assert provider.last_request()["logit_bias"] == bias
        return

    with pytest.raises(openai.BadRequestError) as caught:
        chat(provider, logit_bias=bias)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "logit_bias"
    assert error["code"] == "unsupported_parameter"
    assert f"provider {provider.case.provider}" in error["message"]
    assert provider.records == []  # refused before any upstream call

    provider.fake.script(Reply(content="Dropped it."))
    lenient = provider.client.chat.completions.create(
        model="m-lenient", messages=HELLO, logit_bias=bias
    )
    assert lenient.choices[0].message.content == "Dropped it."
    assert "logit_bias" not in _dump(provider.last_request())


def _send(request: UpstreamRequest) -> httpx.Response:
    return httpx.request(request.method, request.url, headers=dict(request.headers), timeout=5)


def test_health_probe_and_model_listing_speak_the_providers_format(served_view: Served) -> None:
    served = served_view
    translator = TRANSLATORS[served.case.provider]

    probe = _send(translator.health_probe(served.upstream))
    listing = _send(translator.models_request(served.upstream))

    assert probe.status_code == 200, probe.text
    assert listing.status_code == 200, listing.text
    assert set(translator.parse_models(listing.content)) >= set(served.fake.models[:1])
    assert served.fake.models  # a listing of nothing would prove nothing
