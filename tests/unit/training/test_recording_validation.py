"""Precise validation errors for recorded data: file, line, column, expected and received;
every problem reported, nothing returned."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detector.readings import format_timestamp_ms, parse_timestamp_ms
from tests.unit.special_files import fed_fifo
from tests.unit.training.recording_files import T0, iso, problems_of, write
from training.recording_parsing import fast_timestamps
from training.recordings import read_recording


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
