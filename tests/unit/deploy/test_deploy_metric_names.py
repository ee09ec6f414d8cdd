"""Every PromQL expression under deploy/ uses only what the worker exports.

The exported names come from ``WorkerMetrics`` itself, registered on a fresh registry, so a
renamed or removed metric fails here instead of leaving an empty panel or a silent alert.
Checked: the dashboard's panel and variable queries, the recording and alerting rules, and
the synthetic series of the promtool rule tests (a rule test on a made-up metric proves
nothing about the real one).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from streaming.batch_histogram import BatchHistogram
from streaming.metrics import WorkerMetrics

REPO = Path(__file__).resolve().parents[3]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "cellwatch.json"
RULES_DIR = REPO / "deploy" / "prometheus" / "rules"
RULE_TESTS_DIR = REPO / "deploy" / "prometheus" / "tests"

# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
# Series Prometheus itself writes for each target.
SCRAPE_SERIES = {"up": frozenset()}

STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
# A metric or recording rule name, optionally followed by its label matchers.
SELECTOR = re.compile(r"(?<![\w:$])([a-zA-Z_][a-zA-Z0-9_]*(?::[a-zA-Z0-9_]+)*)\s*(\{[^}]*\})?")
MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


@dataclass(frozen=True)
class Series:
    """A sample name the worker exposes, with the label names it may carry."""

    name: str
    family: str
    labels: frozenset[str]


@cache
def exported_series() -> dict[str, Series]:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    # The registry says what is exported; label names come from the metric objects, since
    # a labelled gauge with no child yet (lag, model_info) exposes no sample to read them from.
    collectors: dict[str, tuple[str, tuple[str, ...]]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            collectors[value._name] = (value._type, tuple(value._labelnames))
        elif isinstance(value, BatchHistogram):
            collectors[value.name] = ("histogram", value.labelnames)
    series: dict[str, Series] = {}
    for family in registry.collect():
        assert family.name in collectors, f"{family.name} is registered but not on WorkerMetrics"
        kind, labelnames = collectors[family.name]
        assert kind == family.type
        labels = frozenset(labelnames) | TARGET_LABELS
        suffixes = {"counter": {"_total": labels, "_created": labels},
                    "gauge": {"": labels},
                    "histogram": {"_bucket": labels | {"le"}, "_count": labels,
                                  "_sum": labels}}[family.type]
        for suffix, allowed in suffixes.items():
            series[family.name + suffix] = Series(family.name + suffix, family.name, allowed)
    return series


def load_rule_groups() -> list[dict]:
    groups = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        groups += yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    return groups


def recorded_series() -> dict[str, frozenset[str]]:
    """Recording rule name -> the labels its series carry (its level, plus static labels)."""
    recorded: dict[str, frozenset[str]] = {}
    for group in load_rule_groups():
        for rule in group["rules"]:
            if "record" in rule:
                level = rule["record"].split(":")[0]
                labels = frozenset(level.split("_")) | frozenset(rule.get("labels", {}))
                recorded[rule["record"]] = recorded.get(rule["record"], frozenset()) | labels
    return recorded


def dashboard_queries() -> dict[str, str]:
    """Where -> PromQL, for every panel target and every query variable of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries[f"panel {panel['id']} {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            # label_values(selector, label) is Grafana's, not PromQL: check its selector.
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", text.strip())
            queries[f"variable {variable['name']}"] = (
                f"group by ({match.group(2)}) ({match.group(1)})" if match else text)
    return queries


def rule_expressions() -> dict[str, str]:
    return {f"{'alert' if 'alert' in rule else 'record'} "
            f"{rule.get('alert') or rule.get('record')}": rule["expr"]
            for group in load_rule_groups() for rule in group["rules"]}


PROMQL_KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
})


