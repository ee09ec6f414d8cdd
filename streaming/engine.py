"""The scoring engine: a batch of readings in, score records and anomaly episodes out.

Shared by the Kafka worker and by in-process replay, so both score a recording identically.

A batch is scored in rounds: round ``k`` holds the ``k``-th reading of every stream in the
batch, so several readings of one stream keep their order while all streams of a round share
one vectorized step call. Typical polls hold at most one reading per stream and need one
round; no reading is ever scored by a per-reading model call.

Per stream the engine also enforces time order (a reading not after the stream's last one is
rejected as ``out_of_order`` or ``duplicate``), skips readings whose source offset its state
already reflects (after a restore), and folds flagged readings into anomaly episodes: an
episode opens at a flagged reading and closes after ``episode_gap`` unflagged readings,
producing one event with its start, peak, end and the channels that stood out.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence

import numpy as np

from detector.step import StreamingStep
from streaming.messages import Rejection, RejectReason
from streaming.state_store import NO_EPISODE, StateStore


@dataclasses.dataclass(frozen=True, slots=True)
class Reading:
    """A validated reading and where it came from."""

    stream: str
    ts_ms: int
    values: np.ndarray
    partition: int = 0
    offset: int = -1
    broker_ts_ms: int = -1


@dataclasses.dataclass
class BatchResult:
    """What one batch produced; records are ``(key, value)`` bytes ready to publish."""

    scores: list[tuple[bytes, bytes]]
    episodes: list[tuple[bytes, bytes]]
    # Source partition of each score and episode record: outputs stay co-partitioned.
    score_partitions: list[int]
    episode_partitions: list[int]
    rejected: list[tuple[int, Rejection]]
    skipped: int
    score: np.ndarray
    likelihood: np.ndarray
    flagged: int
    episodes_opened: int
    reading_ts_ms: np.ndarray
    broker_ts_ms: np.ndarray
    step_seconds: float
    step_calls: int


def _number(value: float) -> str:
    """A JSON number, or ``null`` for a non-finite value: JSON has no NaN or infinity, and a
    record carrying Python's ``inf`` or ``NaN`` literals would break strict consumers."""
    # Seven significant digits hold a float32 exactly enough and print the same every time.
    value = float(value)
    return format(value, ".7g") if math.isfinite(value) else "null"


def _number_or_none(value: float) -> float | None:
    """The value as :func:`_number` writes it, for ``json.dumps``; None for non-finite."""
    text = _number(value)
    return None if text == "null" else float(text)


