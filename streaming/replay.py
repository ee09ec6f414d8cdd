"""Replay of recorded readings: into Kafka, paced like the original, or scored in process.

Both take readings already merged in time order, as ``(stream, ts_ms, values)`` with one
finite value per channel. Scoring in process goes through the same
:class:`~streaming.engine.ScoringEngine` as the worker, in batches of the worker's poll size,
so it gives the worker's scores without a broker.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO

import numpy as np

from streaming.engine import Reading, ScoringEngine
from streaming.messages import ReadingMessageWriter
from streaming.output_records import encode_episode, encode_scores
from streaming.ports import RecordSink

RecordedReading = tuple[str, int, Sequence[float]]


def replay_to_kafka(readings: Iterable[RecordedReading], channels: Sequence[str],
                    sink: RecordSink, topic: str, speed: float = 0.0,
                    progress: Callable[[int], None] | None = None,
                    flush_every: int = 20_000,
                    sleep: Callable[[float], None] = time.sleep,
                    monotonic: Callable[[], float] = time.monotonic) -> int:
    """Produces ``readings`` keyed by stream; returns how many were acknowledged.

    Args:
        speed: 0 sends as fast as possible; otherwise the gaps between readings' timestamps
            are divided by ``speed`` (1 = real time, 60 = a minute of data per second).
        progress: called with the number of readings sent so far, every ``flush_every``.
    """
    if speed < 0:
        raise ValueError(f"`speed` must be 0 (as fast as possible) or positive, received {speed}")
    message = ReadingMessageWriter(channels).message
    sent = 0
    first_ts = None
    started = monotonic()
    for stream, ts_ms, values in readings:
        if speed > 0:
            if first_ts is None:
                first_ts = ts_ms
            due = started + (ts_ms - first_ts) / 1000.0 / speed
            ahead = due - monotonic()
            if ahead > 0.001:  # below a millisecond a sleep costs more than it paces
                sleep(ahead)
        sink.send(topic, stream.encode(), message(stream, ts_ms, values))
        sent += 1
        if sent % flush_every == 0:
            sink.flush()
            if progress is not None:
                progress(sent)
    if sent % flush_every or sent == 0:
        sink.flush()
        if progress is not None:
            progress(sent)
    return sent


@dataclasses.dataclass
class ReplayStats:
    readings: int = 0
    scored: int = 0
    rejected: int = 0
    flagged: int = 0
    episodes: int = 0


def score_in_process(readings: Iterable[RecordedReading], engine: ScoringEngine,
                     scores_out: IO[bytes], anomalies_out: IO[bytes] | None = None,
                     batch_size: int = 5000,
                     progress: Callable[[int], None] | None = None) -> ReplayStats:
    """Scores ``readings`` with ``engine``; writes score records and episodes as JSON lines."""
    stats = ReplayStats()
    batch: list[Reading] = []

    def run_batch() -> None:
        result = engine.process(batch)
        stats.readings += len(batch)
        stats.scored += len(result.scores)
        stats.rejected += len(result.rejected)
        stats.flagged += result.flagged
        stats.episodes += len(result.episodes)
        scores_out.writelines(value + b"\n" for _, value in encode_scores(result.scores))
        if anomalies_out is not None:
            anomalies_out.writelines(encode_episode(ended)[1] + b"\n"
                                     for ended in result.episodes)
        batch.clear()
        if progress is not None:
            progress(stats.readings)

    for stream, ts_ms, values in readings:
        batch.append(Reading(stream, int(ts_ms), np.asarray(values, dtype=np.float32)))
        if len(batch) >= batch_size:
            run_batch()
    if batch:
        run_batch()
    return stats
