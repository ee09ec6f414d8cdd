"""The worker's ports: where readings come from, where records go, who hears of rebalances.

Adapters: :mod:`streaming.kafka_io` (kafka-python) and :mod:`streaming.confluent_io`
(confluent-kafka) for Kafka, chosen by ``kafka.client`` (:mod:`cellwatch.kafka_clients`);
unit tests use in-memory fakes of the same shape.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol


class SourceRecord(Protocol):
    """One consumed message (kafka-python's ``ConsumerRecord`` has this shape; confluent's
    messages are copied into :class:`streaming.confluent_io.ConfluentRecord`)."""

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

    def on_revoked(self, partitions: Sequence[int]) -> Mapping[int, int]:
        """Returns, per revoked partition, the offset the source must commit before the
        partition goes (the next record to read); empty when nothing is left to commit."""

    def on_lost(self, partitions: Sequence[int]) -> None: ...


class ReadingSource(Protocol):
    """A consumer-group subscription to the readings topic."""

    def poll(self, timeout_ms: int, max_records: int) -> list[SourceRecord]: ...

    def commit(self, next_offsets: Mapping[int, int]) -> None:
        """Commits, per partition, the offset of the next record to read."""

    def lag(self) -> dict[int, int]:
        """Per assigned partition, records behind the partition's end (when known)."""

    def group_metadata(self) -> object:
        """The consumer group's identity and generation, for transactional offset commits."""

    def rewind(self, partitions: Sequence[int]) -> None:
        """Moves the position of ``partitions`` back to the group's committed offsets (their
        start when nothing is committed): the next polls re-read from there."""

    def pause(self, partitions: Sequence[int]) -> None:
        """Fetches nothing more of ``partitions`` until :meth:`resume` (the worker holds
        records of them back, :mod:`streaming.pacing`); partitions not assigned are ignored.
        A rebalance that assigns a partition anew resumes it."""

    def resume(self, partitions: Sequence[int]) -> None:
        """Fetches ``partitions`` again, from their positions; not assigned ones are ignored."""

    def close(self) -> None: ...


class ChangelogReader(Protocol):
    """Reads the state changelog for a restore."""

    def read(self, partitions: Sequence[int]) -> Iterator[tuple[int, bytes, bytes | None]]:
        """Every ``(partition, key, value)`` of ``partitions`` from the start up to their
        end at the time of the call, in order; ``value`` None is a tombstone."""

    def close(self) -> None: ...


class RecordSink(Protocol):
    """Publishes output records; :meth:`flush` returns only when all are acknowledged."""

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             headers: Sequence[tuple[str, bytes]] = (), partition: int | None = None,
             best_effort: bool = False) -> None:
        """Queues one record; ``partition`` None lets the key choose it. A ``best_effort``
        record (a dead letter) that the broker refuses for good (too large or invalid for its
        topic) is dropped by :meth:`flush` instead of failing it: retrying could never
        deliver it, and failing would stop the worker on the same record after every
        restart."""

    def flush(self) -> int:
        """Waits for every record sent so far; raises :class:`OutputError` if any failed,
        except best-effort records refused for good: returns how many of those it dropped."""

    @property
    def transactional(self) -> bool:
        """True when records go out in transactions that also commit the input offsets."""

    def commit_transaction(self, topic: str, next_offsets: Mapping[int, int],
                           group_metadata: object) -> None:
        """Commits the open transaction together with the consumer offsets of ``topic``
        (only for a transactional sink); raises :class:`OutputError` on failure."""

    def abort_transaction(self) -> None:
        """Discards the open transaction, if any (only for a transactional sink)."""

    def close(self) -> None: ...


class OutputError(RuntimeError):
    """Output records could not be delivered; their inputs must not be committed."""


class TopicSetupError(RuntimeError):
    """A topic the worker needs is missing and cannot be created, or exists with settings
    the worker cannot work with; the message names the topic, the setting, what was
    expected and what was found."""
