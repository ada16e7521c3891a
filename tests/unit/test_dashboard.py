"""The Grafana dashboard in deploy/grafana: it parses, its panels are well-formed, and every query
is plausible PromQL over the metric names and labels of issue 5's contract (kept here, as
`CONTRACT`), which `gateway/metrics.py` must export."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "llm-gateway.json"


@dataclass(frozen=True, slots=True)
class Metric:
    kind: str  # counter, gauge or histogram
    labels: frozenset[str]


def _m(kind: str, *labels: str) -> Metric:
    return Metric(kind, frozenset(labels))


# Issue 5's metric names: the contract. Counter names carry their `_total` here, as they are
# exposed; histograms are exposed as `_bucket` (with `le`), `_sum` and `_count`.
CONTRACT: dict[str, Metric] = {
    "gateway_requests_total": _m("counter", "model", "code"),
    "gateway_request_duration_seconds": _m("histogram", "model"),
    "gateway_in_flight_requests": _m("gauge"),
    "gateway_upstream_requests_total": _m("counter", "upstream", "outcome"),
    "gateway_upstream_duration_seconds": _m("histogram", "upstream"),
    "gateway_upstream_time_to_first_token_seconds": _m("histogram", "upstream"),
    "gateway_overhead_seconds": _m("histogram"),
    "gateway_tokens_total": _m("counter", "upstream", "model", "kind"),
    "gateway_cost_usd_total": _m("counter", "upstream", "model"),
    "gateway_pool_connections": _m("gauge", "upstream", "state"),
    "gateway_pool_max_connections": _m("gauge", "upstream"),
    "gateway_pool_waiting_requests": _m("gauge", "upstream"),
    "gateway_pool_acquire_seconds": _m("histogram", "upstream"),
    "gateway_breaker_state": _m("gauge", "upstream", "state"),  # a state set: one 0/1 per state
    "gateway_breaker_transitions_total": _m("counter", "upstream", "to"),
    "gateway_breaker_rejections_total": _m("counter", "upstream"),
    "gateway_ratelimit_wait_seconds": _m("histogram", "upstream"),
    "gateway_ratelimit_rejections_total": _m("counter", "scope", "name"),
    "gateway_fallbacks_total": _m("counter", "model", "from_upstream", "reason"),
    "gateway_retries_total": _m("counter", "upstream", "reason"),
    "gateway_stream_errors_total": _m("counter", "upstream", "reason"),
    "gateway_upstream_up": _m("gauge", "upstream"),
    "gateway_upstream_state": _m("gauge", "upstream", "state"),
    "gateway_health_check_duration_seconds": _m("gauge", "upstream"),  # the last check
    "gateway_upstream_enabled": _m("gauge", "upstream"),
    "gateway_build_info": _m("gauge", "version"),  # always 1
}


# The fixed label values of the contract, where a query picks some by name.
VALUES: dict[tuple[str, str], frozenset[str]] = {
    ("gateway_upstream_requests_total", "outcome"): frozenset(
        {"ok", "client_error", "upstream_error", "timeout", "connect_error", "rate_limited",
         "cancelled"}
    ),
    ("gateway_requests_total", "code"): frozenset({"2xx", "4xx", "5xx"}),
    ("gateway_tokens_total", "kind"): frozenset({"prompt", "completion", "cached"}),
    ("gateway_pool_connections", "state"): frozenset({"active", "idle"}),
    ("gateway_breaker_state", "state"): frozenset({"closed", "open", "half_open"}),
}  # fmt: skip


def _series(name: str, metric: Metric) -> dict[str, frozenset[str]]:
    """The series names a metric is exposed as, each with the labels it carries."""
    if metric.kind == "histogram":
        return {
            f"{name}_bucket": metric.labels | {"le"},
            f"{name}_sum": metric.labels,
            f"{name}_count": metric.labels,
        }
    return {name: metric.labels}


SERIES: dict[str, frozenset[str]] = {
    series: labels
    for name, metric in CONTRACT.items()
    for series, labels in _series(name, metric).items()
}
SERIES_OF: dict[str, str] = {
    series: name for name, metric in CONTRACT.items() for series in _series(name, metric)
}


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


FUNCTIONS = _words(
    "abs absent absent_over_time avg_over_time ceil changes clamp clamp_max clamp_min "
    "count_over_time day_of_month day_of_week day_of_year days_in_month delta deriv exp "
    "floor histogram_quantile holt_winters hour idelta increase irate label_join "
    "label_replace last_over_time ln log10 log2 max_over_time min_over_time minute month "
    "predict_linear present_over_time quantile_over_time rate resets round scalar sgn "
    "sort sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time time timestamp "
    "vector year"
)
AGGREGATIONS = _words(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile"
)
GROUPING = _words("by without on ignoring group_left group_right")
KEYWORDS = _words("and or unless bool offset")
GRAFANA_BUILTINS = frozenset({"__rate_interval", "__range", "__interval", "__range_s"})
PAIRS = {"(": ")", "[": "]", "{": "}"}

TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<var>\$\{\w+\}|\$\w+)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<matcher>=~|!~|!=)
  | (?P<op>==|>=|<=|[-+*/%^<>=])
  | (?P<punct>[()\[\]{},:])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    text: str


def tokenize(expr: str) -> list[Token]:
    tokens: list[Token] = []
    at = 0
    while at < len(expr):
        match = TOKEN.match(expr, at)
        assert match, f"unexpected character at {at}: {expr[at:]!r} in {expr!r}"
        assert match.lastgroup
        if match.lastgroup != "space":
            tokens.append(Token(match.lastgroup, match.group()))
        at = match.end()
    return tokens


def check_promql(expr: str) -> set[str]:
    """Assert that `expr` is plausible PromQL over the contract; return the series it reads."""
    tokens = tokenize(expr)
    stack: list[str] = []
    for token in tokens:
        if token.text in PAIRS:
            stack.append(PAIRS[token.text])
        elif token.text in PAIRS.values():
            assert stack, f"unbalanced {token.text!r} in {expr!r}"
            assert stack.pop() == token.text, f"mismatched {token.text!r} in {expr!r}"
    assert not stack, f"unclosed {stack} in {expr!r}"

    used: set[str] = set()
    grouped: set[str] = set()
    i = 0

    def label_list(start: int) -> int:
        """Read `( label, ... )` from `start`, collecting the labels; return the index after."""
        assert tokens[start].text == "(", f"expected a label list in {expr!r}"
        j = start + 1
        while tokens[j].text != ")":
            assert tokens[j].kind == "ident", f"bad label {tokens[j].text!r} in {expr!r}"
            grouped.add(tokens[j].text)
            j += 1
            if tokens[j].text == ",":
                j += 1
        return j + 1

    while i < len(tokens):
        token = tokens[i]
        following = tokens[i + 1].text if i + 1 < len(tokens) else None
        if token.kind == "ident" and token.text in GROUPING:
            i = label_list(i + 1) if following == "(" else i + 1
            assert token.text in ("group_left", "group_right") or following == "(", expr
            continue
        if token.kind == "ident" and following == "(":
            assert token.text in FUNCTIONS | AGGREGATIONS, f"unknown function {token.text!r}"
        elif token.kind == "ident" and token.text in AGGREGATIONS and following in GROUPING:
            pass  # `sum by (…) (…)`
        elif token.kind == "ident" and token.text in KEYWORDS:
            pass
        elif token.kind == "ident":
            assert token.text in SERIES, f"{token.text!r} is not a contract metric ({expr!r})"
            used.add(token.text)
            if following == "{":
                i = check_selector(tokens, i + 2, token.text, expr)
                continue
        elif token.text == "[":
            assert tokens[i + 1].kind in ("duration", "var"), f"bad range in {expr!r}"
            end = i + 2
            if tokens[end].text == ":":  # subquery [range:step]
                end += 1 + (tokens[end + 1].text != "]")
            assert tokens[end].text == "]", f"bad range in {expr!r}"
            assert tokens[i - 1].text in ("}", "]") or tokens[i - 1].kind == "ident", expr
            i = end + 1
            continue
        elif token.text == "{":
            raise AssertionError(f"a selector without a metric name in {expr!r}")
        elif token.kind == "var":
            raise AssertionError(f"{token.text} outside a selector or range in {expr!r}")
        i += 1

    assert used, f"{expr!r} reads no metric"
    known = set().union(*(SERIES[s] for s in used))
    assert grouped <= known, f"grouping by {grouped - known} not on {used} in {expr!r}"
    return used


def check_selector(tokens: list[Token], start: int, series: str, expr: str) -> int:
    """Check `label op "value", ...}` from `start`; return the index after the `}`."""
    i = start
    while tokens[i].text != "}":
        label, op, value = tokens[i : i + 3]
        assert label.kind == "ident", f"bad label {label.text!r} in {expr!r}"
        assert label.text in SERIES[series], f"{series} has no label {label.text!r} ({expr!r})"
        assert op.text in ("=", "!=", "=~", "!~"), f"bad matcher {op.text!r} in {expr!r}"
        assert value.kind == "string", f"unquoted label value {value.text!r} in {expr!r}"
        known = VALUES.get((SERIES_OF[series], label.text))
        if known is not None:
            words = value.text[1:-1]
            picked = set(words.split("|")) if "~" in op.text else {words}
            if not re.fullmatch(r"[\w|]+", words):  # a pattern, as `5.*`: it must match one
                picked = {v for v in known if re.fullmatch(words, v)}
                assert picked, f"{label.text}={value.text} matches no known value in {expr!r}"
            assert picked <= known, f"{label.text}: {picked - known} unknown in {expr!r}"
        i += 3
        if tokens[i].text == ",":
            i += 1
    return i + 1


def variables_in(text: str) -> set[str]:
    return {m.group(1) or m.group(2) for m in re.finditer(r"\$\{(\w+)\}|\$(\w+)", text)}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def panels_of(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [
        target["expr"]
        for panel in panels_of(dashboard)
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def variable_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    found = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found[variable["name"]] = query["query"] if isinstance(query, dict) else query
    return found


def test_dashboard_is_current_grafana_json(dashboard):
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "llm-gateway"
    assert dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variable_queries(dashboard) == {
        "upstream": "label_values(gateway_upstream_up, upstream)",
        "model": "label_values(gateway_requests_total, model)",
    }
    for name in ("upstream", "model"):
        assert variables[name]["datasource"]["uid"] == "${datasource}"


def test_variable_queries_read_contract_labels(dashboard):
    for name, query in variable_queries(dashboard).items():
        match = re.fullmatch(r"label_values\((\w+), *(\w+)\)", query)
        assert match, f"{name}: {query!r} is not label_values(metric, label)"
        series, label = match.groups()
        assert label in SERIES[series], f"{name}: {series} has no label {label!r}"


def test_every_panel_has_a_unique_id_a_title_and_a_query(dashboard):
    panels = list(panels_of(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert all(isinstance(i, int) for i in ids)
    for panel in panels:
        assert panel.get("title"), f"panel {panel['id']} has no title"
        if panel["type"] == "row":
            continue
        targets = panel.get("targets", [])
        assert targets, f"panel {panel['title']!r} has no query"
        assert all(t.get("expr") for t in targets), f"panel {panel['title']!r}: an empty query"
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), f"panel {panel['title']!r}: duplicate refIds"
        sources = [panel["datasource"], *(t["datasource"] for t in targets)]
        assert all(s == {"type": "prometheus", "uid": "${datasource}"} for s in sources), (
            f"panel {panel['title']!r} does not query the $datasource variable"
        )


def test_panels_fit_the_grid_without_overlapping(dashboard):
    taken: set[tuple[int, int]] = set()
    for panel in panels_of(dashboard):
        pos = panel["gridPos"]
        assert pos["w"] > 0, panel["title"]
        assert 0 <= pos["x"] <= 24 - pos["w"], panel["title"]
        cells = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cells & taken, f"panel {panel['title']!r} overlaps another"
        taken |= cells


def test_queries_are_plausible_promql_over_the_contract(dashboard):
    exprs = queries(dashboard)
    assert exprs
    used = set().union(*(check_promql(expr) for expr in exprs))
    # Every metric of the contract has a place on the dashboard.
    assert {SERIES_OF[s] for s in used} == set(CONTRACT)


def test_queries_use_only_defined_variables(dashboard):
    defined = {v["name"] for v in dashboard["templating"]["list"]} | GRAFANA_BUILTINS
    for expr in queries(dashboard):
        assert variables_in(expr) <= defined, expr


@pytest.mark.parametrize(
    "expr",
    [
        "sum(rate(gateway_requests_total[5m])",  # unbalanced
        "sum(rate(gateway_requests_totl[5m]))",  # not a contract metric
        "sum(rat(gateway_requests_total[5m]))",  # unknown function
        'sum(rate(gateway_requests_total{upstream="a"}[5m]))',  # label not on this metric
        "sum by (outcome) (rate(gateway_requests_total[5m]))",  # grouping by a missing label
        "histogram_quantile(0.9, rate(gateway_overhead_seconds[5m]))",  # histogram without _bucket
        "rate(gateway_requests_total{model=a}[5m])",  # unquoted label value
        "rate(gateway_requests_total[five])",  # bad range
        "1 + 2",  # reads no metric
        'gateway_breaker_state{state="half-open"}',  # not one of the contract's values
        'gateway_upstream_requests_total{outcome!~"ok|error"}',  # nor is "error"
        'gateway_requests_total{code=~"6.*"}',  # matches none
    ],
)
def test_promql_check_rejects(expr):
    with pytest.raises(AssertionError):
        check_promql(expr)


def test_promtool_parses_every_query(dashboard, tmp_path):
    """Prometheus's own parser, through `promtool check rules` (Grafana variables substituted)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    substitutes = {"__rate_interval": "1m", "__range": "1h", "__interval": "15s"}

    def substitute(expr: str) -> str:
        return re.sub(
            r"\$\{(\w+)\}|\$(\w+)",
            lambda m: substitutes.get(m.group(1) or m.group(2), ".*"),
            expr,
        )

    rules = [
        {"record": f"dashboard:query_{n}", "expr": substitute(expr)}
        for n, expr in enumerate(queries(dashboard))
    ]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_provisioning_points_at_the_dashboard_and_prometheus():
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/llm-gateway.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")


