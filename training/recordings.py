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
    ``auto``      a directory is ``nab``; ``.jsonl``/``.ndjson`` is ``jsonl``; a ``.csv`` whose
                  header has a ``stream`` column is ``long-csv``, any other ``.csv`` ``wide-csv``.

Several paths may be read together (each resolved on its own under ``auto``); they must
agree on the channel names (the first file's order is used) and on having a label column.
A stream may continue from one file into the next.

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

import csv
import dataclasses
import gc
import heapq
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from detector.readings import format_timestamp_ms, parse_timestamp_ms

FORMATS = ("auto", "long-csv", "wide-csv", "jsonl", "nab")
# Text that means "no value here", compared after stripping and lower-casing.
MISSING_TOKENS = frozenset({"", "nan", "na", "null"})
# Column / key names with a meaning of their own; never channel names.
RESERVED_NAMES = frozenset({"stream", "timestamp", "ts", "label", "values"})
MAX_REPORTED_PROBLEMS = 20
GAP_FACTOR = 3.0

_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_MISSING_HINT = "a finite number, or an empty cell, nan, NA or null for a missing value"
# Rows buffered as Python objects before they are converted to NumPy arrays.
_FLUSH_ROWS = 200_000
_TIMESTAMP_CACHE_SIZE = 200_000


# --------------------------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------------------------


def _frozen_array(value: object, dtype: type, ndim: int, what: str) -> np.ndarray:
    array = np.array(value, dtype=dtype, copy=True)
    if array.ndim != ndim:
        raise ValueError(f"{what}: expected a {ndim}-D array, received shape {array.shape}")
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class StreamSeries:
    """One stream's readings; arrays are copied on construction and read-only.

    ``timestamps_ms`` int64 [n], strictly increasing; ``values`` float64 [n, channels], NaN
    where a value is missing; ``labels`` bool [n] (True = anomalous) or None when unlabeled.
    Equality compares the data (NaN equals NaN).
    """

    stream: str
    timestamps_ms: np.ndarray
    values: np.ndarray
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.stream, str) or not self.stream:
            raise ValueError(f"stream: expected a non-empty string, received {self.stream!r}")
        where = f"stream {self.stream!r}"
        timestamps = _frozen_array(self.timestamps_ms, np.int64, 1, f"{where} timestamps_ms")
        values = _frozen_array(self.values, np.float64, 2, f"{where} values")
        if len(timestamps) == 0:
            raise ValueError(f"{where}: expected at least one reading, received none")
        if len(values) != len(timestamps):
            raise ValueError(f"{where}: expected {len(timestamps)} rows of values (one per "
                             f"timestamp), received {len(values)}")
        if np.any(np.diff(timestamps) <= 0):
            raise ValueError(f"{where}: expected strictly increasing timestamps")
        if np.any(np.isinf(values)):
            raise ValueError(f"{where}: expected finite values or NaN, received inf")
        object.__setattr__(self, "timestamps_ms", timestamps)
        object.__setattr__(self, "values", values)
        if self.labels is not None:
            labels = _frozen_array(self.labels, bool, 1, f"{where} labels")
            if len(labels) != len(timestamps):
                raise ValueError(f"{where}: expected {len(timestamps)} labels, "
                                 f"received {len(labels)}")
            object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.timestamps_ms)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StreamSeries):
            return NotImplemented
        if (self.labels is None) != (other.labels is None):
            return False
        return (self.stream == other.stream
                and np.array_equal(self.timestamps_ms, other.timestamps_ms)
                and self.values.shape == other.values.shape
                and np.array_equal(self.values, other.values, equal_nan=True)
                and (self.labels is None or np.array_equal(self.labels, other.labels)))

    __hash__ = None  # type: ignore[assignment]

    @property
    def missing_values(self) -> int:
        """Number of NaN cells."""
        return int(np.count_nonzero(np.isnan(self.values)))

    def gaps(self, factor: float = GAP_FACTOR) -> int:
        """Number of intervals longer than ``factor`` times the median interval."""
        if len(self) < 2:
            return 0
        intervals = np.diff(self.timestamps_ms)
        return int(np.count_nonzero(intervals > factor * np.median(intervals)))

    def filled(self) -> tuple[StreamSeries, int]:
        """This stream with missing values forward-filled (leading ones back-filled).

        Returns the new series and how many cells were filled. A channel without any value
        stays NaN (reading rejects such streams, so this only concerns hand-built series).
        """
        values = self.values
        missing = np.isnan(values)
        count = int(np.count_nonzero(missing))
        if count == 0:
            return self, 0
        rows = np.arange(len(values))[:, None]
        last_seen = np.maximum.accumulate(np.where(missing, 0, rows), axis=0)
        columns = np.arange(values.shape[1])[None, :]
        out = values[last_seen, columns]
        first = np.argmax(~missing, axis=0)
        out = np.where(np.isnan(out), values[first, np.arange(values.shape[1])][None, :], out)
        count -= int(np.count_nonzero(np.isnan(out)))
        return StreamSeries(self.stream, self.timestamps_ms, out, self.labels), count


