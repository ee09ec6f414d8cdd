"""The streaming worker: consume readings, score them per stream, publish, commit.

One loop, one batch at a time:

1. poll up to ``max_poll_records`` readings;
2. parse and validate each; a bad message goes to the dead-letter topic with its original
   bytes and headers naming the reason, the source topic, partition and offset;
3. score the good ones with the :class:`~streaming.engine.ScoringEngine` (vectorized across
   streams, in rounds that keep each stream's order);
4. publish one score record per reading (keyed by stream) and one event per closed anomaly
   episode, and wait until the broker acknowledged every output record;
5. only then commit the batch's offsets (at-least-once: a crash before the commit replays the
   batch, and its records, keyed and built deterministically, are reproduced identically).

Error policy:

* a bad message never stops the worker: it is dead-lettered and counted by reason;
* output records that cannot be delivered (after the producer's own retries) stop the worker
  *without* committing, so a restarted worker scores those readings again (exit code 3);
* a failed offset commit (the group rebalanced meanwhile) is logged and the loop continues:
  the next owner of the partition re-reads from the last commit, and consumers deduplicate by
  key;
* anything else is a bug and propagates.

SIGTERM and SIGINT set the stop event: the batch in hand is finished, flushed and committed,
then the consumer leaves the group and :meth:`Worker.run` returns.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence

from detector.step import StreamingStep
from streaming.engine import Reading, ScoringEngine
from streaming.messages import ReadingParser, Rejection
from streaming.metrics import WorkerMetrics
from streaming.ports import ReadingSource, RecordSink, SourceRecord
from streaming.state_store import StateStore

log = logging.getLogger(__name__)

_DETAIL_LIMIT = 1000


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


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """The model the worker serves."""

    step: StreamingStep
    channels: tuple[str, ...]
    version: str
    trained_at: str
    trained_at_s: float


def dead_letter_headers(record: SourceRecord, rejection: Rejection) -> list[tuple[str, bytes]]:
    """The original headers, then why and where from."""
    return [*(record.headers or ()),
            ("cellwatch.reason", str(rejection.reason).encode()),
            ("cellwatch.detail", rejection.detail[:_DETAIL_LIMIT].encode("utf-8", "replace")),
            ("cellwatch.source.topic", record.topic.encode()),
            ("cellwatch.source.partition", str(record.partition).encode()),
            ("cellwatch.source.offset", str(record.offset).encode())]


class Worker:
    """Scores one consumer's share of the readings topic.

    Args:
        config: topics and limits.
        model: the step and its identity.
        sink: where output records go.
        metrics: the worker's metrics (registry injected by the caller).
        clock: wall clock in seconds; injectable for tests.
    """

    def __init__(self, config: WorkerConfig, model: ModelInfo, sink: RecordSink,
                 metrics: WorkerMetrics, clock=time.time) -> None:
        self.config = config
        self.model = model
        self.sink = sink
        self.metrics = metrics
        self.clock = clock
        self.store = StateStore(model.step.layout)
        self.engine = ScoringEngine(model.step, self.store, model.channels, model.version,
                                    config.episode_gap, clock=clock)
        self.parser = ReadingParser(model.channels, config.max_message_bytes)
        self.source: ReadingSource | None = None
        self._assigned: set[int] = set()
        self._revoked: set[int] = set()  # revoked, states kept until the next assignment
        self._joined = False
        self._heartbeat = time.monotonic()
        self._next_maintenance = 0.0
        # Rebalance callbacks arrive on the consumer's IO thread while this worker's thread
        # waits in poll(); the lock makes that hand-over explicit.
        self._lock = threading.Lock()
        metrics.set_model(model.version, model.trained_at, model.trained_at_s,
                          str(model.step.layout.version))

    # Partition listener -------------------------------------------------------------------

    def on_assigned(self, partitions: Sequence[int]) -> None:
        # Partitions revoked by the rebalance but not given back now went to another member.
        gone = sorted(self._revoked - set(partitions))
        self._revoked.clear()
        if gone:
            self._drop(gone, "revoked")
        with self._lock:
            self._assigned.update(partitions)
            self._joined = True
            self.metrics.set_assigned_partitions(len(self._assigned))
            self.metrics.record_rebalance("assigned")
        log.info("assigned partitions %s", list(partitions))

    def on_revoked(self, partitions: Sequence[int]) -> None:
        # Offsets of everything processed are already committed (after each batch), so the
        # states match the committed positions. An eager rebalance revokes every partition and
        # often hands the same ones back: keep the states until the assignment says.
        with self._lock:
            self._revoked.update(partitions)
            self._assigned.difference_update(partitions)
            self.metrics.set_assigned_partitions(len(self._assigned))
            self.metrics.record_rebalance("revoked")
        log.info("revoked partitions %s", list(partitions))

    def on_lost(self, partitions: Sequence[int]) -> None:
        # Lost means another member may already own them: never keep their states.
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
                self.metrics.forget_partition(self.config.readings_topic, partition)
            self.metrics.set_assigned_partitions(len(self._assigned))
            if kind == "lost":
                self.metrics.record_rebalance(kind)
        log.info("%s partitions %s; dropped %d stream states", kind, list(partitions), dropped)

    # Probes -------------------------------------------------------------------------------

    def liveness(self) -> tuple[bool, str]:
        silent = time.monotonic() - self._heartbeat
        if silent > self.config.liveness_timeout_s:
            return False, f"main loop silent for {silent:.0f} s"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        if not self._joined:
            return False, "not yet part of the consumer group"
        return True, "ok"

    # The loop -----------------------------------------------------------------------------

    def run(self, source: ReadingSource, stop: threading.Event) -> None:
        """Consumes until ``stop`` is set; the source is closed on the way out."""
        self.source = source
        try:
            while not stop.is_set():
                records = source.poll(self.config.poll_timeout_ms, self.config.max_poll_records)
                self._heartbeat = time.monotonic()
                if records:
                    self.process(records)
                self._maintain()
        finally:
            source.close()
            self.sink.close()

    def process(self, records: Sequence[SourceRecord]) -> None:
        """Scores, publishes and commits one batch."""
        started = time.monotonic()
        with self._lock:
            readings: list[Reading] = []
            origin: list[int] = []
            rejected_by_reason: Counter[str] = Counter()
            dead_letters = 0
            next_offsets: dict[int, int] = {}
            for index, record in enumerate(records):
                next_offsets[record.partition] = max(next_offsets.get(record.partition, 0),
                                                     record.offset + 1)
                parsed = self.parser.parse(record.value)
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
            sink.flush()  # raises OutputError: nothing of this batch gets committed
            acknowledged_s = self.clock()
            self._commit(next_offsets)

        self.metrics.record_outputs("scores", len(result.scores))
        self.metrics.record_outputs("anomalies", len(result.episodes))
        self.metrics.record_outputs("dead_letter", dead_letters)
        newest = float(result.reading_ts_ms.max()) / 1000 if result.reading_ts_ms.size else None
        self.metrics.observe_batch(
            consumed=len(records),
            scored=len(result.scores),
            rejected_by_reason=rejected_by_reason,
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
        self.sink.send(self.config.dead_letter_topic, record.key, record.value,
                       dead_letter_headers(record, rejection))

    def _commit(self, next_offsets: Mapping[int, int]) -> None:
        if self.source is None:
            return
        try:
            self.source.commit(next_offsets)
        except Exception as error:  # kafka-python raises several types for a lost generation
            log.warning("offset commit failed (%s); the partition's next owner re-reads from "
                        "the last commit and reproduces identical records", error)

    def _maintain(self) -> None:
        now = time.monotonic()
        if now < self._next_maintenance:
            return
        self._next_maintenance = now + self.config.maintenance_interval_s
        with self._lock:
            evicted = self.engine.evict_idle(self.config.idle_eviction_s)
            if evicted:
                self.metrics.record_evictions(evicted)
                log.info("evicted %d idle streams", evicted)
            self.metrics.set_streams(len(self.store), self.store.nbytes)
        if self.source is not None:
            for partition, lag in self.source.lag().items():
                self.metrics.set_lag(self.config.readings_topic, partition, lag)

