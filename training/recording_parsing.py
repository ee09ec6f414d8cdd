"""Shared machinery of the recording readers: problem collection, timestamp, number and
label parsing, and the validated pieces each reader hands to :func:`training.recordings.
read_recording`.

Internal to the readers (``recording_csv``, ``recording_jsonl``); the public API is
:mod:`training.recordings`.
"""

from __future__ import annotations

import gc
import heapq
import json
import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.readings import parse_timestamp_ms
from training.recording_series import RecordingError

# Text that means "no value here", compared after stripping and lower-casing.
MISSING_TOKENS = frozenset({"", "nan", "na", "null"})
MAX_REPORTED_PROBLEMS = 20
MISSING_HINT = "a finite number, or an empty cell, nan, NA or null for a missing value"
# Rows buffered as Python objects before they are converted to NumPy arrays.
FLUSH_ROWS = 200_000
_TIMESTAMP_CACHE_SIZE = 200_000


# --------------------------------------------------------------------------------------------
# Problem collection
# --------------------------------------------------------------------------------------------


class Problems:
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


class Source:
    """One file being read: its display name, its index (for ordering) and the problem sink."""

    def __init__(self, path: Path, index: int, problems: Problems,
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


class JsonTextError(ValueError):
    """Text that ``json.loads`` cannot turn into a value; ``line`` and ``column`` say where
    when the decoder knows."""

    def __init__(self, reason: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.line, self.column = reason, line, column


def load_json(text: str) -> object:
    """``json.loads`` whose every failure is a :class:`JsonTextError`.

    Besides malformed text, hostile input fails ``json.loads`` in two more ways, the ones the
    Kafka message parser (``streaming.messages``) also catches: an integer of more digits than
    Python converts (a ValueError that is no JSONDecodeError) and nesting deeper than the
    recursion limit (RecursionError).
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as first_error:
        error = first_error
        try:  # again without the line break, for the decoder's column at the end of a line
            json.loads(text.rstrip("\r\n"))
        except json.JSONDecodeError as retried:
            error = retried
        except (ValueError, RecursionError):
            pass
        raise JsonTextError(error.msg, error.lineno, error.colno) from None
    except ValueError:
        raise JsonTextError(f"an integer of more than {sys.get_int_max_str_digits()} "
                            f"digits") from None
    except RecursionError:
        raise JsonTextError("nested too deeply (arrays or objects within each other, "
                            f"about {sys.getrecursionlimit()} levels or more)") from None


def clipped(text: str, limit: int = 200) -> str:
    """A message that may quote a hostile value (thousands of digits), cut to ``limit``."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def timestamp_reason(error: ValueError) -> str:
    """Why a timestamp did not parse, short even for a hostile value."""
    if "integer string conversion" in str(error):  # int() of more than 4300 digits
        return (f"expected a time between 1970 and 9999, received a number of more than "
                f"{sys.get_int_max_str_digits()} digits")
    return clipped(str(error))


def show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# Parsed pieces
# --------------------------------------------------------------------------------------------


@dataclass
class Part:
    """Validated rows of one stream from one file (rows with a bad timestamp dropped)."""

    lines: np.ndarray  # int64 [n]
    timestamps_ms: np.ndarray  # int64 [n]
    values: np.ndarray  # float64 [n, channels] in the file's channel order
    labels: np.ndarray | None  # bool [n]
    bad_channels: np.ndarray  # bool [channels]: some cell failed to parse (already reported)


@dataclass
class FileData:
    source: Source
    channels: tuple[str, ...]
    has_labels: bool
    field_word: str  # "column" or "key", for messages
    timestamp_key: str
    nested: bool = False  # JSON channels inside "values"
    drops_disorder: bool = False  # nab: drop rows whose timestamp does not advance
    label_key: str = "label"  # the label column's name, for messages ("anomaly" in SKAB)
    kind: str = ""  # the format the file was read as: long-csv, wide-csv, nab, skab, jsonl
    parts: dict[str, list[Part]] = field(default_factory=dict)


@dataclass(frozen=True)
class CsvLayout:
    """Where a CSV file's columns are, from its header; indexes count from 0."""

    width: int
    stream: int | None
    timestamp: int
    label: int | None
    channels: tuple[str, ...]
    channel_columns: tuple[int, ...]
    timestamp_name: str = "timestamp"
    label_name: str = "label"
    numeric_labels: bool = False  # labels may be written as numbers such as 0.0 and 1.0


@contextmanager
def gc_paused() -> Iterator[None]:
    """Building millions of small lists triggers the cyclic GC again and again; none of them
    form cycles, so pause it while parsing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_timestamps(source: Source, raw: Sequence[object], lines: Sequence[int],
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
                               f"unparsable timestamp ({timestamp_reason(exc)})")
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


def fast_timestamps(texts: Sequence[str]) -> np.ndarray | None:
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


def parse_timestamp_texts(source: Source, texts: Sequence[str], lines: Sequence[int],
                           where: str) -> tuple[np.ndarray, np.ndarray]:
    """Like parse_timestamps for CSV text: vectorized for plain RFC 3339 text, otherwise
    each distinct text is parsed once."""
    fast = fast_timestamps(texts)
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
                failures[text] = timestamp_reason(exc)
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


def report_undecodable(source: Source) -> None:
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


def parse_cell(text: str) -> float | None:
    """A CSV cell's (or JSON string's) value: NaN when missing, None when not a number."""
    stripped = text.strip()
    if stripped.lower() in MISSING_TOKENS:
        return math.nan
    try:
        return float(stripped)
    except ValueError:
        return None


def parse_value_column(source: Source, cells: Sequence[str], lines: Sequence[int],
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
            value = parse_cell(text)
            if value is None:
                bad[i] = True
                column[i] = math.nan
                source.problem(lines[i], where,
                               f"not a number (expected {MISSING_HINT}, received {show(text)})")
            else:
                column[i] = value
    infinite = np.isinf(column)
    if infinite.any():
        for i in np.flatnonzero(infinite).tolist():
            source.problem(lines[i], where, f"not a finite number (expected {MISSING_HINT}, "
                                            f"received {show(cells[i])})")
        column[infinite] = math.nan
        bad = infinite if bad is None else bad | infinite
    return column, bad


def parse_labels(source: Source, cells: Sequence[str], lines: Sequence[int],
                 column: str = "label", numeric: bool = False) -> np.ndarray:
    """Booleans of a CSV label column; anything but 0 or 1 is reported.

    With ``numeric`` any number equal to 0 or 1 is a label too (SKAB writes ``0.0``/``1.0``).
    """
    stripped = np.strings.strip(np.array(cells, dtype=np.str_))
    ones = stripped == "1"
    valid = ones | (stripped == "0")
    expected = "0 or 1, 1 meaning anomalous"
    if numeric and not valid.all():
        expected = "0 or 1 (0.0 and 1.0 too), 1 meaning anomalous"
        for i in np.flatnonzero(~valid).tolist():
            number = parse_cell(cells[i])
            if number in (0.0, 1.0):  # NaN (a missing label) is neither
                valid[i], ones[i] = True, number == 1.0
    for i in np.flatnonzero(~valid).tolist():
        source.problem(lines[i], f"column {column!r}",
                       f"not a label (expected {expected}, received {show(cells[i])})")
    return ones
