"""The `gateway` command: serve, check, schema, and the admin commands of `cli_admin.py`
(status, enable, disable, connect, disconnect, test, reload, usage) that talk to a running
gateway's admin API.

Exit codes: 0 ok, 1 failure (an invalid config included), 2 usage error, 3 gateway unreachable
(admin commands).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from gateway import __version__, cli_admin
from gateway.config import Config, ConfigError, json_schema, load_config

log = logging.getLogger("gateway")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    code: int = args.run(args)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description="An OpenAI-compatible LLM gateway."
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway")
    _config_option(serve)
    serve.add_argument("--host", help="address to bind (overrides server.host)")
    serve.add_argument("--port", type=int, help="port to bind (overrides server.port)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", default="text", choices=["text", "json"])
    serve.add_argument(
        "--workers", type=_positive, default=1, metavar="N",
        help="worker processes (default 1); metrics then use prometheus-client's multiprocess mode",
    )  # fmt: skip
    serve.set_defaults(run=_serve)

    check = commands.add_parser("check", help="validate the config and exit 0 (valid) or 1")
    _config_option(check)
    check.set_defaults(run=_check)

    schema = commands.add_parser("schema", help="print the config's JSON Schema")
    schema.set_defaults(run=_schema)
    cli_admin.add_commands(commands)  # status, enable, ..., reload, usage
    return parser


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="config file (default: $GATEWAY_CONFIG, else ./gateway.yaml, else the shipped one)",
    )


def _load(args: argparse.Namespace) -> Config | None:
    try:
        return load_config(args.config)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"error: {line}", file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 1
    unconfigured = [n for n, u in config.upstreams.items() if not u.configured]
    print(
        f"{config.source}: ok ({len(config.upstreams)} upstreams, {len(config.models)} models"
        + (f"; unconfigured: {', '.join(unconfigured)}" if unconfigured else "")
        + ")"
    )
    from gateway.auth import bind_problem  # the admin commands stay fast without it

    problem = bind_problem(config, config.server.host)
    if problem is not None:  # `serve --host` may still pick a loopback address: not an error
        said = "error" if problem.fatal else "warning"
        print(f"note: `gateway serve` on server.host would say: {said}: {problem.message}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn  # the other commands stay fast without it

    from gateway.app import create_app
    from gateway.auth import bind_problem
    from gateway.logs import setup_logging

    setup_logging(args.log_level, args.log_format)
    config = _load(args)
    if config is None:
        return 1
    host = args.host or config.server.host
    if (problem := bind_problem(config, host)) is not None:  # no client keys, not loopback
        if problem.fatal:
            print(f"error: {problem.message}", file=sys.stderr)
            return 1
        log.warning(problem.message)
    port = config.server.port if args.port is None else args.port
    if args.workers > 1:
        return _serve_workers(args, config, host, port)
    app = create_app(config)
    app.state.bound_host = host  # a reload keeps to the start-up rule (bind_problem) for it
    server = uvicorn.Server(uvicorn.Config(app, **_uvicorn_options(args, host, port)))
    # uvicorn re-raises the SIGINT/SIGTERM it shut down on once it is done, with the handler that
    # was installed before it ran: with these no-op handlers a clean shutdown exits 0.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, lambda signum, frame: None)
    server.run()
    return 0 if server.started else 1


# ------------------------------------------------------------------- serve --workers N

_WORKER_CONFIG = "GATEWAY_WORKER_CONFIG"  # what the parent tells its workers
_WORKER_LOG = "GATEWAY_WORKER_LOG"
_WORKER_HOST = "GATEWAY_WORKER_HOST"
_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's multiprocess switch


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _serve_workers(args: argparse.Namespace, config: Config, host: str, port: int) -> int:
    """Serve with `args.workers` uvicorn worker processes sharing one socket. Each worker
    re-reads the config file the parent validated and builds its own app (`worker_app`);
    metrics go through prometheus-client's multiprocess mode, in `$PROMETHEUS_MULTIPROC_DIR`
    (emptied first: files of an earlier run would add up) or a temporary directory."""
    import shutil
    import tempfile

    import uvicorn

    if config.source.startswith("<"):
        print("error: --workers needs a config file", file=sys.stderr)
        return 1
    given = os.environ.get(_MULTIPROC_DIR)
    directory = given or tempfile.mkdtemp(prefix="gateway-metrics-")
    if given:
        shutil.rmtree(given, ignore_errors=True)
    os.makedirs(directory, exist_ok=True)
    os.environ[_MULTIPROC_DIR] = directory  # inherited by the workers, read at their import
    os.environ[_WORKER_CONFIG] = config.source
    os.environ[_WORKER_HOST] = host
    os.environ[_WORKER_LOG] = f"{args.log_level},{args.log_format}"
    try:
        uvicorn.run(
            "gateway.cli:worker_app",
            factory=True,
            workers=args.workers,
            **_uvicorn_options(args, host, port),
        )
    finally:
        if not given:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


def worker_app() -> object:
    """The app of one `serve --workers` worker process (uvicorn's factory)."""
    import atexit

    from prometheus_client import multiprocess

    from gateway.app import create_app
    from gateway.logs import setup_logging

    level, fmt = os.environ[_WORKER_LOG].split(",")
    setup_logging(level, "json" if fmt == "json" else "text")
    config = load_config(os.environ[_WORKER_CONFIG])
    # Its live gauges (in flight, pool figures, states) leave the sums when it exits.
    atexit.register(multiprocess.mark_process_dead, os.getpid())
    app = create_app(config)
    app.state.bound_host = os.environ[_WORKER_HOST]
    return app


def _uvicorn_options(args: argparse.Namespace, host: str, port: int) -> dict[str, Any]:
    """How `serve` runs uvicorn, with one process or several: the request line replaces the
    access log, logging is ours, no server header, no proxy headers trusted, no WebSockets;
    httptools with the gateway's limits on heads, slow clients and stalled writes
    (gateway/http.py), which the tests' servers use too."""
    from gateway.http import GatewayHttpProtocol

    return {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": GatewayHttpProtocol,
        "ws": "none",
        "lifespan": "on",
        "access_log": False,
        "log_config": None,
        "log_level": args.log_level,
        "server_header": False,
        "proxy_headers": False,
        # After a SIGTERM the gateway's own drain (server.drain_seconds, gateway/lifecycle.py)
        # has ended its requests; this only bounds what is left (and SIGINT's quick stop).
        "timeout_graceful_shutdown": 3,
    }
