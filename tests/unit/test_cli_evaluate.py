"""`cellwatch evaluate` through CliRunner: the protocols' reports, labels read as published,
and clear errors for inputs it cannot use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cellwatch.cli import main
from tests.unit.cli_runs import SMALL_MODEL, run, write_skab_experiment


def test_evaluate_skab_protocol_text_report_and_json(tmp_path: Path) -> None:
    write_skab_experiment(tmp_path / "skab" / "valve1" / "0.csv", (400, 480))
    write_skab_experiment(tmp_path / "skab" / "valve1" / "1.csv", (350, 450))
    out, plots = tmp_path / "out", tmp_path / "every-plot"
    args = ["evaluate", str(tmp_path / "skab"), "--protocol", "skab", "--train-readings",
            "200", "--out", str(out)]

    text = run([*args, "--plots", str(plots)], env=SMALL_MODEL)
    assert text.exit_code == 0, text.output
    assert "[2/2] valve1/1.csv" in text.stderr and "[2/2]" not in text.stdout
    lines = text.stdout.splitlines()
    assert lines[0] == ("protocol skab: 2 streams, 1200 readings, 800 evaluated (the first "
                        "200 of each stream trained its model)")
    assert any(line.startswith("point-wise F1 ") and "(flag = likelihood >= 0.999, every "
               "reading a case)" in line for line in lines)
    # 80 + 100 of the 800 evaluated readings are labelled: 180 / (180 + 620 / 2).
    assert any(line.startswith("all-flag baseline F1 0.367 (every reading flagged)")
               for line in lines)
    assert any(line.startswith("window-wise F1 ") for line in lines)
    assert sorted(path.name for path in plots.iterdir()) == [
        ".cellwatch-plots", "valve1_0.csv.png", "valve1_1.csv.png"]
    # A folder of the user's own files is refused before anything is trained.
    mine = tmp_path / "my-pictures"
    mine.mkdir()
    (mine / "valve1_0.csv.png").write_bytes(b"my own picture")
    refused = run([*args, "--plots", str(mine)], env=SMALL_MODEL)
    assert refused.exit_code == 1 and "no earlier evaluation wrote" in refused.output
    assert (mine / "valve1_0.csv.png").read_bytes() == b"my own picture"
    assert "[1/2]" not in refused.stderr

    # Episodes are counted as the worker would end them, with its setting.
    as_json = run([*args, "--json"],
                  env={**SMALL_MODEL, "CELLWATCH_WORKER_ANOMALY_EPISODE_GAP": "5"})
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)  # nothing but the JSON on stdout
    assert report == json.loads((out / "evaluation.json").read_text())
    assert report["episode_gap"] == 5 and "after 5 unflagged" in report["windowwise"]["rule"]
    assert report["all_flag_baseline"]["f1"] == 180 / (180 + 620 / 2)
    assert set(report["per_stream"]) == {"valve1/0.csv", "valve1/1.csv"}
    # Without --plots, the default folder <out>/plots.
    assert len(report["plots"]) == 2 and all(
        Path(path).parent == out / "plots" for path in report["plots"])


def test_evaluate_a_synthetic_recording_counts_the_anomalies_found_by_kind(
        tmp_path: Path) -> None:
    import json
    from collections import Counter

    from training.synthetic import read_labels

    data = tmp_path / "d"
    assert run(["synth", str(data), "--streams", "3", "--channels", "2", "--length", "600",
                "--anomaly-rate", "60", "--seed", "5"]).exit_code == 0
    model = tmp_path / "model"
    trained = run(["train", str(data / "readings.csv"), "--out", str(model)], env=SMALL_MODEL)
    assert trained.exit_code == 0, trained.output
    args = ["evaluate", str(data / "readings.csv"), "--labels", str(data / "labels.json"),
            "--artifact", str(model)]
    report = json.loads(run([*args, "--out", str(tmp_path / "e1"), "--json"]).output)
    labels = read_labels(data / "labels.json")
    by_kind = report["by_kind"]
    assert {kind: c["anomalies"] for kind, c in by_kind.items()} == Counter(
        label.kind for label in labels)
    # Synthetic anomalies lie 20 readings apart, so each is one window of the window-wise
    # figures, which count windows found from the flags on their own.
    assert sum(c["found"] for c in by_kind.values()) == report["windowwise"]["windows_found"]
    text = run([*args, "--out", str(tmp_path / "e2")]).output
    assert ("anomalies found by kind (a flag inside the labelled anomaly): " + ", ".join(
        f"{kind} {c['found']}/{c['anomalies']}" for kind, c in by_kind.items())) in text


def test_evaluate_nab_protocol_refuses_nab_root_and_labels_matching_no_file(
        tmp_path: Path) -> None:
    data = tmp_path / "NAB" / "data" / "realKnownCause" / "x.csv"
    data.parent.mkdir(parents=True)
    data.write_text("timestamp,value\n2014-04-01 00:00:00,1\n")
    labels = tmp_path / "NAB" / "labels" / "combined_windows.json"
    labels.parent.mkdir()
    labels.write_text(json.dumps({"realKnownCause/nyc_taxi.csv": []}))

    root = run(["evaluate", str(tmp_path / "NAB"), "--protocol", "nab", "--labels",
                str(labels), "--out", str(tmp_path / "out")])
    assert root.exit_code == 1
    assert "this is NAB's root folder (it holds data/ and labels/)" in root.output
    assert f"give {tmp_path / 'NAB' / 'data'}" in root.output

    unmatched = run(["evaluate", str(tmp_path / "NAB" / "data"), "--protocol", "nab",
                     "--labels", str(labels), "--out", str(tmp_path / "out")])
    assert unmatched.exit_code == 1
    assert (f"{labels}: none of its 1 keys names one of the 1 files read") in unmatched.output
    assert "'realKnownCause/nyc_taxi.csv'" in unmatched.output
    assert "'realKnownCause/x.csv'" in unmatched.output

    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run(["evaluate", str(empty), "--protocol", "nab", "--labels", str(labels)])
    assert nothing.exit_code == 1
    assert f"{empty}: no .csv files in this directory" in nothing.output


def test_evaluate_skab_protocol_takes_its_labels_from_the_files(tmp_path: Path) -> None:
    labels = tmp_path / "windows.json"
    labels.write_text("{}")
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path), "--protocol", "skab",
                                       "--labels", str(labels)], env={})
    assert result.exit_code == 2
    assert "--protocol skab reads its labels from the files' 'anomaly' column" in result.output
    other = CliRunner().invoke(main, ["evaluate", str(tmp_path), "--protocol", "nab",
                                      "--train-readings", "100"], env={})
    assert other.exit_code == 2
    assert "--train-readings applies to --protocol skab only" in other.output


@pytest.mark.parametrize(("text", "expected"), [
    ("[" * 100_000 + "]" * 100_000, "labels.json: invalid JSON: nested too deeply"),
    ('{"a.csv": [["2024-01-01", ' + "9" * 5000 + "]]}",
     "labels.json: invalid JSON: an integer of more than 4300 digits"),
    ('{"a.csv": [1, 2]}', "labels.json: 'a.csv': window 0: expected [start, end] timestamp"),
    ("{\n  oops\n}", "labels.json:2: invalid JSON: Expecting property name enclosed in double "
                     "quotes at column 3"),
])
def test_evaluate_with_a_hostile_labels_file_names_file_line_and_problem(
        tmp_path: Path, text: str, expected: str) -> None:
    data = tmp_path / "a.csv"
    data.write_text("timestamp,value\n2024-01-01 00:00:00,1.0\n")
    labels = tmp_path / "labels.json"
    labels.write_text(text)
    result = CliRunner().invoke(main, ["evaluate", str(data), "--labels", str(labels),
                                       "--out", str(tmp_path / "eval")], env={})
    assert result.exit_code == 1, result.output
    assert expected in result.output
    assert "Traceback" not in result.output
