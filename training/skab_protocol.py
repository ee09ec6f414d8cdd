"""SKAB's protocol for outlier detection: per file, train on its first readings, judge the rest.

In every file (one stream each), the first ``train_readings`` readings (SKAB: 400) train a
model of that file alone, labeled readings among them included, as SKAB's protocol does.
Then the whole file is scored from its first reading through the streaming step, so the
scorer's per-stream statistics (its learning period, its history) see the training readings
as the worker would; the metrics count only the readings after them, pooled over the files:
point-wise precision, recall and F1 of the flags against SKAB's ``anomaly`` column, the F1
of flagging every test reading (the trivial baseline: SKAB's faults are long, so it scores
high), the ROC AUC of the surprise, and window-wise figures; and the same per file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from training.evaluation import DEFAULT_MAX_PLOTS, EvaluationError, evaluate_scores
from training.prefix_training import options_summary, train_on_prefixes_and_score

SKAB_TRAIN_READINGS = 400


def _check_protocol_input(recording, train_readings: int) -> None:
    """Refuses, before any training, data the protocol cannot judge."""
    if not recording.labeled:
        files = ", ".join(recording.summary.files[:3])
        raise EvaluationError(
            f"{files}: no label column (expected SKAB experiments with an 'anomaly' column, "
            f"received files without one); SKAB's anomaly-free data is not part of its "
            f"outlier-detection protocol: give the experiments' folders (valve1, ...), or "
            f"evaluate a trained model on it with --protocol artifact")
    too_short = {key: len(s) for key, s in recording.streams.items()
                 if len(s) <= train_readings}
    if too_short:
        shown = ", ".join(f"{key} ({rows} readings)" for key, rows in list(too_short.items())[:5])
        raise EvaluationError(
            f"{len(too_short)} of {len(recording.streams)} files have no readings left to "
            f"judge (expected more than --train-readings {train_readings} readings in each, "
            f"received {shown})")


def run_skab_protocol(paths: Sequence[Path], out_dir: Path, options,
                      train_readings: int = SKAB_TRAIN_READINGS, data_format: str = "skab",
                      detector_name: str = "cellwatch",
                      progress: Callable[[int, int, str], None] | None = None,
                      plots_dir: Path | None = None,
                      max_plots: int | None = DEFAULT_MAX_PLOTS, episode_gap: int = 3) -> dict:
    """Runs SKAB's protocol over the files under ``paths`` and returns the report.

    Every file's model starts from the same seeded weights
    (:func:`training.prefix_training.train_on_prefixes_and_score`), so a file scores the
    same alone or among others.

    Raises:
        EvaluationError: unlabeled files, or files with no more than ``train_readings``
            readings; before any training.
        RecordingError: files that cannot be read.
    """
    from training.recordings import read_recording

    started = time.monotonic()
    recording = read_recording(list(paths), data_format)
    _check_protocol_input(recording, train_readings)
    scored, per_file = train_on_prefixes_and_score(
        recording.filled(), lambda rows: train_readings, options, progress)
    for entry in per_file.values():
        entry["train_readings"] = entry.pop("prefix_rows")
        entry["test_readings"] = entry["rows"] - train_readings
    labels = {key: s.labels for key, s in recording.streams.items()}
    report = evaluate_scores(scored, recording.channels, labels, None, out_dir,
                             options.scorer.threshold, detector_name, max_plots=max_plots,
                             plots_dir=plots_dir,
                             test_start={key: train_readings for key in scored},
                             episode_gap=episode_gap)
    report["protocol"] = "skab"
    report["train_readings"] = train_readings
    report["training_options"] = options_summary(options)
    report["files"] = per_file
    report["seconds"] = round(time.monotonic() - started, 1)
    return report
