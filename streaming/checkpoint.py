"""What the worker has not committed yet, and the one sequence that commits it.

Quix Streams' ``Checkpoint`` is the model: one object owns everything uncommitted and is the
only code that commits it, so each durability rule has one owner.

What is uncommitted: per readings partition, the next offset after the readings whose
outputs the broker acknowledged (:meth:`Checkpoint.processed`); the streams evicted since the
last commit (their tombstones, :meth:`Checkpoint.evicted`); and, in the state store, the
streams whose states changed (their dirty flags).

The commit sequence (:meth:`Checkpoint.commit`), in this order and no other:

1. take what changed: the dirty states, the pending tombstones and the offsets they cover
   (of every partition, or only of the partitions a rebalance revokes);
2. write the states and the tombstones to the changelog, through the same sink as the
   outputs (after checking that the changelog can take them: a changelog deleted while the
   worker runs is auto-created by the broker with one partition and deletion by age, and
   sending into it blocks the producer or loses the states later);
3. flush: wait until the broker acknowledged them, and every output sent before them;
4. commit the offsets the checkpoint covers, through the consumer (never with the worker's
   lock held: the commit needs the consumer's IO thread, which may be waiting for that lock
   in a rebalance callback), or, with transactions, commit the open transaction: outputs,
   states and offsets together.

So the committed offset is never ahead of the checkpointed states, and neither is ever ahead
of the acknowledged outputs. Without a changelog, steps 1-3 have nothing to do (each batch's
flush acknowledged its outputs) and the sequence runs after every batch.

The abort (:meth:`Checkpoint.abort`): once outputs or a checkpoint failed, everything
uncommitted is discarded, the states with it (they may hold readings whose outputs were never
acknowledged; checkpointed, they would make a restart skip those readings as applied), and
nothing is checkpointed or committed any more. The worker is stopping then; its partitions'
next owner (or its own restart) restores the last checkpoint and replays from the committed
offsets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from streaming.changelog import ChangelogWriter
from streaming.metrics import WorkerMetrics
from streaming.ports import OutputError, ReadingSource, RecordSink, TopicSetupError
from streaming.state_store import StateStore

log = logging.getLogger(__name__)


class Checkpoint:
    """Owns the uncommitted offsets, tombstones and states, and commits or aborts them.

    Args:
        store: the stream states (their dirty flags say which changed).
        sink: the worker's record sink (outputs and checkpoint records, one flush).
        source_topic: the readings topic, whose offsets are committed.
        metrics: checkpoint durations, sizes and failures.
        lock: the worker's lock, shared with the partition tracker (rebalance callbacks run
            on the consumer's IO thread).
        changelog: writes the states; None: states live in memory only, and the offsets of
            each batch are committed as soon as its outputs are acknowledged.
        check_topic: raises :class:`TopicSetupError` when the changelog is missing or has
            the wrong shape; called before every checkpoint of the loop and after a failed
            one.
    """

    def __init__(self, store: StateStore, sink: RecordSink, source_topic: str,
                 metrics: WorkerMetrics, lock: threading.Lock,
                 changelog: ChangelogWriter | None = None,
                 check_topic: Callable[[], None] | None = None) -> None:
        if sink.transactional and changelog is None:
            raise ValueError("transactional outputs need the state changelog")
        self.store = store
        self.sink = sink
        self.source_topic = source_topic
        self.metrics = metrics
        self.lock = lock
        self.changelog = changelog
        self.check_topic = check_topic
        self.uncommitted: dict[int, int] = {}  # partition -> next offset, outputs acknowledged
        self.tombstones: list[tuple[bytes, int]] = []  # evicted since the last checkpoint
        # Set once outputs or a checkpoint failed: from then on nothing is checkpointed nor
        # committed, and the worker is stopping.
        self.aborted = False
        # Counts the times partitions were handed back (revoked, lost, dropped): offsets whose
        # commit failed are retried only if no partition changed hands since they were taken.
        self.handovers = 0

    @property
    def durable(self) -> bool:
        """True when states are checkpointed to a changelog (and restored from it)."""
        return self.changelog is not None

    @property
    def transactional(self) -> bool:
        return self.sink.transactional

    # What is uncommitted (the caller holds the lock) -------------------------------------

    def processed(self, next_offsets: Mapping[int, int]) -> None:
        """A batch's outputs were acknowledged: its offsets wait for the next commit."""
        for partition, offset in next_offsets.items():
            self.uncommitted[partition] = max(self.uncommitted.get(partition, 0), offset)

    def evicted(self, keys: Iterable[tuple[bytes, int]]) -> None:
        """Streams evicted from the store: their tombstones go with the next checkpoint."""
        if self.durable:
            self.tombstones.extend(keys)

    def forget(self, partitions: Sequence[int]) -> None:
        """Drops what is pending for partitions this worker no longer owns."""
        gone = set(partitions)
        for partition in gone:
            self.uncommitted.pop(partition, None)
        self.tombstones = [t for t in self.tombstones if t[1] not in gone]
        self.handovers += 1

    def discard(self) -> None:
        """Drops every pending offset and tombstone (none of them may be committed)."""
        self.uncommitted.clear()
        self.tombstones.clear()
        self.handovers += 1

    # The commit sequence ----------------------------------------------------------------

    def commit(self, source: ReadingSource | None) -> None:
        """Runs the whole sequence for every partition: steps 1-3 (and 4 with transactions)
        under the lock, an offset commit after releasing it. Raises what :meth:`write` and
        :meth:`commit_transaction` raise."""
        with self.lock:
            offsets = self.write(None)
            if self.transactional:
                self.commit_transaction(source, offsets)
                return
            handovers = self.handovers
        if not self.commit_offsets(source, offsets):
            self._retry_later(offsets, handovers)

    def _retry_later(self, offsets: Mapping[int, int], handovers: int) -> None:
        """Offsets whose commit failed go back to the uncommitted ones, so the next commit
        carries them: with nothing more to read (a broker that restarted after the last
        batch), no later batch would. Not if a partition changed hands since they were taken:
        then the partitions' next owner re-reads from the last commit, and an old offset
        committed later could move the group's position back."""
        with self.lock:
            if not self.aborted and handovers == self.handovers:
                self.processed(offsets)

    def write(self, partitions: Sequence[int] | None) -> dict[int, int]:
        """Steps 1-3 for ``partitions`` (None: all): returns the offsets now safe to commit.
        The caller holds the lock.

        Raises:
            TopicSetupError: the changelog is missing or has the wrong shape (nothing sent).
            OutputError: the checkpoint was not acknowledged.
            Either aborts first: the states were taken as written.
        """
        if partitions is not None:
            self.handovers += 1  # a revoke: these partitions are being handed back
        if self.aborted:
            return {}
        if not self.durable:
            # No states to write; each batch's flush acknowledged its outputs already.
            return self._take_offsets(partitions)
        try:
            return self._write_states(partitions)
        except (OutputError, TopicSetupError):
            self.abort("a checkpoint failed")
            raise

    def _write_states(self, partitions: Sequence[int] | None) -> dict[int, int]:
        assert self.changelog is not None
        started = time.perf_counter()
        if partitions is None:
            # The loop's checkpoints only: a revoke runs on the consumer's IO thread, where
            # the check's requests could stall the rebalance; the loop checked at most one
            # checkpoint interval ago.
            self._check_changelog(None)
        # 1. Take what changed.
        if partitions is None:
            rows = self.store.take_dirty()
            tombstones, self.tombstones = self.tombstones, []
        else:
            wanted = set(partitions)
            rows = np.concatenate([self.store.take_dirty(p) for p in sorted(wanted)] or
                                  [np.empty(0, np.int64)])
            tombstones = [t for t in self.tombstones if t[1] in wanted]
            self.tombstones = [t for t in self.tombstones if t[1] not in wanted]
        try:
            # 2. Write the states and the tombstones.
            written = self.changelog.write(self.store, rows, tombstones)
            # 3. Flush: the broker acknowledges them (and the outputs before them).
            self.sink.flush()
        except OutputError as error:
            self.metrics.record_checkpoint_failure()
            self._check_changelog(error)  # a clearer error when the topic is to blame
            raise
        offsets = self._take_offsets(partitions)
        self.metrics.observe_checkpoint(time.perf_counter() - started,
                                        written.records + written.tombstones, written.bytes)
        if written.records or written.tombstones:
            log.debug("checkpoint: %d states, %d tombstones, %d bytes", written.records,
                      written.tombstones, written.bytes)
        return offsets

    def _take_offsets(self, partitions: Sequence[int] | None) -> dict[int, int]:
        covered = (list(self.uncommitted) if partitions is None
                   else [p for p in self.uncommitted if p in set(partitions)])
        return {p: self.uncommitted.pop(p) for p in covered}

    def commit_offsets(self, source: ReadingSource | None, offsets: Mapping[int, int]) -> bool:
        """Step 4 without transactions. Never with the lock held. A failed commit (the group
        rebalanced meanwhile, the coordinator is unreachable) is logged and returns False:
        :meth:`commit` retries it with the next commit unless a partition changed hands (its
        next owner re-reads from the last commit and reproduces identical records)."""
        if source is None or not offsets or self.aborted:
            return True
        try:
            source.commit(offsets)
        except Exception as error:  # kafka-python raises several types for a lost generation
            log.warning("offset commit failed (%s); retried with the next checkpoint unless "
                        "the partitions change hands, whose next owner then re-reads from the "
                        "last commit and reproduces identical records", error)
            return False
        return True

    def commit_transaction(self, source: ReadingSource | None,
                           offsets: Mapping[int, int]) -> None:
        """Step 4 with transactions: outputs, states and offsets together (the producer's IO
        thread does the work, so the lock may be held). A failure aborts, then raises
        :class:`OutputError`."""
        if source is None or self.aborted:
            return
        try:
            self.sink.commit_transaction(self.source_topic, offsets, source.group_metadata())
        except OutputError:
            self.abort("a transaction was not committed")
            raise

    def _check_changelog(self, failure: OutputError | None) -> None:
        """Raises :class:`TopicSetupError` (from ``failure``, if given) when the changelog
        cannot take checkpoints."""
        if self.check_topic is None:
            return
        try:
            self.check_topic()
        except TopicSetupError as error:
            if failure is None:
                self.metrics.record_checkpoint_failure()
            raise error from failure

    # Aborts (the caller holds the lock) -------------------------------------------------

    def abort(self, why: str) -> None:
        """Discards everything uncommitted, states included, and an open transaction;
        nothing is checkpointed or committed after this (the worker is stopping)."""
        if self.aborted:
            return
        self.aborted = True
        dropped = self.store.rows_in_use()
        self.store.release(dropped)
        self.discard()
        if self.transactional:
            try:
                self.sink.abort_transaction()
            except OutputError as error:  # the broker aborts it anyway once we are gone
                log.warning("open transaction not aborted: %s", error)
        log.error("%s: %d stream states and the offsets since the last checkpoint are "
                  "discarded, nothing more is checkpointed or committed", why, dropped.size)

    def abort_transaction(self) -> int:
        """Transactions, at a rebalance: the open transaction cannot commit its offsets (the
        generation it would name is ending). Aborts it and drops everything it covered, the
        states included (every state held is then ahead of the committed changelog); returns
        how many states were dropped. The worker goes on: the partition tracker restores the
        partitions it keeps. Raises :class:`OutputError` (nothing dropped) when the abort
        fails."""
        self.sink.abort_transaction()
        dropped = self.store.rows_in_use()
        self.store.release(dropped)
        self.discard()
        return int(dropped.size)
