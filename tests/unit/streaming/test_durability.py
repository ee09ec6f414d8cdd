"""Checkpoints, restores, crashes, rebalances, transactions and model reload, with in-memory
ports: a fake broker log that keeps only what a flush acknowledged."""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from cellwatch.wiring import PartWrappers, assemble_worker
from detector.state import StateLayout
from detector.step import StreamingStep
from streaming import worker as worker_module
from streaming.changelog import ChangelogWriter, record_header, restore_states
from streaming.engine import Reading, ScoringEngine
from streaming.metrics import WorkerMetrics
from streaming.model_reload import ModelWatcher
from streaming.ports import OutputError
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


@pytest.fixture
def fake_monotonic(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The worker's checkpoint timer, advanced by :class:`BrokerSource` polls."""
    now = [1000.0]
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: now[0])
    return now


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


# Crashes ------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("transactional", [False, True])
@pytest.mark.parametrize("crash_points", [[2], [4, 3], [6, 2, 5], [9, 8, 6, 4]])
def test_crashes_neither_lose_nor_double_apply_a_reading(
        step: StreamingStep, recorded: np.ndarray, fake_monotonic: list[float],
        crash_points: list[int], transactional: bool) -> None:
    readings = all_readings(recorded)
    broker = Broker(readings)
    last = crash_and_recover(step, broker, crash_points, fake_monotonic, transactional)
    found = durability_discrepancies(step, readings, broker, last)
    assert not found, f"{len(found)} discrepancies, first:\n" + "\n".join(found[:5])
    assert broker.committed == {0: 60, 1: 60}


# The same crashes and the same check, with one reading of stream "b" mishandled by the
# engine every time it is processed: the check must name that stream and reading.
FAULTY_STREAM = "b"
FAULTY_READING = 12  # of 30: readings of the stream come after it


@pytest.mark.parametrize("transactional", [False, True])
@pytest.mark.parametrize("kind", ["drop", "apply_twice"])
def test_the_crash_check_reports_a_reading_lost_or_applied_twice(
        step: StreamingStep, recorded: np.ndarray, fake_monotonic: list[float], kind: str,
        transactional: bool) -> None:
    readings = all_readings(recorded)
    of_stream = [r for r in readings if r.stream == FAULTY_STREAM]
    faulty, following = of_stream[FAULTY_READING], of_stream[FAULTY_READING + 1]
    broker = Broker(readings)
    last = crash_and_recover(step, broker, [6, 2, 5], fake_monotonic, transactional,
                             DurabilityFault(kind, faulty.stream, faulty.ts_ms))

    found = durability_discrepancies(step, readings, broker, last)
    assert found, "the check missed the fault"
    assert all(f"stream {FAULTY_STREAM!r}" in line for line in found), found
    assert "stream 'b': final state differs from the uninterrupted run's" in found
    about_scores = [line for line in found if "final state" not in line]
    if kind == "drop":
        assert about_scores[:1] == [f"stream 'b' ts {faulty.ts_ms}: never scored"], found
    else:  # the doubly applied reading's own score is right; the next one is not
        assert about_scores, "the check missed the scores that followed the fault"
        assert about_scores[0].startswith(f"stream 'b' ts {following.ts_ms}: published "), found
    assert broker.committed == {0: 60, 1: 60}  # the worker believed it handled everything


def test_a_restart_skips_what_the_checkpoint_reflects(
        step: StreamingStep, recorded: np.ndarray, fake_monotonic: list[float]) -> None:
    readings = all_readings(recorded)
    broker = Broker(readings)
    registry = CollectorRegistry()
    # Poll 1 assigns the partitions (its readings are read again after the restore); polls
    # 2-4 take 7 readings each; the checkpoint after poll 3 covers 14 of them and commits
    # their offsets; poll 5 crashes.
    run_worker(step, broker, crash_at=5, clock=fake_monotonic)
    assert broker.committed == {0: 8, 1: 6}
    # A commit that failed (a rebalance) leaves the committed offsets behind the states.
    broker.committed = {0: 2, 1: 1}
    worker = make_worker(step, broker, registry)
    stop = threading.Event()
    worker.run(BrokerSource(broker, worker, (0, 1), stop, clock=fake_monotonic), stop)
    assert registry.get_sample_value("cellwatch_readings_skipped_total") == 14 - 3
    assert registry.get_sample_value("cellwatch_restore_records_total") == 4
    assert scores_by_key(broker).keys() == reference(step, readings).keys()


