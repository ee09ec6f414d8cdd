"""Recorded sensor data: read it in the formats users have, validate it, write it back.

A :class:`Recording` holds one or more streams (one sensor or cell each) that share the same
channel names. Each stream is a :class:`StreamSeries`: strictly increasing epoch-millisecond
timestamps, a ``float64 [n, channels]`` value matrix with NaN for missing values, and, when
the data carries a ``label`` column, a boolean anomaly label per reading.

Formats (``read_recording(paths, format=...)``)
    ``long-csv``  header ``stream,timestamp,<channel>...[,label]`` in any column order.
    ``wide-csv``  one stream per file, header ``timestamp,<channel>...[,label]``; the stream id
                  is the file's stem (two files with the same stem are one stream).
    ``jsonl``     one JSON object per line, flat ``{"stream": "a", "ts": ..., "cpu": 1.5}``
                  (``timestamp`` may replace ``ts``) or the Kafka message shape
                  ``{"stream": "a", "ts": ..., "values": {"cpu": 1.5}}``, optionally with
                  ``"label": 0 | 1``. Every line must have the keys of the file's first object.
    ``nab``       a directory, searched recursively, of NAB ``timestamp,value`` CSV files; the
                  stream id is the path relative to the directory with forward slashes
                  (``realKnownCause/nyc_taxi.csv``, the keys of NAB's combined_windows.json),
                  the single channel is ``value``. NAB's corpus has a few rows whose
                  timestamps repeat or step back (daylight-saving artifacts); under ``nab``
                  those rows are dropped and counted in ``summary.dropped_rows`` instead of
                  failing. Every other format treats them as errors.
    ``skab``      SKAB's files as published (:mod:`training.recording_skab`): ``;``-separated,
                  ``datetime``, the channels, ``anomaly`` (the label, ``0.0``/``1.0``) and
                  ``changepoint`` (ignored). A file or a directory searched recursively; each
                  file is one stream named by its path relative to the directory given
                  (``valve1/0.csv``), or by its name when the file is given. A file without
                  ``anomaly`` (SKAB's ``anomaly-free.csv``) is unlabeled.
    ``auto``      a file whose header starts ``datetime;`` is ``skab``; any other file in a
                  directory is ``nab``; ``.jsonl``/``.ndjson`` is ``jsonl``; a ``.csv`` whose
                  header has a ``stream`` column is ``long-csv``, any other ``.csv`` ``wide-csv``.

Several paths may be read together (each resolved on its own under ``auto``); they must
agree on the channel names (the first file's order is used) and on having a label column.
A stream may continue from one file into the next, except in ``skab``, where two files
giving the same stream id is an error.

Timestamps are parsed by :func:`detector.readings.parse_timestamp_ms` (epoch milliseconds or
ISO 8601 / RFC 3339 text; no offset means UTC). Within a stream they must strictly increase.

Validation
    Reading never returns partial data: every problem found is collected (reading goes on
    after the first) and a :class:`RecordingError` lists up to 20 of them, in file and line
    order, as ``file:line: column 'x': problem (expected ..., received ...)`` (``key 'x'``
    in JSON lines) and then ``... and N more``. Lines are physical lines counted from 1, the
    CSV header being line 1.

Missing values
    An empty cell, ``nan`` (any case), ``NA`` or ``null`` (JSON ``null`` too) is a missing
    value: it is allowed, kept as NaN and counted in ``summary.missing_values``. ``inf`` and
    any other text are errors, and so is a channel with no value at all in a stream.
    :meth:`Recording.filled` forward-fills missing values per stream and channel (a stream's
    leading missing values are back-filled from its first value) and counts what it filled
    in ``summary.filled_values``; nothing else ever invents values.

Gaps in time
    The models treat a stream's readings as a sequence, so gaps in time are neither
    interpolated nor filled: they are only counted. ``summary.gaps`` is the number of
    intervals longer than 3 times their stream's median interval.

Replay and writing
    :meth:`Recording.readings` yields every reading of every stream in timestamp order (ties
    in stream order). :func:`write_long_csv` and :func:`write_jsonl` write in that order, with
    RFC 3339 UTC timestamps to the millisecond and values to full precision; reading the
    file back gives an equal recording.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from detector.readings import format_timestamp_ms
from training.recording_csv import read_csv
from training.recording_jsonl import read_jsonl
from training.recording_parsing import (
    MISSING_TOKENS,
    FileData,
    Part,
    Problems,
    Source,
    gc_paused,
)
from training.recording_series import (
    GAP_FACTOR,
    RESERVED_NAMES,
    IngestSummary,
    Reading,
    Recording,
    RecordingError,
    StreamSeries,
)
from training.recording_skab import SKAB_LABEL_COLUMN, looks_like_skab
from training.recording_writers import write_jsonl, write_long_csv

__all__ = [
    "FORMATS", "GAP_FACTOR", "MISSING_TOKENS", "RESERVED_NAMES", "IngestSummary", "Reading",
    "Recording", "RecordingError", "StreamSeries", "read_recording", "write_jsonl",
    "write_long_csv",
]

FORMATS = ("auto", "long-csv", "wide-csv", "jsonl", "nab", "skab")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")


def _plan(paths: Sequence[Path], format: str, problems: Problems,
          cache: dict[str, int]) -> list[tuple[Source, str, str | None]]:
    """The files to read, in order: (source, kind, stream id for one-stream files).

    ``kind`` is long-csv, wide-csv, nab, skab, jsonl, csv (long or wide, by its header) or
    unreadable (a problem was reported).
    """
    jobs: list[tuple[Source, str, str | None]] = []

    def add(path: Path, kind: str, stream_id: str | None = None,
            problem: str | None = None) -> None:
        source = Source(path, len(jobs), problems, cache)
        if problem:
            source.problem(None, None, problem)
        jobs.append((source, kind, stream_id))

    for path in paths:
        if not path.exists():
            add(path, "unreadable", problem="no such file or directory")
        elif not path.is_dir() and not path.is_file():
            # A FIFO or device would block the read, or never end it; refused before any
            # file is read.
            add(path, "unreadable", problem="not a regular file (expected a file or a "
                                            "directory, received a FIFO, socket or device)")
        elif path.is_dir():
            if format not in ("auto", "nab", "skab"):
                add(path, "unreadable", problem=f"is a directory (expected a {format} file; "
                                                f"a directory is read as nab or skab)")
                continue
            found = sorted(
                (file.relative_to(path).as_posix(), file) for file in path.rglob("*.csv")
                if file.is_file()
                and not any(part.startswith(".") for part in file.relative_to(path).parts))
            if not found:
                expected = {"nab": "NAB data: timestamp,value CSV files",
                            "skab": "SKAB data: ;-separated CSV files"}.get(
                    format, "NAB data or SKAB files")
                add(path, "unreadable", problem=f"no .csv files in this directory (expected "
                                                f"{expected})")
            for relative, file in found:
                kind = format if format != "auto" else (
                    "skab" if looks_like_skab(file) else "nab")
                add(file, kind, relative)
        elif format == "nab":
            add(path, "unreadable", problem="nab expects a directory of NAB data files, "
                                            "received a file (read one timestamp,value file "
                                            "as wide-csv)")
        elif format == "skab":
            add(path, "skab", path.name)
        elif format != "auto":
            add(path, format, path.stem)
        elif path.suffix.lower() in _JSONL_SUFFIXES:
            add(path, "jsonl")
        elif path.suffix.lower() == ".csv" and looks_like_skab(path):
            add(path, "skab", path.name)
        elif path.suffix.lower() == ".csv":
            add(path, "csv", path.stem)
        else:
            add(path, "unreadable", problem=f"cannot tell the format from the name (expected "
                                            f"a directory, .csv, .jsonl or .ndjson, received "
                                            f"{path.name!r}; name a format explicitly)")
    return _refuse_shared_skab_streams(jobs)


def _refuse_shared_skab_streams(jobs: list[tuple[Source, str, str | None]]
                                ) -> list[tuple[Source, str, str | None]]:
    """A SKAB file is one whole experiment: two files with one stream id (``0.csv`` of two
    directories given side by side) would be joined into one stream, so that is an error."""
    first_file: dict[str | None, Source] = {}
    checked = []
    for source, kind, stream_id in jobs:
        if kind == "skab":
            earlier = first_file.setdefault(stream_id, source)
            if earlier is not source:
                source.problem(None, None, f"stream id {stream_id!r} is also that of "
                                           f"{earlier.name} (expected one stream per SKAB "
                                           f"file, named by its path relative to the "
                                           f"directory given: give the directories' common "
                                           f"parent instead)")
                kind = "unreadable"
        checked.append((source, kind, stream_id))
    return checked


def read_recording(paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
                   format: str = "auto") -> Recording:
    """Read, validate and combine recorded data; see the module docstring for the formats.

    Raises RecordingError listing every problem found (up to 20, then a count); never
    returns partial data.
    """
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, received {format!r}")
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    paths = [Path(path) for path in paths]
    if not paths:
        raise ValueError("paths: expected at least one file or directory, received none")
    problems = Problems()
    cache: dict[str, int] = {}
    jobs = _plan(paths, format, problems, cache)
    files: list[FileData] = []
    with gc_paused():
        for source, kind, stream_id in jobs:
            if kind == "unreadable":
                continue
            data = read_jsonl(source) if kind == "jsonl" else read_csv(source, kind, stream_id)
            if data is not None:
                files.append(data)
    cache.clear()
    if not files:
        problems.raise_if_any()
        raise RecordingError(["no readings found"])
    first = files[0]
    channels = first.channels
    labeled_reference = _labeled_reference(
        [data for data in files if set(data.channels) == set(channels)])
    usable: list[FileData] = []
    for data in files:
        if set(data.channels) != set(channels):
            data.source.problem(None, None, f"channels differ between files (expected those "
                                            f"of {first.source.name}: {', '.join(channels)}; "
                                            f"received {', '.join(data.channels)})")
        elif data.has_labels != labeled_reference.has_labels:
            data.source.problem(None, None, _label_mismatch(labeled_reference, data))
        else:
            usable.append(data)
    checked, dropped = _merge_streams(usable, channels)
    problems.raise_if_any()
    series = [StreamSeries(stream, timestamps, values, labels)
              for stream, timestamps, values, labels in checked]
    return Recording.from_series(channels, series,
                                 files=[source.name for source, kind, _ in jobs
                                        if kind != "unreadable"], dropped_rows=dropped,
                                 formats=list(dict.fromkeys(
                                     data.kind for data in files)))


def _labeled_reference(files: list[FileData]) -> FileData:
    """The file whose having a label column or not the others must match: the first of the
    majority (ties: the first file), so that SKAB's one unlabeled anomaly-free file among
    many labeled experiments is the one reported, not every experiment."""
    labeled = [data for data in files if data.has_labels]
    unlabeled = [data for data in files if not data.has_labels]
    if len(labeled) == len(unlabeled):
        return files[0]
    return max(labeled, unlabeled, key=len)[0]


def _label_mismatch(first: FileData, data: FileData) -> str:
    expected = (f"a label column {first.label_key!r}" if first.has_labels
                else "no label column")
    received = f"{data.label_key!r}" if data.has_labels else "none"
    text = (f"label column differs between files (expected {expected}, as in "
            f"{first.source.name}, received {received})")
    if data.label_key == SKAB_LABEL_COLUMN or first.label_key == SKAB_LABEL_COLUMN:
        text += (f"; SKAB's anomaly-free data has no {SKAB_LABEL_COLUMN!r} column: read it on "
                 f"its own, and give the experiments' directories (valve1, ...) without it")
    return text


def _merge_streams(files: list[FileData], channels: tuple[str, ...]
                   ) -> tuple[list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]], int]:
    """Each stream's parts from every file joined, checked for order and empty channels;
    also the number of (NAB) rows dropped for not advancing in time."""
    dropped = 0
    pieces: dict[str, list[tuple[FileData, Part]]] = {}
    for data in files:
        for stream, parts in data.parts.items():
            pieces.setdefault(stream, []).extend((data, part) for part in parts)
    merged = []
    for stream, items in pieces.items():
        orders = {id(data): [data.channels.index(name) for name in channels]
                  for data, _ in items}
        owners = [data for data, _ in items]
        owner = np.repeat(np.arange(len(items)), [len(part.lines) for _, part in items])
        lines = np.concatenate([part.lines for _, part in items])
        if len(lines) == 0:
            continue  # every row had a bad timestamp, already reported
        timestamps = np.concatenate([part.timestamps_ms for _, part in items])
        values = np.concatenate([part.values[:, orders[id(data)]] for data, part in items])
        bad = np.any([part.bad_channels[orders[id(data)]] for data, part in items], axis=0)
        labels = (None if items[0][1].labels is None
                  else np.concatenate([part.labels for _, part in items]))
        if all(data.drops_disorder for data in owners):
            latest = np.maximum.accumulate(timestamps)
            keep = np.concatenate([[True], timestamps[1:] > latest[:-1]])
            if not keep.all():
                dropped += int(np.count_nonzero(~keep))
                owner, lines, timestamps, values = (
                    owner[keep], lines[keep], timestamps[keep], values[keep])
                labels = None if labels is None else labels[keep]

        for i in np.flatnonzero(np.diff(timestamps) <= 0).tolist():
            before, data = owners[owner[i]], owners[owner[i + 1]]
            before_line, line = int(lines[i]), int(lines[i + 1])
            where = (f"line {before_line}" if before.source is data.source
                     else f"{before.source.name}:{before_line}")
            previous, current = int(timestamps[i]), int(timestamps[i + 1])
            if previous == current:
                text = (f"duplicate timestamp in stream {stream!r} (expected each time once per "
                        f"stream, received {format_timestamp_ms(current)} again after {where})")
            else:
                text = (f"timestamp goes backwards in stream {stream!r} (expected a time after "
                        f"{format_timestamp_ms(previous)} at {where}, received "
                        f"{format_timestamp_ms(current)})")
            data.source.problem(line, f"{data.field_word} {data.timestamp_key!r}", text)
        empty = np.all(np.isnan(values), axis=0) & ~bad
        for j in np.flatnonzero(empty).tolist():
            data = owners[0]
            prefix = "values." if data.nested else ""
            data.source.problem(int(lines[0]), f"{data.field_word} {prefix + channels[j]!r}",
                                f"no value in stream {stream!r} (expected at least one number "
                                f"among its {len(lines)} readings, received only missing "
                                f"values)")
        merged.append((stream, timestamps, values, labels))
    return merged, dropped

