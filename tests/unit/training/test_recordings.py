"""Reading recorded data in every format, filling, replay, writing (the validation errors:
``test_recording_validation.py``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from detector.readings import parse_timestamp_ms
from tests.unit.training.recording_files import MINUTE, T0, iso, problems_of, write
from training.recordings import (
    Recording,
    StreamSeries,
    read_recording,
    write_jsonl,
    write_long_csv,
)

# ------------------------------------------------------------------------------ formats


def test_long_csv_with_free_column_order_labels_and_mixed_timestamp_forms(tmp_path):
    path = write(tmp_path / "rec.csv", "\n".join([
        "label,timestamp,mem,stream,cpu",
        f"0,{iso(0)},10,b,1.5",
        f"1,{T0 + MINUTE},11,a,2.5",       # epoch ms text
        f"0,{iso(1)},12,b,",               # missing cpu
        "0,2024-03-01T01:02:00+01:00,13,a,3.5",  # = iso(2) with an offset
        "0,2024-03-01 00:02:00,NA,b,4.5",        # naive = UTC
    ]) + "\n")
    recording = read_recording([path])
    assert recording.channels == ("mem", "cpu")
    assert list(recording.streams) == ["b", "a"]
    b, a = recording.streams["b"], recording.streams["a"]
    assert b.timestamps_ms.tolist() == [T0, T0 + MINUTE, T0 + 2 * MINUTE]
    assert a.timestamps_ms.tolist() == [T0 + MINUTE, T0 + 2 * MINUTE]
    np.testing.assert_array_equal(b.values, [[10, 1.5], [12, np.nan], [np.nan, 4.5]])
    np.testing.assert_array_equal(a.values, [[11, 2.5], [13, 3.5]])
    assert a.labels.tolist() == [True, False] and b.labels.tolist() == [False] * 3
    summary = recording.summary
    assert (summary.files, summary.rows, summary.streams, summary.channels) == (
        (str(path),), 5, 2, 2)
    assert summary.missing_values == 2 and summary.filled_values == 0
    assert (summary.start_ms, summary.end_ms) == (T0, T0 + 2 * MINUTE)
    assert not a.values.flags.writeable


def test_wide_csv_streams_are_file_stems_and_channel_order_follows_the_first_file(tmp_path):
    first = write(tmp_path / "cell-1.csv", f"timestamp,x,y\n{iso(0)},1,2\n{iso(1)},3,4\n")
    second = write(tmp_path / "more" / "cell-2.csv", f"y, x, timestamp\n20,10,{iso(0)}\n")
    recording = read_recording([first, second], format="wide-csv")
    assert recording.channels == ("x", "y")
    assert list(recording.streams) == ["cell-1", "cell-2"]
    np.testing.assert_array_equal(recording.streams["cell-2"].values, [[10, 20]])
    assert recording.streams["cell-1"].labels is None and not recording.labeled


def test_a_stream_may_continue_into_the_next_file(tmp_path):
    day1 = write(tmp_path / "day1.csv", f"stream,timestamp,v\na,{iso(0)},1\na,{iso(1)},2\n")
    day2 = write(tmp_path / "day2.csv", f"stream,timestamp,v\na,{iso(2)},3\n")
    series = read_recording([day1, day2]).streams["a"]
    assert series.values[:, 0].tolist() == [1, 2, 3]


def test_jsonl_flat_and_kafka_message_shapes(tmp_path):
    lines = [
        {"stream": "a", "ts": iso(0), "cpu": 1, "mem": 2.5},
        {"stream": "b", "timestamp": T0, "cpu": None, "mem": 3},
        {"stream": "a", "ts": T0 + MINUTE, "values": {"mem": 4, "cpu": "nan"}},
        {"stream": "b", "ts": T0 + MINUTE, "values": {"mem": None, "cpu": 5}},
    ]
    path = write(tmp_path / "rec.ndjson", "\n".join(map(json.dumps, lines)) + "\n\n")
    recording = read_recording(path)
    assert recording.channels == ("cpu", "mem")
    np.testing.assert_array_equal(recording.streams["a"].values, [[1, 2.5], [np.nan, 4]])
    np.testing.assert_array_equal(recording.streams["b"].values, [[np.nan, 3], [5, np.nan]])
    assert recording.streams["a"].timestamps_ms.tolist() == [T0, T0 + MINUTE]
    assert recording.summary.missing_values == 3


def test_jsonl_labels(tmp_path):
    path = write(tmp_path / "rec.jsonl", "\n".join(json.dumps(x) for x in [
        {"stream": "a", "ts": iso(0), "values": {"v": 1}, "label": 0},
        {"stream": "a", "ts": iso(1), "values": {"v": 2}, "label": True},
    ]))
    assert read_recording(path).streams["a"].labels.tolist() == [False, True]


def test_nab_directory_stream_keys_are_relative_paths(tmp_path):
    data = tmp_path / "data"
    write(data / "realKnownCause" / "nyc_taxi.csv",
          "timestamp,value\n2014-07-01 00:00:00,10844\n2014-07-01 00:30:00,8127\n")
    write(data / "artificialNoAnomaly" / "art_flatline.csv",
          "timestamp,value\n2014-04-01 00:00:00,-21.0\n")
    write(data / ".hidden" / "skip.csv", "not,nab\n")
    write(data / "README.md", "not data")
    recording = read_recording(data)
    assert list(recording.streams) == ["artificialNoAnomaly/art_flatline.csv",
                                       "realKnownCause/nyc_taxi.csv"]
    assert recording.channels == ("value",)
    taxi = recording.streams["realKnownCause/nyc_taxi.csv"]
    assert taxi.timestamps_ms.tolist() == [parse_timestamp_ms("2014-07-01T00:00:00Z"),
                                           parse_timestamp_ms("2014-07-01T00:30:00Z")]
    assert taxi.values[:, 0].tolist() == [10844, 8127]


def test_nab_rows_whose_timestamp_does_not_advance_are_dropped_and_counted(tmp_path):
    # As in NAB's realAWSCloudwatch files around a daylight-saving change.
    path = write(tmp_path / "nab" / "realX" / "f.csv", "timestamp,value\n" + "\n".join([
        "2014-03-09 01:59:00,1", "2014-03-09 03:00:00,2", "2014-03-09 03:00:00,3",
        "2014-03-09 03:04:00,4", "2014-03-09 02:00:00,5", "2014-03-09 03:05:00,6"]) + "\n")
    recording = read_recording(tmp_path / "nab")
    assert recording.streams["realX/f.csv"].values[:, 0].tolist() == [1, 2, 4, 6]
    assert recording.summary.dropped_rows == 2 and recording.summary.rows == 4
    assert "dropped rows (NAB timestamps not advancing): 2" in recording.summary.describe()
    error = problems_of(path, format="wide-csv")  # anywhere else they are errors
    assert [p.split(": ")[0] for p in error.problems] == [f"{path}:4", f"{path}:6"]


def test_nab_file_that_is_not_timestamp_value_is_an_error(tmp_path):
    write(tmp_path / "d" / "x.csv", f"timestamp,temp\n{iso(0)},1\n")
    error = problems_of(tmp_path / "d")
    assert f"{tmp_path / 'd' / 'x.csv'}:1: not a NAB data file" in str(error)
    assert "received 'timestamp,temp'" in str(error)


def test_auto_detects_the_format_from_name_and_header(tmp_path):
    long = write(tmp_path / "long.csv", f"timestamp,stream,v\n{iso(0)},s,1\n")
    wide = write(tmp_path / "wide.csv", f"timestamp,v\n{iso(0)},1\n")
    jsonl = write(tmp_path / "j.jsonl", json.dumps({"stream": "j", "ts": iso(0), "v": 1}))
    assert list(read_recording([long, wide, jsonl]).streams) == ["s", "wide", "j"]
    other = write(tmp_path / "data.txt", f"timestamp,v\n{iso(0)},1\n")
    assert f"{other}: cannot tell the format from the name" in str(problems_of(other))
    assert list(read_recording(other, format="wide-csv").streams) == ["data"]


def test_files_must_agree_on_channels_and_labels(tmp_path):
    a = write(tmp_path / "a.csv", f"stream,timestamp,cpu,mem\ns,{iso(0)},1,2\n")
    b = write(tmp_path / "b.csv", f"stream,timestamp,cpu,disk\nt,{iso(0)},1,2\n")
    c = write(tmp_path / "c.csv", f"stream,timestamp,mem,cpu,label\nu,{iso(0)},1,2,0\n")
    message = str(problems_of([a, b, c]))
    assert f"{b}: channels differ between files (expected those of {a}: cpu, mem; " \
           "received cpu, disk)" in message
    assert f"{c}: label column differs between files" in message


def test_unknown_format_and_missing_path(tmp_path):
    with pytest.raises(ValueError, match="format: expected one of auto, long-csv"):
        read_recording(tmp_path, format="parquet")
    assert f"{tmp_path / 'nope.csv'}: no such file or directory" in str(
        problems_of(tmp_path / "nope.csv"))


# ------------------------------------------------------------------------------ missing / gaps


def test_filled_forward_fills_and_back_fills_the_start(tmp_path):
    path = write(tmp_path / "r.csv", "\n".join([
        "stream,timestamp,v,w",
        f"a,{iso(0)},,1",
        f"a,{iso(1)},2,",
        f"a,{iso(2)},,",
        f"a,{iso(3)},4,5",
        f"b,{iso(0)},7,8",
    ]) + "\n")
    recording = read_recording(path)
    filled = recording.filled()
    np.testing.assert_array_equal(filled.streams["a"].values,
                                  [[2, 1], [2, 1], [2, 1], [4, 5]])
    np.testing.assert_array_equal(filled.streams["b"].values, [[7, 8]])
    assert recording.summary.missing_values == 4 and recording.summary.filled_values == 0
    assert filled.summary.missing_values == 4 and filled.summary.filled_values == 4
    assert np.isnan(recording.streams["a"].values).sum() == 4  # the original is unchanged
    assert filled.filled().summary.filled_values == 4


def test_gaps_are_counted_not_filled(tmp_path):
    minutes = [0, 1, 2, 3, 13, 14, 15, 19]  # intervals 1,1,1,10,1,1,4 -> median 1
    path = write(tmp_path / "r.csv", "stream,timestamp,v\n" + "".join(
        f"a,{iso(m)},1\n" for m in minutes) + f"b,{iso(0)},1\nb,{iso(3)},1\n")
    recording = read_recording(path)
    assert recording.streams["a"].gaps() == 2 and recording.streams["b"].gaps() == 0
    assert recording.summary.gaps == 2
    assert len(recording.streams["a"]) == len(minutes)


# ------------------------------------------------------------------------------ replay / writing


def small_recording(labels: bool = True) -> Recording:
    def series(name, minutes, values, flags):
        return StreamSeries(name, [T0 + m * MINUTE for m in minutes], values,
                            flags if labels else None)

    return Recording.from_series(("cpu", "mem"), [
        series("z", [0, 2, 3], [[0.1, 1e-300], [np.nan, -2.5], [1 / 3, 7.0]],
               [False, True, False]),
        series("a", [1, 2, 4], [[12345678.9, np.nan], [-0.0, 5e20], [3.0, 4.0]],
               [False, False, True]),
    ])


def test_readings_merge_streams_in_time_order_with_ties_in_stream_order():
    readings = list(small_recording().readings())
    assert [(r.stream, (r.timestamp_ms - T0) // MINUTE) for r in readings] == [
        ("z", 0), ("a", 1), ("z", 2), ("a", 2), ("z", 3), ("a", 4)]
    assert readings[2].label is True and readings[0].label is False
    np.testing.assert_array_equal(readings[3].values, [-0.0, 5e20])
    assert next(small_recording(labels=False).readings()).label is None


@pytest.mark.parametrize("writer, name", [(write_long_csv, "out.csv"),
                                          (write_jsonl, "out.jsonl")])
def test_written_recordings_read_back_equal(tmp_path, writer, name):
    recording = small_recording()
    writer(recording, tmp_path / name)
    again = read_recording(tmp_path / name)
    assert again == recording
    assert again.summary.missing_values == 2
    z = recording.streams["z"]
    nudged = StreamSeries("z", z.timestamps_ms, z.values + 1e-9, z.labels)
    assert again != Recording.from_series(recording.channels, [nudged, recording.streams["a"]])


def test_written_files_look_as_documented(tmp_path):
    recording = small_recording()
    write_long_csv(recording, tmp_path / "out.csv", labels=False)
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[:3] == ["stream,timestamp,cpu,mem",
                         f"z,{iso(0)},0.1,1e-300",
                         f"a,{iso(1)},12345678.9,"]
    assert read_recording(tmp_path / "out.csv").labeled is False
    write_jsonl(recording, tmp_path / "out.jsonl")
    first = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[1])
    assert first == {"stream": "a", "ts": iso(1), "values": {"cpu": 12345678.9, "mem": None},
                     "label": 0}


def test_series_and_recording_validate_what_they_are_given():
    with pytest.raises(ValueError, match="strictly increasing"):
        StreamSeries("a", [2, 1], [[1.0], [2.0]])
    with pytest.raises(ValueError, match="inf"):
        StreamSeries("a", [1, 2], [[1.0], [math.inf]])
    good = StreamSeries("a", [1, 2], [[1.0], [2.0]], [False, True])
    with pytest.raises(ValueError, match="labels on every stream or on none"):
        Recording.from_series(("v",), [good, StreamSeries("b", [1], [[1.0]])])
    with pytest.raises(ValueError, match="expected 2 channels"):
        Recording.from_series(("v", "w"), [good])
    with pytest.raises(ValueError, match="channel names"):
        Recording.from_series(("label",), [good])
    source = np.array([1.0, 2.0])
    copy = StreamSeries("c", [1, 2], source[:, None])
    source[0] = 9.0
    assert copy.values[0, 0] == 1.0
