"""Worker with in-memory ports: dead letters, nothing lost, commit after flush, rebalances,
the run loop, metrics."""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from cellwatch.wiring import assemble_worker
from detector.state import STATE_LAYOUT_VERSION
from detector.step import StreamingStep
from streaming.engine import Reading, ScoringEngine
from streaming.messages import Rejection, RejectReason
from streaming.metrics import WorkerMetrics
from streaming.ports import OutputError
from streaming.state_store import StateStore
from streaming.worker import ModelInfo, Worker, WorkerConfig, dead_letter_headers
from tests.unit.streaming.conftest import (
    CHANNELS,
    MODEL_VERSION,
    T0_MS,
    FakeReadingSource,
    FakeRecord,
    FakeRecordSink,
    ScriptedStep,
    minutes,
    readings_of,
    record_of,
    score_records,
)

CONFIG = WorkerConfig(readings_topic="readings", scores_topic="scores",
                      anomalies_topic="anomalies", dead_letter_topic="dead-letters",
                      max_poll_records=7, poll_timeout_ms=5, max_message_bytes=400,
                      episode_gap=3)

GOOD = b'{"stream":"s","ts":1,"values":{"temperature":1,"pressure":2,"flow":3}}'


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def events() -> list:
    return []


@pytest.fixture
def sink(events: list) -> FakeRecordSink:
    return FakeRecordSink(events)


@pytest.fixture
def worker(step: StreamingStep, sink: FakeRecordSink, registry: CollectorRegistry) -> Worker:
    model = ModelInfo(step=step, channels=CHANNELS, version=MODEL_VERSION,
                      trained_at="2024-01-01T00:00:00Z", trained_at_s=1_704_067_200.0)
    return assemble_worker(CONFIG, model, sink, WorkerMetrics(registry),
                           clock=lambda: 1_800_000_000.0)


def attach(worker: Worker, records=(), events: list | None = None, **kwargs
           ) -> FakeReadingSource:
    """A source the worker commits to, without running its loop."""
    source = FakeReadingSource(records, events, **kwargs)
    worker.source = source
    return source


def bad(offset: int, value: bytes | None, partition: int = 0, key: bytes | None = b"k",
        headers=(("trace", b"t-1"),)) -> FakeRecord:
    return FakeRecord("readings", partition, offset, T0_MS, key, value, list(headers))


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


def reference_scores(step: StreamingStep, readings: list[Reading]) -> list[tuple[bytes, bytes]]:
    engine = ScoringEngine(step, StateStore(step.layout), CHANNELS, MODEL_VERSION,
                           CONFIG.episode_gap)
    return score_records(engine.process(readings))


# Dead letters and nothing lost ----------------------------------------------------------------


def test_bad_messages_go_to_the_dead_letter_topic_with_their_origin(
        worker: Worker, sink: FakeRecordSink) -> None:
    records = [
        bad(0, b"\xff\xfe", key=b"raw-key", headers=[("trace", b"t-1"), ("x", b"\x00\x01")]),
        bad(1, b"{not json", key=None, headers=[]),
        bad(2, GOOD.replace(b'"flow":3', b'"flow":"3"'), partition=4),
        bad(3, GOOD.replace(b'"flow":3', b'"flow":NaN')),
        bad(4, None),
        bad(5, GOOD + b" " * 400),
    ]
    attach(worker)
    worker.process(records)
    letters = sink.on("dead-letters")
    expected_reasons = ["invalid_utf8", "invalid_json", "wrong_type", "non_finite",
                        "missing_field", "oversized"]
    assert len(letters) == len(records)
    for record, letter, reason in zip(records, letters, expected_reasons, strict=True):
        assert (letter.key, letter.value) == (record.key, record.value)
        original = tuple(record.headers)
        assert letter.headers[:len(original)] == original
        added = dict(letter.headers[len(original):])
        assert list(added) == ["cellwatch.reason", "cellwatch.detail", "cellwatch.source.topic",
                               "cellwatch.source.partition", "cellwatch.source.offset"]
        assert added["cellwatch.reason"] == reason.encode()
        assert added["cellwatch.detail"]
        assert added["cellwatch.source.topic"] == b"readings"
        assert added["cellwatch.source.partition"] == str(record.partition).encode()
        assert added["cellwatch.source.offset"] == str(record.offset).encode()
    assert dict(letters[2].headers)["cellwatch.detail"].startswith(b"channel 'flow':")
    assert not sink.on("scores")


