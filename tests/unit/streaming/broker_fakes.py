"""A fake Kafka broker behind the worker's ports, for the durability and model reload tests:
a log per topic that keeps only what a flush acknowledged, a changelog on it, and a source
that polls it, rebalances and crashes on cue."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from cellwatch.wiring import assemble_worker
from detector.step import StreamingStep
from streaming.engine import Reading, ScoringEngine
from streaming.metrics import WorkerMetrics
from streaming.state_store import StateStore
from streaming.worker import ModelInfo, Worker, WorkerConfig
from tests.unit.streaming.conftest import (
    CHANNELS,
    MODEL_VERSION,
    DurabilityFault,
    FakeRecord,
    FakeRecordSink,
    FaultyEngine,
    SentRecord,
    readings_of,
    record_of,
    score_records,
)

CHANGELOG = "changelog"
CONFIG = WorkerConfig(readings_topic="readings", scores_topic="scores",
                      anomalies_topic="anomalies", dead_letter_topic="dead-letters",
                      max_poll_records=7, poll_timeout_ms=5, episode_gap=3,
                      changelog_topic=CHANGELOG, checkpoint_interval_s=3.0,
                      maintenance_interval_s=1e9)


class Crash(Exception):
    """The process died (SIGKILL): nothing after this point happens."""


class Broker:
    """What survives a crash: acknowledged records and committed offsets."""

    def __init__(self, readings: Sequence[Reading]) -> None:
        self.inputs: dict[int, list[FakeRecord]] = {}
        for reading in readings:
            self.inputs.setdefault(reading.partition, []).append(record_of(reading))
        self.log: list[SentRecord] = []
        self.committed: dict[int, int] = {}

    def on(self, topic: str) -> list[SentRecord]:
        return [r for r in self.log if r.topic == topic]


class BrokerSink(FakeRecordSink):
    """Records reach the broker's log only when a flush acknowledges them."""

    def __init__(self, broker: Broker, transactional: bool = False) -> None:
        super().__init__(transactional=transactional)
        self.broker = broker
        self._flushed = 0

    def flush(self) -> None:
        super().flush()
        if not self.transactional:
            self.broker.log.extend(self.sent[self._flushed:])
            self._flushed = len(self.sent)

    def commit_transaction(self, topic, next_offsets, group_metadata) -> None:
        super().commit_transaction(topic, next_offsets, group_metadata)
        self.broker.log.extend(self.sent[self._flushed:])  # visible only once committed
        self._flushed = len(self.sent)
        self.broker.committed.update(next_offsets)

    def abort_transaction(self) -> None:
        super().abort_transaction()
        self._flushed = len(self.sent)  # never visible


class BrokerChangelog:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def read(self, partitions: Sequence[int]) -> Iterator[tuple[int, bytes, bytes | None]]:
        for record in self.broker.on(CHANGELOG):
            if record.partition in partitions:
                yield record.partition, record.key, record.value

    def close(self) -> None:
        pass


class BrokerSource:
    """Delivers from the committed offsets (nothing of a paused partition), assigns its
    partitions on the first poll like a group join, advances a fake monotonic clock by one
    second per poll, and crashes on poll number ``crash_at``; sets ``stop`` once everything
    was delivered and the worker holds nothing back (:mod:`streaming.pacing`)."""

    def __init__(self, broker: Broker, worker: Worker, partitions: Sequence[int],
                 stop: threading.Event, crash_at: int | None = None,
                 clock: list[float] | None = None) -> None:
        self.broker = broker
        self.worker = worker
        self.partitions = list(partitions)
        self.positions = {p: broker.committed.get(p, 0) for p in self.partitions}
        self.stop = stop
        self.crash_at = crash_at
        self.clock = clock
        self.polls = 0
        self.paused: set[int] = set()
        self.closed = False

    def poll(self, timeout_ms: int, max_records: int) -> list[FakeRecord]:
        self.polls += 1
        if self.clock is not None:
            self.clock[0] += 1.0
        if self.polls == 1:
            self.worker.partitions.on_assigned(self.partitions)
        if self.polls == self.crash_at:
            raise Crash
        batch: list[FakeRecord] = []
        fetchable = [p for p in self.partitions if p not in self.paused]
        for partition in itertools.cycle(fetchable):
            if len(batch) >= max_records or all(
                    self.positions[p] >= len(self.broker.inputs.get(p, ()))
                    for p in fetchable):
                break
            records = self.broker.inputs.get(partition, [])
            if self.positions[partition] < len(records):
                batch.append(records[self.positions[partition]])
                self.positions[partition] += 1
        if not batch and not self.worker.held_back:
            self.stop.set()
        return batch

    def commit(self, next_offsets: Mapping[int, int]) -> None:
        self.broker.committed.update(next_offsets)

    def lag(self) -> dict[int, int]:
        return {}

    def group_metadata(self) -> object:
        return "group-metadata"

    def rewind(self, partitions: Sequence[int]) -> None:
        for partition in partitions:
            self.positions[partition] = self.broker.committed.get(partition, 0)

    def pause(self, partitions: Sequence[int]) -> None:
        self.paused.update(set(partitions) & set(self.partitions))

    def resume(self, partitions: Sequence[int]) -> None:
        self.paused.difference_update(partitions)

    def close(self) -> None:
        self.closed = True

