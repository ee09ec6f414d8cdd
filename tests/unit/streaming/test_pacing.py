"""Pacing (streaming.pacing): a batch holds at most so many readings of one stream, and the
rest of that stream's partition waits, in order, for the next batch."""

from __future__ import annotations

import random

import pytest

from streaming.pacing import HeldBack
from tests.unit.streaming.conftest import FakeRecord


def records(*spec: tuple[int, str | None]) -> list[FakeRecord]:
    """Records of ``(partition, key)`` in poll order, offsets counted per partition."""
    next_offset: dict[int, int] = {}
    out = []
    for partition, key in spec:
        offset = next_offset.get(partition, 0)
        next_offset[partition] = offset + 1
        out.append(FakeRecord("readings", partition, offset, 0,
                              None if key is None else key.encode(), b"{}"))
    return out


def where(batch: list[FakeRecord]) -> list[tuple[int, int]]:
    return [(record.partition, record.offset) for record in batch]


def test_a_batch_within_the_limit_passes_whole() -> None:
    held = HeldBack(2)
    polled = records((0, "a"), (1, "b"), (0, "a"), (1, "b"), (0, "c"))
    assert held.next_batch(polled) == polled
    assert len(held) == 0


def test_a_stream_beyond_the_limit_holds_the_rest_of_its_partition_only() -> None:
    held = HeldBack(2)
    polled = records((0, "hot"), (1, "cold"), (0, "hot"), (0, "other"), (0, "hot"),
                     (1, "cold"), (0, "other"), (1, "x"))
    batch = held.next_batch(polled)
    # The third "hot" reading is held, and so is partition 0's "other" after it, though
    # "other" is within the limit: what a batch applies is a prefix of each partition.
    assert where(batch) == [(0, 0), (1, 0), (0, 1), (0, 2), (1, 1), (1, 2)]
    assert len(held) == 2
    assert held.by_partition() == {0: 2}
    # Held records come first, before the newly polled ones, in partition order.
    later = [FakeRecord("readings", 1, 3, 0, b"y", b"{}"),
             *(FakeRecord("readings", 0, offset, 0, b"hot", b"{}") for offset in (5, 6, 7))]
    batch = held.next_batch(later)
    assert where(batch) == [(0, 3), (0, 4), (1, 3), (0, 5)]
    assert where(held.next_batch([])) == [(0, 6), (0, 7)]
    assert len(held) == 0


def test_keys_count_per_partition_and_records_without_a_key_not_at_all() -> None:
    held = HeldBack(1)
    polled = records((0, "k"), (1, "k"), (0, None), (0, None), (1, None))
    assert held.next_batch(polled) == polled
    polled = records((0, "k"), (0, None), (0, "k"))
    assert where(held.next_batch(polled)) == [(0, 0), (0, 1)]
    assert len(held) == 1


def test_drop_forgets_the_held_records_of_the_given_partitions() -> None:
    held = HeldBack(1)
    held.next_batch(records((0, "a"), (1, "b"), (0, "a"), (1, "b"), (0, "c")))
    assert held.by_partition() == {0: 2, 1: 1}
    assert held.drop([0, 7]) == 2
    assert held.by_partition() == {1: 1}
    assert held.drop([]) == 0
    assert where(held.next_batch([])) == [(1, 1)]


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_stream_readings: expected at least 1, received 0"):
        HeldBack(0)


@pytest.mark.parametrize("seed", range(5))
def test_every_record_comes_once_in_partition_order_and_no_batch_exceeds_the_limit(
        seed: int) -> None:
    rng = random.Random(seed)
    limit, poll_size = 3, 20
    keys = ["hot", "hot", "hot", "hot", "a", "b", "c", None]
    stream = records(*((rng.randrange(3), rng.choice(keys)) for _ in range(400)))
    held = HeldBack(limit)
    seen: list[FakeRecord] = []
    position = 0
    while position < len(stream) or len(held):
        take = poll_size - len(held)  # what the worker asks a poll for
        assert take >= 1
        batch = held.next_batch(stream[position:position + take])
        position += take
        assert batch, "a batch with records in hand processed nothing"
        per_stream: dict[tuple[int, bytes], int] = {}
        for record in batch:
            if record.key is not None:
                per_stream[record.partition, record.key] = per_stream.get(
                    (record.partition, record.key), 0) + 1
        assert max(per_stream.values(), default=0) <= limit
        seen.extend(batch)
    assert sorted(where(seen)) == sorted(where(stream))
    for partition in range(3):
        offsets = [record.offset for record in seen if record.partition == partition]
        assert offsets == sorted(offsets), f"partition {partition} out of order"
