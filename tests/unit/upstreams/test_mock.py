"""gateway/upstreams/mock.py driven directly through an httpx client: answers, tools, streams."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from gateway.config import UpstreamConfig
from gateway.upstreams.mock import MockTransport
from tests import spec

BASE_URL = "http://mock.test/v1"
PROMPT = "Tell me about connection pools"
# asyncio may run a timer up to one clock tick early
TICK = time.get_clock_info("monotonic").resolution

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 3},
                "detailed": {"type": "boolean"},
            },
            "required": ["city", "unit", "days"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}


def body(prompt: str = PROMPT, **fields: Any) -> dict[str, Any]:
    return {"model": "mock-1", "messages": [{"role": "user", "content": prompt}], **fields}


def client(ttft: float = 0.0, tokens_per_second: float = 0.0) -> httpx.AsyncClient:
    upstream = UpstreamConfig(provider="mock", ttft=ttft, tokens_per_second=tokens_per_second)
    return httpx.AsyncClient(transport=MockTransport(upstream), base_url=BASE_URL)


async def acomplete(payload: dict[str, Any], **pacing: float) -> dict[str, Any]:
    async with client(**pacing) as http:
        response = await http.post("/chat/completions", json=payload)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    completion: dict[str, Any] = response.json()
    spec.validate("CreateChatCompletionResponse", completion)
    return completion


def complete(payload: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(acomplete(payload))


def events_of(raw: bytes) -> list[str]:
    assert raw.endswith(b"\n\n")
    events = raw.decode().split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    return [e[len("data: ") :] for e in events]


async def astream(payload: dict[str, Any], **pacing: float) -> tuple[list[Any], list[float]]:
    """The stream's JSON chunks (then "[DONE]") and, for each, the loop time it arrived at."""
    loop = asyncio.get_running_loop()
    chunks: list[Any] = []
    arrivals: list[float] = []
    async with client(**pacing) as http:
        start = loop.time()
        request = http.build_request("POST", "/chat/completions", json={**payload, "stream": True})
        response = await http.send(request, stream=True)
        try:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            async for raw in response.aiter_raw():
                now = loop.time() - start
                for data in events_of(raw):
                    chunks.append("[DONE]" if data == "[DONE]" else json.loads(data))
                    arrivals.append(now)
        finally:
            await response.aclose()
    assert chunks[-1] == "[DONE]"
    assert "[DONE]" not in chunks[:-1]
    for chunk in chunks[:-1]:
        spec.validate("CreateChatCompletionStreamResponse", chunk)
    return chunks, arrivals


def stream(payload: dict[str, Any]) -> list[Any]:
    return asyncio.run(astream(payload))[0]


def content_of(chunks: list[Any], index: int = 0) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in chunks[:-1]
        if c["choices"] and c["choices"][0]["index"] == index
    )


# ---------------------------------------------------------------- text answers


def test_the_same_prompt_gets_the_same_answer():
    first = complete(body())
    second = complete(body())

    assert first["choices"] == second["choices"]
    assert first["id"] == second["id"]
    assert first["choices"][0]["message"]["content"].startswith(f'You said "{PROMPT}".')
    assert first["choices"][0]["finish_reason"] == "stop"
    assert first["model"] == "mock-1"


def test_different_prompts_get_different_answers():
    answers = {
        complete(body(f"question number {i}"))["choices"][0]["message"]["content"] for i in range(5)
    }

    assert len(answers) == 5


def test_the_answer_depends_on_the_whole_conversation():
    alone = complete(body("same last message"))
    later = body("same last message")
    later["messages"] = [{"role": "system", "content": "Be brief."}, *later["messages"]]

    assert (
        alone["choices"][0]["message"]["content"]
        != complete(later)["choices"][0]["message"]["content"]
    )


def test_usage_counts_words_and_adds_up():
    payload = body("one two three")
    payload["messages"].insert(0, {"role": "system", "content": "be nice"})

    completion = complete(payload)

    usage = completion["usage"]
    content = completion["choices"][0]["message"]["content"]
    assert usage["prompt_tokens"] == (4 + 2) + (4 + 3)
    assert usage["completion_tokens"] == len(content.split(" "))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("limit", [1, 3, 7])
def test_a_token_limit_finishes_with_length_after_exactly_that_many_tokens(field, limit):
    full = complete(body())["choices"][0]["message"]["content"]

    completion = complete(body(**{field: limit}))

    choice = completion["choices"][0]
    assert choice["finish_reason"] == "length"
    assert completion["usage"]["completion_tokens"] == limit
    assert len(choice["message"]["content"].split(" ")) == limit
    assert full.startswith(choice["message"]["content"])


def test_a_limit_above_the_answers_length_finishes_with_stop():
    completion = complete(body(max_tokens=1000))

    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["usage"]["completion_tokens"] < 1000


@pytest.mark.parametrize("stop", ["Mock answer", ["zzz-never", "Mock"], "."])
def test_a_stop_sequence_cuts_the_answer_before_it(stop):
    full = complete(body())["choices"][0]["message"]["content"]
    first = stop if isinstance(stop, str) else stop[1]

    completion = complete(body(stop=stop))

    choice = completion["choices"][0]
    content = choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    assert content == full[: full.index(first)]
    assert first not in content
    assert completion["usage"]["completion_tokens"] == len(content.split(" "))


