"""Which of a client's headers reach the upstream: end-to-end headers only, never a credential
or anything that says where a request goes (the upstream's own key, host and headers come from
the config alone; see README *Limits and hardening*)."""

from __future__ import annotations

import functools
from collections.abc import MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]

# Client headers that never go upstream: hop-by-hop (RFC 9110 7.6.1), credentials, framing the
# gateway redoes, and routing hints a client must not steer. Names containing these words are
# dropped too, so a provider's credential header the list does not know still stays here.
_NOT_FORWARDED = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "trailers",
        "transfer-encoding", "upgrade", "host", "content-length", "content-type",
        "content-encoding", "accept", "accept-encoding", "expect", "user-agent", "x-request-id",
        "forwarded", "via", "x-real-ip", "openai-organization", "openai-project", "api-key",
    }
)  # fmt: skip
_NOT_FORWARDED_PARTS = (
    "auth", "key", "token", "cookie", "secret", "session", "password", "credential",
    # where a request goes: hosts, URLs, API bases, endpoints, tenants
    "host", "url", "uri", "base", "endpoint", "organization", "project",
)  # fmt: skip
_NOT_FORWARDED_PREFIXES = ("x-forwarded-", "proxy-", "x-gateway-", "x-amz-", "sec-")


@functools.lru_cache(maxsize=1024)  # bounded: header names come from clients
def _forward_name(raw: bytes) -> str | None:
    """The header name to forward as, or None; decided once per distinct name."""
    name = raw.decode("latin-1").lower()
    if (
        name in _NOT_FORWARDED
        or any(part in name for part in _NOT_FORWARDED_PARTS)
        or name.startswith(_NOT_FORWARDED_PREFIXES)
    ):
        return None
    return name


def forward_headers(scope: Scope) -> dict[str, str]:
    """The client's end-to-end headers that may reach the upstream."""
    headers = scope["headers"]
    named = {
        token.strip().lower()
        for key, value in headers
        if key == b"connection"
        for token in value.decode("latin-1").split(",")
    }
    out: dict[str, str] = {}
    for raw, value in headers:
        name = _forward_name(raw)
        if name is not None and name not in named:
            out[name] = value.decode("latin-1")
    return out
