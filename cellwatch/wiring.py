"""From the settings tree to the objects of ``training`` and ``streaming``: the only place
that builds the worker's parts.

:func:`assemble_worker` builds a worker and its parts around given connections (in memory in
the unit tests); :func:`build_worker` does it from the settings, connected to Kafka;
:func:`run_worker` runs one as ``cellwatch run`` does (the CLI, the integration tests and the
benchmarks call it). A :class:`PartWrappers` wraps parts as they are built (the benchmarks
time them so). The CLI commands stay thin by calling these; nothing here parses flags or
prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry

from cellwatch.kafka_clients import KafkaClient, kafka_client
from cellwatch.settings import Settings, TrainingSettings
from cellwatch.startup_errors import kafka_startup, metrics_address_error, wait_for_brokers
from detector.artifact import METADATA_FILE, ModelArtifact, load_artifact
from streaming.changelog import ChangelogWriter
from streaming.checkpoint import Checkpoint
from streaming.dead_letters import DEFAULT_TOPIC_MAX_BYTES
from streaming.engine import ScoringEngine
from streaming.http_endpoint import MetricsEndpoint
from streaming.messages import EARLIEST_TS_MS, ReadingParser
from streaming.metrics import WorkerMetrics
from streaming.model_reload import ModelWatcher
from streaming.partitions import PartitionTracker
from streaming.ports import ChangelogReader, ReadingSource, RecordSink
from streaming.state_store import StateStore
from streaming.worker import ModelInfo, Worker, WorkerConfig, WorkerParts
from training.trainer import TrainingOptions

log = logging.getLogger(__name__)


def worker_config(settings: Settings) -> WorkerConfig:
    kafka, worker = settings.kafka, settings.worker
    return WorkerConfig(
        readings_topic=kafka.readings_topic,
        scores_topic=kafka.scores_topic,
        anomalies_topic=kafka.anomalies_topic,
        dead_letter_topic=kafka.dead_letter_topic,
        max_poll_records=worker.max_poll_records,
        poll_timeout_ms=worker.poll_timeout_ms,
        max_message_bytes=worker.max_message_bytes,
        idle_eviction_s=worker.idle_stream_eviction_seconds,
        episode_gap=worker.anomaly_episode_gap,
        changelog_topic=kafka.state_changelog_topic if worker.checkpoints else None,
        checkpoint_interval_s=worker.checkpoint_interval_seconds,
        max_future_s=worker.max_future_seconds,
        max_abs_value=worker.max_abs_value,
        max_stream_id_bytes=worker.max_stream_id_bytes,
        max_streams=worker.max_streams,
        max_stream_readings_per_batch=worker.max_stream_readings_per_batch,
    )


def transactional_id(settings: Settings) -> str | None:
    if not settings.worker.transactional:
        return None
    kafka = settings.kafka
    return kafka.transactional_id or f"{kafka.group_id}.{kafka.client_id}"


def artifact_signature(path) -> tuple[int, int, int] | None:
    """Changes whenever a new artifact is swapped in (its metadata file is written last)."""
    try:
        stat = (path / METADATA_FILE).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def model_info(artifact: ModelArtifact) -> ModelInfo:
    created = dt.datetime.fromisoformat(artifact.metadata.created_at)
    return ModelInfo(step=artifact.step, channels=artifact.metadata.channels,
                     version=artifact.metadata.model_version,
                     trained_at=artifact.metadata.created_at,
                     trained_at_s=created.timestamp())


def training_options(training: TrainingSettings, verbose: int = 1) -> TrainingOptions:
    return TrainingOptions(
        seed=training.seed, epochs=training.epochs, batch_size=training.batch_size,
        sequence_length=training.sequence_length,
        validation_fraction=training.validation_fraction,
        learning_rate=training.learning_rate,
        early_stopping_patience=training.early_stopping_patience,
        memory_units=training.memory_units, hidden_units=training.hidden_units,
        time_features=training.time_features, verbose=verbose)


def _unchanged(part: Any) -> Any:
    return part


@dataclasses.dataclass(frozen=True)
class PartWrappers:
    """Each takes a part as wiring built it and returns what the worker uses in its place
    (by default the part itself); ``worker`` sees the built worker. The benchmarks wrap the
    parts with timers this way."""

    source: Callable[[ReadingSource], ReadingSource] = _unchanged
    sink: Callable[[RecordSink], RecordSink] = _unchanged
    parser: Callable[[ReadingParser], ReadingParser] = _unchanged
    engine: Callable[[ScoringEngine], ScoringEngine] = _unchanged
    worker: Callable[[Worker], Worker] = _unchanged


UNWRAPPED = PartWrappers()


def assemble_worker(config: WorkerConfig, model: ModelInfo, sink: RecordSink,
                    metrics: WorkerMetrics, *, changelog: ChangelogReader | None = None,
                    changelog_check: Callable[[], None] | None = None,
                    clock: Callable[[], float] = time.time,
                    wrappers: PartWrappers = UNWRAPPED) -> Worker:
    """A worker and its parts around the given connections.

    Args:
        changelog: reads the state changelog for restores; required with
            ``config.changelog_topic`` (and only with it).
        changelog_check: raises :class:`~streaming.ports.TopicSetupError` when the changelog
            is gone or no longer has the shape the checkpoints need; called before every
            checkpoint and after a failed one.
        clock: wall clock in seconds; injectable for tests.
    """
    if (config.changelog_topic is None) != (changelog is None):
        raise ValueError("a changelog topic and a changelog reader go together")
    store = StateStore(model.step.layout)

    def engine_for(served: ModelInfo) -> ScoringEngine:
        return wrappers.engine(ScoringEngine(served.step, store, served.channels,
                                             served.version, config.episode_gap, clock=clock))

    engine = engine_for(model)
    parser = wrappers.parser(ReadingParser(model.channels, config.max_message_bytes,
                                           max_abs_value=config.max_abs_value,
                                           max_stream_id_bytes=config.max_stream_id_bytes,
                                           earliest_ts_ms=EARLIEST_TS_MS))
    lock = threading.Lock()
    writer = (ChangelogWriter(config.changelog_topic, sink, config.readings_topic)
              if config.changelog_topic is not None else None)
    checkpoint = Checkpoint(store, sink, config.readings_topic, metrics, lock, writer,
                            changelog_check)
    partitions = PartitionTracker(store, checkpoint, metrics, config.readings_topic, lock,
                                  changelog, clock)
    parts = WorkerParts(store, engine, engine_for, parser, checkpoint, partitions, lock)
    return wrappers.worker(Worker(config, model, parts, sink, metrics, clock=clock))


@dataclasses.dataclass
class KafkaWorker:
    """A worker connected to Kafka (:func:`build_worker`), not yet consuming."""

    worker: Worker
    settings: Settings
    client: KafkaClient
    wrappers: PartWrappers

    def join_group(self) -> ReadingSource:
        """The consumer of the readings topic in the worker's group; its partition tracker
        hears of the rebalances."""
        kafka, config = self.settings.kafka, self.worker.config
        with kafka_startup(kafka.bootstrap_servers):
            source = self.client.reading_source(
                self.client.options, config.readings_topic, kafka.group_id,
                self.worker.partitions, session_timeout_ms=kafka.session_timeout_ms)
        return self.wrappers.source(source)


@contextlib.contextmanager
def build_worker(settings: Settings, artifact: ModelArtifact, metrics: WorkerMetrics,
                 wrappers: PartWrappers = UNWRAPPED) -> Iterator[KafkaWorker]:
    """Checks and creates the topics, connects the sink and the changelog, and assembles the
    worker serving ``artifact``; closes the connections on exit (the sink too, unless the
    worker ran: its run closes it). Connection problems raise the start-up errors of
    :mod:`cellwatch.startup_errors`."""
    client = kafka_client(settings.kafka)
    options = client.options
    config = worker_config(settings)
    changelog = changelog_check = sink = None
    built: KafkaWorker | None = None
    try:
        with kafka_startup(settings.kafka.bootstrap_servers):
            co_partitioned = client.ensure_topics(
                options, config.readings_topic,
                [config.scores_topic, config.anomalies_topic, config.dead_letter_topic])
            config = dataclasses.replace(
                config, co_partitioned=co_partitioned,
                dead_letter_max_bytes=client.dead_letter_topic_limit(
                    options, config.dead_letter_topic) or DEFAULT_TOPIC_MAX_BYTES)
            if config.changelog_topic is not None:
                partitions = client.partition_count(options, config.readings_topic)
                client.ensure_changelog(options, config.changelog_topic, partitions)
                changelog = client.changelog_reader(
                    options, config.changelog_topic,
                    read_committed=settings.worker.transactional)
                changelog_check = client.changelog_check(options, config.changelog_topic,
                                                         partitions)
            sink = wrappers.sink(client.record_sink(
                options, transactional_id=transactional_id(settings)))
        worker = assemble_worker(config, model_info(artifact), sink, metrics,
                                 changelog=changelog,
                                 changelog_check=changelog_check, wrappers=wrappers)
        built = KafkaWorker(worker, settings, client, wrappers)
        yield built
    finally:
        if sink is not None and (built is None or built.worker.source is None):
            sink.close()
        if changelog is not None:
            changelog.close()
        if changelog_check is not None:
            changelog_check.close()


def run_worker(settings: Settings, stop: threading.Event, on_ready=None,
               reload_requested: threading.Event | None = None,
               wrappers: PartWrappers = UNWRAPPED) -> None:
    """Loads the model, serves metrics and runs the worker until ``stop`` is set.

    ``on_ready(endpoint)`` is called once the metrics endpoint listens (tests use it);
    setting ``reload_requested`` (SIGHUP) loads the artifact again.
    """
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    probes = _StartingProbes()
    endpoint = MetricsEndpoint(registry, host=settings.metrics.host, port=settings.metrics.port,
                               liveness=probes.liveness, readiness=probes.readiness)
    # Bound first: a taken port fails at once, before a model is loaded or a topic created.
    try:
        endpoint.start()
    except OSError as error:
        raise metrics_address_error(settings.metrics.host, settings.metrics.port,
                                    error) from None
    try:
        _serve(settings, stop, endpoint, metrics, probes, on_ready, reload_requested, wrappers)
    finally:
        endpoint.stop()
    log.info("worker stopped after committing its last batch")


class _StartingProbes:
    """The endpoint's probes while the worker is set up (the endpoint listens first): alive
    but not ready until the worker exists, then the worker's own."""

    def __init__(self) -> None:
        self.worker: Worker | None = None

    def liveness(self) -> tuple[bool, str]:
        return (True, "starting") if self.worker is None else self.worker.liveness()

    def readiness(self) -> tuple[bool, str]:
        if self.worker is None:
            return False, "starting: loading the model, connecting to Kafka, setting up topics"
        return self.worker.readiness()


