"""Benchmark the gateway against a fast fake upstream and a minimal reference proxy.

Starts the fake upstream (bench/fake_upstream.py) and, one at a time, each proxy under test,
pinned with taskset: the load generators and the upstream on core 0, the proxy alone on
core 1. Plain requests are driven with wrk (bench/chat.lua), streams with
bench/stream_client.py. Prints a markdown table, the target checks, and writes them to
bench/results/latest.md (raw figures in latest.json).

Targets: ``direct`` (the load hits the upstream itself), ``reference``
(bench/reference_proxy.py: Starlette + uvicorn + aiohttp, the floor of what Python can do),
``gateway`` (``gateway serve`` with a generated config) and ``anthropic`` (the same gateway
and load with the upstream set to `provider: anthropic`: every request and answer translated to
and from the Messages API, which the fake upstream also speaks; it must stay within
``MAX_TRANSLATION_COST`` of ``gateway``).

Run from the repo root: ``python bench/run.py [--targets direct,reference,gateway,anthropic]
[--transport native|httpx] [--duration 5]``. Only the standard library is used here; the
helpers run under ``--python`` (default: this interpreter), which needs uvloop, httptools,
orjson, aiohttp, starlette and uvicorn.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import http.client
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
HOST = "127.0.0.1"
LOAD_CORE = 0  # load generators and the fake upstream
PROXY_CORE = 1  # the proxy under test, alone
TARGETS = ("direct", "reference", "gateway", "anthropic")
CHAT_PATH = "/v1/chat/completions"
MODEL = "bench-model"

# A realistic small chat request; streams send the same with "stream": true.
CHAT_BODY: dict[str, Any] = {
    "model": MODEL,
    "messages": [
        {
            "role": "system",
            "content": "You are a concise assistant for a travel company. Answer in one or two "
            "sentences, be friendly, and never invent prices or availability.",
        },
        {
            "role": "user",
            "content": "I land in Lisbon at 7am on a Sunday. What is a good way to spend the "
            "morning before my hotel check-in at 3pm?",
        },
    ],
    "max_tokens": 64,
}

# Targets checked against the other columns.
MIN_PLAIN_SHARE = 0.60  # gateway req/s vs reference, c=16 and c=64
MAX_C1_OVERHEAD_MS = 0.4  # gateway p50 - direct p50, c=1
MIN_STREAM_SHARE = 0.95  # gateway streams/s vs direct, 64 streams
MAX_TTFB_OVERHEAD_MS = 5.0  # gateway TTFB p50 - direct TTFB p50, 64 streams
MAX_RSS_MB = 100.0
MAX_TRANSLATION_COST = 0.10  # anthropic vs gateway: rates at least 90%, latencies at most 110%
BUSY_WARN_PCT = 10.0  # other processes' CPU above which the report warns of noise


class BenchError(RuntimeError):
    """A target could not be measured (it did not start, a tool failed)."""


@dataclass
class Cell:
    """One measurement: a rate with latency percentiles (ms) and an error count."""

    kind: str  # "plain" or "stream"
    concurrency: int
    rate: float | None = None  # requests/s or streams/s
    p50_ms: float | None = None  # latency, or TTFB for streams
    p99_ms: float | None = None
    errors: int | None = None
    detail: str = ""  # error breakdown or failure message
    client_requests: int = 0  # warm-up included, to compare with the upstream's count

    @property
    def label(self) -> str:
        prefix = "plain c=" if self.kind == "plain" else "stream "
        return f"{prefix}{self.concurrency}"


@dataclass
class TargetResult:
    name: str
    cells: dict[str, Cell] = field(default_factory=dict)
    rss_mb: float | None = None  # proxy under test (children included), after the run
    peak_rss_mb: float | None = None
    upstream_rss_mb: float | None = None
    upstream_calls: int | None = None  # chat requests the upstream saw during this target
    client_requests: int = 0
    other_cpu_pct: float | None = None  # CPU used outside the bench meanwhile (% of a core)
    error: str | None = None


# --- processes ---------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if run.py dies without cleaning up (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Processes:
    """Servers started by the bench, stopped (terminate, then kill) by PID."""

    def __init__(self, log_dir: Path, pin: bool) -> None:
        self.log_dir = log_dir
        self.pin = pin
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def pinned(self, core: int, cmd: Sequence[str]) -> list[str]:
        return ["taskset", "-c", str(core), *cmd] if self.pin else list(cmd)

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, name: str, cmd: Sequence[str], core: int) -> subprocess.Popen[bytes]:
        with self.log_path(name).open("wb") as log:
            proc = subprocess.Popen(
                self.pinned(core, cmd),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches run.py only; it stops them in order
                preexec_fn=_die_with_parent,
            )
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 25) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        # Anything it left in the session we created for it (worker processes).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http_status(port: int, path: str, headers: dict[str, str], timeout: float = 2.0) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def wait_ready(
    procs: Processes,
    name: str,
    port: int,
    path: str,
    timeout: float,
    need_ok: bool,
    headers: dict[str, str] | None = None,
) -> None:
    """Poll GET path until it answers (200 if need_ok), or fail with the process's log."""
    proc = procs.procs[name]
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(
                f"{name} exited with {proc.returncode} before it was ready:\n{procs.log_tail(name)}"
            )
        try:
            status = http_status(port, path, headers or {})
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if status == 200 or not need_ok:
                return
            last = f"HTTP {status}"
        time.sleep(0.1)
    raise BenchError(
        f"{name} not ready on port {port} after {timeout:.0f}s ({last}):\n{procs.log_tail(name)}"
    )


