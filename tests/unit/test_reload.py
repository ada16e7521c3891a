"""gateway/reload.py and `Runtime.derive`/`retire`: what a reload keeps, replaces and closes.

Upstreams are OpenAI-style servers behind `httpx.MockTransport`s (the real-socket reload under
load, and SIGHUP, are in tests/integration/test_reload.py). Every test runs its own loop with
`asyncio.run()`; waits are on conditions, each bounded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import yaml

from gateway.app import create_app
from gateway.config import ConfigError, LimitsConfig, load_config
from gateway.errors import UpstreamUnavailable
from gateway.reload import Changes, reload, reloader_of
from gateway.runtime import Runtime
from gateway.upstreams.registry import ConnectionState

KEY = "sk-reload-test-0123456789abcdef"
BOUND = 5.0  # seconds any awaited condition may take before the test fails


class Upstream:
    """One fake upstream: lists models; a request waits while `hold` is clear."""

    def __init__(self) -> None:
        self.hold = asyncio.Event()
        self.hold.set()
        self.arrived = asyncio.Event()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.arrived.set()
        await self.hold.wait()
        return httpx.Response(200, json={"object": "list", "data": []})


def upstream(name: str, **settings: Any) -> dict[str, Any]:
    return {
        "provider": "openai",
        "base_url": f"http://{name}.test/v1",
        "api_key": KEY,
        "health": {"interval": 0},
        **settings,
    }


def write(path: Path, upstreams: dict[str, Any], models: dict[str, str]) -> Path:
    """`models` maps each public model to the upstream serving it."""
    document = {
        "upstreams": upstreams,
        "models": {m: [{"upstream": u, "model": m}] for m, u in models.items()},
    }
    path.write_text(yaml.safe_dump(document))
    return path


V1_UPSTREAMS = {"kept": upstream("kept"), "changed": upstream("changed"), "gone": upstream("gone")}
V1_MODELS = {"m-kept": "kept", "m-changed": "changed", "m-gone": "gone"}
V2_UPSTREAMS = {
    "kept": upstream("kept"),
    "changed": upstream("changed", timeouts={"read": 30}),
    "new": upstream("new"),
}
V2_MODELS = {"m-kept": "kept", "m-changed": "changed", "m-new": "new"}


def run(
    tmp_path: Path, test: Callable[[Runtime, Path, dict[str, Upstream]], Awaitable[None]]
) -> None:
    """Open a runtime on the v1 config in `tmp_path` and run `test` on it; closes it after."""
    path = write(tmp_path / "gateway.yaml", V1_UPSTREAMS, V1_MODELS)
    fakes = {name: Upstream() for name in ("kept", "changed", "gone", "new")}

    async def main() -> None:
        transports = {n: httpx.MockTransport(f.handle) for n, f in fakes.items()}
        rt = await Runtime.open(load_config(path), transports)
        try:
            await test(rt, path, fakes)
        finally:
            await rt.aclose()

    asyncio.run(main())


async def probe(rt: Runtime, name: str) -> int:
    """Send `name`'s health probe through `rt`'s clients; its status."""
    upstream = rt.upstreams[name]
    reply = await rt.clients.send(name, upstream.translator.health_probe(upstream.config))
    try:
        await reply.read()
    finally:
        await reply.aclose()
    return reply.status


async def closed(rt: Runtime, name: str) -> bool:
    try:
        await probe(rt, name)
    except UpstreamUnavailable:
        return True
    return False


async def wait_closed(rt: Runtime, *names: str) -> None:
    """Until `rt`'s clients of `names` are closed (a poll: closing signals nothing)."""
    async with asyncio.timeout(BOUND):
        for name in names:
            while not await closed(rt, name):  # noqa: ASYNC110
                await asyncio.sleep(0.01)


# ------------------------------------------------------------------- derive and retire


