"""Reading recorded data in every format, precise validation errors, filling, replay, writing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from detector.readings import format_timestamp_ms, parse_timestamp_ms
from tests.unit.special_files import fed_fifo
from training.recording_parsing import fast_timestamps
from training.recordings import (
    Recording,
    RecordingError,
    StreamSeries,
    read_recording,
    write_jsonl,
    write_long_csv,
)

T0 = parse_timestamp_ms("2024-03-01T00:00:00Z")
MINUTE = 60_000


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def iso(minutes: int) -> str:
    return format_timestamp_ms(T0 + minutes * MINUTE)


def problems_of(paths, **kwargs) -> RecordingError:
    with pytest.raises(RecordingError) as info:
        read_recording(paths, **kwargs)
    return info.value


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


# ------------------------------------------------------------------------------ validation


def test_unparsable_timestamp_names_file_line_and_column(tmp_path):
    path = write(tmp_path / "r.csv", f"stream,timestamp,v\na,{iso(0)},1\na,yesterday,2\n")
    message = str(problems_of(path))
    assert f"{path}:3: column 'timestamp': unparsable timestamp (expected epoch milliseconds" \
           in message
    assert "received 'yesterday')" in message


def test_non_numeric_and_infinite_values_are_errors_but_missing_tokens_are_not(tmp_path):
    path = write(tmp_path / "r.csv", "\n".join([
        "stream,timestamp,v,w",
        f"a,{iso(0)},1,",
        f"a,{iso(1)},nan,NaN",
        f"a,{iso(2)},NA,null",
        f"a,{iso(3)},abc,1",
        f"a,{iso(4)},inf,-inf",
    ]) + "\n")
    error = problems_of(path)
    assert error.problems == (
        f"{path}:5: column 'v': not a number (expected a finite number, or an empty cell, nan, "
        "NA or null for a missing value, received 'abc')",
        f"{path}:6: column 'v': not a finite number (expected a finite number, or an empty "
        "cell, nan, NA or null for a missing value, received 'inf')",
        f"{path}:6: column 'w': not a finite number (expected a finite number, or an empty "
        "cell, nan, NA or null for a missing value, received '-inf')",
    )
    assert str(error).startswith("3 problems in the recorded data:\n  ")


def test_duplicate_and_backwards_timestamps_name_both_lines(tmp_path):
    path = write(tmp_path / "r.csv", "\n".join([
        "stream,timestamp,v",
        f"a,{iso(0)},1",
        f"b,{iso(5)},1",
        f"a,{iso(1)},2",
        f"a,{iso(1)},3",
        f"b,{iso(4)},2",
    ]) + "\n")
    assert problems_of(path).problems == (
        f"{path}:5: column 'timestamp': duplicate timestamp in stream 'a' (expected each time "
        f"once per stream, received {iso(1)} again after line 4)",
        f"{path}:6: column 'timestamp': timestamp goes backwards in stream 'b' (expected a time "
        f"after {iso(5)} at line 3, received {iso(4)})",
    )


def test_duplicate_across_files_names_the_other_file(tmp_path):
    a = write(tmp_path / "a.csv", f"stream,timestamp,v\ns,{iso(0)},1\ns,{iso(1)},1\n")
    b = write(tmp_path / "b.csv", f"stream,timestamp,v\ns,{iso(1)},2\n")
    assert problems_of([a, b]).problems == (
        f"{b}:2: column 'timestamp': duplicate timestamp in stream 's' (expected each time "
        f"once per stream, received {iso(1)} again after {a}:3)",)


def test_a_channel_without_any_value_in_a_stream_is_an_error(tmp_path):
    path = write(tmp_path / "r.csv", f"stream,timestamp,v,w\na,{iso(0)},1,\nb,{iso(0)},1,2\n"
                                     f"a,{iso(1)},2,nan\n")
    assert problems_of(path).problems == (
        f"{path}:2: column 'w': no value in stream 'a' (expected at least one number among "
        "its 2 readings, received only missing values)",)


def test_missing_required_columns_list_expected_and_received(tmp_path):
    path = write(tmp_path / "r.csv", f"stream,time,v\na,{iso(0)},1\n")
    assert problems_of(path, format="long-csv").problems == (
        f"{path}:1: missing column 'timestamp' (expected a header with stream, timestamp, one "
        "or more channels and optionally label, received 'stream,time,v')",)
    wide = write(tmp_path / "w.csv", "timestamp,label\n")
    assert f"{wide}:1: no channel columns (expected a header with timestamp, one or more " \
           "channels and optionally label, received 'timestamp,label')" in str(problems_of(wide))


def test_header_problems_duplicates_and_reserved_names(tmp_path):
    path = write(tmp_path / "r.csv", f"stream,timestamp,v,v,ts\na,{iso(0)},1,2,3\n")
    message = str(problems_of(path))
    assert f"{path}:1: column 'v': appears more than once, as columns 3, 4" in message
    assert f"{path}:1: column 'ts': reserved name, cannot be a channel" in message


def test_a_row_with_the_wrong_number_of_fields(tmp_path):
    path = write(tmp_path / "r.csv", f"stream,timestamp,v\na,{iso(0)},1\na,{iso(1)}\n\n"
                                     f"a,{iso(2)},1,9\n")
    assert problems_of(path).problems == (
        f"{path}:3: wrong number of fields (expected 3 as in the header, received 2: "
        f"'a,{iso(1)}')",
        f"{path}:5: wrong number of fields (expected 3 as in the header, received 4: "
        f"'a,{iso(2)},1,9')",
    )


def test_a_label_that_is_not_0_or_1(tmp_path):
    path = write(tmp_path / "r.csv", f"stream,timestamp,v,label\na,{iso(0)},1,2\n"
                                     f"a,{iso(1)},1,yes\n")
    assert problems_of(path).problems == (
        f"{path}:2: column 'label': not a label (expected 0 or 1, 1 meaning anomalous, "
        "received '2')",
        f"{path}:3: column 'label': not a label (expected 0 or 1, 1 meaning anomalous, "
        "received 'yes')",
    )


def test_jsonl_unknown_and_missing_keys(tmp_path):
    path = write(tmp_path / "r.jsonl", "\n".join(json.dumps(x) for x in [
        {"stream": "a", "ts": iso(0), "cpu": 1},
        {"stream": "a", "ts": iso(1), "cpu": 1, "mem": 2},
        {"stream": "a", "ts": iso(2), "values": {"cpu": 1, "disk": 3}},
        {"stream": "a", "ts": iso(3), "values": {}},
        {"ts": iso(4), "cpu": 1},
        {"stream": "a", "ts": iso(5), "cpu": True},
    ]))
    expected = "expected only the keys of line 1: stream, ts, cpu"
    assert problems_of(path).problems == (
        f"{path}:2: key 'mem': unknown key ({expected}; received keys 'stream', 'ts', 'cpu', "
        "'mem')",
        f"{path}:3: key 'values.disk': unknown key ({expected}; received keys 'stream', 'ts', "
        "'values')",
        f"{path}:4: missing key 'values.cpu' (expected the keys of line 1: stream, ts, cpu; "
        "received keys 'stream', 'ts', 'values')",
        f"{path}:5: missing key 'stream' (expected the keys of line 1: stream, ts, cpu; "
        "received keys 'ts', 'cpu')",
        f"{path}:6: key 'cpu': not a number (expected a finite JSON number, or null for a "
        "missing value, received True)",
    )


def test_jsonl_invalid_json_reports_the_decoder_message(tmp_path):
    path = write(tmp_path / "r.jsonl", json.dumps({"stream": "a", "ts": iso(0), "v": 1})
                 + '\n{"stream": "a", "ts": \n[1]\n')
    assert problems_of(path).problems == (
        f"{path}:2: invalid JSON: Expecting value at column 23 (expected one JSON object per "
        "line, received '{\"stream\": \"a\", \"ts\":')",
        f"{path}:3: not a JSON object (expected {{\"stream\": ..., \"ts\": ..., \"values\": "
        "{\"<channel>\": number, ...}} or {\"stream\": ..., \"ts\": ..., \"<channel>\": number, "
        "...}, optionally \"label\", received [1])",
    )


def test_jsonl_hostile_numbers_and_nesting_are_problems_of_their_line(tmp_path):
    # The limits Python's json decoder hits on hostile input (an integer beyond 4300 digits,
    # nesting deeper than the recursion limit) are problems of their line, not tracebacks.
    first = json.dumps({"stream": "a", "ts": iso(0), "v": 1})
    path = write(tmp_path / "r.jsonl", first + "\n"
                 + '{"stream": "a", "ts": "' + iso(1) + '", "v": ' + "9" * 5000 + "}\n"
                 + '{"stream": "a", "ts": "' + iso(2) + '", "v": ' + "[" * 100_000
                 + "]" * 100_000 + "}\n")
    problems = problems_of(path).problems
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}:2: invalid JSON: an integer of more than 4300 digits "
                                  f"(expected one JSON object per line, received ")
    assert problems[1].startswith(f"{path}:3: invalid JSON: nested too deeply")
    assert all(len(problem) < 300 for problem in problems)


def test_csv_values_of_thousands_of_digits_are_quoted_short(tmp_path):
    digits = "9" * 5000
    path = write(tmp_path / "r.csv", f"stream,timestamp,v\na,{iso(0)},1\na,{digits},2\n"
                                     f"a,{iso(2)},{digits}\n")
    problems = problems_of(path).problems
    assert problems[0] == (f"{path}:3: column 'timestamp': unparsable timestamp (expected a "
                           f"time between 1970 and 9999, received a number of more than 4300 "
                           f"digits)")
    assert problems[1].startswith(f"{path}:4: column 'v': not a finite number")
    assert all(len(problem) < 300 for problem in problems)


def test_a_fifo_is_refused_before_anything_is_read(tmp_path):
    good = write(tmp_path / "good.csv", f"stream,timestamp,v\na,{iso(0)},1\n")
    with fed_fifo(tmp_path / "pipe.csv", f"stream,timestamp,v\nb,{iso(0)},1\n") as fifo:
        problems = problems_of([good, fifo]).problems
    assert problems == (f"{fifo}: not a regular file (expected a file or a directory, "
                        f"received a FIFO, socket or device)",)


def test_jsonl_bad_timestamp_and_infinite_value(tmp_path):
    path = write(tmp_path / "r.jsonl", "\n".join([
        json.dumps({"stream": "a", "timestamp": "soon", "v": 1}),
        '{"stream": "a", "timestamp": 5, "v": Infinity}',
    ]))
    message = str(problems_of(path))
    assert f"{path}:1: key 'timestamp': unparsable timestamp (expected" in message
    assert f"{path}:2: key 'v': not a number (expected a finite JSON number, or null for a " \
           "missing value, received inf)" in message


def test_text_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "r.csv"
    before = f"stream,timestamp,v\na,{iso(0)},1\na,{iso(1)},"
    path.write_bytes(before.encode() + b"\xff\n")
    assert problems_of(path).problems == (
        f"{path}:3: not UTF-8 text (expected UTF-8, received byte b'\\xff' at byte offset "
        f"{len(before)})",)


def test_lines_count_blank_lines_and_a_late_header(tmp_path):
    path = write(tmp_path / "r.csv", f"\nstream,timestamp,v,v\na,{iso(0)},1,2\n")
    assert problems_of(path).problems[0].startswith(f"{path}:2: column 'v': appears more")


def test_jsonl_label_and_stream_values(tmp_path):
    path = write(tmp_path / "r.jsonl", "\n".join(json.dumps(x) for x in [
        {"stream": "a", "ts": iso(0), "v": 1, "label": 0},
        {"stream": "a", "ts": iso(1), "v": 1, "label": 2},
        {"stream": "", "ts": iso(2), "v": 1, "label": 0},
        {"stream": "a", "ts": iso(3), "timestamp": iso(3), "v": 1, "label": 0},
        {"stream": "a", "ts": iso(4), "v": 1},
    ]))
    assert problems_of(path).problems == (
        f"{path}:2: key 'label': not a label (expected 0 or 1, 1 meaning anomalous, "
        "received 2)",
        f"{path}:3: key 'stream': expected a non-empty string, received ''",
        f"{path}:4: both 'ts' and 'timestamp' (expected one of them, received both)",
        f"{path}:5: missing key 'label' (expected the keys of line 1: stream, ts, v, label; "
        "received keys 'stream', 'ts', 'v')",
    )


def test_a_directory_is_only_read_as_nab_or_skab(tmp_path):
    write(tmp_path / "d" / "x.csv", f"timestamp,value\n{iso(0)},1\n")
    assert f"{tmp_path / 'd'}: is a directory (expected a long-csv file" in str(
        problems_of(tmp_path / "d", format="long-csv"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty}: no .csv files in this directory" in str(problems_of(empty))


@pytest.mark.parametrize("name, text", [("e.csv", ""), ("e.jsonl", "\n\n"), ("h.csv", "t,v\n")])
def test_empty_files_are_errors(tmp_path, name, text):
    path = write(tmp_path / name, text.replace("t,v", "timestamp,v"))
    message = str(problems_of(path))
    assert message.count(str(path)) == 1
    assert ("empty file" in message) or ("no readings" in message)


def test_all_problems_are_reported_and_nothing_is_returned(tmp_path):
    good = write(tmp_path / "good.csv", f"stream,timestamp,v\na,{iso(0)},1\n")
    bad = write(tmp_path / "bad.csv", "\n".join([
        "stream,timestamp,v",
        f"b,{iso(0)},x",
        "b,never,1",
        f"b,{iso(2)}",
        f"b,{iso(3)},1",
    ]) + "\n")
    error = problems_of([good, bad])
    assert [p.split(": ")[0] for p in error.problems] == [f"{bad}:2", f"{bad}:3", f"{bad}:4"]
    assert error.total == 3


def test_more_than_20_problems_are_summarized_in_line_order(tmp_path):
    rows = [f"a,{iso(i)},bad{i}" for i in range(25)]
    path = write(tmp_path / "r.csv", "stream,timestamp,v\n" + "\n".join(rows) + "\n")
    error = problems_of(path)
    assert error.total == 25 and len(error.problems) == 20
    assert [p.split(": ")[0] for p in error.problems] == [f"{path}:{n}" for n in range(2, 22)]
    assert str(error).endswith("\n  ... and 5 more")
    assert str(error).startswith("25 problems in the recorded data:")


def test_reported_problems_are_the_first_by_line_not_by_discovery(tmp_path):
    rows = [f"a,{iso(0)},1", f"a,{iso(0)},1"] + [f"a,{iso(i)},x" for i in range(1, 251)]
    path = write(tmp_path / "r.csv", "stream,timestamp,v\n" + "\n".join(rows) + "\n")
    error = problems_of(path)  # the duplicate on line 3 is found after the 250 bad values
    assert error.total == 251
    assert [p.split(": ")[0] for p in error.problems] == [f"{path}:{n}" for n in range(3, 23)]
    assert "duplicate timestamp" in error.problems[0]
    # Timestamps are checked before values: 250 bad times on late lines come first.
    rows = [f"a,{iso(i)},x" for i in range(250)] + ["a,never,1"] * 250
    write(path, "stream,timestamp,v\n" + "\n".join(rows) + "\n")
    error = problems_of(path)
    assert error.total == 500
    assert [p.split(": ")[0] for p in error.problems] == [f"{path}:{n}" for n in range(2, 22)]


def test_fast_timestamp_parsing_agrees_with_parse_timestamp_ms():
    rng = np.random.default_rng(3)
    ms = rng.integers(0, 253_402_300_799_999, 5000)
    texts = [format_timestamp_ms(m) for m in ms.tolist()]
    np.testing.assert_array_equal(fast_timestamps(texts), ms)
    for shape in (lambda s: s[:-1], lambda s: s[:19], lambda s: s[:19] + "Z",
                  lambda s: s.replace("T", " ")):
        shaped = [shape(text) for text in texts]
        np.testing.assert_array_equal(fast_timestamps(shaped),
                                      [parse_timestamp_ms(t) for t in shaped])
    # Leap day, invalid dates and other shapes are left to parse_timestamp_ms.
    assert fast_timestamps(["2024-02-29T12:00:00Z"]).tolist() == [
        parse_timestamp_ms("2024-02-29T12:00:00Z")]
    for text in ("2023-02-29T00:00:00Z", "2024-01-01T24:00:00Z", "2024-01-01T00:00:00+01:00",
                 "1969-12-31T23:59:59Z", "2024-01-01X00:00:00Z"):
        assert fast_timestamps([text]) is None


def test_many_rows_with_uniform_and_irregular_timestamps_agree(tmp_path):
    times = [T0 + 1000 * i for i in range(300)]
    canonical = write(tmp_path / "c.csv", "stream,timestamp,v\n" + "".join(
        f"s,{format_timestamp_ms(t)},{i}\n" for i, t in enumerate(times)))
    as_ms = write(tmp_path / "m.csv", "stream,timestamp,v\n" + "".join(
        f"s,{t},{i}\n" for i, t in enumerate(times)))
    assert read_recording(canonical) == read_recording(as_ms)


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