def _proc_status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def rss_mb(pid: int, key: str = "VmRSS") -> float | None:
    """RSS of pid and its descendants, in MiB."""
    total = 0
    for p in [pid, *_descendants(pid)]:
        total += _proc_status_kb(p, key) or 0
    return total / 1024 if total else None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _busy_ticks() -> int:
    """CPU time the machine spent in processes, and stolen by the host, in clock ticks.

    Interrupt time is left out: loopback traffic is mostly softirq work, which the kernel
    charges to no process, so it would show up as someone else's.
    """
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = fields
    return user + nice + system + steal


def _tree_ticks(pid: int) -> int:
    total = 0
    for p in [pid, *_descendants(pid)]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def _our_ticks(pids: Sequence[int]) -> float:
    """CPU of the bench: run.py, the load generators it waited for, and the servers."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = own.ru_utime + own.ru_stime + done.ru_utime + done.ru_stime
    return seconds * CLK_TCK + sum(_tree_ticks(p) for p in pids)


class OtherCpu:
    """Share of a core that processes outside the bench used (noise) while a target ran."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self._start = (time.monotonic(), _busy_ticks(), _our_ticks(self.pids))

    def percent(self) -> float:
        wall, busy, ours = time.monotonic(), _busy_ticks(), _our_ticks(self.pids)
        other = (busy - self._start[1]) - (ours - self._start[2])
        return max(0.0, 100 * other / (CLK_TCK * max(wall - self._start[0], 1e-3)))


def wait_idle(pids: Sequence[int], limit: float) -> None:
    """Wait (at most limit seconds) until others use under BUSY_WARN_PCT of a core for 1 s."""
    deadline = time.monotonic() + limit
    while True:
        meter = OtherCpu(pids)
        time.sleep(1)
        busy = meter.percent()
        if busy <= BUSY_WARN_PCT:
            return
        if time.monotonic() >= deadline:
            print(f"  still busy ({busy:.0f}% of a core used by others): going on", flush=True)
            return
        print(f"  waiting for the machine: others use {busy:.0f}% of a core", flush=True)
        time.sleep(4)


def upstream_stats(port: int) -> dict[str, int] | None:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", "/__stats")
        return dict(json.loads(conn.getresponse().read()))
    except (OSError, ValueError):
        return None
    finally:
        conn.close()


# --- load ----------------------------------------------------------------------------------


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: installing it with apt-get (Debian package wrk)", flush=True)
    subprocess.run(["apt-get", "update"], check=False, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=False, stdout=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is required: apt-get install -y wrk")
    return found


def run_wrk(
    procs: Processes, wrk: str, url: str, concurrency: int, seconds: int, env: dict[str, str]
) -> dict[str, float]:
    cmd = procs.pinned(
        LOAD_CORE,
        [
            wrk,
            "-t1",
            f"-c{concurrency}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "--latency",
            "-s",
            str(BENCH / "chat.lua"),
            url,
        ],
    )
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 30)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return dict(json.loads(line.removeprefix("BENCH_JSON ")))
    raise BenchError(f"wrk gave no summary (exit {out.returncode}): {out.stderr or out.stdout}")


