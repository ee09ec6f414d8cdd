"""Checkpoints, restores, crashes, rebalances and transactions, with in-memory ports: a fake
broker log that keeps only what a flush acknowledged (``broker_fakes.py``)."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from cellwatch.wiring import assemble_worker
from detector.state import StateLayout
from detector.step import StreamingStep
from streaming.changelog import ChangelogWriter, record_header, restore_states
from streaming.metrics import WorkerMetrics
from streaming.ports import OutputError
from streaming.state_store import StateStore
from tests.unit.streaming.broker_fakes import (
    CHANGELOG,
    CONFIG,
    Broker,
    BrokerChangelog,
    BrokerSink,
    BrokerSource,
    all_readings,
    assign,
    assigned_transactional_worker,
    crash_and_recover,
    durability_discrepancies,
    make_worker,
    model_of,
    reference,
    run_worker,
    scores_by_key,
)
from tests.unit.streaming.conftest import (
    DurabilityFault,
    FakeRecordSink,
    record_of,
)

# Crashes ------------------------------------------------------------------------------------


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
