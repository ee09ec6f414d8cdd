"""The streaming worker: consume readings, score them per stream, publish, commit.

One loop, one batch at a time:

1. poll up to ``max_poll_records`` readings;
2. parse and validate each; a bad message goes to the dead-letter topic with its original
   bytes and headers naming the reason, the source topic, partition and offset;
3. score the good ones with the :class:`~streaming.engine.ScoringEngine` (vectorized across
   streams, in rounds that keep each stream's order);
4. publish one score record per reading (keyed by stream) and one event per closed anomaly
   episode, and wait until the broker acknowledged every output record;
5. without a changelog, commit the batch's offsets now (at-least-once: a crash before the
   commit replays the batch, and its records, keyed and built deterministically, are
   reproduced identically);
6. with a changelog (:mod:`streaming.changelog`), every ``checkpoint_interval_s``: send the
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

* a bad message never stops the worker: it is dead-lettered and counted by reason;
* output records that cannot be delivered (after the producer's own retries) stop the worker
  *without* committing, so a restarted worker scores those readings again (exit code 3);
* a failed offset commit (the group rebalanced meanwhile) is logged and the loop continues:
  the next owner of the partition re-reads from the last commit, and consumers deduplicate by
  key;
* a checkpoint that cannot be delivered stops the worker like an output failure (exit 3):
  its offsets are not committed, so a restarted worker restores the previous checkpoint and
  replays from there;
* anything else is a bug and propagates.

SIGTERM and SIGINT set the stop event: the batch in hand is finished, flushed and committed,
checkpointed (with a changelog), then the consumer leaves the group and :meth:`Worker.run`
returns.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from detector.step import StreamingStep
from streaming.changelog import ChangelogWriter, restore_states
from streaming.dead_letters import DEFAULT_TOPIC_MAX_BYTES, dead_letter, dead_letter_headers
from streaming.engine import BatchResult, Reading, ScoringEngine
from streaming.messages import EARLIEST_TS_MS, ReadingParser, Rejection
from streaming.metrics import WorkerMetrics
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


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """The model the worker serves."""

    step: StreamingStep
    channels: tuple[str, ...]
    version: str
    trained_at: str
    trained_at_s: float


@dataclasses.dataclass(frozen=True)
class _Batch:
    """What one acknowledged batch produced, for the commit and the metrics."""

    result: BatchResult
    rejected_by_reason: Counter[str]
    dead_letters: int  # sent, including those the broker refused
    dropped: int  # dead letters refused for good and dropped
    evicted: int  # streams evicted beyond max_streams
    next_offsets: dict[int, int]
    acknowledged_s: float


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
        self.changelog_check = changelog_check
        self.source: ReadingSource | None = None
        self.changelog = changelog
        self.checkpoints = (ChangelogWriter(config.changelog_topic, sink, config.readings_topic)
                            if config.changelog_topic is not None else None)
        self._assigned: set[int] = set()
        self._revoked: set[int] = set()  # revoked, states kept until the next assignment
        self._to_restore: set[int] = set()
        self._uncommitted: dict[int, int] = {}  # partition -> next offset, processed
        self._tombstones: list[tuple[bytes, int]] = []  # evicted since the last checkpoint
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
                          str(model.step.layout.version))

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
        self._uncommitted.clear()
        self._tombstones.clear()
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
                self._uncommitted.pop(partition, None)
                self.metrics.forget_partition(self.config.readings_topic, partition)
            self._tombstones = [t for t in self._tombstones if t[1] not in partitions]
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
                batch = self._score_and_publish(records)
            except BaseException:
                self._abort("outputs of a batch were not acknowledged")
                raise
        if self.checkpoints is None:
            self._commit_offsets(batch.next_offsets)
        self._observe(records, batch, started)

    def _score_and_publish(self, records: Sequence[SourceRecord]) -> _Batch:
        """Parses, scores, publishes and waits for the acknowledgement of one batch. Caller
        holds the lock, and aborts the uncommitted work if this raises: the states it
        advanced have outputs that were never acknowledged."""
        readings: list[Reading] = []
        origin: list[int] = []
        rejected_by_reason: Counter[str] = Counter()
        dead_letters = 0
        next_offsets: dict[int, int] = {}
        latest_ts_ms = int((self.clock() + self.config.max_future_s) * 1000)
        parser = self.parser
        for index, record in enumerate(records):
            next_offsets[record.partition] = max(next_offsets.get(record.partition, 0),
                                                 record.offset + 1)
            parsed = parser.parse(record.value, latest_ts_ms=latest_ts_ms)
            if not isinstance(parsed, Rejection):
                parsed = parser.check_key(record.key, parsed)
            if isinstance(parsed, Rejection):
                self._dead_letter(record, parsed)
                rejected_by_reason[parsed.reason] += 1
                dead_letters += 1
                continue
            stream, ts_ms, values = parsed
            readings.append(Reading(stream, ts_ms, values, record.partition, record.offset,
                                    record.timestamp))
            origin.append(index)
        result = self.engine.process(readings)
        for position, rejection in result.rejected:
            self._dead_letter(records[origin[position]], rejection)
            rejected_by_reason[rejection.reason] += 1
            dead_letters += 1
        sink, config = self.sink, self.config
        # Same partition as the reading: per-stream order holds, and kafka-python's
        # pure-Python partitioner (a fifth of its send cost) is skipped.
        co_partitioned = config.co_partitioned
        for (key, value), partition in zip(result.scores, result.score_partitions,
                                           strict=True):
            sink.send(config.scores_topic, key, value,
                      partition=partition if co_partitioned else None)
        for (key, value), partition in zip(result.episodes, result.episode_partitions,
                                           strict=True):
            sink.send(config.anomalies_topic, key, value,
                      partition=partition if co_partitioned else None)
        dropped = sink.flush()  # raises OutputError: nothing of this batch gets committed
        acknowledged_s = self.clock()
        if self.checkpoints is not None:
            for partition, offset in next_offsets.items():
                self._uncommitted[partition] = max(self._uncommitted.get(partition, 0), offset)
        evicted = self._evict_beyond_capacity()
        return _Batch(result, rejected_by_reason, dead_letters, dropped or 0, evicted,
                      next_offsets, acknowledged_s)

    def _observe(self, records: Sequence[SourceRecord], batch: _Batch, started: float) -> None:
        result = batch.result
        self.metrics.record_outputs("scores", len(result.scores))
        self.metrics.record_outputs("anomalies", len(result.episodes))
        self.metrics.record_outputs("dead_letter", batch.dead_letters - batch.dropped)
        self.metrics.record_dead_letters_dropped(batch.dropped)
        self.metrics.record_capacity_evictions(batch.evicted)
        newest = float(result.reading_ts_ms.max()) / 1000 if result.reading_ts_ms.size else None
        acknowledged_s = batch.acknowledged_s
        self.metrics.observe_batch(
            consumed=len(records),
            scored=len(result.scores),
            rejected_by_reason=batch.rejected_by_reason,
            flagged=result.flagged,
            episodes_opened=result.episodes_opened,
            scores=result.score,
            likelihoods=result.likelihood,
            reading_latency_s=acknowledged_s - result.reading_ts_ms / 1000.0,
            broker_latency_s=acknowledged_s - result.broker_ts_ms[result.broker_ts_ms >= 0]
            / 1000.0,
            step_seconds=result.step_seconds if result.step_calls else None,
            batch_seconds=time.monotonic() - started,
            newest_reading_ts_s=newest,
            skipped=result.skipped,
        )

    def _dead_letter(self, record: SourceRecord, rejection: Rejection) -> None:
        letter = dead_letter(record, rejection, self.config.dead_letter_max_bytes)
        if letter.truncated:
            self.metrics.record_dead_letter_truncated()
        self.sink.send(self.config.dead_letter_topic, letter.key, letter.value, letter.headers,
                       best_effort=True)

    def _evict_beyond_capacity(self) -> int:
        """Evicts the least recently seen streams beyond ``max_streams`` (their changelog
        records get tombstones); returns how many. Caller holds the lock."""
        if not self.config.max_streams or len(self.store) <= self.config.max_streams:
            return 0
        evicted = self.engine.evict_least_recent(self.config.max_streams)
        if self.checkpoints is not None:
            self._tombstones.extend(evicted)
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
        self._uncommitted.clear()
        self._tombstones.clear()
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
        acknowledgement; returns the offsets now safe to commit. Caller holds the lock."""
        assert self.checkpoints is not None
        if self._aborted:
            return {}
        started = time.perf_counter()
        store = self.store
        try:
            # Before anything is sent: records for a partition that a recreated changelog
            # lacks would block the producer, and a deleted, auto-created one would take
            # states it then deletes by age.
            self._check_changelog()
        except TopicSetupError:
            self._abort("the state changelog cannot take checkpoints")
            raise
        if partitions is None:
            rows = store.take_dirty()
            tombstones, self._tombstones = self._tombstones, []
            covered = list(self._uncommitted)
        else:
            wanted = set(partitions)
            rows = np.concatenate([store.take_dirty(p) for p in sorted(wanted)] or
                                  [np.empty(0, np.int64)])
            tombstones = [t for t in self._tombstones if t[1] in wanted]
            self._tombstones = [t for t in self._tombstones if t[1] not in wanted]
            covered = [p for p in self._uncommitted if p in wanted]
        try:
            written = self.checkpoints.write(store, rows, tombstones)
            self.sink.flush()
        except OutputError as error:
            self.metrics.record_checkpoint_failure()
            self._abort("a checkpoint was not acknowledged")
            self._check_changelog(cause=error)  # a clearer error when the topic is to blame
            raise
        offsets = {p: self._uncommitted.pop(p) for p in covered}
        self.metrics.observe_checkpoint(time.perf_counter() - started,
                                        written.records + written.tombstones, written.bytes)
        if written.records or written.tombstones:
            log.debug("checkpoint: %d states, %d tombstones, %d bytes", written.records,
                      written.tombstones, written.bytes)
        return offsets

    def _check_changelog(self, cause: BaseException | None = None) -> None:
        if self.changelog_check is None:
            return
        try:
            self.changelog_check()
        except TopicSetupError as error:
            self.metrics.record_checkpoint_failure()
            raise error from cause

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
        seconds = time.perf_counter() - started
        self.metrics.observe_restore(seconds, result.records_read)
        self.metrics.set_streams(len(self.store), self.store.nbytes)
        log.info("restored %d stream states of partitions %s from %d changelog records in "
                 "%.2f s", result.streams_restored, partitions, result.records_read, seconds)
        if result.incompatible:
            log.warning("%d changelog records were written for another state layout or "
                        "readings topic and not loaded (first: %s); those streams start their "
                        "learning period again", result.incompatible, result.first_incompatible)
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
            if tuple(model.channels) != tuple(self.model.channels):
                log.error("model %s not loaded: its channels %s differ from the served "
                          "model's %s", model.version, list(model.channels),
                          list(self.model.channels))
                self.metrics.record_model_reload("failed")
                return
            kept = model.step.layout == self.store.layout
            if not kept:
                self.store.reset_states(model.step.layout)
            self.engine = ScoringEngine(model.step, self.store, model.channels, model.version,
                                        self.config.episode_gap, clock=self.clock)
            previous, self.model = self.model, model
            self.metrics.set_model(model.version, model.trained_at, model.trained_at_s,
                                   str(model.step.layout.version))
            self.metrics.record_model_reload("kept_state" if kept else "reset_state")
        if kept:
            log.info("model %s replaced by %s; streams keep their states", previous.version,
                     model.version)
        else:
            log.warning("model %s replaced by %s with another state layout; all %d streams "
                        "start their learning period again", previous.version, model.version,
                        len(self.store))

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
                    self._tombstones.extend(evicted)
                self.metrics.record_evictions(len(evicted))
                log.info("evicted %d idle streams", len(evicted))
            self.metrics.set_streams(len(self.store), self.store.nbytes)
        if self.source is not None:
            for partition, lag in self.source.lag().items():
                self.metrics.set_lag(self.config.readings_topic, partition, lag)
