"""Throughput, latency and memory of the streaming worker against a real local Kafka broker.

One run starts a single-node broker (``deploy/kafka/broker.sh`` through
``tests.integration.servers.KafkaBroker``, in a temporary directory) unless ``--bootstrap``
names one, saves a 4-channel model artifact with the forecaster's seeded initial weights (no
training: throughput does not depend on the weights), produces N readings of 10,000 streams
into an 8-partition topic keyed by stream, and measures on that topic:

a. a bare kafka-python consumer in a fresh group (and a fresh process, without TensorFlow)
   that only ``json.loads`` each message;
b. the cellwatch worker end to end: ``cellwatch.wiring.run_worker`` itself (``Worker`` +
   ``KafkaReadingSource`` + ``KafkaRecordSink``, metrics registry and endpoint) in a thread,
   its own group, scores into fresh co-partitioned topics, until every reading is scored,
   acknowledged by the broker and committed; with a breakdown of where the time went (timing
   wrappers around its source, sink, parser and engine, and gc.callbacks);
c. the Keras layers called once per reading, each stream's state held outside (the seed
   documents' way), on a sample of the topic's readings;
d. a River ``MinMaxScaler | HalfSpaceTrees`` pipeline, one model shared by all streams (what a
   River user writes first), ``score_one`` then ``learn_one`` per reading, on a sample;

then the end-to-end latency at a fixed offered load (a paced producer process into a fresh
topic while a fresh worker runs; each score record's arrival at a consumer process on the
scores topic minus its reading's ``send()`` time), and the resident memory per stream of the
state store and scoring engine at 100,000 and 1,000,000 streams, each in a fresh process.

Rates (c) and (d) time the model calls alone on already decoded readings; (a) and (b) include
Kafka. NumPy's BLAS and TensorFlow run one thread (the worker runs one step at a time, and the
broker shares the machine). Targets are printed next to the numbers, not enforced.

    python benchmarks/throughput.py [--json] [--readings 1000000] [--bootstrap host:port]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import datetime as dt  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import queue  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
import zlib  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

# The repository root holds `tests.integration.servers` (the broker driver), which is not an
# installed package. Heavy imports (TensorFlow, Keras, the worker) happen inside the functions
# that need them, so the producer and watcher processes start quickly.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from detector.readings import ReadingMessageWriter  # noqa: E402  (light: no TensorFlow)

CHANNELS = ("temperature", "pressure", "vibration", "current")
READING_WRITER = ReadingMessageWriter(CHANNELS)
# Per channel: level, amplitude of a 2-hour cycle, noise; the artifact's normalization matches.
LEVEL = np.array([20.0, 1.0, 0.5, 10.0])
AMPLITUDE = np.array([2.0, 0.1, 0.1, 1.0])
NOISE = np.array([0.2, 0.01, 0.05, 0.3])
START_MS = 1_700_000_000_000
INTERVAL_MS = 60_000
POLL_RECORDS = 5000  # the worker's default max_poll_records, used by the bare consumer too
MEMORY_BATCH = 10_000

TARGETS = {
    "worker_vs_bare_consumer": ">= 0.8",
    "worker_vs_river": ">= 3",
    "latency_p99_ms": "<= 50",
    "bytes_per_stream": "<= 1024",
}

log = logging.getLogger("throughput")


# --- readings --------------------------------------------------------------------------------


def stream_name(index: int) -> str:
    return f"stream-{index:05d}"


def stream_partitions(streams: int, partitions: int) -> np.ndarray:
    """Partition of each stream: CRC-32 of its id, computed once (no per-send partitioner)."""
    return np.array([zlib.crc32(stream_name(s).encode()) % partitions for s in range(streams)],
                    dtype=np.int64)


def signal(streams: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
    """Readings ``[len(streams), 4]`` of ``streams`` at their ``step``-th reading."""
    phase = 2 * math.pi * step / 120 + (streams * 0.618)[:, None]
    return LEVEL + AMPLITUDE * np.sin(phase) + NOISE * rng.standard_normal((len(streams), 4))


def reading_json(stream: str, ts: int, v: list[float]) -> bytes:
    """A reading in the worker's format, by the product's writer; values rounded to a
    sensor's few digits, as producers send them (and the messages stay their real size)."""
    return READING_WRITER.message(stream, ts, [round(v[0], 3), round(v[1], 4),
                                               round(v[2], 4), round(v[3], 3)])