def test_n_gives_that_many_different_choices():
    completion = complete(body(n=3))

    choices = completion["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert len({c["message"]["content"] for c in choices}) == 3
    assert completion["usage"]["completion_tokens"] == sum(
        len(c["message"]["content"].split(" ")) for c in choices
    )


def test_an_answer_to_a_tool_result_quotes_it():
    payload = body("What is the weather in Paris?", tools=[WEATHER])
    payload["messages"] += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21, "sky": "clear"}'},
    ]

    choice = complete(payload)["choices"][0]

    assert choice["message"]["content"] == 'The tool returned: {"temp_c": 21, "sky": "clear"}'
    assert "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop"


# ---------------------------------------------------------------- tools


def arguments_of(call: dict[str, Any]) -> dict[str, Any]:
    arguments: dict[str, Any] = json.loads(call["function"]["arguments"])
    return arguments


@pytest.mark.parametrize("prompt", ["Use get_weather for Paris please", "Get weather in Paris"])
def test_a_tool_named_in_the_prompt_is_called_with_the_required_arguments(prompt):
    completion = complete(body(prompt, tools=[TIME, WEATHER]))

    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    arguments = arguments_of(call)
    assert set(arguments) == {"city", "unit", "days"}
    assert arguments["city"] == "Paris"
    assert arguments["unit"] in ("celsius", "fahrenheit")
    assert isinstance(arguments["days"], int)
    assert arguments["days"] >= 3


def test_tools_not_named_in_the_prompt_are_not_called():
    choice = complete(body("Just chat with me", tools=[WEATHER]))["choices"][0]

    assert choice["finish_reason"] == "stop"
    assert "tool_calls" not in choice["message"]
    assert choice["message"]["content"]


def test_tool_choice_required_calls_a_tool_even_when_none_is_named():
    choice = complete(body("Just chat with me", tools=[WEATHER, TIME], tool_choice="required"))[
        "choices"
    ][0]

    assert choice["finish_reason"] == "tool_calls"
    assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["get_weather"]


def test_a_named_tool_choice_calls_that_tool():
    named = {"type": "function", "function": {"name": "get_time"}}

    choice = complete(body("get_weather in Paris", tools=[WEATHER, TIME], tool_choice=named))[
        "choices"
    ][0]

    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_time"
    assert set(arguments_of(call)) == {"zone"}


def test_tool_choice_none_calls_no_tool_even_when_one_is_named():
    choice = complete(body("call get_weather now", tools=[WEATHER], tool_choice="none"))["choices"][
        0
    ]

    assert choice["finish_reason"] == "stop"
    assert "tool_calls" not in choice["message"]


def test_every_named_tool_is_called_unless_parallel_tool_calls_is_false():
    prompt = "call get_weather and get_time"

    parallel = complete(body(prompt, tools=[WEATHER, TIME]))["choices"][0]["message"]["tool_calls"]
    single = complete(body(prompt, tools=[WEATHER, TIME], parallel_tool_calls=False))["choices"][0][
        "message"
    ]["tool_calls"]

    assert [c["function"]["name"] for c in parallel] == ["get_weather", "get_time"]
    assert len({c["id"] for c in parallel}) == 2
    assert [c["function"]["name"] for c in single] == ["get_weather"]


# ---------------------------------------------------------------- JSON mode


def test_json_object_mode_answers_with_a_json_object():
    content = complete(body(response_format={"type": "json_object"}))["choices"][0]["message"][
        "content"
    ]

    parsed = json.loads(content)
    assert isinstance(parsed, dict)
    assert parsed["answer"].startswith("You said")


def test_json_schema_mode_answers_with_the_schemas_required_keys():
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"type": "string"}},
            "nickname": {"type": ["null", "string"]},
            "note": {"type": "string"},
        },
        "required": ["name", "age", "tags", "nickname"],
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}

    content = complete(body("Describe Ada Lovelace", response_format=response_format))["choices"][
        0
    ]["message"]["content"]

    parsed = json.loads(content)
    assert set(parsed) == {"name", "age", "tags", "nickname"}
    assert isinstance(parsed["name"], str)
    assert isinstance(parsed["age"], int)
    assert parsed["age"] >= 0
    assert isinstance(parsed["tags"], list)
    assert all(isinstance(t, str) for t in parsed["tags"])
    assert isinstance(parsed["nickname"], str)


# ---------------------------------------------------------------- streams


