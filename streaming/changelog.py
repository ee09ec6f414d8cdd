"""Per-stream state checkpoints in a compacted changelog topic, and their restore.

The changelog is keyed by stream id and partitioned like the readings topic: the states of
the streams of readings partition ``p`` live in changelog partition ``p``, so a worker that
is assigned ``p`` restores exactly that changelog partition. Compaction keeps the newest
record of every stream; an evicted stream gets a tombstone (a record with no value).

A record's value is a 16-byte header, then the stream's checkpoint record
(:func:`streaming.state_store.checkpoint_dtype`: the detector state followed by the
bookkeeping, which includes the source offset of the last reading the state reflects)::

    magic "CWS" | format u8 | layout version u16 | channels u16 | input width u16 |
    memory u16 | CRC-32 of the readings topic's name u32

A record whose header names another state layout (a model with another shape wrote it) is
not loaded: its stream restarts its learning period, and the restore counts it. Nor is a
record written for another readings topic: its source offsets mean nothing here, and loading
it would skip readings that were never applied.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from collections.abc import Iterable

import numpy as np

from detector.state import StateLayout
from streaming.ports import RecordSink
from streaming.state_store import StateStore

CHECKPOINT_FORMAT = 1
_MAGIC = b"CWS"
_HEADER = struct.Struct("<3sBHHHHI")


def record_header(layout: StateLayout, source_topic: str) -> bytes:
    """The header every checkpoint record of ``layout`` for ``source_topic`` starts with."""
    return _HEADER.pack(_MAGIC, CHECKPOINT_FORMAT, layout.version, layout.channels,
                        layout.input_width, layout.memory_units,
                        zlib.crc32(source_topic.encode()))


@dataclasses.dataclass(frozen=True)
class CheckpointWrite:
    """What one checkpoint sent to the changelog."""

    records: int
    tombstones: int
    bytes: int


@dataclasses.dataclass(frozen=True)
class RestoreResult:
    """What a restore read and loaded."""

    records_read: int
    streams_restored: int
    incompatible: int  # records of another state layout or readings topic, not loaded
    first_incompatible: str | None = None  # the header of the first one, in words


class ChangelogWriter:
    """Sends the states of changed streams to the changelog through the worker's sink.

    The caller flushes the sink afterwards: a checkpoint is complete only once the broker has
    acknowledged its records, and only then may the offsets it covers be committed.

    Args:
        topic: the changelog topic.
        sink: the worker's record sink (the same one as its outputs, so one flush covers both).
        source_topic: the readings topic whose offsets the records carry.
    """

    def __init__(self, topic: str, sink: RecordSink, source_topic: str) -> None:
        self.topic = topic
        self.sink = sink
        self.source_topic = source_topic

    def write(self, store: StateStore, rows: np.ndarray,
              tombstones: Iterable[tuple[bytes, int]] = ()) -> CheckpointWrite:
        """Sends the records of ``rows`` and a tombstone per ``(key, partition)``."""
        send, topic = self.sink.send, self.topic
        # Tombstones first: a stream evicted and seen again since must keep its new state.
        dead = 0
        for key, partition in tombstones:
            send(topic, key, None, partition=partition)
            dead += 1
        header = record_header(store.layout, self.source_topic)
        size = store.record_bytes
        blob = store.export_records(rows)
        written = 0
        for index, row in enumerate(rows.tolist()):
            value = header + blob[index * size:(index + 1) * size]
            send(topic, store.stream_of(row).encode(), value,
                 partition=int(store.partition[row]))
            written += len(value)
        return CheckpointWrite(records=len(rows), tombstones=dead, bytes=written)


def restore_states(store: StateStore, records: Iterable[tuple[int, bytes, bytes | None]],
                   source_topic: str, now_s: float) -> RestoreResult:
    """Loads the newest record of every stream from changelog ``records``.

    Args:
        store: where the states go; a stream already held is overwritten.
        source_topic: the readings topic the states must have been written for.
        records: ``(partition, key, value)`` in changelog order; ``value`` None is a
            tombstone (the stream was evicted: the newest record wins, so it stays away).
        now_s: the eviction clock of the restored streams.
    """
    newest: dict[tuple[int, bytes], bytes | None] = {}
    read = 0
    for partition, key, value in records:
        newest[(partition, key)] = value
        read += 1
    header = record_header(store.layout, source_topic)
    expected = len(header) + store.record_bytes
    by_partition: dict[int, tuple[list[str], list[bytes]]] = {}
    incompatible = 0
    first_incompatible = None
    for (partition, key), value in newest.items():
        if value is None:
            continue
        if len(value) != expected or not value.startswith(header):
            incompatible += 1
            if first_incompatible is None:
                first_incompatible = (f"stream {key.decode('utf-8', 'replace')!r}: "
                                      f"{describe_header(value)}, {len(value)} bytes")
            continue
        streams, blobs = by_partition.setdefault(partition, ([], []))
        streams.append(key.decode("utf-8", "replace"))
        blobs.append(value[len(header):])
    restored = 0
    for partition, (streams, blobs) in by_partition.items():
        restored += store.import_records(streams, partition, b"".join(blobs), now_s).size
    return RestoreResult(records_read=read, streams_restored=restored,
                         incompatible=incompatible, first_incompatible=first_incompatible)


def describe_header(value: bytes) -> str:
    """A checkpoint record's header in words (for messages about incompatible records)."""
    if len(value) < _HEADER.size or not value.startswith(_MAGIC):
        return "not a cellwatch checkpoint record"
    _, fmt, version, channels, width, memory, topic_crc = _HEADER.unpack_from(value)
    return (f"format {fmt}, layout v{version} ({channels} channels, input width {width}, "
            f"{memory} memory units), readings topic CRC-32 {topic_crc:08x}")

