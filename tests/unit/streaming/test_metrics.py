"""WorkerMetrics: naming rules, batch histograms equal to per-value ones, bounded labels."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from streaming.batch_histogram import BatchHistogram
from streaming.metrics import (
    LATENCY_BUCKETS,
    LIKELIHOOD_BUCKETS,
    REJECT_REASONS,
    SCORE_BUCKETS,
    RejectReason,
    WorkerMetrics,
)

EXPECTED_REASONS = {"invalid_utf8", "invalid_json", "missing_field", "wrong_type", "non_finite",
                    "unknown_channel", "missing_channel", "oversized", "out_of_order",
                    "duplicate", "future", "implausible_ts", "out_of_range", "key_mismatch",
                    "stream_id_too_long"}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum", "_created")
NON_BASE_UNITS = {"ms", "msec", "millis", "milliseconds", "us", "microseconds", "ns",
                  "nanoseconds", "minutes", "hours", "days", "kb", "mb", "gb", "kilobytes",
                  "megabytes", "gigabytes", "bits", "percent", "pct"}
TIME_WORDS = {"duration", "latency", "timestamp", "time", "age", "delay", "elapsed"}


def naming_problems(registry: CollectorRegistry, max_series: int = 20) -> list[str]:
    """Violations of the Prometheus naming guide and our label rules, one line each."""
    problems = []
    for family in registry.collect():
        name = family.name
        words = set(name.split("_"))
        if not name.startswith("cellwatch_"):
            problems.append(f"{name}: no cellwatch_ prefix")
        if not family.documentation.strip():
            problems.append(f"{name}: no help text")
        samples = [s for s in family.samples if not s.name.endswith("_created")]
        if family.type == "counter":
            problems += [f"{s.name}: counter sample without _total" for s in samples
                         if not s.name.endswith("_total")]
        else:
            if name.endswith("_total") or any(s.name.endswith("_total") for s in samples):
                problems.append(f"{name}: _total on a {family.type}")
        if words & NON_BASE_UNITS:
            problems.append(f"{name}: not in base units ({sorted(words & NON_BASE_UNITS)})")
        if words & TIME_WORDS and not name.endswith("_seconds"):
            problems.append(f"{name}: a time without the _seconds suffix")
        if "bytes" in words and not name.endswith("_bytes"):
            problems.append(f"{name}: bytes not as the unit suffix")
        if name.endswith("_info") and any(s.value != 1 for s in samples):
            problems.append(f"{name}: an info metric whose value is not 1")
        label_names = {label for s in samples for label in s.labels} - {"le"}
        problems += [f"{name}: per-stream label {label!r}" for label in sorted(label_names)
                     if "stream" in label or label in {"id", "key", "series", "sensor"}]
        series = {tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                  for s in samples}
        if len(series) > max_series:
            problems.append(f"{name}: {len(series)} series, more than {max_series}")
    return problems


def rng_values(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.lognormal(mean=0.0, sigma=2.0, size=size)
    # Exact bucket bounds (le is inclusive), zero, negatives and values above every bound.
    edges = np.array([*SCORE_BUCKETS, 0.0, -1.5, 1e6, 0.25, 64.0])
    return np.concatenate([values, edges])


def histogram_samples(registry: CollectorRegistry, name: str,
                      labels: dict[str, str] | None = None) -> dict[tuple, float]:
    """``_bucket``/``_count``/``_sum`` samples of one histogram series, keyed by (suffix, le)."""
    labels = labels or {}
    found = {}
    for family in registry.collect():
        if family.name != name:
            continue
        for sample in family.samples:
            suffix = sample.name.removeprefix(name)
            series = {k: v for k, v in sample.labels.items() if k != "le"}
            if suffix in ("_bucket", "_count", "_sum") and series == labels:
                found[(suffix, sample.labels.get("le"))] = sample.value
    assert found, f"no samples of {name}{labels}"
    return found


def assert_same_histogram(actual: dict[tuple, float], expected: dict[tuple, float]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if key[0] == "_sum":  # np.sum adds pairwise, observe() one by one
            assert actual[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
        else:
            assert actual[key] == value, key


def batch(metrics: WorkerMetrics, **overrides) -> None:
    arguments = dict(consumed=0, scored=0, rejected_by_reason={}, flagged=0, episodes_opened=0,
                     scores=np.empty(0), likelihoods=np.empty(0),
                     reading_latency_s=np.empty(0), broker_latency_s=np.empty(0),
                     step_seconds=None, batch_seconds=0.01, newest_reading_ts_s=None)
    arguments.update(overrides)
    metrics.observe_batch(**arguments)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> WorkerMetrics:
    return WorkerMetrics(registry, start_time_s=1_700_000_000.0)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# -- naming ----------------------------------------------------------------------------------


def test_the_naming_check_sees_violations() -> None:
    bad = CollectorRegistry()
    Gauge("cellwatch_requests_total", "a gauge named like a counter", registry=bad)
    Histogram("cellwatch_step_latency_ms", "milliseconds", registry=bad)
    Gauge("cellwatch_state_size", "size in kb", ["stream_id"], registry=bad).labels("a").set(1)
    Counter("worker_polls", "no prefix", registry=bad)
    Gauge("cellwatch_checkpoint_time", "a time without unit", registry=bad)
    Gauge("cellwatch_build_info", "an info that is not 1", registry=bad).set(2)
    many = Gauge("cellwatch_things", "too many series", ["partition"], registry=bad)
    for i in range(25):
        many.labels(str(i)).set(i)
    problems = "\n".join(naming_problems(bad))
    for expected in ("cellwatch_requests_total: _total on a gauge",
                     "cellwatch_step_latency_ms: not in base units",
                     "cellwatch_step_latency_ms: a time without the _seconds suffix",
                     "cellwatch_state_size: per-stream label 'stream_id'",
                     "worker_polls: no cellwatch_ prefix",
                     "cellwatch_checkpoint_time: a time without the _seconds suffix",
                     "cellwatch_build_info: an info metric whose value is not 1",
                     "cellwatch_things: 25 series"):
        assert expected in problems


def test_every_metric_follows_the_naming_rules(registry: CollectorRegistry,
                                               metrics: WorkerMetrics) -> None:
    batch(metrics, consumed=3, scored=3, scores=np.ones(3), likelihoods=np.full(3, 0.5),
          reading_latency_s=np.full(3, 0.2), broker_latency_s=np.full(3, 0.1),
          step_seconds=0.001, newest_reading_ts_s=1.7e9)
    metrics.set_model("abc123", "2024-01-31T12:00:00Z", 1_706_702_400.0, "memory32")
    for partition in range(6):
        metrics.set_lag("cellwatch.readings", partition, 10)
    metrics.set_streams(100, 4096)
    families = {family.name for family in registry.collect()}
    assert len(families) >= 30
    assert naming_problems(registry) == []


def test_counters_end_in_total_and_expected_names_exist(registry: CollectorRegistry,
                                                       metrics: WorkerMetrics) -> None:
    names = {(family.name, family.type) for family in registry.collect()}
    for counter in ("readings_consumed", "readings_scored", "readings_rejected",
                    "readings_skipped", "anomalous_readings", "anomaly_episodes",
                    "stream_evictions", "model_reloads", "checkpoint_records",
                    "checkpoint_bytes", "checkpoint_failures", "restore_records",
                    "rebalances", "dead_letters", "output_records"):
        assert (f"cellwatch_{counter}", "counter") in names  # exposed as ..._total
    for histogram in ("end_to_end_latency_seconds", "batch_readings", "step_duration_seconds",
                      "poll_batch_duration_seconds", "anomaly_score", "anomaly_likelihood",
                      "checkpoint_duration_seconds", "restore_duration_seconds"):
        assert (f"cellwatch_{histogram}", "histogram") in names
    for gauge in ("consumer_lag_messages", "assigned_partitions", "active_streams",
                  "state_store_bytes", "last_processed_reading_timestamp_seconds",
                  "last_batch_completed_timestamp_seconds", "model_info",
                  "model_trained_timestamp_seconds", "worker_start_timestamp_seconds"):
        assert (f"cellwatch_{gauge}", "gauge") in names
    assert value(registry, "cellwatch_worker_start_timestamp_seconds") == 1_700_000_000.0


def test_both_exposition_formats_parse(registry: CollectorRegistry,
                                       metrics: WorkerMetrics) -> None:
    batch(metrics, consumed=2, scored=2, scores=np.array([1.0, 3.0]),
          likelihoods=np.array([0.5, 0.9995]), reading_latency_s=np.array([0.01, 0.02]),
          broker_latency_s=np.array([0.005, 0.006]), step_seconds=0.002)
    metrics.set_model("v1", "2024-01-31T12:00:00Z", 1_706_702_400.0, "memory32")
    text = {f.name: f for f in parse_text(generate_latest(registry).decode())}
    assert text["cellwatch_anomaly_score"].type == "histogram"
    openmetrics = {f.name: f for f in parse_om(generate_openmetrics(registry).decode())}
    assert openmetrics["cellwatch_readings_consumed"].type == "counter"
    assert openmetrics["cellwatch_end_to_end_latency_seconds"].type == "histogram"


# -- the default registry ---------------------------------------------------------------------


def test_the_default_registry_is_untouched() -> None:
    before = {family.name for family in REGISTRY.collect()}
    first, second = CollectorRegistry(), CollectorRegistry()
    for registry in (first, second):  # a second instance would clash on a shared registry
        metrics = WorkerMetrics(registry)
        batch(metrics, consumed=5, scored=5, scores=np.ones(5), likelihoods=np.ones(5),
              reading_latency_s=np.ones(5), broker_latency_s=np.ones(5))
        metrics.set_model("v", "t", 0.0, "l")
    assert {family.name for family in REGISTRY.collect()} == before
    assert not any(name.startswith("cellwatch_") for name in before)
    assert REGISTRY.get_sample_value("cellwatch_readings_consumed_total") is None
    assert first.get_sample_value("cellwatch_readings_consumed_total") == 5


def test_metrics_register_on_the_given_registry(registry: CollectorRegistry,
                                                metrics: WorkerMetrics) -> None:
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        WorkerMetrics(registry)


# -- batch histograms ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [5, 300, 10_000])  # below and above the search threshold
def test_batch_observation_equals_per_value_observation(size: int) -> None:
    values = rng_values(size, seed=size)
    reference = CollectorRegistry()
    histogram = Histogram("cellwatch_anomaly_score", "h", buckets=SCORE_BUCKETS,
                          registry=reference)
    batched = CollectorRegistry()
    collector = BatchHistogram("cellwatch_anomaly_score", "h", SCORE_BUCKETS)
    batched.register(collector)
    for chunk in np.array_split(values, 3):  # several batches accumulate
        collector.observe_many(chunk)
        for v in chunk:
            histogram.observe(float(v))
    collector.observe(2.0)
    histogram.observe(2.0)
    expected = histogram_samples(reference, "cellwatch_anomaly_score")
    assert expected[("_count", None)] == len(values) + 1
    assert_same_histogram(histogram_samples(batched, "cellwatch_anomaly_score"), expected)


def test_worker_batch_equals_per_value_histograms(registry: CollectorRegistry,
                                                  metrics: WorkerMetrics) -> None:
    rng = np.random.default_rng(3)
    scores = rng_values(2_000)
    likelihoods = np.concatenate([rng.uniform(0.4, 1.0, 2_000), [0.5, 0.999, 1.0]])
    latency = np.concatenate([rng.exponential(0.3, 2_000), [0.001, 60.0, 120.0]])
    broker = latency / 2
    reference = CollectorRegistry()
    ref_scores = Histogram("s", "s", buckets=SCORE_BUCKETS, registry=reference)
    ref_likelihood = Histogram("l", "l", buckets=LIKELIHOOD_BUCKETS, registry=reference)
    ref_latency = Histogram("t", "t", ["reference"], buckets=LATENCY_BUCKETS,
                            registry=reference)
    for _ in range(2):
        batch(metrics, consumed=len(scores), scored=len(scores), scores=scores,
              likelihoods=likelihoods, reading_latency_s=latency, broker_latency_s=broker)
        for array, observe in ((scores, ref_scores.observe),
                               (likelihoods, ref_likelihood.observe),
                               (latency, ref_latency.labels("reading_time").observe),
                               (broker, ref_latency.labels("broker_time").observe)):
            for v in array:
                observe(float(v))
    pairs = [("cellwatch_anomaly_score", "s", {}),
             ("cellwatch_anomaly_likelihood", "l", {}),
             ("cellwatch_end_to_end_latency_seconds", "t", {"reference": "reading_time"}),
             ("cellwatch_end_to_end_latency_seconds", "t", {"reference": "broker_time"})]
    for ours, theirs, labels in pairs:
        assert_same_histogram(histogram_samples(registry, ours, labels),
                               histogram_samples(reference, theirs, labels))


def test_non_finite_values_are_not_observed() -> None:
    registry = CollectorRegistry()
    collector = BatchHistogram("cellwatch_x_seconds", "x", [1.0, 2.0])
    registry.register(collector)
    collector.observe_many(np.array([0.5, math.nan, math.inf, -math.inf, 1.5]))
    collector.observe(math.nan)
    assert registry.get_sample_value("cellwatch_x_seconds_count") == 2
    assert registry.get_sample_value("cellwatch_x_seconds_sum") == 2.0
    assert registry.get_sample_value("cellwatch_x_seconds_bucket", {"le": "1.0"}) == 1


def test_undeclared_histogram_labels_are_refused(metrics: WorkerMetrics) -> None:
    with pytest.raises(ValueError, match="not among the declared"):
        metrics.end_to_end_latency.labels("stream-42")
    with pytest.raises(ValueError, match="strictly increasing"):
        BatchHistogram("cellwatch_y", "y", [2.0, 1.0])


def test_batch_observation_is_much_faster_than_per_value() -> None:
    values = rng_values(10_000)
    histogram = Histogram("h", "h", buckets=SCORE_BUCKETS, registry=CollectorRegistry())
    collector = BatchHistogram("b", "b", SCORE_BUCKETS)

    def best_of(repeats: int, run) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return min(times)

    per_value = best_of(2, lambda: [histogram.observe(float(v)) for v in values])
    batched = best_of(5, lambda: collector.observe_many(values))
    assert batched * 5 < per_value, (batched, per_value)


# -- counters and labels ---------------------------------------------------------------------


def test_every_rejection_reason_starts_at_zero(registry: CollectorRegistry,
                                               metrics: WorkerMetrics) -> None:
    assert set(REJECT_REASONS) == EXPECTED_REASONS == {r.value for r in RejectReason}
    exposed = {s.labels["reason"]: s.value for family in registry.collect()
               if family.name == "cellwatch_readings_rejected"
               for s in family.samples if s.name.endswith("_total")}
    assert exposed == dict.fromkeys(EXPECTED_REASONS, 0.0)
    for outcome in ("kept_state", "reset_state", "failed"):
        assert value(registry, "cellwatch_model_reloads_total", outcome=outcome) == 0
    for kind in ("assigned", "revoked", "lost"):
        assert value(registry, "cellwatch_rebalances_total", kind=kind) == 0
    for role in ("scores", "anomalies", "dead_letter", "changelog"):
        assert value(registry, "cellwatch_output_records_total", topic_role=role) == 0


def test_observe_batch_counts(registry: CollectorRegistry, metrics: WorkerMetrics) -> None:
    batch(metrics, consumed=10, scored=6, flagged=2, episodes_opened=1, skipped=1,
          rejected_by_reason={"oversized": 2, RejectReason.DUPLICATE: 1, "invalid_json": 0},
          scores=np.ones(6), step_seconds=0.003, batch_seconds=0.02,
          newest_reading_ts_s=1_706_702_400.5, completed_at_s=1_800_000_000.0)
    assert value(registry, "cellwatch_readings_consumed_total") == 10
    assert value(registry, "cellwatch_readings_scored_total") == 6
    assert value(registry, "cellwatch_readings_rejected_total", reason="oversized") == 2
    assert value(registry, "cellwatch_readings_rejected_total", reason="duplicate") == 1
    assert value(registry, "cellwatch_readings_rejected_total", reason="invalid_json") == 0
    assert value(registry, "cellwatch_readings_skipped_total") == 1
    assert value(registry, "cellwatch_anomalous_readings_total") == 2
    assert value(registry, "cellwatch_anomaly_episodes_total") == 1
    assert value(registry, "cellwatch_batch_readings_count") == 1
    assert value(registry, "cellwatch_batch_readings_sum") == 10
    assert value(registry, "cellwatch_batch_readings_bucket", le="4.0") == 0
    assert value(registry, "cellwatch_batch_readings_bucket", le="16.0") == 1
    assert value(registry, "cellwatch_step_duration_seconds_sum") == 0.003
    assert value(registry, "cellwatch_poll_batch_duration_seconds_sum") == 0.02
    assert value(registry, "cellwatch_last_processed_reading_timestamp_seconds") == 1_706_702_400.5
    assert value(registry, "cellwatch_last_batch_completed_timestamp_seconds") == 1_800_000_000.0

    # The newest reading time only moves forward; no step means no step observation.
    batch(metrics, consumed=1, newest_reading_ts_s=1_000.0)
    batch(metrics, consumed=1, newest_reading_ts_s=math.nan)
    assert value(registry, "cellwatch_last_processed_reading_timestamp_seconds") == 1_706_702_400.5
    assert value(registry, "cellwatch_step_duration_seconds_count") == 1
    assert value(registry, "cellwatch_poll_batch_duration_seconds_count") == 3
    before = time.time()
    batch(metrics, consumed=1, newest_reading_ts_s=1_706_702_401.0)
    assert value(registry, "cellwatch_last_processed_reading_timestamp_seconds") == 1_706_702_401.0
    assert value(registry, "cellwatch_last_batch_completed_timestamp_seconds") >= before


@pytest.mark.parametrize("bad", [
    {"rejected_by_reason": {"stream_overflow": 1}},
    {"rejected_by_reason": {"oversized": -1}},
    {"scored": -3},
    {"flagged": 1.5},
])
def test_bad_batches_change_nothing(registry: CollectorRegistry, metrics: WorkerMetrics,
                                    bad: dict) -> None:
    before = generate_latest(registry)
    with pytest.raises(ValueError):
        batch(metrics, consumed=4, scores=np.ones(4), **bad)
    assert generate_latest(registry) == before


def test_lag_series_are_removed_when_a_partition_is_forgotten(
        registry: CollectorRegistry, metrics: WorkerMetrics) -> None:
    metrics.set_lag("readings", 0, 12)
    metrics.set_lag("readings", 1, 7)
    metrics.set_lag("readings", 1, 3)
    assert value(registry, "cellwatch_consumer_lag_messages", topic="readings",
                 partition="0") == 12
    assert value(registry, "cellwatch_consumer_lag_messages", topic="readings",
                 partition="1") == 3
    metrics.forget_partition("readings", 0)
    metrics.forget_partition("readings", 5)  # never set: no error
    assert value(registry, "cellwatch_consumer_lag_messages", topic="readings",
                 partition="0") is None
    assert value(registry, "cellwatch_consumer_lag_messages", topic="readings",
                 partition="1") == 3
    metrics.forget_partition("readings", 1)
    assert "cellwatch_consumer_lag_messages{" not in generate_latest(registry).decode()
    metrics.set_assigned_partitions(2)
    assert value(registry, "cellwatch_assigned_partitions") == 2


def test_model_info_keeps_only_the_current_model(registry: CollectorRegistry,
                                                 metrics: WorkerMetrics) -> None:
    def info_series() -> list[tuple[dict, float]]:
        return [(s.labels, s.value) for family in registry.collect()
                if family.name == "cellwatch_model_info" for s in family.samples]

    assert info_series() == []
    metrics.set_model("aaa", "2024-01-01T00:00:00Z", 1_704_067_200.0, "memory32")
    metrics.set_model("aaa", "2024-01-01T00:00:00Z", 1_704_067_200.0, "memory32")
    assert info_series() == [({"version": "aaa", "trained_at": "2024-01-01T00:00:00Z",
                               "state_layout": "memory32"}, 1.0)]
    metrics.set_model("bbb", "2024-02-01T00:00:00Z", 1_706_745_600.0, "memory64")
    assert info_series() == [({"version": "bbb", "trained_at": "2024-02-01T00:00:00Z",
                               "state_layout": "memory64"}, 1.0)]
    assert value(registry, "cellwatch_model_trained_timestamp_seconds") == 1_706_745_600.0
    metrics.record_model_reload("reset_state")
    assert value(registry, "cellwatch_model_reloads_total", outcome="reset_state") == 1
    with pytest.raises(ValueError, match="outcome"):
        metrics.record_model_reload("exploded")


def test_streams_and_durability_helpers(registry: CollectorRegistry,
                                        metrics: WorkerMetrics) -> None:
    metrics.set_streams(active=1_234, state_bytes=567_890)
    metrics.record_evictions(3)
    metrics.observe_checkpoint(0.2, records=50, nbytes=4_000)
    metrics.record_checkpoint_failure()
    metrics.observe_restore(1.5, records=700)
    metrics.record_rebalance("assigned")
    metrics.record_outputs("scores", 100)
    metrics.record_outputs("dead_letter", 3)
    expected = {
        ("cellwatch_active_streams", ()): 1_234,
        ("cellwatch_state_store_bytes", ()): 567_890,
        ("cellwatch_stream_evictions_total", ()): 3,
        ("cellwatch_checkpoint_duration_seconds_sum", ()): 0.2,
        ("cellwatch_checkpoint_records_total", ()): 50,
        ("cellwatch_checkpoint_bytes_total", ()): 4_000,
        ("cellwatch_checkpoint_failures_total", ()): 1,
        ("cellwatch_restore_duration_seconds_count", ()): 1,
        ("cellwatch_restore_records_total", ()): 700,
        ("cellwatch_rebalances_total", (("kind", "assigned"),)): 1,
        ("cellwatch_output_records_total", (("topic_role", "scores"),)): 100,
        ("cellwatch_output_records_total", (("topic_role", "changelog"),)): 50,
        ("cellwatch_output_records_total", (("topic_role", "dead_letter"),)): 3,
        ("cellwatch_dead_letters_total", ()): 3,
    }
    actual = {key: value(registry, key[0], **dict(key[1])) for key in expected}
    assert actual == expected
    for call in (lambda: metrics.record_outputs("stream-7", 1),
                 lambda: metrics.record_rebalance("shuffled"),
                 lambda: metrics.record_evictions(-1),
                 lambda: metrics.set_lag("readings", -1, 0)):
        with pytest.raises(ValueError):
            call()


def test_the_state_layout_label_tells_apart_states_that_cannot_be_exchanged() -> None:
    from detector.state import STATE_LAYOUT_VERSION, StateLayout
    from streaming.metrics import state_layout_label

    small = StateLayout(channels=3, input_width=9, memory_units=32)
    large = StateLayout(channels=3, input_width=9, memory_units=64)
    assert state_layout_label(small) == f"{STATE_LAYOUT_VERSION}/{small.size}"
    assert state_layout_label(small) != state_layout_label(large)
    assert state_layout_label(small) == state_layout_label(
        StateLayout(channels=3, input_width=9, memory_units=32))