def test_offsets_are_committed_only_after_the_checkpoint_is_acknowledged(
        step: StreamingStep, recorded: np.ndarray, fake_monotonic: list[float]) -> None:
    broker = Broker(all_readings(recorded))
    registry = CollectorRegistry()
    worker = make_worker(step, broker, registry, sink=UnreachableChangelogSink(broker))
    stop = threading.Event()
    with pytest.raises(OutputError, match="changelog unreachable"):
        worker.run(BrokerSource(broker, worker, (0, 1), stop, clock=fake_monotonic), stop)
    assert broker.committed == {}
    assert broker.on("scores")  # the outputs before the failed checkpoint went out
    assert registry.get_sample_value("cellwatch_checkpoint_failures_total") == 1


class UnreachableChangelogSink(BrokerSink):
    """Acknowledges outputs, but never a changelog record."""

    def flush(self) -> None:
        if any(r.topic == CHANGELOG for r in self.sent[self._flushed:]):
            raise OutputError("changelog unreachable")
        super().flush()


def test_checkpoint_records_carry_layout_state_and_source_offset(
        step: StreamingStep, recorded: np.ndarray, fake_monotonic: list[float]) -> None:
    broker = Broker(all_readings(recorded))
    registry = CollectorRegistry()
    worker = make_worker(step, broker, registry)
    stop = threading.Event()
    worker.run(BrokerSource(broker, worker, (0, 1), stop, clock=fake_monotonic), stop)
    header = record_header(step.layout, "readings")
    newest = {(r.partition, r.key): r.value for r in broker.on(CHANGELOG)}
    assert sorted(newest) == [(0, b"a"), (0, b"b"), (1, b"c"), (1, b"d")]
    for (partition, key), value in newest.items():
        assert value.startswith(header)
        row = worker.store.row_of(key.decode())
        assert value[len(header):] == worker.store.encode_record(row)
        assert worker.store.last_offset[row] in (58, 59)  # the stream's last reading
        assert worker.store.partition[row] == partition
    written = registry.get_sample_value("cellwatch_checkpoint_records_total")
    assert written == len(broker.on(CHANGELOG))
    assert registry.get_sample_value("cellwatch_output_records_total",
                                     {"topic_role": "changelog"}) == written
    assert registry.get_sample_value("cellwatch_checkpoint_bytes_total") == sum(
        len(r.value) for r in broker.on(CHANGELOG))


# Rebalances ---------------------------------------------------------------------------------


def test_revoke_checkpoints_the_partition_and_hands_back_its_offsets(
        step: StreamingStep, recorded: np.ndarray) -> None:
    readings = all_readings(recorded)
    broker = Broker(readings)
    worker = make_worker(step, broker)
    assign(worker, [0, 1])
    worker.process([record_of(r) for r in readings[:4] + readings[60:62]])
    assert broker.on(CHANGELOG) == []  # not yet checkpointed
    to_commit = worker.partitions.on_revoked([0])
    assert to_commit == {0: 4}
    assert sorted(r.key for r in broker.on(CHANGELOG)) == [b"a", b"b"]
    assert all(r.partition == 0 for r in broker.on(CHANGELOG))
    # Handed back by the same rebalance: the states stay, nothing to restore.
    worker.partitions.on_assigned([0, 1])
    assert "a" in worker.store and worker.readiness() == (True, "ok")


def test_a_moved_partition_is_dropped_and_restored_when_it_comes_back(
        step: StreamingStep, recorded: np.ndarray) -> None:
    readings = all_readings(recorded)
    broker = Broker(readings)
    worker = make_worker(step, broker)
    assign(worker, [0, 1])
    worker.process([record_of(r) for r in readings[:6]])
    before = worker.store.encode_record(worker.store.row_of("a"))
    worker.partitions.on_revoked([0, 1])
    worker.partitions.on_assigned([1])  # partition 0 went to another member
    assert "a" not in worker.store
    worker.partitions.on_revoked([1])
    worker.partitions.on_assigned([0, 1])
    assert worker.readiness() == (False, "restoring partitions [0]")
    worker.restore_assigned()
    assert worker.store.encode_record(worker.store.row_of("a")) == before
    assert worker.readiness() == (True, "ok")


