"""The worker's checkpoint sequence: what is pending since the last checkpoint, and writing it.

Between checkpoints the worker notes, per readings partition, the next offset it processed
(outputs acknowledged) and the streams it evicted. A checkpoint first checks that the
changelog can take it (exists, one partition per readings partition, compacted: a changelog
deleted while the worker runs is auto-created by the broker with one partition and
deletion by age, and sending into it blocks the producer or loses the states later), then
sends the changed states and the tombstones, waits for the broker's acknowledgement, and
only then hands back the offsets it covers, to be committed. A checkpoint that fails hands
back nothing: the worker aborts (see :meth:`streaming.worker.Worker.run`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from streaming.changelog import ChangelogWriter, RestoreResult
from streaming.metrics import WorkerMetrics
from streaming.ports import OutputError, RecordSink, TopicSetupError
from streaming.state_store import StateStore

log = logging.getLogger(__name__)


class Checkpoints(ChangelogWriter):
    """Pending offsets and tombstones, and the checkpoints that write them.

    Args:
        topic: the changelog topic.
        sink: the worker's record sink (outputs and checkpoint records, one flush).
        source_topic: the readings topic.
        metrics: checkpoint durations, sizes and failures.
        check_topic: raises :class:`TopicSetupError` when the changelog is missing or has
            the wrong shape; called before every checkpoint and after a failed one.
    """

    def __init__(self, topic: str, sink: RecordSink, source_topic: str,
                 metrics: WorkerMetrics, check_topic: Callable[[], None] | None = None
                 ) -> None:
        super().__init__(topic, sink, source_topic)
        self.metrics = metrics
        self.check_topic = check_topic
        self.uncommitted: dict[int, int] = {}  # partition -> next offset, processed
        self.tombstones: list[tuple[bytes, int]] = []  # evicted since the last checkpoint

    def processed(self, next_offsets: Mapping[int, int]) -> None:
        """A batch's outputs were acknowledged: its offsets wait for the next checkpoint."""
        for partition, offset in next_offsets.items():
            self.uncommitted[partition] = max(self.uncommitted.get(partition, 0), offset)

    def evicted(self, keys: Iterable[tuple[bytes, int]]) -> None:
        self.tombstones.extend(keys)

    def forget(self, partitions: Sequence[int]) -> None:
        """Drops what is pending for partitions this worker no longer owns."""
        gone = set(partitions)
        for partition in gone:
            self.uncommitted.pop(partition, None)
        self.tombstones = [t for t in self.tombstones if t[1] not in gone]

    def discard(self) -> None:
        """Drops everything pending (an abort: none of it may be committed)."""
        self.uncommitted.clear()
        self.tombstones.clear()

    def checkpoint(self, store: StateStore, partitions: Sequence[int] | None
                   ) -> dict[int, int]:
        """Writes the changed states (of ``partitions``, or all) and the pending tombstones,
        waits for their acknowledgement, and returns the offsets now safe to commit.

        Raises:
            TopicSetupError: the changelog is missing or has the wrong shape (nothing sent).
            OutputError: the checkpoint was not acknowledged.
        """
        started = time.perf_counter()
        if partitions is None:
            # The loop's checkpoints only: a revoke runs on the consumer's IO thread, where
            # the check's requests could stall the rebalance; the loop checked at most one
            # checkpoint interval ago.
            self.check(None)
        if partitions is None:
            rows = store.take_dirty()
            tombstones, self.tombstones = self.tombstones, []
            covered = list(self.uncommitted)
        else:
            wanted = set(partitions)
            rows = np.concatenate([store.take_dirty(p) for p in sorted(wanted)] or
                                  [np.empty(0, np.int64)])
            tombstones = [t for t in self.tombstones if t[1] in wanted]
            self.tombstones = [t for t in self.tombstones if t[1] not in wanted]
            covered = [p for p in self.uncommitted if p in wanted]
        try:
            written = self.write(store, rows, tombstones)
            self.sink.flush()
        except OutputError as error:
            self.metrics.record_checkpoint_failure()
            self.check(error)  # a clearer error when the topic is to blame
            raise
        offsets = {p: self.uncommitted.pop(p) for p in covered}
        self.metrics.observe_checkpoint(time.perf_counter() - started,
                                        written.records + written.tombstones, written.bytes)
        if written.records or written.tombstones:
            log.debug("checkpoint: %d states, %d tombstones, %d bytes", written.records,
                      written.tombstones, written.bytes)
        return offsets

    def check(self, failure: OutputError | None) -> None:
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
