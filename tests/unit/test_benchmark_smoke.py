"""Tiny runs of the benchmarks that need no servers, so they cannot rot between real runs.

The numbers are not checked against targets here (speed targets live in benchmarks/ and its
README); a smoke run checks that the benchmark runs and reports what it promises.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_step_throughput_runs_and_reports_json():
    run = subprocess.run(
        [sys.executable, "benchmarks/step_throughput.py", "--json", "--seconds", "0.05",
         "--keras-readings", "3", "--streams", "200", "--batches", "1,64"],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, text=True,
        capture_output=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["streams"] == 200
    for kind in ("numpy_step_readings_per_second", "tf_function_step_readings_per_second"):
        assert set(report[kind]) == {"1", "64"} and min(report[kind].values()) > 0
    assert report["state_bytes_per_stream"] <= 1024
    assert report["keras_per_reading_readings_per_second"] > 0


@pytest.mark.parametrize(("script", "argument", "message"), [
    ("step_throughput.py", "--keras-readings", "--keras-readings: expected at least 1, received 0"),
    # Refused before a broker is started or reached.
    ("hot_stream_kafka.py", "--others", "--others: expected at least 1, received 0"),
])
def test_benchmarks_refuse_a_run_of_nothing(script, argument, message):
    run = subprocess.run(
        [sys.executable, f"benchmarks/{script}", argument, "0"],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, text=True,
        capture_output=True, timeout=300, check=False)
    assert run.returncode == 2 and message in run.stderr, run.stderr[-3000:]


def test_hot_stream_runs_and_reports_json():
    run = subprocess.run(
        [sys.executable, "benchmarks/hot_stream.py", "--json", "--readings", "20",
         "--max-stream-readings", "8"],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, text=True,
        capture_output=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["one_stream_step_calls"] == 20 and report["many_streams_step_calls"] == 1
    assert 0 < report["one_stream_share_in_step"] <= 1
    assert report["one_stream_seconds"] > 0 and report["many_streams_seconds"] > 0
    # 20 hot readings at 8 per batch: 3 batches, the first holding the 20 others.
    assert report["mixed_paced_batches"] == 3
    assert 0 < report["mixed_paced_first_batch_seconds"] <= report[
        "mixed_paced_all_batches_seconds"]
