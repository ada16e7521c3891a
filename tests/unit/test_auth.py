"""Client keys (gateway/auth.py): reading the presented key, constant-time lookup over digests,
model globs, per-key limiters and what a reload keeps of them, and the start-up rule for
serving without keys."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway.auth import KeyTable, bind_problem, is_loopback, presented_key
from gateway.config import Config, RateLimit, parse_config
from gateway.errors import InvalidApiKey, ModelNotAllowed, RateLimited, to_openai_error
from gateway.openai_types import ChatRequest
from gateway.resilience.limiter import Limiter
from gateway.runtime import new_limiter

T = TypeVar("T")

TEAM_A = "ta-0123456789abcdef0123"
BATCH = "test"  # key_sha256 of tests/data/production.yaml is its SHA-256
OTHER = "zz-not-a-configured-key-42"
DATA = Path(__file__).parent.parent / "data"


def chat_request(body: dict[str, object]) -> ChatRequest:
    return ChatRequest(body=body, model="mock-1", stream=False, include_usage=False)


def production() -> Config:
    text = (DATA / "production.yaml").read_text(encoding="utf-8")
    environ = {"TEAM_A_KEY": TEAM_A, "GATEWAY_ADMIN_KEY": "adm-0123456789abcdef"}
    return parse_config(text, source="production.yaml", environ=environ)


def config_with(keys: list[dict[str, Any]], **auth_settings: Any) -> Config:
    import yaml

    data = {
        "auth": {"keys": keys, **auth_settings},
        "upstreams": {"mock": {"provider": "mock"}},
        "models": {"m": [{"upstream": "mock", "model": "m"}]},
    }
    return parse_config(yaml.safe_dump(data), source="<test>")


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Limiters bind to the running loop: build and use them inside one."""

    async def bounded() -> T:
        async with asyncio.timeout(5):
            return await main()

    return asyncio.run(bounded())


