"""The fake Azure OpenAI (tests/fakes/azure_upstream.py): routes, api-key, api-version, filters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import spec
from tests.fakes.azure_upstream import DEPLOYED_MODEL, FakeAzure
from tests.fakes.upstream import Reply

BODY: dict[str, Any] = {"model": "prod", "messages": [{"role": "user", "content": "Say hi"}]}
VERSION = {"api-version": "2024-10-21"}


@pytest.fixture
def fake() -> Iterator[FakeAzure]:
    with FakeAzure(api_key="az-key") as server:
        yield server
        if server.validate_requests:
            server.check_requests()


def post(fake: FakeAzure, body: Any, params: Any = VERSION, key: str = "az-key") -> httpx.Response:
    url = fake.base_url + "/openai/deployments/prod/chat/completions"
    return httpx.post(url, json=body, params=params, headers={"api-key": key}, timeout=5)


def test_a_completion_reports_the_model_and_filter_results(fake: FakeAzure):
    reply = post(fake, BODY)

    assert reply.status_code == 200
    completion = reply.json()
    spec.validate("CreateChatCompletionResponse", completion)
    assert completion["model"] == DEPLOYED_MODEL
    assert completion["prompt_filter_results"][0]["prompt_index"] == 0
    assert "content_filter_results" in completion["choices"][0]
    assert reply.headers["apim-request-id"] == fake.chat_requests[0].request_id
    assert reply.headers["x-ms-deployment-name"] == "prod"


def test_a_wrong_key_is_401_in_azures_shape(fake: FakeAzure):
    reply = post(fake, BODY, key="wrong")

    assert reply.status_code == 401
    assert reply.json()["error"]["code"] == "401"


@pytest.mark.parametrize("params", [{}, {"api-version": "latest"}])
def test_a_missing_or_bad_api_version_is_resource_not_found(fake: FakeAzure, params):
    fake.validate_requests = False

    reply = post(fake, BODY, params=params)

    assert reply.status_code == 404
    assert reply.json() == {"error": {"code": "404", "message": "Resource not found"}}


def test_an_unknown_path_is_resource_not_found(fake: FakeAzure):
    reply = httpx.get(fake.base_url + "/v1/models", headers={"api-key": "az-key"}, timeout=5)

    assert reply.status_code == 404


def test_unrecognized_arguments_are_400(fake: FakeAzure):
    fake.validate_requests = False

    reply = post(fake, {**BODY, "store": True})

    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == "Unrecognized request argument supplied: store"


def test_an_invalid_body_is_400_like_openai(fake: FakeAzure):
    fake.validate_requests = False

    reply = post(fake, {"model": "prod"})

    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "invalid_request_error"


def test_a_blocked_prompt_renders_the_content_filter_error(fake: FakeAzure):
    fake.script(Reply.error(400, code="content_filter"))

    error = post(fake, BODY).json()["error"]

    assert error["code"] == "content_filter"
    assert error["param"] == "prompt"
    assert error["innererror"]["code"] == "ResponsibleAIPolicyViolation"


def test_a_stream_opens_with_prompt_annotations(fake: FakeAzure):
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    url = fake.base_url + "/openai/deployments/prod/chat/completions"

    with httpx.stream("POST", url, json=body, params=VERSION, headers={"api-key": "az-key"}) as r:
        events = spec.sse_data(r.read().decode())

    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"] == []
    assert "prompt_filter_results" in chunks[0]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] > 0
    assert chunks[-2]["choices"][0]["delta"] == {}
    assert all("obfuscation" not in c for c in chunks)


def test_models_are_listed_with_the_api_version(fake: FakeAzure):
    reply = httpx.get(
        fake.base_url + "/openai/models", params=VERSION, headers={"api-key": "az-key"}, timeout=5
    )

    assert [m["id"] for m in reply.json()["data"]] == list(fake.models)
