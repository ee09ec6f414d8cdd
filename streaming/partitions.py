"""Which readings partitions the worker owns: assigned, revoked, lost, to restore.

The partition tracker is the consumer's partition listener. kafka-python runs its callbacks
on the consumer's IO thread while the worker's thread waits in ``poll`` or ``close``; they
take the worker's lock, and no blocking consumer call is made while holding it (that call
would need the IO thread, which may be waiting for the lock). confluent-kafka runs them on
the worker's own thread, inside ``poll`` and ``close``, where the lock is free; with its
cooperative-sticky group, a rebalance revokes only the partitions that move and assigns
only the new ones, which the rules below handle as they stand.

* **revoked**: the partition is checkpointed (:meth:`streaming.checkpoint.Checkpoint.write`)
  and its offsets handed back to the consumer to commit before it goes; its states stay
  until the next assignment shows whether it came back (an eager rebalance revokes
  everything and often hands the same partitions back) or went elsewhere (then they are
  dropped);
* **lost** (this member was evicted from the group): dropped without writing anything:
  another member may already own it;
* **assigned**: a partition new to this worker is restored from the changelog before any of
  its readings is processed (:meth:`PartitionTracker.restore`, called by the loop after
  every poll), and its consumption moves back to the committed offsets;
* with transactions, a rebalance aborts the open transaction (its offsets can no longer be
  committed under the ending generation), and every partition the worker keeps or gets is
  restored from the committed changelog.

A partition revoked, lost or rewound is *stale* for the loop until it asks
(:meth:`PartitionTracker.take_stale`): the records of it the worker still holds back
(:mod:`streaming.pacing`) are read again from the committed offset, so it drops them.

An error in a callback cannot usefully be raised there (only kafka-python's logger would see
it): it is kept, and the loop raises it (:meth:`PartitionTracker.raise_failure`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from streaming.changelog import RestoreResult, restore_states
from streaming.checkpoint import Checkpoint
from streaming.metrics import WorkerMetrics
from streaming.ports import (
    ChangelogReader,
    OutputError,
    ReadingSource,
    SourceRecord,
    TopicSetupError,
)
from streaming.state_store import StateStore

log = logging.getLogger(__name__)


class PartitionTracker:
    """Assigned, revoked and to-restore partitions; the worker's partition listener.

    Args:
        store: the stream states, dropped and restored per partition.
        checkpoint: checkpoints a revoked partition, forgets a dropped one's pending work.
        metrics: assigned partitions, rebalances, restores.
        readings_topic: the readings topic (its per-partition metrics are forgotten).
        lock: the worker's lock.
        changelog: reads the changelog for restores; None: nothing is ever restored.
        clock: wall clock in seconds (the eviction clock of restored streams).
    """

    def __init__(self, store: StateStore, checkpoint: Checkpoint, metrics: WorkerMetrics,
                 readings_topic: str, lock: threading.Lock,
                 changelog: ChangelogReader | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if checkpoint.durable != (changelog is not None):
            raise ValueError("a changelog topic and a changelog reader go together")
        self.store = store
        self.checkpoint = checkpoint
        self.metrics = metrics
        self.readings_topic = readings_topic
        self.lock = lock
        self.changelog = changelog
        self.clock = clock
        self.assigned: set[int] = set()
        self.revoked: set[int] = set()  # revoked, states kept until the next assignment
        self.to_restore: set[int] = set()
        # Revoked, lost or rewound since the loop last asked: records of them read before
        # are read again from the committed offset (streaming.pacing drops those it holds).
        self.stale: set[int] = set()
        self.joined = False
        self.failure: BaseException | None = None  # raised in a callback, re-raised by the loop

    # The listener ------------------------------------------------------------------------

    def on_assigned(self, partitions: Sequence[int]) -> None:
        with self.lock:
            # Partitions revoked by the rebalance but not given back went to another member.
            gone = sorted(self.revoked - set(partitions))
            held = self.assigned | self.revoked
            self.revoked.clear()
        if gone:
            self._drop(gone, "revoked")
        with self.lock:
            if self.changelog is not None:
                self.to_restore.update(set(partitions) - held)
            self.assigned.update(partitions)
            self.joined = True
            self.metrics.set_assigned_partitions(len(self.assigned))
            self.metrics.record_rebalance("assigned")
        log.info("assigned partitions %s", list(partitions))

    def on_revoked(self, partitions: Sequence[int]) -> Mapping[int, int]:
        # An eager rebalance revokes every partition and often hands the same ones back:
        # checkpoint them (their states then equal the changelog) and keep the states until
        # the assignment says.
        to_commit: Mapping[int, int] = {}
        with self.lock:
            try:
                if self.checkpoint.transactional:
                    self._abort_transaction(partitions)
                else:
                    self.revoked.update(partitions)
                    # After a failure (the worker is closing its consumer on the way out) the
                    # states may hold readings whose outputs were never acknowledged.
                    if (self.checkpoint.durable and self.failure is None
                            and not self.checkpoint.aborted):
                        to_commit = self.checkpoint.write(partitions)
            except (OutputError, TopicSetupError) as error:
                self.failure = error
                to_commit = {}
            self.assigned.difference_update(partitions)
            self.to_restore.difference_update(partitions)
            self.stale.update(partitions)
            self.metrics.set_assigned_partitions(len(self.assigned))
            self.metrics.record_rebalance("revoked")
        log.info("revoked partitions %s", list(partitions))
        return to_commit

    def on_lost(self, partitions: Sequence[int]) -> None:
        # Lost means another member may already own them: never write or keep their states.
        if self.checkpoint.transactional:
            # The open transaction holds outputs of the lost partitions: it must not commit.
            with self.lock:
                try:
                    self._abort_transaction(partitions)
                except OutputError as error:
                    self.failure = error
        with self.lock:
            self.revoked.difference_update(partitions)
            self.stale.update(partitions)
        self._drop(partitions, "lost")

    def _abort_transaction(self, revoked: Sequence[int]) -> None:
        """Aborts the open transaction (:meth:`Checkpoint.abort_transaction`); the partitions
        kept are restored again, like the ones assigned later. Caller holds the lock."""
        dropped = self.checkpoint.abort_transaction()
        self.revoked.clear()
        kept = self.assigned - set(revoked)
        self.to_restore = set(kept)
        for partition in revoked:
            self.metrics.forget_partition(self.readings_topic, partition)
        log.info("rebalance: open transaction (if any) aborted, %d stream states dropped; "
                 "partitions %s are restored from the changelog", dropped, sorted(kept))

    def _drop(self, partitions: Sequence[int], kind: str) -> None:
        with self.lock:
            dropped = 0
            for partition in partitions:
                rows = self.store.rows_of_partition(partition)
                self.store.release(rows)
                dropped += rows.size
                self.assigned.discard(partition)
                self.to_restore.discard(partition)
                self.metrics.forget_partition(self.readings_topic, partition)
            self.checkpoint.forget(partitions)
            self.metrics.set_assigned_partitions(len(self.assigned))
            if kind == "lost":
                self.metrics.record_rebalance(kind)
        log.info("%s partitions %s; dropped %d stream states", kind, list(partitions), dropped)

    # The loop's side ---------------------------------------------------------------------

    def raise_failure(self) -> None:
        """Raises what a callback could not (a checkpoint or an abort that failed)."""
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure

    def take_stale(self) -> set[int]:
        """The partitions revoked, lost or rewound since the last call."""
        with self.lock:
            stale, self.stale = self.stale, set()
        return stale

    def not_ready(self) -> str | None:
        """Why the worker cannot score yet, or None."""
        if not self.joined:
            return "not yet part of the consumer group"
        if self.to_restore:
            return f"restoring partitions {sorted(self.to_restore)}"
        return None

    def restore(self, source: ReadingSource | None,
                records: Sequence[SourceRecord] = ()) -> Sequence[SourceRecord]:
        """Rebuilds the states of newly assigned partitions from the changelog and moves
        their consumption back to the committed offsets; returns ``records`` without those
        partitions' records (re-read after the rewind)."""
        with self.lock:
            if not self.to_restore or self.changelog is None:
                return records
            partitions = sorted(self.to_restore)
            started = time.perf_counter()
            result = restore_states(self.store, self.changelog.read(partitions),
                                    self.readings_topic, self.clock())
            self.to_restore.clear()
            self.stale.update(partitions)
        # The restored states reflect at least everything before the committed offsets;
        # replaying from there is safe (what they reflect is skipped), and a position left
        # further on would skip readings the states never saw (after an abort). Outside the
        # lock: the consumer call needs its IO thread, which may be waiting for the lock.
        if source is not None:
            source.rewind(partitions)
        report_restore(self.metrics, result, partitions, time.perf_counter() - started)
        self.metrics.set_streams(len(self.store), self.store.nbytes)
        restored = set(partitions)
        return [record for record in records if record.partition not in restored]


def report_restore(metrics: WorkerMetrics, result: RestoreResult, partitions: Sequence[int],
                   seconds: float) -> None:
    """Logs and counts a restore of ``partitions`` that took ``seconds``."""
    metrics.observe_restore(seconds, result.records_read)
    log.info("restored %d stream states of partitions %s from %d changelog records in "
             "%.2f s", result.streams_restored, list(partitions), result.records_read, seconds)
    if result.incompatible:
        log.warning("%d changelog records were written for another state layout or "
                    "readings topic and not loaded (first: %s); those streams start their "
                    "learning period again", result.incompatible, result.first_incompatible)
