"""gateway/upstreams/registry.py: where each upstream starts, and why it may not take traffic."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import Secret, UpstreamConfig
from gateway.upstreams.registry import ConnectionState, HealthRecord, Registry, Upstream


def registry(**upstreams: dict[str, Any]) -> Registry:
    return Registry({name: UpstreamConfig(**fields) for name, fields in upstreams.items()})


def one(**fields: Any) -> Upstream:
    fields.setdefault("provider", "openai")
    fields.setdefault("base_url", "http://127.0.0.1:1/v1")
    return registry(up=fields)["up"]


def test_every_upstream_starts_connected_and_enabled_as_configured():
    upstreams = registry(on={"provider": "mock"}, off={"provider": "mock", "enabled": False})
    assert [u.state for u in upstreams.values()] == [ConnectionState.CONNECTED] * 2
    assert upstreams["on"].enabled is True
    assert upstreams["off"].enabled is False
    on = upstreams["on"]
    assert (on.in_flight, on.last_used, on.health) == (0, None, HealthRecord())
    assert on.unusable is None


def test_disabled_upstream_is_unusable():
    upstream = one(enabled=False)
    assert upstream.unusable == "upstream 'up' is disabled"
    upstream.enabled = True
    assert upstream.unusable is None


def test_upstream_with_empty_key_is_unusable_whatever_its_state():
    upstream = one(api_key=Secret(""))
    assert upstream.unusable == "upstream 'up' is not configured (its api_key is empty)"
    upstream.enabled = False
    assert upstream.unusable is not None
    assert "not configured" in upstream.unusable


@pytest.mark.parametrize(
    "state",
    [ConnectionState.DISCONNECTED, ConnectionState.CONNECTING, ConnectionState.DISCONNECTING],
)
def test_upstream_out_of_connection_is_unusable(state):
    upstream = one()
    upstream.state = state
    assert upstream.unusable == f"upstream 'up' is {state.value}"


def test_unhealthy_upstream_is_unusable_with_its_reason():
    upstream = one()
    upstream.state = ConnectionState.UNHEALTHY
    assert upstream.unusable == "upstream 'up' is unhealthy"
    upstream.state_reason = "3 health checks failed in a row"
    assert upstream.unusable == "upstream 'up' is unhealthy: 3 health checks failed in a row"
    upstream.state = ConnectionState.CONNECTED
    assert upstream.unusable is None


def test_disabled_is_reported_before_the_connection_state():
    upstream = one(enabled=False)
    upstream.state = ConnectionState.UNHEALTHY
    assert upstream.unusable == "upstream 'up' is disabled"


def test_state_names_are_the_admin_api_words():
    assert [s.value for s in ConnectionState] == [
        "disconnected",
        "connecting",
        "connected",
        "unhealthy",
        "disconnecting",
    ]
    assert ConnectionState("unhealthy") is ConnectionState.UNHEALTHY