def exported_families() -> dict[str, tuple[str, dict[str, set[str]]]]:
    """Series name → (kind, {label: values on its samples}) for every metric on the registry of a
    runtime opened as the app opens it (one mock upstream, so every state figure has a
    sample)."""
    from gateway.config import parse_config
    from gateway.runtime import Runtime

    config = parse_config(
        "upstreams:\n  mock: {provider: mock}\n"
        "models:\n  mock-1: [{upstream: mock, model: mock-1}]\n",
        environ={},
    )

    async def collect() -> list[prometheus_client.Metric]:
        rt = await Runtime.open(config)
        try:
            return list(rt.metrics.registry.collect())
        finally:
            await rt.aclose()

    found: dict[str, tuple[str, dict[str, set[str]]]] = {}
    for family in asyncio.run(collect()):
        # prometheus-client names a counter's family without its `_total`.
        name = f"{family.name}_total" if family.type == "counter" else family.name
        labels: dict[str, set[str]] = {}
        for sample in family.samples:
            for label, value in sample.labels.items():
                labels.setdefault(label, set()).add(value)
        labels.pop("le", None)
        found[name] = (family.type, labels)
    return found


@pytest.mark.skipif(
    importlib.util.find_spec("gateway.metrics") is None,
    reason="gateway/metrics.py does not exist yet (issue 5's metrics are being written)",
)
def test_gateway_exports_every_contract_metric():
    exported = exported_families()
    missing = sorted(set(CONTRACT) - set(exported))
    assert not missing, f"gateway/metrics.py does not export {missing}"
    for name, metric in CONTRACT.items():
        kind, labels = exported[name]
        assert kind == metric.kind, f"{name} is a {kind}, the contract says {metric.kind}"
        # Label children are bound up front for what the config knows, except those of
        # fallbacks, retries, stream errors and limiter rejections (bound on first use), and
        # the health check duration has no sample before the first check.
        assert labels.keys() <= metric.labels, f"{name} has labels {set(labels)}"
        for label, values in labels.items():
            known = VALUES.get((name, label))
            assert known is None or values <= known, f"{name}: {label} {values - known}"
