"""Hostile input with in-memory ports: dead letters that always fit, readings from the far
future or with epoch seconds, values out of range, keys that are not their stream, overlong
stream ids, too many streams, non-finite scores, and a worker that stops after a fatal error."""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from cellwatch.wiring import assemble_worker
from detector.step import StreamingStep
from streaming.dead_letters import dead_letter
from streaming.messages import Rejection, RejectReason, reading_message
from streaming.metrics import WorkerMetrics
from streaming.ports import OutputError
from streaming.worker import ModelInfo, Worker, WorkerConfig
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
    record_size,
)

CONFIG = WorkerConfig(readings_topic="readings", scores_topic="scores",
                      anomalies_topic="anomalies", dead_letter_topic="dead-letters",
                      max_poll_records=50, poll_timeout_ms=5, max_message_bytes=400,
                      episode_gap=3)
NOW_S = 1_800_000_000.0  # the worker's wall clock: 2027-01-15


def make_worker(step, sink: FakeRecordSink, registry: CollectorRegistry, **config) -> Worker:
    model = ModelInfo(step=step, channels=CHANNELS, version=MODEL_VERSION,
                      trained_at="2024-01-01T00:00:00Z", trained_at_s=1_704_067_200.0)
    worker = assemble_worker(dataclasses.replace(CONFIG, **config), model, sink,
                             WorkerMetrics(registry), clock=lambda: NOW_S)
    worker.source = FakeReadingSource([])
    return worker


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def sink() -> FakeRecordSink:
    return FakeRecordSink()


def message(stream: str, ts: object, values=(1.0, 2.0, 3.0)) -> bytes:
    return json.dumps({"stream": stream, "ts": ts,
                       "values": dict(zip(CHANNELS, values, strict=True))}).encode()


def record(offset: int, value: bytes, key: bytes | None, partition: int = 0,
           headers=()) -> FakeRecord:
    return FakeRecord("readings", partition, offset, T0_MS, key, value, list(headers))


def reasons(sink: FakeRecordSink) -> list[str]:
    return [dict(letter.headers)["cellwatch.reason"].decode()
            for letter in sink.on("dead-letters")]


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


# Dead letters always fit ------------------------------------------------------------------


def test_an_oversized_readings_dead_letter_is_cut_to_fit_the_topic(
        step: StreamingStep, sink: FakeRecordSink, registry: CollectorRegistry) -> None:
    worker = make_worker(step, sink, registry, dead_letter_max_bytes=20_000)
    huge = b'{"stream":"s","pad":"' + b"x" * 1_048_400 + b'"}'
    worker.process([record(0, huge, b"s", headers=[("trace", b"t-1")])])
    (letter,) = sink.on("dead-letters")
    headers = dict(letter.headers)
    assert headers["cellwatch.reason"] == b"oversized"
    assert headers["cellwatch.truncated"] == b"value"
    assert headers["cellwatch.original.bytes"] == str(len(huge)).encode()
    assert headers["trace"] == b"t-1" and letter.key == b"s"
    assert huge.startswith(letter.value) and len(letter.value) > 10_000
    assert record_size(letter) <= 20_000 - 1024  # room for the record's framing
    assert metric(registry, "cellwatch_dead_letters_truncated_total") == 1
    assert worker.source.commits == [{0: 1}]


def test_a_dead_letter_that_fits_is_sent_whole(step, sink, registry) -> None:
    worker = make_worker(step, sink, registry, dead_letter_max_bytes=20_000)
    worker.process([record(0, b"{" * 5000, b"s")])
    (letter,) = sink.on("dead-letters")
    assert letter.value == b"{" * 5000 and "cellwatch.truncated" not in dict(letter.headers)
    assert metric(registry, "cellwatch_dead_letters_truncated_total") == 0


def test_huge_headers_and_key_are_cut_after_the_value() -> None:
    source = record(7, b"v" * 3000, b"k" * 7500, headers=[("h", b"x" * 6000)])
    letter = dead_letter(source, Rejection(RejectReason.OVERSIZED, "too big"), 8000)
    headers = dict(letter.headers)
    assert headers["cellwatch.truncated"] == b"value,headers,key"
    assert headers["cellwatch.original.headers"] == b"1" and "h" not in headers
    assert letter.value == b"" and 0 < len(letter.key) < 7500
    assert headers["cellwatch.source.offset"] == b"7"
    assert len(letter.key) + sum(len(n) + len(v) for n, v in letter.headers) <= 8000 - 1024


def test_a_dead_letter_topic_too_small_for_the_headers_gets_the_headers_only() -> None:
    source = record(3, b"v" * 100, b"k", headers=[("h", b"x")])
    letter = dead_letter(source, Rejection(RejectReason.INVALID_JSON, "not JSON"), 100)
    headers = dict(letter.headers)
    assert headers["cellwatch.reason"] == b"invalid_json"
    assert headers["cellwatch.truncated"] == b"value,headers,key"
    assert (letter.key, letter.value) == (b"", b"")


