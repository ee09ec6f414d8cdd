"""Durability against a real broker: SIGKILLed workers, a consumer group that loses and gains
members, and a broker restart. In every case the scores, deduplicated by (stream, ts), equal
those of one uninterrupted in-process run for every reading, byte for byte, and none is
missing."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from cellwatch import wiring
from deploy.kafka.local_broker import REPO_ROOT, KafkaBroker, committed_offsets, free_port
from detector.artifact import load_artifact
from streaming.engine import Reading, ScoringEngine
from streaming.output_records import encode_scores
from streaming.state_store import StateStore
from tests.integration.streaming_support import (
    CHANNELS,
    end_offsets,
    produce,
    reading_bytes,
    readings,
    small_artifact,
    worker_settings,
    worker_thread,
)
from tests.unit.streaming.conftest import DurabilityFault, FaultyEngine

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return small_artifact(tmp_path_factory.mktemp("artifact") / "model")


class WorkerProcess:
    """A real `cellwatch run` in its own process, configured through the environment."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cellwatch", "run"], cwd=REPO_ROOT,
            env={**env, "CELLWATCH_METRICS_PORT": str(self.port)},
            stdout=self._log, stderr=subprocess.STDOUT)

    def metric(self, name: str) -> float:
        """An unlabelled metric of this process (0 until its endpoint answers)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                        timeout=2) as response:
                for line in response.read().decode().splitlines():
                    if line.startswith(name + " "):
                        return float(line.split()[1])
        except OSError:
            pass
        return 0.0

    def scored(self) -> float:
        return self.metric("cellwatch_readings_scored_total")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait(30)
        self._log.close()


@contextmanager
def workers(env: dict[str, str], log_dir: Path) -> Iterator[list[WorkerProcess]]:
    """Every worker started through the yielded list is killed on the way out."""
    started: list[WorkerProcess] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.close()


def worker_env(bootstrap: str, artifact: Path, topic: str, prefix: str,
               client: str = "kafka-python") -> dict[str, str]:
    return {**os.environ,
            "CELLWATCH_KAFKA_CLIENT": client,
            "CELLWATCH_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "CELLWATCH_KAFKA_GROUP_ID": f"{prefix}-group",
            "CELLWATCH_KAFKA_READINGS_TOPIC": topic,
            "CELLWATCH_KAFKA_SCORES_TOPIC": f"{prefix}-scores",
            "CELLWATCH_KAFKA_ANOMALIES_TOPIC": f"{prefix}-anomalies",
            "CELLWATCH_KAFKA_DEAD_LETTER_TOPIC": f"{prefix}-dead-letter",
            "CELLWATCH_KAFKA_CHANGELOG_TOPIC": f"{prefix}-changelog",
            "CELLWATCH_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "CELLWATCH_WORKER_CHECKPOINT_INTERVAL_SECONDS": "1.0",
            "CELLWATCH_WORKER_MAX_POLL_RECORDS": "2000",
            "CELLWATCH_MODEL_ARTIFACT": str(artifact)}


def reference_scores(artifact: Path, rows: Sequence[tuple[str, int, list[float]]]
                     ) -> dict[tuple[str, int], bytes]:
    """One uninterrupted run in process: the engine over every reading, in order; each
    reading's score record."""
    loaded = load_artifact(artifact)
    engine = ScoringEngine(loaded.step, StateStore(loaded.step.layout), CHANNELS,
                           loaded.metadata.model_version)
    out: dict[tuple[str, int], bytes] = {}
    for start in range(0, len(rows), 5000):
        batch = [Reading(s, ts, np.asarray(v, np.float32)) for s, ts, v in
                 rows[start:start + 5000]]
        for reading, (_, value) in zip(batch, encode_scores(engine.process(batch).scores),
                                       strict=True):
            out[(reading.stream, reading.ts_ms)] = value
    return out


