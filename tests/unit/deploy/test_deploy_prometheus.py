"""deploy/prometheus: promtool accepts the config and rules and their unit tests pass; every
alert is shown firing and staying quiet there; names, labels and runbooks follow the house
rules.

The promtool tests skip when promtool is absent (``apt-get install prometheus``, which
``make test`` runs), except under CI=true, where a skip would hide that nothing was checked.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cellwatch.settings import MetricsSettings

REPO = Path(__file__).resolve().parents[3]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
DEPLOY_README = REPO / "deploy" / "README.md"

SEVERITIES = {"critical", "warning"}
JOB = "cellwatch"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool is not installed: apt-get install prometheus"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (required under CI=true)", pytrace=False)
        pytest.skip(reason)
    return path


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120,
                          check=False, cwd=REPO)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> list[dict]:
    return [rule for path in RULE_FILES for group in load(path)["groups"]
            for rule in group["rules"]]


def alerts() -> dict[str, dict]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def duration_s(text: str | int | None) -> float:
    """A Prometheus duration ("1h30m", "75m", "0s") in seconds."""
    if text in (None, 0, "0"):
        return 0.0
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", str(text))
    assert "".join(n + u for n, u in parts) == str(text), f"not a duration: {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings."""
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


# --- promtool --------------------------------------------------------------------------------


def test_promtool_accepts_the_config_and_the_rule_files_it_loads(promtool: str) -> None:
    result = run_promtool(promtool, "check", "config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    loaded = {(CONFIG.parent / name).resolve() for name in load(CONFIG)["rule_files"]}
    assert loaded == {path.resolve() for path in RULE_FILES}, (
        "prometheus.yml must load every rule file in deploy/prometheus/rules, and only those")


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_accepts_the_rules(promtool: str, path: Path) -> None:
    result = run_promtool(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_rule_tests_pass(promtool: str, path: Path) -> None:
    result = run_promtool(promtool, "test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_tests_fail_when_an_alert_is_broken(promtool: str, tmp_path: Path) -> None:
    """The rule tests can fail: with the no-readings alert made to match anything, they do."""
    copy = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, copy)
    alerts_file = copy / "rules" / "cellwatch-alerts.yml"
    text = alerts_file.read_text(encoding="utf-8")
    broken = text.replace("expr: job:cellwatch_readings_consumed:rate1m == 0",
                          "expr: job:cellwatch_readings_consumed:rate1m >= 0")
    assert broken != text
    alerts_file.write_text(broken, encoding="utf-8")
    result = run_promtool(promtool, "test", "rules",
                          str(copy / "tests" / "cellwatch-alerts-test.yml"))
    assert result.returncode != 0
    assert "CellwatchNoReadings" in result.stdout + result.stderr


# --- what the rule tests cover ---------------------------------------------------------------


def alert_expectations() -> list[tuple[str, str, float, list]]:
    """(test group, alert name, eval time in seconds, expected alerts) of every rule test."""
    found = []
    for path in RULE_TESTS:
        for test in load(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                found.append((test["name"], case["alertname"], duration_s(case["eval_time"]),
                              case.get("exp_alerts") or []))
    return found


@pytest.mark.parametrize("name", sorted(alerts()))
def test_every_alert_is_shown_firing_and_staying_quiet(name: str) -> None:
    hold = duration_s(alerts()[name].get("for"))
    cases = [(group, at, expected) for group, alert, at, expected in alert_expectations()
             if alert == name]
    firing = [group for group, _, expected in cases if expected]
    # Quiet only counts once `for` has passed: before that every alert is quiet.
    quiet = [group for group, at, expected in cases if not expected and at > hold]
    assert firing, f"no promtool test shows {name} firing"
    assert quiet, f"no promtool test shows {name} quiet after its `for` of {hold:.0f} s"


def test_every_recording_rule_has_an_expected_value() -> None:
    tested = set()
    for path in RULE_TESTS:
        for test in load(path)["tests"]:
            for case in test.get("promql_expr_test", []):
                for sample in case.get("exp_samples") or []:
                    tested.add(sample["labels"].split("{")[0])
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    assert recorded - tested == set(), "recording rules without a promql_expr_test"


# --- conventions -----------------------------------------------------------------------------


@pytest.mark.parametrize("record", sorted({r["record"] for r in rules() if "record" in r}))
def test_recording_rule_names_are_level_metric_operations(record: str) -> None:
    level, metric, operations = record.split(":")
    assert metric.startswith("cellwatch_") and operations
    # The level names the labels the result keeps: the grouping labels (le is consumed by
    # histogram_quantile) plus any static labels the rule adds.
    for rule in (r for r in rules() if r.get("record") == record):
        grouped = set()
        for group in re.findall(r"\bby\s*\(([^)]*)\)", rule["expr"]):
            grouped |= {label.strip() for label in group.split(",") if label.strip()}
        if "histogram_quantile" in rule["expr"]:
            grouped.discard("le")
        assert set(level.split("_")) == grouped | set(rule.get("labels", {})), rule["expr"]


@pytest.mark.parametrize("name", sorted(alerts()))
def test_alert_has_severity_summary_description_and_a_runbook_section(name: str) -> None:
    rule = alerts()[name]
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"].strip() and annotations["description"].strip()
    page, _, anchor = annotations["runbook_url"].partition("#")
    assert (REPO / page).resolve() == DEPLOY_README.resolve()
    assert anchor in github_anchors(DEPLOY_README.read_text(encoding="utf-8")), (
        f"deploy/README.md has no heading with the anchor #{anchor}")


def test_alert_names_are_unique_and_prefixed() -> None:
    names = [rule["alert"] for rule in rules() if "alert" in rule]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"Cellwatch[A-Z][A-Za-z]+", name) for name in names)


def test_the_alerts_select_the_scrape_job_of_the_config() -> None:
    jobs = {job for rule in rules() for job in re.findall(r'job="([^"]+)"', rule["expr"])}
    assert jobs == {JOB}
    scrape_jobs = {config["job_name"]: config for config in load(CONFIG)["scrape_configs"]}
    assert JOB in scrape_jobs


def test_the_scrape_config_finds_the_workers_on_their_metrics_port() -> None:
    job = next(c for c in load(CONFIG)["scrape_configs"] if c["job_name"] == JOB)
    assert job.get("metrics_path", "/metrics") == "/metrics"
    ports = {sd["port"] for sd in job["dns_sd_configs"]}
    assert ports == {MetricsSettings().port}
    # The rate1m recording rules need at least two scrapes in a minute.
    interval = job.get("scrape_interval", load(CONFIG)["global"]["scrape_interval"])
    assert duration_s(interval) <= 30


def test_the_anchor_slugs_match_githubs() -> None:
    assert github_anchors("## CellwatchWorkerDown\n### What it means, and why!\n") == {
        "cellwatchworkerdown", "what-it-means-and-why"}
