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

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from training.evaluation import (
    DEFAULT_MAX_PLOTS,
    EvaluationError,
    StreamScores,
    evaluate_scores,
    score_streams,
)

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
                      max_plots: int | None = DEFAULT_MAX_PLOTS) -> dict:
    """Runs SKAB's protocol over the files under ``paths`` and returns the report.

    Every file's model starts from the same seeded weights through one
    :class:`~training.trainer.ModelCache`, as in :func:`training.nab_protocol.
    run_nab_protocol`, so a file scores the same alone or among others.

    Raises:
        EvaluationError: unlabeled files, or files with no more than ``train_readings``
            readings; before any training.
        RecordingError: files that cannot be read.
    """
    from detector.model import step_params
    from detector.step import StreamingStep
    from training.recordings import Recording, StreamSeries, read_recording
    from training.trainer import ModelCache, fit

    started = time.monotonic()
    recording = read_recording(list(paths), data_format)
    _check_protocol_input(recording, train_readings)
    filled = recording.filled()
    scored: dict[str, StreamScores] = {}
    per_file = {}
    cache = ModelCache()
    for index, (key, series) in enumerate(filled.streams.items()):
        file_started = time.monotonic()
        prefix = Recording.from_series(filled.channels, [StreamSeries(
            key, series.timestamps_ms[:train_readings], series.values[:train_readings])])
        fitted = fit(prefix, options, cache=cache)
        step = StreamingStep(step_params(fitted.model), fitted.scaler, options.scorer)
        scored.update(score_streams(step, {key: (series.timestamps_ms, series.values)}))
        per_file[key] = {"rows": len(series), "train_readings": train_readings,
                         "test_readings": len(series) - train_readings,
                         "epochs": fitted.report["epochs_run"],
                         "seconds": round(time.monotonic() - file_started, 2)}
        if progress is not None:
            progress(index + 1, len(filled.streams), key)
    labels = {key: s.labels for key, s in recording.streams.items()}
    report = evaluate_scores(scored, recording.channels, labels, None, out_dir,
                             options.scorer.threshold, detector_name, max_plots=max_plots,
                             plots_dir=plots_dir,
                             test_start={key: train_readings for key in scored})
    report["protocol"] = "skab"
    report["train_readings"] = train_readings
    report["training_options"] = {
        name: value for name, value in dataclasses.asdict(options).items()
        if isinstance(value, bool | int | float | str)}
    report["files"] = per_file
    report["seconds"] = round(time.monotonic() - started, 1)
    return report
