"""SKAB's protocol end to end on tiny made-up SKAB files (no SKAB data needed)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

import training.prefix_training as prefix_training
from training.evaluation import EvaluationError
from training.skab_protocol import run_skab_protocol
from training.trainer import TrainingOptions

OPTIONS = TrainingOptions(epochs=2, batch_size=8, sequence_length=16, memory_units=4,
                          hidden_units=4, verbose=0)
START = dt.datetime(2020, 3, 9, 10, 0, 0)
HEADER = "datetime;Pressure;Volume Flow RateRMS;anomaly;changepoint"
LENGTH, TRAIN = 700, 200


def write_experiment(path: Path, fault: tuple[int, int], labeled_in_prefix: int = 0,
                     seed: int = 0, length: int = LENGTH) -> np.ndarray:
    """A file of ``length`` readings a second apart; the pressure jumps during ``fault``,
    whose readings are labeled, as are the first ``labeled_in_prefix`` after reading 100.
    Returns the labels."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    pressure = 1.0 + 0.1 * np.sin(t / 20) + 0.02 * rng.normal(size=length)
    flow = 32.0 + 0.5 * np.cos(t / 30) + 0.1 * rng.normal(size=length)
    label = np.zeros(length, dtype=bool)
    label[fault[0]:fault[1]] = True
    pressure[label] += 3.0
    label[100:100 + labeled_in_prefix] = True
    lines = [HEADER] + [
        f"{START + dt.timedelta(seconds=int(i)):%Y-%m-%d %H:%M:%S};{float(pressure[i])!r};"
        f"{float(flow[i])!r};"
        f"{float(label[i])};0.0" for i in range(length)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return label


def test_metrics_count_only_the_readings_after_each_files_training_prefix(tmp_path,
                                                                          monkeypatch):
    labels = {"valve1/0.csv": write_experiment(tmp_path / "skab" / "valve1" / "0.csv",
                                               (500, 600), labeled_in_prefix=10),
              "valve2/0.csv": write_experiment(tmp_path / "skab" / "valve2" / "0.csv",
                                               (450, 550), seed=1)}
    scored_lengths = []

    def recording_lengths(step, streams):
        scored_lengths.extend(len(timestamps) for timestamps, _ in streams.values())
        return real_score_streams(step, streams)

    real_score_streams = prefix_training.score_streams
    monkeypatch.setattr(prefix_training, "score_streams", recording_lengths)
    plots = tmp_path / "pictures"
    report = run_skab_protocol([tmp_path / "skab"], tmp_path / "out", OPTIONS,
                               train_readings=TRAIN, plots_dir=plots, max_plots=None)

    # Each file is scored whole, from its first reading.
    assert scored_lengths == [LENGTH, LENGTH]
    assert report["protocol"] == "skab" and report["train_readings"] == TRAIN
    assert report["evaluated_readings"] == 2 * (LENGTH - TRAIN)
    test_labels = [label[TRAIN:] for label in labels.values()]
    positives = int(sum(label.sum() for label in test_labels))
    negatives = 2 * (LENGTH - TRAIN) - positives
    # The 10 labeled readings inside the first file's prefix are left out.
    assert report["labeled_readings"] == positives == 200
    point = report["pointwise"]
    assert point["true_positives"] + point["false_negatives"] == positives
    assert point["true_positives"] + point["false_positives"] == sum(
        stream["flagged_readings"] for stream in report["per_stream"].values())
    assert report["all_flag_baseline"]["f1"] == pytest.approx(
        positives / (positives + negatives / 2))
    assert 0.0 <= report["roc_auc"]["auc"] <= 1.0
    assert set(report["per_stream"]) == set(labels)
    assert {s["evaluated_readings"] for s in report["per_stream"].values()} == {LENGTH - TRAIN}
    assert report["files"]["valve2/0.csv"]["test_readings"] == LENGTH - TRAIN
    # Every stream is plotted into the folder asked for, and the index links there.
    # (and marked, so a later evaluation may replace them)
    assert sorted(path.name for path in plots.iterdir()) == [
        ".cellwatch-plots", "valve1_0.csv.png", "valve2_0.csv.png"]
    assert "(../pictures/valve1_0.csv.png)" in (tmp_path / "out" / "index.md").read_text()


def _no_training(*_args, **_kwargs):
    raise AssertionError("training started although the inputs were refused")


def test_unlabeled_files_are_refused_before_any_training(tmp_path, monkeypatch):
    free = tmp_path / "anomaly-free" / "anomaly-free.csv"
    free.parent.mkdir()
    free.write_text("datetime;Pressure\n" + "".join(
        f"{START + dt.timedelta(seconds=i):%Y-%m-%d %H:%M:%S};1.0\n" for i in range(500)))
    monkeypatch.setattr("training.trainer.fit", _no_training)
    with pytest.raises(EvaluationError) as info:
        run_skab_protocol([free.parent], tmp_path / "out", OPTIONS)
    assert str(info.value).startswith(
        f"{free}: no label column (expected SKAB experiments with an 'anomaly' column, "
        f"received files without one); SKAB's anomaly-free data is not part of its "
        f"outlier-detection protocol")


def test_files_no_longer_than_the_training_prefix_are_refused(tmp_path, monkeypatch):
    write_experiment(tmp_path / "d" / "long.csv", (500, 600))
    write_experiment(tmp_path / "d" / "short.csv", (300, 350), length=400)
    monkeypatch.setattr("training.trainer.fit", _no_training)
    with pytest.raises(EvaluationError) as info:
        run_skab_protocol([tmp_path / "d"], tmp_path / "out", OPTIONS, train_readings=400)
    assert str(info.value) == ("1 of 2 files have no readings left to judge (expected more "
                               "than --train-readings 400 readings in each, received "
                               "short.csv (400 readings))")
