"""The fake Gemini upstream (tests/fakes/gemini_upstream.py) rejects what Gemini rejects and
speaks its wire format: paths, key header, SSE framing, error bodies."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.gemini_upstream import (
    OVERLOADED_STATUS,
    SIGNATURE,
    FakeGemini,
    Reply,
    ToolCall,
)

KEY = "AIza-fake-gemini-key-0123456789"
CHAT = "/v1beta/models/gemini-2.0-flash:generateContent"
STREAM = "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
USER = {"role": "user", "parts": [{"text": "Say hi to me"}]}
CALL = {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]}
RESULT = {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"r": 1}}}]}


@contextlib.contextmanager
def _checked(fake: FakeGemini) -> Iterator[FakeGemini]:
    with fake:
        yield fake
        if fake.validate_requests:
            fake.check_requests()


@pytest.fixture
def fake_gemini() -> Iterator[FakeGemini]:
    """A running `FakeGemini` requiring KEY; fails the test if it got a request Gemini refuses."""
    with _checked(FakeGemini(api_key=KEY)) as fake:
        yield fake


def post(fake: FakeGemini, body: Any, path: str = CHAT, key: str | None = KEY) -> httpx.Response:
    headers = {"x-goog-api-key": key} if key else {}
    return httpx.post(fake.base_url + path, json=body, headers=headers)


def test_an_answer_is_a_generate_content_response(fake_gemini):
    fake_gemini.script(Reply(content="Hi there", usage={"cached_tokens": 2}))

    reply = post(fake_gemini, {"contents": [USER]})

    assert reply.status_code == 200
    data = reply.json()
    assert data["candidates"] == [
        {
            "content": {"parts": [{"text": "Hi there"}], "role": "model"},
            "finishReason": "STOP",
            "index": 0,
        }
    ]
    assert data["usageMetadata"] == {
        "promptTokenCount": 4,
        "cachedContentTokenCount": 2,
        "candidatesTokenCount": 2,
        "totalTokenCount": 6,
    }
    assert data["modelVersion"] == "gemini-2.0-flash"
    assert data["responseId"] == fake_gemini.chat_requests[0].request_id
    assert "x-request-id" not in reply.headers


def test_a_stream_is_crlf_framed_sse_whose_last_event_finishes(fake_gemini):
    fake_gemini.script(Reply.tools(ToolCall("f", '{"a": 1}'), content="One two"))

    reply = post(fake_gemini, {"contents": [USER]}, STREAM)

    assert reply.headers["content-type"].startswith("text/event-stream")
    events = reply.content.split(b"\r\n\r\n")
    assert events[-1] == b""
    datas = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    assert [d["candidates"][0]["content"]["parts"] for d in datas] == [
        [{"text": "One"}],
        [{"text": " two"}],
        [{"functionCall": {"name": "f", "args": {"a": 1}}}],
    ]
    assert [d["candidates"][0].get("finishReason") for d in datas] == [None, None, "STOP"]
    assert "candidatesTokenCount" in datas[-1]["usageMetadata"]


def test_gemini_3_signs_the_first_call_of_a_turn(fake_gemini):
    fake_gemini.script(Reply.tools(ToolCall("f"), ToolCall("g")))

    path = "/v1beta/models/gemini-3-pro-preview:generateContent"
    parts = post(fake_gemini, {"contents": [USER]}, path).json()["candidates"][0]["content"][
        "parts"
    ]

    assert parts[0]["thoughtSignature"] == SIGNATURE
    assert "thoughtSignature" not in parts[1]


def test_send_done_false_drops_the_finishing_event(fake_gemini):
    fake_gemini.script(Reply(content="a b c", send_done=False))

    body = post(fake_gemini, {"contents": [USER]}, STREAM).content

    assert b"finishReason" not in body
    assert body.count(b"data: ") == 2


@pytest.mark.parametrize(
    ("status", "name"),
    [(400, "INVALID_ARGUMENT"), (404, "NOT_FOUND"), (429, "RESOURCE_EXHAUSTED"), (500, "INTERNAL")],
)
def test_errors_are_googles_shape(fake_gemini, status, name):
    fake_gemini.script(Reply.error(status, "boom"))

    reply = post(fake_gemini, {"contents": [USER]})

    assert reply.status_code == status
    error = reply.json()["error"]
    assert (error["code"], error["message"], error["status"]) == (status, "boom", name)
    if status == 429:
        assert error["details"][0]["retryDelay"] == "1s"


def test_overloaded_is_503_unavailable(fake_gemini):
    fake_gemini.script(Reply.error(OVERLOADED_STATUS))

    error = post(fake_gemini, {"contents": [USER]}, STREAM).json()["error"]

    assert error["status"] == "UNAVAILABLE"


@pytest.mark.parametrize("key", [None, "wrong"])
def test_a_missing_or_wrong_key_is_api_key_invalid(fake_gemini, key):
    reply = post(fake_gemini, {"contents": [USER]}, key=key)

    assert reply.status_code == 400
    assert reply.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"


def test_unknown_paths_get_googles_html_404(fake_gemini):
    reply = httpx.get(
        fake_gemini.base_url + "/v1/chat/completions", headers={"x-goog-api-key": KEY}
    )

    assert reply.status_code == 404
    assert "Error 404 (Not Found)" in reply.text


def test_models_are_listed_with_their_prefix(fake_gemini):
    reply = httpx.get(fake_gemini.base_url + "/v1beta/models", headers={"x-goog-api-key": KEY})

    names = [m["name"] for m in reply.json()["models"]]
    assert "models/gemini-2.0-flash" in names


# ---------------------------------------------------------------- rejections, one per rule

SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}}
DECLARATION = {"name": "f", "parametersJsonSchema": SCHEMA}


def with_tool(**fields: Any) -> dict[str, Any]:
    return {"contents": [USER], "tools": [{"functionDeclarations": [{**DECLARATION, **fields}]}]}


REJECTED = [
    pytest.param({"contents": []}, CHAT, "contents is not specified", id="empty-contents"),
    pytest.param({}, CHAT, "contents is not specified", id="no-contents"),
    pytest.param(
        {"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]},
        CHAT,
        "valid role",
        id="role-assistant",
    ),
    pytest.param(
        {"contents": [{"role": "system", "parts": [{"text": "x"}]}]},
        CHAT,
        "valid role",
        id="role-system",
    ),
    pytest.param({"contents": [USER], "messages": []}, CHAT, 'Unknown name "messages"', id="top"),
    pytest.param(
        {"contents": [USER], "generationConfig": {"max_tokens": 5}},
        CHAT,
        'Unknown name "max_tokens"',
        id="generation-config-field",
    ),
    pytest.param(
        {"contents": [{"role": "user", "parts": [{"text": "x", "type": "text"}]}]},
        CHAT,
        'Unknown name "type"',
        id="part-field",
    ),
    pytest.param(
        {"contents": [{"role": "user", "parts": []}]}, CHAT, "must not be empty", id="no-parts"
    ),
    pytest.param(
        {"contents": [{"role": "user", "parts": [{"text": "a", "inlineData": {}}]}]},
        CHAT,
        "exactly one",
        id="two-data-fields",
    ),
    pytest.param(
        {
            "contents": [
                USER,
                CALL,
                {**RESULT, "parts": [{"functionResponse": {"name": "g", "response": {}}}]},
            ]
        },
        CHAT,
        "do not match",
        id="function-response-name",
    ),
    pytest.param(
        {"contents": [USER, RESULT]},
        CHAT,
        "immediately after a function call",
        id="orphan-response",
    ),
    pytest.param(
        {
            "contents": [
                USER,
                CALL,
                {"role": "user", "parts": [RESULT["parts"][0], RESULT["parts"][0]]},
            ]
        },
        CHAT,
        "number of function response parts",
        id="response-count",
    ),
    pytest.param(
        {"contents": [USER, {"role": "model", "parts": [{"text": "x"}]}, CALL]},
        CHAT,
        "function call turn comes immediately after",
        id="call-after-model",
    ),
    pytest.param(
        {"contents": [USER, CALL, RESULT]},
        "/v1beta/models/gemini-3-pro-preview:generateContent",
        "thought_signature",
        id="gemini-3-signature",
    ),
    pytest.param(
        {
            "contents": [
                USER,
                {"role": "model", "parts": [{"functionCall": {"name": "f", "args": []}}]},
            ]
        },
        CHAT,
        "function_call.args",
        id="args-not-object",
    ),
    pytest.param(
        {
            "contents": [
                USER,
                CALL,
                {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": "ok"}}]},
            ]
        },
        CHAT,
        "function_response.response",
        id="response-not-object",
    ),
    pytest.param(
        {
            "contents": [
                {"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "@@"}}]}
            ]
        },
        CHAT,
        "not base64",
        id="inline-data-base64",
    ),
    pytest.param(
        {
            "contents": [USER],
            "systemInstruction": {"parts": [{"inlineData": {"mimeType": "a/b", "data": ""}}]},
        },
        CHAT,
        "text only",
        id="system-not-text",
    ),
    pytest.param(
        {
            "contents": [USER],
            "tools": [
                {
                    "functionDeclarations": [
                        {
                            "name": "f",
                            "parameters": {**SCHEMA, "additionalProperties": False, "$schema": "x"},
                        }
                    ]
                }
            ],
        },
        CHAT,
        'Unknown name "additionalProperties"',
        id="parameters-keyword",
    ),
    pytest.param(
        {
            "contents": [USER],
            "tools": [
                {
                    "functionDeclarations": [
                        {"name": "f", "parameters": {"type": ["string", "null"]}}
                    ]
                }
            ],
        },
        CHAT,
        "cannot start list",
        id="parameters-type-list",
    ),
    pytest.param(with_tool(parameters=SCHEMA), CHAT, "both set", id="parameters-and-json-schema"),
    pytest.param(with_tool(name="1f"), CHAT, "not a valid function name", id="function-name"),
    pytest.param(
        with_tool(parametersJsonSchema={"type": "string"}),
        CHAT,
        "describe an object",
        id="json-schema-not-object",
    ),
    pytest.param(
        {
            **with_tool(),
            "toolConfig": {
                "functionCallingConfig": {"mode": "AUTO", "allowedFunctionNames": ["f"]}
            },
        },
        CHAT,
        "only allowed with mode ANY",
        id="allowed-names-with-auto",
    ),
    pytest.param(
        {
            **with_tool(),
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["g"]}},
        },
        CHAT,
        "undeclared",
        id="allowed-names-undeclared",
    ),
    pytest.param(
        {"contents": [USER], "generationConfig": {"responseJsonSchema": SCHEMA}},
        CHAT,
        "responseMimeType",
        id="schema-without-mime-type",
    ),
    pytest.param(
        {
            "contents": [USER],
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseSchema": SCHEMA,
                "responseJsonSchema": SCHEMA,
            },
        },
        CHAT,
        "mutually exclusive",
        id="two-response-schemas",
    ),
    pytest.param(
        {"contents": [USER], "generationConfig": {"temperature": 3}},
        CHAT,
        "temperature",
        id="temperature",
    ),
    pytest.param(
        {"contents": [USER], "generationConfig": {"stopSequences": ["a"] * 6}},
        CHAT,
        "up to 5",
        id="stops",
    ),
    pytest.param(
        {"contents": [USER]},
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
        "alt=sse",
        id="stream-without-sse",
    ),
    pytest.param(
        {"contents": [USER]},
        f"/v1beta/models/gemini-2.0-flash:generateContent?key={KEY}",
        "key was sent in the URL",
        id="key-in-url",
    ),
]


@pytest.mark.parametrize(("body", "path", "problem"), REJECTED)
def test_the_fake_rejects_what_gemini_rejects(fake_gemini, body, path, problem):
    fake_gemini.validate_requests = False

    reply = post(fake_gemini, body, path)

    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert problem in error["message"]
    [record] = fake_gemini.chat_requests
    assert any(problem in p for p in record.problems)
    with pytest.raises(AssertionError, match="invalid request"):
        fake_gemini.check_requests()


def test_snake_case_names_and_a_full_tool_turn_are_accepted(fake_gemini):
    body = {
        "contents": [USER, CALL, RESULT, {"role": "user", "parts": [{"text": "thanks"}]}],
        "system_instruction": {"parts": [{"text": "be brief"}]},
        "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": SCHEMA},
        **{k: v for k, v in with_tool().items() if k != "contents"},
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}},
    }

    reply = post(fake_gemini, body)

    assert reply.status_code == 200, reply.text
