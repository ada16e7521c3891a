"""Config hot reload: `POST /admin/reload` and `SIGHUP` re-read the file the running config came
from and swap the app's runtime for one built from it.

`reload(app)` reads and validates the file first: an invalid one changes nothing and raises its
`ConfigError`. A valid one becomes a new `Runtime` derived from the running one
(`Runtime.derive`: unchanged upstreams keep their state, pools, breakers, limiters and retry
budgets; changed and new ones start fresh; routes and models are rebuilt), which replaces
`app.state.runtime` in one assignment. A request reads `app.state.runtime` once, when it starts,
so requests in flight finish on the runtime they started with; the old runtime then closes the
clients nothing uses any more once their requests are done (`Runtime.retire`, bounded by the
old config's `server.request_timeout`, which no request outlives). The health probes follow the
swap (the task runs on the current runtime's prober). Each outcome is one line on the
`gateway.reload` logger saying what changed.

`Reloader` is the per-app state (on `app.state.reloader`): the lock that keeps two reloads from
interleaving, the probe task and the old runtimes' drains. The lifespan creates it, starts the
probes, installs the SIGHUP handler (`install_sighup`) and closes it at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass

from starlette.applications import Starlette

from gateway.auth import bind_problem
from gateway.config import Config, ConfigError, load_config
from gateway.logs import redact
from gateway.runtime import Runtime

log = logging.getLogger("gateway.reload")

_DRAIN_MARGIN = 5.0  # seconds past the longest request deadline before a drain cuts


@dataclass(frozen=True, slots=True)
class Changes:
    """What a reload changed, by name."""

    upstreams_added: tuple[str, ...] = ()
    upstreams_removed: tuple[str, ...] = ()
    upstreams_changed: tuple[str, ...] = ()
    models_added: tuple[str, ...] = ()
    models_removed: tuple[str, ...] = ()
    models_changed: tuple[str, ...] = ()  # their targets changed
    other: tuple[str, ...] = ()  # other top-level sections that changed: server, auth

    @classmethod
    def between(cls, old: Config, new: Config) -> Changes:
        def diff(
            before: dict[str, object], after: dict[str, object]
        ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
            added = tuple(n for n in after if n not in before)
            removed = tuple(n for n in before if n not in after)
            changed = tuple(n for n in after if n in before and before[n] != after[n])
            return added, removed, changed

        upstreams = diff(dict(old.upstreams), dict(new.upstreams))
        models = diff(dict(old.models), dict(new.models))
        other = tuple(
            section
            for section in ("server", "auth")
            if getattr(old, section) != getattr(new, section)
        )
        return cls(*upstreams, *models, other)

    def fields(self) -> dict[str, str]:
        """The non-empty changes as log fields (names joined by commas)."""
        return {
            key: ",".join(names)
            for key, names in (
                ("upstreams_added", self.upstreams_added),
                ("upstreams_removed", self.upstreams_removed),
                ("upstreams_changed", self.upstreams_changed),
                ("models_added", self.models_added),
                ("models_removed", self.models_removed),
                ("models_changed", self.models_changed),
                ("other_changed", self.other),
            )
            if names
        }


class Reloader:
    """One app's reload state. Build it on the running loop (the lifespan does)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()  # one reload at a time
        self.probes: asyncio.Task[None] | None = None  # the health probes of the current runtime
        self._tasks: set[asyncio.Task[None]] = set()  # drains of old runtimes, SIGHUP reloads

    def start_probes(self, rt: Runtime) -> None:
        self.probes = asyncio.get_running_loop().create_task(rt.prober.run(), name="health")

    async def stop_probes(self) -> None:
        probes, self.probes = self.probes, None
        if probes is not None:
            probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probes

    def spawn(self, work: Coroutine[object, object, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop the probes, and cut the drains still running (each closes its clients)."""
        await self.stop_probes()
        while self._tasks:  # a reload cut short may have spawned a drain meanwhile
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)
        await self.stop_probes()  # in case that reload had started new ones


def reloader_of(app: Starlette) -> Reloader:
    """The app's Reloader, made on first use when no lifespan made one (a test's runtime)."""
    reloader: Reloader | None = getattr(app.state, "reloader", None)
    if reloader is None:
        reloader = app.state.reloader = Reloader()
    return reloader


async def reload(app: Starlette) -> Config:
    """Re-read the running config's file (`config.source`) and apply it; returns the new config.

    Raises ConfigError (and changes nothing) when the file is unreadable or invalid, or a
    client for it cannot be built. Reloads take turns; one outcome line is logged either way.
    """
    reloader = reloader_of(app)
    async with reloader.lock:
        old: Runtime = app.state.runtime
        source = old.config.source
        try:
            try:
                config = await asyncio.to_thread(load_config, source)
            except ConfigError:
                raise
            except Exception as exc:  # e.g. a file the loader chokes on in a way it does not name
                raise ConfigError([f"{source}: cannot load config: {exc}"]) from None
            if config == old.config:
                log.info("config reloaded: no change", extra={"config": source})
                return config
            # `gateway serve` records the address it bound: the start-up rule holds for reloads.
            host: str | None = getattr(app.state, "bound_host", None)
            if host is not None and (problem := bind_problem(config, host)) and problem.fatal:
                raise ConfigError([f"{source}: {problem.message} (serving on {host})"])
            changes = Changes.between(old.config, config)
            try:
                new = await old.derive(config)
            except Exception as exc:
                raise ConfigError([f"{source}: cannot apply config: {exc}"]) from None
        except ConfigError as exc:
            secrets = [s for u in old.upstreams.values() for s in u.secrets]
            errors = [redact(line, secrets) for line in exc.errors]
            log.error(
                "config reload failed; the running config is unchanged",
                extra={"config": source, "error": "; ".join(errors)},
            )
            raise ConfigError(errors) from None

        app.state.runtime = new  # the swap: every request from here on starts on `new`
        drain = old.config.server.request_timeout + _DRAIN_MARGIN
        reloader.spawn(old.retire(new, drain), name="reload-drain")
        if reloader.probes is not None:  # a test's own runtime runs no probes
            await reloader.stop_probes()
            reloader.start_probes(new)
        fields = {"config": source, **changes.fields()}
        if restart := [
            f"server.{key}"
            for key in ("host", "port")
            if getattr(old.config.server, key) != getattr(config.server, key)
        ]:
            fields["needs_restart"] = ",".join(restart)  # the socket is bound already
        log.info("config reloaded", extra=fields)
        return config


def install_sighup(app: Starlette) -> Callable[[], None]:
    """Reload on SIGHUP, when this loop can take signals (the main thread of `gateway serve`);
    elsewhere (a test's server thread, Windows) a no-op. Returns what uninstalls it."""
    if threading.current_thread() is not threading.main_thread():
        return _nothing
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is None:
        return _nothing
    loop = asyncio.get_running_loop()
    reloader = reloader_of(app)

    def on_hangup() -> None:
        reloader.spawn(_reload_logged(app), name="sighup-reload")

    try:
        loop.add_signal_handler(hangup, on_hangup)
    except (NotImplementedError, RuntimeError, ValueError):
        return _nothing

    def uninstall() -> None:
        loop.remove_signal_handler(hangup)

    return uninstall


async def _reload_logged(app: Starlette) -> None:
    with contextlib.suppress(ConfigError):  # reload() logged it
        await reload(app)


def _nothing() -> None:
    pass
