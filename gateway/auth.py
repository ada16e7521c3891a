"""Client keys: who may call the chat and model endpoints, which public models, at what rate.

`KeyTable.build()` turns `auth.keys` into a table of `Caller`s, or None when there are no keys,
so that without keys the request path's whole cost is one `rt.keys is None`. A request presents
its key as `Authorization: Bearer <key>` (OpenAI's SDKs) or `api-key: <key>` (Azure's). The
presented key is hashed with SHA-256; the digest picks its candidate from a table keyed by
digest, and `hmac.compare_digest` then compares the two fixed-length digests (a miss compares
with a stand-in, so both paths do the same work). Nothing a client controls is compared with a
secret: a lookup's time depends on the digest of what the client sent, which tells nothing about
any configured key, and the cost is one hash and one comparison however many keys there are.
A `key` from the config is hashed once, here; a `key_sha256` is used as given, so a config file
need not hold the secret.

A key's name is what logs, metrics and usage show; the key itself stays here. A wrong key shows
in the request's log line as its fingerprint (a short digest, as the admin API logs its
caller), so an operator can tell one wrong key from another without the log holding either.

No keys is meant for a sidecar: `bind_problem()` is the start-up rule that refuses to serve
without keys on an address other hosts can reach, unless the config says so explicitly.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from gateway.config import ClientKey, Config, LimitsConfig, RateLimit
from gateway.errors import InvalidApiKey, ModelNotAllowed
from gateway.openai_types import ChatRequest
from gateway.resilience.limiter import Limiter, Permit

# How `gateway.runtime.new_limiter` builds a limiter (passed in: the runtime imports this module).
LimiterFactory = Callable[[Config, str, str, RateLimit | None], Limiter]

_MISSING = (
    "You didn't provide an API key. Send your gateway key as 'Authorization: Bearer <key>' "
    "(or in an 'api-key' header)."
)
_WRONG = "Incorrect API key provided. Check the gateway key you were given."
_CHALLENGE = {"www-authenticate": "Bearer"}
_STAND_IN = bytes(32)  # what a presented key's digest is compared with when no key has it


def fingerprint(digest: bytes) -> str:
    """A key's name for logs when it has no name: the start of its SHA-256, never the key."""
    return "sha256:" + digest.hex()[:12]


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key an ASGI request presents: `Authorization: Bearer <key>`, else `api-key: <key>`;
    None when it presents neither (another auth scheme, or an empty key, counts as none)."""
    api_key: bytes | None = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            token = token.strip()
            if scheme.lower() == b"bearer" and token:
                return token
        elif name == b"api-key":
            api_key = value.strip() or None
    return api_key


@dataclass(frozen=True, slots=True, eq=False)
class Caller:
    """One configured client key, once a request has shown it: its name, the public models it
    may use, and its own limiter (None: no limits)."""

    name: str
    settings: ClientKey
    limiter: Limiter | None
    digest: bytes
    # The key's model globs as one regex (each glob as `fnmatch.fnmatchcase` reads it); None
    # when a glob is `*`, so the common "every model" costs nothing per request.
    pattern: re.Pattern[str] | None

    def may_use(self, model: str) -> bool:
        return self.pattern is None or self.pattern.match(model) is not None

    def check_model(self, model: str, param: str = "model") -> None:
        """Raises ModelNotAllowed (403) when `model` is outside the key's globs."""
        if not self.may_use(model):
            raise ModelNotAllowed(f"the key '{self.name}' may not use model '{model}'", param=param)

    def check_request(self, request: ChatRequest) -> None:
        """`check_model` for the request's model, and for the models of a top-level `models`
        list: OpenRouter-style servers take it as models to fall back to, which would
        otherwise let a key reach models beyond its globs through such an upstream."""
        self.check_model(request.model)
        if self.pattern is not None and "models" in request.body:
            others = request.body["models"]
            for other in others if isinstance(others, list) else [others]:
                self.check_model(other if isinstance(other, str) else repr(other), "models")

    async def admit(self, request: ChatRequest) -> Permit | None:
        """A permit of this key's limiter for `request` (None when the key has no
        limits): release it when the request ends, with the tokens it used. Raises
        RateLimited (429 with the key's retry-after and `x-ratelimit-*`)."""
        if self.limiter is None:
            return None
        estimate = request.prompt_tokens() if self.counts_tokens else 0
        return await self.limiter.acquire(estimate)  # refusals name "client key '<name>'"

    @property
    def reports_limits(self) -> bool:
        """True when responses carry this key's `x-ratelimit-*` headers (it has a per-minute
        limit; a concurrency limit alone has no such header)."""
        limits = self.settings.rate_limit
        return (
            self.limiter is not None
            and limits is not None
            and (limits.requests_per_minute is not None or limits.tokens_per_minute is not None)
        )

    @property
    def counts_tokens(self) -> bool:
        """True when admitting a request needs its token estimate."""
        limits = self.settings.rate_limit
        return limits is not None and limits.tokens_per_minute is not None

    def rate_headers(self) -> list[tuple[bytes, bytes]]:
        """OpenAI's `x-ratelimit-*` headers of this key's limits, as they stand now."""
        if self.limiter is None:
            return []
        return [(k.encode(), v.encode()) for k, v in self.limiter.headers().items()]


