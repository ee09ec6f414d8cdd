"""The worker's ports: where readings come from, where records go, who hears of rebalances.

Adapters: :mod:`streaming.kafka_io` for Kafka; unit tests use in-memory fakes of the same
shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol


class SourceRecord(Protocol):
    """One consumed message (kafka-python's ``ConsumerRecord`` has this shape)."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # broker or producer timestamp, epoch ms
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


class PartitionListener(Protocol):
    """Told about partitions gained and given up, between batches."""

    def on_assigned(self, partitions: Sequence[int]) -> None: ...

    def on_revoked(self, partitions: Sequence[int]) -> None: ...

    def on_lost(self, partitions: Sequence[int]) -> None: ...


class ReadingSource(Protocol):
    """A consumer-group subscription to the readings topic."""

    def poll(self, timeout_ms: int, max_records: int) -> list[SourceRecord]: ...

    def commit(self, next_offsets: Mapping[int, int]) -> None:
        """Commits, per partition, the offset of the next record to read."""

    def lag(self) -> dict[int, int]:
        """Per assigned partition, records behind the partition's end (when known)."""

    def close(self) -> None: ...


class RecordSink(Protocol):
    """Publishes output records; :meth:`flush` returns only when all are acknowledged."""

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             headers: Sequence[tuple[str, bytes]] = (), partition: int | None = None) -> None:
        """Queues one record; ``partition`` None lets the key choose it."""

    def flush(self) -> None:
        """Waits for every record sent so far; raises :class:`OutputError` if any failed."""

    def close(self) -> None: ...


class OutputError(RuntimeError):
    """Output records could not be delivered; their inputs must not be committed."""
