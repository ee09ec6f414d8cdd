"""The scoring engine: a batch of readings in, typed scores and ended anomaly episodes out.

Shared by the Kafka worker and by in-process replay, so both score a recording identically.
The engine knows no wire format: the records published for its results are written at the
edge (:mod:`streaming.output_records`).

A batch is scored in rounds: round ``k`` holds the ``k``-th reading of every stream in the
batch, so several readings of one stream keep their order while all streams of a round share
one vectorized step call. Typical polls hold at most one reading per stream and need one
round; no reading is ever scored by a per-reading model call. A batch of several rounds (a
hot stream's) is first prepared as a whole (:meth:`detector.step.StreamingStep.prepare`:
normalization, clock encodings, the forecaster's input layer), so each round runs only the
recurrence; the results are the same bits either way.

Per stream the engine also enforces time order (a reading not after the stream's last one is
rejected as ``out_of_order`` or ``duplicate``), skips readings whose source offset its state
already reflects (after a restore), and folds flags into anomaly episodes by the rule of
:mod:`detector.episodes` (an episode ends after ``episode_gap`` unflagged readings), the
same rule ``cellwatch evaluate`` counts episodes by.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from detector.episodes import Episode, fold_flags
from detector.step import StreamingStep
from streaming.messages import Rejection, RejectReason
from streaming.state_store import StateStore

if TYPE_CHECKING:
    from streaming.ports import SourceRecord


@dataclasses.dataclass(frozen=True, slots=True)
class Reading:
    """A validated reading and where it came from (``source``: the consumed record, which a
    rejection hands back so it can be dead-lettered with its original bytes)."""

    stream: str
    ts_ms: int
    values: np.ndarray
    partition: int = 0
    offset: int = -1
    broker_ts_ms: int = -1
    source: SourceRecord | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RejectedReading:
    """A reading the engine refused (out of order, duplicate), and why."""

    reading: Reading
    rejection: Rejection


@dataclasses.dataclass(frozen=True)
class ScoredReadings:
    """What the step said of each scored reading, as columns in arrival order (a batch holds
    thousands: one object per reading would cost more than encoding it)."""

    streams: list[str]
    ts_ms: np.ndarray  # int64
    partitions: list[int]  # source partition: outputs stay co-partitioned
    score: np.ndarray  # float32
    likelihood: np.ndarray  # float32
    surprise: np.ndarray  # float32
    onset: np.ndarray  # float32
    flag: np.ndarray  # bool
    top_channel: np.ndarray  # int, index into channels
    channels: tuple[str, ...]
    model_version: str

    def __len__(self) -> int:
        return len(self.streams)


@dataclasses.dataclass(frozen=True, slots=True)
class EndedEpisode:
    """An anomaly episode of ``stream`` that ended in this batch."""

    stream: str
    partition: int  # of the stream's latest reading
    episode: Episode
    channels: tuple[str, ...]  # the channels in the episode's channel mask
    model_version: str


@dataclasses.dataclass
class BatchResult:
    """What one batch produced."""

    scores: ScoredReadings
    episodes: list[EndedEpisode]
    rejected: list[RejectedReading]
    skipped: int
    flagged: int
    episodes_opened: int
    broker_ts_ms: np.ndarray
    step_seconds: float
    step_calls: int

    @property
    def score(self) -> np.ndarray:
        return self.scores.score

    @property
    def likelihood(self) -> np.ndarray:
        return self.scores.likelihood

    @property
    def reading_ts_ms(self) -> np.ndarray:
        return self.scores.ts_ms


@dataclasses.dataclass
class _Admission:
    """The readings of a batch that are scored: their positions in the batch, their state
    rows and rounds, and each one's previous reading of its stream in the batch (its index
    among the accepted, -1 for a stream's first); and what was rejected or skipped."""

    accepted: list[int] = dataclasses.field(default_factory=list)
    rows: list[int] = dataclasses.field(default_factory=list)
    rounds: list[int] = dataclasses.field(default_factory=list)
    previous: list[int] = dataclasses.field(default_factory=list)
    rejected: list[RejectedReading] = dataclasses.field(default_factory=list)
    skipped: int = 0


@dataclasses.dataclass
class _Advanced:
    """What advancing the admitted readings produced: result columns in admission order,
    the episodes that ended, counts and the time inside the step."""

    columns: dict[str, np.ndarray]
    episodes: list[EndedEpisode] = dataclasses.field(default_factory=list)
    flagged: int = 0
    opened: int = 0
    step_seconds: float = 0.0
    step_calls: int = 0


