"""NAB results files with one row per input row, as NAB's own scorer expects.

A few NAB data files repeat an hour of timestamps (daylight-saving artifacts). Reading drops
those rows (:mod:`training.recordings`: a stream's timestamps must increase), so the series
that is scored is shorter than the file. NAB's scorer reads a results file row by row beside
its data file, so the results file gets a row for every input row: the rows that were
scored carry their anomaly score, and a dropped repeat carries 0.

Why 0 and not the score of the row it repeats: the detector never saw that reading (the
worker rejects such a reading as ``duplicate`` or ``out_of_order`` and publishes no score
for it), and copying a score would report a detection twice; NAB charges every reported
detection outside a window, and the onset-based score reports each burst of surprise once.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from detector.readings import parse_timestamp_ms
from training.nab import write_nab_results
from training.recording_parsing import fast_timestamps, parse_cell


def read_input_rows(data_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every row of a NAB ``timestamp,value`` file, repeats included: epoch ms and values.

    The file has already been read and validated by :func:`training.recordings.
    read_recording`; this only reads it again row by row.
    """
    with open(data_file, newline="", encoding="utf-8-sig") as handle:
        rows = [row for row in csv.reader(handle) if row]
    header = [name.strip() for name in rows[0]]
    timestamp_column, value_column = header.index("timestamp"), header.index("value")
    texts = [row[timestamp_column] for row in rows[1:]]
    timestamps = fast_timestamps(texts)
    if timestamps is None:
        timestamps = np.array([parse_timestamp_ms(text) for text in texts], dtype=np.int64)
    values = np.array([parse_cell(row[value_column]) for row in rows[1:]], dtype=np.float64)
    return timestamps, values


def scores_per_input_row(input_timestamps_ms: np.ndarray, scored_timestamps_ms: np.ndarray,
                         anomaly_scores: np.ndarray, where: str) -> np.ndarray:
    """The anomaly score of every input row: a scored row's own, 0 for a dropped repeat.

    A row was scored when its timestamp is later than every row before it (the rule reading
    applies); those rows must be exactly the scored series, else ``where`` changed since.
    """
    timestamps = np.asarray(input_timestamps_ms, dtype=np.int64)
    latest_before = np.maximum.accumulate(np.concatenate([[np.iinfo(np.int64).min],
                                                          timestamps[:-1]]))
    scored = timestamps > latest_before
    if not np.array_equal(timestamps[scored], scored_timestamps_ms):
        raise ValueError(f"{where}: its rows no longer match the series that was scored "
                         f"({int(scored.sum())} advancing rows, {len(scored_timestamps_ms)} "
                         f"scored); was it changed during the evaluation?")
    out = np.zeros(timestamps.size, dtype=np.float64)
    out[scored] = anomaly_scores
    return out


def write_results_per_input_row(out_dir: Path, detector_name: str, key: str, data_file: Path,
                                scored_timestamps_ms: np.ndarray, anomaly_scores: np.ndarray,
                                windows: Sequence[tuple[int, int]]) -> int:
    """Write ``key``'s NAB results file with a row per row of ``data_file``; returns how many
    rows were dropped repeats (written with score 0)."""
    timestamps, values = read_input_rows(data_file)
    scores = scores_per_input_row(timestamps, scored_timestamps_ms, anomaly_scores,
                                  str(data_file))
    write_nab_results(out_dir, detector_name, key, timestamps, values, scores, windows)
    return int(timestamps.size - len(scored_timestamps_ms))