def test_a_stream_reassembles_to_the_non_stream_answer():
    expected = complete(body())
    chunks = stream(body())

    first = chunks[0]["choices"][0]
    assert first["delta"] == {"role": "assistant", "content": ""}
    assert first["finish_reason"] is None
    assert content_of(chunks) == expected["choices"][0]["message"]["content"]
    content_chunks = chunks[1:-2]
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in content_chunks)
    assert len(content_chunks) == expected["usage"]["completion_tokens"]
    finish = chunks[-2]["choices"][0]
    assert finish["delta"] == {}
    assert finish["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
    assert all("usage" not in c for c in chunks[:-1])
    assert len({c["id"] for c in chunks[:-1]}) == 1


def test_a_stream_reports_usage_last_only_with_include_usage():
    expected = complete(body())

    chunks = stream(body(stream_options={"include_usage": True}))

    *others, usage_chunk, done = chunks
    assert done == "[DONE]"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == expected["usage"]
    assert all(c["usage"] is None for c in others)
    assert others[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_stream_honours_max_tokens():
    chunks = stream(body(max_tokens=4))

    assert len(content_of(chunks).split(" ")) == 4
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_a_stream_of_n_choices_streams_each():
    expected = complete(body(n=2))

    chunks = stream(body(n=2))

    for index in (0, 1):
        assert content_of(chunks, index) == expected["choices"][index]["message"]["content"]
    finishes = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["finish_reason"]]
    assert sorted(f["index"] for f in finishes) == [0, 1]


def test_a_streamed_tool_call_is_announced_once_then_its_arguments_follow():
    payload = body("get_weather for Paris", tools=[WEATHER])
    expected = complete(payload)["choices"][0]["message"]["tool_calls"][0]

    chunks = stream(payload)

    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    deltas = [c["choices"][0]["delta"]["tool_calls"] for c in chunks[1:-2]]
    assert all(len(d) == 1 and d[0]["index"] == 0 for d in deltas)
    head, *fragments = (d[0] for d in deltas)
    assert head["id"] == expected["id"]
    assert head["type"] == "function"
    assert head["function"] == {"name": "get_weather", "arguments": ""}
    assert fragments
    assert all(
        set(f) == {"index", "function"} and set(f["function"]) == {"arguments"} for f in fragments
    )
    arguments = "".join(f["function"]["arguments"] for f in fragments)
    assert arguments == expected["function"]["arguments"]
    assert set(json.loads(arguments)) == {"city", "unit", "days"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_two_streamed_tool_calls_keep_their_indexes():
    chunks = stream(body("get_weather and get_time", tools=[WEATHER, TIME]))

    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[1:-2]]
    heads = [c for c in calls if "id" in c]
    assert [(h["index"], h["function"]["name"]) for h in heads] == [
        (0, "get_weather"),
        (1, "get_time"),
    ]
    for index in (0, 1):
        arguments = "".join(c["function"]["arguments"] for c in calls if c["index"] == index)
        assert isinstance(json.loads(arguments), dict)


# ---------------------------------------------------------------- pacing


def test_a_stream_waits_at_least_ttft_for_its_first_chunk_then_paces_tokens():
    ttft, tokens_per_second = 0.05, 100.0

    chunks, arrivals = asyncio.run(
        astream(body(max_tokens=6), ttft=ttft, tokens_per_second=tokens_per_second)
    )

    assert arrivals[0] >= ttft - TICK
    content_arrivals = arrivals[1:7]
    assert len(content_arrivals) == 6
    assert content_arrivals[-1] - content_arrivals[0] >= 5 / tokens_per_second - TICK
    assert content_of(chunks) == complete(body(max_tokens=6))["choices"][0]["message"]["content"]


def test_a_non_stream_answer_takes_at_least_ttft_plus_the_token_time():
    async def timed() -> tuple[float, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        completion = await acomplete(body(max_tokens=5), ttft=0.05, tokens_per_second=100.0)
        return loop.time() - start, completion

    elapsed, completion = asyncio.run(timed())

    assert completion["usage"]["completion_tokens"] == 5
    assert elapsed >= 0.05 + 4 / 100.0 - TICK


def test_without_pacing_the_mock_answers_at_once():
    chunks, arrivals = asyncio.run(astream(body()))

    assert chunks[-1] == "[DONE]"
    assert arrivals[-1] < 1.0  # generous: no sleep of any length is configured


# ---------------------------------------------------------------- other routes


def test_the_mock_lists_its_model():
    async def models() -> httpx.Response:
        async with client() as http:
            return await http.get("/models")

    response = asyncio.run(models())

    assert response.status_code == 200
    spec.validate("ListModelsResponse", response.json())
    assert [m["id"] for m in response.json()["data"]] == ["mock-1"]


@pytest.mark.parametrize(
    ("method", "path", "content", "status", "code"),
    [
        ("GET", "/chat/completions", b"", 404, "not_found"),
        ("POST", "/embeddings", b"{}", 404, "not_found"),
        ("POST", "/chat/completions", b"{not json", 400, "invalid_json"),
        ("POST", "/chat/completions", b'{"model": "mock-1"}', 400, "missing_messages"),
    ],
)
def test_the_mock_answers_what_it_cannot_serve_with_an_openai_error(
    method, path, content, status, code
):
    async def send() -> httpx.Response:
        async with client() as http:
            return await http.request(method, path, content=content)

    response = asyncio.run(send())

    assert response.status_code == status
    spec.validate("ErrorResponse", response.json())
    assert response.json()["error"]["code"] == code