def _produce_share(bootstrap: str, topic: str, readings: int, streams: int, partitions: int,
                   share: int, shares: int, seed: int, results) -> None:
    """Producer process: the readings of the streams whose partition % shares == share.

    Global order is round-major (every stream's k-th reading before any (k+1)-th), so
    timestamps increase per stream and a poll batch holds mostly distinct streams.
    """
    try:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, enable_idempotence=False,
                                 linger_ms=50, batch_size=1 << 20,
                                 max_request_size=8 << 20)
        parts = stream_partitions(streams, partitions)
        mine = np.flatnonzero(parts % shares == share)
        index = mine.tolist()
        keys = [stream_name(s).encode() for s in index]
        names = [stream_name(s) for s in index]
        part_of = parts[mine].tolist()
        rng = np.random.default_rng([seed, share])
        send = producer.send
        sent = 0
        started = time.perf_counter()
        for step in range(-(-readings // streams)):
            limit = readings - step * streams  # this round holds the streams below the limit
            ts = START_MS + step * INTERVAL_MS
            for j, values in enumerate(signal(mine, step, rng).tolist()):
                if index[j] >= limit:
                    break
                send(topic, value=reading_json(names[j], ts, values), key=keys[j],
                     partition=part_of[j])
                sent += 1
        producer.flush(timeout=600)
        elapsed = time.perf_counter() - started
        producer.close(timeout=30)
        results.put({"share": share, "sent": sent, "seconds": elapsed})
    except BaseException as error:
        results.put({"share": share, "error": repr(error)})
        raise


def produce_readings(bootstrap: str, topic: str, readings: int, streams: int, partitions: int,
                     producers: int, seed: int, timeout_s: float) -> dict:
    """Fills ``topic`` with ``readings`` readings from ``producers`` processes."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    processes = [ctx.Process(target=_produce_share, name=f"producer-{share}", daemon=True,
                             args=(bootstrap, topic, readings, streams, partitions, share,
                                   producers, seed, results))
                 for share in range(producers)]
    started = time.perf_counter()
    for process in processes:
        process.start()
    try:
        reports = [_get(results, started + timeout_s, "producing the readings")
                   for _ in processes]
    finally:
        _end(processes)
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        raise RuntimeError(f"a producer failed: {errors[0]}")
    sent = sum(r["sent"] for r in reports)
    if sent != readings:
        raise RuntimeError(f"produced {sent} readings, expected {readings}")
    elapsed = time.perf_counter() - started
    return {"readings": sent, "seconds": round(elapsed, 2), "processes": producers,
            "readings_per_second": round(sent / elapsed)}


def _get(results, deadline: float, what: str):
    try:
        return results.get(timeout=max(0.0, deadline - time.perf_counter()))
    except queue.Empty:
        raise TimeoutError(f"{what}: no result before the deadline") from None


def _end(processes) -> None:
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()
            process.join(timeout=10)


# --- (a) bare consumer -----------------------------------------------------------------------


def _bare_consumer_child(bootstrap: str, topic: str, readings: int, timeout_s: float,
                         results) -> None:
    try:
        results.put(_bare_consume(bootstrap, topic, readings, timeout_s))
    except BaseException as error:
        results.put({"error": repr(error)})
        raise


def _bare_consume(bootstrap: str, topic: str, readings: int, timeout_s: float) -> dict:
    from kafka import KafkaConsumer

    collector = _GcTimer()
    gc.callbacks.append(collector)
    # The same fetch sizes as the worker's KafkaReadingSource.
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap,
                             group_id=f"bench-bare-{uuid.uuid4().hex[:8]}",
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             max_partition_fetch_bytes=4 << 20, fetch_max_bytes=50 << 20)
    loads = json.loads
    count = 0
    created = time.perf_counter()
    first = None
    first_cpu = 0.0
    deadline = created + timeout_s
    try:
        while count < readings:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"bare consumer: {count} of {readings} after {timeout_s} s")
            batches = consumer.poll(timeout_ms=200, max_records=POLL_RECORDS)
            if batches and first is None:
                first = time.perf_counter()
                first_cpu = time.process_time()
                collector.reset()
            for batch in batches.values():
                for record in batch:
                    loads(record.value)
                count += len(batch)
        ended = time.perf_counter()
        cpu = time.process_time() - first_cpu
    finally:
        consumer.close(autocommit=False)
        gc.callbacks.remove(collector)
    return {"readings": count, "seconds": round(ended - first, 3),
            "join_seconds": round(first - created, 3),
            "readings_per_second": round(count / (ended - first)),
            "process_cpu_seconds": round(cpu, 3),
            "readings_per_cpu_second": round(count / cpu),
            "garbage_collector_seconds": round(collector.seconds, 3),
            "process": "fresh process: kafka-python, json and NumPy imported, no TensorFlow"}


def bare_consumer(bootstrap: str, topic: str, readings: int, timeout_s: float) -> dict:
    """A fresh group's consumer, in a fresh process, that only decodes each message's JSON."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    process = ctx.Process(target=_bare_consumer_child, name="bare-consumer", daemon=True,
                          args=(bootstrap, topic, readings, timeout_s, results))
    process.start()
    try:
        report = _get(results, time.perf_counter() + timeout_s + 60, "bare consumer")
    finally:
        _end([process])
    if "error" in report:
        raise RuntimeError(f"bare consumer: {report['error']}")
    return report


def read_sample(bootstrap: str, topic: str, count: int, timeout_s: float = 120.0) -> list[dict]:
    """The first ``count`` readings of the topic (all partitions), decoded."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, max_partition_fetch_bytes=4 << 20,
                             fetch_max_bytes=50 << 20)
    try:
        assigned = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        sample: list[dict] = []
        deadline = time.perf_counter() + timeout_s
        while len(sample) < count and time.perf_counter() < deadline:
            for batch in consumer.poll(timeout_ms=200, max_records=POLL_RECORDS).values():
                sample.extend(json.loads(record.value) for record in batch)
        return sample[:count]
    finally:
        consumer.close()


# --- (b) the worker --------------------------------------------------------------------------


class _GcTimer:
    """Wall time spent in the cyclic garbage collector (all threads), by gc.callbacks."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full_seconds = 0.0
        self.full = 0
        self._started = 0.0
        self._generation = 0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            self._generation = info["generation"]
            return
        spent = time.perf_counter() - self._started
        self.seconds += spent
        if self._generation == 2:
            self.full += 1
            self.full_seconds += spent

    def reset(self) -> None:
        self.seconds = self.full_seconds = 0.0
        self.full = 0


@dataclasses.dataclass
class Timings:
    """Wall seconds of the worker's parts, summed over a run (time.perf_counter)."""

    poll: float = 0.0
    parse: float = 0.0
    engine: float = 0.0
    step: float = 0.0
    send: float = 0.0
    flush: float = 0.0
    commit: float = 0.0
    process: float = 0.0
    batches: int = 0
    records: int = 0  # consumed records whose batch was published and committed
    first_records_at: float | None = None
    first_records_cpu: float = 0.0
    last_commit_at: float | None = None
    last_commit_cpu: float = 0.0
    gc_timer: _GcTimer | None = None  # reset when the first readings arrive


class _TimedSource:
    def __init__(self, source, timings: Timings) -> None:
        self._source = source
        self._t = timings

    def poll(self, timeout_ms, max_records):
        started = time.perf_counter()
        records = self._source.poll(timeout_ms, max_records)
        ended = time.perf_counter()
        self._t.poll += ended - started
        if records and self._t.first_records_at is None:
            self._t.first_records_at = ended
            self._t.first_records_cpu = time.process_time()
            if self._t.gc_timer is not None:
                self._t.gc_timer.reset()
        return records

    def commit(self, next_offsets) -> None:
        started = time.perf_counter()
        self._source.commit(next_offsets)
        ended = time.perf_counter()
        self._t.commit += ended - started
        self._t.last_commit_at = ended
        self._t.last_commit_cpu = time.process_time()

    def lag(self):
        return self._source.lag()

    def rewind(self, partitions) -> None:
        self._source.rewind(partitions)

    def group_metadata(self):
        return self._source.group_metadata()

    def close(self) -> None:
        self._source.close()


class _TimedSink:
    def __init__(self, sink, timings: Timings) -> None:
        self._sink = sink
        self._t = timings

    @property
    def transactional(self) -> bool:
        return self._sink.transactional

    def send(self, topic, key, value, headers=(), partition=None, best_effort=False) -> None:
        started = time.perf_counter()
        self._sink.send(topic, key, value, headers, partition, best_effort)
        self._t.send += time.perf_counter() - started

    def flush(self) -> int:
        started = time.perf_counter()
        dropped = self._sink.flush()
        self._t.flush += time.perf_counter() - started
        return dropped

    def close(self) -> None:
        self._sink.close()


class _TimedParser:
    def __init__(self, parser, timings: Timings) -> None:
        self._parse = parser.parse
        self._check_key = parser.check_key
        self._t = timings

    def parse(self, raw, **options):
        started = time.perf_counter()
        parsed = self._parse(raw, **options)
        self._t.parse += time.perf_counter() - started
        return parsed

    def check_key(self, key, parsed):
        started = time.perf_counter()
        checked = self._check_key(key, parsed)
        self._t.parse += time.perf_counter() - started
        return checked


def _instrument(worker, timings: Timings) -> None:
    """Times the worker's parser, engine and batches by wrapping them on this instance only;
    two perf_counter calls per reading cost well under 1 % of a reading's time."""
    worker.parser = _TimedParser(worker.parser, timings)
    engine_process = worker.engine.process
    worker_process = worker.process

    def timed_engine(readings):
        started = time.perf_counter()
        result = engine_process(readings)
        timings.engine += time.perf_counter() - started
        timings.step += result.step_seconds
        return result

    def timed_process(records):
        started = time.perf_counter()
        worker_process(records)
        timings.process += time.perf_counter() - started
        timings.batches += 1
        timings.records += len(records)

    worker.engine.process = timed_engine
    worker.process = timed_process


@dataclasses.dataclass
class RunningWorker:
    parts: dict
    timings: Timings
    gc_timer: _GcTimer
    errors: list

    @property
    def worker(self):
        return self.parts.get("worker")

    @property
    def registry(self):
        return self.parts.get("registry")

    def counted(self) -> int:
        """Readings dealt with: scored, rejected or skipped (published and committed)."""
        from streaming.messages import RejectReason

        if self.registry is None:
            return 0
        value = self.registry.get_sample_value
        total = (value("cellwatch_readings_scored_total") or 0.0) + \
            (value("cellwatch_readings_skipped_total") or 0.0)
        for reason in RejectReason:
            total += value("cellwatch_readings_rejected_total", {"reason": reason.value}) or 0.0
        return int(total)

    def sample(self, name: str, labels: dict | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0


@contextlib.contextmanager
def _instrumented_wiring(timings: Timings, parts: dict):
    """Makes ``cellwatch.wiring.run_worker`` build timed sources, sinks and workers, and
    hands out the worker and its metrics registry; restores the module's names on exit."""
    import cellwatch.wiring as wiring

    names = ("KafkaReadingSource", "KafkaRecordSink", "Worker", "WorkerMetrics")
    missing = [name for name in names if not hasattr(wiring, name)]
    if missing:
        raise RuntimeError(f"cellwatch.wiring no longer uses {missing}; update the benchmark")
    original = {name: getattr(wiring, name) for name in names}

    def source(*args, **kwargs):
        return _TimedSource(original["KafkaReadingSource"](*args, **kwargs), timings)

    def sink(*args, **kwargs):
        return _TimedSink(original["KafkaRecordSink"](*args, **kwargs), timings)

    def worker(*args, **kwargs):
        built = original["Worker"](*args, **kwargs)
        _instrument(built, timings)
        parts["worker"] = built
        return built

    def metrics(registry, *args, **kwargs):
        parts["registry"] = registry
        return original["WorkerMetrics"](registry, *args, **kwargs)

    replacements = {"KafkaReadingSource": source, "KafkaRecordSink": sink, "Worker": worker,
                    "WorkerMetrics": metrics}
    for name, replacement in replacements.items():
        setattr(wiring, name, replacement)
    try:
        yield
    finally:
        for name, value in original.items():
            setattr(wiring, name, value)


class NoPartitionsError(RuntimeError):
    """The worker joined its group but was assigned none of the topic's partitions.

    kafka-python can join before it has the subscribed topic's metadata; the group leader's
    assignor then hands out nothing ("No partition metadata for topic", dpkp/kafka-python
    issue 2377) and the consumer may sit idle for minutes. The benchmark retries with a fresh
    group and reports how often that happened.
    """


@contextlib.contextmanager
def running_worker(bootstrap: str, artifact_path: Path, readings_topic: str, prefix: str,
                   partitions: int, gc_freeze: bool = False):
    """``cellwatch.wiring.run_worker`` itself in a thread (settings, topic creation, sink,
    source, metrics registry and endpoint as deployed), with timing wrappers around its
    source, sink, parser and engine; yields once all ``partitions`` are assigned; stopped on
    exit as SIGTERM would stop it."""
    from cellwatch.settings import load_settings
    from cellwatch.wiring import run_worker

    settings = load_settings(environ={}, overrides={
        "kafka.bootstrap_servers": bootstrap,
        "kafka.client_id": f"{prefix}-worker",
        "kafka.group_id": f"{prefix}-group",
        "kafka.readings_topic": readings_topic,
        "kafka.scores_topic": f"{prefix}.scores",
        "kafka.anomalies_topic": f"{prefix}.anomalies",
        "kafka.dead_letter_topic": f"{prefix}.dead-letter",
        "model.artifact": str(artifact_path),
        "metrics.host": "127.0.0.1",
        "metrics.port": 0,
    })
    stop = threading.Event()
    ready = threading.Event()
    gc_timer = _GcTimer()
    handle = RunningWorker({}, Timings(gc_timer=gc_timer), gc_timer, [])

    def on_ready(endpoint) -> None:
        handle.parts["endpoint"] = endpoint
        if gc_freeze:  # what-if: the objects of start-up leave the collector's scans
            gc.collect()
            gc.freeze()
        ready.set()

    def target() -> None:
        try:
            run_worker(settings, stop, on_ready=on_ready)
        except BaseException as error:
            handle.errors.append(error)
            ready.set()

    gc.collect()
    gc.callbacks.append(handle.gc_timer)
    with _instrumented_wiring(handle.timings, handle.parts):
        thread = threading.Thread(target=target, name=f"{prefix}-worker", daemon=True)
        thread.start()
        try:
            if not ready.wait(120):
                raise TimeoutError("the worker did not start serving metrics within 120 s")
            if handle.errors:
                raise handle.errors[0]
            try:
                _wait(lambda: handle.sample("cellwatch_assigned_partitions") >= partitions,
                      60, "partition assignment", handle, interval_s=0.1)
            except TimeoutError:
                raise NoPartitionsError(
                    f"group {prefix}-group: {handle.sample('cellwatch_assigned_partitions'):.0f}"
                    f" of {partitions} partitions assigned after 60 s") from None
            yield handle
        finally:
            stop.set()
            thread.join(60)
            gc.callbacks.remove(handle.gc_timer)
            if gc_freeze:
                gc.unfreeze()
            if thread.is_alive():
                raise TimeoutError("the worker did not stop within 60 s of the stop event")
    if handle.errors:
        raise handle.errors[0]


def _wait(condition, timeout_s: float, what: str, handle: RunningWorker | None = None,
          interval_s: float = 0.05) -> None:
    deadline = time.perf_counter() + timeout_s
    while not condition():
        if handle is not None and handle.errors:
            raise RuntimeError(f"{what}: the worker failed") from handle.errors[0]
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what}: not done within {timeout_s:.0f} s")
        time.sleep(interval_s)


def _retrying(measure, what: str, attempts: int = 3) -> dict:
    """``measure(attempt)``, again with a fresh group when no partitions were assigned."""
    failures = []
    for attempt in range(attempts):
        try:
            report = measure(attempt)
        except NoPartitionsError as error:
            log.warning("%s: %s; retrying with a fresh group", what, error)
            failures.append(str(error))
            continue
        report["retries_without_partitions"] = failures
        return report
    raise RuntimeError(f"{what}: no partitions assigned in {attempts} attempts: {failures}")


def worker_throughput(bootstrap: str, artifact_path: Path, topic: str, prefix: str,
                      readings: int, partitions: int, timeout_s: float,
                      gc_freeze: bool = False) -> dict:
    return _retrying(lambda attempt: _worker_throughput(
        bootstrap, artifact_path, topic, f"{prefix}{attempt or ''}", readings, partitions,
        timeout_s, gc_freeze), "worker throughput")


def _worker_throughput(bootstrap: str, artifact_path: Path, topic: str, prefix: str,
                       readings: int, partitions: int, timeout_s: float,
                       gc_freeze: bool) -> dict:
    created = time.perf_counter()
    with running_worker(bootstrap, artifact_path, topic, prefix, partitions,
                        gc_freeze) as handle:
        # An attribute read: asking the registry would collect every metric, 50 times a second.
        _wait(lambda: handle.timings.records >= readings, timeout_s,
              f"worker scoring {readings} readings", handle, interval_s=0.02)
        t = handle.timings
        collector = (handle.gc_timer.seconds, handle.gc_timer.full,
                     handle.gc_timer.full_seconds)
        scored = int(handle.sample("cellwatch_readings_scored_total"))
        counted = handle.counted()
        co_partitioned = handle.worker.config.co_partitioned
        outputs = {role: int(handle.sample("cellwatch_output_records_total",
                                           {"topic_role": role}))
                   for role in ("scores", "anomalies", "dead_letter")}
    seconds = t.last_commit_at - t.first_records_at
    cpu = t.last_commit_cpu - t.first_records_cpu
    per_reading = {name: round(value / counted * 1e6, 2) for name, value in [
        ("poll", t.poll), ("parse", t.parse), ("engine_total", t.engine),
        ("engine_step", t.step), ("send", t.send), ("flush", t.flush), ("commit", t.commit),
        ("other_in_batch", t.process - t.parse - t.engine - t.send - t.flush - t.commit)]}
    return {
        "readings": counted,
        "scored": scored,
        "outputs": outputs,
        "co_partitioned": co_partitioned,
        "seconds": round(seconds, 3),
        "join_seconds": round(t.first_records_at - created, 3),
        "batches": t.batches,
        "readings_per_second": round(counted / seconds),
        "process_cpu_seconds": round(cpu, 3),
        "readings_per_cpu_second": round(counted / cpu),
        "breakdown_seconds": {
            "poll": round(t.poll, 3), "parse": round(t.parse, 3),
            "engine_total": round(t.engine, 3), "engine_step": round(t.step, 3),
            "send": round(t.send, 3), "flush": round(t.flush, 3), "commit": round(t.commit, 3),
            "batches_total": round(t.process, 3)},
        "breakdown_us_per_reading": per_reading,
        # Collections happen inside the parts above (whoever allocates pays), not besides them.
        "garbage_collector": {"seconds": round(collector[0], 3), "full_collections": collector[1],
                              "full_collection_seconds": round(collector[2], 3),
                              "us_per_reading": round(collector[0] / counted * 1e6, 2),
                              "gc_freeze": gc_freeze},
    }


# --- (c) Keras per reading, (d) River --------------------------------------------------------


def keras_per_reading(model, scaler, sample: list[dict]) -> dict:
    """One eager call of the Keras layers per reading; each stream's input window and memory
    state live in dicts outside the model (as in benchmarks/step_throughput.py)."""
    import keras

    from detector.features import clock_features

    clock_layer = model.get_layer("clock_encoding")
    dependency = model.get_layer("three_point")
    cell = model.get_layer("memory").cell
    stack = model.get_layer("stack")
    head = model.get_layer("forecast")
    units = cell.units
    windows: dict[str, object] = {}
    memories: dict[str, list] = {}

    def score(message: dict) -> None:
        stream = message["stream"]
        values = np.array([message["values"][name] for name in CHANNELS], np.float32)
        normalized = scaler.model_input(scaler.normalize(values))
        encoded = clock_layer(clock_features(np.array([message["ts"]]))[None])
        current = keras.ops.concatenate([normalized[None, None, :], encoded], axis=-1)
        window = windows.get(stream)
        if window is None:
            window = np.zeros((1, 3, current.shape[-1]), np.float32)
        window = keras.ops.concatenate([window[:, 1:], current], axis=1)
        features = dependency(window)[:, -1]
        memory = memories.get(stream) or [np.zeros((1, units), np.float32)]
        output, memory = cell(features, memory)
        head(stack(output))
        windows[stream] = window
        memories[stream] = memory

    score({**sample[0], "stream": "warm-up"})  # first calls build and trace, untimed
    started = time.perf_counter()
    for message in sample:
        score(message)
    elapsed = time.perf_counter() - started
    return {"readings": len(sample), "streams": len(windows) - 1,
            "seconds": round(elapsed, 3),
            "readings_per_second": round(len(sample) / elapsed, 1)}


def river_half_space_trees(sample: list[dict], seed: int) -> dict:
    """``MinMaxScaler() | HalfSpaceTrees(seed=...)``, one model shared by every stream;
    ``score_one`` then ``learn_one`` per reading, on the decoded ``values`` dicts."""
    from river import anomaly, preprocessing

    model = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=seed)
    inputs = [message["values"] for message in sample]
    started = time.perf_counter()
    for x in inputs:
        model.score_one(x)
        model.learn_one(x)
    elapsed = time.perf_counter() - started
    return {"readings": len(inputs), "model": "one shared pipeline for all streams",
            "seconds": round(elapsed, 3),
            "readings_per_second": round(len(inputs) / elapsed)}