def test_engine_rejections_are_dead_lettered_too(worker: Worker, sink: FakeRecordSink,
                                                 recorded: np.ndarray) -> None:
    good = [record_of(r) for r in readings_of(recorded[:1, :3], ["s"])]
    late = record_of(readings_of(recorded[:1, :1], ["s"], first_offset=3)[0])  # minute 0 again
    attach(worker)
    worker.process([bad(9, b"{"), *good, late])  # a parse rejection first shifts positions
    letter = sink.on("dead-letters")[1]
    headers = dict(letter.headers)
    assert headers["cellwatch.reason"] == b"out_of_order"
    assert headers["cellwatch.source.offset"] == b"3"
    assert (letter.key, letter.value) == (late.key, late.value)


def test_long_details_are_cut_and_always_encodable() -> None:
    record = bad(9, b"x")
    headers = dict(dead_letter_headers(record, Rejection(RejectReason.WRONG_TYPE,
                                                         "é" * 5000 + "\ud800")))
    assert headers["cellwatch.detail"] == ("é" * 1000).encode()
    headers = dict(dead_letter_headers(record, Rejection(RejectReason.WRONG_TYPE, "\ud800")))
    assert headers["cellwatch.detail"] == b"?"


def test_good_readings_between_bad_ones_are_all_scored(
        worker: Worker, sink: FakeRecordSink, step: StreamingStep,
        recorded: np.ndarray) -> None:
    readings = readings_of(recorded[:3, :6])  # 18 readings, offsets 0..17
    records = []
    for index, r in enumerate(readings):
        records.append(record_of(r))
        if index % 4 == 1:
            records.append(bad(-1, b"garbage"))
    for offset, record in enumerate(records):
        record.offset = offset
    attach(worker)
    for start in range(0, len(records), 5):  # several polls
        worker.process(records[start:start + 5])
    scores = sink.on("scores")
    assert [(s.key, s.value) for s in scores] == reference_scores(step, readings)
    assert len(sink.on("dead-letters")) == 5
    assert all(s.headers == () for s in scores)


def test_a_stream_id_without_utf8_form_is_dead_lettered_not_fatal(
        worker: Worker, sink: FakeRecordSink, recorded: np.ndarray) -> None:
    poison = bad(0, b'{"stream":"x\\ud800","ts":1,"values":'
                    b'{"temperature":1,"pressure":2,"flow":3}}')
    good = record_of(readings_of(recorded[:1, :1], ["ok"], first_offset=1)[0])
    source = attach(worker)
    worker.process([poison, good])
    assert [s.key for s in sink.on("scores")] == [b"ok"]
    assert dict(sink.on("dead-letters")[0].headers)["cellwatch.reason"] == b"invalid_utf8"
    assert source.commits == [{0: 2}]


# Commits --------------------------------------------------------------------------------------


def test_offsets_are_committed_per_partition_after_the_flush(
        worker: Worker, sink: FakeRecordSink, events: list, recorded: np.ndarray) -> None:
    part0 = [record_of(r) for r in readings_of(recorded[:2, :3], partition=0, first_offset=20)]
    part1 = [record_of(r) for r in readings_of(recorded[2:4, :2], ["x", "y"], partition=1,
                                               first_offset=100)]
    records = [*part0[:3], part1[0], *part0[3:], part1[1], part1[2], part1[3],
               bad(104, b"bad", partition=1)]  # the last of partition 1 is dead-lettered
    source = attach(worker, events=events)
    worker.process(records)
    assert source.commits == [{0: 26, 1: 105}]
    # The commit came after a flush that covered every record the batch produced.
    assert events == [("flush", len(sink.sent)), ("commit", {0: 26, 1: 105})]
    assert len(sink.sent) == 11


def test_a_failed_flush_commits_nothing_and_propagates(
        worker: Worker, sink: FakeRecordSink, recorded: np.ndarray) -> None:
    records = [record_of(r) for r in readings_of(recorded[:2, :2])]
    source = attach(worker)
    sink.fail_flush = OutputError("broker gone")
    with pytest.raises(OutputError, match="broker gone"):
        worker.process(records)
    assert source.commits == []
    assert sink.flushes == 1 and sink.acknowledged == 0


def test_a_failed_commit_is_logged_and_the_worker_goes_on(
        worker: Worker, sink: FakeRecordSink, recorded: np.ndarray, caplog) -> None:
    records = [record_of(r) for r in readings_of(recorded[:1, :4])]
    source = attach(worker)
    source.fail_commit = RuntimeError("generation lost")
    worker.process(records[:2])
    assert "offset commit failed" in caplog.text and "generation lost" in caplog.text
    source.fail_commit = None
    worker.process(records[2:])
    assert source.commits == [{0: 4}]
    assert len(sink.on("scores")) == 4


