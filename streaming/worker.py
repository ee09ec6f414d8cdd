"""The streaming worker: consume readings, score them per stream, publish, commit.

One loop, one batch at a time (:meth:`Worker.run`):

1. poll up to ``max_poll_records`` readings (of the partitions not paused);
2. restore the partitions assigned since the last poll, if any
   (:meth:`streaming.partitions.PartitionTracker.restore`);
3. pace (:mod:`streaming.pacing`): a batch holds at most ``max_stream_readings_per_batch``
   readings of one stream; from the next one on, the rest of its partition waits for the
   next batch, and the partition is paused until they are scored (a hot stream would
   otherwise hold every other stream's readings back for as many step rounds as it has
   readings);
4. validate, score and publish them (:mod:`streaming.batches`): a bad message goes to the
   dead-letter topic (:mod:`streaming.dead_letters`), the good ones are scored by the
   :class:`~streaming.engine.ScoringEngine`, one score record per reading and one event per
   closed anomaly episode are published, and the broker acknowledges every output record;
5. beyond ``max_streams`` streams, evict the least recently used (tombstones follow);
6. commit (:class:`streaming.checkpoint.Checkpoint`): without a changelog, the batch's
   offsets at once (at-least-once: a crash before the commit replays the batch, and its
   records, keyed and built deterministically, are reproduced identically); with one, every
   ``checkpoint_interval_s``: the states of the streams changed since the last checkpoint,
   acknowledged, and only then the offsets they cover. After a crash the states are restored
   from the changelog, and the readings between the committed offset and a state's recorded
   offset are skipped (already applied, their outputs already acknowledged), so no reading
   is applied twice and none is lost.

Who owns what: the :class:`~streaming.checkpoint.Checkpoint` owns everything uncommitted and
the commit sequence (and the abort); the :class:`~streaming.partitions.PartitionTracker` owns
which partitions the worker holds (it is the consumer's partition listener); the worker keeps
the loop, the model swap and the probes. :mod:`cellwatch.wiring` builds them all.

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
* a failed offset commit (the group rebalanced meanwhile, the coordinator unreachable) is
  logged and the loop continues; the next commit carries its offsets again (a worker that
  had read everything before a broker restart would otherwise never commit them), unless a
  partition changed hands meanwhile: then its next owner re-reads from the last commit, and
  consumers deduplicate by key;
* a checkpoint that cannot be delivered stops the worker like an output failure (exit 3):
  its offsets are not committed, so a restarted worker restores the previous checkpoint and
  replays from there; a changelog that is gone or has the wrong shape stops it before the
  checkpoint is sent (:class:`~streaming.ports.TopicSetupError`, exit code 6);
* anything else is a bug and propagates.

Whatever stops the loop, the work not yet committed is aborted first
(:meth:`streaming.checkpoint.Checkpoint.abort`), before closing the consumer revokes its
partitions (which would checkpoint them). The probes fail from that moment.

SIGTERM and SIGINT set the stop event: the batch in hand is finished, flushed and committed,
checkpointed (with a changelog), then the consumer leaves the group and :meth:`Worker.run`
returns.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence

from streaming.batches import observe_batch, publish_batch
from streaming.checkpoint import Checkpoint
from streaming.dead_letters import DEFAULT_TOPIC_MAX_BYTES, dead_letter_headers
from streaming.engine import ScoringEngine
from streaming.messages import ReadingParser
from streaming.metrics import WorkerMetrics, state_layout_label
from streaming.model_reload import ModelInfo, swapped_engine
from streaming.pacing import HeldBack
from streaming.partitions import PartitionTracker
from streaming.ports import ReadingSource, RecordSink, SourceRecord
from streaming.state_store import StateStore

log = logging.getLogger(__name__)

__all__ = ["ModelInfo", "Worker", "WorkerConfig", "WorkerParts", "dead_letter_headers"]


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
    # Readings of one stream in one batch; the rest of its partition waits (streaming.pacing).
    max_stream_readings_per_batch: int = 100


@dataclasses.dataclass(frozen=True)
class WorkerParts:
    """What a worker scores with and commits through (:func:`cellwatch.wiring.assemble_worker`
    builds them). ``lock`` guards them all: the partition tracker's callbacks run on the
    consumer's IO thread."""

    store: StateStore
    engine: ScoringEngine
    # Builds the engine that serves a model over ``store`` (the first one, and each model
    # reloaded later), so that a reloaded model is wired as the first one was.
    engine_for: Callable[[ModelInfo], ScoringEngine]
    parser: ReadingParser
    checkpoint: Checkpoint
    partitions: PartitionTracker
    lock: threading.Lock