def test_a_lost_partition_is_never_written(step: StreamingStep, recorded: np.ndarray) -> None:
    readings = all_readings(recorded)
    broker = Broker(readings)
    worker = make_worker(step, broker)
    assign(worker, [0, 1])
    worker.process([record_of(r) for r in readings[:6]])
    worker.partitions.on_lost([0])
    assert "a" not in worker.store and "b" not in worker.store
    worker.commit_checkpoint()
    assert broker.on(CHANGELOG) == []  # partition 0 had nothing else; 1 was not touched
    assert broker.committed == {}


# Transactions -------------------------------------------------------------------------------


def test_transactions_commit_outputs_states_and_offsets_together(
        step: StreamingStep, recorded: np.ndarray, fake_monotonic: list[float]) -> None:
    broker = Broker(all_readings(recorded))
    worker = make_worker(step, broker, transactional=True)
    stop = threading.Event()
    source = BrokerSource(broker, worker, (0, 1), stop, clock=fake_monotonic)
    commits: list = []
    source.commit = commits.append  # the consumer must never commit on its own
    worker.run(source, stop)
    assert commits == []
    # One transaction per checkpoint interval (3 polls), each with the offsets it covers.
    with_offsets = [offsets for offsets in worker.sink.transactions if offsets]
    assert len(with_offsets) >= 5
    assert broker.committed == {0: 60, 1: 60}
    # Each transaction ends with the states of the streams its readings changed.
    assert broker.log[-1].topic == CHANGELOG


def test_a_rebalance_aborts_the_transaction_and_restores_what_was_committed(
        step: StreamingStep, recorded: np.ndarray) -> None:
    readings = all_readings(recorded)
    broker = Broker(readings)
    worker = assigned_transactional_worker(step, broker)
    worker.process([record_of(r) for r in readings[:6]])
    worker.commit_checkpoint()
    committed = worker.store.encode_record(worker.store.row_of("a"))
    published = len(broker.log)
    worker.process([record_of(r) for r in readings[6:12]])  # an open transaction
    assert worker.partitions.on_revoked([0, 1]) == {}
    assert ("abort", len(worker.sink.sent)) in worker.sink.events
    assert len(worker.store) == 0 and len(broker.log) == published
    assign(worker, [0, 1])
    assert worker.store.encode_record(worker.store.row_of("a")) == committed
    assert broker.committed == {0: 6}
    # Replayed from the committed offsets, the aborted readings are scored again, identically.
    worker.process([record_of(r) for r in readings[6:12]])
    worker.commit_checkpoint()
    expected = reference(step, readings[:12])
    assert {k: v.pop() for k, v in scores_by_key(broker).items()} == expected


def test_a_lost_partition_aborts_the_transaction_and_the_kept_ones_are_restored(
        step: StreamingStep, recorded: np.ndarray) -> None:
    readings = all_readings(recorded)
    broker = Broker(readings)
    worker = assigned_transactional_worker(step, broker)
    worker.process([record_of(r) for r in readings[:4] + readings[60:64]])
    worker.commit_checkpoint()
    committed_c = worker.store.encode_record(worker.store.row_of("c"))
    worker.process([record_of(r) for r in readings[64:68]])  # an open transaction
    worker.partitions.on_lost([0])
    assert ("abort", len(worker.sink.sent)) in worker.sink.events
    assert len(worker.store) == 0
    worker.restore_assigned()
    assert sorted(worker.store.stream_of(r) for r in worker.store.rows_in_use()) == ["c", "d"]
    assert worker.store.encode_record(worker.store.row_of("c")) == committed_c


def test_transactions_need_the_changelog(step: StreamingStep) -> None:
    config = dataclasses.replace(CONFIG, changelog_topic=None)
    with pytest.raises(ValueError, match="transactional outputs need the state changelog"):
        assemble_worker(config, model_of(step), FakeRecordSink(transactional=True),
                        WorkerMetrics(CollectorRegistry()))


