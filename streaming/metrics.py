"""The streaming worker's Prometheus metrics, all declared in one class on an injected registry.

Naming follows the Prometheus naming and instrumentation guides: every name starts with
``cellwatch_``, is in base units (``_seconds``, ``_bytes``), counters end in ``_total`` and
nothing else does, latencies and scores are histograms, and labels only take values from
the small fixed sets declared here (rejection reasons, latency references, reload outcomes,
rebalance kinds, output topic roles) or Kafka partitions, which are bounded and whose
series are removed on revocation. There is never a label per stream: streams are unbounded.

Nothing here touches prometheus_client's global ``REGISTRY``; the composition root creates
a ``CollectorRegistry``, passes it to ``WorkerMetrics`` and serves it with
``streaming.http_endpoint.MetricsEndpoint``.

The worker updates metrics once per poll batch (``WorkerMetrics.observe_batch``), never per
reading. Histograms fed from NumPy arrays are
:class:`~streaming.batch_histogram.BatchHistogram` collectors (one vectorized bucket search
per batch).
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from detector.state import StateLayout
from streaming.batch_histogram import BatchHistogram
from streaming.messages import RejectReason

PREFIX = "cellwatch_"


class LatencyReference(enum.StrEnum):
    """Where an end-to-end latency is measured from (the ``reference`` label)."""

    READING_TIME = "reading_time"  # the reading's own timestamp
    BROKER_TIME = "broker_time"  # the broker's append timestamp of the input record


class ModelReloadOutcome(enum.StrEnum):
    """How a model reload ended (the ``outcome`` label)."""

    KEPT_STATE = "kept_state"
    RESET_STATE = "reset_state"
    FAILED = "failed"


class RebalanceKind(enum.StrEnum):
    """A consumer group rebalance callback (the ``kind`` label)."""

    ASSIGNED = "assigned"
    REVOKED = "revoked"
    LOST = "lost"


class TopicRole(enum.StrEnum):
    """Which output topic a record went to (the ``topic_role`` label), not the topic's name."""

    SCORES = "scores"
    ANOMALIES = "anomalies"
    DEAD_LETTER = "dead_letter"
    CHANGELOG = "changelog"


REJECT_REASONS: tuple[str, ...] = tuple(RejectReason)

# Bucket upper bounds (``+Inf`` is added). Latencies span 1 ms .. 60 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
BATCH_READINGS_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 100_000)
STEP_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                         1.0, 2.5, 5.0, 10.0)
POLL_BATCH_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                               2.5, 5.0, 10.0, 30.0, 60.0)
# Raw scores are about 1 for an expected reading (see detector.scorer).
SCORE_BUCKETS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
LIKELIHOOD_BUCKETS = (0.5, 0.9, 0.99, 0.999, 0.9999, 1.0)
CHECKPOINT_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                               30.0, 60.0)
RESTORE_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                            120.0, 300.0, 600.0)


def _allowed(value: str, allowed: type[enum.StrEnum], label: str) -> str:
    """``value`` as a plain string if it is one of ``allowed``; ValueError otherwise."""
    text = str(value)
    if text not in {member.value for member in allowed}:
        raise ValueError(
            f"{label}: expected one of {', '.join(allowed)}, received {value!r}")
    return text


def _count(value: int, what: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"{what}: expected a whole number >= 0, received {value!r}")
    return int(value)


def state_layout_label(layout: StateLayout) -> str:
    """``<layout version>/<floats per stream>``, the ``state_layout`` label of ``model_info``:
    two models whose states cannot be exchanged never share it (the version alone did not
    tell a 32-unit memory from a 64-unit one)."""
    return f"{layout.version}/{layout.size}"


