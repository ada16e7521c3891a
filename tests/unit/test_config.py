"""gateway/config.py: the shipped config, env expansion, and errors that name the key and line."""

from __future__ import annotations

import hashlib
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from gateway.config import (
    Config,
    ConfigError,
    Secret,
    json_schema,
    load_config,
    parse_config,
)

SHIPPED = Path(__file__).resolve().parents[2] / "gateway.yaml"
SOURCE = "g.yaml"


def parse(text: str, environ: dict[str, str] | None = None) -> Config:
    return parse_config(textwrap.dedent(text), source=SOURCE, environ=environ or {})


def errors_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, environ)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


# ---------------------------------------------------------------- the shipped config


def test_shipped_config_is_valid_and_leaves_keyed_upstreams_unconfigured_without_keys():
    config = parse_config(SHIPPED.read_text(encoding="utf-8"), source="gateway.yaml", environ={})

    assert config.source == "gateway.yaml"
    assert set(config.upstreams) == {"mock", "openai", "claude", "gemini", "local"}
    assert set(config.models) == {
        "mock-1",
        "gpt-4o-mini",
        "gpt-4o",
        "claude-sonnet-4-5",
        "gemini-2.5-flash",
        "local",
    }
    assert [u.provider for u in config.upstreams.values()] == [
        "mock",
        "openai",
        "anthropic",
        "gemini",
        "openai",
    ]
    assert not config.upstreams["claude"].configured
    assert not config.upstreams["gemini"].configured
    openai = config.upstreams["openai"]
    assert openai.provider == "openai"
    assert openai.base_url == "https://api.openai.com/v1"
    assert openai.api_key == Secret("")
    assert not openai.configured
    assert config.upstreams["mock"].configured
    assert config.upstreams["mock"].ttft == 0.05
    assert config.upstreams["local"].pool.max_keepalive == 50
    assert [t.upstream for t in config.models["gpt-4o-mini"]] == ["openai", "mock"]


def test_shipped_config_configures_openai_when_the_key_is_in_the_environment():
    config = parse_config(
        SHIPPED.read_text(encoding="utf-8"), environ={"OPENAI_API_KEY": "sk-test-123456789"}
    )

    openai = config.upstreams["openai"]
    assert openai.configured
    assert openai.api_key is not None
    assert openai.api_key.reveal() == "sk-test-123456789"


def test_load_config_reads_the_shipped_file():
    config = load_config(SHIPPED)

    assert config.source == str(SHIPPED)
    assert "mock-1" in config.models


def test_load_config_of_a_missing_file_is_a_config_error_naming_the_file(tmp_path: Path):
    missing = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError) as info:
        load_config(missing)

    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith(f"{missing}: cannot read config")


def test_an_empty_document_gives_the_defaults():
    config = parse("")

    assert config.upstreams == {}
    assert config.models == {}
    assert config.server.port == 8080
    assert config.server.host == "127.0.0.1"


# ---------------------------------------------------------------- environment expansion


@pytest.mark.parametrize(
    ("value", "environ", "expected"),
    [
        ("${KEY}", {"KEY": "abc"}, "abc"),
        ("pre-${KEY}-post", {"KEY": "abc"}, "pre-abc-post"),
        ("${A}${B}", {"A": "1", "B": "2"}, "12"),
        ("${KEY:-fallback}", {}, "fallback"),
        ("${KEY:-fallback}", {"KEY": ""}, "fallback"),
        ("${KEY:-fallback}", {"KEY": "set"}, "set"),
        ("${KEY:-}", {}, ""),
        ("${KEY:?must be set}", {"KEY": "given"}, "given"),
        ("a$$b", {}, "a$b"),
        ("$${KEY}", {"KEY": "abc"}, "${KEY}"),
        ("$$$${KEY}", {"KEY": "abc"}, "$${KEY}"),
        ("cost: $5", {}, "cost: $5"),
        ("$KEY", {"KEY": "abc"}, "$KEY"),
    ],
)
def test_environment_references_expand_in_string_values(value, environ, expected):
    config = parse(
        f"""
        upstreams:
          m:
            provider: mock
            headers: {{x-test: "{value}"}}
        """,
        environ,
    )

    assert config.upstreams["m"].headers["x-test"] == expected