def read_everything(bootstrap: str, topic: str, timeout_s: float = 120.0,
                    isolation_level: str = "read_uncommitted") -> list:
    """Every record of ``topic`` up to its current end (with ``read_committed``, its last
    stable offset: every record of a committed transaction, none of an aborted one)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             max_partition_fetch_bytes=8 * 1024 * 1024,
                             isolation_level=isolation_level)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        ends = consumer.end_offsets(partitions)
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            assert time.monotonic() < deadline, f"{topic}: not read within {timeout_s} s"
            for batch in consumer.poll(timeout_ms=500, max_records=50_000).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def score_discrepancies(records: Sequence, expected: dict[tuple[str, int], bytes]
                        ) -> list[str]:
    """How the published score records differ from the uninterrupted run's, deduplicated by
    (stream, ts): a reading never scored or scored without being sent, a record keyed by
    another stream, or any copy of a record not identical byte for byte (a replayed reading
    must reproduce the very record). Empty when no reading was lost and none applied twice:
    one applied twice moves its stream's state, so the stream's next records differ."""
    published: dict[tuple[str, int], list[bytes]] = {}
    found: list[str] = []
    for record in records:
        value = json.loads(record.value)
        key = (value["stream"], value["ts"])
        if record.key != value["stream"].encode():
            found.append(f"stream {key[0]!r} ts {key[1]}: keyed {record.key!r}")
        published.setdefault(key, []).append(record.value)
    found += [f"stream {stream!r} ts {ts}: never scored"
              for stream, ts in sorted(expected.keys() - published.keys())]
    found += [f"stream {stream!r} ts {ts}: scored but never sent"
              for stream, ts in sorted(published.keys() - expected.keys())]
    for (stream, ts), values in sorted(published.items()):
        reference = expected.get((stream, ts))
        for value in sorted(set(values) - {reference}) if reference is not None else ():
            found.append(f"stream {stream!r} ts {ts}: published {value!r}, uninterrupted "
                         f"{reference!r}")
    return found


def assert_equal_to_uninterrupted(bootstrap: str, scores_topic: str,
                                  expected: dict[tuple[str, int], bytes]) -> int:
    """Deduplicated by key, the published scores equal the reference byte for byte; returns
    how many records were read (duplicates included)."""
    records = read_everything(bootstrap, scores_topic)
    found = score_discrepancies(records, expected)
    assert not found, f"{len(found)} discrepancies, first:\n" + "\n".join(found[:5])
    return len(records)


def wait_until(condition, timeout_s: float, what: str, watched: Sequence[WorkerProcess] = ()
               ) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        for worker in watched:
            assert worker.alive(), f"a worker died:\n{worker.output()}"
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.25)


def all_committed(bootstrap: str, group: str, topic: str) -> bool:
    return committed_offsets(bootstrap, group, topic) == end_offsets(bootstrap, topic)


def messages_of(rows) -> list[tuple[bytes, bytes]]:
    return [(stream.encode(), reading_bytes(stream, ts, values)) for stream, ts, values in rows]


@pytest.mark.parametrize("fault_kind", [None, "drop", "apply_twice"])
def test_the_durability_check_reports_a_reading_lost_or_applied_twice(
        kafka_broker, topic_factory, unique_name, artifact, monkeypatch, fault_kind):
    """The check the other tests end with, after a worker whose engine mishandles one
    reading every time it sees it: dropped (never applied nor scored, its offset committed
    all the same) or applied twice to its stream's state. The worker runs in this process,
    so that its engine can be replaced; Kafka and everything else are real. Without a fault
    the check finds nothing; with one it names the stream and the reading."""
    bootstrap = kafka_broker.bootstrap
    topic = topic_factory(partitions=2, purpose="readings")
    prefix = unique_name("fault")
    streams = 20
    rows = readings(streams=streams, per_stream=30, seed=26)
    produce(bootstrap, topic, messages_of(rows))
    expected = reference_scores(artifact, rows)
    stream, faulty_ts, _ = rows[10 * streams + 3]  # the 11th reading of stream-003
    following_ts = rows[11 * streams + 3][1]
    if fault_kind is not None:
        # cellwatch.wiring builds the worker's engine.
        monkeypatch.setattr(wiring, "ScoringEngine", functools.partial(
            FaultyEngine, fault=DurabilityFault(fault_kind, stream, faulty_ts)))

    with worker_thread(worker_settings(bootstrap, artifact, topic, prefix)) as running:
        registry = running["endpoint"].registry
        wait_until(lambda: (registry.get_sample_value("cellwatch_readings_consumed_total")
                            or 0) >= len(rows), 120, "every reading consumed")
    found = score_discrepancies(read_everything(bootstrap, f"{prefix}-scores"), expected)

    if fault_kind is None:
        assert found == []
        return
    assert found, "the check missed the fault"
    assert all(line.startswith(f"stream {stream!r} ts ") for line in found), found
    if fault_kind == "drop":
        assert found[0] == f"stream {stream!r} ts {faulty_ts}: never scored", found
    else:  # the doubly applied reading's own score is right; the next one is not
        assert found[0].startswith(f"stream {stream!r} ts {following_ts}: "), found


def test_sigkilled_workers_lose_nothing_and_apply_nothing_twice(
        kafka_broker, topic_factory, unique_name, artifact, tmp_path, kafka_client):
    bootstrap = kafka_broker.bootstrap
    topic = topic_factory(partitions=4, purpose="readings")
    prefix = unique_name("crash")
    env = worker_env(bootstrap, artifact, topic, prefix, kafka_client)
    rows = readings(streams=2000, per_stream=100, seed=21)
    produce(bootstrap, topic, messages_of(rows))
    expected = reference_scores(artifact, rows)
    assert len(expected) == 200_000

    rng = np.random.default_rng(5)
    kill_after = sorted(rng.integers(8_000, 45_000, size=3).tolist())
    killed = 0
    with workers(env, tmp_path) as started:
        for scored_before_kill in kill_after:
            worker = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log")
            started.append(worker)
            wait_until(lambda w=worker, n=scored_before_kill: w.scored() >= n, 180,
                       f"{scored_before_kill} readings scored", [worker])
            worker.kill()
            killed += 1
        final = WorkerProcess(env, tmp_path / "worker-final.log")
        started.append(final)
        wait_until(lambda: all_committed(bootstrap, f"{prefix}-group", topic), 300,
                   "every reading committed", [final])
        assert final.terminate() == 0, final.output()
    assert killed == 3
    logs = [w.log_path.read_text(errors="replace") for w in started]
    assert all("restored" in text for text in logs[1:]), "a restarted worker restored nothing"
    read = assert_equal_to_uninterrupted(bootstrap, f"{prefix}-scores", expected)
    assert read >= len(expected)


def test_a_group_survives_losing_a_member_and_gaining_one(
        kafka_broker, topic_factory, unique_name, artifact, tmp_path, kafka_client):
    bootstrap = kafka_broker.bootstrap
    topic = topic_factory(partitions=8, purpose="readings")
    prefix = unique_name("group")
    env = worker_env(bootstrap, artifact, topic, prefix, kafka_client)
    rows = readings(streams=1200, per_stream=100, seed=22)
    half = len(rows) // 2
    produce(bootstrap, topic, messages_of(rows[:half]))
    expected = reference_scores(artifact, rows)

    def published() -> int:
        return sum(end_offsets(bootstrap, f"{prefix}-scores").values())

    with workers(env, tmp_path) as started:
        for number in range(3):
            started.append(WorkerProcess(env, tmp_path / f"member-{number}.log"))
        wait_until(lambda: published() >= len(rows) // 5, 240, "a fifth of the readings scored",
                   started)
        victim = started[1]
        victim.kill()
        members = [started[0], started[2]]
        wait_until(lambda: published() >= half, 240, "the first half scored", members)
        newcomer = WorkerProcess(env, tmp_path / "member-new.log")
        started.append(newcomer)
        members.append(newcomer)
        wait_until(lambda: newcomer.metric("cellwatch_assigned_partitions") > 0, 240,
                   "the newcomer's first partitions", members)
        produce(bootstrap, topic, messages_of(rows[half:]))
        wait_until(lambda: all_committed(bootstrap, f"{prefix}-group", topic), 300,
                   "every reading committed", members)
        newcomer_scored = newcomer.scored()
        for worker in members:
            assert worker.terminate() == 0, worker.output()
    assert_equal_to_uninterrupted(bootstrap, f"{prefix}-scores", expected)
    assert newcomer_scored > 0  # it took partitions over and scored part of the second half


def test_the_worker_rides_out_a_broker_restart(unique_name, artifact, tmp_path, kafka_broker,
                                               kafka_client):
    if not kafka_broker.managed:
        pytest.skip("needs a broker this test may stop and start")
    with KafkaBroker(tmp_path / "kafka") as broker:
        bootstrap = broker.bootstrap
        prefix = unique_name("restart")
        topic = f"{prefix}-readings"
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics({topic: {"num_partitions": 4}}, wait_for_metadata=True)
        admin.close()
        env = worker_env(bootstrap, artifact, topic, prefix, kafka_client)
        rows = readings(streams=500, per_stream=100, seed=23)
        produce(bootstrap, topic, messages_of(rows))
        expected = reference_scores(artifact, rows)
        with workers(env, tmp_path) as started:
            worker = WorkerProcess(env, tmp_path / "worker.log")
            started.append(worker)
            wait_until(lambda: worker.scored() >= 5_000, 180, "5,000 readings scored",
                       [worker])
            broker.stop()
            time.sleep(2.0)
            assert worker.alive(), worker.output()
            broker.start()
            wait_until(lambda: all_committed(bootstrap, f"{prefix}-group", topic), 240,
                       "every reading committed after the restart", [worker])
            assert worker.terminate() == 0, worker.output()
        assert_equal_to_uninterrupted(bootstrap, f"{prefix}-scores", expected)


def test_transactions_give_read_committed_consumers_each_score_once(
        kafka_broker, topic_factory, unique_name, artifact, kafka_client):
    """Two transactional workers, the second joining mid-way (the rebalance aborts the first
    one's open transaction, if any): a read_committed consumer sees every reading's score
    exactly once, equal to the uninterrupted run."""
    bootstrap = kafka_broker.bootstrap
    topic = topic_factory(partitions=4, purpose="readings")
    prefix = unique_name("tx")
    rows = readings(streams=200, per_stream=100, seed=24)
    half = len(rows) // 2
    produce(bootstrap, topic, messages_of(rows[:half]))
    expected = reference_scores(artifact, rows)

    def settings_for(member: str):
        base = worker_settings(bootstrap, artifact, topic, prefix, kafka_client,
                               transactional=True,
                               checkpoint_interval_seconds=5.0, max_poll_records=500)
        return dataclasses.replace(base, kafka=dataclasses.replace(
            base.kafka, client_id=f"{prefix}-{member}"))

    with worker_thread(settings_for("a")) as first:
        registry = first["endpoint"].registry
        wait_until(lambda: (registry.get_sample_value("cellwatch_readings_scored_total")
                            or 0) >= 5_000, 120, "5,000 readings scored")
        with worker_thread(settings_for("b")) as second:
            second_registry = second["endpoint"].registry
            wait_until(lambda: (second_registry.get_sample_value(
                "cellwatch_assigned_partitions") or 0) > 0, 120, "the second member's share")
            produce(bootstrap, topic, messages_of(rows[half:]))
            wait_until(lambda: all_committed(bootstrap, f"{prefix}-group", topic), 240,
                       "every reading committed")
            second_scored = second_registry.get_sample_value("cellwatch_readings_scored_total")
        first_rebalances = registry.get_sample_value("cellwatch_rebalances_total",
                                                     {"kind": "assigned"})
    assert first_rebalances >= 2 and second_scored > 0  # the group really rebalanced
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             isolation_level="read_committed")
    try:
        scores_topic = f"{prefix}-scores"
        partitions = [TopicPartition(scores_topic, p)
                      for p in consumer.partitions_for_topic(scores_topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)  # the last stable offsets: all committed
        records: list = []
        deadline = time.monotonic() + 120
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            assert time.monotonic() < deadline, "scores not read within 120 s"
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    found = score_discrepancies(records, expected)
    assert not found, f"{len(found)} discrepancies, first:\n" + "\n".join(found[:5])
    seen = Counter((json.loads(r.value)["stream"], json.loads(r.value)["ts"]) for r in records)
    assert max(seen.values()) == 1, "a read_committed consumer saw a score twice"


def test_the_changelog_is_created_compacted_and_a_mismatched_one_is_refused(
        kafka_broker, topic_factory, unique_name, kafka_admin, kafka_client):
    from kafka.admin import ConfigResource, ConfigResourceType

    from cellwatch.kafka_clients import kafka_client as client_of
    from cellwatch.settings import KafkaSettings
    from streaming.ports import TopicSetupError

    client = client_of(KafkaSettings(client=kafka_client,
                                     bootstrap_servers=(kafka_broker.bootstrap,)))
    options, ensure_changelog = client.options, client.ensure_changelog
    created = unique_name("changelog")
    try:
        ensure_changelog(options, created, 3)
        ensure_changelog(options, created, 3)  # an existing, matching changelog is fine
        described = kafka_admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, created)], config_filter="all")
        policies = [entries[created]["cleanup.policy"]["value"]
                    for entries in described.values() if created in entries]
        assert policies == ["compact"]
        with pytest.raises(TopicSetupError, match=rf"{created}.*expected 4 partitions.*found 3"):
            ensure_changelog(options, created, 4)
    finally:
        kafka_admin.delete_topics([created], raise_errors=False)
    not_compacted = topic_factory(partitions=3, purpose="plain")
    with pytest.raises(TopicSetupError, match=r"expected cleanup\.policy=compact, found "
                                              r"cleanup\.policy=delete"):
        ensure_changelog(options, not_compacted, 3)


def test_a_new_artifact_replaces_the_model_without_a_restart(
        kafka_broker, topic_factory, unique_name, artifact, tmp_path):
    """A real `cellwatch run`: a new artifact saved in place by another process (as a
    training job would) and SIGHUP swap the model mid-stream, without a restart."""
    bootstrap = kafka_broker.bootstrap
    topic = topic_factory(partitions=2, purpose="readings")
    prefix = unique_name("reload")
    path = tmp_path / "model"
    shutil.copytree(artifact, path)
    first_version = load_artifact(path).metadata.model_version
    env = {**worker_env(bootstrap, path, topic, prefix),
           "CELLWATCH_WORKER_RELOAD_POLL_SECONDS": "0"}  # only SIGHUP reloads
    rows = readings(streams=20, per_stream=60, seed=25)
    half = len(rows) // 2
    with workers(env, tmp_path) as started:
        worker = WorkerProcess(env, tmp_path / "worker.log")
        started.append(worker)
        produce(bootstrap, topic, messages_of(rows[:half]))
        wait_until(lambda: worker.scored() >= half, 180, "the first half scored", [worker])
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                        "from tests.integration.streaming_support import small_artifact; "
                        "small_artifact(Path(sys.argv[1]), seed=12)", str(path)],
                       cwd=REPO_ROOT, check=True, timeout=120, capture_output=True)
        second_version = load_artifact(path).metadata.model_version
        worker.process.send_signal(signal.SIGHUP)
        wait_until(lambda: worker.metric(
            'cellwatch_model_reloads_total{outcome="kept_state"}') == 1, 60, "the reload",
            [worker])
        produce(bootstrap, topic, messages_of(rows[half:]))
        wait_until(lambda: worker.scored() >= len(rows), 120, "the second half scored",
                   [worker])
        assert worker.terminate() == 0, worker.output()
    assert first_version != second_version
    published = {}
    for record in read_everything(bootstrap, f"{prefix}-scores"):
        value = json.loads(record.value)
        published[(value["stream"], value["ts"])] = value
    first_half = {(s, t) for s, t, _ in rows[:half]}
    assert {published[k]["model_version"] for k in first_half} == {first_version}
    second_half = [published[(s, t)] for s, t, _ in rows[half:]]
    assert {value["model_version"] for value in second_half} == {second_version}
    # The streams kept their states: past their learning period (20 readings, likelihood
    # exactly 0.5) before the swap, they do not start it again after.
    just_after = second_half[:20]  # each stream's first reading under the new model
    assert all(value["likelihood"] != 0.5 for value in just_after)