@dataclass(frozen=True)
class IngestSummary:
    """What was read: counts over all streams, and the time range in epoch ms.

    ``missing_values`` is the number of NaN cells as read; ``filled_values`` how many cells
    :meth:`Recording.filled` replaced since; ``gaps`` the intervals longer than 3x their
    stream's median interval; ``dropped_rows`` the NAB rows whose timestamp did not advance
    (see the module docstring; always 0 for other formats).
    """

    files: tuple[str, ...]
    rows: int
    streams: int
    channels: int
    missing_values: int
    filled_values: int
    gaps: int
    start_ms: int
    end_ms: int
    dropped_rows: int = 0

    def describe(self) -> str:
        """A few human-readable lines."""
        files = ", ".join(self.files) if len(self.files) <= 3 else (
            f"{', '.join(self.files[:3])} and {len(self.files) - 3} more")
        return "\n".join([
            f"files: {len(self.files)}" + (f" ({files})" if files else ""),
            f"readings: {self.rows} in {self.streams} streams x {self.channels} channels",
            f"time range: {format_timestamp_ms(self.start_ms)} .. "
            f"{format_timestamp_ms(self.end_ms)}",
            f"missing values: {self.missing_values} (filled: {self.filled_values})",
            f"gaps (> {GAP_FACTOR:g}x the median interval): {self.gaps}",
        ] + ([f"dropped rows (NAB timestamps not advancing): {self.dropped_rows}"]
             if self.dropped_rows else []))


class Reading(NamedTuple):
    """One reading of a recording, as replayed by :meth:`Recording.readings`."""

    stream: str
    timestamp_ms: int
    values: np.ndarray  # float64 [channels], read-only
    label: bool | None


@dataclass(frozen=True, eq=False)
class Recording:
    """Streams sharing one set of channels, in insertion order, plus an ingest summary.

    Build one with :meth:`from_series` (which computes the summary) or
    :func:`read_recording`. Either every stream has labels or none has. Equality compares
    the data (channels and streams), not the summary.
    """

    channels: tuple[str, ...]
    streams: dict[str, StreamSeries]
    summary: IngestSummary = field(repr=False)

    def __post_init__(self) -> None:
        channels = tuple(self.channels)
        _check_channel_names(channels)
        streams = dict(self.streams)
        if not streams:
            raise ValueError("a recording needs at least one stream, received none")
        for key, series in streams.items():
            if not isinstance(series, StreamSeries) or series.stream != key:
                raise ValueError(f"streams[{key!r}]: expected the StreamSeries of stream "
                                 f"{key!r}, received {series!r:.80}")
            if series.values.shape[1] != len(channels):
                raise ValueError(f"stream {key!r}: expected {len(channels)} channels "
                                 f"{channels}, received {series.values.shape[1]}")
        labeled = {key for key, series in streams.items() if series.labels is not None}
        if labeled and len(labeled) != len(streams):
            unlabeled = [key for key in streams if key not in labeled]
            raise ValueError(f"expected labels on every stream or on none, received streams "
                             f"without labels: {unlabeled[:5]}")
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "streams", streams)

    @classmethod
    def from_series(cls, channels: Sequence[str], series: Iterable[StreamSeries],
                    files: Sequence[str] = (), filled_values: int = 0,
                    dropped_rows: int = 0) -> Recording:
        """A recording of ``series`` with its summary computed."""
        streams: dict[str, StreamSeries] = {}
        for item in series:
            if item.stream in streams:
                raise ValueError(f"stream {item.stream!r} given twice")
            streams[item.stream] = item
        if not streams:
            raise ValueError("a recording needs at least one stream, received none")
        summary = IngestSummary(
            files=tuple(str(name) for name in files),
            rows=sum(len(s) for s in streams.values()),
            streams=len(streams),
            channels=len(channels),
            missing_values=sum(s.missing_values for s in streams.values()),
            filled_values=filled_values,
            gaps=sum(s.gaps() for s in streams.values()),
            start_ms=min(int(s.timestamps_ms[0]) for s in streams.values()),
            end_ms=max(int(s.timestamps_ms[-1]) for s in streams.values()),
            dropped_rows=dropped_rows,
        )
        return cls(tuple(channels), streams, summary)

    @property
    def labeled(self) -> bool:
        """Whether the streams carry anomaly labels."""
        return next(iter(self.streams.values())).labels is not None

    def __len__(self) -> int:
        return self.summary.rows

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Recording):
            return NotImplemented
        return (self.channels == other.channels
                and list(self.streams) == list(other.streams)
                and all(self.streams[key] == other.streams[key] for key in self.streams))

    __hash__ = None  # type: ignore[assignment]

    def filled(self) -> Recording:
        """Missing values forward-filled per stream and channel (leading ones back-filled).

        ``summary.missing_values`` keeps the count as read; ``summary.filled_values`` adds
        the cells filled here.
        """
        streams: dict[str, StreamSeries] = {}
        filled = 0
        for key, series in self.streams.items():
            streams[key], count = series.filled()
            filled += count
        summary = dataclasses.replace(self.summary,
                                      filled_values=self.summary.filled_values + filled)
        return Recording(self.channels, streams, summary)

    def readings(self) -> Iterator[Reading]:
        """Every reading of every stream in timestamp order (ties: stream order), for replay."""
        series, stream_index, row_index = _merged_order(self)
        for i, row in zip(stream_index.tolist(), row_index.tolist(), strict=True):
            current = series[i]
            label = None if current.labels is None else bool(current.labels[row])
            yield Reading(current.stream, int(current.timestamps_ms[row]),
                          current.values[row], label)


class RecordingError(ValueError):
    """Recorded data that cannot be used; ``problems`` holds the reported messages."""

    def __init__(self, problems: Sequence[str], total: int | None = None) -> None:
        self.problems = tuple(problems)
        self.total = len(self.problems) if total is None else total
        lines = list(self.problems)
        if self.total > len(lines):
            lines.append(f"... and {self.total - len(lines)} more")
        noun = "problem" if self.total == 1 else "problems"
        super().__init__(f"{self.total} {noun} in the recorded data:\n  " + "\n  ".join(lines))