def test_an_expanded_value_is_converted_to_the_keys_type():
    config = parse("server:\n  port: ${PORT:-9000}\n  sse_keepalive: ${KA}\n", {"KA": "2.5"})

    assert config.server.port == 9000
    assert config.server.sse_keepalive == 2.5


@pytest.mark.parametrize(
    ("value", "environ", "message"),
    [
        ("${KEY}", {}, "environment variable KEY is not set (use ${KEY:-})"),
        ("${KEY:?set KEY to your key}", {}, "environment variable KEY is required: set KEY to"),
        ("${KEY:?set KEY to your key}", {"KEY": ""}, "environment variable KEY is required"),
        ("${KEY:?}", {}, "environment variable KEY is required: not set"),
    ],
)
def test_a_missing_environment_variable_is_an_error_naming_the_key_and_line(
    value, environ, message
):
    errors = errors_of(
        f"""
        upstreams:
          m:
            provider: mock
            api_key: "{value}"
        """,
        environ,
    )

    assert len(errors) == 1
    assert errors[0].startswith(f"{SOURCE}:5: upstreams.m.api_key: {message}")


def test_expansion_reads_os_environ_when_no_environ_is_given(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GATEWAY_TEST_KEY", "from-os-environ")

    config = parse_config("upstreams:\n  m: {provider: mock, api_key: '${GATEWAY_TEST_KEY}'}\n")

    assert config.upstreams["m"].api_key == Secret("from-os-environ")


# ---------------------------------------------------------------- one error each


_SHA = hashlib.sha256(b"k-0123456789abcdef").hexdigest()  # the first key's, as key_sha256
ERROR_CASES: list[Any] = [
    pytest.param("bogus: 1\n", 1, "bogus", "unknown key", id="unknown-top-level-key"),
    pytest.param(
        "server:\n  host: 0.0.0.0\n  bogus: 1\n",
        3,
        "server.bogus",
        "unknown key",
        id="unknown-server-key",
    ),
    pytest.param(
        "upstreams:\n  m:\n    provider: mock\n    bogus: 1\n",
        4,
        "upstreams.m.bogus",
        "unknown key",
        id="unknown-upstream-key",
    ),
    pytest.param(
        "upstreams:\n  m:\n    provider: mock\n    timeouts:\n      read: 1\n      bogus: 2\n",
        6,
        "upstreams.m.timeouts.bogus",
        "unknown key",
        id="unknown-timeouts-key",
    ),
    pytest.param(
        "upstreams:\n  m:\n    provider: mock\n    pool:\n      bogus: 2\n",
        5,
        "upstreams.m.pool.bogus",
        "unknown key",
        id="unknown-pool-key",
    ),
    pytest.param(
        "upstreams:\n  m: {provider: mock}\nmodels:\n  x:\n    - upstream: m\n      model: y\n"
        "      bogus: 1\n",
        7,
        "models.x[0].bogus",
        "unknown key",
        id="unknown-target-key",
    ),
    pytest.param("server:\n  port: eighty\n", 2, "server.port", "Expected `int`", id="wrong-type"),
    pytest.param("server:\n  port: 70000\n", 2, "server.port", "<= 65535", id="out-of-range"),
    pytest.param("server: 5\n", 1, "server", "Expected `object`", id="section-not-a-mapping"),
    pytest.param(
        "upstreams:\n  m:\n    provider: mock\n    http2: maybe\n",
        4,
        "upstreams.m.http2",
        "Expected `bool`",
        id="wrong-type-bool",
    ),
    pytest.param(
        "upstreams:\n  m:\n    provider: mock\n    timeouts:\n      connect: 0\n",
        5,
        "upstreams.m.timeouts.connect",
        "> 0",
        id="zero-timeout",
    ),
    pytest.param(
        "upstreams:\n  m:\n    provider: mock\n    api_key: 12345\n",
        4,
        "upstreams.m.api_key",
        "expected a string",
        id="secret-not-a-string",
    ),
    pytest.param(
        "upstreams:\n  m:\n    provider: bedrock\n",
        3,
        "upstreams.m.provider",
        "Invalid enum value 'bedrock'",
        id="bad-provider",
    ),
    pytest.param(
        "upstreams:\n  m:\n    provider: mock\n    transport: curl\n",
        4,
        "upstreams.m.transport",
        "Invalid enum value 'curl'",
        id="bad-transport",
    ),
    pytest.param(
        "upstreams:\n  m:\n    base_url: http://x\n",
        2,
        "upstreams.m.provider",
        "required key is missing",
        id="missing-provider",
    ),
    pytest.param(
        "upstreams:\n  m: {provider: mock}\nmodels:\n  x:\n    - upstream: m\n",
        5,
        "models.x[0].model",
        "required key is missing",
        id="missing-target-model",
    ),
    pytest.param(
        "upstreams:\n  m:\n    provider: mock\n  m:\n    provider: mock\n",
        4,
        "upstreams.m",
        "duplicate key",
        id="duplicate-upstream",
    ),
    pytest.param(
        "server:\n  port: 1\n  port: 2\n", 3, "server.port", "duplicate key", id="duplicate-key"
    ),
    pytest.param(
        "server: {}\nserver: {}\n", 2, "server", "duplicate key", id="duplicate-top-level-key"
    ),
    pytest.param(
        "upstreams:\n  m: {provider: mock}\nmodels:\n  x:\n    - {upstream: m, model: a}\n"
        "    - {upstream: nowhere, model: b}\n",
        6,
        "models.x[1].upstream",
        "unknown upstream 'nowhere'",
        id="unknown-upstream-in-target",
    ),
    pytest.param(
        "upstreams:\n  m: {provider: mock}\nmodels:\n  x: []\n",
        4,
        "models.x",
        "at least one target",
        id="empty-targets",
    ),
    pytest.param(
        "upstreams:\n  m: {provider: mock}\nmodels:\n  x: {upstream: m, model: a}\n",
        4,
        "models.x",
        "Expected `array`",
        id="targets-not-a-list",
    ),
    pytest.param(
        "upstreams:\n  o:\n    provider: openai\n    base_url: http://x\n    ttft: 1\n",
        5,
        "upstreams.o.ttft",
        "only the mock provider",
        id="ttft-on-openai",
    ),
    pytest.param(
        "upstreams:\n  o:\n    provider: openai\n    base_url: http://x\n"
        "    tokens_per_second: 10\n",
        5,
        "upstreams.o.tokens_per_second",
        "only the mock provider",
        id="tokens-per-second-on-openai",
    ),
    pytest.param(
        "upstreams:\n  o:\n    provider: openai\n    base_url: http://x\n"
        "    default_max_tokens: 100\n",
        5,
        "upstreams.o.default_max_tokens",
        "only the anthropic provider",
        id="default-max-tokens-on-openai",
    ),
    pytest.param(
        "upstreams:\n  a:\n    provider: anthropic\n    base_url: http://x\n"
        "    api_version: '2024-10-21'\n",
        5,
        "upstreams.a.api_version",
        "only the azure provider",
        id="api-version-on-anthropic",
    ),
    pytest.param(
        "upstreams:\n  a:\n    provider: anthropic\n    base_url: http://x\n"
        "    max_tokens: {claude-x: 0}\n",
        5,
        "upstreams.a.max_tokens.claude-x",
        "must be a whole number >= 1",
        id="max-tokens-per-model-below-one",
    ),
    pytest.param(
        "upstreams:\n  o:\n    provider: ollama\n",
        2,
        "upstreams.o.base_url",
        "provider ollama needs a base_url",
        id="ollama-without-base-url",
    ),
    pytest.param(
        "upstreams:\n  o:\n    provider: openai\n",
        2,
        "upstreams.o.base_url",
        "needs a base_url",
        id="openai-without-base-url",
    ),
    pytest.param(
        "upstreams:\n  o:\n    provider: openai\n    base_url: ftp://example.com\n",
        4,
        "upstreams.o.base_url",
        "http:// or https://",
        id="base-url-bad-scheme",
    ),
    pytest.param(
        "upstreams:\n  o:\n    provider: openai\n    base_url: api.openai.com/v1\n",
        4,
        "upstreams.o.base_url",
        "http:// or https://",
        id="base-url-without-scheme",
    ),
    pytest.param(
        "upstreams:\n  o:\n    provider: openai\n    base_url: 'https://'\n",
        4,
        "upstreams.o.base_url",
        "http:// or https://",
        id="base-url-without-host",
    ),
    pytest.param(
        "upstreams:\n  o:\n    provider: openai\n    base_url: https://x\n    http2: true\n"
        "    transport: native\n",
        5,
        "upstreams.o.http2",
        "HTTP/2 needs transport httpx",
        id="http2-with-native",
    ),
    pytest.param(
        "upstreams:\n  m:\n    provider: mock\n    headers:\n      'bad header': x\n",
        5,
        "upstreams.m.headers.bad header",
        "not a valid HTTP header",
        id="bad-header-name",
    ),
    pytest.param(
        'upstreams:\n  m:\n    provider: mock\n    headers:\n      x-a: "one\\r\\nx-b: two"\n',
        5,
        "upstreams.m.headers.x-a",
        "not a valid HTTP header",
        id="header-value-with-crlf",
    ),
    pytest.param(
        "upstreams:\n  'has space': {provider: mock}\n",
        2,
        "upstreams.has space",
        "names use letters",
        id="bad-upstream-name",
    ),
    pytest.param(
        "upstreams:\n  - provider: mock\n", 1, "upstreams", "must be a mapping", id="list-section"
    ),
    pytest.param("- 1\n- 2\n", 1, "(top level)", "must be a mapping", id="document-is-a-list"),
    pytest.param("1: x\n", 1, "(top level)", "keys must be strings", id="non-string-key"),
    pytest.param(
        "server:\n  host: x\n  1: x\n",
        3,
        "server",
        "keys must be strings",
        id="nested-non-string-key",
    ),
    *[
        pytest.param(
            "auth:\n  keys:\n    - {name: a, key: k-0123456789abcdef}\n    - " + key + "\n",
            4 if line is None else line,
            path,
            message,
            id=f"client-key-{name}",
        )
        for name, key, line, path, message in [
            (
                "both",
                "{name: b, key: k-fedcba9876543210, key_sha256: " + "a" * 64 + "}",
                None,
                "auth.keys[1]",
                "exactly one of key and key_sha256",
            ),
            ("neither", "{name: b}", None, "auth.keys[1]", "exactly one of key and key_sha256"),
            ("short", "{name: b, key: short}", None, "auth.keys[1].key", "under 16 characters"),
            (
                "bad-hex",
                "{name: b, key_sha256: abc}",
                None,
                "auth.keys[1].key_sha256",
                "64 hex digits",
            ),
            (
                "same-name",
                "{name: a, key: k-fedcba9876543210}",
                None,
                "auth.keys[1].name",
                "duplicate key name 'a'",
            ),
            (
                "same-key",
                "{name: b, key: k-0123456789abcdef}",
                None,
                "auth.keys[1]",
                "the same key is given twice",
            ),
            (
                "same-key-as-digest",
                "{name: b, key_sha256: " + _SHA + "}",
                None,
                "auth.keys[1]",
                "the same key is given twice",
            ),
            (
                "no-models",
                "{name: b, key: k-fedcba9876543210, models: []}",
                None,
                "auth.keys[1].models",
                "list the model globs",
            ),
            (
                "reserved-name",
                "{name: anonymous, key: k-fedcba9876543210}",
                None,
                "auth.keys[1].name",
                "reserved",
            ),
            (
                "bad-name",
                "{name: 'a b', key: k-fedcba9876543210}",
                None,
                "auth.keys[1].name",
                "names use letters",
            ),
        ]
    ],
    pytest.param(
        "limits: {backend: redis}\n", 1, "limits.redis_url", "needs a redis_url", id="redis-url"
    ),
    pytest.param("limits:\n  backend: memcached\n", 2, "limits.backend", "", id="limits-backend"),
]


@pytest.mark.parametrize(("text", "line", "path", "message"), ERROR_CASES)
def test_each_error_names_the_key_path_and_yaml_line(text, line, path, message):
    errors = errors_of(text)

    assert len(errors) == 1, errors
    prefix = f"{SOURCE}:{line}: {path}: "
    assert errors[0].startswith(prefix), errors[0]
    assert message in errors[0][len(prefix) :]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("server: [1, 2\n", id="unclosed-flow-sequence"),
        pytest.param("server:\n  port: 1\n bad: indentation\n", id="bad-indentation"),
        pytest.param("a: b: c\n", id="mapping-in-scalar"),
        pytest.param("server: {host: 'x'\n", id="unclosed-flow-mapping"),
    ],
)
def test_invalid_yaml_is_a_config_error_with_a_line(text):
    errors = errors_of(text)

    assert len(errors) == 1
    assert re.match(rf"^{re.escape(SOURCE)}:\d+: invalid YAML: ", errors[0]), errors[0]