def test_a_failed_commit_is_retried_at_the_next_checkpoint_with_nothing_more_to_read(
        worker: Worker, recorded: np.ndarray) -> None:
    """The commit after the last batch failed (a broker restarting): no later batch would
    carry its offsets, so the loop's next checkpoint commits them."""
    records = [record_of(r) for r in readings_of(recorded[:1, :4])]
    source = attach(worker)
    source.fail_commit = RuntimeError("KafkaTimeoutError: no coordinator")
    worker.process(records)
    source.fail_commit = None
    worker.commit_checkpoint()
    worker.commit_checkpoint()  # nothing left: no empty commit
    assert source.commits == [{0: 4}]


@pytest.mark.parametrize("co_partitioned", [True, False])
def test_outputs_go_to_their_reading_partition_when_co_partitioned(
        step: StreamingStep, sink: FakeRecordSink, registry: CollectorRegistry,
        recorded: np.ndarray, co_partitioned: bool) -> None:
    config = dataclasses.replace(CONFIG, co_partitioned=co_partitioned)
    scripted = ScriptedStep(step, {minutes(1)[0]: (6.0, 2)})  # a flags at minute 1
    model = ModelInfo(scripted, CHANNELS, MODEL_VERSION, "2024-01-01T00:00:00Z", 0.0)
    worker = assemble_worker(config, model, sink, WorkerMetrics(registry),
                             clock=lambda: 1_800_000_000.0)  # after the readings: none is "future"
    attach(worker)
    a = readings_of(recorded[:1, :6], ["a"], partition=2)
    b = readings_of(recorded[1:2, :6], ["b"], partition=5, t0_ms=T0_MS + 1)  # never flags
    worker.process([record_of(r) for pair in zip(a, b, strict=True) for r in pair]
                   + [bad(99, b"{", partition=5)])
    scores, (episode,), (letter,) = (sink.on(topic) for topic in
                                     ("scores", "anomalies", "dead-letters"))
    assert episode.key == b"a" and json.loads(episode.value)["channels"] == ["flow"]
    if co_partitioned:
        assert [(s.key, s.partition) for s in scores] == [(b"a", 2), (b"b", 5)] * 6
        assert episode.partition == 2
    else:
        assert all(s.partition is None for s in scores) and episode.partition is None
    assert letter.partition is None  # dead letters keep the key's choice


# Rebalances -----------------------------------------------------------------------------------


@pytest.mark.parametrize("callback", ["on_revoked", "on_lost"])
def test_giving_up_a_partition_drops_its_streams(
        worker: Worker, sink: FakeRecordSink, step: StreamingStep, recorded: np.ndarray,
        registry: CollectorRegistry, callback: str) -> None:
    attach(worker)
    worker.partitions.on_assigned([0, 1])
    assert worker.readiness()[0]
    p0 = readings_of(recorded[:2, :4], ["a", "b"], partition=0)
    p1 = readings_of(recorded[2:3, :4], ["c"], partition=1, first_offset=0)
    worker.process([record_of(r) for r in p0 + p1])
    assert all(stream in worker.store for stream in "abc")
    getattr(worker.partitions, callback)([0])
    if callback == "on_revoked":
        # Kept until the assignment shows partition 0 went elsewhere.
        assert "a" in worker.store
        worker.partitions.on_assigned([1])
    assert "a" not in worker.store and "b" not in worker.store and "c" in worker.store
    assert metric(registry, "cellwatch_assigned_partitions") == 1
    kind = "revoked" if callback == "on_revoked" else "lost"
    assert metric(registry, "cellwatch_rebalances_total", kind=kind) == 1

    # When partition 0 comes back, its streams start from scratch (and are not "in the past").
    worker.partitions.on_assigned([0])
    sink.sent.clear()
    worker.process([record_of(p0[0])])
    assert [(s.key, s.value) for s in sink.on("scores")] == reference_scores(step, [p0[0]])


def test_partitions_handed_back_by_a_rebalance_keep_their_streams(
        worker: Worker, recorded: np.ndarray) -> None:
    """An eager rebalance revokes everything and often returns the same partitions."""
    attach(worker)
    worker.partitions.on_assigned([0, 1])
    readings = readings_of(recorded[:2, :4], ["a", "b"], partition=0)
    worker.process([record_of(r) for r in readings])
    before = worker.store.state[worker.store.row_of("a")].copy()
    worker.partitions.on_revoked([0, 1])
    worker.partitions.on_assigned([0, 1])
    np.testing.assert_array_equal(worker.store.state[worker.store.row_of("a")], before)


# The loop -------------------------------------------------------------------------------------


