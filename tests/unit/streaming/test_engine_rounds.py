"""A batch with one hot stream: the engine prepares the batch's readings once and advances
the streams round by round, and its records are exactly those of scoring each reading in a
batch of its own, and of the plain round path (a step called once per round)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from detector.step import StreamingStep
from streaming.engine import Reading, ScoringEngine
from streaming.state_store import StateStore
from tests.unit.streaming.conftest import (
    CHANNELS,
    MODEL_VERSION,
    STEP_MS,
    T0_MS,
    episode_records,
    readings_of,
    rejected_positions,
    score_records,
)


class RoundByRound:
    """The real step without :meth:`~detector.step.StreamingStep.prepare`: the engine then
    calls it once per round with the round's raw readings, as it did before preparing."""

    def __init__(self, step: StreamingStep) -> None:
        self.step = step
        self.layout = step.layout

    def __call__(self, values, timestamps_ms, state):
        return self.step(values, timestamps_ms, state)


def make_engine(step) -> ScoringEngine:
    return ScoringEngine(step, StateStore(step.layout, initial_capacity=2), CHANNELS,
                         MODEL_VERSION, episode_gap=2, clock=lambda: 1000.0)


def hot_batch(recorded: np.ndarray) -> tuple[list[Reading], list[Reading]]:
    """A first batch of every stream's first readings, then a batch in which stream-0 has
    all of its others, among a few readings of other streams (one of them new), with a
    duplicate and an out-of-order reading of the hot stream and an already applied one."""
    values = recorded.copy()
    values[0, 30, 1] += 40 * values[:, :, 1].std()  # a spike, so the hot stream flags
    first = readings_of(values[:, :3])
    hot = readings_of(values[:1, 3:], ["stream-0"], first_offset=100, t0_ms=T0_MS + 3 * STEP_MS)
    others = [
        *readings_of(values[1:2, 3:6], ["stream-1"], first_offset=200,
                     t0_ms=T0_MS + 3 * STEP_MS),
        *readings_of(values[2:3, 3:4], ["stream-2"], first_offset=300,
                     t0_ms=T0_MS + 3 * STEP_MS),
        *readings_of(values[5:6, :2], ["fresh"], first_offset=400),
    ]
    rng = np.random.default_rng(3)
    # Interleaved at random; each stream's readings keep their order.
    slots = np.sort(rng.choice(len(hot) + len(others), size=len(others), replace=False))
    batch, hot_iter, other_iter = [], iter(hot), iter(others)
    for index in range(len(hot) + len(others)):
        batch.append(next(other_iter) if index in slots else next(hot_iter))
    batch.insert(10, dataclasses.replace(batch[9], offset=-1))  # a duplicate
    batch.insert(20, dataclasses.replace(hot[2], offset=-1))  # out of order for stream-0
    batch.insert(30, first[0])  # already applied
    return first, batch


@pytest.mark.parametrize("stepping", ["prepared", "round-by-round"])
def test_a_hot_stream_among_others_scores_as_one_reading_at_a_time(
        step: StreamingStep, recorded: np.ndarray, stepping: str) -> None:
    first, batch = hot_batch(recorded)
    single = make_engine(step)
    single.process(first)
    alone = [single.process([reading]) for reading in batch]

    engine = make_engine(step if stepping == "prepared" else RoundByRound(step))
    engine.process(first)
    result = engine.process(batch)

    assert result.step_calls == len(recorded[0]) - 3  # one round per hot reading
    assert result.flagged > 0 and result.episodes  # the spike made an episode
    assert score_records(result) == [record for r in alone for record in score_records(r)]
    assert episode_records(result) == [record for r in alone for record in episode_records(r)]
    assert rejected_positions(batch, result) == [
        index for index, r in enumerate(alone) if r.rejected]
    assert result.skipped == sum(r.skipped for r in alone) > 0
    states = {engine.store.stream_of(row): engine.store.encode_record(row)
              for row in engine.store.rows_in_use()}
    assert states == {single.store.stream_of(row): single.store.encode_record(row)
                      for row in single.store.rows_in_use()}