@pytest.mark.parametrize("tag", ["!!python/name:os.system", "!custom x"])
def test_an_unknown_yaml_tag_is_a_config_error_not_a_crash(tag):
    errors = errors_of(f"server:\n  host: {tag}\n")

    assert errors[0].startswith(f"{SOURCE}:2: ")


def test_a_wrong_type_header_value_names_the_header():
    errors = errors_of("upstreams:\n  m:\n    provider: mock\n    headers:\n      x-n: 5\n")

    assert len(errors) == 1
    assert errors[0].startswith(f"{SOURCE}:5: upstreams.m.headers.x-n: ")
    assert "string" in errors[0]


def test_a_key_may_override_a_yaml_merge():
    config = parse(
        """
        upstreams:
          base: &base {provider: mock, ttft: 0.1}
          fast:
            <<: *base
            ttft: 0.2
        """
    )

    assert config.upstreams["fast"].ttft == 0.2


def test_an_alias_of_a_mapping_that_overrides_a_merge_is_valid():
    config = parse(
        """
        upstreams:
          base: &base {provider: mock, ttft: 0.1}
          fast: &fast
            <<: *base
            ttft: 0.2
          copy: *fast
        """
    )

    assert config.upstreams["fast"].ttft == 0.2
    assert config.upstreams["copy"].ttft == 0.2


