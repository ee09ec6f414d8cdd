"""Per-stream state of the worker: fixed-size records in contiguous arrays.

Each stream the worker has seen owns one row: the detector's state record (see
:mod:`detector.state`) plus the bookkeeping the worker needs around it: the stream's last
reading time and source offset (to reject out-of-order readings and skip readings already
applied), its partition (to drop or checkpoint a partition's streams together), when it was
last seen (to evict idle streams) and its open anomaly episode.

Rows live in NumPy arrays that grow by doubling, so gathering the states of a batch of
streams is one fancy-index and memory per stream is a few hundred bytes. Freed rows are
reused. Rows changed since the last checkpoint are marked dirty, so the changelog writer can
send only those.
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Sequence

import numpy as np

from detector.episodes import NO_EPISODE
from detector.state import StateLayout

__all__ = ["NO_EPISODE", "StateStore", "checkpoint_dtype"]

# The bookkeeping that travels with the detector state in a checkpoint record, packed and
# little-endian after the state vector (64 bytes). Partition and eviction clock stay local: a
# restored stream takes the partition it is restored for and counts as seen at restore time.
_SIDECAR_FIELDS = (
    ("last_ts_ms", "<i8"), ("last_offset", "<i8"), ("episode_start_ms", "<i8"),
    ("episode_end_ms", "<i8"), ("episode_peak_ms", "<i8"), ("episode_peak_score", "<f4"),
    ("episode_peak_likelihood", "<f4"), ("episode_readings", "<i4"), ("episode_quiet", "<i4"),
    ("episode_channel_mask", "<u8"),
)


def checkpoint_dtype(layout: StateLayout) -> np.dtype:
    """The packed record of one stream in a checkpoint: state vector, then sidecar."""
    return np.dtype([("state", "<f4", (layout.size,)), *_SIDECAR_FIELDS])


class StateStore:
    """All stream states of one worker.

    Args:
        layout: the detector's state layout.
        initial_capacity: rows allocated up front; the arrays double when full.

    Attributes (one element per row; only rows in use are meaningful):
        state: float32 ``[capacity, layout.size]`` detector state records.
        last_ts_ms: int64 time of the last reading applied.
        last_offset: int64 source offset of that reading (-1 for none).
        partition: int32 source partition of the stream.
        last_seen_s: float64 wall time the stream was last seen (eviction clock).
        last_used: int64 sequence number of the stream's last use (the order of
            least-recently-used eviction): its last applied reading, or its restore, which
            counts as a use after every earlier one (a stream just handed to this worker is
            not the first to be evicted).
        next_use: the next sequence number (the engine takes one per applied reading).
        episode_*: the open anomaly episode (``episode_start_ms == NO_EPISODE`` when none),
            folded by :func:`detector.episodes.fold_flags`.
        dirty: bool, changed since the last :meth:`take_dirty`.
    """

    _ARRAYS: typing.ClassVar[dict[str, tuple[type, object]]] = {
        "last_ts_ms": (np.int64, -1), "last_offset": (np.int64, -1),
        "partition": (np.int32, -1), "last_seen_s": (np.float64, 0.0),
        "episode_start_ms": (np.int64, NO_EPISODE), "episode_end_ms": (np.int64, NO_EPISODE),
        "episode_peak_ms": (np.int64, NO_EPISODE), "episode_peak_score": (np.float32, 0.0),
        "episode_peak_likelihood": (np.float32, 0.0), "episode_readings": (np.int32, 0),
        "episode_quiet": (np.int32, 0), "episode_channel_mask": (np.uint64, 0),
        "dirty": (bool, False), "last_used": (np.int64, 0),
    }

    def __init__(self, layout: StateLayout, initial_capacity: int = 1024) -> None:
        self.layout = layout
        self._capacity = max(1, initial_capacity)
        self.state = layout.initial(self._capacity)
        for name, (dtype, fill) in self._ARRAYS.items():
            setattr(self, name, np.full(self._capacity, fill, dtype=dtype))
        self._row_of: dict[str, int] = {}
        self._stream_of: list[str | None] = [None] * self._capacity
        self._free: list[int] = list(range(self._capacity - 1, -1, -1))
        self._text_bytes = 0  # the stream ids, as Python objects
        self.next_use = 1

    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, stream: str) -> bool:
        return stream in self._row_of

    @property
    def nbytes(self) -> int:
        """Bytes held for the streams, the figure exported as a metric: the arrays
        (allocated capacity), the stream ids (Python objects, which for long ids outweigh
        the state), and the containers that index them."""
        containers = (sys.getsizeof(self._row_of) + sys.getsizeof(self._stream_of)
                      + sys.getsizeof(self._free))
        return self.array_bytes + containers + self._text_bytes

    @property
    def array_bytes(self) -> int:
        """Bytes of the state and bookkeeping arrays (allocated capacity)."""
        arrays = sum(getattr(self, name).nbytes for name in self._ARRAYS)
        return int(self.state.nbytes + arrays)

    def row_of(self, stream: str) -> int | None:
        return self._row_of.get(stream)

    def stream_of(self, row: int) -> str:
        stream = self._stream_of[row]
        if stream is None:
            raise KeyError(f"row {row} holds no stream")
        return stream

    def row_for(self, stream: str, partition: int) -> int:
        """The stream's row, allocating a fresh one (initial state) for a new stream."""
        row = self._row_of.get(stream)
        if row is not None:
            return row
        if not self._free:
            self._grow()
        row = self._free.pop()
        self._text_bytes += sys.getsizeof(stream)
        self._row_of[stream] = row
        self._stream_of[row] = stream
        self.partition[row] = partition
        return row

    def _grow(self) -> None:
        old = self._capacity
        self._capacity = old * 2
        self.state = np.concatenate([self.state, self.layout.initial(old)])
        for name, (dtype, fill) in self._ARRAYS.items():
            setattr(self, name, np.concatenate(
                [getattr(self, name), np.full(old, fill, dtype=dtype)]))
        self._stream_of.extend([None] * old)
        self._free.extend(range(self._capacity - 1, old - 1, -1))

    def release(self, rows: Sequence[int] | np.ndarray) -> None:
        """Forgets the streams of ``rows``; their rows return to the initial state."""
        for row in map(int, rows):
            stream = self._stream_of[row]
            if stream is None:
                continue
            del self._row_of[stream]
            self._text_bytes -= sys.getsizeof(stream)
            self._stream_of[row] = None
            self.state[row] = 0.0
            for name, (_, fill) in self._ARRAYS.items():
                getattr(self, name)[row] = fill
            self._free.append(row)

    def reset_states(self, layout: StateLayout) -> None:
        """Every stream starts over under ``layout`` (a model with another state shape):
        initial detector states, no open episode, all marked dirty. Last reading time and
        offset stay, so nothing already applied is applied again."""
        self.layout = layout
        self.state = layout.initial(self._capacity)
        for name in ("episode_start_ms", "episode_end_ms", "episode_peak_ms",
                     "episode_peak_score", "episode_peak_likelihood", "episode_readings",
                     "episode_quiet", "episode_channel_mask"):
            dtype, fill = self._ARRAYS[name]
            setattr(self, name, np.full(self._capacity, fill, dtype=dtype))
        self.dirty[self.rows_in_use()] = True

    def rows_in_use(self) -> np.ndarray:
        return np.fromiter(self._row_of.values(), dtype=np.int64, count=len(self._row_of))

    def idle_rows(self, now_s: float, max_idle_s: float) -> np.ndarray:
        rows = self.rows_in_use()
        return rows[self.last_seen_s[rows] < now_s - max_idle_s]

    def rows_of_partition(self, partition: int) -> np.ndarray:
        rows = self.rows_in_use()
        return rows[self.partition[rows] == partition]

    def take_dirty(self, partition: int | None = None) -> np.ndarray:
        """Rows changed since the last call (of ``partition`` if given), now marked clean."""
        rows = self.rows_in_use() if partition is None else self.rows_of_partition(partition)
        rows = rows[self.dirty[rows]]
        self.dirty[rows] = False
        return rows

    # Checkpoint records: the detector state followed by the sidecar bookkeeping.

    @property
    def record_bytes(self) -> int:
        return self._record_dtype.itemsize

    @property
    def _record_dtype(self) -> np.dtype:
        return checkpoint_dtype(self.layout)

    def export_records(self, rows: np.ndarray | Sequence[int]) -> bytes:
        """The checkpoint records of ``rows``, concatenated (``record_bytes`` each)."""
        rows = np.asarray(rows, dtype=np.int64)
        records = np.empty(rows.size, dtype=self._record_dtype)
        records["state"] = self.state[rows]
        for name, _ in _SIDECAR_FIELDS:
            records[name] = getattr(self, name)[rows]
        return records.tobytes()

    def encode_record(self, row: int) -> bytes:
        return self.export_records([row])

    def import_records(self, streams: Sequence[str], partition: int, data: bytes,
                       now_s: float) -> np.ndarray:
        """Loads records written by :meth:`export_records` as the states of ``streams``
        (in order), all of ``partition``; returns their rows. Known streams are overwritten.

        Raises:
            ValueError: ``data`` is not ``len(streams)`` records of this layout; nothing is
                loaded then.
        """
        expected = len(streams) * self.record_bytes
        if len(data) != expected:
            first = f"stream {streams[0]!r}" if len(streams) == 1 else f"{len(streams)} streams"
            raise ValueError(
                f"state records of {first}: expected {expected} bytes "
                f"({self.record_bytes} each, layout v{self.layout.version}), "
                f"received {len(data)}")
        records = np.frombuffer(data, dtype=self._record_dtype)
        rows = np.fromiter((self.row_for(stream, partition) for stream in streams),
                           dtype=np.int64, count=len(streams))
        self.state[rows] = records["state"]
        for name, _ in _SIDECAR_FIELDS:
            getattr(self, name)[rows] = records[name]
        self.partition[rows] = partition
        self.last_seen_s[rows] = now_s
        self.last_used[rows] = self.next_use
        self.next_use += 1
        self.dirty[rows] = False
        return rows

    def restore_record(self, stream: str, partition: int, data: bytes, now_s: float) -> int:
        """Loads a record written by :meth:`encode_record` as ``stream``'s state."""
        return int(self.import_records([stream], partition, data, now_s)[0])
