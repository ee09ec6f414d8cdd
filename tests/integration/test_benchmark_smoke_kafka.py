"""Tiny runs of the benchmarks that need a broker, so they cannot rot between real runs.

Like ``tests/unit/test_benchmark_smoke.py`` for the others: the numbers are not checked
against targets (those live in benchmarks/README.md); a smoke run checks that the benchmark
runs against the session's broker and reports what it promises. River (the ``bench`` extra)
is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from deploy.kafka.local_broker import REPO_ROOT

pytestmark = pytest.mark.integration


def run_benchmark(script: str, *args: str, timeout_s: float) -> dict:
    run = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--json", *args],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, text=True,
        capture_output=True, timeout=timeout_s, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def test_throughput_runs_and_reports_json(kafka_broker) -> None:
    report = run_benchmark(
        "throughput.py", "--bootstrap", kafka_broker.bootstrap, "--readings", "2000",
        "--streams", "200", "--partitions", "2", "--producers", "1", "--keras-readings", "3",
        "--river-readings", "0", "--latency-seconds", "2", "--latency-rate", "200",
        "--memory-streams", "1000", timeout_s=300)
    assert set(report["clients"]) == {"kafka-python", "confluent"}
    assert report["keras_per_reading"]["readings_per_second"] > 0
    for client, measured in report["clients"].items():
        rates = measured["readings_per_second"]
        assert rates["bare_consumer"] > 0 and rates["worker"] > 0, client
        assert measured["ratios"]["worker_vs_bare_consumer"] > 0
        worker = measured["worker"]
        assert worker["client"] == client
        assert worker["readings"] == worker["scored"] == 2000
        assert worker["outputs"]["scores"] == 2000 and worker["co_partitioned"]
        assert worker["breakdown_seconds"]["engine_total"] > 0 and worker["batches"] >= 1
        latency = measured["latency"]
        assert latency["client"] == client
        assert latency["scores_seen"] == latency["produced"] == 400
    assert report["memory"]["1000"]["streams"] == 1000


def test_durability_runs_and_reports_json(kafka_broker) -> None:
    report = run_benchmark(
        "durability.py", "--bootstrap", kafka_broker.bootstrap, "--readings", "2000",
        "--streams", "200", "--states", "1000", timeout_s=300)
    modes = report["worker"]
    assert set(modes) == {"no_checkpoints", "checkpoints_default_interval",
                          "checkpoints_every_second", "transactions"}
    assert all(mode["readings_per_second"] > 0 for mode in modes.values())
    assert modes["no_checkpoints"]["checkpoints"] == 0
    assert modes["checkpoints_every_second"]["checkpoint_records"] >= 200
    restore = report["restore"]
    assert restore["streams"] == restore["records_read"] == 1000 and restore["incompatible"] == 0


def test_hot_stream_kafka_runs_and_reports_json(kafka_broker) -> None:
    report = run_benchmark(
        "hot_stream_kafka.py", "--bootstrap", kafka_broker.bootstrap, "--hot", "300",
        "--others", "200", "--other-streams", "50", "--limit", "20", "--limit", "1000",
        timeout_s=300)
    assert [(run["client"], run["limit"]) for run in report["runs"]] == [
        ("kafka-python", 20), ("kafka-python", 1000), ("confluent", 20), ("confluent", 1000)]
    for run in report["runs"]:
        assert run["hot"] == 300 and run["others"] == 200
        assert 0 < run["others_scored_seconds"] <= run["all_scored_seconds"]