class ScoringEngine:
    """Scores batches of readings against per-stream state.

    Args:
        step: the model's vectorized streaming step.
        store: where each stream's state lives.
        channels: channel names in model order (for the top channel and episode channels).
        model_version: written into every score and episode record.
        episode_gap: unflagged readings that close an open anomaly episode.
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
        self._channel_json = [json.dumps(name) for name in self.channels]
        self._version_json = json.dumps(model_version)

    def process(self, readings: Sequence[Reading]) -> BatchResult:
        """Scores ``readings`` (in arrival order); rejects or skips those it must."""
        store = self.store
        now_s = self.clock()
        rejected: list[tuple[int, Rejection]] = []
        accepted: list[int] = []
        rounds: list[int] = []
        rows: list[int] = []
        batch_last_ts: dict[int, int] = {}
        batch_count: dict[int, int] = {}
        skipped = 0
        for index, reading in enumerate(readings):
            row = store.row_for(reading.stream, reading.partition)
            if reading.offset >= 0 and reading.offset <= store.last_offset[row] and \
                    reading.partition == store.partition[row]:
                skipped += 1  # this state already reflects the reading (replay after restore)
                continue
            last = batch_last_ts.get(row)
            if last is None:
                last = int(store.last_ts_ms[row])
            if reading.ts_ms <= last:
                reason = (RejectReason.DUPLICATE if reading.ts_ms == last
                          else RejectReason.OUT_OF_ORDER)
                rejected.append((index, Rejection(
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
            accepted.append(index)
            rounds.append(rank)
            rows.append(row)

        count = len(accepted)
        score = np.empty(count, np.float32)
        likelihood = np.empty(count, np.float32)
        scores_out: list[tuple[bytes, bytes]] = [(b"", b"")] * count
        episodes_out: list[tuple[bytes, bytes]] = []
        episode_partitions: list[int] = []
        flagged = opened = 0
        step_seconds = 0.0
        step_calls = 0
        if count:
            rows_arr = np.asarray(rows, dtype=np.int64)
            rounds_arr = np.asarray(rounds, dtype=np.int64)
            values = np.stack([readings[i].values for i in accepted])
            ts = np.fromiter((readings[i].ts_ms for i in accepted), np.int64, count)
            offsets = np.fromiter((readings[i].offset for i in accepted), np.int64, count)
            partitions = np.fromiter((readings[i].partition for i in accepted), np.int32, count)
            last_round = int(rounds_arr.max())
            for rank in range(last_round + 1):
                members = np.arange(count) if last_round == 0 else np.flatnonzero(
                    rounds_arr == rank)
                round_rows = rows_arr[members]
                started = time.perf_counter()
                result, store.state[round_rows] = self.step(
                    values[members], ts[members], store.state[round_rows])
                step_seconds += time.perf_counter() - started
                step_calls += 1
                store.last_ts_ms[round_rows] = ts[members]
                # The partition of a stream's latest reading owns it (a producer that broke
                # keying may have moved it); offsets only compare within that partition.
                same = store.partition[round_rows] == partitions[members]
                store.last_offset[round_rows] = np.where(
                    same, np.maximum(store.last_offset[round_rows], offsets[members]),
                    offsets[members])
                store.partition[round_rows] = partitions[members]
                store.last_seen_s[round_rows] = now_s
                store.last_used[round_rows] = store.next_use + members
                store.dirty[round_rows] = True
                score[members] = result.score
                likelihood[members] = result.likelihood
                flagged += int(result.flag.sum())
                opened += self._update_episodes(round_rows, ts[members], result, episodes_out,
                                                episode_partitions)
                self._format_scores(members, round_rows, ts[members], result, scores_out)
            store.next_use += count
        return BatchResult(
            scores=scores_out, episodes=episodes_out,
            score_partitions=[readings[i].partition for i in accepted],
            episode_partitions=episode_partitions, rejected=rejected, skipped=skipped,
            score=score, likelihood=likelihood, flagged=flagged, episodes_opened=opened,
            reading_ts_ms=np.fromiter((readings[i].ts_ms for i in accepted), np.int64, count),
            broker_ts_ms=np.fromiter((readings[i].broker_ts_ms for i in accepted), np.int64,
                                     count),
            step_seconds=step_seconds, step_calls=step_calls)

    def _format_scores(self, members, rows, ts, result, out) -> None:
        store = self.store
        channel_json = self._channel_json
        version = self._version_json
        for position, row, when, s, p, q, o, f, top in zip(
                members.tolist(), rows.tolist(), ts.tolist(), result.score.tolist(),
                result.likelihood.tolist(), result.surprise.tolist(), result.onset.tolist(),
                result.flag.tolist(), result.top_channel.tolist(), strict=True):
            key, stream_json = store.record_key(row)
            value = (f'{{"stream":{stream_json},"ts":{when},"score":{_number(s)},'
                     f'"likelihood":{_number(p)},"surprise":{_number(q)},"onset":{_number(o)},'
                     f'"flag":{"true" if f else "false"},"top_channel":{channel_json[top]},'
                     f'"model_version":{version}}}')
            out[position] = (key, value.encode())

    def _update_episodes(self, rows, ts, result, out, partitions) -> int:
        """Folds flags into episodes; returns how many opened. Loops only over streams that
        are flagged now or have an episode open."""
        store = self.store
        open_now = store.episode_start_ms[rows] != NO_EPISODE
        interesting = np.flatnonzero(result.flag | open_now)
        opened = 0
        for i in interesting.tolist():
            row = int(rows[i])
            when = int(ts[i])
            if result.flag[i]:
                top = int(result.top_channel[i])
                if store.episode_start_ms[row] == NO_EPISODE:
                    opened += 1
                    store.episode_start_ms[row] = when
                    store.episode_peak_score[row] = -1.0
                    store.episode_readings[row] = 0
                    store.episode_channel_mask[row] = 0
                store.episode_end_ms[row] = when
                store.episode_readings[row] += 1
                store.episode_quiet[row] = 0
                store.episode_channel_mask[row] |= np.uint64(1 << top)
                if result.score[i] > store.episode_peak_score[row]:
                    store.episode_peak_score[row] = result.score[i]
                    store.episode_peak_likelihood[row] = result.likelihood[i]
                    store.episode_peak_ms[row] = when
            else:
                store.episode_quiet[row] += 1
                if store.episode_quiet[row] >= self.episode_gap:
                    out.append(self._episode_record(row))
                    partitions.append(int(store.partition[row]))
                    store.episode_start_ms[row] = NO_EPISODE
                    store.episode_quiet[row] = 0
        return opened

    def _episode_record(self, row: int) -> tuple[bytes, bytes]:
        store = self.store
        mask = int(store.episode_channel_mask[row])
        channels = [name for bit, name in enumerate(self.channels) if mask >> bit & 1]
        event = {
            "stream": store.stream_of(row),
            "start_ts": int(store.episode_start_ms[row]),
            "peak_ts": int(store.episode_peak_ms[row]),
            "end_ts": int(store.episode_end_ms[row]),
            "peak_score": _number_or_none(store.episode_peak_score[row]),
            "peak_likelihood": _number_or_none(store.episode_peak_likelihood[row]),
            "flagged_readings": int(store.episode_readings[row]),
            "channels": channels,
            "model_version": self.model_version,
        }
        return store.stream_of(row).encode(), json.dumps(event, separators=(",", ":"),
                                                         allow_nan=False).encode()

    def evict_idle(self, max_idle_s: float) -> list[tuple[bytes, int]]:
        """Forgets streams silent for longer than ``max_idle_s``; returns their Kafka keys
        and partitions (the changelog gets a tombstone for each)."""
        store = self.store
        rows = store.idle_rows(self.clock(), max_idle_s)
        evicted = [(store.record_key(row)[0], int(store.partition[row])) for row in rows.tolist()]
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
        evicted = [(store.record_key(row)[0], int(store.partition[row]))
                   for row in oldest.tolist()]
        store.release(oldest)
        return evicted
