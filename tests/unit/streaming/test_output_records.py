"""Every topic's records read back as written: readings, scores, anomaly episodes and dead
letters; the bytes on the wire are the documented ones; numbers that are not finite are
written as JSON null."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from detector.episodes import Episode
from streaming.dead_letters import (
    DeadLetterOrigin,
    dead_letter,
    dead_letter_headers,
    read_dead_letter_headers,
)
from streaming.engine import EndedEpisode, ScoredReadings
from streaming.messages import ReadingMessageWriter, ReadingParser, Rejection, RejectReason
from streaming.output_records import (
    EpisodeRecord,
    ScoreRecord,
    encode_episode,
    encode_scores,
    read_episode_record,
    read_score_record,
)
from tests.unit.streaming.conftest import CHANNELS, MODEL_VERSION, FakeRecord


def scored(streams, ts, score, likelihood, surprise, onset, flag, top) -> ScoredReadings:
    return ScoredReadings(
        streams=list(streams), ts_ms=np.array(ts, np.int64), partitions=[0] * len(streams),
        score=np.array(score, np.float32), likelihood=np.array(likelihood, np.float32),
        surprise=np.array(surprise, np.float32), onset=np.array(onset, np.float32),
        flag=np.array(flag, bool), top_channel=np.array(top, np.int32), channels=CHANNELS,
        model_version=MODEL_VERSION)


# Readings -------------------------------------------------------------------------------------


def test_a_reading_reads_back_as_written() -> None:
    writer = ReadingMessageWriter(CHANNELS)
    values = [21.5, -0.001, 1e-30]
    raw = writer.message('pump "ü" 7', 1_706_702_400_000, values)
    assert raw == (b'{"stream":"pump \\"\\u00fc\\" 7","ts":1706702400000,"values":'
                   b'{"temperature":21.5,"pressure":-0.001,"flow":1e-30}}')
    stream, ts_ms, parsed = ReadingParser(CHANNELS, 1024).parse(raw)
    assert (stream, ts_ms) == ('pump "ü" 7', 1_706_702_400_000)
    np.testing.assert_array_equal(parsed, np.array(values, np.float32))


def test_a_recording_line_carries_text_time_missing_values_and_a_label() -> None:
    text = ReadingMessageWriter(CHANNELS).text("a", "2024-01-31T12:00:00.000Z",
                                               [1.0, math.nan, None], label=1)
    assert json.loads(text) == {"stream": "a", "ts": "2024-01-31T12:00:00.000Z",
                                "values": {"temperature": 1.0, "pressure": None,
                                           "flow": None}, "label": 1}
    with pytest.raises(ValueError, match="one per channel"):
        ReadingMessageWriter(CHANNELS).text("a", 0, [1.0, 2.0])


# Scores ---------------------------------------------------------------------------------------


def test_score_records_read_back_as_written_and_look_as_documented() -> None:
    readings = scored(["pump-7", 'ü "x"'], [1_706_702_400_000, 5], [1.25, 0.5],
                      [0.999, 0.5], [3.0, 0.30103], [3.0, 0.0], [True, False], [1, 0])
    records = encode_scores(readings)
    assert records[0] == (b"pump-7", b'{"stream":"pump-7","ts":1706702400000,"score":1.25,'
                                     b'"likelihood":0.999,"surprise":3,"onset":3,"flag":true,'
                                     b'"top_channel":"pressure","model_version":"test-model-1"}')
    assert [key for key, _ in records] == [b"pump-7", 'ü "x"'.encode()]
    assert [read_score_record(value) for _, value in records] == [
        ScoreRecord("pump-7", 1_706_702_400_000, 1.25, 0.999, 3.0, 3.0, True, "pressure",
                    MODEL_VERSION),
        ScoreRecord('ü "x"', 5, 0.5, 0.5, 0.30103, 0.0, False, "temperature", MODEL_VERSION)]


def test_non_finite_score_numbers_are_written_as_null() -> None:
    (_, value), = encode_scores(scored(["s"], [1], [math.inf], [math.nan], [-math.inf],
                                       [math.nan], [False], [2]))
    assert b"inf" not in value.lower() and b"nan" not in value.lower()
    json.loads(value, parse_constant=pytest.fail)  # strict JSON
    record = read_score_record(value)
    assert (record.score, record.likelihood, record.surprise, record.onset) == (None,) * 4


def test_a_record_of_another_kind_is_refused() -> None:
    (_, value), = encode_scores(scored(["s"], [1], [1], [0.5], [0], [0], [False], [0]))
    with pytest.raises(ValueError, match="EpisodeRecord"):
        read_episode_record(value)


# Episodes -------------------------------------------------------------------------------------


def ended(peak_score: float = 41.5, peak_likelihood: float = 0.99999) -> EndedEpisode:
    episode = Episode(start_ms=1000, peak_ms=2000, end_ms=3000, peak_score=peak_score,
                      peak_likelihood=peak_likelihood, flagged_readings=3,
                      channel_mask=0b101)
    return EndedEpisode("pump-7", 4, episode, episode.channels(CHANNELS), MODEL_VERSION)


def test_episode_records_read_back_as_written_and_look_as_documented() -> None:
    key, value = encode_episode(ended())
    assert key == b"pump-7"
    assert value == (b'{"stream":"pump-7","start_ts":1000,"peak_ts":2000,"end_ts":3000,'
                     b'"peak_score":41.5,"peak_likelihood":0.99999,"flagged_readings":3,'
                     b'"channels":["temperature","flow"],"model_version":"test-model-1"}')
    assert read_episode_record(value) == EpisodeRecord(
        "pump-7", 1000, 2000, 3000, 41.5, 0.99999, 3, ("temperature", "flow"), MODEL_VERSION)


def test_non_finite_episode_numbers_are_written_as_null() -> None:
    _, value = encode_episode(ended(peak_score=math.nan, peak_likelihood=math.inf))
    json.loads(value, parse_constant=pytest.fail)
    record = read_episode_record(value)
    assert (record.peak_score, record.peak_likelihood) == (None, None)


# Dead letters ---------------------------------------------------------------------------------


def test_dead_letter_headers_read_back_as_written() -> None:
    record = FakeRecord("readings", 3, 77, 0, b"k", b"{bad", [("trace", b"1")])
    rejection = Rejection(RejectReason.INVALID_JSON, "not JSON: ü")
    assert read_dead_letter_headers(dead_letter_headers(record, rejection)) == \
        DeadLetterOrigin("invalid_json", "not JSON: ü", "readings", 3, 77)

    letter = dead_letter(FakeRecord("readings", 0, 5, 0, b"k", b"x" * 5000),
                         Rejection(RejectReason.OVERSIZED, "big"), topic_max_bytes=2000)
    origin = read_dead_letter_headers(letter.headers)
    assert (origin.reason, origin.truncated, origin.original_bytes) == (
        "oversized", ("value",), 5000)
    with pytest.raises(KeyError, match=r"cellwatch\.reason"):
        read_dead_letter_headers([("trace", b"1")])