# --- latency ---------------------------------------------------------------------------------


def _paced_produce(bootstrap: str, topic: str, rate: float, total: int, streams: int,
                   partitions: int, ready, go, out_path: str, seed: int) -> None:
    """Producer process: ``total`` readings at ``rate`` per second, round-robin over streams;
    a reading's ``ts`` is its send time (ms); its exact send time and the time the broker
    acknowledged it (the input's own share of the latency) are saved per reading."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    parts = stream_partitions(streams, partitions).tolist()
    keys = [stream_name(s).encode() for s in range(streams)]
    names = [stream_name(s) for s in range(streams)]
    rng = np.random.default_rng(seed)
    values = signal(np.arange(streams), 0, rng).tolist()
    producer.partitions_for(topic)  # metadata fetched before the clock starts
    sent_s = np.zeros(total)
    acked_s = np.full(total, np.nan)
    stream_of = np.zeros(total, np.int64)
    ts_of = np.zeros(total, np.int64)
    last_ts = [0] * streams

    def acked(index: int, _metadata) -> None:  # on the producer's IO thread
        acked_s[index] = time.time()

    ready.set()
    go.wait(120)
    started = time.perf_counter()
    i = 0
    while i < total:
        due = min(total, int((time.perf_counter() - started) * rate) + 1)
        while i < due:
            s = i % streams
            now = time.time()
            ts = max(int(now * 1000), last_ts[s] + 1)
            last_ts[s] = ts
            producer.send(topic, value=reading_json(names[s], ts, values[s]), key=keys[s],
                          partition=parts[s]).add_callback(acked, i)
            sent_s[i] = now
            stream_of[i] = s
            ts_of[i] = ts
            i += 1
        pause = i / rate - (time.perf_counter() - started)
        if pause > 0:
            time.sleep(pause)
    elapsed = time.perf_counter() - started
    producer.flush(timeout=60)
    producer.close(timeout=10)
    np.savez(out_path, sent_s=sent_s, acked_s=acked_s, stream=stream_of, ts=ts_of,
             elapsed=elapsed)


def _watch_scores(bootstrap: str, topic: str, expected: int, ready, timeout_s: float,
                  out_path: str) -> None:
    """Consumer process on the scores topic: when each score record became visible."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, fetch_max_wait_ms=100)
    assigned = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(assigned)
    consumer.seek_to_beginning(*assigned)
    for tp in assigned:
        consumer.position(tp)
    ready.set()
    seen_s = np.zeros(expected)
    stream_of = np.zeros(expected, np.int64)
    ts_of = np.zeros(expected, np.int64)
    count = 0
    deadline = time.perf_counter() + timeout_s
    while count < expected and time.perf_counter() < deadline:
        batches = consumer.poll(timeout_ms=100)
        now = time.time()
        for batch in batches.values():
            for record in batch:
                if count == expected:
                    break
                value = record.value  # b'{"stream":"stream-00042","ts":1700000000000,...'
                start = value.index(b',"ts":') + 6
                seen_s[count] = now
                stream_of[count] = int(record.key[7:])
                ts_of[count] = int(value[start:value.index(b",", start)])
                count += 1
    consumer.close()
    np.savez(out_path, seen_s=seen_s[:count], stream=stream_of[:count], ts=ts_of[:count])


