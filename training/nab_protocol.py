"""NAB's protocol: per file, train only on its probationary period, then stream it all.

The inputs are checked before any training (an evaluation of NAB's 35 labeled files takes
minutes): the folder must be NAB's ``data/`` folder, not NAB's root, and the labels must name
some of its files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from training.evaluation import (
    DEFAULT_MAX_PLOTS,
    EvaluationError,
    Windows,
    check_label_keys,
    evaluate_scores,
    labels_from_windows,
)
from training.prefix_training import options_summary, train_on_prefixes_and_score


def refuse_nab_root(data_dir: Path) -> None:
    """NAB's root folder holds ``data/`` and ``labels/``; read from there, every file's key
    would start with ``data/`` and match no window, so say which folder to give instead."""
    if (data_dir / "data").is_dir() and (data_dir / "labels").is_dir():
        raise EvaluationError(
            f"{data_dir}: this is NAB's root folder (it holds data/ and labels/); expected "
            f"NAB's data folder: give {data_dir / 'data'} (with --labels "
            f"{data_dir / 'labels' / 'combined_windows.json'})")


def run_nab_protocol(data_dir: Path, windows: Windows, out_dir: Path, options,
                     detector_name: str = "cellwatch",
                     progress: Callable[[int, int, str], None] | None = None,
                     labels_name: str = "the labels", plots_dir: Path | None = None,
                     max_plots: int | None = DEFAULT_MAX_PLOTS, episode_gap: int = 3) -> dict:
    """NAB's protocol: per file, train only on its probationary period, then stream it all.

    One set of hyperparameters (``options``) serves every file; the normalization, the
    model and the early stopping see nothing after the probationary period, and the scorer
    learns online as the worker's does. Results are scored with NAB's rules over the corpus,
    from each reading's onset (:attr:`StreamScores.anomaly_score`), and written as NAB's
    results files with a row per input row (:mod:`training.nab_results`).

    Every file's model is trained from the same seeded initial weights through one
    :class:`~training.trainer.ModelCache`, so files stay independent (a file scores the same
    alone or after others) while the model is built and traced once. Cost, measured on 2
    shared cores: about 2 s of training per file plus the streaming step, one stream at a
    time (on the 2-core Intel VM of 2026-12-01 about 0.54 ms per reading); the 35 files of
    NAB's labeled corpus here take about 2.7 minutes on that VM (3.1 before the time steps
    were prepared in chunks, 110 s on the faster AMD machine of 2026-11-30 before that).

    Raises:
        EvaluationError: ``data_dir`` is NAB's root folder, or no key of ``windows`` (named
            ``labels_name`` in the message) is a file of ``data_dir``; before any training.
        RecordingError: the folder holds no CSV files, or files that cannot be read.
    """
    from training.nab import probation_rows
    from training.recordings import read_recording

    started = time.monotonic()
    refuse_nab_root(data_dir)
    recording = read_recording([data_dir], "nab").filled()
    check_label_keys(windows, list(recording.streams), labels_name)
    scored, per_file = train_on_prefixes_and_score(recording, probation_rows, options, progress)
    for entry in per_file.values():
        entry["probation_rows"] = entry.pop("prefix_rows")
    labels = {key: labels_from_windows(s.timestamps_ms, windows.get(key, ()))
              for key, s in recording.streams.items()}
    report = evaluate_scores(scored, recording.channels, labels, windows, out_dir,
                             options.scorer.threshold, detector_name, max_plots=max_plots,
                             plots_dir=plots_dir, nab_data_dir=data_dir,
                             episode_gap=episode_gap)
    report["protocol"] = "nab"
    report["training_options"] = options_summary(options)
    report["dropped_rows"] = recording.summary.dropped_rows
    report["files"] = per_file
    report["seconds"] = round(time.monotonic() - started, 1)
    return report
