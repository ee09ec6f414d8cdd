"""A batch prepared at once and advanced round by round (:meth:`StreamingStep.prepare`,
:meth:`StreamingStep.advance_prepared`) gives the row step's results, bit for bit."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from detector.step import StepResult, StreamingStep
from tests.unit.detector.conftest import Recording


def row_step_history(step: StreamingStep, recording: Recording):
    """Per stream: the results of every reading and the records before each, one reading per
    call."""
    streams, steps, _ = recording.values.shape
    results, records = [], []
    for s in range(streams):
        state = step.layout.initial(1)
        results.append([])
        records.append([])
        for t in range(steps):
            records[s].append(state)
            result, state = step(recording.values[s, t][None],
                                 recording.timestamps_ms[s, t][None], state)
            results[s].append(result)
        records[s].append(state)
    return results, records


@pytest.mark.parametrize("chunk", [2048, 2])
def test_prepared_rounds_equal_the_row_step(step, recording, monkeypatch, chunk):
    """Streams start new, after one reading, after two and mid-way (the record's previous
    readings and their clock feed the first readings of the batch); one stream is hot."""
    monkeypatch.setattr(step, "chunk", chunk)
    results, records = row_step_history(step, recording)
    streams, steps, _ = recording.values.shape
    starts = [0, 1, 2, 9, 5][:streams]
    stops = [steps, 2, 6, 10, 5][:streams]  # the last stream has no reading in the batch
    # Arrival order: interleaved at random, each stream's readings in time order.
    owners = np.concatenate([np.full(stop - start, s) for s, (start, stop)
                             in enumerate(zip(starts, stops, strict=True))])
    owners = np.random.default_rng(1).permutation(owners)
    times, previous, rank, last = [], [], [], {}
    for j, s in enumerate(owners.tolist()):
        times.append(starts[s] + sum(1 for o in owners[:j] if o == s))
        previous.append(last.get(s, -1))
        rank.append(sum(1 for o in owners[:j] if o == s))
        last[s] = j
    times = np.array(times)
    prepared = step.prepare(recording.values[owners, times],
                            recording.timestamps_ms[owners, times],
                            np.concatenate([records[s][starts[s]] for s in range(streams)]),
                            owners, np.array(previous))
    # Each round's rows must be a run: the prepared rows, sorted by round (prepare has
    # already joined each reading with its previous ones, so rows may move).
    order = np.argsort(rank, kind="stable")
    prepared = dataclasses.replace(prepared, **{
        field.name: getattr(prepared, field.name)[order]
        for field in dataclasses.fields(prepared) if getattr(prepared, field.name) is not None})
    state = {s: records[s][starts[s]] for s in range(streams)}
    bounds = np.searchsorted(np.asarray(rank)[order], np.arange(max(rank) + 2))
    for start, stop in itertools.pairwise(bounds.tolist()):
        members = order[start:stop]
        round_streams = owners[members]
        result, new = step.advance_prepared(
            prepared, slice(start, stop), np.concatenate([state[s] for s in round_streams]))
        for i, (s, t) in enumerate(zip(round_streams, times[members], strict=True)):
            expected = results[s][t]
            for field in dataclasses.fields(StepResult):
                np.testing.assert_array_equal(getattr(result, field.name)[i],
                                              getattr(expected, field.name)[0])
            np.testing.assert_array_equal(new[i], records[s][t + 1][0])
            state[s] = new[i:i + 1]
    for s in range(streams):
        np.testing.assert_array_equal(state[s][0], records[s][stops[s]][0])


def test_rows_must_be_a_run_of_the_states(step, recording):
    state = step.layout.initial(2)
    prepared = step.prepare(recording.values[:2, 0], recording.timestamps_ms[:2, 0], state,
                            np.array([0, 1]), np.array([-1, -1]))
    with pytest.raises(ValueError, match="rows"):
        step.advance_prepared(prepared, slice(0, 1), state)
    with pytest.raises(ValueError, match="previous"):
        step.prepare(recording.values[:2, 0], recording.timestamps_ms[:2, 0], state,
                     np.array([0, 1]), np.array([-1]))