def test_a_merge_of_several_mappings_takes_the_first_ones_value():
    config = parse(
        """
        upstreams:
          a: &a {provider: mock, ttft: 0.1}
          b: &b {provider: mock, ttft: 0.5, tokens_per_second: 3}
          c:
            <<: [*a, *b]
        """
    )

    assert config.upstreams["c"].ttft == 0.1
    assert config.upstreams["c"].tokens_per_second == 3


def test_a_key_written_twice_next_to_a_merge_is_still_a_duplicate():
    errors = errors_of(
        """
        upstreams:
          base: &base {provider: mock, ttft: 0.1}
          m:
            <<: *base
            ttft: 0.2
            ttft: 0.3
        """
    )

    assert errors == [f"{SOURCE}:7: upstreams.m.ttft: duplicate key"]


def test_yaml_merge_keys_are_expanded():
    config = parse(
        """
        upstreams:
          base: &base {provider: mock, ttft: 0.1}
          copy:
            <<: *base
            tokens_per_second: 5
        """
    )

    assert config.upstreams["copy"].ttft == 0.1
    assert config.upstreams["copy"].tokens_per_second == 5


def test_a_target_naming_an_invalid_upstream_reports_only_the_upstreams_error():
    errors = errors_of(
        """
        upstreams:
          broken: {provider: nope}
        models:
          x: [{upstream: broken, model: a}]
        """
    )

    assert errors == [f"{SOURCE}:3: upstreams.broken.provider: Invalid enum value 'nope'"]


