"""Pacing: a batch holds at most ``max_stream_readings`` readings of one stream.

Why: the engine scores a batch in rounds, one per reading of its busiest stream (a stream's
readings depend on each other, so they cannot share a step call), and a round of one row
costs nearly what a round of thousands does (about 0.38 ms on the 2-core development
machine: hundreds of NumPy calls on one-row arrays). Unpaced, a poll holding 5,000 readings
of one hot stream took 5,000 rounds, about 1.9 s, and every other stream's reading in that
poll waited for all of them (``benchmarks/hot_stream.py``, its ``mixed_`` figures).

Paced, once a stream has ``max_stream_readings`` readings in the batch, its next reading and
every later record of *its partition* are held back, in order, for the next batch. Holding
the rest of the partition, not only the hot stream's readings, keeps what a batch applies a
contiguous prefix of each partition: the offsets a batch commits are exactly the first
held-back record's, so after a crash or a rebalance the partition is re-read from there,
and nothing after it had been applied or dead-lettered: holding back neither skips a record
nor makes one be processed twice (without relying on the per-stream "already applied"
check; what a crash between a flush and its commit replays is the worker's usual
at-least-once, as before). Other partitions' readings are scored without waiting for the
hot stream's backlog.

What pacing does not change: a stream's own readings are still scored one round each, so
one stream is scored at most at the round rate (about 2,600 readings/s here); a partition
whose hot stream produces faster than that falls behind, and its lag
(``cellwatch_consumer_lag_messages``, which counts held-back records) grows.

Records are held raw, parsed once when their batch comes. Readings are counted by Kafka
key: the worker dead-letters a reading whose key is not its stream id (``key_mismatch``), so
a valid reading's key is its stream; a record without a key never reaches a round and is
not counted.

The worker pauses the partitions it holds records of (the consumer fetches nothing more of
them, so the other partitions get whole polls) and resumes each once its held records are
scored; it does not wait in a poll while it holds records. A partition's held records come
from the one poll before it was paused: at most ``max_poll_records`` per partition. When a
partition is revoked, lost or rewound (restored from the changelog), its held-back records
are dropped: the consumer reads them again from the committed offset, here or at the next
owner.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streaming.ports import SourceRecord


class HeldBack:
    """The records polled but held for a later batch, and the rule that holds them.

    Args:
        max_stream_readings: readings of one stream (one Kafka key of one partition) that
            one batch may hold; the next one, and the rest of its partition, wait.
    """

    def __init__(self, max_stream_readings: int) -> None:
        if max_stream_readings < 1:
            raise ValueError(f"max_stream_readings: expected at least 1, received "
                             f"{max_stream_readings}")
        self.max_stream_readings = max_stream_readings
        self._records: list[SourceRecord] = []
        self._partitions: frozenset[int] = frozenset()  # of the held records

    def __len__(self) -> int:
        return len(self._records)

    @property
    def partitions(self) -> frozenset[int]:
        """The partitions some records of which are held."""
        return self._partitions

    def by_partition(self) -> dict[int, int]:
        """How many records are held per partition."""
        counts: dict[int, int] = {}
        for record in self._records:
            counts[record.partition] = counts.get(record.partition, 0) + 1
        return counts

    def next_batch(self, polled: Sequence[SourceRecord]) -> list[SourceRecord]:
        """The held records, then ``polled``, up to the first reading of each partition
        beyond the limit; keeps the rest (in order) for the next call."""
        pending = [*self._records, *polled] if self._records else list(polled)
        limit = self.max_stream_readings
        # Most batches hold no stream beyond the limit: one count over all keys (keys of
        # different partitions pooled, an upper bound) shows it without the walk below.
        pooled = Counter(record.key for record in pending)
        pooled.pop(None, None)
        if not pooled or max(pooled.values()) <= limit:
            self._records = []
            self._partitions = frozenset()
            return pending
        counts: dict[tuple[int, bytes], int] = {}
        paused: set[int] = set()
        batch: list[SourceRecord] = []
        held: list[SourceRecord] = []
        for record in pending:
            partition = record.partition
            if partition in paused:
                held.append(record)
                continue
            key = record.key
            if key is not None:
                seen = counts.get((partition, key), 0)
                if seen == limit:
                    paused.add(partition)
                    held.append(record)
                    continue
                counts[partition, key] = seen + 1
            batch.append(record)
        self._records = held
        self._partitions = frozenset(paused)
        return batch

    def drop(self, partitions: Iterable[int]) -> int:
        """Forgets the held records of ``partitions`` (revoked, lost or rewound: they are
        read again from the committed offset); returns how many."""
        gone = set(partitions)
        if not gone or not self._records:
            return 0
        kept = [record for record in self._records if record.partition not in gone]
        dropped = len(self._records) - len(kept)
        self._records = kept
        self._partitions = self._partitions - gone
        return dropped