def _check_channel_names(channels: Sequence[str]) -> None:
    if not channels:
        raise ValueError("expected at least one channel, received none")
    for name in channels:
        if not isinstance(name, str) or not name or name in RESERVED_NAMES:
            raise ValueError(f"channel names: expected non-empty strings other than "
                             f"{sorted(RESERVED_NAMES)}, received {name!r}")
    if len(set(channels)) != len(channels):
        raise ValueError(f"channel names: expected each name once, received {list(channels)}")


# --------------------------------------------------------------------------------------------
# Problem collection
# --------------------------------------------------------------------------------------------


class _Problems:
    """Every problem is counted; the first MAX_REPORTED_PROBLEMS by (file, line) are kept."""

    def __init__(self) -> None:
        self.total = 0
        self._kept: list[tuple[int, int, int, str]] = []

    def add(self, file_index: int, line: int, message: str) -> None:
        self.total += 1
        self._kept.append((file_index, line, self.total, message))
        if len(self._kept) > 10 * MAX_REPORTED_PROBLEMS:
            self._kept = heapq.nsmallest(MAX_REPORTED_PROBLEMS, self._kept)

    def raise_if_any(self) -> None:
        if self.total:
            kept = heapq.nsmallest(MAX_REPORTED_PROBLEMS, self._kept)
            raise RecordingError([message for *_, message in kept], self.total)


class _Source:
    """One file being read: its display name, its index (for ordering) and the problem sink."""

    def __init__(self, path: Path, index: int, problems: _Problems,
                 timestamp_cache: dict[str, int]) -> None:
        self.path = path
        self.name = str(path)
        self.index = index
        self.problems = problems
        self.timestamp_cache = timestamp_cache

    def problem(self, line: int | None, where: str | None, text: str) -> None:
        location = self.name if line is None else f"{self.name}:{line}"
        self.problems.add(self.index, line or 0,
                          f"{location}: {where}: {text}" if where else f"{location}: {text}")


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# Parsed pieces
# --------------------------------------------------------------------------------------------


@dataclass
class _Part:
    """Validated rows of one stream from one file (rows with a bad timestamp dropped)."""

    lines: np.ndarray  # int64 [n]
    timestamps_ms: np.ndarray  # int64 [n]
    values: np.ndarray  # float64 [n, channels] in the file's channel order
    labels: np.ndarray | None  # bool [n]
    bad_channels: np.ndarray  # bool [channels]: some cell failed to parse (already reported)