def plain_cell(
    procs: Processes, wrk: str, url: str, concurrency: int, args: argparse.Namespace
) -> Cell:
    env = {**os.environ, "BENCH_BODY": json.dumps(CHAT_BODY, separators=(",", ":"))}
    if args.api_key:
        env["BENCH_API_KEY"] = args.api_key
    cell = Cell("plain", concurrency)
    if args.warmup > 0:
        warm = run_wrk(procs, wrk, url, concurrency, args.warmup, env)
        cell.client_requests += int(warm["requests"])
    res = run_wrk(procs, wrk, url, concurrency, args.duration, env)
    cell.client_requests += int(res["requests"])
    cell.rate = res["requests"] / (res["duration_us"] / 1e6)
    cell.p50_ms = res["p50_us"] / 1000
    cell.p99_ms = res["p99_us"] / 1000
    kinds = ("status", "connect", "read", "write", "timeout")
    cell.errors = int(sum(res[k] for k in kinds))
    cell.detail = ", ".join(f"{k} {int(res[k])}" for k in kinds if res[k])
    if res["requests"] == 0:
        cell.errors = max(cell.errors, 1)
        cell.detail = cell.detail or "no request completed"
    return cell


def stream_cell(procs: Processes, url: str, concurrency: int, args: argparse.Namespace) -> Cell:
    cmd = [
        args.python,
        str(BENCH / "stream_client.py"),
        "--url",
        url,
        "-c",
        str(concurrency),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--body",
        json.dumps(CHAT_BODY),
    ]
    if args.api_key:
        cmd += ["--api-key", args.api_key]
    budget = args.warmup + args.duration + 40
    out = subprocess.run(
        procs.pinned(LOAD_CORE, cmd), capture_output=True, text=True, timeout=budget
    )
    try:
        res = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        raise BenchError(f"stream client failed (exit {out.returncode}): {out.stderr}") from exc
    reasons = res.get("error_reasons") or {}
    return Cell(
        "stream",
        concurrency,
        rate=res["rate"],
        p50_ms=res["ttfb_p50_ms"],
        p99_ms=res["ttfb_p99_ms"],
        errors=int(res["errors"]) or (0 if res["streams"] else 1),
        detail=", ".join(f"{k} {v}" for k, v in reasons.items())
        or ("" if res["streams"] else "no stream completed"),
        client_requests=int(res["total_completed"]) + int(res["total_errors"]),
    )


# --- targets -------------------------------------------------------------------------------


def gateway_command(args: argparse.Namespace) -> list[str]:
    if args.gateway_cmd:
        return shlex.split(args.gateway_cmd)
    beside = Path(args.python).parent / "gateway"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    if found := shutil.which("gateway"):
        return [found]
    return [args.python, "-m", "gateway"]


# With --resilience: every protection on and checked per request, none binding (limits far
# above the load, the breaker closed, retries allowed, health probes running).
RESILIENCE = (
    ",\n          rate_limit: {requests_per_minute: 100000000, tokens_per_minute: 100000000000,"
    " max_concurrent: 100000},\n"
    "          breaker: {fail_max: 5, reset_timeout: 30}, retry: {attempts: 2},"
    " health: {interval: 2}"
)


def gateway_config(
    port: int,
    upstream_port: int,
    transport: str | None,
    provider: str = "openai",
    resilience: bool = False,
    client_keys: int = 0,
) -> str:
    """The gateway's config: its one upstream is the fake, in OpenAI's or Anthropic's format;
    with `client_keys`, that many client keys (each with limits far above the load when
    `resilience`), of which the load sends the last (`client_key()`)."""
    extra = f", transport: {json.dumps(transport)}" if transport else ""
    if resilience:
        extra += RESILIENCE
    base_url = f"http://{HOST}:{upstream_port}" + ("/v1" if provider == "openai" else "")
    return (
        f"server: {{host: {HOST}, port: {port}}}\n"
        "upstreams:\n"
        f'  bench: {{provider: {provider}, base_url: "{base_url}",'
        ' api_key: "bench-key",\n'
        "          pool: {max_connections: 512, max_keepalive: 512, keepalive_expiry: 60}"
        f"{extra}}}\n"
        "models:\n"
        f"  {MODEL}: [{{upstream: bench, model: {MODEL}}}]\n"
        + (keys_config(client_keys, resilience) if client_keys else "")
    )


