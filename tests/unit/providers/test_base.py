"""gateway/providers/base.py: the one policy for parameters a provider cannot honour."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from gateway.config import Target, UpstreamConfig
from gateway.errors import InvalidRequest, to_openai_error
from gateway.openai_types import ChatRequest
from gateway.providers.base import request_body
from gateway.providers.openai import OPENAI
from gateway.request_parser import parse_chat_request

STRICT = UpstreamConfig(provider="anthropic", base_url="http://127.0.0.1:1")
LENIENT = UpstreamConfig(provider="anthropic", base_url="http://127.0.0.1:1", drop_unsupported=True)


def chat(**fields: Any) -> ChatRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return parse_chat_request(json.dumps(body).encode())


def test_an_unsupported_parameter_is_a_400_naming_it_and_the_provider():
    with pytest.raises(InvalidRequest) as caught:
        request_body(chat(logprobs=True), STRICT, "anthropic", unsupported=("logprobs",))

    error = to_openai_error(caught.value)["error"]
    assert caught.value.status == 400
    assert error["param"] == "logprobs"
    assert error["code"] == "unsupported_parameter"
    assert "'logprobs' is not supported by provider anthropic" in error["message"]
    assert "drop_unsupported" in error["message"]  # says how to opt in to dropping


def test_an_unsupported_parameter_set_to_null_is_no_request_for_it():
    body = request_body(chat(logprobs=None), STRICT, "anthropic", unsupported=("logprobs",))

    assert body["logprobs"] is None


def test_drop_unsupported_drops_instead_of_refusing():
    body = request_body(
        chat(logprobs=True, n=3, temperature=0.2),
        LENIENT,
        "anthropic",
        unsupported=("logprobs",),
        unsupported_if={"n": "only n=1"},
    )

    assert "logprobs" not in body
    assert "n" not in body
    assert body["temperature"] == 0.2  # what the provider can honour stays


def test_a_value_the_caller_cannot_honour_is_refused_with_the_reason():
    with pytest.raises(InvalidRequest) as caught:
        request_body(chat(n=3), STRICT, "ollama", unsupported_if={"n": "only n=1"})

    assert caught.value.param == "n"
    assert "(only n=1)" in caught.value.message


def test_drop_params_go_before_anything_else_and_never_refuse():
    upstream = UpstreamConfig(
        provider="openai", base_url="http://127.0.0.1:1", drop_params=("logprobs", "seed")
    )

    body = request_body(chat(logprobs=True, seed=1), upstream, "openai", unsupported=("logprobs",))

    assert "logprobs" not in body
    assert "seed" not in body


def test_the_client_body_is_not_changed():
    request = chat(logprobs=True)

    request_body(request, LENIENT, "anthropic", unsupported=("logprobs",))

    assert request.body["logprobs"] is True


def test_openai_upstreams_drop_their_drop_params():
    upstream = UpstreamConfig(
        provider="openai",
        base_url="http://127.0.0.1:8000/v1",
        drop_params=("service_tier", "store"),
    )

    outgoing = OPENAI.build_request(
        chat(service_tier="flex", store=True, temperature=0.5),
        Target(upstream="u", model="x"),
        upstream,
    )

    assert outgoing.body is not None
    sent = orjson.loads(outgoing.body)
    assert "service_tier" not in sent
    assert "store" not in sent
    assert sent["temperature"] == 0.5