class KeyTable:
    """The configured client keys. See the module docstring."""

    __slots__ = ("_by_digest", "_callers", "_limits")

    def __init__(self, callers: tuple[Caller, ...], limits: LimitsConfig) -> None:
        self._callers = callers
        self._by_digest = {caller.digest: caller for caller in callers}
        self._limits = limits  # where their limiters count; a change means new limiters

    @classmethod
    def build(
        cls, config: Config, new_limiter: LimiterFactory, previous: KeyTable | None = None
    ) -> KeyTable | None:
        """The table for `config.auth.keys`, None when there are none. Call on the running
        loop (limiters bind to it). With `previous` (a reload), a key of the same name whose
        `rate_limit` (and the config's `limits`) did not change keeps its limiter, and with it
        the requests it counted and holds."""
        keys = config.auth.keys
        if not keys:
            return None
        kept: dict[str, Caller] = {}
        if previous is not None and previous._limits == config.limits:
            kept = {caller.name: caller for caller in previous._callers}
        callers = []
        for key in keys:
            old = kept.get(key.name)
            if old is not None and old.settings.rate_limit == key.rate_limit:
                limiter = old.limiter
            elif key.rate_limit is not None:
                limiter = new_limiter(config, "key", key.name, key.rate_limit)
            else:
                limiter = None
            callers.append(Caller(key.name, key, limiter, _digest(key), _globs(key.models)))
        return cls(tuple(callers), config.limits)

    def __iter__(self) -> Iterator[Caller]:
        return iter(self._callers)

    def __len__(self) -> int:
        return len(self._callers)

    def lookup(self, headers: Iterable[tuple[bytes, bytes]]) -> Caller:
        """The caller whose key the ASGI `headers` present. Raises InvalidApiKey (401) when
        they present none or a wrong one; its `fingerprint` names a wrong one for logs."""
        given = presented_key(headers)
        if given is None:
            raise InvalidApiKey(_MISSING, headers=dict(_CHALLENGE))
        digest = hashlib.sha256(given).digest()
        found = self._by_digest.get(digest)
        expected = found.digest if found is not None else _STAND_IN
        if not hmac.compare_digest(expected, digest) or found is None:
            error = InvalidApiKey(_WRONG, headers=dict(_CHALLENGE))
            error.fingerprint = fingerprint(digest)
            raise error
        return found


def _digest(key: ClientKey) -> bytes:
    if key.key is not None:
        return hashlib.sha256(key.key.reveal().encode()).digest()
    assert key.key_sha256 is not None  # the config requires exactly one of the two
    return bytes.fromhex(key.key_sha256)


def _globs(models: tuple[str, ...]) -> re.Pattern[str] | None:
    if "*" in models:
        return None
    return re.compile("|".join(fnmatch.translate(glob) for glob in models))


# ------------------------------------------------------------------- start-up rule


@dataclass(frozen=True, slots=True)
class BindProblem:
    """What serving `config` on a host without client keys means: refuse to start (`fatal`),
    or start with a warning (`auth.allow_unauthenticated: true`)."""

    message: str
    fatal: bool


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches: 127.0.0.0/8, ::1 and `localhost`."""
    host = host.strip().lower().removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # another name: it may resolve to anything
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def bind_problem(config: Config, host: str) -> BindProblem | None:
    """None when serving `config` on `host` is fine: it has client keys, or `host` is loopback
    (a sidecar). Otherwise the refusal, or with `auth.allow_unauthenticated` the warning, that
    `gateway serve` prints."""
    if config.auth.keys or is_loopback(host):
        return None
    if config.auth.allow_unauthenticated:
        return BindProblem(
            f"serving on {host} without client keys: anyone who can reach this address can use "
            "every model (auth.allow_unauthenticated is true)",
            fatal=False,
        )
    return BindProblem(
        f"refusing to serve on {host} without client keys: anyone who can reach it could use "
        "every model. Configure auth.keys, bind a loopback address (127.0.0.1, ::1), or set "
        "auth.allow_unauthenticated: true if something in front of the gateway authenticates",
        fatal=True,
    )