def test_derive_keeps_unchanged_upstreams_and_replaces_changed_and_new_ones(tmp_path):
    async def test(old: Runtime, path: Path, fakes: dict[str, Upstream]) -> None:
        kept = old.upstreams["kept"]
        kept.enabled = False  # an admin's switch survives a reload of an unchanged upstream
        kept.state = ConnectionState.UNHEALTHY
        new = await old.derive(load_config(write(path, V2_UPSTREAMS, V2_MODELS)))
        try:
            assert new.upstreams["kept"] is kept
            assert (kept.enabled, kept.state) == (False, ConnectionState.UNHEALTHY)
            assert new.guards["kept"] is old.guards["kept"]
            # The same client object, hence the same pool (private: nothing public names it).
            assert new.clients._clients["kept"] is old.clients._clients["kept"]

            assert new.upstreams["changed"] is not old.upstreams["changed"]
            assert new.upstreams["changed"].config.timeouts.read == 30
            assert new.upstreams["changed"].enabled
            assert new.guards["changed"] is not old.guards["changed"]
            assert new.guards["changed"].breaker is not old.guards["changed"].breaker
            assert new.clients._clients["changed"] is not old.clients._clients["changed"]

            assert set(new.upstreams) == {"kept", "changed", "new"}
            assert set(new.guards) == {"kept", "changed", "new"}
            assert sorted(new.routes.models) == ["m-changed", "m-kept", "m-new"]
            assert new.routes.chain_for("m-changed")[0][0] is new.upstreams["changed"]
            assert new.started == old.started
            assert new.metrics is old.metrics
            assert await probe(new, "new") == 200
            # Deriving leaves the old runtime whole: it still serves what started on it.
            assert await probe(old, "changed") == 200
            assert await probe(old, "gone") == 200
            assert sorted(old.routes.models) == ["m-changed", "m-gone", "m-kept"]
        finally:
            await new.retire(old, drain=0)  # what the new one does not share with the old
            await old.retire(new, drain=0)

    run(tmp_path, test)


def test_a_changed_limits_section_rebuilds_the_limiters_of_kept_upstreams(tmp_path):
    async def test(old: Runtime, path: Path, fakes: dict[str, Upstream]) -> None:
        changed = LimitsConfig(on_backend_failure="deny")
        new = await old.derive(msgspec.structs.replace(old.config, limits=changed))
        try:
            kept, before = new.guards["kept"], old.guards["kept"]
            assert new.upstreams["kept"] is old.upstreams["kept"]
            assert kept.limiter is not before.limiter  # counted under the new limits
            assert (kept.breaker, kept.budget) == (before.breaker, before.budget)
        finally:
            await new.retire(old, drain=0)
            await old.retire(new, drain=0)

    run(tmp_path, test)


def test_retire_closes_removed_and_changed_clients_once_their_requests_are_done(tmp_path):
    async def test(old: Runtime, path: Path, fakes: dict[str, Upstream]) -> None:
        new = await old.derive(load_config(write(path, V2_UPSTREAMS, V2_MODELS)))
        # A request on the old runtime's `changed` upstream, still waiting for its answer.
        fakes["changed"].hold.clear()
        old.upstreams["changed"].in_flight += 1
        slow = asyncio.create_task(probe(old, "changed"))
        async with asyncio.timeout(BOUND):
            await fakes["changed"].arrived.wait()

        retire = asyncio.create_task(old.retire(new, drain=BOUND * 2))
        await wait_closed(old, "gone")  # idle: closed at once
        done, _ = await asyncio.wait({retire}, timeout=0.3)
        assert not done  # still draining `changed`

        fakes["changed"].hold.set()
        assert await asyncio.wait_for(slow, BOUND) == 200  # it finished on its old client
        old.upstreams["changed"].in_flight -= 1
        await asyncio.wait_for(retire, BOUND)
        assert await closed(old, "changed")
        # Shared and new clients are untouched; so are the successor's own.
        assert await probe(old, "kept") == 200
        assert await probe(new, "kept") == 200
        assert await probe(new, "changed") == 200
        await new.retire(old, drain=0)

    run(tmp_path, test)


def test_retire_cuts_what_is_still_in_flight_after_the_drain(tmp_path):
    async def test(old: Runtime, path: Path, fakes: dict[str, Upstream]) -> None:
        new = await old.derive(load_config(write(path, V2_UPSTREAMS, V2_MODELS)))
        old.upstreams["gone"].in_flight += 1  # never finishes
        await asyncio.wait_for(old.retire(new, drain=0.2), BOUND)
        assert await closed(old, "gone")
        assert await closed(old, "changed")
        await new.retire(old, drain=0)

    run(tmp_path, test)


def test_changes_name_what_a_reload_changes(tmp_path):
    before = load_config(write(tmp_path / "a.yaml", V1_UPSTREAMS, V1_MODELS))
    after = load_config(write(tmp_path / "b.yaml", V2_UPSTREAMS, V2_MODELS))
    changes = Changes.between(before, after)
    assert changes.fields() == {
        "upstreams_added": "new",
        "upstreams_removed": "gone",
        "upstreams_changed": "changed",
        "models_added": "m-new",
        "models_removed": "m-gone",
    }
    assert Changes.between(before, before).fields() == {}


# ------------------------------------------------------------------- reload(app)


def reload_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "gateway.reload"]


