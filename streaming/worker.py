"""The streaming worker: consume readings, score them per stream, publish, commit.

One loop, one batch at a time:

1. poll up to ``max_poll_records`` readings;
2. validate, score and publish them (:mod:`streaming.batches`): a bad message goes to the
   dead-letter topic (:mod:`streaming.dead_letters`), the good ones are scored by the
   :class:`~streaming.engine.ScoringEngine`, one score record per reading and one event per
   closed anomaly episode are published, and the broker acknowledges every output record;
3. beyond ``max_streams`` streams, evict the least recently used (tombstones follow);
4. without a changelog, commit the batch's offsets now (at-least-once: a crash before the
   commit replays the batch, and its records, keyed and built deterministically, are
   reproduced identically);
5. with a changelog (:mod:`streaming.checkpoints`), every ``checkpoint_interval_s``: send the
   states of the streams changed since the last checkpoint, wait for their acknowledgement,
   and only then commit the offsets the checkpoint covers. The committed offset is therefore
   never ahead of the checkpointed states: after a crash the states are restored from the
   changelog, and the readings between the committed offset and a state's recorded offset
   are skipped (already applied, their outputs already acknowledged), so no reading is
   applied twice and none is lost.

Rebalances (kafka-python runs the listener callbacks on its IO thread while the worker's
thread waits in ``poll`` or ``close``; the worker never holds its lock across a blocking
consumer call, which would need that thread): a revoked partition is checkpointed and its
offsets committed before it goes; its states stay until the next assignment shows whether it
came back (an eager rebalance revokes everything and often hands the same partitions back) or
went elsewhere (then they are dropped). A lost partition (this member was evicted from the
group) is dropped without writing anything: another member may already own it. A newly
assigned partition is restored from the changelog before any of its readings is processed.

Transactions (``sink.transactional``): outputs, checkpoint records and the consumer offsets
of a checkpoint interval are committed in one Kafka transaction, so consumers reading with
``isolation_level=read_committed`` see every output exactly once. A rebalance aborts the open
transaction (its offsets can no longer be committed under the ending generation) and every
partition the worker keeps or gets is restored from the committed changelog.

Model reload: :meth:`Worker.offer_model` hands over a new model (loaded elsewhere); it
replaces the current one between batches. When the state layout is the same the streams keep
their states, otherwise every stream starts its learning period again (a warning, and
``cellwatch_model_reloads_total{outcome="reset_state"}``).

Error policy:

* a bad message never stops the worker: it is dead-lettered and counted by reason; a dead
  letter always fits its topic, and one the broker still refuses for good is dropped and
  counted (stopping would fail again on the same message after every restart);
* output records that cannot be delivered (after the producer's own retries) stop the worker
  *without* committing, so a restarted worker scores those readings again (exit code 3);
* a failed offset commit (the group rebalanced meanwhile) is logged and the loop continues:
  the next owner of the partition re-reads from the last commit, and consumers deduplicate by
  key;
* a checkpoint that cannot be delivered stops the worker like an output failure (exit 3):
  its offsets are not committed, so a restarted worker restores the previous checkpoint and
  replays from there; a changelog that is gone or has the wrong shape stops it before the
  checkpoint is sent (:class:`~streaming.ports.TopicSetupError`, exit code 6);
* anything else is a bug and propagates.

Whatever stops the loop, the work not yet committed is aborted first (:meth:`Worker._abort`):
the states are dropped and nothing more is checkpointed or committed, since states advanced
by unacknowledged outputs, once checkpointed (closing the consumer revokes its partitions,
which checkpoints them), would make a restart skip those readings as already applied. The
probes fail from that moment.

SIGTERM and SIGINT set the stop event: the batch in hand is finished, flushed and committed,
checkpointed (with a changelog), then the consumer leaves the group and :meth:`Worker.run`
returns.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from streaming.batches import observe_batch, publish_batch
from streaming.changelog import restore_states
from streaming.checkpoints import Checkpoints, report_restore
from streaming.dead_letters import DEFAULT_TOPIC_MAX_BYTES, dead_letter_headers
from streaming.engine import ScoringEngine
from streaming.messages import EARLIEST_TS_MS, ReadingParser
from streaming.metrics import WorkerMetrics, state_layout_label
from streaming.model_reload import ModelInfo, swapped_engine
from streaming.ports import (
    ChangelogReader,
    OutputError,
    ReadingSource,
    RecordSink,
    SourceRecord,
    TopicSetupError,
)
from streaming.state_store import StateStore

log = logging.getLogger(__name__)

__all__ = ["ModelInfo", "Worker", "WorkerConfig", "dead_letter_headers"]


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """What the worker needs to know besides its model and its connections."""

    readings_topic: str
    scores_topic: str
    anomalies_topic: str
    dead_letter_topic: str
    max_poll_records: int = 5000
    poll_timeout_ms: int = 200
    max_message_bytes: int = 65_536
    idle_eviction_s: float = 86_400.0
    episode_gap: int = 3
    maintenance_interval_s: float = 5.0
    # True when the output topics have the readings topic's partition count, so each output
    # record can go to its reading's partition number.
    co_partitioned: bool = False
    liveness_timeout_s: float = 120.0
    # The compacted state changelog; None: states live in memory only, offsets are committed
    # after every batch, and a restarted worker starts every stream's learning period again.
    changelog_topic: str | None = None
    checkpoint_interval_s: float = 10.0
    # The dead-letter topic's max.message.bytes: every dead letter is cut to fit it.
    dead_letter_max_bytes: int = DEFAULT_TOPIC_MAX_BYTES
    # Readings stamped further ahead of the wall clock are rejected as "future".
    max_future_s: float = 3600.0
    # Readings with a channel value of larger magnitude are rejected as "out_of_range".
    max_abs_value: float = 1e15
    # Longer stream ids (in UTF-8 bytes) are rejected as "stream_id_too_long".
    max_stream_id_bytes: int = 256
    # Streams held at most; beyond it the least recently seen are evicted (0: no limit).
    max_streams: int = 0


class Worker:
    """Scores one consumer's share of the readings topic.

    Args:
        config: topics and limits.
        model: the step and its identity.
        sink: where output records (and checkpoint records) go.
        metrics: the worker's metrics (registry injected by the caller).
        changelog: reads the state changelog for restores; required with
            ``config.changelog_topic``.
        clock: wall clock in seconds; injectable for tests.
        changelog_check: called before every checkpoint and after a failed one; raises
            :class:`TopicSetupError` when the changelog is gone or no longer has the shape
            the checkpoints need (then the worker stops instead of writing into it).
    """

    def __init__(self, config: WorkerConfig, model: ModelInfo, sink: RecordSink,
                 metrics: WorkerMetrics, changelog: ChangelogReader | None = None,
                 clock=time.time, changelog_check: Callable[[], None] | None = None) -> None:
        if (config.changelog_topic is None) != (changelog is None):
            raise ValueError("a changelog topic and a changelog reader go together")
        if sink.transactional and config.changelog_topic is None:
            raise ValueError("transactional outputs need the state changelog")
        self.config = config
        self.model = model
        self.sink = sink
        self.metrics = metrics
        self.clock = clock
        self.store = StateStore(model.step.layout)
        self.engine = ScoringEngine(model.step, self.store, model.channels, model.version,
                                    config.episode_gap, clock=clock)
        self.parser = ReadingParser(model.channels, config.max_message_bytes,
                                    max_abs_value=config.max_abs_value,
                                    max_stream_id_bytes=config.max_stream_id_bytes,
                                    earliest_ts_ms=EARLIEST_TS_MS)
        self.source: ReadingSource | None = None
        self.changelog = changelog
        self.checkpoints = (Checkpoints(config.changelog_topic, sink, config.readings_topic,
                                        metrics, changelog_check)
                            if config.changelog_topic is not None else None)
        self._assigned: set[int] = set()
        self._revoked: set[int] = set()  # revoked, states kept until the next assignment
        self._to_restore: set[int] = set()
        self._failure: BaseException | None = None  # raised in a callback, re-raised by run
        # Set once outputs or a checkpoint failed: from then on nothing is checkpointed nor
        # committed (states advanced by unacknowledged outputs must never reach the changelog:
        # a restart would skip their readings as applied), and the worker is stopping.
        self._aborted = False
        self._fatal: BaseException | None = None  # what stopped the loop (liveness fails)
        self._offered_model: ModelInfo | None = None
        self._joined = False
        self._heartbeat = time.monotonic()
        self._next_maintenance = 0.0
        self._next_checkpoint = time.monotonic() + config.checkpoint_interval_s
        # Rebalance callbacks arrive on the consumer's IO thread, usually while this worker's
        # thread waits in poll() but not only then: the lock guards the state they share,
        # and no blocking consumer call is made while holding it (that call would need the
        # IO thread, which may be waiting for the lock).
        self._lock = threading.Lock()
        metrics.set_model(model.version, model.trained_at, model.trained_at_s,
                          state_layout_label(model.step.layout))

    # Partition listener -------------------------------------------------------------------

    def on_assigned(self, partitions: Sequence[int]) -> None:
        with self._lock:
            # Partitions revoked by the rebalance but not given back went to another member.
            gone = sorted(self._revoked - set(partitions))
            held = self._assigned | self._revoked
            self._revoked.clear()
        if gone:
            self._drop(gone, "revoked")
        with self._lock:
            if self.checkpoints is not None:
                self._to_restore.update(set(partitions) - held)
            self._assigned.update(partitions)
            self._joined = True
            self.metrics.set_assigned_partitions(len(self._assigned))
            self.metrics.record_rebalance("assigned")
        log.info("assigned partitions %s", list(partitions))

    def on_revoked(self, partitions: Sequence[int]) -> Mapping[int, int]:
        # An eager rebalance revokes every partition and often hands the same ones back:
        # checkpoint them (their states then equal the changelog) and keep the states until
        # the assignment says.
        to_commit: Mapping[int, int] = {}
        with self._lock:
            try:
                if self.sink.transactional:
                    self._abort_transaction(partitions)
                else:
                    self._revoked.update(partitions)
                    # After a failure (the worker is closing its consumer on the way out) the
                    # states may hold readings whose outputs were never acknowledged.
                    if (self.checkpoints is not None and self._failure is None
                            and not self._aborted):
                        to_commit = self._checkpoint(partitions)
            except (OutputError, TopicSetupError) as error:
                # Raising here would only reach kafka-python's logger; the loop re-raises it.
                self._failure = error
                to_commit = {}
            self._assigned.difference_update(partitions)
            self._to_restore.difference_update(partitions)
            self.metrics.set_assigned_partitions(len(self._assigned))
            self.metrics.record_rebalance("revoked")
        log.info("revoked partitions %s", list(partitions))
        return to_commit

    def _abort_transaction(self, revoked: Sequence[int]) -> None:
        """Transactions: the group is rebalancing, so the open transaction cannot commit its
        offsets (the generation it would name is ending). Abort it and forget everything it
        covered: every state held is then ahead of the committed changelog, so the partitions
        kept are restored again, like the ones assigned later. Caller holds the lock."""
        self.sink.abort_transaction()
        dropped = self.store.rows_in_use()
        self.store.release(dropped)
        assert self.checkpoints is not None  # transactions need the changelog
        self.checkpoints.discard()
        self._revoked.clear()
        kept = self._assigned - set(revoked)
        self._to_restore = set(kept)
        for partition in revoked:
            self.metrics.forget_partition(self.config.readings_topic, partition)
        log.info("rebalance: open transaction (if any) aborted, %d stream states dropped; "
                 "partitions %s are restored from the changelog", dropped.size, sorted(kept))

    def on_lost(self, partitions: Sequence[int]) -> None:
        # Lost means another member may already own them: never write or keep their states.
        if self.sink.transactional:
            # The open transaction holds outputs of the lost partitions: it must not commit.
            with self._lock:
                try:
                    self._abort_transaction(partitions)
                except OutputError as error:
                    self._failure = error
        with self._lock:
            self._revoked.difference_update(partitions)
        self._drop(partitions, "lost")

    def _drop(self, partitions: Sequence[int], kind: str) -> None:
        with self._lock:
            dropped = 0
            for partition in partitions:
                rows = self.store.rows_of_partition(partition)
                self.store.release(rows)
                dropped += rows.size
                self._assigned.discard(partition)
                self._to_restore.discard(partition)
                self.metrics.forget_partition(self.config.readings_topic, partition)
            if self.checkpoints is not None:
                self.checkpoints.forget(partitions)
            self.metrics.set_assigned_partitions(len(self._assigned))
            if kind == "lost":
                self.metrics.record_rebalance(kind)
        log.info("%s partitions %s; dropped %d stream states", kind, list(partitions), dropped)

    # Probes -------------------------------------------------------------------------------

    def liveness(self) -> tuple[bool, str]:
        if self._fatal is not None:
            return False, f"stopping after a fatal error: {self._fatal}"
        silent = time.monotonic() - self._heartbeat
        if silent > self.config.liveness_timeout_s:
            return False, f"main loop silent for {silent:.0f} s"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        if self._fatal is not None:
            return False, f"stopping after a fatal error: {self._fatal}"
        if not self._joined:
            return False, "not yet part of the consumer group"
        if self._to_restore:
            return False, f"restoring partitions {sorted(self._to_restore)}"
        return True, "ok"

    # The loop -----------------------------------------------------------------------------

    def run(self, source: ReadingSource, stop: threading.Event) -> None:
        """Consumes until ``stop`` is set; the source is closed on the way out."""
        self.source = source
        clean = False
        try:
            while not stop.is_set():
                records = source.poll(self.config.poll_timeout_ms, self.config.max_poll_records)
                self._heartbeat = time.monotonic()
                self._raise_failure()
                self.swap_offered_model()
                records = self.restore_assigned(records)
                if records:
                    self.process(records)
                if time.monotonic() >= self._next_checkpoint:
                    self.checkpoint()
                self._maintain()
            clean = True
        except BaseException as error:
            # Unhealthy at once (probes fail while the consumer and producer close), and what
            # the failed batch advanced is discarded before the close revokes partitions.
            self._fatal = error
            with self._lock:
                self._abort("the worker is stopping after an error")
            raise
        finally:
            try:
                if clean:
                    self.checkpoint()
            finally:
                source.close()  # leaves the group: on_revoked runs (nothing left to write)
                self.sink.close()
            if clean:
                self._raise_failure()

    def process(self, records: Sequence[SourceRecord]) -> None:
        """Scores and publishes one batch; commits it too when there is no changelog."""
        started = time.monotonic()
        with self._lock:
            if self._aborted:
                raise RuntimeError("process() after the worker aborted its uncommitted work")
            try:
                batch = publish_batch(records, self.parser, self.engine, self.sink,
                                      self.config, self.clock)
            except BaseException:
                # The states this batch advanced have outputs that were never acknowledged.
                self._abort("outputs of a batch were not acknowledged")
                raise
            if self.checkpoints is not None:
                self.checkpoints.processed(batch.next_offsets)
            evicted = self._evict_beyond_capacity()
        if self.checkpoints is None:
            self._commit_offsets(batch.next_offsets)
        observe_batch(self.metrics, records, batch, evicted, started)

    def _evict_beyond_capacity(self) -> int:
        """Evicts the least recently seen streams beyond ``max_streams`` (their changelog
        records get tombstones); returns how many. Caller holds the lock."""
        if not self.config.max_streams or len(self.store) <= self.config.max_streams:
            return 0
        evicted = self.engine.evict_least_recent(self.config.max_streams)
        if self.checkpoints is not None:
            self.checkpoints.evicted(evicted)
        return len(evicted)

    def _abort(self, why: str) -> None:
        """Discards everything not yet committed: the states (they may hold readings whose
        outputs were never acknowledged), the offsets and tombstones waiting for a
        checkpoint, and an open transaction. Nothing is checkpointed or committed after
        this; the worker is stopping, and its partitions' next owner (or its own restart)
        restores the last checkpoint and replays from the committed offsets. Caller holds
        the lock."""
        if self._aborted:
            return
        self._aborted = True
        dropped = self.store.rows_in_use()
        self.store.release(dropped)
        if self.checkpoints is not None:
            self.checkpoints.discard()
        if self.sink.transactional:
            try:
                self.sink.abort_transaction()
            except OutputError as error:  # the broker aborts it anyway once we are gone
                log.warning("open transaction not aborted: %s", error)
        log.error("%s: %d stream states and the offsets since the last checkpoint are "
                  "discarded, nothing more is checkpointed or committed", why, dropped.size)

    def _commit_offsets(self, next_offsets: Mapping[int, int]) -> None:
        """Commits through the consumer. Never with the lock held: the commit needs the
        consumer's IO thread, which may be waiting for the lock in a rebalance callback."""
        if self.source is None or not next_offsets or self._aborted:
            return
        try:
            self.source.commit(next_offsets)
        except Exception as error:  # kafka-python raises several types for a lost generation
            log.warning("offset commit failed (%s); the partition's next owner re-reads from "
                        "the last commit and reproduces identical records", error)

    def _commit_transaction(self, next_offsets: Mapping[int, int]) -> None:
        """Commits outputs, states and offsets together (the producer's IO thread does the
        work, so the lock may be held); a failure is an OutputError."""
        if self.source is not None:
            self.sink.commit_transaction(self.config.readings_topic, next_offsets,
                                         self.source.group_metadata())

    # Checkpoints and restores -------------------------------------------------------------

    def checkpoint(self) -> None:
        """Checkpoints every changed stream, then commits the offsets it covers."""
        self._next_checkpoint = time.monotonic() + self.config.checkpoint_interval_s
        if self.checkpoints is None:
            return
        with self._lock:
            offsets = self._checkpoint(None)
            if self.sink.transactional and not self._aborted:
                try:
                    self._commit_transaction(offsets)
                except OutputError:
                    self._abort("a transaction was not committed")
                    raise
                return
        self._commit_offsets(offsets)

    def _checkpoint(self, partitions: Sequence[int] | None) -> dict[int, int]:
        """Writes the changed states (of ``partitions``, or all) and waits for their
        acknowledgement; returns the offsets now safe to commit. A failure aborts the
        uncommitted work: the states were taken as written. Caller holds the lock."""
        assert self.checkpoints is not None
        if self._aborted:
            return {}
        try:
            return self.checkpoints.checkpoint(self.store, partitions)
        except (OutputError, TopicSetupError):
            self._abort("a checkpoint failed")
            raise

    def restore_assigned(self, records: Sequence[SourceRecord] = ()) -> Sequence[SourceRecord]:
        """Rebuilds the states of newly assigned partitions from the changelog and moves
        their consumption back to the committed offsets; returns ``records`` without those
        partitions' records (re-read after the rewind). The loop calls it after every poll,
        before processing what the poll returned."""
        with self._lock:
            if not self._to_restore or self.changelog is None:
                return records
            partitions = sorted(self._to_restore)
            started = time.perf_counter()
            result = restore_states(self.store, self.changelog.read(partitions),
                                    self.config.readings_topic, self.clock())
            self._to_restore.clear()
        # The restored states reflect at least everything before the committed offsets;
        # replaying from there is safe (what they reflect is skipped), and a position left
        # further on would skip readings the states never saw (after an abort). Outside the
        # lock: the consumer call needs its IO thread, which may be waiting for the lock.
        if self.source is not None:
            self.source.rewind(partitions)
        report_restore(self.metrics, result, partitions, time.perf_counter() - started)
        self.metrics.set_streams(len(self.store), self.store.nbytes)
        restored = set(partitions)
        return [record for record in records if record.partition not in restored]

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    # Model reload -------------------------------------------------------------------------

    def offer_model(self, model: ModelInfo) -> None:
        """Hands over a new model; it replaces the current one before the next batch.
        Safe to call from any thread."""
        with self._lock:
            self._offered_model = model

    def swap_offered_model(self) -> None:
        """Serves the offered model, if any (the loop calls it between batches)."""
        with self._lock:
            model, self._offered_model = self._offered_model, None
            if model is None:
                return
            engine = swapped_engine(self.model, model, self.store, self.config.episode_gap,
                                    self.clock, self.metrics)
            if engine is not None:
                self.engine, self.model = engine, model

    # Housekeeping -------------------------------------------------------------------------

    def _maintain(self) -> None:
        now = time.monotonic()
        if now < self._next_maintenance:
            return
        self._next_maintenance = now + self.config.maintenance_interval_s
        with self._lock:
            evicted = self.engine.evict_idle(self.config.idle_eviction_s)
            if evicted:
                if self.checkpoints is not None:
                    self.checkpoints.evicted(evicted)
                self.metrics.record_evictions(len(evicted))
                log.info("evicted %d idle streams", len(evicted))
            self.metrics.set_streams(len(self.store), self.store.nbytes)
        if self.source is not None:
            for partition, lag in self.source.lag().items():
                self.metrics.set_lag(self.config.readings_topic, partition, lag)
