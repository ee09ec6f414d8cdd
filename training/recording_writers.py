"""Writing recordings back as long CSV or JSON lines, in replay order.

Part of :mod:`training.recordings`, which re-exports :func:`write_long_csv` and
:func:`write_jsonl`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator

import numpy as np

from detector.readings import ReadingMessageWriter, format_timestamp_ms
from training.recording_parsing import gc_paused
from training.recording_series import Recording, replay_order

_WRITE_CHUNK = 100_000  # readings formatted at a time


def _replay_chunks(recording: Recording) -> Iterator[tuple[list[str], list[str], np.ndarray,
                                                           np.ndarray | None]]:
    """Readings in replay order, a chunk at a time, as columns: stream ids, RFC 3339 times,
    values [n, channels] and labels (or None)."""
    series, stream_index, row_index = replay_order(recording)
    starts = np.concatenate([[0], np.cumsum([len(s) for s in series])[:-1]])
    flat = starts[stream_index] + row_index
    names = np.array([s.stream for s in series], dtype=object)
    timestamps = np.concatenate([s.timestamps_ms for s in series])
    values = np.concatenate([s.values for s in series])
    labels = (np.concatenate([s.labels for s in series]).astype(np.int8)
              if recording.labeled else None)
    texts: dict[int, str] = {}
    for begin in range(0, len(flat), _WRITE_CHUNK):
        rows = flat[begin:begin + _WRITE_CHUNK]
        times = timestamps[rows].tolist()
        for ms in set(times).difference(texts):
            texts[ms] = format_timestamp_ms(ms)
        if len(texts) > 4 * _WRITE_CHUNK:
            texts = {ms: texts[ms] for ms in set(times)}
        yield (names[stream_index[begin:begin + _WRITE_CHUNK]].tolist(),
               [texts[ms] for ms in times], values[rows],
               None if labels is None else labels[rows])


def _value_columns(values: np.ndarray, missing: object) -> list[list[object]]:
    """Each column as Python floats, ``missing`` where NaN."""
    columns = []
    for column in values.T:
        nan = np.isnan(column)
        if nan.any():
            cells = column.astype(object)
            cells[nan] = missing
            columns.append(cells.tolist())
        else:
            columns.append(column.tolist())
    return columns


def write_long_csv(recording: Recording, path: str | os.PathLike[str],
                   labels: bool = True) -> None:
    """Write ``recording`` as long CSV in replay order: RFC 3339 UTC timestamps to the ms,
    values to full (repr) precision, missing values as empty cells, and ``label`` 0/1 when
    the recording is labeled and ``labels`` is true."""
    with_labels = labels and recording.labeled
    with open(path, "w", newline="", encoding="utf-8") as handle, gc_paused():
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["stream", "timestamp", *recording.channels]
                        + (["label"] if with_labels else []))
        for streams, times, values, flags in _replay_chunks(recording):
            columns = _value_columns(values, None)  # the csv module writes None as ""
            if with_labels:
                columns.append(flags.tolist())
            writer.writerows(zip(streams, times, *columns, strict=True))


def write_jsonl(recording: Recording, path: str | os.PathLike[str]) -> None:
    """Write ``recording`` as JSON lines in the Kafka message shape, in replay order, by the
    readings' own writer (:class:`detector.readings.ReadingMessageWriter`):
    ``{"stream":...,"ts":"<RFC 3339 UTC>","values":{"<channel>":number|null}}``, plus
    ``"label":0|1`` when the recording is labeled; a missing value is ``null``."""
    writer = ReadingMessageWriter(recording.channels)
    text = writer.text
    with open(path, "w", encoding="utf-8") as handle, gc_paused():
        for streams, times, values, flags in _replay_chunks(recording):
            labels = flags.tolist() if flags is not None else [None] * len(streams)
            handle.writelines(text(stream, when, row, label) + "\n" for stream, when, row, label
                              in zip(streams, times, values.tolist(), labels, strict=True))