def client_key(index: int) -> str:
    return f"bench-client-key-{index:06d}"


def keys_config(count: int, resilience: bool) -> str:
    limit = (
        ", rate_limit: {requests_per_minute: 100000000, tokens_per_minute: 100000000000}"
        if resilience
        else ""
    )
    keys = "".join(
        f'    - {{name: k{i}, key: "{client_key(i)}", models: ["bench-*", "{MODEL}"]{limit}}}\n'
        for i in range(count)
    )
    return f"auth:\n  keys:\n{keys}"


@contextlib.contextmanager
def proxy_under_test(
    procs: Processes, name: str, upstream_port: int, tmp: Path, args: argparse.Namespace
) -> Iterator[tuple[int, int]]:
    """Start the reference proxy or the gateway on the proxy core; yield (port, pid)."""
    port = free_port()
    auth = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    if name == "reference":
        cmd = [
            args.python,
            str(BENCH / "reference_proxy.py"),
            "--port",
            str(port),
            "--upstream",
            f"http://{HOST}:{upstream_port}/v1",
        ]
        proc = procs.start(name, cmd, PROXY_CORE)
        ready = ("/", False)  # no /v1/models there: any answer will do
    else:
        config = tmp / "gateway-bench.yaml"
        provider = "anthropic" if name == "anthropic" else "openai"
        config.write_text(
            gateway_config(
                port, upstream_port, args.transport, provider, args.resilience, args.client_keys
            )
        )
        (procs.log_dir / "gateway-bench.yaml").write_text(config.read_text())
        cmd = [
            *gateway_command(args),
            "serve",
            "--config",
            str(config),
            "--host",
            HOST,
            "--port",
            str(port),
            "--log-level",
            "info" if args.request_logs else "warning",
            "--log-format",
            "json",
        ]
        proc = procs.start(name, cmd, PROXY_CORE)
        ready = ("/v1/models", True)
    try:
        wait_ready(procs, name, port, ready[0], args.start_timeout, ready[1], auth)
        yield port, proc.pid
    finally:
        procs.stop(name)


def measure(
    result: TargetResult,
    procs: Processes,
    wrk: str,
    port: int,
    upstream_port: int,
    pids: Sequence[int],
    args: argparse.Namespace,
) -> None:
    url = f"http://{HOST}:{port}{CHAT_PATH}"
    before = upstream_stats(upstream_port)
    noise = OtherCpu(pids)
    for c in args.concurrency:
        print(f"  {result.name}: plain c={c}", flush=True)
        cell = plain_cell(procs, wrk, url, c, args)
        result.cells[cell.label] = cell
        result.client_requests += cell.client_requests
    for n in args.streams:
        print(f"  {result.name}: stream {n}", flush=True)
        cell = stream_cell(procs, url, n, args)
        result.cells[cell.label] = cell
        result.client_requests += cell.client_requests
    result.other_cpu_pct = noise.percent()
    after = upstream_stats(upstream_port)
    if before and after:
        result.upstream_calls = after["chat"] - before["chat"]


def run_target(
    name: str,
    procs: Processes,
    wrk: str,
    upstream: subprocess.Popen[bytes],
    upstream_port: int,
    tmp: Path,
    args: argparse.Namespace,
) -> TargetResult:
    result = TargetResult(name)
    print(f"{name}:", flush=True)
    if args.wait_idle > 0:
        wait_idle([upstream.pid], args.wait_idle)
    try:
        if name == "direct":
            measure(result, procs, wrk, upstream_port, upstream_port, [upstream.pid], args)
        else:
            with proxy_under_test(procs, name, upstream_port, tmp, args) as (port, pid):
                measure(result, procs, wrk, port, upstream_port, [upstream.pid, pid], args)
                result.rss_mb = rss_mb(pid)
                result.peak_rss_mb = rss_mb(pid, "VmHWM")
    except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
        result.error = str(exc)
        print(f"  {name} failed: {exc}", file=sys.stderr, flush=True)
    result.upstream_rss_mb = rss_mb(upstream.pid)
    return result