def run_app(tmp_path: Path, test: Callable[[Any, Runtime, Path], Awaitable[None]]) -> None:
    """`test(app, rt, path)` on an app serving a runtime opened on the v1 config."""

    async def body(rt: Runtime, path: Path, fakes: dict[str, Upstream]) -> None:
        app = create_app(rt.config, runtime=rt)
        try:
            await test(app, rt, path)
        finally:
            await reloader_of(app).aclose()
            if app.state.runtime is not rt:
                await app.state.runtime.retire(rt, drain=0)

    run(tmp_path, body)


def test_reload_swaps_the_runtime_and_logs_what_changed(tmp_path, caplog):
    caplog.set_level(logging.INFO, "gateway.reload")

    async def test(app: Any, old: Runtime, path: Path) -> None:
        write(path, V2_UPSTREAMS, V2_MODELS)
        config = await reload(app)
        new = app.state.runtime
        assert new is not old
        assert new.config is config
        assert "m-new" in new.routes.models
        assert new.upstreams["kept"] is old.upstreams["kept"]
        # The old runtime's leftovers close in the background once idle.
        await wait_closed(old, "gone", "changed")
        assert await probe(new, "changed") == 200

    run_app(tmp_path, test)
    [line] = reload_lines(caplog)
    assert line.levelno == logging.INFO
    assert line.getMessage() == "config reloaded"
    assert line.__dict__["upstreams_added"] == "new"
    assert line.__dict__["upstreams_removed"] == "gone"
    assert line.__dict__["upstreams_changed"] == "changed"
    assert line.__dict__["models_added"] == "m-new"
    assert line.__dict__["models_removed"] == "m-gone"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("upstreams: [\n", "invalid YAML"),
        ("upstreams: {a: {provider: nope}}\n", "upstreams.a.provider"),
        ("models: {m: [{upstream: nowhere, model: x}]}\n", "unknown upstream 'nowhere'"),
    ],
)
def test_an_invalid_file_changes_nothing_and_reports_its_error(tmp_path, caplog, text, expected):
    caplog.set_level(logging.INFO, "gateway.reload")

    async def test(app: Any, old: Runtime, path: Path) -> None:
        await asyncio.to_thread(path.write_text, text)
        with pytest.raises(ConfigError) as raised:
            await reload(app)
        assert expected in str(raised.value)
        assert str(path) in str(raised.value)
        assert app.state.runtime is old
        for name in ("kept", "changed", "gone"):
            assert await probe(old, name) == 200

    run_app(tmp_path, test)
    [line] = reload_lines(caplog)
    assert line.levelno == logging.ERROR
    assert expected in line.__dict__["error"]


def test_a_reload_that_drops_every_client_key_is_refused_beyond_loopback(tmp_path):
    """The start-up rule (no client keys only on loopback) holds for reloads of a gateway that
    `gateway serve` bound to another address; on loopback the same file applies."""

    async def test(app: Any, old: Runtime, path: Path) -> None:
        write(path, V2_UPSTREAMS, V2_MODELS)  # no auth.keys
        app.state.bound_host = "0.0.0.0"
        with pytest.raises(ConfigError, match=r"without client keys.*\(serving on 0\.0\.0\.0\)"):
            await reload(app)
        assert app.state.runtime is old
        app.state.bound_host = "127.0.0.1"
        await reload(app)
        assert app.state.runtime is not old

    run_app(tmp_path, test)


def test_a_missing_file_changes_nothing(tmp_path, caplog):
    async def test(app: Any, old: Runtime, path: Path) -> None:
        await asyncio.to_thread(path.unlink)
        with pytest.raises(ConfigError, match="cannot read config"):
            await reload(app)
        assert app.state.runtime is old

    run_app(tmp_path, test)


def test_an_unchanged_file_keeps_the_runtime(tmp_path, caplog):
    caplog.set_level(logging.INFO, "gateway.reload")

    async def test(app: Any, old: Runtime, path: Path) -> None:
        assert await reload(app) == old.config
        assert app.state.runtime is old

    run_app(tmp_path, test)
    assert [r.getMessage() for r in reload_lines(caplog)] == ["config reloaded: no change"]


def test_reloads_take_turns(tmp_path, caplog):
    caplog.set_level(logging.INFO, "gateway.reload")

    async def test(app: Any, old: Runtime, path: Path) -> None:
        write(path, V2_UPSTREAMS, V2_MODELS)
        first, second = await asyncio.gather(reload(app), reload(app))
        assert first == second
        # The second read the file after the first had swapped: one runtime, derived once.
        assert app.state.runtime.config is first

    run_app(tmp_path, test)
    assert [r.getMessage() for r in reload_lines(caplog)] == [
        "config reloaded",
        "config reloaded: no change",
    ]