@dataclass
class _FileData:
    source: _Source
    channels: tuple[str, ...]
    has_labels: bool
    field_word: str  # "column" or "key", for messages
    timestamp_key: str
    nested: bool = False  # JSON channels inside "values"
    drops_disorder: bool = False  # nab: drop rows whose timestamp does not advance
    parts: dict[str, list[_Part]] = field(default_factory=dict)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Building millions of small lists triggers the cyclic GC again and again; none of them
    form cycles, so pause it while parsing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _parse_timestamps(source: _Source, raw: Sequence[object], lines: Sequence[int],
                      where: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Epoch ms of each raw timestamp, and a mask of the ones that parsed.

    ``where`` names the column, or one per value.
    """
    cache = source.timestamp_cache
    out = np.empty(len(raw), dtype=np.int64)
    ok = np.ones(len(raw), dtype=bool)
    for i, value in enumerate(raw):
        ms = cache.get(value) if type(value) is str else None
        if ms is None:
            try:
                ms = parse_timestamp_ms(value)
            except ValueError as exc:
                source.problem(lines[i], where if isinstance(where, str) else where[i],
                               f"unparsable timestamp ({exc})")
                ok[i] = False
                continue
            if type(value) is str:
                if len(cache) >= _TIMESTAMP_CACHE_SIZE:
                    cache.clear()
                cache[value] = ms
        out[i] = ms
    return out, ok


# RFC 3339 shapes parsed vectorized: YYYY-MM-DD[T ]HH:MM:SS[.sss][Z]. Anything else (and any
# invalid date) goes through parse_timestamp_ms one text at a time.
_FAST_TIMESTAMP_LENGTHS = (19, 20, 23, 24)
_DAYS_BEFORE_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def _fast_timestamps(texts: Sequence[str]) -> np.ndarray | None:
    """Epoch ms of same-shaped RFC 3339 texts without offsets (or with Z), else None."""
    array = np.array(texts, dtype=np.str_)
    length = array.dtype.itemsize // 4
    if length not in _FAST_TIMESTAMP_LENGTHS or len(array) == 0:
        return None
    codes = array.view(np.uint32).reshape(len(array), length)
    punctuation = {4: "-", 7: "-", 13: ":", 16: ":"}
    if length >= 23:
        punctuation[19] = "."
    if length in (20, 24):
        punctuation[length - 1] = "Z"
    for position, char in punctuation.items():
        if np.any(codes[:, position] != ord(char)):
            return None
    if np.any((codes[:, 10] != ord("T")) & (codes[:, 10] != ord(" "))):
        return None
    # Digits of YYYYMMDD HHMMSS [sss], as small integers.
    digits = codes[:, [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22][
        :17 if length >= 23 else 14]].astype(np.int64) - ord("0")
    if np.any((digits < 0) | (digits > 9)):
        return None

    def number(start: int, width: int) -> np.ndarray:
        return digits[:, start:start + width] @ (10 ** np.arange(width - 1, -1, -1))

    year, month, day = number(0, 4), number(4, 2), number(6, 2)
    hour, minute, second = number(8, 2), number(10, 2), number(12, 2)
    millis = number(14, 3) if length >= 23 else 0
    if np.any((month < 1) | (month > 12) | (hour > 23) | (minute > 59) | (second > 59)
              | (year < 1970) | (day < 1)):
        return None
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    days_in_month = _DAYS_BEFORE_MONTH[month] + ((month == 2) & leap)
    if np.any(day > days_in_month):
        return None
    # Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    shifted = year - (month <= 2)
    era = shifted // 400
    year_of_era = shifted - era * 400
    day_of_year = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    days = era * 146_097 + day_of_era - 719_468
    return (((days * 24 + hour) * 60 + minute) * 60 + second) * 1000 + millis


def _parse_timestamp_texts(source: _Source, texts: Sequence[str], lines: Sequence[int],
                           where: str) -> tuple[np.ndarray, np.ndarray]:
    """Like _parse_timestamps for CSV text: vectorized for plain RFC 3339 text, otherwise
    each distinct text is parsed once."""
    fast = _fast_timestamps(texts)
    if fast is not None:
        return fast, np.ones(len(texts), dtype=bool)
    cache = source.timestamp_cache
    parsed: dict[str, int] = {}
    failures: dict[str, str] = {}
    for text in dict.fromkeys(texts):
        ms = cache.get(text)
        if ms is None:
            try:
                ms = parse_timestamp_ms(text)
            except ValueError as exc:
                failures[text] = str(exc)
                ms = -1
            else:
                if len(cache) >= _TIMESTAMP_CACHE_SIZE:
                    cache.clear()
                cache[text] = ms
        parsed[text] = ms
    out = np.fromiter(map(parsed.__getitem__, texts), dtype=np.int64, count=len(texts))
    ok = out >= 0
    if failures:
        for index in np.flatnonzero(~ok).tolist():
            source.problem(lines[index], where,
                           f"unparsable timestamp ({failures[texts[index]]})")
    return out, ok


def _report_undecodable(source: _Source) -> None:
    """Report the exact line of the first byte that is not UTF-8."""
    raw = source.path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        source.problem(raw.count(b"\n", 0, exc.start) + 1, None,
                       f"not UTF-8 text (expected UTF-8, received byte "
                       f"{raw[exc.start:exc.start + 1]!r} at byte offset {exc.start})")
    else:  # pragma: no cover - the caller saw a decoding error
        source.problem(None, None, "not UTF-8 text")


def _parse_cell(text: str) -> float | None:
    """A CSV cell's (or JSON string's) value: NaN when missing, None when not a number."""
    stripped = text.strip()
    if stripped.lower() in MISSING_TOKENS:
        return math.nan
    try:
        return float(stripped)
    except ValueError:
        return None


def _parse_value_column(source: _Source, cells: Sequence[str], lines: Sequence[int],
                        where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Floats of a CSV column (NaN = missing), and a mask of the cells that were errors
    (None when there were none)."""
    bad: np.ndarray | None = None
    try:
        column = np.array(cells, dtype=np.float64)  # C-speed when every cell is a number
    except ValueError:
        column = np.empty(len(cells), dtype=np.float64)
        bad = np.zeros(len(cells), dtype=bool)
        for i, text in enumerate(cells):
            value = _parse_cell(text)
            if value is None:
                bad[i] = True
                column[i] = math.nan
                source.problem(lines[i], where,
                               f"not a number (expected {_MISSING_HINT}, received {_show(text)})")
            else:
                column[i] = value
    infinite = np.isinf(column)
    if infinite.any():
        for i in np.flatnonzero(infinite).tolist():
            source.problem(lines[i], where, f"not a finite number (expected {_MISSING_HINT}, "
                                            f"received {cells[i]!r})")
        column[infinite] = math.nan
        bad = infinite if bad is None else bad | infinite
    return column, bad


def _parse_labels(source: _Source, cells: Sequence[str], lines: Sequence[int]) -> np.ndarray:
    """Booleans of a CSV label column; anything but 0 or 1 is reported."""
    stripped = np.strings.strip(np.array(cells, dtype=np.str_))
    ones = stripped == "1"
    for i in np.flatnonzero(~ones & (stripped != "0")).tolist():
        source.problem(lines[i], "column 'label'",
                       f"not a label (expected 0 or 1, 1 meaning anomalous, "
                       f"received {_show(cells[i])})")
    return ones


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------

_CSV_EXPECTED = {
    "long-csv": "stream, timestamp, one or more channels and optionally label",
    "wide-csv": "timestamp, one or more channels and optionally label",
    "nab": "timestamp,value (a NAB data file)",
}


@dataclass(frozen=True)
class _CsvLayout:
    width: int
    stream: int | None
    timestamp: int
    label: int | None
    channels: tuple[str, ...]
    channel_columns: tuple[int, ...]