def test_a_dead_letter_the_broker_refuses_is_dropped_not_fatal(
        step: StreamingStep, sink: FakeRecordSink, registry: CollectorRegistry,
        recorded: np.ndarray) -> None:
    """The broker's limit is smaller than the worker was told: the dead letter is refused
    for good. Stopping would fail again on the same record after every restart."""
    worker = make_worker(step, sink, registry)
    sink.refuse_larger_than = 2000
    good = [record_of(r) for r in readings_of(recorded[:1, :2], ["s"], first_offset=1)]
    worker.process([record(0, b"{" * 3000, b"s"), *good])
    assert len(sink.dropped) == 1 and sink.dropped[0].topic == "dead-letters"
    assert len(sink.on("scores")) == 2
    assert worker.source.commits == [{0: 3}]
    assert metric(registry, "cellwatch_dead_letters_dropped_total") == 1
    assert metric(registry, "cellwatch_dead_letters_total") == 0


def test_an_output_the_broker_refuses_still_stops_the_worker(
        step, sink, registry, recorded) -> None:
    worker = make_worker(step, sink, registry)
    sink.refuse_larger_than = 10  # every score record
    with pytest.raises(OutputError):
        worker.process([record_of(r) for r in readings_of(recorded[:1, :2], ["s"])])
    assert worker.source.commits == []


# Time: the far future and epoch seconds ---------------------------------------------------


def test_a_reading_from_year_9999_is_dead_lettered_and_the_stream_goes_on(
        step: StreamingStep, sink: FakeRecordSink, registry: CollectorRegistry,
        recorded: np.ndarray) -> None:
    worker = make_worker(step, sink, registry, max_future_s=3600.0)
    first, second = readings_of(recorded[:1, :2], ["s"], first_offset=1)
    far = record(0, message("s", "9999-12-31T23:59:59Z"), b"s")
    near_future = record(3, message("s", int((NOW_S + 3500) * 1000)), b"s")
    too_far = record(4, message("s", int((NOW_S + 3700) * 1000)), b"s")
    worker.process([far, record_of(first), record_of(second), near_future, too_far])
    assert reasons(sink) == ["future", "future"]
    assert [json.loads(s.value)["ts"] for s in sink.on("scores")] == [
        first.ts_ms, second.ts_ms, int((NOW_S + 3500) * 1000)]
    detail = dict(sink.on("dead-letters")[0].headers)["cellwatch.detail"]
    assert b"max_future_seconds" in detail
    assert metric(registry, "cellwatch_readings_rejected_total", reason="future") == 2


@pytest.mark.parametrize("ts", [1_706_702_400, "1706702400", 99_999_999_999])
def test_epoch_seconds_are_rejected_as_implausible_not_read_as_1970(
        step, sink, registry, ts) -> None:
    worker = make_worker(step, sink, registry)
    worker.process([record(0, message("s", ts), b"s")])
    assert reasons(sink) == ["implausible_ts"]
    detail = dict(sink.on("dead-letters")[0].headers)["cellwatch.detail"]
    assert b"epoch seconds? ts is epoch milliseconds" in detail
    assert not sink.on("scores") and "s" not in worker.store


def test_the_earliest_plausible_time_is_accepted(step, sink, registry) -> None:
    worker = make_worker(step, sink, registry)
    worker.process([record(0, message("s", 100_000_000_000), b"s")])
    assert reasons(sink) == [] and len(sink.on("scores")) == 1


# Values out of range and non-finite outputs -----------------------------------------------


def test_a_value_beyond_the_bound_is_dead_lettered_and_never_reaches_the_state(
        step: StreamingStep, sink: FakeRecordSink, registry: CollectorRegistry,
        recorded: np.ndarray) -> None:
    worker = make_worker(step, sink, registry, max_abs_value=1e15)
    first, second = readings_of(recorded[:1, :2], ["s"], first_offset=1)
    poison = record(0, message("s", first.ts_ms - 1, (1e30, 1.0, 1.0)), b"s")
    edge = record(3, message("t", first.ts_ms, (-1e15, 1.0, 1.0)), b"t")
    worker.process([poison, record_of(first), record_of(second), edge])
    assert reasons(sink) == ["out_of_range"]
    scores = [json.loads(s.value) for s in sink.on("scores")]
    assert [s["stream"] for s in scores] == ["s", "s", "t"]
    reference = make_worker(step, FakeRecordSink(), CollectorRegistry())
    reference.process([record_of(first), record_of(second)])
    s_row, ref_row = worker.store.row_of("s"), reference.store.row_of("s")
    assert worker.store.encode_record(s_row) == reference.store.encode_record(ref_row)