# --- report --------------------------------------------------------------------------------


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def fmt_mb(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def cell_labels(args: argparse.Namespace) -> list[str]:
    return [f"plain c={c}" for c in args.concurrency] + [f"stream {n}" for n in args.streams]


def render_table(results: list[TargetResult], args: argparse.Namespace) -> list[str]:
    head = ["cell"]
    for r in results:
        head += [f"{r.name} rate/s", "p50 ms", "p99 ms", "errors"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for label in cell_labels(args):
        row = [label]
        for r in results:
            c = r.cells.get(label)
            if c is None:
                row += ["—"] * 4
                continue
            err = "—" if c.errors is None else str(c.errors)
            if c.errors and c.detail:
                err += f" ({c.detail})"
            row += [fmt_rate(c.rate), fmt_ms(c.p50_ms), fmt_ms(c.p99_ms), err]
        lines.append("| " + " | ".join(row) + " |")
    rss = ["RSS MiB (peak)"]
    ups = ["upstream RSS MiB"]
    calls = ["upstream calls / client requests"]
    other = ["other processes' CPU, % of a core"]
    for r in results:
        proxy = "—" if r.rss_mb is None else f"{fmt_mb(r.rss_mb)} ({fmt_mb(r.peak_rss_mb)})"
        rss += [proxy, "", "", ""]
        ups += [fmt_mb(r.upstream_rss_mb), "", "", ""]
        ratio = "—"
        if r.upstream_calls is not None and r.client_requests:
            ratio = f"{r.upstream_calls:,} / {r.client_requests:,}"
        calls += [ratio, "", "", ""]
        other += ["—" if r.other_cpu_pct is None else f"{r.other_cpu_pct:.0f}%", "", "", ""]
    lines += ["| " + " | ".join(row) + " |" for row in (rss, ups, calls, other)]
    return lines


def _check(ok: bool, text: str) -> tuple[str, str]:
    return ("PASS" if ok else "FAIL", text)


def render_checks(results: list[TargetResult], args: argparse.Namespace) -> list[str]:
    by = {r.name: r for r in results}
    gw, ref, direct = by.get("gateway"), by.get("reference"), by.get("direct")
    checks: list[tuple[str, str]] = []

    def cell(r: TargetResult | None, label: str) -> Cell | None:
        c = r.cells.get(label) if r else None
        return c if c is not None and c.rate is not None else None

    for c in (16, 64):
        label = f"plain c={c}"
        g, f = cell(gw, label), cell(ref, label)
        if g and f and g.rate is not None and f.rate:
            share = g.rate / f.rate
            checks.append(
                _check(
                    share >= MIN_PLAIN_SHARE,
                    f"gateway req/s at c={c} ≥ {MIN_PLAIN_SHARE:.0%} of reference: "
                    f"{fmt_rate(g.rate)} vs {fmt_rate(f.rate)} ({share:.0%})",
                )
            )
        else:
            checks.append(("SKIP", f"gateway vs reference req/s at c={c}: not measured"))

    g, d = cell(gw, "plain c=1"), cell(direct, "plain c=1")
    if g and d and g.p50_ms is not None and d.p50_ms is not None:
        extra = g.p50_ms - d.p50_ms
        checks.append(
            _check(
                extra <= MAX_C1_OVERHEAD_MS,
                f"gateway p50 at c=1 minus direct ≤ {MAX_C1_OVERHEAD_MS} ms: "
                f"{g.p50_ms:.3f} - {d.p50_ms:.3f} = {extra:.3f} ms",
            )
        )
    else:
        checks.append(("SKIP", "gateway vs direct p50 at c=1: not measured"))

    g, d = cell(gw, "stream 64"), cell(direct, "stream 64")
    if g and d and g.rate is not None and d.rate:
        share = g.rate / d.rate
        checks.append(
            _check(
                share >= MIN_STREAM_SHARE,
                f"gateway streams/s at 64 streams ≥ {MIN_STREAM_SHARE:.0%} of direct: "
                f"{fmt_rate(g.rate)} vs {fmt_rate(d.rate)} ({share:.1%})",
            )
        )
        if g.p50_ms is not None and d.p50_ms is not None:
            extra = g.p50_ms - d.p50_ms
            checks.append(
                _check(
                    extra <= MAX_TTFB_OVERHEAD_MS,
                    f"gateway TTFB p50 at 64 streams minus direct ≤ {MAX_TTFB_OVERHEAD_MS} ms: "
                    f"{g.p50_ms:.2f} - {d.p50_ms:.2f} = {extra:.2f} ms",
                )
            )
    else:
        checks.append(("SKIP", "gateway vs direct at 64 streams: not measured"))

    checks += translation_checks(gw, by.get("anthropic"), args)

    if gw and gw.rss_mb is not None:
        checks.append(
            _check(
                gw.rss_mb < MAX_RSS_MB,
                f"gateway RSS < {MAX_RSS_MB:.0f} MB: {gw.rss_mb:.1f} MiB "
                f"(peak {fmt_mb(gw.peak_rss_mb)})",
            )
        )
    else:
        checks.append(("SKIP", "gateway RSS: not measured"))

    bad = [
        f"{r.name} {c.label}: {c.errors}"
        for r in results
        for c in r.cells.values()
        if c.errors is None or c.errors
    ]
    missing = [r.name for r in results if r.error]
    if missing:
        bad += [f"{name}: not measured" for name in missing]
    checks.append(
        _check(not bad, "errors zero in every cell" + (f": {'; '.join(bad)}" if bad else ""))
    )
    return [f"- **{verdict}** {text}" for verdict, text in checks]


def translation_checks(
    gw: TargetResult | None, anthropic: TargetResult | None, args: argparse.Namespace
) -> list[tuple[str, str]]:
    """Each figure of the Anthropic-format run against the OpenAI-format one."""
    if anthropic is None:
        return []
    if gw is None:
        return [("SKIP", "anthropic vs gateway: gateway not measured")]
    checks: list[tuple[str, str]] = []
    floor, ceiling = 1 - MAX_TRANSLATION_COST, 1 + MAX_TRANSLATION_COST
    for label in cell_labels(args):
        a, g = anthropic.cells.get(label), gw.cells.get(label)
        if not (a and g and a.rate and g.rate and a.p50_ms and g.p50_ms):
            checks.append(("SKIP", f"anthropic vs gateway {label}: not measured"))
            continue
        rate, p50 = a.rate / g.rate, a.p50_ms / g.p50_ms
        what = "TTFB" if a.kind == "stream" else "latency"
        checks.append(
            _check(
                rate >= floor and p50 <= ceiling,
                f"anthropic-format {label} within {MAX_TRANSLATION_COST:.0%} of openai-format: "
                f"rate {fmt_rate(a.rate)} vs {fmt_rate(g.rate)} ({rate:.0%}), "
                f"{what} p50 {a.p50_ms:.2f} vs {g.p50_ms:.2f} ms ({p50:.0%})",
            )
        )
    return checks


def busy_warning(results: list[TargetResult]) -> list[str]:
    busy = [r for r in results if (r.other_cpu_pct or 0) > BUSY_WARN_PCT]
    if not busy:
        return []
    figures = ", ".join(f"{r.name} {r.other_cpu_pct:.0f}%" for r in busy)
    return [
        "",
        f"**Warning: the machine was busy.** Processes outside the bench used {figures} of a "
        "core while these targets ran: their figures are unreliable, rerun on an idle machine.",
    ]


def git_revision() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    rev = out.stdout.strip() or "no commit"
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return rev + (" (uncommitted changes)" if dirty else "")


def render(results: list[TargetResult], args: argparse.Namespace, pin: bool) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Benchmark {now}",
        "",
        f"- revision: {git_revision()}; Python {platform.python_version()}; "
        f"{os.cpu_count()} cores; "
        + (
            f"load + upstream pinned to core {LOAD_CORE}, proxy to core {PROXY_CORE}"
            if pin
            else "not pinned"
        ),
        f"- gateway transport: {args.transport or 'default'}; "
        f"resilience machinery: {'on, not binding' if args.resilience else 'defaults'}; "
        f"request logs: {'on' if args.request_logs else 'off'}; "
        f"client keys: {args.client_keys or 'none'}; "
        f"{args.duration}s measured after {args.warmup}s warm-up per cell",
        f"- upstream: streams of {args.chunks} chunks, TTFT {args.ttft_ms:g} ms, "
        f"{args.interval_ms:g} ms apart",
        "- plain rows: wrk, requests/s and latency; stream rows: streams/s and time to the "
        "first SSE data line (TTFB); errors: non-2xx and socket errors, or streams without "
        "[DONE]",
        "",
        *render_table(results, args),
        *busy_warning(results),
        "",
        "## Checks",
        "",
        *render_checks(results, args),
    ]
    for r in results:
        if r.error:
            lines += ["", f"## {r.name} failed", "", "```", r.error.strip(), "```"]
    return "\n".join(lines) + "\n"


# --- main ----------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark the gateway against the fake upstream and a reference proxy."
    )
    add = p.add_argument
    add("--targets", default=",".join(TARGETS), help="columns, in order (%(default)s)")
    add(
        "--transport",
        help="the upstream's `transport` in the gateway config, e.g. native or httpx "
        "(default: left out, the gateway's default)",
    )
    add("--duration", type=int, default=5, help="measured seconds per cell (%(default)s)")
    add(
        "--request-logs",
        action="store_true",
        help="the gateway writes its JSON request line per request (to the process log)",
    )
    add(
        "--resilience",
        action="store_true",
        help="gateway upstream with rate limits (not binding), breaker, retries, health probes",
    )
    add("--warmup", type=int, default=1, help="warm-up seconds per cell (%(default)s)")
    add("--concurrency", type=int_list, default="1,16,64,256", help="wrk -c (1,16,64,256)")
    add("--streams", type=int_list, default="16,64", help="concurrent streams (16,64)")
    add("--ttft-ms", type=float, default=20.0, help="upstream time to first token (%(default)s)")
    add("--chunks", type=int, default=20, help="upstream chunks per stream (%(default)s)")
    add("--interval-ms", type=float, default=5.0, help="upstream chunk spacing (%(default)s)")
    add("--python", default=sys.executable, help="interpreter for the helpers (%(default)s)")
    add("--gateway-cmd", help="command to run instead of `gateway` (`serve ...` is appended)")
    add("--api-key", help="client key sent to the targets as a Bearer token")
    add(
        "--client-keys",
        type=int,
        default=0,
        metavar="N",
        help="the gateway checks N client keys (auth.keys); the load sends the last one",
    )
    add("--start-timeout", type=float, default=30.0, help="seconds to get ready (%(default)s)")
    add(
        "--wait-idle",
        type=float,
        default=0.0,
        help="before each target, wait up to this many seconds for other processes to go "
        "quiet (%(default)s: don't wait)",
    )
    add("--output", type=Path, default=RESULTS / "latest.md", help="report file (%(default)s)")
    args = p.parse_args(argv)
    if args.client_keys > 0 and not args.api_key:
        args.api_key = client_key(args.client_keys - 1)  # every target gets the same header
    args.concurrency = [c for c in args.concurrency if c > 0]
    args.streams = [n for n in args.streams if n > 0]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or not targets:
        p.error(f"--targets takes some of {','.join(TARGETS)}; got {args.targets!r}")
    args.targets = list(dict.fromkeys(targets))
    if args.duration < 1 or args.warmup < 0:
        p.error("--duration must be ≥ 1 and --warmup ≥ 0 (whole seconds, as wrk takes them)")
    return args