class Worker:
    """Scores one consumer's share of the readings topic: the loop, the model swap, the
    probes.

    Args:
        config: topics and limits.
        model: the step and its identity.
        parts: the state store, engine, parser, checkpoint and partition tracker.
        sink: where output records (and checkpoint records) go.
        metrics: the worker's metrics (registry injected by the caller).
        clock: wall clock in seconds; injectable for tests.
    """

    def __init__(self, config: WorkerConfig, model: ModelInfo, parts: WorkerParts,
                 sink: RecordSink, metrics: WorkerMetrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.model = model
        self.sink = sink
        self.metrics = metrics
        self.clock = clock
        self.store = parts.store
        self.engine = parts.engine
        self._engine_for = parts.engine_for
        self.parser = parts.parser
        self.checkpoint = parts.checkpoint
        self.partitions = parts.partitions
        self.source: ReadingSource | None = None
        self._fatal: BaseException | None = None  # what stopped the loop (liveness fails)
        self._offered_model: ModelInfo | None = None
        self._heartbeat = time.monotonic()
        self._next_maintenance = 0.0
        self._next_checkpoint = time.monotonic() + config.checkpoint_interval_s
        self.held_back = HeldBack(config.max_stream_readings_per_batch)
        self._paused: frozenset[int] = frozenset()  # partitions paused in the source
        # Never held across a blocking consumer call (see streaming.partitions).
        self._lock = parts.lock
        metrics.set_model(model.version, model.trained_at, model.trained_at_s,
                          state_layout_label(model.step.layout))

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
        not_ready = self.partitions.not_ready()
        return (False, not_ready) if not_ready is not None else (True, "ok")

    # The loop -----------------------------------------------------------------------------

    def run(self, source: ReadingSource, stop: threading.Event) -> None:
        """Consumes until ``stop`` is set; the source is closed on the way out."""
        self.source = source
        clean = False
        try:
            while not stop.is_set():
                # Records in hand: no waiting for more.
                records = source.poll(0 if self.held_back else self.config.poll_timeout_ms,
                                      self.config.max_poll_records)
                self._heartbeat = time.monotonic()
                self.partitions.raise_failure()
                self.swap_offered_model()
                records = self.restore_assigned(records)
                self.held_back.drop(self.partitions.take_stale())
                records = self.held_back.next_batch(records)
                self._pause_held_partitions(source)
                if records:
                    self.process(records)
                if time.monotonic() >= self._next_checkpoint:
                    self.commit_checkpoint()
                self._maintain()
            clean = True
        except BaseException as error:
            # Unhealthy at once (probes fail while the consumer and producer close), and what
            # the failed batch advanced is discarded before the close revokes partitions.
            self._fatal = error
            with self._lock:
                self.checkpoint.abort("the worker is stopping after an error")
            raise
        finally:
            try:
                if clean:
                    self.commit_checkpoint()
            finally:
                source.close()  # leaves the group: on_revoked runs (nothing left to write)
                self.sink.close()
            if clean:
                self.partitions.raise_failure()

    def _pause_held_partitions(self, source: ReadingSource) -> None:
        """Pauses the partitions the worker holds records of (a poll would only add to
        them) and resumes those it no longer does (scored, or dropped as stale)."""
        held = self.held_back.partitions
        if held != self._paused:
            if held - self._paused:
                source.pause(sorted(held - self._paused))
            if self._paused - held:
                source.resume(sorted(self._paused - held))
            self._paused = held
        self.metrics.set_held_back(len(self.held_back))

    def process(self, records: Sequence[SourceRecord]) -> None:
        """Scores and publishes one batch; commits it too when there is no changelog."""
        started = time.monotonic()
        with self._lock:
            if self.checkpoint.aborted:
                raise RuntimeError("process() after the worker aborted its uncommitted work")
            try:
                batch = publish_batch(records, self.parser, self.engine, self.sink,
                                      self.config, self.clock)
            except BaseException:
                # The states this batch advanced have outputs that were never acknowledged.
                self.checkpoint.abort("outputs of a batch were not acknowledged")
                raise
            self.checkpoint.processed(batch.next_offsets)
            evicted = self._evict_beyond_capacity()
        if not self.checkpoint.durable:
            self.checkpoint.commit(self.source)
        observe_batch(self.metrics, records, batch, evicted, started)

    def _evict_beyond_capacity(self) -> int:
        """Evicts the least recently seen streams beyond ``max_streams`` (their changelog
        records get tombstones); returns how many. Caller holds the lock."""
        if not self.config.max_streams or len(self.store) <= self.config.max_streams:
            return 0
        evicted = self.engine.evict_least_recent(self.config.max_streams)
        self.checkpoint.evicted(evicted)
        return len(evicted)

    def commit_checkpoint(self) -> None:
        """With a changelog: checkpoints every changed stream, then commits the offsets it
        covers (:meth:`Checkpoint.commit`); the loop calls it every checkpoint interval.
        Without one each batch commits its own offsets, and this commits again those whose
        commit failed (nothing, usually), as no later batch may come to carry them."""
        self._next_checkpoint = time.monotonic() + self.config.checkpoint_interval_s
        self.checkpoint.commit(self.source)

    def restore_assigned(self, records: Sequence[SourceRecord] = ()) -> Sequence[SourceRecord]:
        """Restores newly assigned partitions (:meth:`PartitionTracker.restore`); the loop
        calls it after every poll, before processing what the poll returned."""
        return self.partitions.restore(self.source, records)

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
            engine = swapped_engine(self.model, model, self.store, self._engine_for,
                                    self.metrics)
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
                self.checkpoint.evicted(evicted)
                self.metrics.record_evictions(len(evicted))
                log.info("evicted %d idle streams", len(evicted))
            self.metrics.set_streams(len(self.store), self.store.nbytes)
        if self.source is not None:
            # Held-back records are behind the consumer's position but not yet processed.
            held = self.held_back.by_partition()
            for partition, lag in self.source.lag().items():
                self.metrics.set_lag(self.config.readings_topic, partition,
                                     lag + held.get(partition, 0))
