"""The partition tracker on its own: assigned, revoked, lost and restored partitions."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry

from detector.state import StateLayout
from streaming.changelog import ChangelogWriter
from streaming.checkpoint import Checkpoint
from streaming.metrics import WorkerMetrics
from streaming.partitions import PartitionTracker
from streaming.ports import OutputError
from streaming.state_store import StateStore
from tests.unit.streaming.conftest import (
    FakeChangelogReader,
    FakeReadingSource,
    FakeRecord,
    FakeRecordSink,
)

LAYOUT = StateLayout(channels=3, input_width=5, memory_units=2)
CHANGELOG = "changelog"


class Parts:
    """A tracker over a store holding "a" (partition 0) and "b" (partition 1), both changed,
    with their outputs acknowledged up to offsets 5 and 7."""

    def __init__(self, transactional: bool = False) -> None:
        self.registry = CollectorRegistry()
        self.events: list = []
        self.sink = FakeRecordSink(self.events, transactional=transactional)
        self.store = StateStore(LAYOUT)
        lock = threading.Lock()
        metrics = WorkerMetrics(self.registry)
        self.checkpoint = Checkpoint(self.store, self.sink, "readings", metrics, lock,
                                     ChangelogWriter(CHANGELOG, self.sink, "readings"))
        self.changelog = FakeChangelogReader(self.sink, CHANGELOG)
        self.tracker = PartitionTracker(self.store, self.checkpoint, metrics, "readings",
                                        lock, self.changelog, clock=lambda: 0.0)
        self.tracker.on_assigned([0, 1])
        self.tracker.restore(None)  # nothing in the changelog yet
        for stream, partition in (("a", 0), ("b", 1)):
            row = self.store.row_for(stream, partition)
            self.store.state[row] = partition + 1.0
            self.store.dirty[row] = True
        self.checkpoint.processed({0: 5, 1: 7})

    def streams(self) -> list[str]:
        return sorted(self.store.stream_of(r) for r in self.store.rows_in_use())

    def rebalances(self, kind: str) -> float:
        return self.registry.get_sample_value("cellwatch_rebalances_total", {"kind": kind})


def test_a_revoked_partition_is_checkpointed_and_its_offsets_handed_back() -> None:
    parts = Parts()
    assert parts.tracker.on_revoked([0]) == {0: 5}
    assert [(r.key, r.partition) for r in parts.sink.sent] == [(b"a", 0)]
    assert parts.checkpoint.uncommitted == {1: 7}
    assert parts.streams() == ["a", "b"]  # kept until the assignment says where it went


def test_a_revoked_partition_that_went_elsewhere_is_dropped() -> None:
    parts = Parts()
    parts.tracker.on_revoked([0, 1])
    parts.tracker.on_assigned([1])
    assert parts.streams() == ["b"]
    assert parts.tracker.assigned == {1} and parts.tracker.to_restore == set()


def test_a_revoked_partition_handed_back_keeps_its_states_and_needs_no_restore() -> None:
    parts = Parts()
    parts.tracker.on_revoked([0, 1])
    parts.tracker.on_assigned([0, 1])
    assert parts.streams() == ["a", "b"]
    assert parts.tracker.not_ready() is None


def test_a_lost_partition_is_dropped_without_writing_anything() -> None:
    parts = Parts()
    parts.tracker.on_lost([0])
    assert parts.streams() == ["b"] and parts.sink.sent == []
    assert parts.checkpoint.uncommitted == {1: 7}  # partition 0's offsets are not ours now
    assert parts.tracker.assigned == {1} and parts.rebalances("lost") == 1


def test_a_newly_assigned_partition_is_restored_before_its_records_are_processed() -> None:
    parts = Parts()
    parts.tracker.on_revoked([0, 1])  # checkpoints a and b
    parts.tracker.on_assigned([1])  # 0 went elsewhere
    parts.tracker.on_revoked([1])
    parts.tracker.on_assigned([0, 1])  # 0 comes back: its states are in the changelog
    assert parts.tracker.not_ready() == "restoring partitions [0]"
    source = FakeReadingSource([])
    polled = [FakeRecord("readings", p, 9, 0, b"k", b"{}") for p in (0, 1)]

    kept = parts.tracker.restore(source, polled)

    assert [r.partition for r in kept] == [1]  # partition 0's are read again after the rewind
    assert source.events == [("rewind", [0])]
    assert parts.changelog.reads[-1] == [0]
    assert parts.streams() == ["a", "b"] and parts.tracker.not_ready() is None
    assert parts.store.state[parts.store.row_of("a"), 0] == 1.0


def test_a_revoke_whose_checkpoint_fails_hands_back_nothing_and_tells_the_loop() -> None:
    parts = Parts()
    parts.sink.fail_flush = OutputError("changelog unreachable")
    assert parts.tracker.on_revoked([0]) == {}
    assert parts.checkpoint.aborted
    with pytest.raises(OutputError, match="changelog unreachable"):
        parts.tracker.raise_failure()
    parts.tracker.raise_failure()  # raised once


def test_with_transactions_a_rebalance_aborts_and_restores_the_partitions_kept() -> None:
    parts = Parts(transactional=True)
    assert parts.tracker.on_revoked([0]) == {}
    assert ("abort", 0) in parts.events
    assert parts.streams() == [] and parts.checkpoint.uncommitted == {}
    assert parts.tracker.to_restore == {1} and parts.tracker.assigned == {1}


def test_not_ready_until_the_group_is_joined() -> None:
    store = StateStore(LAYOUT)
    sink = FakeRecordSink()
    lock = threading.Lock()
    metrics = WorkerMetrics(CollectorRegistry())
    checkpoint = Checkpoint(store, sink, "readings", metrics, lock)
    tracker = PartitionTracker(store, checkpoint, metrics, "readings", lock)
    assert tracker.not_ready() == "not yet part of the consumer group"
    tracker.on_assigned([3])
    assert tracker.not_ready() is None and tracker.to_restore == set()  # no changelog
    with pytest.raises(ValueError, match="go together"):
        PartitionTracker(store, checkpoint, metrics, "readings", lock,
                         FakeChangelogReader(sink, CHANGELOG))
