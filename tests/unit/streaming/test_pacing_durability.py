"""A hot stream under pacing, through the worker's whole loop with in-memory ports: the other
streams are not held behind it, and crashes and rebalances while records are held back
neither lose a reading nor apply one twice, and the broken message is dead-lettered (the
harness of test_durability)."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from detector.step import StreamingStep
from streaming.engine import Reading
from tests.unit.streaming.broker_fakes import (
    CONFIG,
    Broker,
    BrokerSink,
    BrokerSource,
    Crash,
    durability_discrepancies,
    make_worker,
    scores_by_key,
)
from tests.unit.streaming.conftest import FakeRecord, readings_of

LIMIT = 2  # readings of one stream per batch
PACED = dataclasses.replace(CONFIG, max_stream_readings_per_batch=LIMIT)
BAD_OFFSET = 33  # a broken message of the hot stream, in partition 0


def hot_and_cold(recorded: np.ndarray, cold_steps: int = 5) -> tuple[list[Reading], Broker]:
    """Partition 0: hot stream "h" (30 readings) with "a" every third reading and one broken
    message of "h"; partition 1: "c", "d", "e" and "f", ``cold_steps`` readings each."""
    hot = readings_of(recorded[:1, :30], ["h"])
    some = iter(readings_of(recorded[1:2, :10], ["a"]))
    mixed: list[Reading] = []
    for index, reading in enumerate(hot):
        mixed.append(reading)
        if index % 3 == 2:
            mixed.append(next(some))
    partition0 = [dataclasses.replace(r, offset=i) for i, r in enumerate(mixed)]
    partition0 = [dataclasses.replace(r, offset=r.offset + (r.offset >= BAD_OFFSET))
                  for r in partition0]
    partition1 = readings_of(recorded[2:6, :cold_steps], ["c", "d", "e", "f"], partition=1)
    readings = partition0 + partition1
    broker = Broker(readings)
    broker.inputs[0].insert(BAD_OFFSET, FakeRecord("readings", 0, BAD_OFFSET, 0, b"h",
                                                   b'{"stream": "h", "ts": '))
    return readings, broker


def run(step: StreamingStep, broker: Broker, source_type=BrokerSource, crash_at=None,
        clock=None, transactional=False, **source_args):
    worker = make_worker(step, broker, config=PACED, transactional=transactional,
                         sink=BrokerSink(broker, transactional))
    stop = threading.Event()
    source = source_type(broker, worker, (0, 1), stop, crash_at, clock, **source_args)
    if crash_at is None:
        worker.run(source, stop)
    else:
        with pytest.raises(Crash):
            worker.run(source, stop)
    return worker, source


class RecordingSource(BrokerSource):
    """Records each poll's arguments and each pause and resume."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.calls: list[tuple] = []

    def poll(self, timeout_ms: int, max_records: int) -> list[FakeRecord]:
        self.calls.append(("poll", timeout_ms, max_records))
        return super().poll(timeout_ms, max_records)

    def pause(self, partitions) -> None:
        self.calls.append(("pause", list(partitions)))
        super().pause(partitions)

    def resume(self, partitions) -> None:
        self.calls.append(("resume", list(partitions)))
        super().resume(partitions)


def test_the_hot_stream_holds_back_only_its_own_partition(
        step: StreamingStep, recorded: np.ndarray, fake_monotonic: list[float]) -> None:
    readings, broker = hot_and_cold(recorded, cold_steps=LIMIT)
    config = dataclasses.replace(PACED, max_poll_records=100)
    worker = make_worker(step, broker, config=config)
    stop = threading.Event()
    source = RecordingSource(broker, worker, (0, 1), stop, None, fake_monotonic)
    worker.run(source, stop)
    # Poll 1 joins the group (its records are read again after the restore); poll 2 takes
    # everything, and its batch holds partition 0 up to the hot stream's third reading and
    # all of partition 1 (the two partitions' records alternate in the poll).
    first = broker.log[:worker.sink.events[0][1]]
    assert b"".join(r.key for r in first if r.topic == "scores") == b"hchdefcdef"
    assert not durability_discrepancies(step, readings, broker, worker)
    assert broker.committed == {0: 41, 1: 8}
    assert len(broker.on("dead-letters")) == 1
    # Each batch held at most LIMIT readings of a stream: 30 hot readings took 15 batches.
    assert len([e for e in worker.sink.events if e[0] == "flush"]) >= 15
    # Partition 0 was paused while records of it were held, and resumed once they were
    # scored; a poll never waits while records are held, and always asks for a whole poll.
    pauses = [call for call in source.calls if call[0] != "poll"]
    assert pauses == [("pause", [0]), ("resume", [0])]
    paused_at, resumed_at = (source.calls.index(call) for call in pauses)
    assert all(call == ("poll", 0, 100) for call in source.calls[paused_at + 1:resumed_at])
    assert all(call[2] == 100 for call in source.calls if call[0] == "poll")