def model_of(step: StreamingStep, version: str = MODEL_VERSION) -> ModelInfo:
    return ModelInfo(step=step, channels=CHANNELS, version=version,
                     trained_at="2024-01-01T00:00:00Z", trained_at_s=1_704_067_200.0)


def make_worker(step: StreamingStep, broker: Broker, registry: CollectorRegistry | None = None,
                config: WorkerConfig = CONFIG, transactional: bool = False,
                sink: BrokerSink | None = None) -> Worker:
    return assemble_worker(config, model_of(step), sink or BrokerSink(broker, transactional),
                           WorkerMetrics(registry or CollectorRegistry()),
                           changelog=BrokerChangelog(broker), clock=lambda: 1_800_000_000.0)


def assigned_transactional_worker(step: StreamingStep, broker: Broker) -> Worker:
    """A transactional worker driven by hand, owning partitions 0 and 1."""
    worker = make_worker(step, broker, transactional=True)
    worker.source = BrokerSource(broker, worker, (0, 1), threading.Event())
    assign(worker, [0, 1])
    return worker


def assign(worker: Worker, partitions: Sequence[int]) -> None:
    """A rebalance callback, then what the loop does after the poll that ran it."""
    worker.partitions.on_assigned(partitions)
    worker.restore_assigned()


def all_readings(recorded: np.ndarray) -> list[Reading]:
    """Four streams on two partitions, 30 readings each, offsets per partition."""
    p0 = readings_of(recorded[:2, :30], ["a", "b"], partition=0)
    p1 = readings_of(recorded[2:4, :30], ["c", "d"], partition=1)
    return p0 + p1


def reference(step: StreamingStep, readings: Sequence[Reading]) -> dict[bytes, bytes]:
    """Uninterrupted scores keyed by (stream, ts): what every run must reproduce."""
    engine = ScoringEngine(step, StateStore(step.layout), CHANNELS, MODEL_VERSION,
                           CONFIG.episode_gap)
    return {key + b"@" + str(r.ts_ms).encode(): value
            for r, (key, value) in zip(readings, score_records(engine.process(readings)),
                                       strict=True)}


def scores_by_key(broker: Broker) -> dict[bytes, set[bytes]]:
    """Every published score value per (stream, ts); a duplicate must be identical."""
    out: dict[bytes, set[bytes]] = {}
    for record in broker.on("scores"):
        ts = record.value.split(b'"ts":')[1].split(b",")[0]
        out.setdefault(record.key + b"@" + ts, set()).add(record.value)
    return out


def run_worker(step, broker, partitions=(0, 1), crash_at=None, clock=None,
               transactional=False, fault: DurabilityFault | None = None) -> Worker:
    worker = make_worker(step, broker, transactional=transactional)
    if fault is not None:
        worker.engine = FaultyEngine(step, worker.store, CHANNELS, MODEL_VERSION,
                                     CONFIG.episode_gap, clock=worker.clock, fault=fault)
    stop = threading.Event()
    source = BrokerSource(broker, worker, partitions, stop, crash_at, clock)
    if crash_at is None:
        worker.run(source, stop)
    else:
        with pytest.raises(Crash):
            worker.run(source, stop)
    return worker


def describe(key: bytes) -> str:
    stream, ts = key.decode().rsplit("@", 1)
    return f"stream {stream!r} ts {ts}"


def durability_discrepancies(step: StreamingStep, readings: Sequence[Reading], broker: Broker,
                             last: Worker) -> list[str]:
    """How an interrupted run differs from one uninterrupted run of the same readings: a
    score missing, extra or not identical byte for byte (a replay must reproduce the very
    record), or a stream whose final state is not identical. Empty when no reading was lost
    and none applied twice."""
    expected = reference(step, readings)
    published = scores_by_key(broker)
    found = [f"{describe(key)}: never scored" for key in sorted(expected.keys() -
                                                                  published.keys())]
    found += [f"{describe(key)}: scored but never sent" for key in sorted(published.keys() -
                                                                           expected.keys())]
    for key in sorted(expected.keys() & published.keys()):
        for value in sorted(published[key] - {expected[key]}):
            found.append(f"{describe(key)}: published {value!r}, uninterrupted "
                         f"{expected[key]!r}")
    uninterrupted = ScoringEngine(step, StateStore(step.layout), CHANNELS, MODEL_VERSION,
                                  CONFIG.episode_gap)
    uninterrupted.process(readings)
    for stream in sorted({reading.stream for reading in readings}):
        row = last.store.row_of(stream)
        if row is None or last.store.encode_record(row) != uninterrupted.store.encode_record(
                uninterrupted.store.row_of(stream)):
            found.append(f"stream {stream!r}: final state differs from the uninterrupted run's")
    return found


def crash_and_recover(step: StreamingStep, broker: Broker, crash_points: Sequence[int],
                      clock: list[float], transactional: bool,
                      fault: DurabilityFault | None = None) -> Worker:
    """Workers that crash at the given polls, then one that runs to the end (returned)."""
    for crash_at in crash_points:
        run_worker(step, broker, crash_at=crash_at, clock=clock, transactional=transactional,
                   fault=fault)
    return run_worker(step, broker, clock=clock, transactional=transactional, fault=fault)
