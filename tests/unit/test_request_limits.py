"""Request limits and routing-field checks without a server: the JSON depth and message count
limits of `parse_chat_request`, the body fields and client headers that may never steer an
upstream, and how the HTTP protocol (gateway/http.py) finds its limits and sizes a head."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette

from gateway.api.forwarding import forward_headers
from gateway.config import ServerConfig, parse_config
from gateway.errors import InvalidRequest
from gateway.http import _head_size, _server_settings
from gateway.request_parser import _SPEC_FIELDS, parse_chat_request

SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "openai_schemas.json"


def body(**fields: Any) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields})


def nested(levels: int) -> bytes:
    """A valid request whose JSON nests exactly `levels` deep (text: orjson writes 254 at most)."""
    chain = '{"a":' * (levels - 3) + '"x"' + "}" * (levels - 3)  # dicts at levels 4, 5, ...
    tools = '[{"type": "custom", "custom": ' + chain + "}]"  # the list 2, the tool 3
    return body()[:-1] + b',"tools":' + tools.encode() + b"}"


# ------------------------------------------------------------------- depth and messages


def test_depth_at_the_limit_is_accepted_and_one_more_refused():
    parse_chat_request(nested(10), max_depth=10)

    with pytest.raises(InvalidRequest) as refused:
        parse_chat_request(nested(11), max_depth=10)

    assert refused.value.message == "the request body nests JSON deeper than 10 levels"
    assert refused.value.status == 400


def test_the_default_depth_is_64():
    parse_chat_request(nested(64))
    with pytest.raises(InvalidRequest, match="deeper than 64 levels"):
        parse_chat_request(nested(65))


def test_a_depth_limit_beyond_the_stack_is_a_400_not_a_crash():
    with pytest.raises(InvalidRequest, match="deeper than the gateway reads"):
        parse_chat_request(nested(1010), max_depth=1_000_000)


def test_messages_at_the_limit_are_accepted_and_one_more_refused():
    messages = [{"role": "user", "content": str(i)} for i in range(4)]
    parse_chat_request(body(messages=messages), max_messages=4)

    with pytest.raises(InvalidRequest) as refused:
        parse_chat_request(body(messages=[*messages, messages[0]]), max_messages=4)

    assert refused.value.param == "messages"
    assert refused.value.message == "'messages' has 5 messages; the gateway takes at most 4"


# ------------------------------------------------------------------- routing fields


def test_every_spec_field_is_known():
    schemas = json.loads(SCHEMAS.read_text())["components"]["schemas"]

    def properties(schema: dict[str, Any]) -> set[str]:
        found = set(schema.get("properties", {}))
        for part in schema.get("allOf", []):
            ref = part.get("$ref")
            found |= properties(schemas[ref.rsplit("/", 1)[-1]] if ref else part)
        return found

    assert properties(schemas["CreateChatCompletionRequest"]) == _SPEC_FIELDS


@pytest.mark.parametrize(
    "name",
    [
        "api_base", "base_url", "baseURL", "apiBase", "api_key", "apiKey", "APIKey", "apikey",
        "extra_headers", "headers", "default_headers", "api_version", "user_config",
        "aws_region_name", "aws_access_key_id", "vertex_project", "vertex_location",
        "vertex_credentials", "azure_ad_token", "litellm_params", "organization", "proxy",
        "endpoint", "upstream_url", "host", "auth", "secret", "password", "cookie",
    ],
)  # fmt: skip
def test_routing_and_credential_fields_are_refused(name: str):
    with pytest.raises(InvalidRequest) as refused:
        parse_chat_request(body(**{name: "http://127.0.0.1:9/v1"}))

    assert refused.value.param == name
    assert refused.value.code == "forbidden_parameter"
    assert refused.value.status == 400


@pytest.mark.parametrize(
    "fields",
    [
        # vLLM, TGI, Ollama-compatible and other servers' own sampling parameters
        {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "stop_token_ids": [2]},
        {"guided_json": {"type": "object"}, "chat_template_kwargs": {"x": 1}, "keep_alive": 5},
        {"max_reasoning_tokens": 10, "thinking": {"type": "enabled"}, "priority": 1},
        {"prompt_cache_key": "k1", "safety_identifier": "u1", "service_tier": "auto"},
        # Nested, these names are data (a tool's schema, metadata): never read for routing.
        {"metadata": {"base_url": "http://x", "api_key": "k"}},
        {
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {"properties": {"api_key": {}, "base_url": {}}},
                    },
                }
            ]
        },
    ],
)
def test_other_fields_pass(fields: dict[str, Any]):
    request = parse_chat_request(body(**fields))

    assert {name: request.body[name] for name in fields} == fields


def scope(*headers: tuple[str, str]) -> dict[str, Any]:
    return {"headers": [(k.encode(), v.encode()) for k, v in headers]}


@pytest.mark.parametrize(
    "name",
    [
        "host", "x-forwarded-host", "forwarded", "x-original-host", "x-host", "x-original-url",
        "x-upstream-url", "x-api-base", "x-base-url", "x-openai-base-url", "x-endpoint",
        "x-target-uri", "authorization", "api-key", "x-api-key", "x-goog-api-key",
        "proxy-authorization", "openai-organization", "openai-project", "cookie",
        "x-amz-security-token", "x-credential", "X-Api-Base",
    ],
)  # fmt: skip
def test_routing_and_credential_headers_are_not_forwarded(name: str):
    forwarded = forward_headers(scope((name, "http://127.0.0.1:9"), ("x-trace", "t1")))

    assert forwarded == {"x-trace": "t1"}


# ------------------------------------------------------------------- the HTTP protocol's view


def test_the_protocol_finds_the_gateway_settings_under_wrappers():
    from gateway.app import create_app

    config = parse_config(
        "server: {max_header_bytes: 1234}\n"
        "upstreams: {m: {provider: mock}}\nmodels: {x: [{upstream: m, model: x}]}\n",
        source="<test>",
    )
    app = create_app(config)

    class Middleware:
        def __init__(self, app: object) -> None:
            self.app = app

    class Server:
        def __init__(self, app: object) -> None:
            self.app = app

        async def serve(self) -> None:
            pass

    # The runtime is made by the lifespan; a test passes one in, as a reload swaps it.
    app.state.runtime = type("R", (), {"config": config})()

    assert _server_settings(app).max_header_bytes == 1234
    assert _server_settings(Middleware(Middleware(app))).max_header_bytes == 1234
    assert _server_settings(Server(app).serve).max_header_bytes == 1234
    assert _server_settings(Starlette()) == ServerConfig()
    assert _server_settings(object()) == ServerConfig()


def test_head_size_counts_the_url_names_values_and_separators():
    headers = [(b"host", b"example"), (b"x-a", b"1")]

    size = _head_size(b"/v1/models", headers)

    wire = b"GET /v1/models HTTP/1.1\r\nhost: example\r\nx-a: 1\r\n\r\n"
    assert abs(size - len(wire)) <= 4
