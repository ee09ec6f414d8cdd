"""One poll batch of the worker: validate, score, publish, wait for the acknowledgement.

Each record is parsed and validated (:class:`~streaming.messages.ReadingParser`, then its
Kafka key against its stream id); a bad one becomes a dead letter
(:mod:`streaming.dead_letters`). The good ones are scored together by the
:class:`~streaming.engine.ScoringEngine`, whose own rejections (out of order, duplicate)
become dead letters too. Score and episode records follow, written from the engine's typed
results (:mod:`streaming.output_records`), and the sink's flush waits until
the broker acknowledged them all. Whatever raises here leaves states advanced for outputs
that were never acknowledged: the worker aborts its uncommitted work then.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from streaming.dead_letters import dead_letter
from streaming.engine import BatchResult, Reading, ScoringEngine
from streaming.messages import ReadingParser, Rejection
from streaming.metrics import WorkerMetrics
from streaming.output_records import encode_episode, encode_scores
from streaming.ports import RecordSink, SourceRecord

if TYPE_CHECKING:
    from streaming.worker import WorkerConfig


@dataclasses.dataclass(frozen=True)
class PublishedBatch:
    """What one acknowledged batch produced, for the commit and the metrics."""

    result: BatchResult
    rejected_by_reason: Counter[str]
    dead_letters: int  # sent, including those the broker refused for good
    dropped: int  # dead letters refused for good and dropped
    truncated: int  # dead letters cut to fit the dead-letter topic
    next_offsets: dict[int, int]  # per partition, the offset after the batch's last record
    acknowledged_s: float


def publish_batch(records: Sequence[SourceRecord], parser: ReadingParser,
                  engine: ScoringEngine, sink: RecordSink, config: WorkerConfig,
                  clock: Callable[[], float]) -> PublishedBatch:
    """Validates, scores and publishes ``records``; returns once the broker acknowledged
    every output record. Raises :class:`~streaming.ports.OutputError` when it did not."""
    readings: list[Reading] = []
    rejected_by_reason: Counter[str] = Counter()
    letters: list[tuple[SourceRecord, Rejection]] = []
    next_offsets: dict[int, int] = {}
    latest_ts_ms = int((clock() + config.max_future_s) * 1000)
    for record in records:
        next_offsets[record.partition] = max(next_offsets.get(record.partition, 0),
                                             record.offset + 1)
        parsed = parser.parse(record.value, latest_ts_ms=latest_ts_ms)
        if not isinstance(parsed, Rejection):
            parsed = parser.check_key(record.key, parsed)
        if isinstance(parsed, Rejection):
            letters.append((record, parsed))
            continue
        stream, ts_ms, values = parsed
        readings.append(Reading(stream, ts_ms, values, record.partition, record.offset,
                                record.timestamp, source=record))
    result = engine.process(readings)
    letters.extend((rejected.reading.source, rejected.rejection)
                   for rejected in result.rejected)
    truncated = 0
    for record, rejection in letters:
        letter = dead_letter(record, rejection, config.dead_letter_max_bytes)
        truncated += letter.truncated
        rejected_by_reason[rejection.reason] += 1
        sink.send(config.dead_letter_topic, letter.key, letter.value, letter.headers,
                  best_effort=True)
    # Same partition as the reading: per-stream order holds, and kafka-python's
    # pure-Python partitioner (a fifth of its send cost) is skipped.
    co_partitioned = config.co_partitioned
    for (key, value), partition in zip(encode_scores(result.scores),
                                       result.scores.partitions, strict=True):
        sink.send(config.scores_topic, key, value,
                  partition=partition if co_partitioned else None)
    for ended in result.episodes:
        key, value = encode_episode(ended)
        sink.send(config.anomalies_topic, key, value,
                  partition=ended.partition if co_partitioned else None)
    dropped = sink.flush()  # raises OutputError: nothing of this batch gets committed
    return PublishedBatch(result, rejected_by_reason, len(letters), dropped or 0, truncated,
                          next_offsets, acknowledged_s=clock())


def observe_batch(metrics: WorkerMetrics, records: Sequence[SourceRecord],
                  batch: PublishedBatch, evicted: int, started: float) -> None:
    """The batch's metrics, once it is acknowledged (and committed, without a changelog)."""
    result = batch.result
    metrics.record_outputs("scores", len(result.scores))
    metrics.record_outputs("anomalies", len(result.episodes))
    metrics.record_outputs("dead_letter", batch.dead_letters - batch.dropped)
    metrics.record_dead_letters_dropped(batch.dropped)
    metrics.record_dead_letters_truncated(batch.truncated)
    metrics.record_capacity_evictions(evicted)
    newest = float(result.reading_ts_ms.max()) / 1000 if result.reading_ts_ms.size else None
    acknowledged_s = batch.acknowledged_s
    metrics.observe_batch(
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