# Eviction -----------------------------------------------------------------------------------


def test_evicted_streams_get_a_tombstone_and_stay_away_after_a_restore(
        step: StreamingStep, recorded: np.ndarray) -> None:
    readings = all_readings(recorded)
    broker = Broker(readings)
    now = [1_800_000_000.0]
    config = dataclasses.replace(CONFIG, idle_eviction_s=100.0, maintenance_interval_s=0.0)
    worker = assemble_worker(config, model_of(step), BrokerSink(broker), WorkerMetrics(
        CollectorRegistry()), changelog=BrokerChangelog(broker), clock=lambda: now[0])
    assign(worker, [0, 1])
    worker.process([record_of(r) for r in readings[:4]])
    worker.commit_checkpoint()
    now[0] += 1000.0
    worker._maintain()
    assert len(worker.store) == 0
    worker.commit_checkpoint()
    assert [(r.key, r.value) for r in broker.on(CHANGELOG)[-2:]] == [(b"a", None),
                                                                   (b"b", None)]
    store = StateStore(step.layout)
    result = restore_states(store, BrokerChangelog(broker).read([0, 1]), "readings", now_s=0.0)
    assert len(store) == 0 and result.records_read == 4


# restore_states -----------------------------------------------------------------------------


def test_restore_keeps_the_newest_record_and_skips_other_layouts(step: StreamingStep) -> None:
    source = StateStore(step.layout)
    rows = [source.row_for(name, 3) for name in ("x", "y")]
    source.last_offset[rows] = [10, 20]
    sink = FakeRecordSink()
    writer = ChangelogWriter(CHANGELOG, sink, "readings")
    writer.write(source, np.array(rows))
    source.last_offset[rows[0]] = 11
    writer.write(source, np.array(rows[:1]))
    other = StateLayout(channels=step.layout.channels, input_width=step.layout.input_width,
                        memory_units=step.layout.memory_units + 1)
    foreign = StateStore(other)
    foreign.row_for("z", 3)
    ChangelogWriter(CHANGELOG, sink, "readings").write(foreign, np.array([0]))
    elsewhere = StateStore(step.layout)
    elsewhere.row_for("w", 3)
    ChangelogWriter(CHANGELOG, sink, "other-readings").write(elsewhere, np.array([0]))
    records = [(r.partition, r.key, r.value) for r in sink.on(CHANGELOG)]

    target = StateStore(step.layout)
    result = restore_states(target, records, "readings", now_s=5.0)
    assert (result.records_read, result.streams_restored, result.incompatible) == (5, 2, 2)
    assert "memory units" in result.first_incompatible and "'z'" in result.first_incompatible
    assert target.last_offset[target.row_of("x")] == 11
    assert target.last_offset[target.row_of("y")] == 20
    assert target.partition[target.row_of("x")] == 3
    assert "z" not in target and "w" not in target


# Model reload -------------------------------------------------------------------------------


def test_a_model_with_the_same_layout_keeps_the_states(
        step: StreamingStep, recorded: np.ndarray) -> None:
    broker = Broker(all_readings(recorded))
    registry = CollectorRegistry()
    worker = make_worker(step, broker, registry)
    assign(worker, [0, 1])
    readings = all_readings(recorded)
    worker.process([record_of(r) for r in readings[:4]])
    before = worker.store.state.copy()
    worker.offer_model(model_of(step, version="v2"))
    worker.swap_offered_model()
    np.testing.assert_array_equal(worker.store.state, before)
    worker.process([record_of(readings[4])])
    assert b'"model_version":"v2"' in broker.log[-1].value
    assert registry.get_sample_value("cellwatch_model_reloads_total",
                                     {"outcome": "kept_state"}) == 1
    assert registry.get_sample_value("cellwatch_model_info", {
        "version": "v2", "trained_at": "2024-01-01T00:00:00Z",
        "state_layout": f"{step.layout.version}/{step.layout.size}"}) == 1