class Factory:
    """`new_limiter` as the runtime passes it, recording what it was asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, RateLimit | None]] = []

    def __call__(
        self, config: Config, scope: str, name: str, settings: RateLimit | None
    ) -> Limiter:
        self.calls.append((scope, name, settings))
        return new_limiter(config, scope, name, settings)


def bearer(key: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {key}".encode())]


# ------------------------------------------------------------------- the config shape


def test_the_issues_config_shape_parses_as_written():
    config = production()
    team_a, batch = config.auth.keys
    assert team_a.name == "team-a"
    assert team_a.key is not None
    assert team_a.key.reveal() == TEAM_A
    assert team_a.models == ("gpt-4o*", "mock-*")
    assert team_a.rate_limit == RateLimit(
        requests_per_minute=600, tokens_per_minute=100000, max_concurrent=16
    )
    assert batch.name == "batch"
    assert batch.key is None
    assert batch.key_sha256 == hashlib.sha256(BATCH.encode()).hexdigest()
    assert batch.models == ("*",)
    assert batch.rate_limit is None
    assert config.auth.allow_unauthenticated is False
    assert config.auth.admin_key is not None
    assert config.limits.backend == "memory"
    assert config.limits.redis_url is not None
    assert config.limits.redis_url.reveal() == "redis://127.0.0.1:6379/0"
    assert config.limits.on_backend_failure == "local"
    assert config.server.drain_seconds == 25


def test_the_issues_config_builds_a_table_with_one_limiter():
    async def main() -> None:
        factory = Factory()
        table = KeyTable.build(production(), factory)
        assert table is not None
        assert [c.name for c in table] == ["team-a", "batch"]
        assert factory.calls == [("key", "team-a", production().auth.keys[0].rate_limit)]
        assert table.lookup(bearer(TEAM_A)).name == "team-a"
        assert table.lookup(bearer(BATCH)).name == "batch"

    run(main)


def test_no_keys_is_no_table():
    factory = Factory()
    assert KeyTable.build(config_with([]), factory) is None
    assert factory.calls == []


# ------------------------------------------------------------------- the presented key


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param([(b"authorization", b"Bearer abc")], b"abc", id="bearer"),
        pytest.param([(b"authorization", b"bearer  abc ")], b"abc", id="bearer-any-case"),
        pytest.param([(b"api-key", b"abc")], b"abc", id="azure-api-key"),
        pytest.param(
            [(b"api-key", b"azure"), (b"authorization", b"Bearer openai")],
            b"openai",
            id="bearer-beats-api-key",
        ),
        pytest.param(
            [(b"authorization", b"Basic dXNlcjpwYXNz"), (b"api-key", b"abc")],
            b"abc",
            id="other-scheme-then-api-key",
        ),
        pytest.param([(b"authorization", b"Basic dXNlcjpwYXNz")], None, id="other-scheme"),
        pytest.param([(b"authorization", b"Bearer ")], None, id="empty-bearer"),
        pytest.param([(b"api-key", b"  ")], None, id="empty-api-key"),
        pytest.param([(b"x-api-key", b"abc")], None, id="anthropic-header-is-not-read"),
        pytest.param([], None, id="none"),
    ],
)
def test_presented_key(headers, expected):
    assert presented_key(headers) == expected


# ------------------------------------------------------------------- lookup


def keys_config() -> Config:
    return config_with(
        [
            {"name": "alpha", "key": "alpha-0123456789abcdef"},
            {"name": "beta", "key": "beta-0123456789abcdef0"},
            {
                "name": "gamma",
                "key_sha256": hashlib.sha256(b"gamma-0123456789abcdef").hexdigest().upper(),
            },
        ]
    )


def table_of(config: Config) -> KeyTable:
    table = KeyTable.build(config, Factory())
    assert table is not None
    return table


def test_each_key_finds_its_name_by_bearer_or_api_key():
    table = table_of(keys_config())
    assert table.lookup(bearer("alpha-0123456789abcdef")).name == "alpha"
    assert table.lookup([(b"api-key", b"beta-0123456789abcdef0")]).name == "beta"
    assert table.lookup(bearer("gamma-0123456789abcdef")).name == "gamma"  # key_sha256, any case


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([], id="missing"),
        pytest.param(bearer("alpha-0123456789abcde"), id="one-character-short"),
        pytest.param(bearer("alpha-0123456789abcdeF"), id="one-character-wrong"),
        pytest.param(bearer(hashlib.sha256(b"gamma-0123456789abcdef").hexdigest()), id="digest"),
        pytest.param([(b"authorization", b"alpha-0123456789abcdef")], id="no-scheme"),
    ],
)
def test_a_missing_or_wrong_key_is_a_401_that_never_echoes_it(headers):
    table = table_of(keys_config())
    with pytest.raises(InvalidApiKey) as caught:
        table.lookup(headers)
    error = caught.value
    assert error.status == 401
    body = to_openai_error(error)["error"]
    assert body["type"] == "invalid_request_error"
    assert body["code"] == "invalid_api_key"
    assert error.headers == {"www-authenticate": "Bearer"}
    given = presented_key(headers)
    if given is None:
        assert "didn't provide an API key" in body["message"]
        assert error.fingerprint is None
    else:
        assert body["message"].startswith("Incorrect API key provided")
        assert given.decode() not in body["message"]
        assert error.fingerprint == "sha256:" + hashlib.sha256(given).hexdigest()[:12]
        assert given.decode() not in error.fingerprint


def test_lookup_compares_fixed_length_digests_once_whatever_the_key(monkeypatch):
    """The constant-time path: one `hmac.compare_digest` over two 32-byte digests per lookup,
    whether the key is the first, the last, wrong, or absurdly long: no secret is compared with
    what the client sent, and the work does not grow with the number of keys."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    table = table_of(keys_config())
    for headers, found in (
        (bearer("alpha-0123456789abcdef"), True),
        (bearer("gamma-0123456789abcdef"), True),
        (bearer("x"), False),
        (bearer("x" * 5000), False),
    ):
        calls.clear()
        with contextlib.suppress(InvalidApiKey):
            table.lookup(headers)
        assert len(calls) == 1
        ((expected, given),) = calls
        assert len(expected) == len(given) == 32
        assert isinstance(expected, bytes)
        assert isinstance(given, bytes)
        assert (expected == given) is found