def _serve(settings: Settings, stop: threading.Event, endpoint: MetricsEndpoint,
           metrics: WorkerMetrics, probes: _StartingProbes, on_ready,
           reload_requested: threading.Event | None, wrappers: PartWrappers) -> None:
    artifact = load_artifact(settings.model.artifact)
    if not wait_for_brokers(settings.kafka.bootstrap_servers,
                            settings.kafka.startup_timeout_seconds, stop=stop):
        return  # stopped (SIGTERM) while waiting for a broker: nothing started yet
    with build_worker(settings, artifact, metrics, wrappers) as built:
        worker = built.worker
        probes.worker = worker
        path = settings.model.artifact
        watcher = ModelWatcher(
            signature=lambda: artifact_signature(path),
            load=lambda: model_info(load_artifact(path)),
            offer=worker.offer_model,
            on_failure=lambda _error: metrics.record_model_reload("failed"),
            poll_s=settings.worker.reload_poll_seconds, stop=stop,
            reload_requested=reload_requested)
        # TensorFlow and Keras leave ~340k long-lived objects that every full collection
        # would scan again; freezing them cut the worker's collector time ~9x in the benchmark.
        gc.freeze()
        with watcher:
            log.info("metrics on %s/metrics; model %s; consuming %s as group %s",
                     endpoint.url, artifact.metadata.model_version,
                     worker.config.readings_topic, settings.kafka.group_id)
            if on_ready is not None:
                on_ready(endpoint)
            worker.run(built.join_group(), stop)
