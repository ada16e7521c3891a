"""tests/spec.py and the schemas it carries: good bodies pass, each kind of bad body fails."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests import spec
from tests.data import extract_schemas
from tests.fakes.openai_upstream import Reply, ToolCall, build_chunks, build_completion

REQUEST = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there"}]}

# The example from OpenAI's API reference (the chat completion object).
COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "The image shows a wooden boardwalk path.",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_fc9f1d7035",
}

CHUNK: dict[str, Any] = {
    "id": "chatcmpl-123",
    "object": "chat.completion.chunk",
    "created": 1694268190,
    "model": "gpt-4o-mini",
    "system_fingerprint": "fp_44709d6fcb",
    "choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": None, "finish_reason": None}],
}


def broken(document: dict[str, Any], change: Callable[[Any], object]) -> dict[str, Any]:
    """A deep copy of `document` with `change(copy)` applied."""
    clone = copy.deepcopy(document)
    change(clone)
    return clone


def sse(*events: dict[str, Any] | str) -> str:
    return "".join(f"data: {json.dumps(e) if isinstance(e, dict) else e}\n\n" for e in events)


# -- single bodies


def test_reference_completion_is_valid():
    spec.validate("CreateChatCompletionResponse", COMPLETION)


@pytest.mark.parametrize(
    ("change", "path", "complaint"),
    [
        (lambda c: c["choices"][0].pop("logprobs"), "$.choices[0]", "'logprobs' is a required"),
        (
            lambda c: c["choices"][0]["message"].pop("refusal"),
            "$.choices[0].message",
            "'refusal' is a required",
        ),
        (
            lambda c: c["choices"][0]["message"].pop("content"),
            "$.choices[0].message",
            "'content' is a required",
        ),
        (lambda c: c.pop("choices"), "$", "'choices' is a required"),
        (lambda c: c.update(object="chat.completion.chunk"), "$.object", "is not one of"),
        (lambda c: c.update(created="yesterday"), "$.created", "is not of type 'integer'"),
        (
            lambda c: c["choices"][0].update(finish_reason="done"),
            "$.choices[0].finish_reason",
            "is not one of",
        ),
        (lambda c: c["usage"].pop("total_tokens"), "$.usage", "'total_tokens' is a required"),
        (
            lambda c: c["choices"][0]["message"].update(
                tool_calls=[{"id": "call_1", "type": "function", "function": {"name": "f"}}]
            ),
            "$.choices[0].message.tool_calls[0].function",
            "'arguments' is a required",
        ),
    ],
)
def test_broken_completion_fails_naming_the_path(change, path, complaint):
    with pytest.raises(AssertionError) as failure:
        spec.validate("CreateChatCompletionResponse", broken(COMPLETION, change))
    message = str(failure.value)
    assert message.startswith("not a valid CreateChatCompletionResponse")
    assert re.search(rf"^\s+{re.escape(path)}: .*{re.escape(complaint)}", message, re.M), message


def test_many_errors_are_capped():
    with pytest.raises(AssertionError, match=r"and \d+ more") as failure:
        spec.validate("CreateChatCompletionResponse", {"choices": [{}] * 8})
    assert str(failure.value).count("is a required property") == spec.MAX_ERRORS


def test_unknown_schema_name_is_a_key_error():
    with pytest.raises(KeyError, match="CreateChatCompletionRespons"):
        spec.validate("CreateChatCompletionRespons", COMPLETION)


@pytest.mark.parametrize(
    "chunk",
    [
        CHUNK,
        # nullable in the spec (OpenAPI 3.0 `nullable: true`, converted by the extractor)
        {**CHUNK, "usage": None},
        {**CHUNK, "choices": [], "usage": COMPLETION["usage"]},
        broken(CHUNK, lambda c: c["choices"][0].update(finish_reason="stop", delta={})),
    ],
)
def test_valid_chunks(chunk):
    spec.validate("CreateChatCompletionStreamResponse", chunk)


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c["choices"][0].pop("delta"),
        lambda c: c["choices"][0].pop("finish_reason"),
        lambda c: c["choices"][0].update(finish_reason="eos"),
        lambda c: c.update(object="chat.completion"),
        lambda c: c.update(usage={"prompt_tokens": 1}),
        lambda c: c["choices"][0]["delta"].update(tool_calls=[{"id": "call_1"}]),  # no index
    ],
)
def test_broken_chunks_fail(change):
    with pytest.raises(AssertionError, match="not a valid CreateChatCompletionStreamResponse"):
        spec.validate("CreateChatCompletionStreamResponse", broken(CHUNK, change))


ERROR = {"error": {"message": "nope", "type": "invalid_request_error", "param": None, "code": None}}


@pytest.mark.parametrize("field", ["message", "type", "param", "code"])
def test_error_envelope_needs_all_four_fields(field):
    spec.validate("ErrorResponse", ERROR)
    inner = {key: value for key, value in ERROR["error"].items() if key != field}
    with pytest.raises(AssertionError, match=f"'{field}' is a required property"):
        spec.validate("ErrorResponse", {"error": inner})


def test_error_message_is_a_string():
    with pytest.raises(AssertionError, match="is not of type 'string'"):
        spec.validate("ErrorResponse", {"error": {**ERROR["error"], "message": None}})


def test_model_list():
    model = {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"}
    spec.validate("ListModelsResponse", {"object": "list", "data": [model]})
    with pytest.raises(AssertionError, match="'owned_by' is a required property"):
        spec.validate("Model", broken(model, lambda m: m.pop("owned_by")))


def test_requests():
    spec.validate("CreateChatCompletionRequest", REQUEST)
    spec.validate(
        "CreateChatCompletionRequest",
        {
            **REQUEST,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": None,  # nullable in the spec
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "tool_choice": "auto",
        },
    )
    with pytest.raises(AssertionError, match="'messages' is a required property"):
        spec.validate("CreateChatCompletionRequest", {"model": "gpt-4o"})
    with pytest.raises(AssertionError, match=r"closest branch:\n.*'robot' is not one of"):
        spec.validate(
            "CreateChatCompletionRequest",
            {**REQUEST, "messages": [{"role": "robot", "content": "hi"}]},
        )


# -- the fake upstream's bodies are what OpenAI sends


@pytest.mark.parametrize(
    "reply",
    [
        Reply(),
        Reply(content=""),
        Reply.tools(ToolCall("get_weather", '{"city": "Paris"}'), ToolCall("noop")),
        Reply.tools(ToolCall("f", ["{", '"a"', ": 1}"]), content="Let me check."),
        Reply(finish_reason="length", model="gpt-4o-mini-2024-07-18"),
    ],
    ids=["text", "empty", "tools", "text-and-tools", "length"],
)
@pytest.mark.parametrize(
    "options",
    [{}, {"n": 2}, {"stream_options": {"include_usage": True, "include_obfuscation": False}}],
    ids=["plain", "n2", "usage"],
)
def test_fake_bodies_are_valid(reply, options):
    request = {**REQUEST, **options}
    spec.validate("CreateChatCompletionResponse", build_completion(request, reply))
    chunks = build_chunks({**request, "stream": True}, reply)
    events = spec.validate_stream(sse(*chunks, "[DONE]"))
    choices = spec.assemble(events)
    assert len(choices) == options.get("n", 1)
    completion = build_completion(request, reply)
    for choice in choices:
        message = completion["choices"][choice["index"]]["message"]
        assert choice["content"] == message["content"]
        assert [c["function"] for c in choice["tool_calls"]] == [
            c["function"] for c in message.get("tool_calls", [])
        ]


def test_fake_usage_counts_words_and_deltas():
    usage = build_completion(REQUEST, Reply(content="one two three"))["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (2, 3, 5)


# -- streams


def test_stream_parsing_follows_sse_rules():
    body = ': keep-alive\n\ndata: {"a":\ndata: 1}\n\ndata:[DONE]\r\n\r\ndata: {"partial"'
    assert spec.sse_data(body) == ['{"a":\n1}', "[DONE]"]
    assert spec.sse_data(body.encode()) == spec.sse_data(body.splitlines())


def test_stream_lines_end_only_at_cr_or_lf():
    event = {**CHUNK, "choices": [{**CHUNK["choices"][0], "delta": {"content": "a\u2028b\x85c"}}]}
    body = "data: " + json.dumps(event, ensure_ascii=False) + "\r\n\r\ndata: [DONE]\r\n\r\n"
    [chunk] = spec.validate_stream(body)
    assert spec.assemble([chunk])[0]["content"] == "a\u2028b\x85c"


def test_stream_ending_in_error_event():
    error = {
        "error": {"message": "upstream broke", "type": "server_error", "param": None, "code": None}
    }
    events = spec.validate_stream(sse(CHUNK, error), expect_done=False)
    assert events[-1] == error
    with pytest.raises(AssertionError, match=r"does not end with data: \[DONE\]"):
        spec.validate_stream(sse(CHUNK, error))


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (sse(CHUNK), r"does not end with data: \[DONE\]"),
        (sse(CHUNK, "[DONE]", CHUNK, "[DONE]"), r"\[DONE\] is not the last event"),
        (sse("{oops", "[DONE]"), "event 0 is not JSON"),
        (sse({**CHUNK, "id": "other"}, CHUNK, "[DONE]"), "chunks disagree on 'id'"),
        (sse({**CHUNK, "model": "gpt-4o"}, CHUNK, "[DONE]"), "chunks disagree on 'model'"),
        (
            sse(CHUNK, {**CHUNK, "choices": [], "usage": COMPLETION["usage"]}, "[DONE]"),
            "every chunk but the last has usage: null",
        ),
        (
            sse({**CHUNK, "usage": None}, {**CHUNK, "usage": COMPLETION["usage"]}, "[DONE]"),
            r"the usage chunk has choices: \[\]",
        ),
        (sse({**CHUNK, "choices": [{"index": 0}]}, "[DONE]"), "'delta' is a required property"),
    ],
)
def test_broken_streams_fail(body, complaint):
    with pytest.raises(AssertionError, match=complaint):
        spec.validate_stream(body)


def test_break_off_expected_but_done_sent():
    with pytest.raises(AssertionError, match="expected to break off"):
        spec.validate_stream(sse(CHUNK, "[DONE]"), expect_done=False)


# -- the extracted file


def test_every_ref_resolves_inside_the_file():
    document = json.loads(spec.SCHEMAS_PATH.read_text())
    text = json.dumps(document)
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text))
    assert refs <= set(spec.schema_names())
    assert set(extract_schemas.ROOTS) <= set(spec.schema_names())
    assert '"nullable"' not in text
    assert not re.search(r'"x-[a-zA-Z]+":', text)


def test_extracted_file_matches_the_spec():
    if not extract_schemas.DEFAULT_SPEC.exists():
        pytest.skip(f"OpenAI's spec is not at {extract_schemas.DEFAULT_SPEC}")
    with extract_schemas.DEFAULT_SPEC.open(encoding="utf-8") as file:
        source = yaml.load(file, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    expected = extract_schemas.extract(source)
    assert json.loads(spec.SCHEMAS_PATH.read_text()) == expected, (
        "tests/data/openai_schemas.json is stale: run tests/data/extract_schemas.py"
    )


def test_nullable_becomes_any_of_null():
    schema = {"type": "object", "nullable": True, "x-oaiMeta": {}, "properties": {"x-a": {}}}
    assert extract_schemas.clean(schema) == {
        "anyOf": [{"type": "object", "properties": {"x-a": {}}}, {"type": "null"}]
    }
