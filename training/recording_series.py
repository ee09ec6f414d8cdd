"""The data model of recorded sensor data: streams, recordings and what reading them found.

Part of :mod:`training.recordings`, which documents the formats and re-exports these names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from detector.readings import format_timestamp_ms

# Column / key names with a meaning of their own; never channel names.
RESERVED_NAMES = frozenset({"stream", "timestamp", "ts", "label", "values"})
GAP_FACTOR = 3.0


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
    formats: tuple[str, ...] = ()  # the formats the files were read as, each once

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
        check_channel_names(channels)
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
                    dropped_rows: int = 0, formats: Sequence[str] = ()) -> Recording:
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
            formats=tuple(formats),
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
        series, stream_index, row_index = replay_order(self)
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


def check_channel_names(channels: Sequence[str]) -> None:
    if not channels:
        raise ValueError("expected at least one channel, received none")
    for name in channels:
        if not isinstance(name, str) or not name or name in RESERVED_NAMES:
            raise ValueError(f"channel names: expected non-empty strings other than "
                             f"{sorted(RESERVED_NAMES)}, received {name!r}")
    if len(set(channels)) != len(channels):
        raise ValueError(f"channel names: expected each name once, received {list(channels)}")



def replay_order(recording: Recording) -> tuple[list[StreamSeries], np.ndarray, np.ndarray]:
    """Series, and per reading in replay order its series index and row index."""
    series = list(recording.streams.values())
    timestamps = np.concatenate([s.timestamps_ms for s in series])
    stream_index = np.repeat(np.arange(len(series)), [len(s) for s in series])
    row_index = np.concatenate([np.arange(len(s)) for s in series])
    order = np.lexsort((stream_index, timestamps))
    return series, stream_index[order], row_index[order]

