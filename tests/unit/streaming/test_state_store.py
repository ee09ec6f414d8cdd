"""StateStore: rows per stream, growth, release, partitions, dirty rows, checkpoint records."""

from __future__ import annotations

import numpy as np
import pytest

from detector.state import StateLayout
from streaming.state_store import NO_EPISODE, StateStore

LAYOUT = StateLayout(channels=3, input_width=7, memory_units=6)

# Every bookkeeping array and the value a fresh row holds.
FRESH = {"last_ts_ms": -1, "last_offset": -1, "partition": -1, "last_seen_s": 0.0,
         "episode_start_ms": NO_EPISODE, "episode_end_ms": NO_EPISODE,
         "episode_peak_ms": NO_EPISODE, "episode_peak_score": 0.0,
         "episode_peak_likelihood": 0.0, "episode_readings": 0, "episode_quiet": 0,
         "episode_channel_mask": 0, "dirty": False, "last_used": 0}


def fill_row(store: StateStore, row: int, seed: int) -> None:
    """Gives every field of ``row`` a distinctive, non-default value."""
    rng = np.random.default_rng(seed)
    store.state[row] = rng.normal(size=LAYOUT.size).astype(np.float32)
    store.last_ts_ms[row] = 1_706_702_400_000 + seed
    store.last_offset[row] = 10_000 + seed
    store.last_seen_s[row] = 1000.0 + seed
    store.episode_start_ms[row] = 1_706_702_000_000 + seed
    store.episode_end_ms[row] = 1_706_702_300_000 + seed
    store.episode_peak_ms[row] = 1_706_702_100_000 + seed
    store.episode_peak_score[row] = np.float32(7.123456 + seed)
    store.episode_peak_likelihood[row] = np.float32(0.9991234)
    store.episode_readings[row] = 5 + seed
    store.episode_quiet[row] = 2
    store.episode_channel_mask[row] = np.uint64((1 << 63) | (1 << 2) | seed)
    store.dirty[row] = True


def row_fields(store: StateStore, row: int) -> dict[str, object]:
    fields = {name: getattr(store, name)[row].item() for name in FRESH}
    fields["state"] = store.state[row].tobytes()
    return fields


def assert_fresh(store: StateStore, row: int, partition: int = -1) -> None:
    for name, fill in {**FRESH, "partition": partition}.items():
        assert getattr(store, name)[row] == fill, name
    np.testing.assert_array_equal(store.state[row], LAYOUT.initial(1)[0])


def test_rows_are_allocated_once_per_stream_and_reused() -> None:
    store = StateStore(LAYOUT, initial_capacity=4)
    a = store.row_for("a", partition=0)
    b = store.row_for("b", partition=1)
    assert a != b
    assert store.row_for("a", partition=0) == a
    assert store.row_for("a", partition=5) == a  # an existing stream keeps its row
    assert len(store) == 2 and "a" in store and "c" not in store
    assert store.row_of("a") == a and store.row_of("c") is None
    assert store.stream_of(b) == "b"
    assert_fresh(store, a, partition=0)
    assert_fresh(store, b, partition=1)


def test_a_released_row_is_reused_and_starts_fresh() -> None:
    store = StateStore(LAYOUT, initial_capacity=2)
    a = store.row_for("a", 3)
    store.row_for("b", 3)
    fill_row(store, a, seed=1)
    store.release([a])
    assert "a" not in store and len(store) == 1
    with pytest.raises(KeyError):
        store.stream_of(a)
    assert_fresh(store, a)
    c = store.row_for("c", 4)
    assert c == a  # the freed row, not a new one: the arrays did not grow
    assert store.state.shape[0] == 2
    assert_fresh(store, c, partition=4)
    assert store.stream_of(c) == "c"  # not the previous stream's id
    store.release([c, c, 1])  # releasing twice, or mixed with others, is harmless
    assert len(store) == 0


def test_growth_preserves_every_existing_row() -> None:
    store = StateStore(LAYOUT, initial_capacity=2)
    rows = {}
    before = {}
    for i in range(2):
        rows[f"s{i}"] = store.row_for(f"s{i}", partition=i)
        fill_row(store, rows[f"s{i}"], seed=i)
        before[f"s{i}"] = row_fields(store, rows[f"s{i}"])
    for i in range(2, 9):  # grows 2 -> 4 -> 8 -> 16
        rows[f"s{i}"] = store.row_for(f"s{i}", partition=i)
    assert store.state.shape == (16, LAYOUT.size)
    assert all(getattr(store, name).shape == (16,) for name in FRESH)
    assert len(set(rows.values())) == 9
    for stream, fields in before.items():
        assert store.row_of(stream) == rows[stream]
        assert row_fields(store, rows[stream]) == fields
    for i in range(2, 9):
        row = rows[f"s{i}"]
        assert store.stream_of(row) == f"s{i}" and store.partition[row] == i
        assert_fresh(store, row, partition=i)
    assert store.array_bytes == store.state.nbytes + sum(getattr(store, n).nbytes
                                                         for n in FRESH)
    assert store.nbytes > store.array_bytes  # the ids and the containers count too