def _histogram_quantile(bounds: list[float], cumulative: list[float], q: float) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket."""
    total = cumulative[-1]
    if total == 0:
        return math.nan
    rank = q * total
    for i, count in enumerate(cumulative):
        if count >= rank:
            if math.isinf(bounds[i]):
                return bounds[i - 1]
            lower = bounds[i - 1] if i else 0.0
            below = cumulative[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * (rank - below) / max(count - below, 1e-12)
    return bounds[-2]


def _worker_latency_histogram(registry, reference: str) -> dict:
    bounds, cumulative = [], []
    for family in registry.collect():
        if family.name != "cellwatch_end_to_end_latency_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels["reference"] == reference:
                bounds.append(float(sample.labels["le"]))
                cumulative.append(sample.value)
    return {f"p{round(q * 100)}_ms": round(_histogram_quantile(bounds, cumulative, q) * 1000, 2)
            for q in (0.5, 0.99)}


def latency(bootstrap: str, artifact_path: Path, prefix: str, streams: int, partitions: int,
            rate: float, seconds: float, max_readings: int, warmup_s: float,
            seed: int, workdir: Path, gc_freeze: bool = False) -> dict:
    return _retrying(lambda attempt: _latency(
        bootstrap, artifact_path, f"{prefix}{attempt or ''}", streams, partitions, rate,
        seconds, max_readings, warmup_s, seed, workdir, gc_freeze), "latency")


def _latency(bootstrap: str, artifact_path: Path, prefix: str, streams: int, partitions: int,
             rate: float, seconds: float, max_readings: int, warmup_s: float,
             seed: int, workdir: Path, gc_freeze: bool) -> dict:
    from streaming.kafka_io import ensure_topic

    topic = f"{prefix}.readings"
    ensure_topic({"bootstrap_servers": bootstrap}, topic, partitions)
    total = min(max_readings, int(rate * seconds))
    ctx = multiprocessing.get_context("spawn")
    producer_ready, watcher_ready, go = ctx.Event(), ctx.Event(), ctx.Event()
    sent_path, seen_path = str(workdir / "sent.npz"), str(workdir / "seen.npz")
    with running_worker(bootstrap, artifact_path, topic, prefix, partitions,
                        gc_freeze) as handle:
        watcher = ctx.Process(target=_watch_scores, name="score-watcher", daemon=True,
                              args=(bootstrap, handle.worker.config.scores_topic, total,
                                    watcher_ready, seconds + 120, seen_path))
        producer = ctx.Process(target=_paced_produce, name="paced-producer", daemon=True,
                               args=(bootstrap, topic, rate, total, streams, partitions,
                                     producer_ready, go, sent_path, seed))
        watcher.start()
        producer.start()
        try:
            for event, name in ((watcher_ready, "score watcher"),
                                (producer_ready, "paced producer")):
                if not event.wait(120):
                    raise TimeoutError(f"the {name} process did not get ready in 120 s")
            go.set()
            producer.join(seconds + 90)
            if producer.exitcode != 0:
                raise RuntimeError(f"the paced producer failed (exit code {producer.exitcode})")
            watcher.join(150)
            if watcher.exitcode != 0:
                raise RuntimeError(f"the score watcher failed (exit code {watcher.exitcode})")
        finally:
            _end([producer, watcher])
        histogram = _worker_latency_histogram(handle.registry, "broker_time")
        t = handle.timings
        per_batch = max(t.batches, 1)
        batches = {"batches": t.batches,
                   "mean_readings": round(t.records / per_batch, 1),
                   "mean_ms_records_to_commit": round(t.process / per_batch * 1000, 2),
                   "mean_ms_in_flush": round(t.flush / per_batch * 1000, 2),
                   "mean_ms_in_commit": round(t.commit / per_batch * 1000, 2),
                   "polls_ms_total_per_batch": round(t.poll / per_batch * 1000, 2)}
    sent = np.load(sent_path)
    seen = np.load(seen_path)
    sent_at = {(int(s), int(t)): float(x)
               for s, t, x in zip(sent["stream"], sent["ts"], sent["sent_s"], strict=True)}
    first = float(sent["sent_s"][0])
    pairs = [(sent_at[(int(s), int(t))], float(x))
             for s, t, x in zip(seen["stream"], seen["ts"], seen["seen_s"], strict=True)
             if (int(s), int(t)) in sent_at]
    if not pairs:
        raise RuntimeError("latency: no score record matched a produced reading")
    sent_s = np.array([p[0] for p in pairs])
    ms = (np.array([p[1] for p in pairs]) - sent_s) * 1000
    steady = ms[sent_s >= first + warmup_s]
    input_ack_ms = (sent["acked_s"] - sent["sent_s"]) * 1000
    input_ack_ms = input_ack_ms[np.isfinite(input_ack_ms) & (sent["sent_s"] >= first + warmup_s)]

    def quantiles(values: np.ndarray) -> dict:
        return {"p50_ms": round(float(np.percentile(values, 50)), 2),
                "p99_ms": round(float(np.percentile(values, 99)), 2),
                "max_ms": round(float(values.max()), 2), "readings": int(values.size)}

    return {
        "method": "score record's arrival at a consumer of the scores topic (separate process) "
                  "minus its reading's producer send() time (separate process)",
        "offered_readings_per_second": rate,
        "achieved_readings_per_second": round(total / float(sent["elapsed"]), 1),
        "produced": total,
        "scores_seen": int(seen["seen_s"].size),
        "worker_batches": batches,
        "warmup_seconds_excluded": warmup_s,
        "steady": quantiles(steady),
        "all": quantiles(ms),
        # The input's share: the paced producer's send() until the broker acknowledged it.
        "input_send_to_ack_steady": quantiles(input_ack_ms),
        # The worker's own histogram: input record timestamp (CreateTime, i.e. the producer's
        # send()) until the worker's flush returned; all readings, interpolated in buckets.
        "worker_histogram_broker_time": histogram,
    }


# --- memory per stream -----------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _memory_child(artifact_path: str, streams: int, partitions: int, results) -> None:
    """Process per size: RSS growth of StateStore + ScoringEngine for ``streams`` streams."""
    try:
        from detector.artifact import load_artifact
        from streaming.engine import Reading, ScoringEngine
        from streaming.state_store import StateStore

        artifact = load_artifact(Path(artifact_path))
        step = artifact.step
        channels = artifact.metadata.channels
        version = artifact.metadata.model_version
        values = signal(np.arange(1024), 0, np.random.default_rng(0)).astype(np.float32)
        warm = ScoringEngine(step, StateStore(step.layout), channels, version)
        warm.process([Reading(f"warm-{i}", START_MS, values[i]) for i in range(64)])
        del warm
        store = StateStore(step.layout)
        engine = ScoringEngine(step, store, channels, version)
        gc.collect()
        before = _rss_bytes()
        started = time.perf_counter()
        for first in range(0, streams, MEMORY_BATCH):
            # Fresh id strings per batch, as parsed messages bring them: the store keeps them.
            batch = [Reading(f"stream-{i:07d}", START_MS, values[i % 1024], i % partitions, i)
                     for i in range(first, min(streams, first + MEMORY_BATCH))]
            engine.process(batch)
        del batch
        gc.collect()
        after = _rss_bytes()
        results.put({
            "streams": len(store),
            "rss_before_bytes": before, "rss_after_bytes": after,
            "rss_bytes_per_stream": round((after - before) / streams, 1),
            "state_store_nbytes_per_stream": round(store.nbytes / streams, 1),
            "state_record_bytes": step.layout.record_bytes,
            "seconds": round(time.perf_counter() - started, 2),
        })
    except BaseException as error:
        results.put({"error": repr(error)})
        raise


def memory_per_stream(artifact_path: Path, streams: int, partitions: int,
                      timeout_s: float) -> dict:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    process = ctx.Process(target=_memory_child, name=f"memory-{streams}", daemon=True,
                          args=(str(artifact_path), streams, partitions, results))
    process.start()
    try:
        report = _get(results, time.perf_counter() + timeout_s, f"memory at {streams} streams")
    finally:
        _end([process])
    if "error" in report:
        raise RuntimeError(f"memory at {streams} streams: {report['error']}")
    return report


# --- setup -----------------------------------------------------------------------------------


def speed_probe(rounds: int = 20_000) -> float:
    """Microseconds per ``json.loads`` of one reading: a fixed single-thread workload, run
    between phases, to show how fast this (possibly shared, virtual) machine was just then."""
    raw = reading_json('{"stream":"stream-00042","ts":', START_MS, [20.5, 1.01, 0.52, 9.87])
    loads = json.loads
    started = time.perf_counter()
    for _ in range(rounds):
        loads(raw)
    return round((time.perf_counter() - started) / rounds * 1e6, 3)


def build_artifact(path: Path, seed: int) -> Path:
    """A 4-channel forecaster with its seeded initial weights, saved as a worker loads it."""
    import keras

    from detector.artifact import save_artifact
    from detector.features import ChannelScaler
    from detector.model import ForecasterConfig, build_forecaster
    from detector.scorer import ScorerConfig

    keras.utils.set_random_seed(seed)
    config = ForecasterConfig(channels=len(CHANNELS))
    model = build_forecaster(config)
    scaler = ChannelScaler(tuple(LEVEL.tolist()), tuple((AMPLITUDE * 0.75).tolist()))
    save_artifact(path, model, CHANNELS, config, scaler, ScorerConfig(),
                  training={"data_fingerprint": "benchmark: initial weights, untrained"})
    return path


def versions(broker_managed: bool) -> dict:
    from tests.integration.servers import KAFKA_LIBS

    found = {}
    for name in ("kafka-python", "numpy", "tensorflow", "keras", "river", "prometheus-client"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    jars = sorted(KAFKA_LIBS.glob("kafka_2.13-*.jar"))
    found["kafka_broker"] = (jars[0].stem.removeprefix("kafka_2.13-") if jars and broker_managed
                             else "external" if not broker_managed else None)
    try:
        from crc32c import crc32c  # noqa: F401
        found["crc32c_c_extension"] = True
    except ImportError:
        found["crc32c_c_extension"] = False
    return found


def machine() -> dict:
    model = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model, "platform": platform.platform()}


# --- main ------------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> dict:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from detector.artifact import load_artifact
    from streaming.kafka_io import ensure_topic
    from tests.integration.servers import KafkaBroker

    report: dict = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "readings": args.readings, "streams": args.streams,
                    "partitions": args.partitions, "channels": len(CHANNELS),
                    "gc_freeze_what_if": args.gc_freeze}
    phases: dict[str, float] = {}
    # Other work on the machine slows every wall-clock rate here: the 1-minute load average at
    # the end of each phase says how busy it was (2 cores: above 2 means queued runnables).
    load: dict[str, float] = {"start": round(os.getloadavg()[0], 2)}
    probe: dict[str, float] = {"start": speed_probe()}
    clock = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = round(now - clock, 1)
        load[name] = round(os.getloadavg()[0], 2)
        probe[name] = speed_probe()
        clock = time.perf_counter()
        log.info("%s done in %.1f s", name, phases[name])

    artifact_path = build_artifact(workdir / "artifact", args.seed)
    gc.collect()  # the built model is garbage now; the worker phases start from a clean heap
    phase("artifact")

    tag = f"bench-{uuid.uuid4().hex[:8]}"
    broker = None
    with contextlib.ExitStack() as stack:
        if args.bootstrap:
            bootstrap = args.bootstrap
        else:
            broker = KafkaBroker(workdir / "kafka")
            stack.callback(broker.stop)
            bootstrap = broker.start()
        report["broker"] = "external " + bootstrap if args.bootstrap else "local, started here"
        phase("broker")

        topic = f"{tag}.readings"
        ensure_topic({"bootstrap_servers": bootstrap}, topic, args.partitions)
        n = args.readings
        report["produce"] = produce_readings(bootstrap, topic, n, args.streams, args.partitions,
                                             args.producers, args.seed,
                                             timeout_s=max(300.0, n / 1000))
        phase("produce")

        report["bare_consumer"] = bare_consumer(bootstrap, topic, n,
                                                timeout_s=max(120.0, n / 2000))
        phase("bare_consumer")
        report["worker"] = worker_throughput(bootstrap, artifact_path, topic, f"{tag}.worker",
                                             n, args.partitions,
                                             timeout_s=max(300.0, n / 500),
                                             gc_freeze=args.gc_freeze)
        phase("worker")
        if args.latency_seconds > 0:
            report["latency"] = latency(
                bootstrap, artifact_path, f"{tag}.latency", args.streams, args.partitions,
                args.latency_rate, args.latency_seconds, args.latency_max,
                min(2.0, args.latency_seconds / 10), args.seed, workdir, args.gc_freeze)
            phase("latency")
        # Read after the worker phases, so its decoded dicts do not sit in the worker's heap.
        sample = read_sample(bootstrap, topic, max(args.river_readings, args.keras_readings))
        phase("sample")
    if broker is not None:
        phase("broker_stop")

    artifact = load_artifact(artifact_path)
    report["keras_per_reading"] = keras_per_reading(
        artifact.model, artifact.metadata.normalization, sample[:args.keras_readings])
    phase("keras_per_reading")
    report["river"] = river_half_space_trees(sample[:args.river_readings], args.seed)
    phase("river")
    del sample
    report["memory"] = {str(s): memory_per_stream(artifact_path, s, args.partitions,
                                                  timeout_s=900.0)
                        for s in args.memory_streams}
    phase("memory")

    a = report["bare_consumer"]["readings_per_second"]
    b = report["worker"]["readings_per_second"]
    c = report["keras_per_reading"]["readings_per_second"]
    d = report["river"]["readings_per_second"]
    report["readings_per_second"] = {"bare_consumer": a, "worker": b, "keras_per_reading": c,
                                     "river_half_space_trees": d}
    report["ratios"] = {"worker_vs_bare_consumer": round(b / a, 3),
                        "worker_vs_keras_per_reading": round(b / c, 1),
                        "worker_vs_river": round(b / d, 2)}
    # (c) and (d) are model calls alone; the worker's own model part (the scoring engine,
    # from the breakdown) is the like-for-like figure next to them.
    engine = report["worker"]["readings"] / report["worker"]["breakdown_seconds"]["engine_total"]
    report["model_only"] = {
        "worker_engine_readings_per_second": round(engine),
        "engine_vs_keras_per_reading": round(engine / c, 1),
        "engine_vs_river": round(engine / d, 2),
    }
    if "latency" in report:
        report["latency_ms"] = {k: report["latency"]["steady"][k] for k in ("p50_ms", "p99_ms")}
    report["bytes_per_stream"] = {s: m["rss_bytes_per_stream"]
                                  for s, m in report["memory"].items()}
    report["targets"] = TARGETS
    report["phase_seconds"] = phases
    report["load_average_1m"] = load
    report["speed_probe_us_per_json_loads"] = probe
    report["versions"] = versions(broker is not None)
    report["machine"] = machine()
    return report


def print_table(report: dict) -> None:
    rps = report["readings_per_second"]
    ratios = report["ratios"]
    rows = [
        ("readings / streams / partitions",
         f"{report['readings']:,} / {report['streams']:,} / {report['partitions']}", ""),
        ("producing (setup)", f"{report['produce']['readings_per_second']:,} readings/s", ""),
        ("(a) bare consumer + json.loads", f"{rps['bare_consumer']:,} readings/s", ""),
        ("(b) cellwatch worker end to end", f"{rps['worker']:,} readings/s", ""),
        ("(c) Keras per reading", f"{rps['keras_per_reading']:,} readings/s", ""),
        ("(d) River HalfSpaceTrees (shared)", f"{rps['river_half_space_trees']:,} readings/s",
         ""),
        ("b / a", f"{ratios['worker_vs_bare_consumer']}",
         TARGETS["worker_vs_bare_consumer"]),
        ("b / c", f"{ratios['worker_vs_keras_per_reading']}", ""),
        ("b / d", f"{ratios['worker_vs_river']}", TARGETS["worker_vs_river"]),
        ("worker's scoring engine alone",
         f"{report['model_only']['worker_engine_readings_per_second']:,} readings/s", ""),
        ("engine alone / d (model only)", f"{report['model_only']['engine_vs_river']}", ""),
    ]
    if "latency" in report:
        steady = report["latency"]["steady"]
        rate = report["latency"]["offered_readings_per_second"]
        rows += [(f"latency p50 at {rate:,.0f}/s", f"{steady['p50_ms']} ms", ""),
                 (f"latency p99 at {rate:,.0f}/s", f"{steady['p99_ms']} ms",
                  TARGETS["latency_p99_ms"] + " ms")]
    for streams, memory in report["memory"].items():
        rows.append((f"memory per stream at {int(streams):,}",
                     f"{memory['rss_bytes_per_stream']:,} B RSS "
                     f"({memory['state_store_nbytes_per_stream']:,} B arrays)",
                     TARGETS["bytes_per_stream"] + " B"))
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    print(f"{'':{width}}  {'measured':{value_width}}  target")
    for name, value, target in rows:
        print(f"{name:{width}}  {value:{value_width}}  {target}")
    print("\nworker breakdown, us per reading:")
    for name, value in report["worker"]["breakdown_us_per_reading"].items():
        print(f"  {name:16} {value:8.2f}")
    collector = report["worker"]["garbage_collector"]
    print(f"  of which in the garbage collector: {collector['us_per_reading']:.2f} "
          f"({collector['full_collections']} full collections, "
          f"{collector['full_collection_seconds']} s)")
    print(f"\nload average (1 min) at the end of each phase: "
          f"{json.dumps(report['load_average_1m'])}")
    print(f"speed probe (us per json.loads, lower is faster) at the end of each phase: "
          f"{json.dumps(report['speed_probe_us_per_json_loads'])}")
    print(f"\nversions: {json.dumps(report['versions'])}")
    print(f"machine: {json.dumps(report['machine'])}")


def _streams_list(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--bootstrap", help="use this broker (host:port) instead of starting one")
    parser.add_argument("--producers", type=int, default=2,
                        help="processes producing the readings (setup only, not measured)")
    parser.add_argument("--keras-readings", type=int, default=500)
    parser.add_argument("--river-readings", type=int, default=50_000)
    parser.add_argument("--latency-rate", type=float, default=5000.0, help="readings/s offered")
    parser.add_argument("--latency-seconds", type=float, default=20.0, help="0 skips latency")
    parser.add_argument("--latency-max", type=int, default=100_000)
    parser.add_argument("--memory-streams", type=_streams_list, default=[100_000, 1_000_000],
                        help="comma-separated stream counts")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--gc-freeze", action="store_true",
                        help="what-if: gc.freeze() once the worker is built (not what "
                             "run_worker does today)")
    args = parser.parse_args()
    if args.readings < args.streams or args.readings < 1:
        parser.error("--readings must be at least --streams")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("kafka", "streaming", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="cellwatch-bench-") as tmp:
        report = run(args, Path(tmp))
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
