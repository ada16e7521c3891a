"""gateway.yaml plus the environment, turned into frozen, validated settings.

This is the only module that reads YAML or the environment. Loading goes in three steps: the YAML
is composed into nodes (so every value keeps its line, and duplicate keys are caught), `${VAR}`,
`${VAR:-default}` and `${VAR:?message}` are expanded in string values, and the result is validated
by msgspec into frozen Structs. msgspec rather than pydantic: it is a fraction of the import time
and memory, its Structs are frozen and slotted, and it writes the JSON Schema `gateway schema`
prints. Its error paths drop mapping keys (`$.models[...]`), so the name-keyed sections are
validated entry by entry here and every error names the full key path and the YAML line.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

PROVIDERS = ("openai", "azure", "anthropic", "gemini", "ollama", "tgi", "mock")
Provider = Literal["openai", "azure", "anthropic", "gemini", "ollama", "tgi", "mock"]
Transport = Literal["native", "httpx"]
Balancing = Literal["weighted", "least_in_flight"]
LimitsBackend = Literal["memory", "redis"]
BackendFailure = Literal["local", "deny"]

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class ConfigError(Exception):
    """The configuration is invalid. `errors` lists one `file:line: path: message` per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class Secret:
    """A credential from the config. Its repr never shows the value; `reveal()` does."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class _Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerConfig(_Settings, frozen=True):
    host: str = "127.0.0.1"
    port: Port = 8080
    max_body_bytes: PositiveInt = 10 * 1024 * 1024
    # The gateway's own deadline per request; httpx's read timeout restarts on every chunk.
    request_timeout: PositiveFloat = 600.0
    # Seconds of upstream silence after which an open stream gets an SSE `:` comment; 0 = never.
    sse_keepalive: NonNegativeFloat = 15.0
    # How targets of equal priority share requests: at random by `weight`, or to the one with
    # the fewest requests in flight (ties by weight).
    load_balancing: Balancing = "weighted"
    # SIGTERM: seconds in-flight requests and streams may go on (new ones get 503) before the
    # streams left get an error event and the process exits. Keep it under the platform's kill
    # timeout (Kubernetes: terminationGracePeriodSeconds, 30 by default).
    drain_seconds: NonNegativeFloat = 25.0
    # Request limits, each refused with a clear error: the request line and headers together
    # (431), the nesting depth of the JSON body and the number of messages (400).
    max_header_bytes: PositiveInt = 32 * 1024
    max_json_depth: PositiveInt = 64
    max_messages: PositiveInt = 4096
    # Seconds a client may leave the body unfinished between two reads (slowloris) -> 408,
    # and seconds a response write may stall on a client that stopped reading before the
    # gateway gives up on it (bounded memory per stream).
    body_timeout: PositiveFloat = 30.0
    write_timeout: PositiveFloat = 30.0
    # Seconds a client may take to send a request's line and headers, from its connection or
    # its first byte (slowloris) -> 408 and the connection closed.
    header_timeout: PositiveFloat = 10.0


class Timeouts(_Settings, frozen=True):
    connect: PositiveFloat = 5.0
    read: PositiveFloat = 60.0
    write: PositiveFloat = 10.0
    pool: PositiveFloat = 5.0
    # A stream's wait for its first event, per attempt (None: only `read` and the deadline).
    first_byte: PositiveFloat | None = None


class RateLimit(_Settings, frozen=True):
    """Every limit is optional: absent = unlimited."""

    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    max_concurrent: PositiveInt | None = None
    # Seconds a request may wait for capacity before the chain moves on (or 429).
    max_wait: NonNegativeFloat = 0.5
    # Requests that may wait at once; more are refused at once.
    max_waiters: PositiveInt = 1000


class BreakerSettings(_Settings, frozen=True):
    fail_max: PositiveInt = 5  # consecutive upstream failures that open the breaker
    reset_timeout: PositiveFloat = 30.0  # seconds open before trial requests
    half_open_max_calls: PositiveInt = 1  # trial requests at once while half-open


class RetrySettings(_Settings, frozen=True):
    attempts: PositiveInt = 1  # tries of the same upstream per request (1: no retry)
    backoff_base: NonNegativeFloat = 0.2  # seconds; full jitter over base * 2**retry
    backoff_max: NonNegativeFloat = 5.0
    # Retries in the last 10 s may be this share of the requests of those 10 s, and at least
    # `min_retries`: an outage costs the upstream 20% more requests, not `attempts` times.
    budget: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.2
    min_retries: Annotated[int, msgspec.Meta(ge=0)] = 3


class HealthSettings(_Settings, frozen=True):
    interval: NonNegativeFloat = 30.0  # seconds between probes; 0 turns probing off
    failure_threshold: PositiveInt = 3  # consecutive failed probes that make it unhealthy
    timeout: PositiveFloat = 5.0  # seconds a probe may take


class PoolLimits(_Settings, frozen=True):
    max_connections: PositiveInt = 100
    max_keepalive: Annotated[int, msgspec.Meta(ge=0)] = 20
    keepalive_expiry: NonNegativeFloat = 30.0


class Price(_Settings, frozen=True):
    """USD per million tokens of one upstream model."""

    input: NonNegativeFloat
    output: NonNegativeFloat
    cached_input: NonNegativeFloat | None = None  # prompt tokens read from a cache; default input


class UpstreamConfig(_Settings, frozen=True):
    provider: Provider
    base_url: str | None = None
    api_key: Secret | None = None
    enabled: bool = True
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    timeouts: Timeouts = Timeouts()
    pool: PoolLimits = PoolLimits()
    http2: bool = False
    transport: Transport | None = None
    # PEM file of the CA(s) that sign the upstream's certificate (private CAs); default: certifi's.
    ca_file: str | None = None
    # mock only: seconds before the first streamed token, and the token rate (0 = no pacing).
    ttft: NonNegativeFloat = 0.0
    tokens_per_second: NonNegativeFloat = 0.0
    # Request parameters removed before translation, for servers that reject them.
    drop_params: tuple[str, ...] = ()
    # A parameter the provider cannot honour is dropped instead of answered with a 400.
    drop_unsupported: bool = False
    # anthropic only: max_tokens when the request gives none (the API requires it), by default
    # and per upstream model name.
    default_max_tokens: PositiveInt = 4096
    max_tokens: dict[str, PositiveInt] = msgspec.field(default_factory=dict)
    # azure only: the `api-version` query parameter.
    api_version: str = "2024-10-21"
    rate_limit: RateLimit | None = None
    breaker: BreakerSettings = BreakerSettings()
    retry: RetrySettings = RetrySettings()
    health: HealthSettings = HealthSettings()
    # Upstream model name -> price, for `gateway_cost_usd_total` and `/admin/usage`.
    pricing: dict[str, Price] = msgspec.field(default_factory=dict)

    @property
    def configured(self) -> bool:
        """False when a key was configured but resolved to empty (`${OPENAI_API_KEY:-}`)."""
        return self.api_key is None or bool(self.api_key)


class Target(_Settings, frozen=True):
    upstream: str
    model: str
    # Lower numbers first; targets of equal priority share load by `weight`. Default: the
    # target's 1-based position in its list, so a plain list is an ordered fallback chain.
    priority: Annotated[int, msgspec.Meta(ge=0)] | None = None
    weight: PositiveFloat = 1.0
    # A client's context-length error moves on to this target (one with a larger window)
    # instead of being returned at once.
    larger_context: bool = False


class ClientKey(_Settings, frozen=True):
    """One client key: the key itself (`key`, from the environment) or its SHA-256 in hex
    (`key_sha256`, so the file holds no secret), the public models it may use (globs), and
    limits of its own."""

    name: str
    key: Secret | None = None
    key_sha256: str | None = None
    models: tuple[str, ...] = ("*",)
    rate_limit: RateLimit | None = None


class AuthConfig(_Settings, frozen=True):
    # The admin API's key (`Authorization: Bearer`); none = the admin API is off.
    admin_key: Secret | None = None
    # No keys and a non-loopback address: the gateway refuses to start unless this is true.
    allow_unauthenticated: bool = False
    # Client keys (`Authorization: Bearer <key>` or `api-key: <key>`); none = no client auth.
    keys: tuple[ClientKey, ...] = ()


class LimitsConfig(_Settings, frozen=True):
    """Where rate limits (upstream and per key, per minute) are counted: in this process
    (`memory`), or in Redis, shared by every replica (`redis`)."""

    backend: LimitsBackend = "memory"
    redis_url: Secret | None = None
    # Redis unreachable: count in this process meanwhile (`local`) or refuse with 503 (`deny`).
    on_backend_failure: BackendFailure = "local"
    # Seconds a Redis call (connect, or the admission script) may take before it counts as a
    # failure: a slow Redis must not stall requests.
    redis_timeout: PositiveFloat = 0.1
    # Seconds the limits stay degraded after a Redis failure before Redis is tried again.
    retry_interval: PositiveFloat = 1.0
    # Namespace of the buckets' keys in Redis: `<key_prefix>:{<scope>:<name>}:rpm|tpm`.
    key_prefix: str = "gateway:rl"


class Config(_Settings, frozen=True):
    server: ServerConfig = ServerConfig()
    upstreams: dict[str, UpstreamConfig] = msgspec.field(default_factory=dict)
    models: dict[str, tuple[Target, ...]] = msgspec.field(default_factory=dict)
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    source: str = "<defaults>"


_ONLY: dict[str, tuple[str, ...]] = {
    "ttft": ("mock",),
    "tokens_per_second": ("mock",),
    "default_max_tokens": ("anthropic",),
    "max_tokens": ("anthropic",),
    "api_version": ("azure",),
}
_SECTIONS = ("server", "upstreams", "models", "auth", "limits")
_MIN_KEY_LENGTH = 16  # client keys; shorter ones are guessable
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ENV = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}")


# ---------------------------------------------------------------- loading


def default_config_path() -> Path:
    """--config, then GATEWAY_CONFIG, then ./gateway.yaml, then the copy shipped in the package."""
    if env := os.environ.get("GATEWAY_CONFIG"):
        return Path(env)
    local = Path("gateway.yaml")
    if local.is_file():
        return local
    packaged = Path(__file__).with_name("gateway.yaml")
    if packaged.is_file():
        return packaged
    return Path(__file__).parent.parent / "gateway.yaml"  # an editable install


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a config file. Raises ConfigError naming every problem found."""
    file = Path(path) if path is not None else default_config_path()
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{file}: cannot read config: {exc}"]) from None
    return parse_config(text, source=str(file))