def problems_in(expr: str) -> list[str]:
    """Names that are neither exported nor recorded, and labels no referenced series has."""
    known = exported_series()
    recorded = recorded_series()
    # Grafana variables are substituted before Prometheus sees the query.
    text = re.sub(r"\$\{?\w+\}?", "1m", expr)
    # Label values may contain anything, metric-like words included.
    bare = STRING_LITERAL.sub('""', text)
    groupings = GROUPING.findall(bare)
    bare = GROUPING.sub(" ", bare)
    bare = re.sub(r"\[[^\]]*\]", "", bare)  # range and subquery windows
    problems = []
    referenced_labels: set[str] = set()
    for match in SELECTOR.finditer(bare):
        name, matchers = match.group(1), match.group(2)
        if name in PROMQL_KEYWORDS or bare[match.end():].lstrip().startswith("("):
            continue  # a keyword, or a function or aggregation being called
        if name in known:
            allowed = known[name].labels
        elif name in recorded:
            allowed = recorded[name]
        elif name in SCRAPE_SERIES:
            allowed = SCRAPE_SERIES[name] | TARGET_LABELS
        else:
            problems.append(f"unknown series {name!r}")
            continue
        referenced_labels |= allowed
        for label in MATCHER_LABEL.findall(matchers or ""):
            if label not in allowed:
                problems.append(f"{name} has no label {label!r} (it has {sorted(allowed)})")
    for group in groupings:
        for label in filter(None, (part.strip() for part in group.split(","))):
            if label not in referenced_labels:
                problems.append(f"grouping by {label!r}, which none of the series carries")
    return problems


def every_expression() -> dict[str, str]:
    return {**{f"dashboard {k}": v for k, v in dashboard_queries().items()},
            **{f"rules {k}": v for k, v in rule_expressions().items()}}


@pytest.mark.parametrize("where", sorted(every_expression()))
def test_expression_uses_only_exported_metrics_and_their_labels(where: str) -> None:
    expr = every_expression()[where]
    assert problems_in(expr) == [], f"{where}: {expr}"


def test_the_checker_catches_unknown_names_and_labels() -> None:
    # Without this, a checker that accepts everything would pass every case above.
    assert problems_in("sum(rate(cellwatch_readings_scored_total[1m]))") == []
    assert problems_in("rate(cellwatch_readings_score_total[1m])") == [
        "unknown series 'cellwatch_readings_score_total'"]
    assert problems_in('cellwatch_readings_rejected_total{reasons="x"}') != []
    assert problems_in("sum by (stream) (cellwatch_active_streams)") != []
    assert problems_in("job:cellwatch_readings_scored:rate5m") != []
    assert problems_in('sum by (reason) (cellwatch_readings_rejected_total{reason="x"})') == []


def test_every_exported_metric_is_on_the_dashboard() -> None:
    """A metric nobody can see might as well not be exported."""
    used = " ".join(dashboard_queries().values())
    families = {series.family for series in exported_series().values()}
    missing = sorted(f for f in families if not re.search(rf"\b{f}(_total|_bucket|_count|_sum)?\b",
                                                        used))
    assert missing == [], f"no dashboard panel shows {missing}"


def promtool_input_series() -> list[tuple[str, str]]:
    found = []
    for path in sorted(RULE_TESTS_DIR.glob("*.yml")):
        for test in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for item in test.get("input_series", []):
                found.append((f"{path.name}: {test['name']}", item["series"]))
    return found


def test_promtool_tests_feed_only_real_series() -> None:
    known = exported_series()
    problems = []
    for where, selector in promtool_input_series():
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}", selector.strip())
        assert match, f"{where}: cannot read series {selector!r}"
        name, labels = match.group(1), set(MATCHER_LABEL.findall(match.group(2)))
        allowed = (known[name].labels if name in known
                   else SCRAPE_SERIES[name] | TARGET_LABELS if name in SCRAPE_SERIES else None)
        if allowed is None:
            problems.append(f"{where}: {name} is not exported by the worker")
        elif labels - allowed:
            problems.append(f"{where}: {name} has no labels {sorted(labels - allowed)}")
        elif name in known and not {"job", "instance"} <= labels:
            problems.append(f"{where}: {name} lacks the job and instance a scrape adds")
    assert problems == []