def _csv_layout(source: _Source, header: list[str], kind: str,
                line: int) -> _CsvLayout | None:
    """The columns of a CSV header (on ``line``), or None after reporting what is wrong."""
    names = [name.strip() for name in header]
    received = f"received {_show(','.join(header), 120)}"
    expected = f"expected a header with {_CSV_EXPECTED[kind]}"
    before = source.problems.total
    for position, name in enumerate(names, 1):
        if not name:
            source.problem(line, None, f"column {position} has no name ({expected}, {received})")
    for name in dict.fromkeys(n for n in names if n and names.count(n) > 1):
        columns = [str(i) for i, n in enumerate(names, 1) if n == name]
        source.problem(line, f"column {name!r}",
                       f"appears more than once, as columns {', '.join(columns)} "
                       f"({expected}, {received})")
    required = ("stream", "timestamp") if kind == "long-csv" else ("timestamp",)
    missing = [name for name in required if name not in names]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        source.problem(line, None, f"missing column{plural} {', '.join(map(repr, missing))} "
                                f"({expected}, {received})")
    special = {"timestamp", "label"} | ({"stream"} if kind == "long-csv" else set())
    channels = [name for name in names if name and name not in special]
    for name in channels:
        if name in RESERVED_NAMES:
            source.problem(line, f"column {name!r}", f"reserved name, cannot be a channel "
                                                  f"({expected}, {received})")
    if not channels:
        source.problem(line, None, f"no channel columns ({expected}, {received})")
    if kind == "nab" and channels and channels != ["value"]:
        source.problem(line, None, f"not a NAB data file ({expected}, {received})")
    if source.problems.total > before:
        return None
    return _CsvLayout(
        width=len(names),
        stream=names.index("stream") if kind == "long-csv" else None,
        timestamp=names.index("timestamp"),
        label=names.index("label") if "label" in names else None,
        channels=tuple(channels),
        channel_columns=tuple(names.index(name) for name in channels),
    )


def _csv_block(source: _Source, layout: _CsvLayout, rows: list[list[str]], lines: list[int],
               stream_id: str | None, parts: dict[str, list[_Part]]) -> None:
    """Parse a block of rows column by column and add each stream's rows to ``parts``."""
    columns = list(zip(*rows, strict=True))
    count = len(rows)
    timestamps, ok = _parse_timestamp_texts(source, columns[layout.timestamp], lines,
                                            "column 'timestamp'")
    values = np.empty((count, len(layout.channels)), dtype=np.float64)
    bad = np.zeros((count, len(layout.channels)), dtype=bool)
    for j, (name, column) in enumerate(zip(layout.channels, layout.channel_columns,
                                           strict=True)):
        values[:, j], bad_cells = _parse_value_column(source, columns[column], lines,
                                                      f"column {name!r}")
        if bad_cells is not None:
            bad[:, j] = bad_cells
    labels = None if layout.label is None else _parse_labels(source, columns[layout.label],
                                                              lines)
    line_array = np.array(lines, dtype=np.int64)
    if layout.stream is None:
        groups = [(stream_id, np.flatnonzero(ok))]
    else:
        raw_ids = dict.fromkeys(columns[layout.stream])  # first-appearance order
        stripped = [raw.strip() for raw in raw_ids]
        ids = list(dict.fromkeys(stripped))
        position = {stream: i for i, stream in enumerate(ids)}
        code_of = {raw: position[stream] for raw, stream in zip(raw_ids, stripped, strict=True)}
        codes = np.fromiter(map(code_of.__getitem__, columns[layout.stream]), dtype=np.int64,
                            count=count)
        order = np.argsort(codes, kind="stable")
        bounds = np.cumsum(np.bincount(codes, minlength=len(ids)))[:-1]
        groups = []
        for stream, rows_of_stream in zip(ids, np.split(order, bounds), strict=True):
            if not stream:
                for index in rows_of_stream.tolist():
                    source.problem(lines[index], "column 'stream'",
                                   "empty (expected a stream id, received '')")
                continue
            groups.append((stream, rows_of_stream[ok[rows_of_stream]]))
    for stream, index in groups:
        if len(index) == 0:
            continue
        parts.setdefault(stream, []).append(_Part(
            line_array[index], timestamps[index], values[index],
            None if labels is None else labels[index], bad[index].any(axis=0)))