def parse_config(
    text: str, source: str = "<string>", environ: Mapping[str, str] | None = None
) -> Config:
    """Validate YAML `text` (expanding `${...}` from `environ`, default os.environ)."""
    env = os.environ if environ is None else environ
    reader = _Reader(source, env)
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError([f"{source}{line}: invalid YAML: {exc}"]) from None
    try:
        data = reader.to_python(node, "") if node is not None else {}
    except yaml.YAMLError as exc:  # e.g. a tag SafeLoader will not construct
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError([f"{source}{line}: invalid YAML: {exc}"]) from None
    return reader.build(data)  # raises ConfigError with every problem, YAML's and msgspec's


@dataclass
class _Reader:
    """Walks YAML nodes into plain data, remembering the line of every key path."""

    source: str
    environ: Mapping[str, str]

    def __post_init__(self) -> None:
        self.lines: dict[str, int] = {}
        self.explicit: set[str] = set()  # key paths written out, not merged in with `<<`
        self.errors: list[str] = []

    def error(self, path: str, message: str, line: int | None = None) -> None:
        line = line or self.line_of(path)
        where = f"{self.source}:{line}" if line else self.source
        self.errors.append(f"{where}: {path or '(top level)'}: {message}")

    def line_of(self, path: str) -> int | None:
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = _parent(path)

    def to_python(self, node: yaml.Node, path: str) -> object:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            pairs, merged = self.flatten(node)
            out: dict[object, object] = {}
            for position, (key_node, value_node) in enumerate(pairs):
                key = self.scalar(key_node, path) if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, str):
                    self.error(path, "keys must be strings", key_node.start_mark.line + 1)
                    continue
                child = _join(path, key)
                if key in out and child in self.explicit:
                    self.error(child, "duplicate key", key_node.start_mark.line + 1)
                    continue
                if position >= merged:
                    self.explicit.add(child)
                self.lines[child] = key_node.start_mark.line + 1
                out[key] = self.to_python(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.to_python(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        return self.scalar(node, path)

    def flatten(self, node: yaml.MappingNode) -> tuple[list[tuple[yaml.Node, yaml.Node]], int]:
        """The pairs of `node` with `<<` merges resolved, merged ones first, and their count.

        YAML's merge rules: the node's own keys beat merged ones, and of several merged
        mappings (`<<: [*a, *b]`) the first that has a key gives its value. Done here rather
        than by PyYAML's `flatten_mapping`, whose precedence changed between releases (6.0.4
        keeps merged duplicates it used to drop), and without changing the node, which an
        alias may visit again.
        """
        own: list[tuple[yaml.Node, yaml.Node]] = []
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        names: set[object] = set()
        for key_node, value_node in node.value:
            if key_node.tag != "tag:yaml.org,2002:merge":
                own.append((key_node, value_node))
                continue
            sources = (
                value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            )
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"expected a mapping or list of mappings for merging, found {source.id}",
                        source.start_mark,
                    )
                inner, count = self.flatten(source)
                # the source's own keys (after its merged ones) beat its merged keys
                for key_node_, value_node_ in [*inner[count:], *inner[:count]]:
                    name = key_node_.value if isinstance(key_node_, yaml.ScalarNode) else None
                    if name is None or name not in names:
                        names.add(name)
                        merged.append((key_node_, value_node_))
        return [*merged, *own], len(merged)

    def scalar(self, node: yaml.Node, path: str) -> object:
        loader = yaml.SafeLoader("")
        try:
            value: object = loader.construct_object(node, deep=True)
        finally:
            loader.dispose()
        if isinstance(value, str) and "$" in value:
            value = self.expand(value, path)
        return value

    def expand(self, value: str, path: str) -> str:
        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, op, arg = match.group(1), match.group(2), match.group(3)
            current = self.environ.get(name)
            if op == ":-":
                return current if current else arg
            if op == ":?" and not current:
                self.error(path, f"environment variable {name} is required: {arg or 'not set'}")
                return ""
            if current is None:
                self.error(path, f"environment variable {name} is not set (use ${{{name}:-}})")
                return ""
            return current

        return _ENV.sub(substitute, value)

    # ------------------------------------------------------------ validation

    def convert(self, data: object, kind: Any, path: str) -> Any:
        try:
            return msgspec.convert(data, kind, strict=False, dec_hook=_decode_secret)
        except msgspec.ValidationError as exc:
            message, _, where = str(exc).partition(" - at `$")
            sub = where.rstrip("`")
            field = re.search(r"unknown field `([^`]+)`", message)
            missing = re.search(r"missing required field `([^`]+)`", message)
            full = path + sub
            if field:
                full = _join(full, field.group(1))
                message = "unknown key (check the spelling; `gateway schema` lists every key)"
            elif missing:
                full = _join(full, missing.group(1))
                message = "required key is missing"
            self.error(full, message)
            return None

    def build(self, data: object) -> Config:
        if not isinstance(data, dict):
            self.error("", "the config must be a mapping with server, upstreams and models")
            raise ConfigError(self.errors)
        for key in data:
            if key not in _SECTIONS:
                self.error(key, f"unknown key (expected {', '.join(_SECTIONS)})")
        server = self.convert(data.get("server") or {}, ServerConfig, "server")
        auth = self.convert(data.get("auth") or {}, AuthConfig, "auth")
        if auth is not None:
            self.check_keys(auth)
        limits = self.convert(data.get("limits") or {}, LimitsConfig, "limits")
        if limits is not None and limits.backend == "redis" and not limits.redis_url:
            self.error("limits.redis_url", "backend redis needs a redis_url (redis://host:port/db)")
        upstreams = {
            name: upstream
            for name, raw in self.section(data, "upstreams")
            if (upstream := self.upstream(name, raw)) is not None
        }
        models: dict[str, tuple[Target, ...]] = {}
        for name, raw in self.section(data, "models"):
            targets = self.convert(raw, tuple[Target, ...], f"models.{name}")
            if targets is None:
                continue
            if not targets:
                self.error(f"models.{name}", "a model needs at least one target")
            for i, target in enumerate(targets):
                if target.upstream not in upstreams and f"upstreams.{target.upstream}" not in (
                    self.lines
                ):
                    self.error(
                        f"models.{name}[{i}].upstream", f"unknown upstream '{target.upstream}'"
                    )
            models[name] = targets
        if self.errors:
            raise ConfigError(self.errors)
        return Config(
            server=server,
            upstreams=upstreams,
            models=models,
            auth=auth,
            limits=limits,
            source=self.source,
        )

    def check_keys(self, auth: AuthConfig) -> None:
        names: set[str] = set()
        digests: set[str] = set()
        for i, key in enumerate(auth.keys):
            path = f"auth.keys[{i}]"
            if not _NAME.match(key.name):
                self.error(f"{path}.name", "names use letters, digits and . _ : / @ + -")
            elif key.name in names:
                self.error(f"{path}.name", f"duplicate key name '{key.name}'")
            elif key.name == "anonymous":  # usage.ANONYMOUS: requests without a key
                self.error(f"{path}.name", "'anonymous' is reserved for requests without a key")
            names.add(key.name)
            if (key.key is None) == (key.key_sha256 is None):
                self.error(path, "give exactly one of key and key_sha256")
                continue
            if key.key is not None:
                if len(key.key.reveal()) < _MIN_KEY_LENGTH:
                    self.error(
                        f"{path}.key",
                        f"empty or under {_MIN_KEY_LENGTH} characters (is its variable set?)",
                    )
                    continue
                digest = hashlib.sha256(key.key.reveal().encode()).hexdigest()
            else:
                digest = (key.key_sha256 or "").lower()
                if not re.fullmatch(r"[0-9a-f]{64}", digest):
                    self.error(f"{path}.key_sha256", "must be 64 hex digits (sha256sum of the key)")
                    continue
            if digest in digests:
                self.error(path, "the same key is given twice")
            digests.add(digest)
            if not key.models:
                self.error(f"{path}.models", "list the model globs this key may use ('*': all)")

    def section(self, data: dict[object, object], key: str) -> Iterator[tuple[str, object]]:
        raw = data.get(key) or {}
        if not isinstance(raw, dict):
            self.error(key, "must be a mapping of names to settings")
            return
        for name, value in raw.items():
            assert isinstance(name, str)  # to_python only makes string keys
            if not _NAME.match(name):
                self.error(_join(key, name), "names use letters, digits and . _ : / @ + -")
                continue
            yield name, value

    def upstream(self, name: str, raw: object) -> UpstreamConfig | None:
        path = f"upstreams.{name}"
        # msgspec would say `headers[...]`: name the header (the model) that is wrong
        headers = raw.get("headers") if isinstance(raw, dict) else None
        wrong = []
        if isinstance(headers, dict):
            wrong = [f"headers.{k}" for k, v in headers.items() if not isinstance(v, str)]
            for key in wrong:
                self.error(f"{path}.{key}", "header values must be strings")
        limits = raw.get("max_tokens") if isinstance(raw, dict) else None
        if isinstance(limits, dict):
            bad = [k for k, v in limits.items() if not (isinstance(v, int) and v >= 1)]
            for key in bad:
                self.error(f"{path}.max_tokens.{key}", "must be a whole number >= 1")
            wrong += bad
        if wrong:
            return None
        upstream: UpstreamConfig | None = self.convert(raw, UpstreamConfig, path)
        if upstream is None:
            return None
        given = raw if isinstance(raw, dict) else {}
        for key, providers in _ONLY.items():
            if key in given and upstream.provider not in providers:
                only = " and ".join(providers)
                self.error(f"{path}.{key}", f"only the {only} provider takes this key")
        if upstream.provider != "mock" and not upstream.base_url:
            self.error(f"{path}.base_url", f"provider {upstream.provider} needs a base_url")
        if upstream.base_url and not re.match(r"^https?://[^/\s?#]+", upstream.base_url):
            self.error(f"{path}.base_url", "must be an http:// or https:// URL")
        if upstream.http2 and upstream.transport == "native":
            self.error(f"{path}.http2", "HTTP/2 needs transport httpx (native speaks HTTP/1.1)")
        if upstream.ca_file is not None and not Path(upstream.ca_file).is_file():
            self.error(f"{path}.ca_file", f"no such file: {upstream.ca_file}")
        for header, value in upstream.headers.items():
            if not _HEADER_NAME.match(header) or "\r" in value or "\n" in value:
                self.error(f"{path}.headers.{header}", "not a valid HTTP header")
        return upstream


def _decode_secret(kind: type, value: object) -> object:
    if kind is Secret and isinstance(value, str):
        return Secret(value)
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _parent(path: str) -> str:
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else ""


def json_schema() -> dict[str, Any]:
    """The JSON Schema of gateway.yaml, for editors (`gateway schema`)."""

    def hook(kind: type) -> dict[str, Any]:
        # Secret is the only custom type in the settings.
        return {"type": "string", "description": "a secret; use ${ENV_VAR}"}

    schema: dict[str, Any] = msgspec.json.schema(Config, schema_hook=hook)
    defs = schema.get("$defs", {})
    defs.get("Config", {}).get("properties", {}).pop("source", None)
    schema["title"] = "gateway.yaml"
    return schema
