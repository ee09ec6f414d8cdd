"""NAB's protocol end to end on a tiny made-up corpus (no NAB data needed)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from training.evaluation import EvaluationError
from training.nab_protocol import run_nab_protocol
from training.recordings import RecordingError
from training.trainer import TrainingOptions

OPTIONS = TrainingOptions(epochs=2, batch_size=8, sequence_length=16, memory_units=4,
                          hidden_units=4, verbose=0)
START = dt.datetime(2014, 4, 1)


def _write(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["timestamp,value"] + [
        f"{(START + dt.timedelta(minutes=5 * i)):%Y-%m-%d %H:%M:%S},{v:.4f}"
        for i, v in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")


def _ms(row: int) -> int:
    return int((START + dt.timedelta(minutes=5 * row)).replace(tzinfo=dt.UTC).timestamp() * 1000)


def test_files_are_scored_independently_of_the_files_before_them(tmp_path):
    """Through the shared model cache, a file scores exactly as when it is the only one:
    each file's model starts from the same seeded weights."""
    rng = np.random.default_rng(3)
    t = np.arange(1000)
    quiet = 10 + np.sin(2 * np.pi * t / 288) + 0.1 * rng.normal(size=t.size)
    spiky = quiet.copy()
    spiky[700:705] += 8.0
    _write(tmp_path / "both" / "cat" / "a.csv", quiet)
    _write(tmp_path / "both" / "cat" / "b.csv", spiky)
    _write(tmp_path / "alone" / "cat" / "b.csv", spiky)
    windows = {"cat/a.csv": [], "cat/b.csv": [(_ms(680), _ms(730))]}

    both = run_nab_protocol(tmp_path / "both", windows, tmp_path / "out-both", OPTIONS)
    alone = run_nab_protocol(tmp_path / "alone", {"cat/b.csv": windows["cat/b.csv"]},
                             tmp_path / "out-alone", OPTIONS)
    result = Path("results/cellwatch/cat/cellwatch_b.csv")
    assert (tmp_path / "out-both" / result).read_text() == (
        tmp_path / "out-alone" / result).read_text()
    assert alone["files"]["cat/b.csv"]["epochs"] == both["files"]["cat/b.csv"]["epochs"]
    assert both["protocol"] == "nab" and set(both["files"]) == {"cat/a.csv", "cat/b.csv"}
    assert both["files"]["cat/b.csv"]["probation_rows"] == 150
    # The spike is far outside the quiet level: its onset finds the window.
    assert both["nab"]["standard"]["tp_windows"] == 1


def _no_training(*_args, **_kwargs):
    raise AssertionError("training started although the inputs were refused")


def test_results_files_have_a_row_per_input_row_and_a_repeat_scores_zero(tmp_path):
    """NAB's scorer reads a results file row by row beside its data file: a dropped
    daylight-saving repeat still gets its row, with score 0."""
    rng = np.random.default_rng(5)
    stamps = [f"{START + dt.timedelta(minutes=5 * i):%Y-%m-%d %H:%M:%S}" for i in range(1000)]
    repeated = stamps[700:706]  # half an hour that comes again, as when clocks go back
    rows = stamps[:706] + repeated + stamps[706:]
    values = 10 + rng.normal(size=len(rows))
    values[702] += 8.0  # a spike on a row whose time comes again: its score is not copied
    data = tmp_path / "data" / "cat" / "dst.csv"
    data.parent.mkdir(parents=True)
    data.write_text("timestamp,value\n" + "".join(
        f"{stamp},{value!r}\n" for stamp, value in zip(rows, values.tolist(), strict=True)))

    report = run_nab_protocol(tmp_path / "data", {"cat/dst.csv": []}, tmp_path / "out",
                              OPTIONS)
    lines = (tmp_path / "out" / "results" / "cellwatch" / "cat" /
             "cellwatch_dst.csv").read_text().splitlines()
    assert lines[0] == "timestamp,value,anomaly_score,label"
    written = [line.split(",") for line in lines[1:]]
    assert [row[0] for row in written] == rows
    assert [float(row[1]) for row in written] == values.tolist()
    assert float(written[702][2]) > 0.0 and written[708][0] == written[702][0]
    assert all(float(row[2]) == 0.0 for row in written[706:712])
    assert report["nab_results"]["repeated_rows_scored_zero"] == 6
    assert report["dropped_rows"] == 6


def test_nab_root_folder_is_refused_before_any_training(tmp_path, monkeypatch):
    _write(tmp_path / "NAB" / "data" / "cat" / "a.csv", np.ones(200))
    (tmp_path / "NAB" / "labels").mkdir()
    monkeypatch.setattr("training.trainer.fit", _no_training)
    with pytest.raises(EvaluationError) as info:
        run_nab_protocol(tmp_path / "NAB", {"cat/a.csv": []}, tmp_path / "out", OPTIONS)
    assert str(info.value) == (
        f"{tmp_path / 'NAB'}: this is NAB's root folder (it holds data/ and labels/); "
        f"expected NAB's data folder: give {tmp_path / 'NAB' / 'data'} (with --labels "
        f"{tmp_path / 'NAB' / 'labels' / 'combined_windows.json'})")


def test_labels_that_name_none_of_the_files_are_refused_before_any_training(tmp_path,
                                                                            monkeypatch):
    _write(tmp_path / "d" / "cat" / "a.csv", np.ones(200))
    _write(tmp_path / "d" / "cat" / "b.csv", np.ones(200))
    monkeypatch.setattr("training.trainer.fit", _no_training)
    with pytest.raises(EvaluationError) as info:
        run_nab_protocol(tmp_path / "d", {"realKnownCause/nyc_taxi.csv": []},
                         tmp_path / "out", OPTIONS, labels_name="windows.json")
    message = str(info.value)
    assert message.startswith("windows.json: none of its 1 keys names one of the 2 files read")
    assert "received keys such as 'realKnownCause/nyc_taxi.csv' and files such as " \
           "'cat/a.csv'" in message


def test_a_folder_without_csv_files_is_refused(tmp_path, monkeypatch):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    monkeypatch.setattr("training.trainer.fit", _no_training)
    with pytest.raises(RecordingError, match=r"no \.csv files in this directory"):
        run_nab_protocol(tmp_path / "empty", {}, tmp_path / "out", OPTIONS)