def test_several_errors_are_reported_together_in_one_config_error():
    errors = errors_of(
        """
        server:
          port: -1
        upstreams:
          good: {provider: mock}
          keyless: {provider: mock, api_key: "${MISSING}"}
          typo: {provider: opanai}
          o: {provider: openai}
        models:
          m: [{upstream: ghost, model: a}]
          empty: []
        colour: blue
        """
    )

    assert len(errors) == 7, errors
    expected = [
        f"{SOURCE}:3: server.port:",
        f"{SOURCE}:6: upstreams.keyless.api_key: environment variable MISSING",
        f"{SOURCE}:7: upstreams.typo.provider: Invalid enum value",
        f"{SOURCE}:8: upstreams.o.base_url: provider openai needs a base_url",
        f"{SOURCE}:10: models.m[0].upstream: unknown upstream 'ghost'",
        f"{SOURCE}:11: models.empty: a model needs at least one target",
        f"{SOURCE}:12: colour: unknown key",
    ]
    for start in expected:
        assert sum(e.startswith(start) for e in errors) == 1, (start, errors)


# ---------------------------------------------------------------- Secret


def test_secret_repr_never_shows_the_value():
    secret = Secret("sk-very-secret-value")

    assert "sk-very-secret-value" not in repr(secret)
    assert "sk-very-secret-value" not in str(secret)
    assert "sk-very-secret-value" not in f"{secret!r} {[secret]} { ({'k': secret}) }"
    assert secret.reveal() == "sk-very-secret-value"
    assert secret
    assert not Secret("")
    assert repr(Secret("")) == "Secret('')"
    assert secret == Secret("sk-very-secret-value")
    assert secret != Secret("other")
    assert hash(secret) == hash(Secret("sk-very-secret-value"))