def test_run_scores_everything_then_returns_when_stopped_and_closes_the_ports(
        worker: Worker, sink: FakeRecordSink, step: StreamingStep,
        recorded: np.ndarray) -> None:
    readings = readings_of(recorded[:2, :10])
    stop = threading.Event()
    source = FakeReadingSource([record_of(r) for r in readings], when_empty=stop.set,
                               lags={0: 12})
    worker.run(source, stop)
    assert source.closed and sink.closed
    assert [(s.key, s.value) for s in sink.on("scores")] == reference_scores(step, readings)
    assert source.polls[0] == (CONFIG.poll_timeout_ms, CONFIG.max_poll_records)
    assert source.commits[-1] == {0: 20}
    assert len(source.commits) == 3  # 7 + 7 + 6 records
    assert worker.liveness()[0]


def test_run_returns_at_once_when_already_stopped(worker: Worker, sink: FakeRecordSink) -> None:
    stop = threading.Event()
    stop.set()
    source = FakeReadingSource([bad(0, GOOD)])
    worker.run(source, stop)
    assert source.polls == [] and source.closed and sink.closed


def test_run_can_be_stopped_from_another_thread(worker: Worker) -> None:
    stop = threading.Event()
    source = FakeReadingSource([])  # polls return nothing, forever
    thread = threading.Thread(target=worker.run, args=(source, stop))
    thread.start()
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert source.closed


def test_run_closes_the_ports_when_output_fails(worker: Worker, sink: FakeRecordSink,
                                                recorded: np.ndarray) -> None:
    stop = threading.Event()
    source = FakeReadingSource([record_of(r) for r in readings_of(recorded[:1, :2])])
    sink.fail_flush = OutputError("nope")
    with pytest.raises(OutputError):
        worker.run(source, stop)
    assert source.closed and sink.closed and source.commits == []


# Metrics --------------------------------------------------------------------------------------


def test_metrics_count_consumed_scored_and_rejected_by_reason(
        worker: Worker, registry: CollectorRegistry, recorded: np.ndarray) -> None:
    readings = readings_of(recorded[:2, :3])  # 6 readings, offsets 0..5
    records = [record_of(r) for r in readings]
    duplicate = record_of(readings[-1])
    duplicate.offset = 6
    records += [duplicate, bad(7, b"{"), bad(8, b"{]"), bad(9, b"\xff"),
                bad(10, GOOD.replace(b'"flow":3', b'"wind":3'))]
    attach(worker)
    worker.process(records)
    worker.process([bad(11, b"[]")])
    assert metric(registry, "cellwatch_readings_consumed_total") == 12
    assert metric(registry, "cellwatch_readings_scored_total") == 6
    expected = {"invalid_json": 2, "invalid_utf8": 1, "unknown_channel": 1, "duplicate": 1,
                "wrong_type": 1}
    for reason in RejectReason:
        assert metric(registry, "cellwatch_readings_rejected_total",
                      reason=reason.value) == expected.get(reason.value, 0), reason
    assert metric(registry, "cellwatch_dead_letters_total") == 6
    assert metric(registry, "cellwatch_output_records_total", topic_role="scores") == 6
    assert metric(registry, "cellwatch_anomaly_score_count") == 6
    assert metric(registry, "cellwatch_model_info", version=MODEL_VERSION,
                  trained_at="2024-01-01T00:00:00Z",
                  state_layout=f"{STATE_LAYOUT_VERSION}/{worker.model.step.layout.size}") == 1


def test_metrics_count_skipped_readings(worker: Worker, registry: CollectorRegistry,
                                        recorded: np.ndarray) -> None:
    records = [record_of(r) for r in readings_of(recorded[:1, :4])]
    attach(worker)
    worker.process(records)
    worker.process(records[2:])  # redelivered after a failed commit, say
    assert metric(registry, "cellwatch_readings_skipped_total") == 2
    assert metric(registry, "cellwatch_readings_consumed_total") == 6
    assert metric(registry, "cellwatch_readings_scored_total") == 4


def test_maintenance_evicts_idle_streams_and_reports_lag(
        step: StreamingStep, sink: FakeRecordSink, registry: CollectorRegistry,
        recorded: np.ndarray) -> None:
    now = [1_800_000_000.0]  # after the readings: none is "future"
    config = WorkerConfig("readings", "scores", "anomalies", "dead-letters",
                          idle_eviction_s=60.0)
    model = ModelInfo(step, CHANNELS, MODEL_VERSION, "2024-01-01T00:00:00Z", 0.0)
    worker = assemble_worker(config, model, sink, WorkerMetrics(registry), clock=lambda: now[0])
    attach(worker, lags={3: 42})
    worker.process([record_of(r) for r in readings_of(recorded[:2, :1])])
    now[0] += 100.0
    worker._maintain()
    assert len(worker.store) == 0
    assert metric(registry, "cellwatch_stream_evictions_total") == 2
    assert metric(registry, "cellwatch_consumer_lag_messages", topic="readings",
                  partition="3") == 42