def test_a_model_with_another_layout_restarts_learning_without_reapplying(
        step: StreamingStep, recorded: np.ndarray, model_parts) -> None:
    from detector.model import step_params
    from tests.unit.detector.conftest import make_model

    _, wider = make_model(time_features=True, memory_units=step.layout.memory_units + 2)
    new_step = StreamingStep(step_params(wider), model_parts.scaler, step.scorer)
    broker = Broker(all_readings(recorded))
    registry = CollectorRegistry()
    worker = make_worker(step, broker, registry)
    assign(worker, [0, 1])
    readings = all_readings(recorded)
    worker.process([record_of(r) for r in readings[:4]])
    worker.offer_model(model_of(new_step, version="v2"))
    worker.swap_offered_model()
    assert worker.store.layout == new_step.layout
    np.testing.assert_array_equal(worker.store.state[worker.store.rows_in_use()],
                                  new_step.layout.initial(2))
    assert registry.get_sample_value("cellwatch_model_reloads_total",
                                     {"outcome": "reset_state"}) == 1
    # A replayed reading is still recognised as applied; the next one is scored fresh.
    worker.process([record_of(r) for r in readings[:5]])
    assert registry.get_sample_value("cellwatch_readings_skipped_total") == 4
    fresh = ScoringEngine(new_step, StateStore(new_step.layout), CHANNELS, "v2", 3)
    assert broker.on("scores")[-1].value == score_records(fresh.process([readings[4]]))[0][1]


def test_a_reloaded_model_is_served_by_an_engine_wiring_builds(step: StreamingStep) -> None:
    """The engine of a reloaded model comes from the same factory as the first one, so the
    parts the caller wrapped (the benchmarks' timers) stay wrapped after a reload."""
    wrapped: list[str] = []

    def mark(engine: ScoringEngine) -> ScoringEngine:
        wrapped.append(engine.model_version)
        return engine

    worker = assemble_worker(CONFIG, model_of(step), BrokerSink(Broker([])),
                             WorkerMetrics(CollectorRegistry()),
                             changelog=BrokerChangelog(Broker([])),
                             wrappers=PartWrappers(engine=mark))
    worker.offer_model(model_of(step, version="v2"))
    worker.swap_offered_model()
    assert wrapped == [MODEL_VERSION, "v2"]
    assert worker.engine.model_version == "v2"


def test_a_model_with_other_channels_is_refused(step: StreamingStep) -> None:
    registry = CollectorRegistry()
    worker = make_worker(step, Broker([]), registry)
    worker.offer_model(dataclasses.replace(model_of(step, "v9"), channels=("a", "b", "c")))
    worker.swap_offered_model()
    assert worker.model.version == MODEL_VERSION
    assert registry.get_sample_value("cellwatch_model_reloads_total",
                                     {"outcome": "failed"}) == 1


def test_the_watcher_loads_on_change_or_request_and_survives_a_broken_artifact() -> None:
    signature = ["v1"]
    loads: list[str] = []
    offered: list[str] = []
    failures: list[BaseException] = []

    def load() -> str:
        if signature[0] == "broken":
            raise ValueError("metadata.json: truncated")
        loads.append(signature[0])
        return f"model-{signature[0]}"

    requested = threading.Event()
    watcher = ModelWatcher(lambda: signature[0], load, offered.append, failures.append,
                           poll_s=0, stop=threading.Event(), reload_requested=requested)
    assert not watcher.check()  # unchanged
    signature[0] = "v2"
    assert watcher.check() and offered == ["model-v2"]
    assert not watcher.check()
    requested.set()  # SIGHUP: load again even though nothing changed
    assert watcher.check() and offered == ["model-v2", "model-v2"]
    signature[0] = "broken"
    assert not watcher.check() and len(failures) == 1
    assert "truncated" in str(failures[0])
    signature[0] = "v3"
    assert watcher.check() and offered[-1] == "model-v3"


def test_the_watcher_thread_stops_with_the_worker() -> None:
    stop = threading.Event()
    watcher = ModelWatcher(lambda: 1, lambda: None, lambda _m: None, lambda _e: None,
                           poll_s=0.01, stop=stop)
    with watcher:
        stop.set()
    assert not watcher._thread.is_alive()
