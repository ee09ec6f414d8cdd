"""The Grafana dashboard and the Prometheus rules against a real worker, Kafka and Prometheus.

One worker runs in a thread on a fresh topic; a real Prometheus scrapes it every second with
the recording and alerting rules of deploy/prometheus loaded; readings (and a few rejected
records) go through Kafka. Then every panel query of the dashboard is evaluated through
Prometheus' HTTP API, with the dashboard variables set as Grafana would set them.

"Returns data" means: Prometheus accepts the query (HTTP 200), the result has at least one
series, and every value is a finite number, NaN included as a failure. A quantile over a
histogram with no observation in its rate window is NaN, so the fixture makes sure every
histogram is observed while Prometheus watches: checkpoints run every second, and one
partition is handed to another group member and back, so that the worker restores it from
the changelog (a restore otherwise happens only at the first assignment, before the first
scrape).

No Grafana runs here: the panels' rendering is not tested, only their queries.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.errors import KafkaError

from tests.integration import servers
from tests.integration.streaming_support import (
    produce,
    reading_bytes,
    readings,
    small_artifact,
    worker_settings,
    worker_thread,
)

pytestmark = pytest.mark.integration

DEPLOY = servers.REPO_ROOT / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "cellwatch.json"
JOB = "cellwatch"
STREAMS = 6
PER_STREAM = 40
REJECTED = {"invalid_json": 3, "missing_channel": 2}
SPIKED_STREAM = "stream-002"
SPIKE_INDEX = 30  # past the small artifact's learning period of 20 readings
# What Grafana puts in $__rate_interval for a 15s scrape interval (the provisioned
# datasource's timeInterval): four scrape intervals.
RATE_INTERVAL = "1m"


class DeployedRulesPrometheus(servers.PrometheusServer):
    """A Prometheus with deploy/prometheus/prometheus.yml's rule files and cellwatch job.

    The job's DNS discovery (compose service names) is replaced by the worker's loopback
    address, and the intervals shortened to 1s so that rates exist within seconds.
    """

    def render_config(self) -> str:
        deployed = yaml.safe_load(PROMETHEUS_YML.read_text(encoding="utf-8"))
        job = next(c for c in deployed["scrape_configs"] if c["job_name"] == JOB)
        config = {
            "global": {"scrape_interval": self.scrape_interval,
                       "scrape_timeout": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval},
            "rule_files": [str((PROMETHEUS_YML.parent / f).resolve())
                           for f in deployed["rule_files"]],
            "scrape_configs": [{"job_name": JOB,
                                "metrics_path": job.get("metrics_path", "/metrics"),
                                "static_configs": [{"targets": self.jobs[JOB]}]}],
        }
        return yaml.safe_dump(config, sort_keys=False)


@dataclass(frozen=True)
class ScrapedWorker:
    prometheus: DeployedRulesPrometheus
    instance: str
    model_version: str


def require_prometheus() -> None:
    missing = servers.prometheus_missing_requirements()
    if missing:
        reason = "the dashboard query tests need: " + "; ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (required under CI=true)", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def scraped_worker(kafka_broker, tmp_path_factory) -> Iterator[ScrapedWorker]:
    """One worker, fed and scraped, shared by the tests of this module (starting a worker
    and a Prometheus per test would triple the run time for nothing)."""
    require_prometheus()
    bootstrap = kafka_broker.bootstrap
    prefix = f"test-dashboard-queries-{uuid.uuid4().hex[:8]}"
    topic = f"{prefix}-readings"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="cellwatch-tests")
    try:
        admin.create_topics({topic: {"num_partitions": 2, "replication_factor": 1}},
                            wait_for_metadata=True)
        yield from feed_and_scrape(bootstrap, topic, prefix, tmp_path_factory)
    finally:
        with contextlib.suppress(KafkaError):
            admin.delete_topics([topic] + [f"{prefix}-{suffix}" for suffix in
                                           ("scores", "anomalies", "dead-letter", "changelog")],
                                raise_errors=False)
        admin.close()


def feed_and_scrape(bootstrap: str, topic: str, prefix: str,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScrapedWorker]:
    artifact = small_artifact(tmp_path_factory.mktemp("artifact") / "model")
    model_version = json.loads((artifact / "metadata.json").read_text())["model_version"]
    # Checkpoints every second, so that the checkpoint panels have observations to show.
    settings = worker_settings(bootstrap, artifact, topic, prefix,
                               checkpoint_interval_seconds=1.0)
    now_ms = int(time.time() * 1000)
    # One reading a second per stream up to now, so that the reading-time latency stays
    # within the histogram's buckets (readings() spaces them a minute apart).
    good = [(s, now_ms - (PER_STREAM - ts // 60_000) * 1000, values)
            for s, ts, values in readings(STREAMS, PER_STREAM, start_ms=0)]
    # One reading far off, after the stream's learning period, for the anomaly panels.
    spike = next(i for i, (s, ts, _) in enumerate(good)
                 if s == SPIKED_STREAM and ts == now_ms - (PER_STREAM - SPIKE_INDEX) * 1000)
    stream, ts, values = good[spike]
    good[spike] = (stream, ts, [values[0] + 400.0, *values[1:]])
    messages = [(s.encode(), reading_bytes(s, ts, values)) for s, ts, values in good]
    messages += [(b"bad", b'{"stream": "bad", "ts": ')] * REJECTED["invalid_json"]
    messages += [(b"bad", json.dumps({"stream": "bad", "ts": now_ms,
                                      "values": {"temperature": 1.0}}).encode())
                 ] * REJECTED["missing_channel"]
    with worker_thread(settings) as running:
        instance = f"127.0.0.1:{running['endpoint'].port}"
        prometheus = DeployedRulesPrometheus(
            tmp_path_factory.mktemp("prometheus"), {JOB: [instance]}, scrape_interval="1s")
        prometheus.start()
        try:
            prometheus.wait_for(f'up{{job="{JOB}"}} == 1', timeout=20)
            # Produced only now, so that the counters rise between scrapes and the rate
            # windows see the rise.
            produce(bootstrap, topic, messages)
            prometheus.wait_for(
                f'sum(cellwatch_readings_consumed_total{{job="{JOB}"}}) >= {len(messages)}',
                timeout=45)
            prometheus.wait_for(
                f'sum(rate(cellwatch_readings_scored_total{{job="{JOB}"}}[1m])) > 0',
                timeout=10)
            # Streams, state bytes and lag are refreshed by the worker's housekeeping every
            # few seconds, not per batch.
            prometheus.wait_for(
                f'sum(cellwatch_active_streams{{job="{JOB}"}}) == {STREAMS}', timeout=15)
            prometheus.wait_for(f'cellwatch_consumer_lag_messages{{job="{JOB}"}}', timeout=15)
            # A restore happens at assignment, usually before the first scrape: hand one
            # partition to another group member and back, so that the worker restores it from
            # the changelog while Prometheus watches.
            borrow_a_partition(bootstrap, topic, settings.kafka.group_id)
            prometheus.wait_for(f'sum(increase(cellwatch_restore_duration_seconds_count'
                                f'{{job="{JOB}"}}[{RATE_INTERVAL}])) > 0', timeout=30)
            yield ScrapedWorker(prometheus, instance, model_version)
        finally:
            prometheus.stop()


def borrow_a_partition(bootstrap: str, topic: str, group: str, timeout_s: float = 30.0) -> None:
    """Joins the worker's group until it is assigned a partition, then leaves."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False, session_timeout_ms=6000,
                             heartbeat_interval_ms=1000)
    try:
        # Metadata before subscribing, or kafka-python may assign nothing (see kafka_io).
        assert consumer.partitions_for_topic(topic)
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout_s
        while not consumer.assignment():
            assert time.monotonic() < deadline, "never assigned a partition of the worker's"
            consumer.poll(timeout_ms=200, max_records=1)
    finally:
        consumer.close(autocommit=False)


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panel_targets() -> list[tuple[tuple[str, str], str]]:
    """((panel title, refId), expr) of every query on the dashboard."""
    return [((panel["title"], target["refId"]), target["expr"])
            for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def as_grafana_would(expr: str, instance: str = ".*") -> str:
    """The query with the dashboard variables substituted: our job, All workers."""
    substituted = (expr.replace("$__rate_interval", RATE_INTERVAL)
                   .replace("${job}", JOB).replace("$job", JOB)
                   .replace("${instance}", instance).replace("$instance", instance))
    assert "$" not in substituted, f"unsubstituted variable in {substituted}"
    return substituted


def values(result: list[dict]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


def test_every_panel_query_returns_data(scraped_worker: ScrapedWorker) -> None:
    prometheus = scraped_worker.prometheus
    report, failures, results = [], [], {}
    for key, expr in panel_targets():
        where = f"{key[0]} [{key[1]}]"
        query = as_grafana_would(expr)
        try:
            result = prometheus.query(query)
        except servers.PrometheusError as error:
            failures.append(f"{where}: rejected: {error}")
            continue
        results[key] = result
        numbers = values(result)
        shown = ", ".join(f"{v:.4g}" for v in numbers[:4]) + (" ..." if len(numbers) > 4 else "")
        report.append(f"{where}: {len(result)} series ({shown})")
        if not result:
            failures.append(f"{where}: no series for {query}")
        elif not all(math.isfinite(v) for v in numbers):
            failures.append(f"{where}: non-finite values {numbers} for {query}")
    print("\n" + "\n".join(report))
    assert failures == []

    # The numbers mean what the panels say: the readings went through, all streams are held,
    # the spike was flagged, the rejects are counted by reason and the served model is the
    # one loaded.
    assert values(results["Readings per second", "A"])[0] > 0
    assert values(results["Active streams", "A"]) == [STREAMS]
    assert values(results["Anomalies per second", "A"])[0] > 0
    rejected = {s["metric"]["reason"]: float(s["value"][1])
                for s in results["Rejected readings by reason", "A"]}
    assert {reason for reason, rate in rejected.items() if rate > 0} == set(REJECTED)
    assert [s["metric"]["version"] for s in results["Model version", "A"]] == [
        scraped_worker.model_version]
    assert values(results["Workers up", "A"]) == [1]


def test_dashboard_variables_resolve_to_the_scraped_worker(
        scraped_worker: ScrapedWorker) -> None:
    found = {}
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["query"]["query"])
        selector, label = match.groups()
        series = scraped_worker.prometheus.api(
            "series", **{"match[]": as_grafana_would(selector)})
        found[variable["name"]] = {s[label] for s in series if label in s}
    assert found == {"job": {JOB}, "instance": {scraped_worker.instance}}


def deployed_rules() -> list[dict]:
    deployed = yaml.safe_load(PROMETHEUS_YML.read_text(encoding="utf-8"))
    return [rule for rule_file in deployed["rule_files"]
            for group in yaml.safe_load((PROMETHEUS_YML.parent / rule_file).read_text())["groups"]
            for rule in group["rules"]]


def recorded_names() -> list[str]:
    return list(dict.fromkeys(r["record"] for r in deployed_rules() if "record" in r))


def test_every_recording_rule_records_series_from_the_worker(
        scraped_worker: ScrapedWorker) -> None:
    prometheus = scraped_worker.prometheus
    report = []
    for name in recorded_names():
        result = prometheus.wait_for(name, timeout=15)
        shown = ", ".join(f"{v:.4g}" for v in values(result))
        report.append(f"{name}: {len(result)} series ({shown})")
        assert {s["metric"]["job"] for s in result} == {JOB}, name
    print("\n" + "\n".join(report))
    consumed = prometheus.wait_for("job:cellwatch_readings_consumed:rate1m > 0", timeout=10)
    assert len(consumed) == 1
    # One latency series per quantile and reference.
    latency = prometheus.query(
        "job_reference_quantile:cellwatch_end_to_end_latency_seconds:histogram_quantile_rate5m")
    assert {(s["metric"]["reference"], s["metric"]["quantile"]) for s in latency} == {
        (r, q) for r in ("broker_time", "reading_time") for q in ("0.5", "0.9", "0.99")}


def test_every_rule_evaluates_without_error(scraped_worker: ScrapedWorker) -> None:
    prometheus = scraped_worker.prometheus
    deadline = time.monotonic() + 15
    while True:
        rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
        pending = [r["name"] for r in rules if r.get("health") == "unknown"]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(rules) == len(deployed_rules()), "Prometheus loaded a different set of rules"
    unhealthy = {r["name"]: r.get("lastError") for r in rules if r.get("health") != "ok"}
    assert unhealthy == {}
    states = {r["name"]: r["state"] for r in rules if r["type"] == "alerting"}
    print("\n" + "\n".join(f"{name}: {state}" for name, state in sorted(states.items())))
    # A healthy worker a minute old: every alert has a `for` (or nothing failing) to wait out.
    assert "firing" not in states.values()