def test_a_configs_repr_does_not_reveal_its_keys():
    config = parse(
        "upstreams:\n  o: {provider: openai, base_url: 'https://x', api_key: '${K}'}\n",
        {"K": "sk-hidden-0123456789"},
    )

    assert "sk-hidden-0123456789" not in repr(config)
    assert config.upstreams["o"].api_key == Secret("sk-hidden-0123456789")


# ---------------------------------------------------------------- JSON Schema


def test_json_schema_is_a_valid_draft_2020_12_schema():
    schema = json_schema()

    Draft202012Validator.check_schema(schema)
    assert schema["title"] == "gateway.yaml"
    assert "source" not in schema["$defs"]["Config"]["properties"]


def test_the_shipped_yaml_validates_against_the_json_schema():
    data = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))

    errors = list(Draft202012Validator(json_schema()).iter_errors(data))

    assert errors == []


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"colour": "blue"}, id="unknown-top-level-key"),
        pytest.param({"source": "x"}, id="internal-source-field"),
        pytest.param({"upstreams": {"m": {"provider": "bedrock"}}}, id="bad-provider"),
        pytest.param({"upstreams": {"m": {"base_url": "http://x"}}}, id="missing-provider"),
        pytest.param({"upstreams": {"m": {"provider": "mock", "api_key": 5}}}, id="secret-type"),
        pytest.param({"server": {"port": 70000}}, id="port-range"),
        pytest.param({"models": {"m": [{"upstream": "x"}]}}, id="target-without-model"),
    ],
)
def test_the_json_schema_rejects_what_the_loader_rejects(data):
    assert not Draft202012Validator(json_schema()).is_valid(data)


@pytest.mark.parametrize("provider", ["openai", "azure", "anthropic", "gemini", "ollama", "tgi"])
def test_every_provider_of_the_contract_is_accepted(provider: str):
    config = parse(f"upstreams:\n  u: {{provider: {provider}, base_url: 'http://127.0.0.1:1'}}\n")

    assert config.upstreams["u"].provider == provider


