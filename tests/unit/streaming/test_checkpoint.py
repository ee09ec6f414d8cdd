"""The checkpoint on its own: the commit sequence's order, what each step takes, the abort."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from detector.state import StateLayout
from streaming.changelog import ChangelogWriter, record_header
from streaming.checkpoint import Checkpoint
from streaming.metrics import WorkerMetrics
from streaming.ports import OutputError, TopicSetupError
from streaming.state_store import StateStore
from tests.unit.streaming.conftest import FakeReadingSource, FakeRecordSink

LAYOUT = StateLayout(channels=3, input_width=5, memory_units=2)
CHANGELOG = "changelog"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def store() -> StateStore:
    """Stream "a" on partition 0 and "b" on partition 1, both changed."""
    store = StateStore(LAYOUT)
    for stream, partition in (("a", 0), ("b", 1)):
        row = store.row_for(stream, partition)
        store.state[row] = partition + 1.0
        store.dirty[row] = True
    return store


def checkpoint_of(store: StateStore, sink: FakeRecordSink, registry: CollectorRegistry,
                  durable: bool = True, check_topic=None) -> Checkpoint:
    writer = ChangelogWriter(CHANGELOG, sink, "readings") if durable else None
    return Checkpoint(store, sink, "readings", WorkerMetrics(registry), threading.Lock(),
                      writer, check_topic)


def test_the_sequence_writes_tombstones_and_states_then_flushes_then_commits_offsets(
        store: StateStore, registry: CollectorRegistry) -> None:
    events: list = []
    sink, source = FakeRecordSink(events), FakeReadingSource([], events)
    checkpoint = checkpoint_of(store, sink, registry)
    checkpoint.processed({0: 5, 1: 7})
    checkpoint.processed({0: 3})  # an older offset never moves the commit back
    checkpoint.evicted([(b"x", 0)])

    checkpoint.commit(source)

    # 1-2: the tombstone, then every changed state; 3: one flush of all three; 4: the commit.
    assert [(r.topic, r.key, r.value is None, r.partition) for r in sink.sent] == [
        (CHANGELOG, b"x", True, 0), (CHANGELOG, b"a", False, 0), (CHANGELOG, b"b", False, 1)]
    assert sink.sent[1].value.startswith(record_header(LAYOUT, "readings"))
    assert events == [("flush", 3), ("commit", {0: 5, 1: 7})]
    assert checkpoint.uncommitted == {} and checkpoint.tombstones == []
    assert store.take_dirty().size == 0  # taken by the checkpoint
    assert registry.get_sample_value("cellwatch_checkpoint_records_total") == 3


def test_a_second_commit_writes_only_what_changed_since(
        store: StateStore, registry: CollectorRegistry) -> None:
    sink, source = FakeRecordSink(), FakeReadingSource([])
    checkpoint = checkpoint_of(store, sink, registry)
    checkpoint.processed({0: 5})
    checkpoint.commit(source)
    store.dirty[store.row_of("b")] = True
    checkpoint.processed({1: 9})
    checkpoint.commit(source)
    assert [r.key for r in sink.sent] == [b"a", b"b", b"b"]
    assert source.commits == [{0: 5}, {1: 9}]


def test_a_failed_flush_aborts_and_leaves_nothing_checkpointed_or_committed(
        store: StateStore, registry: CollectorRegistry) -> None:
    sink, source = FakeRecordSink(), FakeReadingSource([])
    checkpoint = checkpoint_of(store, sink, registry)
    checkpoint.processed({0: 5, 1: 7})
    sink.fail_flush = OutputError("changelog unreachable")

    with pytest.raises(OutputError, match="changelog unreachable"):
        checkpoint.commit(source)

    assert checkpoint.aborted and source.commits == []
    assert len(store) == 0  # the states taken as written are dropped with the rest
    assert checkpoint.uncommitted == {}
    assert registry.get_sample_value("cellwatch_checkpoint_failures_total") == 1
    # Nothing more is written or committed once aborted.
    sink.fail_flush = None
    checkpoint.processed({0: 6})
    sent = len(sink.sent)
    checkpoint.commit(source)
    assert len(sink.sent) == sent and source.commits == []


def test_a_changelog_of_the_wrong_shape_stops_the_checkpoint_before_anything_is_sent(
        store: StateStore, registry: CollectorRegistry) -> None:
    def check_topic() -> None:
        raise TopicSetupError("state changelog 'changelog': expected 2 partitions, found 1")

    sink, source = FakeRecordSink(), FakeReadingSource([])
    checkpoint = checkpoint_of(store, sink, registry, check_topic=check_topic)
    checkpoint.processed({0: 5})
    with pytest.raises(TopicSetupError, match="expected 2 partitions"):
        checkpoint.commit(source)
    assert sink.sent == [] and sink.flushes == 0 and source.commits == []
    assert checkpoint.aborted


def test_a_revoke_writes_and_hands_back_only_the_revoked_partitions(
        store: StateStore, registry: CollectorRegistry) -> None:
    sink = FakeRecordSink()
    checkpoint = checkpoint_of(store, sink, registry)
    checkpoint.processed({0: 5, 1: 7})
    checkpoint.evicted([(b"x", 0), (b"y", 1)])

    assert checkpoint.write([0]) == {0: 5}

    assert [r.key for r in sink.sent] == [b"x", b"a"] and sink.flushes == 1
    assert checkpoint.uncommitted == {1: 7} and checkpoint.tombstones == [(b"y", 1)]
    assert store.take_dirty().tolist() == [store.row_of("b")]


def test_with_transactions_the_transaction_commits_states_and_offsets_together(
        store: StateStore, registry: CollectorRegistry) -> None:
    events: list = []
    sink = FakeRecordSink(events, transactional=True)
    source = FakeReadingSource([], events)
    checkpoint = checkpoint_of(store, sink, registry)
    checkpoint.processed({0: 5})
    checkpoint.commit(source)
    assert events == [("flush", 2), ("transaction", 2, {0: 5})]
    assert source.commits == []


def test_without_a_changelog_the_offsets_are_committed_and_no_state_is_written(
        store: StateStore, registry: CollectorRegistry) -> None:
    sink, source = FakeRecordSink(), FakeReadingSource([])
    checkpoint = checkpoint_of(store, sink, registry, durable=False)
    checkpoint.processed({0: 5})
    checkpoint.evicted([(b"x", 0)])  # no changelog: no tombstone either
    checkpoint.commit(source)
    assert sink.sent == [] and sink.flushes == 0
    assert source.commits == [{0: 5}]


def test_a_failed_offset_commit_is_retried_with_the_next_commit(
        store: StateStore, registry: CollectorRegistry, caplog) -> None:
    """The broker restarted after the last batch: nothing more to read, so no later batch
    would carry the offsets whose commit failed; the next commit (the next checkpoint
    interval) does."""
    source = FakeReadingSource([])
    source.fail_commit = RuntimeError("KafkaTimeoutError: coordinator not available")
    checkpoint = checkpoint_of(store, FakeRecordSink(), registry)
    checkpoint.processed({0: 5, 1: 7})
    checkpoint.commit(source)
    assert "offset commit failed" in caplog.text and checkpoint.uncommitted == {0: 5, 1: 7}
    source.fail_commit = None
    checkpoint.processed({1: 9})
    checkpoint.commit(source)
    assert source.commits == [{0: 5, 1: 9}] and not checkpoint.aborted


@pytest.mark.parametrize("handover", ["revoke", "forget"])
def test_a_failed_offset_commit_is_not_retried_once_partitions_changed_hands(
        store: StateStore, registry: CollectorRegistry, handover: str) -> None:
    """A rebalance between the failed commit and the retry: the partitions' next owner
    re-reads from the last commit, and an old offset committed later could move the group's
    position back, so the failed offsets are dropped."""
    source = FakeReadingSource([])
    checkpoint = checkpoint_of(store, FakeRecordSink(), registry, durable=False)
    checkpoint.processed({0: 5})

    def hand_over_then_fail(offsets):
        # The consumer's IO thread revokes while the loop's commit is on its way.
        with checkpoint.lock:
            if handover == "revoke":
                checkpoint.write([1])
            else:
                checkpoint.forget([1])
        raise RuntimeError("CommitFailedError: the group rebalanced")

    source.commit = hand_over_then_fail
    checkpoint.commit(source)
    assert checkpoint.uncommitted == {} and not checkpoint.aborted


def test_the_abort_drops_the_states_and_aborts_the_open_transaction_once(
        store: StateStore, registry: CollectorRegistry) -> None:
    events: list = []
    checkpoint = checkpoint_of(store, FakeRecordSink(events, transactional=True), registry)
    checkpoint.processed({0: 5})
    checkpoint.abort("outputs of a batch were not acknowledged")
    checkpoint.abort("again")
    assert events == [("abort", 0)]
    assert len(store) == 0 and checkpoint.uncommitted == {}


def test_a_rebalance_abort_of_the_transaction_drops_the_states_but_goes_on(
        store: StateStore, registry: CollectorRegistry) -> None:
    checkpoint = checkpoint_of(store, FakeRecordSink(transactional=True), registry)
    checkpoint.processed({0: 5})
    assert checkpoint.abort_transaction() == 2
    assert len(store) == 0 and checkpoint.uncommitted == {} and not checkpoint.aborted


def test_transactions_need_the_changelog(store: StateStore,
                                         registry: CollectorRegistry) -> None:
    with pytest.raises(ValueError, match="transactional outputs need the state changelog"):
        checkpoint_of(store, FakeRecordSink(transactional=True), registry, durable=False)


def test_forgetting_a_partition_drops_its_pending_offsets_and_tombstones(
        store: StateStore, registry: CollectorRegistry) -> None:
    checkpoint = checkpoint_of(store, FakeRecordSink(), registry)
    checkpoint.processed({0: 5, 1: 7})
    checkpoint.evicted([(b"x", 0), (b"y", 1)])
    checkpoint.forget([0])
    assert checkpoint.uncommitted == {1: 7} and checkpoint.tombstones == [(b"y", 1)]
    np.testing.assert_array_equal(store.take_dirty(1), [store.row_of("b")])
