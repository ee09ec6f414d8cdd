"""deploy/grafana: the dashboard's structure and its provisioning.

What it queries is checked in test_deploy_metric_names.py (only exported metrics) and
against a real Prometheus in tests/integration/test_dashboard_queries.py.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "cellwatch.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "cellwatch.yml"

DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
PANEL_TYPES = {"row", "stat", "timeseries", "heatmap", "table"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}
GRID_WIDTH = 24


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(dashboard: dict) -> list[dict]:
    """Top-level panels and those inside collapsed rows."""
    return [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]


def content_panels(dashboard: dict) -> list[dict]:
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def variables(dashboard: dict) -> dict[str, dict]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def test_identity_and_schema(dashboard: dict) -> None:
    assert dashboard["uid"] == "cellwatch-worker"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    # Provisioned dashboards must not carry a database id.
    assert "id" not in dashboard or dashboard["id"] is None


def test_panel_ids_are_unique(dashboard: dict) -> None:
    ids = [panel["id"] for panel in all_panels(dashboard)]
    assert all(isinstance(i, int) for i in ids)
    duplicates = sorted(i for i in set(ids) if ids.count(i) > 1)
    assert duplicates == []


def test_panel_types_are_known_and_titled(dashboard: dict) -> None:
    for panel in all_panels(dashboard):
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert panel["title"].strip()
        if panel["type"] != "row":
            assert panel.get("description", "").strip(), f"{panel['title']}: no description"


def test_there_is_a_prometheus_datasource_variable(dashboard: dict) -> None:
    variable = variables(dashboard)["datasource"]
    assert variable["type"] == "datasource"
    assert variable["query"] == "prometheus"


def test_every_query_uses_the_datasource_variable(dashboard: dict) -> None:
    for panel in content_panels(dashboard):
        assert panel["datasource"] == DATASOURCE_REF, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE_REF, f"{panel['title']} {target['refId']}"
    for variable in variables(dashboard).values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE_REF, variable["name"]


def test_targets_have_unique_ref_ids_and_an_expression(dashboard: dict) -> None:
    for panel in content_panels(dashboard):
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{panel['title']} {target['refId']}"


def test_queries_only_use_defined_variables(dashboard: dict) -> None:
    defined = set(variables(dashboard)) | GRAFANA_BUILTINS
    texts = [t["expr"] for p in content_panels(dashboard) for t in p["targets"]]
    texts += [json.dumps(v.get("query")) for v in variables(dashboard).values()]
    used = {name for text in texts for name in re.findall(r"\$\{?(\w+)", text)}
    assert used - defined == set()
    # The selectors filter on both, so a worker can be picked from the fleet.
    assert {"job", "instance"} <= used


def test_instance_variable_depends_on_job_and_allows_all(dashboard: dict) -> None:
    instance = variables(dashboard)["instance"]
    assert "$job" in json.dumps(instance["query"])
    assert instance["includeAll"] and instance["allValue"] == ".*"


def test_panels_fit_the_grid_without_overlapping(dashboard: dict) -> None:
    boxes = []
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["h"] > 0
        assert grid["x"] + grid["w"] <= GRID_WIDTH, panel["title"]
        boxes.append((panel["title"], grid))
    for (a, ga), (b, gb) in itertools.combinations(boxes, 2):
        apart = (ga["x"] + ga["w"] <= gb["x"] or gb["x"] + gb["w"] <= ga["x"]
                 or ga["y"] + ga["h"] <= gb["y"] or gb["y"] + gb["h"] <= ga["y"])
        assert apart, f"{a!r} overlaps {b!r}"


def test_the_panels_the_issue_asks_for_are_there(dashboard: dict) -> None:
    titles = {panel["title"] for panel in all_panels(dashboard)}
    expected = {
        "Readings per second",  # throughput
        "Consumer lag by topic",
        "End-to-end latency from the broker",  # latency percentiles
        "Share of readings flagged",  # anomaly rate
        "Rejected readings by reason",
        "Active streams",
        "State memory",
        "Checkpoint duration",
        "Restore duration",
        "Model version",
    }
    assert expected <= titles


def test_heatmaps_query_buckets_in_heatmap_format(dashboard: dict) -> None:
    for panel in content_panels(dashboard):
        if panel["type"] == "heatmap":
            for target in panel["targets"]:
                assert target.get("format") == "heatmap"
                assert "_bucket" in target["expr"] and "by (le)" in target["expr"]


def test_provisioned_datasource_is_the_prometheus_the_dashboard_expects() -> None:
    sources = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"]
    prometheus = [s for s in sources if s["type"] == "prometheus"]
    assert len(prometheus) == 1 and prometheus[0]["isDefault"]
    # $__rate_interval is derived from it: it must be the real scrape interval.
    scrape = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())["global"]
    assert prometheus[0]["jsonData"]["timeInterval"] == scrape["scrape_interval"]


def test_dashboard_provider_is_a_file_provider() -> None:
    providers = yaml.safe_load(PROVIDERS.read_text(encoding="utf-8"))["providers"]
    assert [p["type"] for p in providers] == ["file"]
    assert providers[0]["options"]["path"].startswith("/")
