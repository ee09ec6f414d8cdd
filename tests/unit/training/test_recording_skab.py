"""Reading SKAB's files as published: `;`-separated, `datetime`, channels with spaces,
`anomaly` labels written as 0.0/1.0, `changepoint` ignored; one stream per file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detector.readings import parse_timestamp_ms
from training.recordings import RecordingError, read_recording

HEADER = "datetime;Accelerometer1RMS;Volume Flow RateRMS;anomaly;changepoint"


def skab_file(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def rows(count: int, anomalous: set[int] = frozenset(), start_second: int = 0) -> list[str]:
    return [f"2020-03-09 10:14:{start_second + i:02d};0.02{i};32.{i};"
            f"{1.0 if i in anomalous else 0.0};0.0" for i in range(count)]


def problems_of(paths, **kwargs) -> str:
    with pytest.raises(RecordingError) as info:
        read_recording(paths, **kwargs)
    return str(info.value)


def test_each_file_is_a_stream_named_by_its_path_under_the_folder_given(tmp_path):
    skab_file(tmp_path / "skab" / "valve1" / "0.csv", rows(3, anomalous={2}))
    skab_file(tmp_path / "skab" / "valve2" / "0.csv", rows(2, start_second=30))
    for data_format in ("skab", "auto"):  # auto knows SKAB by its header
        recording = read_recording(tmp_path / "skab", data_format)
        assert list(recording.streams) == ["valve1/0.csv", "valve2/0.csv"]
        assert recording.summary.formats == ("skab",)
    # Inner spaces are part of the name; changepoint is neither a channel nor the label.
    assert recording.channels == ("Accelerometer1RMS", "Volume Flow RateRMS")
    valve1 = recording.streams["valve1/0.csv"]
    assert valve1.labels.tolist() == [False, False, True]
    np.testing.assert_array_equal(valve1.values, [[0.020, 32.0], [0.021, 32.1], [0.022, 32.2]])
    assert valve1.timestamps_ms[0] == parse_timestamp_ms("2020-03-09T10:14:00Z")
    assert np.diff(valve1.timestamps_ms).tolist() == [1000, 1000]


def test_a_file_given_alone_is_named_by_its_file_name(tmp_path):
    path = skab_file(tmp_path / "valve1" / "7.csv", rows(2))
    assert list(read_recording(path).streams) == ["7.csv"]
    assert list(read_recording(path, "skab").streams) == ["7.csv"]


def test_labels_may_be_integers_and_anything_else_names_file_line_and_column(tmp_path):
    fine = skab_file(tmp_path / "ints.csv", [row.replace(";0.0;0.0", ";0;0") for row in rows(2)])
    assert read_recording(fine).streams["ints.csv"].labels.tolist() == [False, False]
    bad = skab_file(tmp_path / "bad.csv", [
        "2020-03-09 10:14:00;0.02;32.0;0.5;0.0",
        "2020-03-09 10:14:01;0.02;32.0;;0.0",
        "2020-03-09 25:14:02;0.02;32.0;0.0;0.0",
        "2020-03-09 10:14:03;0.02;fast;0.0;0.0",
        "2020-03-09 10:14:04;0.02;32.0",
    ])
    message = problems_of(bad)
    assert (f"{bad}:2: column 'anomaly': not a label (expected 0 or 1 (0.0 and 1.0 too), "
            f"1 meaning anomalous, received '0.5')") in message
    assert f"{bad}:3: column 'anomaly': not a label" in message  # a missing label too
    assert f"{bad}:4: column 'datetime': unparsable timestamp" in message
    assert f"{bad}:5: column 'Volume Flow RateRMS': not a number" in message
    assert "received 'fast'" in message
    assert (f"{bad}:6: wrong number of fields (expected 5 as in the header, received 3: "
            f"'2020-03-09 10:14:04;0.02;32.0')") in message


def test_a_comma_separated_file_read_as_skab_says_skab_uses_semicolons(tmp_path):
    path = skab_file(tmp_path / "c.csv", ["2020-03-09 10:14:00,1.0"], header="datetime,value")
    message = problems_of(path, format="skab")
    assert f"{path}:1: missing column 'datetime' (this header has no ';'" in message
    assert "received 'datetime,value'" in message


def test_anomaly_free_data_is_unlabeled_and_named_when_mixed_with_experiments(tmp_path):
    free = skab_file(tmp_path / "skab" / "anomaly-free" / "anomaly-free.csv",
                     [row.rsplit(";", 2)[0] for row in rows(3)],
                     header="datetime;Accelerometer1RMS;Volume Flow RateRMS")
    assert not read_recording(free.parent).labeled
    for name in ("0.csv", "1.csv"):
        skab_file(tmp_path / "skab" / "valve1" / name, rows(2))
    message = problems_of(tmp_path / "skab")
    # The one unlabeled file is reported, not each experiment.
    assert message.startswith("1 problem in the recorded data")
    assert (f"{free}: label column differs between files (expected a label column "
            f"'anomaly', as in {tmp_path / 'skab' / 'valve1' / '0.csv'}, received none); "
            f"SKAB's anomaly-free data has no 'anomaly' column") in message


def test_two_folders_with_the_same_file_names_are_refused_not_joined(tmp_path):
    first = skab_file(tmp_path / "valve1" / "0.csv", rows(2))
    second = skab_file(tmp_path / "valve2" / "0.csv", rows(2, start_second=30))
    message = problems_of([tmp_path / "valve1", tmp_path / "valve2"], format="skab")
    assert (f"{second}: stream id '0.csv' is also that of {first} (expected one stream per "
            f"SKAB file") in message