def test_a_key_in_the_config_is_hashed_once_at_build(monkeypatch):
    table = table_of(keys_config())
    hashed: list[bytes] = []
    real = hashlib.sha256

    def spy(data: bytes = b"") -> Any:
        hashed.append(data)
        return real(data)

    monkeypatch.setattr(hashlib, "sha256", spy)
    table.lookup(bearer("beta-0123456789abcdef0"))
    assert hashed == [b"beta-0123456789abcdef0"]  # the presented key only


# ------------------------------------------------------------------- model globs


GLOB_CASES = ["gpt-4o*", "mock-?", "claude-[3-4]*", "o[!2]", "exact"]
NAMES = [
    "gpt-4o", "gpt-4o-mini", "gpt-4", "GPT-4o", "mock-1", "mock-12", "mock-", "claude-3-opus",
    "claude-5", "o1", "o2", "exact", "exactly", "xexact", "", "gpt-4o\nx",
]  # fmt: skip


@pytest.mark.parametrize("glob", GLOB_CASES)
def test_globs_read_as_fnmatchcase(glob):
    table = table_of(config_with([{"name": "k", "key": "k-0123456789abcdef", "models": [glob]}]))
    [caller] = table
    for name in NAMES:
        assert caller.may_use(name) == fnmatch.fnmatchcase(name, glob), (glob, name)


def test_several_globs_allow_any_of_them_and_star_allows_all():
    config = config_with(
        [
            {"name": "some", "key": "some-0123456789abcdef", "models": ["gpt-4o*", "mock-*"]},
            {"name": "all", "key": "all-0123456789abcdef0", "models": ["x", "*"]},
        ]
    )
    some, everything = table_of(config)
    assert some.may_use("gpt-4o-mini")
    assert some.may_use("mock-1")
    assert not some.may_use("o3")
    assert not some.may_use("Gpt-4o")  # case matters, as model names do
    assert everything.pattern is None
    assert everything.may_use("anything/at:all")


def test_a_model_outside_the_globs_is_a_403_naming_model_and_key():
    config = config_with([{"name": "team-a", "key": "k-0123456789abcdef", "models": ["gpt-*"]}])
    [caller] = table_of(config)
    caller.check_model("gpt-4o")
    with pytest.raises(ModelNotAllowed) as caught:
        caller.check_model("o3")
    error = caught.value
    assert error.status == 403
    assert error.code == "model_not_allowed"
    assert error.param == "model"
    assert "'o3'" in error.message
    assert "'team-a'" in error.message


# ------------------------------------------------------------------- limiters


def test_a_key_at_its_limit_is_refused_in_its_own_words_with_its_headers():
    config = config_with(
        [
            {
                "name": "small",
                "key": "small-0123456789abcdef",
                "rate_limit": {"requests_per_minute": 1, "max_wait": 0},
            }
        ]
    )

    async def main() -> None:
        [caller] = table_of(config)
        assert caller.reports_limits
        assert not caller.counts_tokens
        permit = await caller.admit(chat_request({"messages": []}))
        assert permit is not None
        permit.release(10)
        headers = dict(caller.rate_headers())
        assert headers[b"x-ratelimit-limit-requests"] == b"1"
        assert headers[b"x-ratelimit-remaining-requests"] == b"0"
        with pytest.raises(RateLimited) as caught:
            await caller.admit(chat_request({"messages": []}))
        error = caught.value
        assert error.message.startswith("client key 'small' is at its limit of 1 requests")
        assert "upstream" not in error.message
        assert error.headers["x-ratelimit-limit-requests"] == "1"
        assert int(error.headers["retry-after"]) >= 1

    run(main)


def test_a_client_keys_limiter_names_the_key_in_its_refusals():
    """Local and Redis-backed alike: `new_limiter` labels a key's limiter as a client key's
    (the shared limiter's refusals are tested in tests/unit/resilience/test_shared.py)."""

    async def main() -> None:
        settings = RateLimit(requests_per_minute=1, max_wait=0)
        limiter = new_limiter(config_with([]), "key", "small", settings)
        assert limiter.label == "client key"
        assert new_limiter(config_with([]), "upstream", "up", settings).label == "upstream"
        (await limiter.acquire(0)).release()
        with pytest.raises(RateLimited, match=r"^client key 'small' is at its limit"):
            await limiter.acquire(0)

    run(main)