def _read_csv(source: _Source, kind: str, stream_id: str | None) -> _FileData | None:
    """Read a CSV file; ``kind`` is long-csv, wide-csv, nab, or csv (decide from the header)."""
    data: _FileData | None = None
    line = 1
    problems_before = source.problems.total
    try:
        with open(source.path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            while header == []:
                header = next(reader, None)
            if header is None:
                source.problem(None, None, "empty file (expected a CSV header line, "
                                           "received no text)")
                return None
            if kind == "csv":
                kind = "long-csv" if "stream" in (h.strip() for h in header) else "wide-csv"
            layout = _csv_layout(source, header, kind, reader.line_num)
            if layout is None:
                return None
            data = _FileData(source, layout.channels, layout.label is not None, "column",
                             "timestamp", drops_disorder=kind == "nab")
            rows: list[list[str]] = []
            lines: list[int] = []
            width = layout.width
            for row in reader:
                line = reader.line_num
                if len(row) != width:
                    if row:
                        source.problem(line, None, f"wrong number of fields (expected {width} "
                                                   f"as in the header, received {len(row)}: "
                                                   f"{_show(','.join(row))})")
                    continue
                rows.append(row)
                lines.append(line)
                if len(lines) >= _FLUSH_ROWS:
                    _csv_block(source, layout, rows, lines, stream_id, data.parts)
                    rows, lines = [], []
            if rows:
                _csv_block(source, layout, rows, lines, stream_id, data.parts)
    except UnicodeDecodeError:
        _report_undecodable(source)
        return None
    except OSError as exc:
        source.problem(None, None, f"cannot read the file ({exc.strerror or exc})")
        return None
    except csv.Error as exc:
        source.problem(line + 1, None, f"unreadable CSV ({exc})")
        return None
    if not data.parts and source.problems.total == problems_before:
        source.problem(None, None, "no readings (expected rows after the header, "
                                   "received none)")
    return data


# --------------------------------------------------------------------------------------------
# JSON lines
# --------------------------------------------------------------------------------------------

_JSON_EXPECTED = ('{"stream": ..., "ts": ..., "values": {"<channel>": number, ...}} or '
                  '{"stream": ..., "ts": ..., "<channel>": number, ...}, optionally "label"')


@dataclass(frozen=True)
class _JsonSchema:
    line: int
    channels: tuple[str, ...]
    has_labels: bool
    channel_set: frozenset[str]
    # Key sets of well-formed objects, checked first for speed: {timestamp key: keys}.
    nested_keys: dict[str, frozenset[str]]
    flat_keys: dict[str, frozenset[str]]


def _json_schema(source: _Source, record: dict, line: int) -> _JsonSchema | None:
    values = record.get("values")
    if isinstance(values, dict):
        channels = tuple(values)
    else:
        channels = tuple(key for key in record if key not in RESERVED_NAMES)
    received = f"received keys {', '.join(map(repr, record)) or 'none'}"
    if not channels:
        source.problem(line, None, f"no channel keys (expected {_JSON_EXPECTED}, {received})")
        return None
    for name in channels:
        if not name or name in RESERVED_NAMES:
            source.problem(line, f"key 'values.{name}'",
                           f"cannot be a channel name (expected {_JSON_EXPECTED}, {received})")
            return None
    label = {"label"} if "label" in record else set()
    return _JsonSchema(
        line, channels, "label" in record, frozenset(channels),
        {key: frozenset({"stream", key, "values"} | label) for key in ("ts", "timestamp")},
        {key: frozenset({"stream", key, *channels} | label) for key in ("ts", "timestamp")})


def _fast_json_record(schema: _JsonSchema, record: dict, line: int,
                      buckets: dict[str, _JsonBucket]) -> bool:
    """Add a well-formed object to its bucket without building any message; False if it
    needs the full validation of _json_record (which then reports what is wrong)."""
    keys = record.keys()
    for timestamp_key in ("ts", "timestamp"):
        if keys == schema.nested_keys[timestamp_key]:
            channel_values = record["values"]
            if type(channel_values) is not dict or channel_values.keys() != schema.channel_set:
                return False
            break
        if keys == schema.flat_keys[timestamp_key]:
            channel_values = record
            break
    else:
        return False
    stream = record["stream"]
    if type(stream) is not str or not stream or stream != stream.strip():
        return False
    label = False
    if schema.has_labels:
        label = record["label"]
        if type(label) not in (int, bool) or label not in (0, 1):
            return False
    row = []
    for name in schema.channels:
        value = channel_values[name]
        kind = type(value)
        if kind is float:
            if value - value != 0.0 and value == value:  # infinite
                return False
        elif kind is int:
            if abs(value) > 2**1023:
                return False
            value = float(value)
        elif value is None:
            value = math.nan
        else:
            return False
        row.append(value)
    bucket = buckets.get(stream)
    if bucket is None:
        bucket = buckets[stream] = _JsonBucket(len(schema.channels))
    bucket.lines.append(line)
    bucket.timestamps.append(record[timestamp_key])
    bucket.timestamp_keys.append(timestamp_key)
    bucket.values.append(row)
    bucket.labels.append(bool(label))
    return True


def _json_value(value: object) -> float | None:
    """A JSON value as a float, NaN when missing; None when it is not a usable number."""
    if value is None:
        return math.nan
    if type(value) is bool:
        return None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            return None
    elif isinstance(value, str):
        number = _parse_cell(value)
        if number is None:
            return None
    else:
        return None
    return None if math.isinf(number) else number


class _JsonBucket:
    def __init__(self, channels: int) -> None:
        self.lines: list[int] = []
        self.timestamps: list[object] = []
        self.timestamp_keys: list[str] = []
        self.values: list[list[float]] = []
        self.labels: list[bool] = []
        self.bad = np.zeros(channels, dtype=bool)

    def part(self, source: _Source, has_labels: bool) -> _Part:
        where = [f"key {key!r}" for key in self.timestamp_keys]
        timestamps, ok = _parse_timestamps(source, self.timestamps, self.lines, where)
        values = np.array(self.values, dtype=np.float64).reshape(len(self.lines), -1)
        labels = np.array(self.labels, dtype=bool) if has_labels else None
        line_array = np.array(self.lines, dtype=np.int64)
        if not ok.all():
            line_array, timestamps, values = line_array[ok], timestamps[ok], values[ok]
            labels = None if labels is None else labels[ok]
        return _Part(line_array, timestamps, values, labels, self.bad)


def _read_jsonl(source: _Source) -> _FileData | None:
    schema: _JsonSchema | None = None
    data: _FileData | None = None
    buckets: dict[str, _JsonBucket] = {}
    buffered = 0
    seen_text = False

    def flush() -> None:
        assert data is not None
        for key, bucket in buckets.items():
            data.parts.setdefault(key, []).append(bucket.part(source, data.has_labels))
        buckets.clear()

    try:
        with open(source.path, encoding="utf-8-sig") as handle:
            for number, text in enumerate(handle, 1):
                if not text.strip():
                    continue
                seen_text = True
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as first_error:
                    error = first_error
                    try:  # again without the line break, for the decoder's column
                        json.loads(text.rstrip("\r\n"))
                    except json.JSONDecodeError as exc:
                        error = exc
                    source.problem(number, None, f"invalid JSON: {error.msg} at column "
                                                 f"{error.colno} (expected one JSON object "
                                                 f"per line, received {_show(text.strip())})")
                    continue
                if not isinstance(record, dict):
                    source.problem(number, None, f"not a JSON object (expected "
                                                 f"{_JSON_EXPECTED}, received "
                                                 f"{_show(record)})")
                    continue
                if schema is None:
                    schema = _json_schema(source, record, number)
                    if schema is None:
                        return None
                    data = _FileData(source, schema.channels, schema.has_labels, "key",
                                     "ts" if "ts" in record else "timestamp",
                                     isinstance(record.get("values"), dict))
                if (_fast_json_record(schema, record, number, buckets)
                        or _json_record(source, schema, record, number, buckets)):
                    buffered += 1
                    if buffered >= _FLUSH_ROWS:
                        flush()
                        buffered = 0
            if data is not None:
                flush()
    except UnicodeDecodeError:
        _report_undecodable(source)
        return None
    except OSError as exc:
        source.problem(None, None, f"cannot read the file ({exc.strerror or exc})")
        return None
    if not seen_text:
        source.problem(None, None, "empty file (expected one JSON object per line, "
                                   "received no text)")
    return data


def _json_record(source: _Source, schema: _JsonSchema, record: dict, line: int,
                 buckets: dict[str, _JsonBucket]) -> bool:
    """Validate one JSON object and add it to its stream's bucket; False if it was dropped."""
    before = source.problems.total
    expected_keys = ["stream", "ts", *schema.channels] + (["label"] if schema.has_labels else [])
    received = f"received keys {', '.join(map(repr, record))}"

    def missing(key: str) -> None:
        source.problem(line, None, f"missing key {key!r} (expected the keys of line "
                                   f"{schema.line}: {', '.join(expected_keys)}; {received})")

    stream = record.get("stream")
    if "stream" not in record:
        missing("stream")
    elif not isinstance(stream, str) or not stream.strip():
        source.problem(line, "key 'stream'",
                       f"expected a non-empty string, received {_show(stream)}")
    timestamp_key = "ts" if "ts" in record else "timestamp"
    if "ts" in record and "timestamp" in record:
        source.problem(line, None, "both 'ts' and 'timestamp' (expected one of them, "
                                   "received both)")
    elif timestamp_key not in record:
        missing("ts")
    dropped = source.problems.total > before

    label = False
    if schema.has_labels:
        if "label" not in record:
            missing("label")
        else:
            value = record["label"]
            if type(value) not in (int, bool) or value not in (0, 1):
                source.problem(line, "key 'label'", f"not a label (expected 0 or 1, 1 meaning "
                                                    f"anomalous, received {_show(value)})")
            else:
                label = bool(value)

    allowed = {"stream", "ts", "timestamp"} | ({"label"} if schema.has_labels else set())
    if "values" in record:
        channel_values = record["values"]
        if not isinstance(channel_values, dict):
            source.problem(line, "key 'values'", f"expected an object of channel values, "
                                                 f"received {_show(channel_values)}")
            return False
        prefix = "values."
        extra = [key for key in record if key not in allowed and key != "values"]
        extra += [prefix + key for key in channel_values if key not in schema.channel_set]
    else:
        prefix, channel_values = "", record
        extra = [key for key in record if key not in allowed and key not in schema.channel_set]
    for key in extra:
        source.problem(line, f"key {key!r}",
                       f"unknown key (expected only the keys of line {schema.line}: "
                       f"{', '.join(expected_keys)}; {received})")

    row: list[float] = []
    bad_channels: list[int] = []
    for j, name in enumerate(schema.channels):
        if name not in channel_values:
            missing(prefix + name)
            bad_channels.append(j)
            row.append(math.nan)
            continue
        raw = channel_values[name]
        value = _json_value(raw)
        if value is None:
            source.problem(line, f"key {prefix + name!r}",
                           f"not a number (expected a finite JSON number, or null for a "
                           f"missing value, received {_show(raw)})")
            bad_channels.append(j)
            value = math.nan
        row.append(value)
    if dropped:
        return False
    key = stream.strip()
    bucket = buckets.get(key)
    if bucket is None:
        bucket = buckets[key] = _JsonBucket(len(schema.channels))
    bucket.lines.append(line)
    bucket.timestamps.append(record[timestamp_key])
    bucket.timestamp_keys.append(timestamp_key)
    bucket.values.append(row)
    bucket.labels.append(label)
    if bad_channels:
        bucket.bad[bad_channels] = True
    return True


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _plan(paths: Sequence[Path], format: str, problems: _Problems,
          cache: dict[str, int]) -> list[tuple[_Source, str, str | None]]:
    """The files to read, in order: (source, kind, stream id for one-stream files).

    ``kind`` is long-csv, wide-csv, nab, jsonl, csv (long or wide, by its header) or
    unreadable (a problem was reported).
    """
    jobs: list[tuple[_Source, str, str | None]] = []

    def add(path: Path, kind: str, stream_id: str | None = None,
            problem: str | None = None) -> None:
        source = _Source(path, len(jobs), problems, cache)
        if problem:
            source.problem(None, None, problem)
        jobs.append((source, kind, stream_id))

    for path in paths:
        if not path.exists():
            add(path, "unreadable", problem="no such file or directory")
        elif path.is_dir():
            if format not in ("auto", "nab"):
                add(path, "unreadable", problem=f"is a directory (expected a {format} file; "
                                                f"a directory is read as nab)")
                continue
            found = sorted(
                (file.relative_to(path).as_posix(), file) for file in path.rglob("*.csv")
                if file.is_file()
                and not any(part.startswith(".") for part in file.relative_to(path).parts))
            if not found:
                add(path, "unreadable", problem="no .csv files in this directory (expected "
                                                "NAB data: timestamp,value CSV files)")
            for relative, file in found:
                add(file, "nab", relative)
        elif format == "nab":
            add(path, "unreadable", problem="nab expects a directory of NAB data files, "
                                            "received a file (read one timestamp,value file "
                                            "as wide-csv)")
        elif format != "auto":
            add(path, format, path.stem)
        elif path.suffix.lower() in _JSONL_SUFFIXES:
            add(path, "jsonl")
        elif path.suffix.lower() == ".csv":
            add(path, "csv", path.stem)
        else:
            add(path, "unreadable", problem=f"cannot tell the format from the name (expected "
                                            f"a directory, .csv, .jsonl or .ndjson, received "
                                            f"{path.name!r}; name a format explicitly)")
    return jobs


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
    problems = _Problems()
    cache: dict[str, int] = {}
    jobs = _plan(paths, format, problems, cache)
    files: list[_FileData] = []
    with _gc_paused():
        for source, kind, stream_id in jobs:
            if kind == "unreadable":
                continue
            data = _read_jsonl(source) if kind == "jsonl" else _read_csv(source, kind, stream_id)
            if data is not None:
                files.append(data)
    cache.clear()
    if not files:
        problems.raise_if_any()
        raise RecordingError(["no readings found"])
    first = files[0]
    channels = first.channels
    usable: list[_FileData] = []
    for data in files:
        if set(data.channels) != set(channels):
            data.source.problem(None, None, f"channels differ between files (expected those "
                                            f"of {first.source.name}: {', '.join(channels)}; "
                                            f"received {', '.join(data.channels)})")
        elif data.has_labels != first.has_labels:
            has = "has" if first.has_labels else "has no"
            data.source.problem(None, None, f"label column differs between files (expected "
                                            f"one as {first.source.name} {has} a label column"
                                            f", received {'one' if data.has_labels else 'none'})")
        else:
            usable.append(data)
    checked, dropped = _merge_streams(usable, channels)
    problems.raise_if_any()
    series = [StreamSeries(stream, timestamps, values, labels)
              for stream, timestamps, values, labels in checked]
    return Recording.from_series(channels, series,
                                 files=[source.name for source, kind, _ in jobs
                                        if kind != "unreadable"], dropped_rows=dropped)


def _merge_streams(files: list[_FileData], channels: tuple[str, ...]
                   ) -> tuple[list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]], int]:
    """Each stream's parts from every file joined, checked for order and empty channels;
    also the number of (NAB) rows dropped for not advancing in time."""
    dropped = 0
    pieces: dict[str, list[tuple[_FileData, _Part]]] = {}
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


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _merged_order(recording: Recording) -> tuple[list[StreamSeries], np.ndarray, np.ndarray]:
    """Series, and per reading in replay order its series index and row index."""
    series = list(recording.streams.values())
    timestamps = np.concatenate([s.timestamps_ms for s in series])
    stream_index = np.repeat(np.arange(len(series)), [len(s) for s in series])
    row_index = np.concatenate([np.arange(len(s)) for s in series])
    order = np.lexsort((stream_index, timestamps))
    return series, stream_index[order], row_index[order]


