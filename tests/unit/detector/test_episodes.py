"""The episode rule: an episode ends after ``gap`` unflagged readings, the same whether flags
are folded as they arrive (the worker) or read as a whole array (the evaluation)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from detector.episodes import NO_EPISODE, Episode, episode_spans, fold_flags


def open_episodes(rows: int) -> types.SimpleNamespace:
    """A table of open episodes shaped like the state store's."""
    return types.SimpleNamespace(
        episode_start_ms=np.full(rows, NO_EPISODE, np.int64),
        episode_end_ms=np.full(rows, NO_EPISODE, np.int64),
        episode_peak_ms=np.full(rows, NO_EPISODE, np.int64),
        episode_peak_score=np.zeros(rows, np.float32),
        episode_peak_likelihood=np.zeros(rows, np.float32),
        episode_readings=np.zeros(rows, np.int32),
        episode_quiet=np.zeros(rows, np.int32),
        episode_channel_mask=np.zeros(rows, np.uint64))


def fold_one_at_a_time(flags: np.ndarray, gap: int, score=None, top=None
                       ) -> tuple[list[Episode], types.SimpleNamespace]:
    """Folds one stream's flags (its readings at ts = index) one reading per call."""
    table = open_episodes(1)
    score = np.ones(len(flags), np.float32) if score is None else score
    top = np.zeros(len(flags), np.int32) if top is None else top
    ended = []
    for t, flag in enumerate(flags):
        one = slice(t, t + 1)
        ended += fold_flags(table, np.array([0]), np.array([t]), np.array([flag]),
                            score[one], score[one] / 10, top[one], gap).ended
    return ended, table


@pytest.mark.parametrize("flags, gap, spans", [
    ([], 3, []),
    ([0, 0, 0], 3, []),
    ([1, 0, 0, 1], 3, [(0, 3)]),  # two quiet readings: still one episode
    ([1, 0, 0, 0, 1], 3, [(0, 0), (4, 4)]),  # three quiet readings end it
    ([1, 1, 0, 1, 1], 1, [(0, 1), (3, 4)]),
    ([0, 1, 1, 1, 0], 1, [(1, 3)]),
])
def test_episode_spans(flags, gap, spans) -> None:
    assert episode_spans(np.array(flags, bool), gap) == spans


def test_folding_flags_as_they_arrive_gives_the_spans_of_the_whole_array() -> None:
    rng = np.random.default_rng(7)
    for _ in range(300):
        gap = int(rng.integers(1, 6))
        flags = rng.random(int(rng.integers(0, 60))) < rng.uniform(0.05, 0.8)
        ended, table = fold_one_at_a_time(flags, gap)
        folded = [(e.start_ms, e.end_ms) for e in ended]
        if table.episode_start_ms[0] != NO_EPISODE:  # still open when the flags end
            folded.append((int(table.episode_start_ms[0]), int(table.episode_end_ms[0])))
        assert folded == episode_spans(flags, gap), (gap, flags.astype(int).tolist())
        spans = episode_spans(flags, gap)
        assert [e.flagged_readings for e in ended] == [
            int(flags[a:b + 1].sum()) for a, b in spans[:len(ended)]]


def test_an_episode_reports_its_peak_and_channels() -> None:
    flags = np.array([1, 1, 1, 0, 0], bool)
    score = np.array([2.0, 9.0, 9.0, 0.5, 0.5], np.float32)
    top = np.array([0, 2, 0, 1, 1], np.int32)
    (episode,), _ = fold_one_at_a_time(flags, 2, score, top)
    assert episode == Episode(start_ms=0, peak_ms=1, end_ms=2, peak_score=9.0,
                              peak_likelihood=np.float32(0.9), flagged_readings=3,
                              channel_mask=0b101)  # the first of equal peaks
    assert episode.channels(("a", "b", "c")) == ("a", "c")


def test_streams_fold_independently_in_one_call() -> None:
    table = open_episodes(3)
    rows = np.array([2, 0])
    one = np.ones(2, np.float32)
    folded = fold_flags(table, rows, np.array([10, 10]), np.array([True, False]), one, one,
                        np.zeros(2, np.int32), 1)
    assert (folded.opened, folded.ended) == (1, [])
    folded = fold_flags(table, rows, np.array([11, 11]), np.array([False, True]), one, one,
                        np.zeros(2, np.int32), 1)
    assert (folded.opened, folded.ended_rows) == (1, [2])
    assert (folded.ended[0].start_ms, folded.ended[0].end_ms) == (10, 10)
    assert table.episode_start_ms.tolist() == [11, NO_EPISODE, NO_EPISODE]
