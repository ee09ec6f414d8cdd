"""`cellwatch replay` in process equals the worker through a real broker; SIGTERM on a real
`cellwatch run` finishes the batch in hand, commits, exits 0, and loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from kafka import KafkaConsumer, TopicPartition

from cellwatch.cli import main
from deploy.kafka.local_broker import REPO_ROOT, committed_offsets, free_port
from detector.readings import ReadingMessageWriter
from tests.integration.streaming_support import (
    CHANNELS,
    end_offsets,
    produce,
    read_topic,
    reading_bytes,
    readings,
    small_artifact,
    worker_settings,
    worker_thread,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return small_artifact(tmp_path_factory.mktemp("artifact") / "model")


def write_recording(path: Path, rows) -> Path:
    text = ReadingMessageWriter(CHANNELS).text
    with path.open("w") as out:
        out.writelines(text(stream, ts, values) + "\n" for stream, ts, values in rows)
    return path


def test_in_process_replay_equals_the_worker_through_kafka(
        kafka_broker, topic_factory, unique_name, artifact, tmp_path):
    bootstrap = kafka_broker.bootstrap
    recording = write_recording(tmp_path / "recording.jsonl", readings(30, 60, seed=8))
    topic = topic_factory(partitions=3, purpose="readings")
    settings = worker_settings(bootstrap, artifact, topic, unique_name("w"))
    runner = CliRunner()

    local = runner.invoke(main, ["replay", str(recording), "--artifact", str(artifact),
                                 "--score-to", str(tmp_path / "scores.jsonl")], env={})
    assert local.exit_code == 0, local.output
    assert "scored 1800 readings (0 rejected)" in local.output
    in_process = {(r["stream"], r["ts"]): r for r in map(
        json.loads, (tmp_path / "scores.jsonl").read_text().splitlines())}

    with worker_thread(settings):
        sent = runner.invoke(main, ["replay", str(recording), "--to-kafka", topic,
                                    "--bootstrap-servers", bootstrap], env={})
        assert sent.exit_code == 0, sent.output
        assert "produced 1800 readings" in sent.output
        records = read_topic(bootstrap, settings.kafka.scores_topic, len(in_process))
    through_kafka = {(r["stream"], r["ts"]): r for r in (json.loads(x.value) for x in records)}

    assert len(records) == len(in_process) == 1800
    assert through_kafka.keys() == in_process.keys()
    for key, local_record in in_process.items():
        remote = through_kafka[key]
        # Batches differ (polls vs fixed chunks); BLAS may round the last bit differently.
        for field in ("score", "likelihood", "surprise", "onset"):
            assert remote[field] == pytest.approx(local_record[field], rel=1e-5, abs=1e-6), key
        assert (remote["flag"], remote["top_channel"], remote["model_version"]) == (
            local_record["flag"], local_record["top_channel"], local_record["model_version"])


def test_sigterm_finishes_the_batch_commits_and_exits_zero(
        kafka_broker, topic_factory, unique_name, artifact):
    bootstrap = kafka_broker.bootstrap
    topic = topic_factory(partitions=4, purpose="readings")
    prefix = unique_name("w")
    settings = worker_settings(bootstrap, artifact, topic, prefix, max_poll_records=500)
    rows = readings(50, 400, seed=4)  # 20,000 readings
    port = free_port()
    env = {**os.environ,
           "CELLWATCH_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
           "CELLWATCH_KAFKA_GROUP_ID": settings.kafka.group_id,
           "CELLWATCH_KAFKA_READINGS_TOPIC": topic,
           "CELLWATCH_KAFKA_SCORES_TOPIC": settings.kafka.scores_topic,
           "CELLWATCH_KAFKA_ANOMALIES_TOPIC": settings.kafka.anomalies_topic,
           "CELLWATCH_KAFKA_DEAD_LETTER_TOPIC": settings.kafka.dead_letter_topic,
           "CELLWATCH_KAFKA_CHANGELOG_TOPIC": settings.kafka.changelog_topic,
           "CELLWATCH_KAFKA_SESSION_TIMEOUT_MS": str(settings.kafka.session_timeout_ms),
           "CELLWATCH_MODEL_ARTIFACT": str(artifact),
           "CELLWATCH_METRICS_PORT": str(port),
           "CELLWATCH_WORKER_MAX_POLL_RECORDS": "500"}
    producer = threading.Thread(target=produce, args=(bootstrap, topic, [
        (stream.encode(), reading_bytes(stream, ts, values)) for stream, ts, values in rows]))
    producer.start()
    process = subprocess.Popen([sys.executable, "-m", "cellwatch", "run"], cwd=REPO_ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        scored = 0.0
        deadline = time.monotonic() + 120
        while scored < 2000 and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    for line in r.read().decode().splitlines():
                        if line.startswith("cellwatch_readings_scored_total "):
                            scored = float(line.split()[1])
            except OSError:
                assert process.poll() is None, process.stdout.read().decode()
        assert scored >= 2000, "the worker scored too little before the deadline"
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0].decode()
    finally:
        if process.poll() is None:
            process.kill()
        producer.join(120)
    assert process.returncode == 0, output
    assert "SIGTERM received" in output

    # Everything before the committed offsets was scored: the stop lost nothing.
    committed = committed_offsets(bootstrap, settings.kafka.group_id, topic)
    consumed = sum(committed.values())
    assert consumed >= 2000
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    inputs = []
    try:
        for partition, offset in committed.items():
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, 0)
            while consumer.position(tp) < offset:
                for batch in consumer.poll(timeout_ms=500).values():
                    inputs.extend(json.loads(r.value) for r in batch if r.offset < offset)
    finally:
        consumer.close()
    scores = read_topic(bootstrap, settings.kafka.scores_topic, consumed)
    scored_keys = Counter((json.loads(r.value)["stream"], json.loads(r.value)["ts"])
                          for r in scores)
    assert len(inputs) == consumed
    assert all(scored_keys[(r["stream"], r["ts"])] == 1 for r in inputs)

    # A new worker of the group picks up exactly where the stopped one committed.
    with worker_thread(settings):
        scores = read_topic(bootstrap, settings.kafka.scores_topic, len(rows))
    keys = Counter((json.loads(r.value)["stream"], json.loads(r.value)["ts"]) for r in scores)
    assert set(keys) == {(s, t) for s, t, _ in rows}
    assert max(keys.values()) == 1, "a reading was scored twice after a clean stop"
    assert committed_offsets(bootstrap, settings.kafka.group_id, topic) == end_offsets(
        bootstrap, topic)
