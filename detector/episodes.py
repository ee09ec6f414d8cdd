"""Anomaly episodes: how flagged readings fold into one event. One rule, two ways to apply it.

The rule: an episode opens at a flagged reading and ends after ``gap`` unflagged readings in
a row. Flags separated by fewer than ``gap`` unflagged readings belong to one episode; with
``gap`` 3, flags at readings 0 and 3 (two quiet readings between) are one episode, flags at 0
and 4 (three quiet readings) are two. Chosen because it is the one the worker acts on as
readings arrive: once ``gap`` quiet readings have been seen the episode is over and its event
can be published, without waiting for a reading that might still extend it.

Both users apply the same predicate, :func:`ends_episode`:

* the streaming engine, incrementally: :func:`fold_flags` advances the open episodes of a
  table of streams by one reading each (:class:`OpenEpisodes`, the state store's arrays) and
  returns the episodes that ended;
* the evaluation, over a whole stream's flags at once: :func:`episode_spans`.

A test feeds random flag sequences through both and checks they give the same episodes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np

NO_EPISODE = -1  # episode_start_ms of a stream without an open episode


def ends_episode(quiet_readings, gap: int):
    """Whether ``quiet_readings`` unflagged readings in a row end an open episode (elementwise
    for arrays). The episode rule, written once."""
    return quiet_readings >= gap


def episode_spans(flags: np.ndarray, gap: int) -> list[tuple[int, int]]:
    """Inclusive ``(first, last)`` indices of the flagged readings of each episode in
    ``flags`` (one stream's flags, in time order). An episode still open at the end of
    ``flags`` is included: it ended with the data."""
    index = np.flatnonzero(np.asarray(flags, dtype=bool))
    if index.size == 0:
        return []
    breaks = np.flatnonzero(ends_episode(np.diff(index) - 1, gap))
    firsts = np.concatenate([[index[0]], index[breaks + 1]])
    lasts = np.concatenate([index[breaks], [index[-1]]])
    return [(int(a), int(b)) for a, b in zip(firsts, lasts, strict=True)]


@dataclasses.dataclass(frozen=True, slots=True)
class Episode:
    """An ended episode of one stream: times of its first, peak and last flagged readings,
    the peak's score and likelihood, how many readings were flagged, and a bit per channel
    that was the top channel of one of them."""

    start_ms: int
    peak_ms: int
    end_ms: int
    peak_score: float
    peak_likelihood: float
    flagged_readings: int
    channel_mask: int

    def channels(self, names: Sequence[str]) -> tuple[str, ...]:
        """The names of the channels in :attr:`channel_mask`, in model order."""
        return tuple(name for bit, name in enumerate(names) if self.channel_mask >> bit & 1)


class OpenEpisodes(Protocol):
    """Per-row arrays of the episode each stream has open (``episode_start_ms`` is
    :data:`NO_EPISODE` when none); the state store holds them and checkpoints them."""

    episode_start_ms: np.ndarray  # int64
    episode_end_ms: np.ndarray  # int64
    episode_peak_ms: np.ndarray  # int64
    episode_peak_score: np.ndarray  # float32
    episode_peak_likelihood: np.ndarray  # float32
    episode_readings: np.ndarray  # int32
    episode_quiet: np.ndarray  # int32, unflagged readings in a row since the last flag
    episode_channel_mask: np.ndarray  # uint64


@dataclasses.dataclass(frozen=True, slots=True)
class FoldResult:
    """What folding one reading per stream did to the open episodes."""

    opened: int  # episodes opened by these readings
    ended_rows: list[int]  # rows whose episode ended, in reading order
    ended: list[Episode]  # their episodes


def fold_flags(table: OpenEpisodes, rows: np.ndarray, ts_ms: np.ndarray, flag: np.ndarray,
               score: np.ndarray, likelihood: np.ndarray, top_channel: np.ndarray,
               gap: int) -> FoldResult:
    """Folds one reading per row into the open episodes of ``table``.

    ``rows`` must be distinct (one reading of each stream; the engine's rounds are), so
    every update below is one vectorized assignment. The peak is the flagged reading of the
    highest score, the first of equal ones.
    """
    rows = np.asarray(rows, dtype=np.int64)
    flag = np.asarray(flag, dtype=bool)
    was_open = table.episode_start_ms[rows] != NO_EPISODE
    # Most readings are unflagged in streams without an open episode: nothing to do for them
    # (a batch of one stream's readings comes here once per reading).
    moving = flag | was_open
    if not moving.all():
        if not moving.any():
            return FoldResult(0, [], [])
        rows, ts_ms, flag, score, likelihood, top_channel, was_open = (
            np.asarray(column)[moving] for column in (rows, ts_ms, flag, score, likelihood,
                                                      top_channel, was_open))

    flagged = rows[flag]
    opening = flag & ~was_open
    new = rows[opening]
    table.episode_start_ms[new] = ts_ms[opening]
    table.episode_peak_score[new] = -1.0  # any flagged reading's score tops it
    table.episode_readings[new] = 0
    table.episode_channel_mask[new] = 0
    table.episode_end_ms[flagged] = ts_ms[flag]
    table.episode_readings[flagged] += 1
    table.episode_quiet[flagged] = 0
    table.episode_channel_mask[flagged] |= np.left_shift(
        np.uint64(1), top_channel[flag].astype(np.uint64))
    higher = score[flag] > table.episode_peak_score[flagged]
    peaks = flagged[higher]
    table.episode_peak_score[peaks] = score[flag][higher]
    table.episode_peak_likelihood[peaks] = likelihood[flag][higher]
    table.episode_peak_ms[peaks] = ts_ms[flag][higher]

    quiet = rows[~flag & was_open]
    table.episode_quiet[quiet] += 1
    ending = quiet[ends_episode(table.episode_quiet[quiet], gap)]
    ended = [Episode(int(table.episode_start_ms[row]), int(table.episode_peak_ms[row]),
                     int(table.episode_end_ms[row]), float(table.episode_peak_score[row]),
                     float(table.episode_peak_likelihood[row]),
                     int(table.episode_readings[row]), int(table.episode_channel_mask[row]))
             for row in ending.tolist()]
    table.episode_start_ms[ending] = NO_EPISODE
    table.episode_quiet[ending] = 0
    return FoldResult(int(opening.sum()), ending.tolist(), ended)
