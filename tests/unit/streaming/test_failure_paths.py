"""What a worker writes on its way out after a failure: never the states of a batch whose
outputs were not acknowledged, and nothing at all into a changelog of the wrong shape."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from cellwatch.wiring import assemble_worker
from detector.step import StreamingStep
from streaming.changelog import restore_states
from streaming.metrics import WorkerMetrics
from streaming.ports import OutputError, TopicSetupError
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
    durability_discrepancies,
    make_worker,
    model_of,
    run_worker,
)
from tests.unit.streaming.conftest import record_of


class ClosingLikeKafkaSource(BrokerSource):
    """Closes like kafka-python's consumer: leaving the group runs the revoke callback, and
    the offsets it hands back are committed."""

    def close(self) -> None:
        self.broker.committed.update(self.worker.partitions.on_revoked(self.partitions))
        super().close()


class LosingSink(BrokerSink):
    """Flush number ``fail_at`` fails: its records never reach the broker (the scores topic
    was deleted and recreated with fewer partitions, say). Later flushes work."""

    def __init__(self, broker: Broker, fail_at: int) -> None:
        super().__init__(broker)
        self.fail_at = fail_at
        self.calls = 0

    def flush(self) -> int:
        self.calls += 1
        if self.calls == self.fail_at:
            del self.sent[self._flushed:]
            raise OutputError("scores: 3 of 7 output records failed")
        return super().flush()


@pytest.mark.parametrize("fail_at", [2, 3, 5, 8])
def test_a_failed_flush_never_checkpoints_what_its_batch_advanced(
        step: StreamingStep, recorded: np.ndarray, fake_monotonic: list[float],
        fail_at: int) -> None:
    readings = all_readings(recorded)
    broker = Broker(readings)
    worker = make_worker(step, broker, sink=LosingSink(broker, fail_at))
    stop = threading.Event()
    source = ClosingLikeKafkaSource(broker, worker, (0, 1), stop, clock=fake_monotonic)
    with pytest.raises(OutputError):
        worker.run(source, stop)
    assert source.closed
    # The restarted worker restores the last good checkpoint and replays from its offsets.
    last = run_worker(step, broker, clock=fake_monotonic)
    found = durability_discrepancies(step, readings, broker, last)
    assert not found, f"{len(found)} discrepancies, first:\n" + "\n".join(found[:5])


def test_a_failed_checkpoint_is_not_retried_by_the_revoke_on_the_way_out(
        step: StreamingStep, recorded: np.ndarray, fake_monotonic: list[float]
        ) -> None:
    """The checkpoint's flush fails after its states were taken as written; the revoke
    that closing the consumer runs must not commit the offsets that checkpoint covered."""
    readings = all_readings(recorded)
    broker = Broker(readings)
    # 2 batches, then the first checkpoint
    worker = make_worker(step, broker, sink=LosingSink(broker, fail_at=3))
    stop = threading.Event()
    with pytest.raises(OutputError):
        worker.run(ClosingLikeKafkaSource(broker, worker, (0, 1), stop,
                                          clock=fake_monotonic), stop)
    assert broker.committed == {} and broker.on(CHANGELOG) == []
    last = run_worker(step, broker, clock=fake_monotonic)
    assert durability_discrepancies(step, readings, broker, last) == []


def test_a_changelog_of_the_wrong_shape_stops_the_worker_before_it_writes(
        step: StreamingStep, recorded: np.ndarray, fake_monotonic: list[float]
        ) -> None:
    readings = all_readings(recorded)
    broker = Broker(readings)
    registry = CollectorRegistry()
    worker = make_worker(step, broker, registry)
    checks = []

    def changelog_check() -> None:
        checks.append(1)
        if len(checks) >= 2:  # deleted after the first checkpoint, auto-created anew
            raise TopicSetupError("state changelog 'changelog': expected 2 partitions, "
                                  "found 1")

    worker.checkpoint.check_topic = changelog_check
    stop = threading.Event()
    with pytest.raises(TopicSetupError, match="expected 2 partitions"):
        worker.run(ClosingLikeKafkaSource(broker, worker, (0, 1), stop,
                                          clock=fake_monotonic), stop)
    first_checkpoint = len(broker.on(CHANGELOG))
    assert first_checkpoint > 0 and len(checks) == 2  # no retry loop
    assert broker.committed == {0: 8, 1: 6}  # what the first checkpoint covered, no more
    assert registry.get_sample_value("cellwatch_checkpoint_failures_total") == 1
    assert not worker.liveness()[0]


def test_streams_evicted_beyond_max_streams_get_tombstones_and_stay_away(
        step: StreamingStep, recorded: np.ndarray) -> None:
    readings = all_readings(recorded)  # streams a, b on partition 0; c, d on partition 1
    broker = Broker(readings)
    registry = CollectorRegistry()
    config = dataclasses.replace(CONFIG, max_streams=3)
    worker = assemble_worker(config, model_of(step), BrokerSink(broker), WorkerMetrics(registry),
                             changelog=BrokerChangelog(broker), clock=lambda: 1_800_000_000.0)
    assign(worker, [0, 1])
    a0, b0 = readings[0], readings[1]
    c0, d0 = readings[60], readings[61]
    worker.process([record_of(r) for r in (a0, b0, c0)])
    worker.commit_checkpoint()
    worker.process([record_of(d0)])  # a is the least recently used: evicted
    worker.commit_checkpoint()
    assert "a" not in worker.store and len(worker.store) == 3
    tombstone, newest = broker.on(CHANGELOG)[-2:]
    assert (tombstone.key, tombstone.value, tombstone.partition) == (b"a", None, 0)
    assert newest.key == b"d"
    restored = StateStore(step.layout)
    restore_states(restored, BrokerChangelog(broker).read([0, 1]), "readings", now_s=0.0)
    assert sorted(restored.stream_of(r) for r in restored.rows_in_use()) == ["b", "c", "d"]
    assert registry.get_sample_value("cellwatch_stream_capacity_evictions_total") == 1
