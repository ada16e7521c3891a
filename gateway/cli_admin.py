"""The admin commands of `gateway`: status, enable, disable, connect, disconnect, test, reload
and usage, each a client of a running gateway's admin API (`gateway/api/admin.py`).

Each takes `--url` (default http://127.0.0.1:8080) and reads the admin key from
`GATEWAY_ADMIN_KEY` (an environment variable, not a flag, so it stays out of `ps` and shell
history). `--json` prints the API's answer for scripts instead of a table. Exit codes: 0 ok;
1 failure (the gateway answered an error, an upstream stayed unconnected, a test failed, a
reload was refused); 2 usage error (argparse); 3 the gateway could not be reached (connection
refused, timeout). Tables are aligned plain text, coloured only when stdout is a terminal and
`NO_COLOR` is unset.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote

if TYPE_CHECKING:
    import httpx

DEFAULT_URL = "http://127.0.0.1:8080"
KEY_VARIABLE = "GATEWAY_ADMIN_KEY"

OK, FAILED, USAGE, UNREACHABLE = 0, 1, 2, 3


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the admin commands to the `gateway` parser's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=DEFAULT_URL, help=f"the gateway's base URL (default: {DEFAULT_URL})"
    )
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    common.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the gateway (default: 60)",
    )
    key_note = f" (admin key from ${KEY_VARIABLE})"

    def command(name: str, summary: str, run: Callable[[argparse.Namespace], int]) -> Any:
        parser = subparsers.add_parser(name, parents=[common], help=summary + key_note)
        parser.set_defaults(run=lambda args: _guarded(run, args))
        return parser

    command("status", "show every upstream of a running gateway", _status)
    command("enable", "let an upstream take traffic", _switch("enable")).add_argument("name")
    command("disable", "stop traffic to an upstream", _switch("disable")).add_argument("name")
    for verb, summary in (
        ("connect", "open an upstream's pool and probe it (no NAME: every upstream)"),
        ("disconnect", "drain and close an upstream's pool (no NAME: every upstream)"),
    ):
        command(verb, summary, _connection(verb)).add_argument("name", nargs="?")
    test = command("test", "send a short prompt through one upstream alone", _test)
    test.add_argument("name")
    test.add_argument("--prompt", help="what to send (default: a one-word question)")
    test.add_argument("--model", help="the upstream's model to ask (default: its first target)")
    command("reload", "re-read the running gateway's config file", _reload)
    command("usage", "tokens and cost since start, per key, model and upstream", _usage)


# ---------------------------------------------------------------- talking to the gateway


def _guarded(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return run(args)
    except _Exit as exc:
        return exc.code


def _call(
    args: argparse.Namespace, method: str, path: str, body: dict[str, object] | None = None
) -> Any:
    """The gateway's JSON answer to `method path`; on an error answer or no answer, prints why
    to stderr and raises _Exit (1 or 3)."""
    import httpx  # the other commands stay fast without it

    key = os.environ.get(KEY_VARIABLE, "")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    url = args.url.rstrip("/") + path
    try:
        with httpx.Client(timeout=args.timeout, trust_env=False) as client:
            response = client.request(method, url, headers=headers, json=body)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        _fail(UNREACHABLE, f"cannot reach the gateway at {args.url}: {exc}")
    except httpx.TimeoutException:
        _fail(UNREACHABLE, f"the gateway at {args.url} did not answer within {args.timeout:g} s")
    except httpx.HTTPError as exc:
        _fail(UNREACHABLE, f"cannot talk to the gateway at {args.url}: {exc}")
    if response.is_success:
        try:
            return response.json()
        except ValueError:
            _fail(FAILED, f"{args.url} answered {method} {path} with something not JSON")
    _fail(FAILED, _explain(response, key))


def _explain(response: httpx.Response, key: str) -> str:
    try:
        error = response.json()["error"]
        message, code = str(error["message"]), error.get("code")
    except (ValueError, KeyError, TypeError):
        message, code = response.text[:200] or response.reason_phrase, None
    text = f"the gateway answered {response.status_code}: {message}"
    if response.status_code == 401:
        text += f"\nhint: {'set' if not key else 'check'} ${KEY_VARIABLE}"
    elif response.status_code == 404 and code == "not_found":
        text += "\nhint: the admin API is off unless the gateway's config sets auth.admin_key"
    return text


def _fail(code: int, message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise _Exit(code)


def _path(name: str, action: str = "") -> str:
    return f"/admin/upstreams/{quote(name, safe='')}" + (f"/{action}" if action else "")


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


# ---------------------------------------------------------------- commands


def _status(args: argparse.Namespace) -> int:
    listing = _call(args, "GET", "/admin/upstreams")
    if args.json:
        _print_json(listing)
        return OK
    now = float(listing.get("now") or time.time())
    rows = [_status_row(u, now) for u in listing["data"]]
    _table(
        [
            "UPSTREAM",
            "PROVIDER",
            "ENABLED",
            "STATE",
            "HEALTH",
            "BREAKER",
            "IN-FLIGHT",
            "POOL",
            "REQUESTS",
            "ERRORS",
            "P50",
            "LAST USED",
        ],
        rows,
        right={6, 7, 8, 9, 10},
    )
    return OK


def _status_row(u: dict[str, Any], now: float) -> list[str]:
    pool = u["pool"]
    return [
        u["name"],
        u["provider"],
        "yes" if u["enabled"] else "no",
        u["state"] if u.get("configured", True) else "unconfigured",
        _health(u["health"]),
        u["breaker"]["state"].replace("_", "-"),
        str(u["in_flight"]),
        f"{pool['active']}/{pool['max_connections']}",
        _count(u.get("requests")),
        _count(u.get("errors")),
        "-" if u.get("p50_ms") is None else f"{u['p50_ms']:.0f} ms",
        _ago(u.get("last_used"), now),
    ]


def _health(health: dict[str, Any]) -> str:
    success, failure = health.get("last_success"), health.get("last_error_at")
    latency = health.get("latency_ms")
    took = "" if latency is None else f" {latency:.0f} ms"
    if success is None and failure is None:
        return "unchecked"
    if failure is None or (success is not None and success >= failure):
        return "ok" + took
    return f"failing ({health.get('consecutive_failures', 0)})"


def _count(value: object) -> str:
    return "-" if value is None else str(value)


def _ago(when: float | None, now: float) -> str:
    if when is None:
        return "never"
    seconds = max(0.0, now - when)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _switch(action: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        view = _call(args, "POST", _path(args.name, action))
        if args.json:
            _print_json(view)
        else:
            print(f"{view['name']}: {action}d (state {view['state']})")
        return OK

    return run


def _connection(action: str) -> Callable[[argparse.Namespace], int]:
    """connect/disconnect one upstream, or all of them at once (disconnects drain in parallel)."""
    wanted = "connected" if action == "connect" else "disconnected"

    def one(args: argparse.Namespace, name: str) -> dict[str, Any] | int:
        try:
            view: dict[str, Any] = _call(args, "POST", _path(name, action))
        except _Exit as exc:
            return exc.code
        return view

    def run(args: argparse.Namespace) -> int:
        if args.name is not None:
            names = [args.name]
        else:
            names = [u["name"] for u in _call(args, "GET", "/admin/upstreams")["data"]]
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(names)))) as pool:
            outcomes = list(pool.map(lambda n: one(args, n), names))
        views = [o for o in outcomes if isinstance(o, dict)]
        codes = [o for o in outcomes if isinstance(o, int)]
        if args.json:
            _print_json(views)
        code = max(codes, default=OK)
        for view in views:
            reached = view["state"] == wanted
            if not args.json:
                reason = "" if reached else f": {view['state_reason'] or view['state']}"
                print(f"{view['name']}: {view['state']}{reason}")
            if not reached:
                code = max(code, FAILED)
        return code

    return run


def _test(args: argparse.Namespace) -> int:
    body: dict[str, object] = {}
    if args.prompt is not None:
        body["prompt"] = args.prompt
    if args.model is not None:
        body["model"] = args.model
    result = _call(args, "POST", _path(args.name, "test"), body)
    if args.json:
        _print_json(result)
    else:
        status = "-" if result["status"] is None else str(result["status"])
        head = f"{result['upstream']} ({result['model']}): status {status}, "
        head += f"{result['latency_ms']:.0f} ms"
        if result["ok"]:
            print(f"{_paint('ok', 'green')}  {head}\n{result['reply']}")
        else:
            print(f"{_paint('failed', 'red')}  {head}\n{result['error']}")
    return OK if result["ok"] else FAILED


def _reload(args: argparse.Namespace) -> int:
    summary = _call(args, "POST", "/admin/reload")
    if args.json:
        _print_json(summary)
        return OK
    print(f"reloaded {summary['source']}: {len(summary['upstreams'])} upstreams, ", end="")
    print(f"{len(summary['models'])} models")
    for what in ("added", "removed", "changed"):
        if summary.get(what):
            print(f"  {what}: {', '.join(summary[what])}")
    return OK


def _usage(args: argparse.Namespace) -> int:
    report = _call(args, "GET", "/admin/usage")
    if args.json:
        _print_json(report)
        return OK
    headers = ["REQUESTS", "PROMPT", "COMPLETION", "CACHED", "COST (USD)"]
    for section, title in (("keys", "KEY"), ("models", "MODEL"), ("upstreams", "UPSTREAM")):
        figures: dict[str, dict[str, Any]] = report.get(section) or {}
        rows = [
            [
                name,
                str(f.get("requests", 0)),
                str(f.get("prompt_tokens", 0)),
                str(f.get("completion_tokens", 0)),
                str(f.get("cached_tokens", 0)),
                f"{float(f.get('cost_usd', 0.0)):.6f}",
            ]
            for name, f in sorted(figures.items())
        ]
        if section != "keys":
            print()
        _table([title, *headers], rows, right={1, 2, 3, 4, 5})
    return OK


# ---------------------------------------------------------------- tables

_COLOURS = {"green": "32", "red": "31", "yellow": "33", "bold": "1", "dim": "2"}
_GOOD = {"yes", "connected", "closed", "ok"}
_BAD = {"no", "unhealthy", "open", "disconnected", "unconfigured", "failing"}


def _colour_on() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _paint(text: str, colour: str) -> str:
    if not _colour_on():
        return text
    return f"\x1b[{_COLOURS[colour]}m{text}\x1b[0m"


def _tone(cell: str) -> str | None:
    word = cell.split(" ", 1)[0]
    if word in _GOOD:
        return "green"
    if word in _BAD:
        return "red"
    if word in {"connecting", "disconnecting", "half-open"}:
        return "yellow"
    return None


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> None:
    """An aligned table: two spaces between columns, numbers right-aligned. Padding is
    computed on the plain text, then colour is added around it."""
    if not rows:
        print("  ".join(headers))
        print(_paint("(none)", "dim"))
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str], header: bool) -> str:
        out = []
        for i, cell in enumerate(cells):
            padded = cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            tone = "bold" if header else _tone(cell)
            out.append(_paint(padded, tone) if tone else padded)
        return "  ".join(out).rstrip()

    print(line(headers, True))
    for row in rows:
        print(line(row, False))