_WRITE_CHUNK = 100_000  # readings formatted at a time


def _replay_chunks(recording: Recording) -> Iterator[tuple[list[str], list[str], np.ndarray,
                                                           np.ndarray | None]]:
    """Readings in replay order, a chunk at a time, as columns: stream ids, RFC 3339 times,
    values [n, channels] and labels (or None)."""
    series, stream_index, row_index = _merged_order(recording)
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
    with open(path, "w", newline="", encoding="utf-8") as handle, _gc_paused():
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["stream", "timestamp", *recording.channels]
                        + (["label"] if with_labels else []))
        for streams, times, values, flags in _replay_chunks(recording):
            columns = _value_columns(values, None)  # the csv module writes None as ""
            if with_labels:
                columns.append(flags.tolist())
            writer.writerows(zip(streams, times, *columns, strict=True))


def write_jsonl(recording: Recording, path: str | os.PathLike[str]) -> None:
    """Write ``recording`` as JSON lines in the Kafka message shape, in replay order:
    ``{"stream": ..., "ts": "<RFC 3339 UTC>", "values": {"<channel>": number | null}}``, plus
    ``"label": 0 | 1`` when the recording is labeled (numbers as json.dumps writes them)."""
    channels = ", ".join(f"{json.dumps(name)}: %s" for name in recording.channels)
    template = '{"stream": %s, "ts": "%s", "values": {' + channels + "}"
    template += ', "label": %d}\n' if recording.labeled else "}\n"
    quoted: dict[str, str] = {}
    with open(path, "w", encoding="utf-8") as handle, _gc_paused():
        for streams, times, values, flags in _replay_chunks(recording):
            for stream in set(streams).difference(quoted):
                quoted[stream] = json.dumps(stream)
            columns = [[repr(v) if v is not None else "null" for v in column]
                       for column in _value_columns(values, None)]
            if flags is not None:
                columns.append(flags.tolist())
            handle.writelines(template % row for row in zip(
                [quoted[s] for s in streams], times, *columns, strict=True))