@pytest.mark.parametrize("transactional", [False, True])
@pytest.mark.parametrize("crash_points", [[3], [5, 4], [9, 3, 7]])
def test_crashes_while_records_are_held_neither_lose_nor_repeat_anything(
        step: StreamingStep, recorded: np.ndarray, fake_monotonic: list[float],
        crash_points: list[int], transactional: bool) -> None:
    readings, broker = hot_and_cold(recorded)
    for crash_at in crash_points:
        run(step, broker, crash_at=crash_at, clock=fake_monotonic, transactional=transactional)
    last, _ = run(step, broker, clock=fake_monotonic, transactional=transactional)
    found = durability_discrepancies(step, readings, broker, last)
    assert not found, f"{len(found)} discrepancies, first:\n" + "\n".join(found[:5])
    assert broker.committed == {0: 41, 1: 20}
    # Dead letters are at least once (a replayed batch sends its letters again, identical),
    # exactly once with transactions.
    letters = broker.on("dead-letters")
    assert len({(letter.key, letter.value, letter.headers) for letter in letters}) == 1
    if transactional:
        assert len(letters) == 1


class MovingSource(BrokerSource):
    """At poll ``move_at`` an eager rebalance revokes both partitions and gives this worker
    back only partition 1 (its position goes back to the committed offset, as a consumer's
    does); partition 0 went to another member."""

    def __init__(self, *args, move_at: int) -> None:
        super().__init__(*args)
        self.move_at = move_at
        self.held_at_move = -1

    def poll(self, timeout_ms: int, max_records: int) -> list[FakeRecord]:
        if self.polls + 1 == self.move_at:
            self.held_at_move = len(self.worker.held_back)
            self.commit(self.worker.partitions.on_revoked([0, 1]))
            self.worker.partitions.on_assigned([1])
            self.partitions = [1]
            self.positions = {1: self.broker.committed.get(1, 0)}
            self.paused.clear()  # assigned anew
        return super().poll(timeout_ms, max_records)


def test_records_held_for_a_partition_that_moved_are_left_to_its_next_owner(
        step: StreamingStep, recorded: np.ndarray, fake_monotonic: list[float]) -> None:
    readings, broker = hot_and_cold(recorded)
    first, source = run(step, broker, MovingSource, clock=fake_monotonic, move_at=5)
    assert source.held_at_move > 0, "nothing was held back when the partition moved"
    moved_at = broker.committed[0]
    scored0 = {key for key in scores_by_key(broker) if key.split(b"@")[0] in (b"h", b"a")}
    # The first worker scored partition 0 only below the offset it handed over.
    assert len(scored0) == sum(r.offset < moved_at for r in readings if r.partition == 0)
    # The next owner takes partition 0 from there (and the first worker's partition 1 is
    # done: it skips it).
    last, _ = run(step, broker, clock=fake_monotonic)
    assert not durability_discrepancies(step, readings, broker, last)
    published = Counter(record.key + record.value.split(b'"ts":')[1].split(b",")[0]
                        for record in broker.on("scores"))
    assert len(published) == len(readings) and set(published.values()) == {1}
    assert len(broker.on("dead-letters")) == 1
    assert first.store.row_of("h") is None


class LaggingSource(BrokerSource):
    """Reports the records it has not delivered as the lag of each partition, and lets the
    worker run its maintenance once, at the first poll while records are held."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.held = -1

    def lag(self) -> dict[int, int]:
        return {p: len(self.broker.inputs[p]) - self.positions[p] for p in self.partitions}

    def poll(self, timeout_ms: int, max_records: int) -> list[FakeRecord]:
        if self.held < 0 and self.worker.held_back:
            self.held = len(self.worker.held_back)
            self.held_gauge = self.worker.metrics.registry.get_sample_value(
                "cellwatch_held_back_messages")
            # Each processed record has its score or its dead letter on the broker.
            self.processed = len(self.broker.on("scores")) + len(self.broker.on("dead-letters"))
            self.undelivered = self.lag()
            self.worker._next_maintenance = 0.0
            self.worker._maintain()
            self.lags = {p: self.worker.metrics.registry.get_sample_value(
                "cellwatch_consumer_lag_messages", {"topic": "readings", "partition": str(p)})
                for p in (0, 1)}
        return super().poll(timeout_ms, max_records)


def test_held_back_records_count_in_the_lag_and_their_own_gauge(
        step: StreamingStep, recorded: np.ndarray, fake_monotonic: list[float]) -> None:
    _, broker = hot_and_cold(recorded)
    registry = CollectorRegistry()
    worker = make_worker(step, broker, registry, config=PACED)
    stop = threading.Event()
    source = LaggingSource(broker, worker, (0, 1), stop, None, fake_monotonic)
    worker.run(source, stop)
    assert source.held > 0 and source.held_gauge == source.held
    assert registry.get_sample_value("cellwatch_held_back_messages") == 0  # at the end
    # The lag counts every record not yet processed, delivered to the worker or not.
    assert source.lags[0] + source.lags[1] == 61 - source.processed
    assert source.lags[0] > source.undelivered[0]