def test_partition_queries() -> None:
    store = StateStore(LAYOUT, initial_capacity=2)
    rows = {name: store.row_for(name, partition) for name, partition in
            [("a", 0), ("b", 1), ("c", 0), ("d", 2)]}
    assert sorted(store.rows_of_partition(0).tolist()) == sorted([rows["a"], rows["c"]])
    assert store.rows_of_partition(1).tolist() == [rows["b"]]
    assert store.rows_of_partition(7).size == 0
    assert sorted(store.rows_in_use().tolist()) == sorted(rows.values())
    store.release(store.rows_of_partition(0))
    assert sorted(store.rows_in_use().tolist()) == sorted([rows["b"], rows["d"]])
    assert store.rows_of_partition(0).size == 0


def test_dirty_rows_are_taken_once_and_per_partition() -> None:
    store = StateStore(LAYOUT)
    a, b, c = (store.row_for(name, p) for name, p in [("a", 0), ("b", 1), ("c", 1)])
    assert store.take_dirty().size == 0
    store.dirty[[a, b, c]] = True
    assert store.take_dirty(partition=1).tolist() == sorted([b, c])
    assert store.take_dirty(partition=1).size == 0  # now clean
    assert store.take_dirty().tolist() == [a]  # partition 0 was left dirty
    assert store.take_dirty().size == 0
    store.dirty[b] = True
    store.release([b])
    assert store.take_dirty().size == 0  # a released stream is not checkpointed


def test_idle_rows() -> None:
    store = StateStore(LAYOUT)
    rows = {name: store.row_for(name, 0) for name in "abc"}
    store.last_seen_s[rows["a"]] = 100.0
    store.last_seen_s[rows["b"]] = 150.0
    store.last_seen_s[rows["c"]] = 200.0
    assert sorted(store.idle_rows(now_s=210.0, max_idle_s=50.0).tolist()) == sorted(
        [rows["a"], rows["b"]])
    assert store.idle_rows(now_s=210.0, max_idle_s=60.0).tolist() == [rows["a"]]  # 150 is not
    assert store.idle_rows(now_s=210.0, max_idle_s=1000.0).size == 0
    store.release([rows["a"]])
    assert store.idle_rows(now_s=210.0, max_idle_s=50.0).tolist() == [rows["b"]]


def test_a_record_round_trips_byte_exact_with_its_episode() -> None:
    source = StateStore(LAYOUT)
    row = source.row_for("pump-7", partition=2)
    fill_row(source, row, seed=3)
    record = source.encode_record(row)
    # The sidecar: five int64, two float32, two int32 and the uint64 channel mask.
    assert len(record) == source.record_bytes == LAYOUT.record_bytes + 64

    target = StateStore(LAYOUT, initial_capacity=1)
    target.row_for("other", partition=0)  # the restored stream needs a grown array
    restored = target.restore_record("pump-7", partition=2, data=record, now_s=5000.0)
    assert target.row_of("pump-7") == restored
    assert target.encode_record(restored) == record
    expected = row_fields(source, row)
    # A restore counts as the stream's latest use (least-recently-used eviction).
    expected.update(last_seen_s=5000.0, dirty=False, last_used=1)
    assert row_fields(target, restored) == expected
    assert int(target.episode_channel_mask[restored]) >> 63 == 1  # the top bit survives


def test_restore_overwrites_a_known_stream_and_takes_the_new_partition() -> None:
    source = StateStore(LAYOUT)
    fill_row(source, source.row_for("s", 0), seed=4)
    record = source.encode_record(source.row_of("s"))
    target = StateStore(LAYOUT)
    row = target.row_for("s", 9)
    fill_row(target, row, seed=8)
    assert target.restore_record("s", 1, record, now_s=1.0) == row
    assert target.encode_record(row) == record
    assert target.partition[row] == 1


def test_an_initial_row_round_trips_too() -> None:
    store = StateStore(LAYOUT)
    row = store.row_for("new", 0)
    record = store.encode_record(row)
    other = StateStore(LAYOUT)
    assert other.encode_record(other.restore_record("new", 0, record, 0.0)) == record
    assert other.episode_start_ms[other.row_of("new")] == NO_EPISODE


@pytest.mark.parametrize("delta", [-1, 1, -64])
def test_a_record_of_the_wrong_length_is_refused(delta: int) -> None:
    store = StateStore(LAYOUT)
    record = store.encode_record(store.row_for("s", 0))
    with pytest.raises(ValueError, match=r"stream 'x'.*expected \d+ bytes"):
        store.restore_record("x", 0, record[:delta] if delta < 0 else record + b"\0", 0.0)
    assert "x" not in store  # no row allocated for the refused record


def test_a_record_of_another_layout_is_refused() -> None:
    other = StateStore(StateLayout(channels=3, input_width=7, memory_units=7))
    record = other.encode_record(other.row_for("s", 0))
    with pytest.raises(ValueError, match="expected"):
        StateStore(LAYOUT).restore_record("s", 0, record, 0.0)


def test_state_bytes_count_the_stream_ids() -> None:
    store = StateStore(LAYOUT, initial_capacity=4)
    store.release([store.row_for("s", partition=0)])  # the containers have their size now
    empty = store.nbytes
    row = store.row_for("x" * 10_000, partition=0)
    with_id = store.nbytes
    assert with_id - empty >= 10_000
    store.release([row])
    assert store.nbytes == empty