def test_a_key_without_limits_has_no_limiter_and_no_headers():
    async def main() -> None:
        [caller] = table_of(config_with([{"name": "free", "key": "free-0123456789abcdef"}]))
        assert caller.limiter is None
        assert await caller.admit(chat_request({})) is None
        assert caller.rate_headers() == []
        assert not caller.reports_limits

    run(main)


def test_a_concurrency_limit_alone_sends_no_ratelimit_headers():
    config = config_with(
        [{"name": "c", "key": "c-0123456789abcdef0", "rate_limit": {"max_concurrent": 2}}]
    )

    async def main() -> None:
        [caller] = table_of(config)
        assert caller.limiter is not None
        assert not caller.reports_limits

    run(main)


def test_a_reload_keeps_the_limiters_of_keys_whose_limits_did_not_change():
    limits = {"requests_per_minute": 10}
    before = config_with(
        [
            {"name": "same", "key": "same-0123456789abcdef", "rate_limit": limits},
            {"name": "rotated", "key": "old-0123456789abcdef0", "rate_limit": limits},
            {"name": "changed", "key": "chg-0123456789abcdef0", "rate_limit": limits},
            {"name": "gone", "key": "gone-0123456789abcdef", "rate_limit": limits},
        ]
    )
    after = config_with(
        [
            {"name": "same", "key": "same-0123456789abcdef", "rate_limit": limits,
             "models": ["m"]},
            {"name": "rotated", "key": "new-0123456789abcdef0", "rate_limit": limits},
            {"name": "changed", "key": "chg-0123456789abcdef0",
             "rate_limit": {"requests_per_minute": 20}},
            {"name": "new", "key": "new-key-0123456789abcd", "rate_limit": limits},
        ]
    )  # fmt: skip

    async def main() -> None:
        factory = Factory()
        old = KeyTable.build(before, factory)
        assert old is not None
        first = {c.name: c.limiter for c in old}
        factory.calls.clear()
        new = KeyTable.build(after, factory, previous=old)
        assert new is not None
        second = {c.name: c.limiter for c in new}
        assert second["same"] is first["same"]
        assert second["rotated"] is first["rotated"]  # limits belong to the name
        assert second["changed"] is not first["changed"]
        assert [name for _, name, _ in factory.calls] == ["changed", "new"]
        with pytest.raises(InvalidApiKey):
            new.lookup(bearer("old-0123456789abcdef0"))
        assert new.lookup(bearer("new-0123456789abcdef0")).name == "rotated"

        # Where limits are counted changed: every key starts afresh.
        import msgspec

        moved = msgspec.structs.replace(
            after, limits=msgspec.structs.replace(after.limits, on_backend_failure="deny")
        )
        factory.calls.clear()
        third = KeyTable.build(moved, factory, previous=new)
        assert third is not None
        assert all(c.limiter is not second[c.name] for c in third)
        assert len(factory.calls) == 4

    run(main)


# ------------------------------------------------------------------- start-up rule


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1"],
)
def test_loopback_addresses(host):
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0", "::", "10.0.0.5", "192.168.1.20", "", "example.com", "localhost.example.com",
     "128.0.0.1", "::2", "::ffff:10.0.0.1"],
)  # fmt: skip
def test_addresses_other_hosts_reach(host):
    assert not is_loopback(host)


def test_without_keys_a_non_loopback_address_is_refused():
    problem = bind_problem(config_with([]), "0.0.0.0")
    assert problem is not None
    assert problem.fatal
    assert "0.0.0.0" in problem.message
    assert "auth.keys" in problem.message
    assert "auth.allow_unauthenticated" in problem.message


def test_without_keys_loopback_is_fine():
    assert bind_problem(config_with([]), "127.0.0.1") is None
    assert bind_problem(config_with([]), "::1") is None


def test_allow_unauthenticated_turns_the_refusal_into_a_warning():
    problem = bind_problem(config_with([], allow_unauthenticated=True), "0.0.0.0")
    assert problem is not None
    assert not problem.fatal
    assert "without client keys" in problem.message


def test_with_keys_any_address_is_fine():
    config = config_with([{"name": "k", "key": "k-0123456789abcdef"}])
    assert bind_problem(config, "0.0.0.0") is None
    assert bind_problem(config, "::") is None