class WorkerMetrics:
    """Every metric of the streaming worker, registered on ``registry``.

    Call the methods once per poll batch or event, never per reading. Counts must be whole
    numbers >= 0 and label values must come from the enums of this module; anything else
    raises ValueError before any metric changes.
    """

    def __init__(self, registry: CollectorRegistry, *, start_time_s: float | None = None
                 ) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._newest_reading_ts_s = -math.inf
        self._model_labels: tuple[str, str, str] | None = None
        self._declare_reading_metrics()
        self._declare_batch_metrics()
        self._declare_consumer_metrics()
        self._declare_stream_metrics()
        self._declare_model_metrics()
        self._declare_durability_metrics()
        self.worker_start_timestamp.set(time.time() if start_time_s is None else start_time_s)

    # -- declarations, by subject ----------------------------------------------------------

    def _counter(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> Counter:
        return Counter(PREFIX + name, doc, labelnames, registry=self.registry)

    def _gauge(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> Gauge:
        return Gauge(PREFIX + name, doc, labelnames, registry=self.registry)

    def _histogram(self, name: str, doc: str, buckets: Sequence[float],
                   labelnames: Sequence[str] = (),
                   label_values: Iterable[Sequence[str]] = ()) -> BatchHistogram:
        collector = BatchHistogram(PREFIX + name, doc, buckets, labelnames, label_values)
        self.registry.register(collector)
        return collector

    def _declare_reading_metrics(self) -> None:
        counter = self._counter
        self.readings_consumed = counter(
            "readings_consumed_total", "Reading records consumed from the readings topic.")
        self.readings_scored = counter(
            "readings_scored_total", "Readings scored by the model and published.")
        self.readings_rejected = counter(
            "readings_rejected_total",
            "Readings rejected without scoring (sent to the dead-letter topic), by reason.",
            ["reason"])
        for reason in RejectReason:
            self.readings_rejected.labels(reason.value)
        self.readings_skipped = counter(
            "readings_skipped_total",
            "Readings skipped because restored state had already applied them.")
        self.anomalous_readings = counter(
            "anomalous_readings_total", "Readings flagged as anomalous.")
        self.anomaly_episodes = counter(
            "anomaly_episodes_total", "Anomaly episodes opened.")

    def _declare_batch_metrics(self) -> None:
        """Latency, batches, steps and scores."""
        histogram = self._histogram
        self.end_to_end_latency = histogram(
            "end_to_end_latency_seconds",
            "Time from a reading's own timestamp (reference=reading_time) or from the broker's "
            "append timestamp (reference=broker_time) until its score was published.",
            LATENCY_BUCKETS, ["reference"], [[r.value] for r in LatencyReference])
        self.batch_readings = histogram(
            "batch_readings", "Reading records per non-empty poll batch.",
            BATCH_READINGS_BUCKETS)
        self.step_duration = histogram(
            "step_duration_seconds", "Duration of one vectorized model step over a batch.",
            STEP_DURATION_BUCKETS)
        self.poll_batch_duration = histogram(
            "poll_batch_duration_seconds",
            "Duration of a poll batch from receipt to offset commit.",
            POLL_BATCH_DURATION_BUCKETS)
        self.anomaly_score = histogram(
            "anomaly_score",
            "Raw anomaly scores of scored readings (about 1 when the model expected the reading).",
            SCORE_BUCKETS)
        self.anomaly_likelihood = histogram(
            "anomaly_likelihood", "Anomaly likelihoods of scored readings (0.5 while learning).",
            LIKELIHOOD_BUCKETS)

    def _declare_consumer_metrics(self) -> None:
        counter, gauge = self._counter, self._gauge
        self.consumer_lag = gauge(
            "consumer_lag_messages",
            "Records of an assigned partition not yet processed: between the consumer's "
            "position and the partition's end, and those polled but held for a later batch.",
            ["topic", "partition"])
        self.held_back_messages = gauge(
            "held_back_messages",
            "Records polled but held for a later batch: a stream's readings beyond "
            "worker.max_stream_readings_per_batch in one batch, and the rest of its "
            "partition after them.")
        self.assigned_partitions = gauge(
            "assigned_partitions", "Partitions of the readings topic assigned to this worker.")
        self.rebalances = counter(
            "rebalances_total", "Consumer group rebalance callbacks, by kind.", ["kind"])
        for kind in RebalanceKind:
            self.rebalances.labels(kind.value)

    def _declare_stream_metrics(self) -> None:
        """Streams and their state."""
        counter, gauge = self._counter, self._gauge
        self.active_streams = gauge("active_streams", "Streams with state held by this worker.")
        self.state_store_bytes = gauge(
            "state_store_bytes", "Bytes of per-stream state held by this worker.")
        self.stream_evictions = counter(
            "stream_evictions_total", "Streams whose state was evicted after being idle.")
        self.stream_capacity_evictions = counter(
            "stream_capacity_evictions_total",
            "Streams whose state was evicted, least recently seen first, because the worker "
            "held more than worker.max_streams streams.")
        self.last_processed_reading_timestamp = gauge(
            "last_processed_reading_timestamp_seconds",
            "Newest reading timestamp processed, in Unix seconds.")
        self.last_batch_completed_timestamp = gauge(
            "last_batch_completed_timestamp_seconds",
            "Wall-clock Unix time at which the last poll batch completed.")
        self.worker_start_timestamp = gauge(
            "worker_start_timestamp_seconds", "Wall-clock Unix time at which the worker started.")

    def _declare_model_metrics(self) -> None:
        counter, gauge = self._counter, self._gauge
        self.model_info = gauge(
            "model_info", "The loaded model: always 1, labelled with its version, training "
            "time and state layout (version/floats per stream).",
            ["version", "trained_at", "state_layout"])
        self.model_trained_timestamp = gauge(
            "model_trained_timestamp_seconds", "Unix time at which the loaded model was trained.")
        self.model_reloads = counter(
            "model_reloads_total", "Model reloads, by outcome.", ["outcome"])
        for outcome in ModelReloadOutcome:
            self.model_reloads.labels(outcome.value)

    def _declare_durability_metrics(self) -> None:
        """Checkpoints, restores, dead letters and output records."""
        counter, histogram = self._counter, self._histogram
        self.checkpoint_duration = histogram(
            "checkpoint_duration_seconds",
            "Duration of one checkpoint of changed stream states to the changelog.",
            CHECKPOINT_DURATION_BUCKETS)
        self.checkpoint_records = counter(
            "checkpoint_records_total", "State records written to the changelog by checkpoints.")
        self.checkpoint_bytes = counter(
            "checkpoint_bytes_total", "Bytes of state records written by checkpoints.")
        self.checkpoint_failures = counter(
            "checkpoint_failures_total", "Checkpoints that failed.")
        self.restore_duration = histogram(
            "restore_duration_seconds",
            "Duration of restoring the stream states of newly assigned partitions.",
            RESTORE_DURATION_BUCKETS)
        self.restore_records = counter(
            "restore_records_total", "State records read from the changelog by restores.")
        self.dead_letters = counter(
            "dead_letters_total", "Records written to the dead-letter topic.")
        self.dead_letters_truncated = counter(
            "dead_letters_truncated_total",
            "Dead letters whose value (then headers, then key) was cut to fit the dead-letter "
            "topic's max.message.bytes.")
        self.dead_letters_dropped = counter(
            "dead_letters_dropped_total",
            "Dead letters the broker refused for good (too large or invalid for the topic) "
            "and that were dropped instead of stopping the worker.")
        self.output_records = counter(
            "output_records_total", "Records produced to the output topics, by topic role.",
            ["topic_role"])
        for role in TopicRole:
            self.output_records.labels(role.value)

    # -- per batch -------------------------------------------------------------------------

    def observe_batch(
        self, *,
        consumed: int,
        scored: int,
        rejected_by_reason: Mapping[str, int],
        flagged: int,
        episodes_opened: int,
        scores: np.ndarray,
        likelihoods: np.ndarray,
        reading_latency_s: np.ndarray,
        broker_latency_s: np.ndarray,
        step_seconds: float | None,
        batch_seconds: float,
        newest_reading_ts_s: float | None,
        skipped: int = 0,
        completed_at_s: float | None = None,
    ) -> None:
        """Record one non-empty poll batch.

        ``rejected_by_reason`` maps reasons (``RejectReason`` or its values) to counts;
        ``step_seconds`` is None when no step ran (nothing to score); the newest-reading
        gauge only moves forward, and ignores None or non-finite values;
        ``completed_at_s`` defaults to now.
        """
        counts = {
            "consumed": _count(consumed, "consumed"),
            "scored": _count(scored, "scored"),
            "flagged": _count(flagged, "flagged"),
            "episodes_opened": _count(episodes_opened, "episodes_opened"),
            "skipped": _count(skipped, "skipped"),
        }
        rejected = {_allowed(reason, RejectReason, "rejected_by_reason"):
                    _count(n, f"rejected_by_reason[{reason!r}]")
                    for reason, n in rejected_by_reason.items()}

        self.readings_consumed.inc(counts["consumed"])
        self.readings_scored.inc(counts["scored"])
        for reason, n in rejected.items():
            if n:
                self.readings_rejected.labels(reason).inc(n)
        if counts["skipped"]:
            self.readings_skipped.inc(counts["skipped"])
        self.anomalous_readings.inc(counts["flagged"])
        self.anomaly_episodes.inc(counts["episodes_opened"])

        self.anomaly_score.observe_many(scores)
        self.anomaly_likelihood.observe_many(likelihoods)
        self.end_to_end_latency.labels(LatencyReference.READING_TIME).observe_many(
            reading_latency_s)
        self.end_to_end_latency.labels(LatencyReference.BROKER_TIME).observe_many(
            broker_latency_s)
        if counts["consumed"]:
            self.batch_readings.observe(counts["consumed"])
        if step_seconds is not None:
            self.step_duration.observe(step_seconds)
        self.poll_batch_duration.observe(batch_seconds)

        if newest_reading_ts_s is not None and math.isfinite(newest_reading_ts_s):
            with self._lock:
                if newest_reading_ts_s > self._newest_reading_ts_s:
                    self._newest_reading_ts_s = float(newest_reading_ts_s)
                    self.last_processed_reading_timestamp.set(newest_reading_ts_s)
        self.last_batch_completed_timestamp.set(
            time.time() if completed_at_s is None else completed_at_s)

    # -- streams and state -----------------------------------------------------------------

    def set_streams(self, active: int, state_bytes: int) -> None:
        self.active_streams.set(_count(active, "active"))
        self.state_store_bytes.set(_count(state_bytes, "state_bytes"))

    def record_evictions(self, n: int) -> None:
        self.stream_evictions.inc(_count(n, "evictions"))

    # -- Kafka consumer --------------------------------------------------------------------

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        """Lag of one assigned partition; ``forget_partition`` removes it on revocation."""
        self.consumer_lag.labels(str(topic), str(_count(partition, "partition"))).set(lag)

    def set_held_back(self, records: int) -> None:
        self.held_back_messages.set(_count(records, "held_back"))

    def forget_partition(self, topic: str, partition: int) -> None:
        """Remove a revoked or lost partition's lag series (no error if it has none)."""
        self.consumer_lag.remove(str(topic), str(_count(partition, "partition")))

    def set_assigned_partitions(self, n: int) -> None:
        self.assigned_partitions.set(_count(n, "assigned partitions"))

    def record_rebalance(self, kind: str) -> None:
        self.rebalances.labels(_allowed(kind, RebalanceKind, "kind")).inc()

    # -- model -----------------------------------------------------------------------------

    def set_model(self, version: str, trained_at_iso: str, trained_at_s: float,
                  state_layout: str) -> None:
        """The loaded model; the previous model's ``model_info`` series is removed."""
        labels = (str(version), str(trained_at_iso), str(state_layout))
        with self._lock:
            # Set the new series before removing the old one: a scrape always sees a model.
            self.model_info.labels(*labels).set(1)
            if self._model_labels is not None and self._model_labels != labels:
                self.model_info.remove(*self._model_labels)
            self._model_labels = labels
            self.model_trained_timestamp.set(trained_at_s)

    def record_model_reload(self, outcome: str) -> None:
        self.model_reloads.labels(_allowed(outcome, ModelReloadOutcome, "outcome")).inc()

    # -- durability ------------------------------------------------------------------------

    def observe_checkpoint(self, seconds: float, records: int, nbytes: int) -> None:
        """A successful checkpoint of ``records`` changelog records (states and tombstones),
        which count as the changelog's output records too."""
        records, nbytes = _count(records, "records"), _count(nbytes, "nbytes")
        self.checkpoint_duration.observe(seconds)
        self.checkpoint_records.inc(records)
        self.checkpoint_bytes.inc(nbytes)
        self.output_records.labels(TopicRole.CHANGELOG).inc(records)

    def record_checkpoint_failure(self) -> None:
        self.checkpoint_failures.inc()

    def observe_restore(self, seconds: float, records: int) -> None:
        records = _count(records, "records")
        self.restore_duration.observe(seconds)
        self.restore_records.inc(records)

    def record_outputs(self, topic_role: str, n: int) -> None:
        """Records produced to one output topic; dead letters also count in dead_letters_total."""
        role = _allowed(topic_role, TopicRole, "topic_role")
        n = _count(n, "records")
        self.output_records.labels(role).inc(n)
        if role == TopicRole.DEAD_LETTER:
            self.dead_letters.inc(n)

    def record_dead_letters_truncated(self, n: int) -> None:
        self.dead_letters_truncated.inc(_count(n, "truncated dead letters"))

    def record_dead_letters_dropped(self, n: int) -> None:
        self.dead_letters_dropped.inc(_count(n, "dropped dead letters"))

    def record_capacity_evictions(self, n: int) -> None:
        self.stream_capacity_evictions.inc(_count(n, "capacity evictions"))