def check_python(python: str) -> None:
    need = "import uvloop, httptools, orjson, aiohttp, starlette, uvicorn"
    ok = subprocess.run([python, "-c", need], capture_output=True, check=False).returncode == 0
    if not ok:
        raise SystemExit(
            f"{python} lacks the helpers' packages ({need[7:]}); "
            "run with the project's virtualenv or pass --python"
        )


def _sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_python(args.python)
    wrk = ensure_wrk()
    pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) > max(LOAD_CORE, PROXY_CORE)
    if not pin:
        print("warning: not pinning (needs taskset and 2 cores)", file=sys.stderr)
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    log_dir = RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = Processes(log_dir, pin)
    results: list[TargetResult] = []
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
            upstream_port = free_port()
            upstream = procs.start(
                "upstream",
                [
                    args.python,
                    str(BENCH / "fake_upstream.py"),
                    "--port",
                    str(upstream_port),
                    "--ttft-ms",
                    str(args.ttft_ms),
                    "--chunks",
                    str(args.chunks),
                    "--interval-ms",
                    str(args.interval_ms),
                ],
                LOAD_CORE,
            )
            wait_ready(procs, "upstream", upstream_port, "/v1/models", 15, True)
            for name in args.targets:
                results.append(
                    run_target(name, procs, wrk, upstream, upstream_port, Path(tmp), args)
                )
    except KeyboardInterrupt:
        print("interrupted: stopping the servers", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
    report = render(results, args, pin)
    print()
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    raw = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": [asdict(r) for r in results],
    }
    args.output.with_suffix(".json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    print(f"written to {args.output} in {time.monotonic() - started:.0f}s; logs in {log_dir}")
    failed = any(r.error for r in results) or "**FAIL**" in report
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
