"""Hostile input and operator mistakes against a real broker: a reading of nearly 1 MiB, a
dead-letter topic that refuses a record, the scores topic recreated with fewer partitions
mid-run, readings from year 9999 or keyed by another stream, and the state changelog
deleted while the worker runs."""

from __future__ import annotations

import json
import time

import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from cellwatch import wiring
from deploy.kafka.local_broker import committed_offsets
from streaming import confluent_topics, topic_checks
from streaming.confluent_io import ConfluentRecordSink
from streaming.kafka_io import KafkaRecordSink
from streaming.ports import OutputError
from tests.integration.streaming_support import (
    end_offsets,
    produce,
    read_topic,
    reading_bytes,
    readings,
    small_artifact,
    worker_settings,
    worker_thread,
)
from tests.integration.test_durability_kafka import (
    WorkerProcess,
    read_everything,
    reference_scores,
    score_discrepancies,
    worker_env,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return small_artifact(tmp_path_factory.mktemp("artifact") / "model")


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.25)


def sample(registry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def messages_of(rows) -> list[tuple[bytes, bytes]]:
    return [(stream.encode(), reading_bytes(stream, ts, values)) for stream, ts, values in rows]


def test_a_reading_of_nearly_a_mebibyte_is_dead_lettered_cut_to_fit(
        kafka_broker, topic_factory, unique_name, artifact, kafka_client):
    """The broker takes the reading; its dead letter, whole, would exceed the dead-letter
    topic's max.message.bytes (the broker's default) and used to stop every worker on it."""
    bootstrap = kafka_broker.bootstrap
    topic = topic_factory(partitions=2, purpose="readings")
    prefix = unique_name("huge")
    settings = worker_settings(bootstrap, artifact, topic, prefix, kafka_client)
    huge = b'{"stream":"stream-000","pad":"' + b"x" * (1_048_400 - 32) + b'"}'
    assert len(huge) == 1_048_400
    rows = readings(streams=4, per_stream=10, seed=41)
    with worker_thread(settings) as running:
        registry = running["endpoint"].registry
        produce(bootstrap, topic, [(b"stream-000", huge)])
        produce(bootstrap, topic, messages_of(rows))
        wait_until(lambda: sample(registry, "cellwatch_readings_scored_total") >= len(rows), 120,
                   "every good reading scored after the huge one")
    (letter,) = read_topic(bootstrap, settings.kafka.dead_letter_topic, 1)
    headers = dict(letter.headers)
    assert headers["cellwatch.reason"] == b"oversized"
    assert headers["cellwatch.truncated"] == b"value"
    assert headers["cellwatch.original.bytes"] == b"1048400"
    assert huge.startswith(letter.value) and len(letter.value) > 1_000_000
    assert committed_offsets(bootstrap, settings.kafka.group_id, topic) == end_offsets(
        bootstrap, topic)


def test_a_dead_letter_the_topic_refuses_is_dropped_and_the_worker_goes_on(
        kafka_broker, topic_factory, unique_name, artifact, monkeypatch, kafka_client):
    """The dead-letter topic takes 20 kB, and the worker does not know (it could not read
    the topic's configuration): the broker refuses a 50 kB dead letter for good. Stopping
    would stop every restart on the same reading; the worker drops and counts it."""
    bootstrap = kafka_broker.bootstrap
    topic = topic_factory(partitions=1, purpose="readings")
    prefix = unique_name("refused")
    settings = worker_settings(bootstrap, artifact, topic, prefix, kafka_client)
    KafkaAdminClient(bootstrap_servers=bootstrap).create_topics(
        {settings.kafka.dead_letter_topic: {"num_partitions": 1,
                                            "configs": {"max.message.bytes": "20000"}}},
        wait_for_metadata=True)
    for module in (topic_checks, confluent_topics):
        monkeypatch.setattr(module, "dead_letter_topic_limit", lambda _options, _topic: None)
    rows = readings(streams=3, per_stream=10, seed=42)
    with worker_thread(settings) as running:
        registry = running["endpoint"].registry
        produce(bootstrap, topic, [(b"x", b"{" * 50_000), (b"y", b"{")])
        produce(bootstrap, topic, messages_of(rows))
        wait_until(lambda: sample(registry, "cellwatch_readings_scored_total") >= len(rows), 120,
                   "every good reading scored after the refused dead letter")
        assert sample(registry, "cellwatch_dead_letters_dropped_total") == 1
    (letter,) = read_topic(bootstrap, settings.kafka.dead_letter_topic, 1)
    assert letter.value == b"{"


def test_readings_of_a_failed_flush_are_scored_after_the_restart(
        kafka_broker, topic_factory, unique_name, artifact, kafka_admin, monkeypatch,
        kafka_client):
    """The scores topic is deleted and recreated with one partition mid-run: the worker's
    outputs fail and it stops. Closing its consumer revokes its partitions; that revoke
    must not checkpoint the states the failed batch advanced, or the restarted worker skips
    those readings as already applied and they never get a score."""
    bootstrap = kafka_broker.bootstrap
    topic = topic_factory(partitions=2, purpose="readings")
    prefix = unique_name("lost")
    settings = worker_settings(bootstrap, artifact, topic, prefix, kafka_client,
                               checkpoint_interval_seconds=0.5, max_poll_records=50)
    scores_topic = settings.kafka.scores_topic
    rows = readings(streams=10, per_stream=40, seed=43)
    first, second = rows[:200], rows[200:]
    expected = reference_scores(artifact, rows)
    for sink in (KafkaRecordSink, ConfluentRecordSink):
        monkeypatch.setattr(sink.flush, "__defaults__", (10.0,))  # fail faster

    with pytest.raises(OutputError), worker_thread(settings) as running:
        registry = running["endpoint"].registry
        produce(bootstrap, topic, messages_of(first))
        wait_until(lambda: sample(registry, "cellwatch_readings_scored_total")
                   >= len(first), 120, "the first readings scored")
        kafka_admin.delete_topics([scores_topic])
        wait_until(lambda: recreated(kafka_admin, scores_topic), 60,
                   "the scores topic recreated with one partition")
        produce(bootstrap, topic, messages_of(second))
        wait_until(lambda: "error" in running, 120, "the worker to stop on the failure")

    with worker_thread(settings) as running:
        wait_until(lambda: committed_offsets(bootstrap, settings.kafka.group_id, topic)
                   == end_offsets(bootstrap, topic), 120, "every reading committed")
    records = read_everything(bootstrap, scores_topic)
    published = {(json.loads(r.value)["stream"], json.loads(r.value)["ts"]) for r in records}
    never = sorted({(s, t) for s, t, _ in second} - published)
    assert never == [], f"{len(never)} readings never scored, first: {never[:3]}"
    found = [line for line in score_discrepancies(records, expected)
             if "never scored" not in line]  # the first readings went to the old topic
    assert found == []


def recreated(admin: KafkaAdminClient, topic: str) -> bool:
    try:
        admin.create_topics({topic: {"num_partitions": 1}}, wait_for_metadata=True)
        return True
    except KafkaError:  # still being deleted
        return False


def test_hostile_readings_are_dead_lettered_and_their_streams_go_on(
        kafka_broker, topic_factory, unique_name, artifact, kafka_admin):
    """A reading from year 9999 (it would lock its stream out: every later reading out of
    order), one in epoch seconds, one with a value of 1e30, and readings keyed by nothing or
    by another stream (their stream would get a state, and a changelog record, in two
    partitions): all dead-lettered, and the stream's good readings all scored."""
    bootstrap = kafka_broker.bootstrap
    topic = topic_factory(partitions=4, purpose="readings")
    prefix = unique_name("hostile")
    settings = worker_settings(bootstrap, artifact, topic, prefix,
                               checkpoint_interval_seconds=0.5)
    rows = readings(streams=1, per_stream=30, seed=44)
    stream, ts0, values = rows[0]
    good = messages_of(rows)
    key = stream.encode()
    hostile = [
        (key, json.dumps({"stream": stream, "ts": "9999-12-31T23:59:59Z",
                          "values": json.loads(reading_bytes(stream, ts0, values))["values"]}
                         ).encode()),
        (key, reading_bytes(stream, ts0 // 1000 + 30, values)),  # epoch seconds
        (key, reading_bytes(stream, ts0 + 1, [1e30, values[1], values[2]])),
        (None, reading_bytes(stream, ts0 + 2, values)),
        (b"some-other-stream", reading_bytes(stream, ts0 + 3, values)),
    ]
    with worker_thread(settings) as running:
        registry = running["endpoint"].registry
        produce(bootstrap, topic, good[:5] + hostile + good[5:])
        wait_until(lambda: sample(registry, "cellwatch_readings_scored_total") >= len(rows), 120,
                   "every good reading scored")
        wait_until(lambda: sample(registry, "cellwatch_checkpoint_records_total") > 0, 30,
                   "a checkpoint")
    dead = read_topic(bootstrap, settings.kafka.dead_letter_topic, len(hostile))
    reasons = sorted(dict(r.headers)["cellwatch.reason"].decode() for r in dead)
    assert reasons == ["future", "implausible_ts", "key_mismatch", "key_mismatch",
                       "out_of_range"]
    scores = read_topic(bootstrap, settings.kafka.scores_topic, len(rows))
    assert sorted(json.loads(r.value)["ts"] for r in scores) == [ts for _, ts, _ in rows]
    changelog = read_everything(bootstrap, settings.kafka.changelog_topic)
    assert {r.key for r in changelog} == {key}
    assert len({r.partition for r in changelog}) == 1  # one state, in one partition


def test_a_changelog_deleted_while_running_stops_the_worker_with_exit_code_6(
        kafka_broker, topic_factory, unique_name, artifact, kafka_admin, tmp_path):
    """Deleted under a running worker, the changelog is auto-created by the broker with one
    partition and no compaction. The worker stops at its next checkpoint with one line
    saying what is wrong (exit code 6), instead of spinning on partitions the new topic
    lacks; a restart refuses the wrong shape the same way until the topic is fixed."""
    bootstrap = kafka_broker.bootstrap
    topic = topic_factory(partitions=2, purpose="readings")
    prefix = unique_name("nochangelog")
    env = worker_env(bootstrap, artifact, topic, prefix)
    changelog = f"{prefix}-changelog"
    rows = readings(streams=6, per_stream=20, seed=45)
    produce(bootstrap, topic, messages_of(rows))
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        wait_until(lambda: worker.metric("cellwatch_checkpoint_records_total") > 0
                   or not worker.alive(), 180, "a checkpoint")
        assert worker.alive(), worker.output()
        kafka_admin.delete_topics([changelog])
        produce(bootstrap, topic, messages_of(readings(streams=6, per_stream=5, seed=46,
                                                       start_ms=1_800_000_000_000)))
        started = time.monotonic()
        code = worker.process.wait(90)
        stopped_after = time.monotonic() - started
        output = worker.output()
    finally:
        worker.close()
    assert code == 6, output
    last = output.strip().splitlines()[-1]
    assert last.startswith("Error: state changelog ") and changelog in last, output
    # Promptly: no 30 s wait for the model watcher, no model load on the way out.
    assert stopped_after < 20, output
    assert "model reload" not in output and "replaced by" not in output
    if changelog not in kafka_admin.list_topics():  # the broker did not auto-create it
        kafka_admin.create_topics({changelog: {"num_partitions": 1}}, wait_for_metadata=True)
    again = WorkerProcess(env, tmp_path / "again.log")
    try:
        code = again.process.wait(90)
        output = again.output()
    finally:
        again.close()
    last = output.strip().splitlines()[-1]
    assert code == 6, output
    assert "expected 2 partitions" in last and "found 1" in last and "delete it" in last


def test_a_compacted_dead_letter_topic_is_refused_at_start(
        kafka_broker, topic_factory, unique_name, artifact, kafka_admin):
    """A compacted dead-letter topic would refuse the dead letters of readings without a
    key (for good: a transactional worker would stop on the same message after every
    restart), so the worker refuses it at start with a topic problem (exit code 6)."""
    import threading

    from kafka.admin import NewTopic

    from streaming.ports import TopicSetupError

    topic = topic_factory(partitions=1, purpose="readings")
    prefix = unique_name("compacted-dlq")
    settings = worker_settings(kafka_broker.bootstrap, artifact, topic, prefix)
    kafka_admin.create_topics([NewTopic(settings.kafka.dead_letter_topic, 1, 1,
                                        topic_configs={"cleanup.policy": "compact"})])
    with pytest.raises(TopicSetupError, match=r"cleanup.policy=compact.*refuses the dead "
                                              r"letters of readings without a key"):
        wiring.run_worker(settings, threading.Event())