class ScoringEngine:
    """Scores batches of readings against per-stream state.

    Args:
        step: the model's vectorized streaming step.
        store: where each stream's state lives.
        channels: channel names in model order (for the top channel and episode channels).
        model_version: carried by every result, for the records written of it.
        episode_gap: unflagged readings in a row that end an open anomaly episode.
        clock: wall clock in seconds (for idle eviction); injectable for tests.
    """

    def __init__(self, step: StreamingStep, store: StateStore, channels: Sequence[str],
                 model_version: str, episode_gap: int = 3, clock=time.time) -> None:
        if len(channels) != step.layout.channels:
            raise ValueError(f"channels: expected {step.layout.channels} names, received "
                             f"{len(channels)}")
        if len(channels) > 64:
            raise ValueError("episode channel sets hold at most 64 channels")
        if step.layout != store.layout:
            raise ValueError("the state store's layout differs from the model's")
        self.step = step
        self.store = store
        self.channels = tuple(channels)
        self.model_version = model_version
        self.episode_gap = episode_gap
        self.clock = clock

    def process(self, readings: Sequence[Reading]) -> BatchResult:
        """Scores ``readings`` (in arrival order); rejects or skips those it must."""
        admitted = self._admit(readings)
        accepted = admitted.accepted
        count = len(accepted)
        ts = np.fromiter((readings[i].ts_ms for i in accepted), np.int64, count)
        advanced = _Advanced(columns={name: np.empty(count, dtype) for name, dtype in (
            ("score", np.float32), ("likelihood", np.float32), ("surprise", np.float32),
            ("onset", np.float32), ("flag", bool), ("top_channel", np.int32))})
        if count:
            self._advance(readings, admitted, ts, advanced)
        scores = ScoredReadings(
            streams=[readings[i].stream for i in accepted], ts_ms=ts,
            partitions=[readings[i].partition for i in accepted], **advanced.columns,
            channels=self.channels, model_version=self.model_version)
        return BatchResult(
            scores=scores, episodes=advanced.episodes, rejected=admitted.rejected,
            skipped=admitted.skipped, flagged=advanced.flagged,
            episodes_opened=advanced.opened,
            broker_ts_ms=np.fromiter((readings[i].broker_ts_ms for i in accepted), np.int64,
                                     count),
            step_seconds=advanced.step_seconds, step_calls=advanced.step_calls)

    def _admit(self, readings: Sequence[Reading]) -> _Admission:
        """Which readings are scored, in which round: skips those the state already
        reflects and rejects those not after their stream's last reading."""
        store = self.store
        admitted = _Admission()
        batch_last_ts: dict[int, int] = {}
        batch_count: dict[int, int] = {}
        batch_last_index: dict[int, int] = {}  # the row's latest accepted reading, by index
        for index, reading in enumerate(readings):
            row = store.row_for(reading.stream, reading.partition)
            if reading.offset >= 0 and reading.offset <= store.last_offset[row] and \
                    reading.partition == store.partition[row]:
                admitted.skipped += 1  # the state already reflects it (replay after restore)
                continue
            last = batch_last_ts.get(row)
            if last is None:
                last = int(store.last_ts_ms[row])
            if reading.ts_ms <= last:
                reason = (RejectReason.DUPLICATE if reading.ts_ms == last
                          else RejectReason.OUT_OF_ORDER)
                admitted.rejected.append(RejectedReading(reading, Rejection(
                    reason, f"stream {reading.stream!r}: ts {reading.ts_ms} is not after the "
                            f"stream's last reading at {last}")))
                if reading.offset >= 0 and reading.partition == store.partition[row]:
                    # The reading is dealt with (dead-lettered); never revisit it after restore.
                    store.last_offset[row] = max(int(store.last_offset[row]), reading.offset)
                    store.dirty[row] = True
                continue
            batch_last_ts[row] = reading.ts_ms
            rank = batch_count.get(row, 0)
            batch_count[row] = rank + 1
            admitted.previous.append(batch_last_index.get(row, -1))
            batch_last_index[row] = len(admitted.accepted)
            admitted.accepted.append(index)
            admitted.rounds.append(rank)
            admitted.rows.append(row)
        return admitted

    def _advance(self, readings: Sequence[Reading], admitted: _Admission, ts: np.ndarray,
                 out: _Advanced) -> None:
        """Advances the admitted readings' streams round by round, into ``out``."""
        store = self.store
        now_s = self.clock()
        accepted = admitted.accepted
        count = len(accepted)
        rows_arr = np.asarray(admitted.rows, dtype=np.int64)
        values = np.stack([readings[i].values for i in accepted])
        offsets = np.fromiter((readings[i].offset for i in accepted), np.int64, count)
        partitions = np.fromiter((readings[i].partition for i in accepted), np.int32, count)
        rounds_arr = np.asarray(admitted.rounds, dtype=np.int64)
        # Round by round, in arrival order within a round: each round is then one slice
        # of the arrays below (views, no gathering per round).
        order = np.argsort(rounds_arr, kind="stable")
        bounds = np.searchsorted(rounds_arr[order], np.arange(int(rounds_arr.max()) + 2))
        rows_arr, ts_in_order = rows_arr[order], ts[order]
        offsets, partitions = offsets[order], partitions[order]
        prepared = None
        started = time.perf_counter()
        # Several rounds: what no recurrence feeds is computed for all of them once. A
        # step without prepare (a wrapper that scripts or breaks __call__, in tests) is
        # called per round with the round's readings.
        if bounds.size > 2 and hasattr(self.step, "prepare"):
            position = np.empty(count, np.int64)
            position[order] = np.arange(count)
            previous = np.asarray(admitted.previous, dtype=np.int64)[order]
            previous = np.where(previous >= 0, position[previous], -1)
            prepared = self.step.prepare(values[order], ts_in_order, store.state,
                                         rows_arr, previous)
        else:
            values = values[order]
        out.step_seconds += time.perf_counter() - started
        for start, stop in itertools.pairwise(bounds.tolist()):
            members = order[start:stop]
            round_rows = rows_arr[start:stop]
            round_ts = ts_in_order[start:stop]
            started = time.perf_counter()
            if prepared is None:
                result, store.state[round_rows] = self.step(
                    values[start:stop], round_ts, store.state[round_rows])
            else:
                result, store.state[round_rows] = self.step.advance_prepared(
                    prepared, slice(start, stop), store.state[round_rows])
            out.step_seconds += time.perf_counter() - started
            out.step_calls += 1
            store.last_ts_ms[round_rows] = round_ts
            # The partition of a stream's latest reading owns it (a producer that broke
            # keying may have moved it); offsets only compare within that partition.
            round_partitions = partitions[start:stop]
            round_offsets = offsets[start:stop]
            same = store.partition[round_rows] == round_partitions
            store.last_offset[round_rows] = np.where(
                same, np.maximum(store.last_offset[round_rows], round_offsets),
                round_offsets)
            store.partition[round_rows] = round_partitions
            store.last_seen_s[round_rows] = now_s
            store.last_used[round_rows] = store.next_use + members
            store.dirty[round_rows] = True
            for name, column in out.columns.items():
                column[members] = getattr(result, name)
            out.flagged += int(result.flag.sum())
            out.opened += self._fold_episodes(round_rows, round_ts, result, out.episodes)
        store.next_use += count

    def _fold_episodes(self, rows: np.ndarray, ts: np.ndarray, result,
                       out: list[EndedEpisode]) -> int:
        """Folds one round's flags into the streams' episodes (:func:`fold_flags`: a round
        holds one reading per stream); appends the episodes that ended; returns how many
        opened."""
        store = self.store
        folded = fold_flags(store, rows, ts, result.flag, result.score, result.likelihood,
                            result.top_channel, self.episode_gap)
        for row, episode in zip(folded.ended_rows, folded.ended, strict=True):
            out.append(EndedEpisode(store.stream_of(row), int(store.partition[row]), episode,
                                    episode.channels(self.channels), self.model_version))
        return folded.opened

    def evict_idle(self, max_idle_s: float) -> list[tuple[bytes, int]]:
        """Forgets streams silent for longer than ``max_idle_s``; returns their Kafka keys
        and partitions (the changelog gets a tombstone for each)."""
        store = self.store
        rows = store.idle_rows(self.clock(), max_idle_s)
        evicted = [(store.stream_of(row).encode(), int(store.partition[row]))
                   for row in rows.tolist()]
        store.release(rows)
        return evicted

    def evict_least_recent(self, max_streams: int) -> list[tuple[bytes, int]]:
        """Forgets the least recently used streams beyond ``max_streams`` (a stream is used
        when a reading of it is applied); returns their Kafka keys and partitions."""
        store = self.store
        rows = store.rows_in_use()
        excess = rows.size - max_streams
        if excess <= 0:
            return []
        oldest = rows[np.argpartition(store.last_used[rows], excess - 1)[:excess]]
        evicted = [(store.stream_of(row).encode(), int(store.partition[row]))
                   for row in oldest.tolist()]
        store.release(oldest)
        return evicted
