"""Replay: the message format, pacing into a sink, and in-process scoring equal to the engine."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from detector.scorer_config import ScorerConfig
from detector.step import StreamingStep
from streaming.engine import ScoringEngine
from streaming.messages import ReadingParser, reading_message
from streaming.ports import OutputError
from streaming.replay import replay_to_kafka, score_in_process
from streaming.state_store import StateStore
from tests.unit.streaming.conftest import (
    CHANNELS,
    MODEL_VERSION,
    FakeRecordSink,
    ModelParts,
    episode_records,
    readings_of,
    score_records,
)


class FakeTime:
    """A monotonic clock that only moves when slept on (or when told to)."""

    def __init__(self, start: float = 500.0, per_call: float = 0.0) -> None:
        self.now = start
        self.per_call = per_call
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        self.now += self.per_call
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


def recorded_readings(span_ms=(0, 1000, 3000, 3000, 10_000)) -> list[tuple[str, int, list]]:
    t0 = 1_706_702_400_000
    return [(f"s{i % 2}", t0 + offset, [float(i), 2.5, -1.0]) for i, offset in
            enumerate(span_ms)]


# Message format -------------------------------------------------------------------------------


def test_reading_message_format() -> None:
    raw = reading_message("pump-7", 1_706_702_400_000, [21.5, np.float32(1.25), 3],
                          CHANNELS)
    assert raw == (b'{"stream":"pump-7","ts":1706702400000,"values":'
                   b'{"temperature":21.5,"pressure":1.25,"flow":3.0}}')
    parsed = ReadingParser(CHANNELS, 1024).parse(raw)
    assert parsed[:2] == ("pump-7", 1_706_702_400_000)
    np.testing.assert_array_equal(parsed[2], np.array([21.5, 1.25, 3.0], np.float32))


def test_reading_message_needs_one_value_per_channel() -> None:
    with pytest.raises(ValueError):
        reading_message("s", 0, [1.0, 2.0], CHANNELS)


def test_non_ascii_stream_ids_survive_the_round_trip() -> None:
    raw = reading_message('pump "ü"', np.int64(5), [1, 2, 3], CHANNELS)
    assert ReadingParser(CHANNELS, 1024).parse(raw)[:2] == ('pump "ü"', 5)


# Replay into a sink ---------------------------------------------------------------------------


def test_replay_sends_every_reading_keyed_by_stream() -> None:
    sink = FakeRecordSink()
    readings = recorded_readings()
    assert replay_to_kafka(readings, CHANNELS, sink, "readings") == 5
    assert [(r.topic, r.key) for r in sink.sent] == [("readings", b"s0"), ("readings", b"s1"),
                                                     ("readings", b"s0"), ("readings", b"s1"),
                                                     ("readings", b"s0")]
    assert [r.value for r in sink.sent] == [reading_message(*r, CHANNELS) for r in readings]
    assert sink.acknowledged == 5


@pytest.mark.parametrize("speed", [1.0, 2.0, 60.0])
def test_pacing_divides_the_recorded_gaps_by_speed(speed: float) -> None:
    clock = FakeTime()
    sink = FakeRecordSink()
    replay_to_kafka(recorded_readings(), CHANNELS, sink, "readings", speed=speed,
                    sleep=clock.sleep, monotonic=clock.monotonic)
    assert sum(clock.sleeps) == pytest.approx(10.0 / speed)
    # No sleep before the first reading nor between readings of the same time.
    assert clock.sleeps == pytest.approx([1.0 / speed, 2.0 / speed, 7.0 / speed])


def test_pacing_accounts_for_time_spent_sending() -> None:
    clock = FakeTime(per_call=0.25)  # every look at the clock finds a quarter second gone
    replay_to_kafka(recorded_readings(), CHANNELS, FakeRecordSink(), "readings", speed=1.0,
                    sleep=clock.sleep, monotonic=clock.monotonic)
    # Reading k is due 0, 1, 3, 3, 10 s after the start; the clock advanced while looking.
    assert clock.sleeps == pytest.approx([0.5, 1.75, 6.5])
    assert clock.now - 500.0 == pytest.approx(10.0 + 0.25)


def test_speed_zero_never_sleeps() -> None:
    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"slept {seconds} s")

    sink = FakeRecordSink()
    assert replay_to_kafka(recorded_readings(), CHANNELS, sink, "readings", speed=0,
                           sleep=no_sleep) == 5


@pytest.mark.parametrize("speed", [-1.0, -0.001])
def test_negative_speed_is_refused_before_sending(speed: float) -> None:
    sink = FakeRecordSink()
    with pytest.raises(ValueError, match="speed"):
        replay_to_kafka(recorded_readings(), CHANNELS, sink, "readings", speed=speed)
    assert sink.sent == [] and sink.flushes == 0


def test_flushes_every_so_often_and_at_the_end() -> None:
    sink = FakeRecordSink()
    flushed_at: list[int] = []
    original_flush = sink.flush

    def flush() -> None:
        flushed_at.append(len(sink.sent))
        original_flush()

    sink.flush = flush
    progress: list[int] = []
    sent = replay_to_kafka(recorded_readings(), CHANNELS, sink, "readings", flush_every=2,
                           progress=progress.append)
    assert sent == 5
    assert flushed_at == [2, 4, 5]
    assert progress == [2, 4, 5]


def test_nothing_to_replay_still_flushes() -> None:
    sink = FakeRecordSink()
    assert replay_to_kafka([], CHANNELS, sink, "readings", speed=1.0) == 0
    assert sink.flushes == 1


def test_a_failed_flush_propagates() -> None:
    sink = FakeRecordSink()
    sink.fail_flush = OutputError("down")
    with pytest.raises(OutputError):
        replay_to_kafka(recorded_readings(), CHANNELS, sink, "readings")


# Scoring in process ---------------------------------------------------------------------------


def engine_for(step: StreamingStep) -> ScoringEngine:
    return ScoringEngine(step, StateStore(step.layout), CHANNELS, MODEL_VERSION, episode_gap=3)


@pytest.mark.parametrize("batch_size", [1, 7, 5000])
def test_scoring_in_process_equals_the_engine(step: StreamingStep, recorded: np.ndarray,
                                              batch_size: int) -> None:
    readings = readings_of(recorded[:4, :25])
    expected = engine_for(step).process(readings)
    recorded_form = [(r.stream, r.ts_ms, r.values.tolist()) for r in readings]
    scores_out, anomalies_out = io.BytesIO(), io.BytesIO()
    progress: list[int] = []
    stats = score_in_process(recorded_form, engine_for(step), scores_out, anomalies_out,
                             batch_size=batch_size, progress=progress.append)
    lines = scores_out.getvalue().splitlines(keepends=True)
    assert len(lines) == len(readings) == 100
    assert lines == [value + b"\n" for _, value in score_records(expected)]
    assert all(json.loads(line)["stream"] == r.stream for line, r in zip(lines, readings,
                                                                          strict=True))
    assert anomalies_out.getvalue() == b"".join(value + b"\n"
                                                 for _, value in episode_records(expected))
    assert (stats.readings, stats.scored, stats.rejected) == (100, 100, 0)
    assert stats.flagged == expected.flagged
    assert stats.episodes == len(expected.episodes)
    assert progress[-1] == 100 and len(progress) == -(-100 // batch_size)


def test_scoring_in_process_reports_episodes(model_parts: ModelParts,
                                             recorded: np.ndarray) -> None:
    # As in the engine's spike test: above the random forecaster's errors on quiet readings.
    step = model_parts.step(ScorerConfig(learning_period=10, history=50, threshold=0.99999,
                                         average_span=2))
    values = recorded[:1, :60].copy()
    values[0, 40:43, 1] += 40 * np.float32(model_parts.scaler.scale[1])
    readings = [(r.stream, r.ts_ms, r.values) for r in readings_of(values, ["pump-7"])]
    scores_out, anomalies_out = io.BytesIO(), io.BytesIO()
    stats = score_in_process(readings, engine_for(step), scores_out, anomalies_out,
                             batch_size=9)
    (line,) = anomalies_out.getvalue().splitlines()
    # The channels that topped the episode's flagged readings (the engine's spike test says
    # which), pressure first among them.
    flagged = [score for score in map(json.loads, scores_out.getvalue().splitlines())
               if score["flag"]]
    assert flagged[0]["top_channel"] == "pressure"
    tops = {score["top_channel"] for score in flagged}
    assert json.loads(line)["channels"] == [name for name in CHANNELS if name in tops]
    assert stats.episodes == 1 and stats.flagged == len(flagged)


def test_scoring_in_process_counts_rejected_readings(step: StreamingStep) -> None:
    readings = [("a", 2000, [1, 2, 3]), ("a", 1000, [1, 2, 3]), ("a", 2000, [1, 2, 3]),
                ("a", 3000, [1, 2, 3])]
    scores_out = io.BytesIO()
    stats = score_in_process(readings, engine_for(step), scores_out, batch_size=2)
    assert (stats.readings, stats.scored, stats.rejected) == (4, 2, 2)
    assert [json.loads(line)["ts"] for line in scores_out.getvalue().splitlines()] == [
        2000, 3000]