def test_provider_keys_of_the_contract():
    config = parse(
        """
        upstreams:
          claude: {provider: anthropic, base_url: https://api.anthropic.com, api_key: k1,
                   default_max_tokens: 1024, max_tokens: {claude-opus-4-1: 32000}}
          azure:  {provider: azure, base_url: https://myres.openai.azure.com, api_key: k2,
                   api_version: "2024-10-21"}
          vllm:   {provider: openai, base_url: "http://127.0.0.1:8000/v1",
                   drop_params: [logit_bias, service_tier], drop_unsupported: true}
        """
    )

    claude, azure, vllm = (config.upstreams[n] for n in ("claude", "azure", "vllm"))
    assert (claude.default_max_tokens, claude.max_tokens) == (1024, {"claude-opus-4-1": 32000})
    assert azure.api_version == "2024-10-21"
    assert vllm.drop_params == ("logit_bias", "service_tier")
    assert vllm.drop_unsupported is True
    assert config.upstreams["claude"].drop_unsupported is False  # the default: refuse


def test_the_issues_provider_config_shape_is_accepted_as_written():
    text = (Path(__file__).parent.parent / "data" / "providers.yaml").read_text(encoding="utf-8")
    environ = {"ANTHROPIC_API_KEY": "a", "GEMINI_API_KEY": "g", "AZURE_OPENAI_API_KEY": "z"}

    config = parse_config(text, source="providers.yaml", environ=environ)

    providers = {name: u.provider for name, u in config.upstreams.items()}
    assert providers == {
        "claude": "anthropic",
        "gemini": "gemini",
        "ollama": "ollama",
        "tgi": "tgi",
        "azure": "azure",
    }
    assert config.upstreams["azure"].api_version == "2024-10-21"
    assert config.models["prod"][0].model == "my-deployment"  # for Azure: the deployment


def test_the_issues_resilience_config_shape_is_accepted_as_written():
    text = (Path(__file__).parent.parent / "data" / "resilience.yaml").read_text(encoding="utf-8")

    config = parse_config(text, source="resilience.yaml", environ={"PRIMARY_KEY": "k"})

    primary = config.upstreams["primary"]
    assert primary.enabled is True
    assert primary.timeouts.first_byte == 30
    assert primary.rate_limit is not None
    assert (primary.rate_limit.requests_per_minute, primary.rate_limit.max_wait) == (600, 0.5)
    assert primary.rate_limit.tokens_per_minute == 200000
    assert primary.rate_limit.max_concurrent == 64
    assert (primary.breaker.fail_max, primary.breaker.half_open_max_calls) == (5, 1)
    assert (primary.retry.attempts, primary.retry.backoff_max) == (2, 5)
    assert (primary.health.interval, primary.health.failure_threshold) == (30, 3)
    smart = config.models["smart"]
    assert [(t.priority, t.weight) for t in smart] == [(1, 3), (1, 1), (2, 1)]


def test_resilience_defaults_leave_every_limit_off():
    upstream = parse("upstreams:\n  u: {provider: mock}\n").upstreams["u"]

    assert upstream.enabled is True
    assert upstream.rate_limit is None  # absent = unlimited
    assert upstream.timeouts.first_byte is None
    assert upstream.retry.attempts == 1
    assert upstream.health.interval == 30


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (
            "upstreams:\n  u: {provider: mock, breaker: {fail_max: 0}}\n",
            "upstreams.u.breaker.fail_max",
        ),
        ("upstreams:\n  u: {provider: mock, retry: {attempts: 0}}\n", "upstreams.u.retry.attempts"),
        (
            "upstreams:\n  u: {provider: mock, rate_limit: {max_wait: -1}}\n",
            "upstreams.u.rate_limit.max_wait",
        ),
        (
            "upstreams:\n  u: {provider: mock, health: {interval: -1}}\n",
            "upstreams.u.health.interval",
        ),
        ("server: {load_balancing: random}\n", "server.load_balancing"),
        (
            "upstreams:\n  u: {provider: mock}\n"
            "models:\n  m: [{upstream: u, model: x, weight: 0}]\n",
            "models.m[0].weight",
        ),
    ],
)
def test_bad_resilience_settings_name_their_key(text: str, path: str):
    [error] = errors_of(text)

    assert f": {path}: " in error