def test_non_finite_results_are_written_as_null_never_as_invalid_json(
        step: StreamingStep, sink: FakeRecordSink, registry: CollectorRegistry,
        recorded: np.ndarray) -> None:
    inf = float("inf")
    scripted = ScriptedStep(step, {minutes(1)[0]: (inf, 0), minutes(2)[0]: (float("nan"), 1)})
    model = ModelInfo(scripted, CHANNELS, MODEL_VERSION, "2024-01-01T00:00:00Z", 0.0)
    worker = assemble_worker(CONFIG, model, sink, WorkerMetrics(registry), clock=lambda: NOW_S)
    worker.source = FakeReadingSource([])
    worker.process([record_of(r) for r in readings_of(recorded[:1, :8], ["s"])])

    def strict(literal: str) -> None:
        raise AssertionError(f"non-finite JSON literal {literal}")

    scores = [json.loads(s.value, parse_constant=strict) for s in sink.on("scores")]
    assert scores[1]["score"] is None and scores[2]["score"] is None
    assert scores[0]["score"] is not None
    (episode,) = [json.loads(e.value, parse_constant=strict) for e in sink.on("anomalies")]
    assert episode["peak_score"] is None and episode["peak_ts"] == minutes(1)[0]


# Keys, stream ids and the number of streams ------------------------------------------------


def test_a_reading_whose_key_is_not_its_stream_is_dead_lettered(
        step: StreamingStep, sink: FakeRecordSink, registry: CollectorRegistry) -> None:
    worker = make_worker(step, sink, registry)
    t = T0_MS
    worker.process([record(0, message("s", t), None), record(1, message("s", t + 1), b"other"),
                    record(2, message("s", t + 2), b"s", partition=1)])
    assert reasons(sink) == ["key_mismatch", "key_mismatch"]
    details = [dict(letter.headers)["cellwatch.detail"] for letter in sink.on("dead-letters")]
    assert b"record key null" in details[0] and b"'other'" in details[1]
    assert [(s.key, json.loads(s.value)["ts"]) for s in sink.on("scores")] == [(b"s", t + 2)]
    assert worker.store.partition[worker.store.row_of("s")] == 1


def test_an_overlong_stream_id_is_dead_lettered(step, sink, registry) -> None:
    worker = make_worker(step, sink, registry, max_message_bytes=4096, max_stream_id_bytes=16)
    worker.process([record(0, message("é" * 9, T0_MS), ("é" * 9).encode()),
                    record(1, message("e" * 16, T0_MS), b"e" * 16)])
    assert reasons(sink) == ["stream_id_too_long"]
    assert len(worker.store) == 1


def test_beyond_max_streams_the_least_recently_seen_are_evicted(
        step: StreamingStep, sink: FakeRecordSink, registry: CollectorRegistry,
        recorded: np.ndarray) -> None:
    worker = make_worker(step, sink, registry, max_streams=3)
    a, b, c, d = (readings_of(recorded[i:i + 1, :3], [name], first_offset=10 * i)
                  for i, name in enumerate("abcd"))
    worker.process([record_of(r) for r in (a[0], b[0], c[0])])
    worker.process([record_of(a[1])])  # a is now more recent than b and c
    worker.process([record_of(d[0])])
    assert sorted(worker.store.stream_of(r) for r in worker.store.rows_in_use()) == [
        "a", "c", "d"]
    worker.process([record_of(r) for r in (c[1], b[1])])
    assert sorted(worker.store.stream_of(r) for r in worker.store.rows_in_use()) == [
        "b", "c", "d"]
    assert metric(registry, "cellwatch_stream_capacity_evictions_total") == 2
    assert metric(registry, "cellwatch_stream_evictions_total") == 0


# A fatal error ------------------------------------------------------------------------------


def test_after_a_fatal_error_the_probes_fail_at_once(step, sink, registry, recorded) -> None:
    worker = make_worker(step, sink, registry)
    sink.fail_flush = OutputError("scores topic gone")
    source = FakeReadingSource([record_of(r) for r in readings_of(recorded[:1, :2])])
    assert worker.liveness()[0]
    with pytest.raises(OutputError):
        worker.run(source, threading.Event())
    alive, detail = worker.liveness()
    assert not alive and "scores topic gone" in detail
    assert not worker.readiness()[0]


def test_the_model_watcher_exits_at_once_without_loading_when_not_stopped() -> None:
    from streaming.model_reload import ModelWatcher

    loads: list[int] = []
    watcher = ModelWatcher(lambda: 1, lambda: loads.append(1), lambda _m: None,
                           lambda _e: None, poll_s=3600, stop=threading.Event())
    with watcher:
        pass  # the worker failed: the stop event is not set
    watcher._thread.join(timeout=2)
    assert not watcher._thread.is_alive() and loads == []


def test_reading_message_keyed_by_stream_is_accepted(step, sink, registry) -> None:
    """What ``cellwatch replay --to-kafka`` produces passes every check."""
    worker = make_worker(step, sink, registry)
    value = reading_message("pump-7", T0_MS, [1.0, 2.0, 3.0], CHANNELS)
    worker.process([record(0, value, b"pump-7")])
    assert reasons(sink) == [] and len(sink.on("scores")) == 1
