"""ScoringEngine: batching never changes a score, time order and offsets are enforced,
flags fold into episodes, records carry the documented fields, idle streams are evicted."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Sequence

import numpy as np
import pytest

from detector.episodes import episode_spans
from detector.scorer_config import ScorerConfig
from detector.state import StateLayout
from detector.step import StreamingStep
from streaming.engine import BatchResult, Reading, ScoringEngine
from streaming.messages import RejectReason
from streaming.state_store import NO_EPISODE, StateStore
from tests.unit.streaming.conftest import (
    CHANNELS,
    MODEL_VERSION,
    STEP_MS,
    T0_MS,
    ModelParts,
    ScriptedStep,
    episode_records,
    minutes,
    readings_of,
    rejected_positions,
    score_records,
)
from training.detection_metrics import windowwise_metrics

SCORE_FIELDS = {"stream", "ts", "score", "likelihood", "surprise", "onset", "flag",
                "top_channel", "model_version"}
EPISODE_FIELDS = {"stream", "start_ts", "peak_ts", "end_ts", "peak_score", "peak_likelihood",
                  "flagged_readings", "channels", "model_version"}


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_engine(step: StreamingStep, *, capacity: int = 4, episode_gap: int = 3,
                clock=None) -> ScoringEngine:
    return ScoringEngine(step, StateStore(step.layout, initial_capacity=capacity), CHANNELS,
                         MODEL_VERSION, episode_gap=episode_gap,
                         clock=clock if clock is not None else FakeClock())


def one_by_one(engine: ScoringEngine, readings: Sequence[Reading]) -> list[BatchResult]:
    return [engine.process([reading]) for reading in readings]


def scores_of(results: Sequence[BatchResult]) -> list[tuple[bytes, bytes]]:
    return [record for result in results for record in score_records(result)]


def episodes_of(results: Sequence[BatchResult]) -> list[tuple[bytes, bytes]]:
    return [record for result in results for record in episode_records(result)]


def state_bytes(engine: ScoringEngine) -> dict[str, bytes]:
    store = engine.store
    return {store.stream_of(row): store.encode_record(row) for row in store.rows_in_use()}


@pytest.fixture
def readings(recorded: np.ndarray) -> list[Reading]:
    return readings_of(recorded[:, :30])


# (1) Batching -------------------------------------------------------------------------------


def test_a_batch_with_several_readings_per_stream_equals_one_reading_per_batch(
        step: StreamingStep, readings: list[Reading]) -> None:
    single = make_engine(step)
    expected = scores_of(one_by_one(single, readings))

    whole = make_engine(step)
    result = whole.process(readings)
    assert result.step_calls == 30  # one round per reading of a stream, not per reading
    assert score_records(result) == expected  # byte-identical, in arrival order

    uneven = make_engine(step, capacity=1)  # also grows the store mid-batch
    cuts = [0, 1, 8, 9, 47, 100, 101, 180]
    results = [uneven.process(readings[a:b]) for a, b in itertools.pairwise(cuts)]
    assert scores_of(results) == expected
    assert state_bytes(whole) == state_bytes(single) == state_bytes(uneven)


def test_arrival_order_across_streams_does_not_matter(step: StreamingStep,
                                                     readings: list[Reading]) -> None:
    # Each stream's readings keep their order; the interleaving of streams is shuffled.
    by_stream: dict[str, list[Reading]] = {}
    for reading in readings:
        by_stream.setdefault(reading.stream, []).append(reading)
    grouped = [reading for stream in sorted(by_stream, reverse=True)
               for reading in by_stream[stream]]
    expected = {id(reading): record for reading, record in
                zip(readings, score_records(make_engine(step).process(readings)), strict=True)}
    result = make_engine(step).process(grouped)
    assert score_records(result) == [expected[id(reading)] for reading in grouped]


# (2) The engine is the step, run per stream ---------------------------------------------------


def test_engine_equals_the_streaming_step_run_per_stream(step: StreamingStep,
                                                         recorded: np.ndarray) -> None:
    values = recorded[:, :30].copy()
    values[2, 20, 1] += 40 * values[:, :, 1].std()  # so that some reading is flagged
    readings = readings_of(values)
    engine = make_engine(step)
    result = engine.process(readings[:70])
    rest = engine.process(readings[70:])
    records = [json.loads(value) for _, value in score_records(result) + score_records(rest)]
    score = np.concatenate([result.score, rest.score])
    likelihood = np.concatenate([result.likelihood, rest.likelihood])

    streams, steps, _ = values.shape
    for s in range(streams):
        state = step.layout.initial(1)
        for t in range(steps):
            index = t * streams + s
            reading = readings[index]
            assert reading.stream == f"stream-{s}"
            direct, state = step(values[s, t][None], np.array([reading.ts_ms]), state)
            record = records[index]
            assert record["stream"] == reading.stream and record["ts"] == reading.ts_ms
            np.testing.assert_allclose(score[index], direct.score[0], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(likelihood[index], direct.likelihood[0], rtol=1e-6,
                                       atol=1e-6)
            np.testing.assert_allclose(record["score"], direct.score[0], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(record["likelihood"], direct.likelihood[0], rtol=1e-6,
                                       atol=1e-6)
            np.testing.assert_allclose(record["surprise"], direct.surprise[0], rtol=1e-6,
                                       atol=1e-6)
            np.testing.assert_allclose(record["onset"], direct.onset[0], rtol=1e-6, atol=1e-6)
            assert record["flag"] == bool(direct.flag[0])
            assert record["top_channel"] == CHANNELS[int(direct.top_channel[0])]
        row = engine.store.row_of(f"stream-{s}")
        np.testing.assert_allclose(engine.store.state[row], state[0], rtol=1e-6, atol=1e-6)
    assert result.flagged + rest.flagged == sum(r["flag"] for r in records) > 0


# (3) Time order -------------------------------------------------------------------------------


def reading(stream: str, minute: int, values: Sequence[float] = (20.0, 1.0, 5.0), *,
            offset: int = -1, partition: int = 0) -> Reading:
    return Reading(stream, T0_MS + minute * STEP_MS, np.asarray(values, np.float32),
                   partition, offset)


def test_out_of_order_and_duplicates_in_one_batch(step: StreamingStep) -> None:
    batch = [
        reading("a", 1, (20, 1, 5)),
        reading("b", 1, (30, 2, 6)),
        reading("a", 2, (21, 1, 4)),
        reading("a", 2, (99, 9, 9)),  # 3: duplicate of the reading just before
        reading("b", 0, (31, 2, 7)),  # 4: before b's reading of minute 1
        reading("a", 1, (22, 1, 3)),  # 5: before a's last reading (minute 2)
        reading("b", 2, (32, 2, 8)),
        reading("a", 3, (23, 1, 2)),
    ]
    result = make_engine(step).process(batch)
    assert [(index, rejected.rejection.reason) for index, rejected in zip(
        rejected_positions(batch, result), result.rejected, strict=True)] == [
        (3, RejectReason.DUPLICATE), (4, RejectReason.OUT_OF_ORDER),
        (5, RejectReason.OUT_OF_ORDER)]
    for rejected in result.rejected:  # each carries its reading, to be dead-lettered
        assert f"stream {rejected.reading.stream!r}" in rejected.rejection.detail
        assert str(rejected.reading.ts_ms) in rejected.rejection.detail

    good = [r for i, r in enumerate(batch) if i not in {3, 4, 5}]
    assert score_records(result) == score_records(make_engine(step).process(good))
    assert len(result.scores) == 5


def test_out_of_order_and_duplicates_across_batches(step: StreamingStep) -> None:
    engine = make_engine(step)
    first = engine.process([reading("a", 5), reading("b", 5)])
    assert not first.rejected
    batch = [reading("a", 5, (1, 2, 3)), reading("b", 6), reading("a", 4), reading("a", 7),
             reading("b", 6, (0, 0, 0))]
    second = engine.process(batch)
    assert [(index, rejected.rejection.reason) for index, rejected in zip(
        rejected_positions(batch, second), second.rejected, strict=True)] == [
        (0, RejectReason.DUPLICATE), (2, RejectReason.OUT_OF_ORDER),
        (4, RejectReason.DUPLICATE)]

    reference = make_engine(step)
    reference.process([reading("a", 5), reading("b", 5)])
    assert score_records(second) == score_records(
        reference.process([reading("b", 6), reading("a", 7)]))
    assert state_bytes(engine) == state_bytes(reference)


# (4) Offsets already applied --------------------------------------------------------------


def test_readings_at_or_below_the_last_offset_are_skipped(step: StreamingStep,
                                                         recorded: np.ndarray) -> None:
    readings = readings_of(recorded[:2, :8], partition=3)  # offsets 0..15, two streams
    engine = make_engine(step)
    engine.process(readings[:10])
    again = engine.process(readings[6:])  # 6..9 were applied already
    assert again.skipped == 4
    assert not again.rejected

    reference = make_engine(step)
    expected = score_records(reference.process(readings))[10:]
    assert score_records(again) == expected


def test_a_restored_state_skips_what_it_reflects_and_continues_identically(
        step: StreamingStep, recorded: np.ndarray) -> None:
    readings = readings_of(recorded[:3, :12], partition=1)
    uninterrupted = make_engine(step)
    expected = score_records(uninterrupted.process(readings))

    before = make_engine(step)
    before.process(readings[:20])  # a checkpoint was taken here ...
    checkpoint = state_bytes(before)
    after = make_engine(step)
    for stream, record in checkpoint.items():
        after.store.restore_record(stream, 1, record, now_s=0.0)
    # ... and the consumer replays from an older committed offset.
    replayed = after.process(readings[11:])
    assert replayed.skipped == 9
    assert score_records(replayed) == expected[20:]
    assert state_bytes(after) == state_bytes(uninterrupted)


def test_offsets_of_another_partition_are_not_skipped(step: StreamingStep) -> None:
    engine = make_engine(step)
    engine.process([reading("a", 1, offset=50, partition=0)])
    moved = engine.process([reading("a", 2, offset=3, partition=1)])
    assert moved.skipped == 0 and len(moved.scores) == 1


def test_a_rejected_reading_is_never_revisited(step: StreamingStep) -> None:
    engine = make_engine(step)
    engine.process([reading("a", 5, offset=0), reading("a", 4, offset=1)])
    row = engine.store.row_of("a")
    assert engine.store.last_offset[row] == 1
    assert engine.process([reading("a", 4, offset=1)]).skipped == 1


def test_readings_without_offsets_are_never_skipped(step: StreamingStep) -> None:
    engine = make_engine(step)
    engine.process([reading("a", 1), reading("a", 2)])
    result = engine.process([reading("a", 3)])
    assert result.skipped == 0 and len(result.scores) == 1


# (5) Episodes -------------------------------------------------------------------------------


def test_the_worker_and_evaluate_find_the_same_episodes_in_random_flags(
        step: StreamingStep) -> None:
    """One episode rule: the engine, folding flags as readings arrive, and ``cellwatch
    evaluate``, over a stream's whole flag array, give the same episodes (an episode still
    open at the end counts in both)."""
    rng = np.random.default_rng(14)
    streams, steps = 24, 40
    flags = rng.random((streams, steps)) < rng.uniform(0.05, 0.6, (streams, 1))
    names = [f"s{s}" for s in range(streams)]
    t0 = minutes(0)[0]
    script = {t0 + t * STEP_MS + s: (float(rng.uniform(1, 9)), int(rng.integers(3)))
              for s in range(streams) for t in range(steps) if flags[s, t]}
    for gap in (1, 2, 3, 5):
        engine = make_engine(ScriptedStep(step, script), episode_gap=gap, capacity=streams)
        result = engine.process([Reading(names[s], t0 + t * STEP_MS + s,
                                         np.ones(3, np.float32))
                                 for t in range(steps) for s in range(streams)])
        store = engine.store
        for s, name in enumerate(names):
            ended = [(e.episode.start_ms, e.episode.end_ms) for e in result.episodes
                     if e.stream == name]
            row = store.row_of(name)
            if store.episode_start_ms[row] != NO_EPISODE:
                ended.append((int(store.episode_start_ms[row]), int(store.episode_end_ms[row])))
            evaluated = [(t0 + first * STEP_MS + s, t0 + last * STEP_MS + s)
                         for first, last in episode_spans(flags[s], gap)]
            assert ended == evaluated, (gap, name, flags[s].astype(int).tolist())
            counted = windowwise_metrics([flags[s]], [np.zeros(steps, bool)], gap)["episodes"]
            assert counted == len(evaluated)


def test_a_spike_yields_one_episode_once_it_is_over(model_parts: ModelParts,
                                                    recorded: np.ndarray) -> None:
    # The forecaster has random weights, so its errors on quiet readings are large now and
    # then (a surprise near 4 at reading 29); the threshold sits above those and far below
    # the spike's.
    step = model_parts.step(ScorerConfig(learning_period=10, history=50, threshold=0.99999,
                                         average_span=2))
    values = recorded[:1, :60].copy()
    spike = slice(40, 43)
    values[0, spike, 1] += 40 * np.float32(model_parts.scaler.scale[1])  # pressure jumps
    readings = readings_of(values, ["pump-7"])
    engine = make_engine(step, episode_gap=3)
    results = one_by_one(engine, readings)
    scores = [json.loads(value) for _, value in scores_of(results)]

    flagged = [index for index, record in enumerate(scores) if record["flag"]]
    assert flagged and all(40 <= index <= 44 for index in flagged), flagged
    closing = [index for index, result in enumerate(results) if result.episodes]
    assert closing == [flagged[-1] + 3]  # three quiet readings after the last flag
    assert sum(result.episodes_opened for result in results) == 1

    key, value = episode_records(results[closing[0]])[0]
    assert key == b"pump-7"
    episode = json.loads(value)
    assert set(episode) == EPISODE_FIELDS
    peak = max(flagged, key=lambda index: scores[index]["score"])
    # Its channels: those that topped its flagged readings (random weights: not only pressure).
    tops = {scores[index]["top_channel"] for index in flagged}
    assert scores[flagged[0]]["top_channel"] == "pressure"
    assert episode == {
        "stream": "pump-7", "start_ts": readings[flagged[0]].ts_ms,
        "peak_ts": readings[peak].ts_ms, "end_ts": readings[flagged[-1]].ts_ms,
        "peak_score": scores[peak]["score"], "peak_likelihood": scores[peak]["likelihood"],
        "flagged_readings": len(flagged), "channels": [c for c in CHANNELS if c in tops],
        "model_version": MODEL_VERSION}
    assert scores[peak]["score"] > 10  # the spike, not noise

    # The same readings in one batch give the same episode.
    assert episode_records(make_engine(step, episode_gap=3).process(readings)) == [
        (key, value)]


def test_episode_bookkeeping_with_scripted_flags(step: StreamingStep) -> None:
    # a: flags at minutes 2, 3, 5 (one quiet reading between does not close it), quiet from 6.
    # b (a millisecond after a's minutes): flags at minute 4 only, then goes silent.
    script = {ts: entry for ts, entry in zip(
        minutes(2, 3, 5), [(3.0, 0), (7.5, 2), (4.0, 0)], strict=True)}
    script[minutes(4)[0] + 1] = (2.0, 1)
    engine = make_engine(ScriptedStep(step, script), episode_gap=3)
    results = []
    for minute in range(12):
        batch = [reading("a", minute)]
        if minute == 4:
            batch.append(Reading("b", minutes(4)[0] + 1, np.ones(3, np.float32)))
        results.append(engine.process(batch))
    closing = [minute for minute, result in enumerate(results) if result.episodes]
    assert closing == [8]  # quiet at 6, 7, 8
    assert [r.episodes_opened for r in results] == [0, 0, 1, 0, 1] + [0] * 7
    (key, value), = episode_records(results[8])
    assert key == b"a"
    assert json.loads(value) == {
        "stream": "a", "start_ts": minutes(2)[0], "peak_ts": minutes(3)[0],
        "end_ts": minutes(5)[0], "peak_score": 7.5, "peak_likelihood": 0.9995,
        "flagged_readings": 3, "channels": ["temperature", "flow"],
        "model_version": MODEL_VERSION}
    store = engine.store
    assert store.episode_start_ms[store.row_of("a")] == NO_EPISODE  # closed
    assert store.episode_start_ms[store.row_of("b")] == minutes(4)[0] + 1  # still open

    # b's episode closes only with b's own quiet readings.
    for minute in (5, 6):
        assert not engine.process([Reading("b", minutes(minute)[0] + 1,
                                           np.ones(3, np.float32))]).episodes
    (_, value), = episode_records(engine.process([Reading("b", minutes(7)[0] + 1,
                                                          np.ones(3, np.float32))]))
    episode = json.loads(value)
    assert (episode["start_ts"], episode["end_ts"]) == (minutes(4)[0] + 1,) * 2
    assert episode["channels"] == ["pressure"]


def test_a_new_flag_reopens_a_fresh_episode(step: StreamingStep) -> None:
    script = {minutes(1)[0]: (9.0, 1), minutes(2)[0]: (8.0, 1), minutes(6)[0]: (5.0, 2)}
    engine = make_engine(ScriptedStep(step, script), episode_gap=2)
    result = engine.process([reading("a", minute) for minute in range(10)])
    assert result.episodes_opened == 2 and result.flagged == 3
    episodes = [json.loads(value) for _, value in episode_records(result)]
    # Nothing of the first episode leaks into the second.
    assert [(e["start_ts"], e["end_ts"], e["peak_ts"], e["peak_score"], e["flagged_readings"],
             e["channels"]) for e in episodes] == [
        (minutes(1)[0], minutes(2)[0], minutes(1)[0], 9.0, 2, ["pressure"]),
        (minutes(6)[0], minutes(6)[0], minutes(6)[0], 5.0, 1, ["flow"])]


def test_records_carry_their_source_partition(step: StreamingStep) -> None:
    script = {minutes(1)[0]: (4.0, 0)}
    engine = make_engine(ScriptedStep(step, script), episode_gap=1)
    first = engine.process([reading("a", 0, partition=2), reading("b", 0, partition=5),
                            reading("a", 1, partition=2), reading("b", 0, partition=5)])
    assert first.scores.partitions == [2, 5, 2]  # the rejected duplicate has no record
    assert not first.episodes
    second = engine.process([reading("b", 1, partition=5), reading("a", 2, partition=2)])
    assert second.scores.partitions == [5, 2]
    assert [key for key, _ in episode_records(second)] == [b"a"]
    assert [ended.partition for ended in second.episodes] == [2]


# (6) Score records ----------------------------------------------------------------------------


def test_score_records_have_the_documented_fields_and_are_keyed_by_stream(
        step: StreamingStep) -> None:
    stream = 'pump "7" / ü'
    result = make_engine(step).process([reading(stream, 0), reading(stream, 1, (25, 3, 1)),
                                        reading("other", 0)])
    records = score_records(result)
    assert [key for key, _ in records] == [stream.encode(), stream.encode(), b"other"]
    first, second, other = (json.loads(value) for _, value in records)
    assert set(first) == SCORE_FIELDS
    assert first["stream"] == second["stream"] == stream and other["stream"] == "other"
    assert (first["ts"], second["ts"]) == (T0_MS, T0_MS + STEP_MS)
    assert first["model_version"] == MODEL_VERSION
    # The first reading of a stream has no forecast yet: no surprise while learning.
    assert (first["score"], first["likelihood"], first["flag"]) == (0, 0.5, False)
    for record in (first, second):
        assert isinstance(record["ts"], int) and isinstance(record["flag"], bool)
        assert all(isinstance(record[f], float | int) for f in ("score", "likelihood",
                                                                 "surprise", "onset"))
        assert record["top_channel"] in CHANNELS
    assert second["score"] > 0
    np.testing.assert_allclose(second["score"], result.score[1], rtol=1e-6)


def test_the_engine_refuses_a_mismatched_model(step: StreamingStep) -> None:
    with pytest.raises(ValueError, match="channels"):
        ScoringEngine(step, StateStore(step.layout), CHANNELS[:2], MODEL_VERSION)
    other = StateLayout(channels=3, input_width=step.layout.input_width + 1,
                        memory_units=step.layout.memory_units)
    with pytest.raises(ValueError, match="layout"):
        ScoringEngine(step, StateStore(other), CHANNELS, MODEL_VERSION)


# (7) Idle eviction --------------------------------------------------------------------------


def test_idle_streams_are_evicted_and_start_over(step: StreamingStep) -> None:
    clock = FakeClock(1000.0)
    engine = make_engine(step, clock=clock)
    engine.process([reading("a", 0), reading("b", 0)])
    clock.now = 1100.0
    engine.process([reading("b", 1)])
    clock.now = 1130.0
    assert engine.evict_idle(max_idle_s=100.0) == [(b"a", 0)]  # a: silent 130 s; b: 30 s
    assert "a" not in engine.store and "b" in engine.store
    assert engine.evict_idle(max_idle_s=100.0) == []

    # a comes back as a new stream: its old readings are no longer "in the past".
    again = engine.process([reading("a", 0, (1, 2, 3))])
    assert not again.rejected
    assert score_records(again) == score_records(
        make_engine(step).process([reading("a", 0, (1, 2, 3))]))
    clock.now = 5000.0
    assert len(engine.evict_idle(max_idle_s=100.0)) == 2
    assert len(engine.store) == 0


def test_a_restored_stream_counts_as_used_at_its_restore(step: StreamingStep) -> None:
    """Beyond max_streams the least recently used go first; a stream just restored from the
    changelog (handed to this worker by a rebalance) is not older than the ones in use."""
    engine = make_engine(step)
    engine.process([reading("a", 0), reading("b", 0)])
    engine.process([reading("b", 1)])
    donor = make_engine(step)
    donor.process([reading("c", 0)])
    engine.store.restore_record("c", 0, donor.store.encode_record(donor.store.row_of("c")),
                                now_s=0.0)
    assert engine.evict_least_recent(max_streams=2) == [(b"a", 0)]
    assert "c" in engine.store and "b" in engine.store


def test_rejected_readings_do_not_keep_a_stream_alive(step: StreamingStep) -> None:
    clock = FakeClock(0.0)
    engine = make_engine(step, clock=clock)
    engine.process([reading("a", 5)])
    clock.now = 500.0
    assert engine.process([reading("a", 5)]).rejected  # a duplicate is not activity
    assert len(engine.evict_idle(max_idle_s=100.0)) == 1


def test_result_arrays_follow_the_scored_readings(step: StreamingStep) -> None:
    batch = [dataclasses.replace(reading("a", 1), broker_ts_ms=T0_MS + 99),
             reading("a", 0), reading("b", 3)]
    result = make_engine(step).process(batch)
    assert result.reading_ts_ms.tolist() == [T0_MS + STEP_MS, T0_MS + 3 * STEP_MS]
    assert result.broker_ts_ms.tolist() == [T0_MS + 99, -1]
    assert result.score.shape == result.likelihood.shape == (2,)
    assert result.step_calls == 1


def test_a_stream_moving_partitions_is_scored_not_skipped(step):
    """Producers that break keying move a stream; no reading of it may be silently lost."""
    engine = make_engine(step)
    values = np.ones(3, dtype=np.float32)
    first = engine.process([Reading("s", 1_000, values, partition=0, offset=10)])
    moved = engine.process([Reading("s", 2_000, values, partition=1, offset=500)])
    back = engine.process([Reading("s", 3_000, values, partition=0, offset=11)])
    assert [len(r.scores) for r in (first, moved, back)] == [1, 1, 1]
    assert back.skipped == 0
    row = engine.store.row_of("s")
    assert (engine.store.partition[row], engine.store.last_offset[row]) == (0, 11)
