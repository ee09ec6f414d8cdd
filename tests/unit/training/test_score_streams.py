"""Scoring recorded streams for evaluation gives, bit for bit, what the streaming step gives
reading by reading, however the time steps are prepared in chunks."""

from __future__ import annotations

import numpy as np
import pytest

from detector.model import step_params
from detector.scorer_config import ScorerConfig
from detector.step import StreamingStep
from tests.unit.detector.conftest import make_model, make_recording, scaler_for
from training import evaluation

FIELDS = ("score", "likelihood", "surprise", "flag", "top_channel", "onset")


@pytest.mark.parametrize("prepared_readings", [65_536, 12, 1])
def test_streams_of_any_length_score_as_the_step_does_reading_by_reading(
        monkeypatch: pytest.MonkeyPatch, prepared_readings: int) -> None:
    _, model = make_model(time_features=True)
    recording = make_recording(streams=5, steps=60)
    # A short learning period and a spike, so flags and onsets are part of what must match.
    recording.values[0, 45, 1] += 40.0
    step = StreamingStep(step_params(model), scaler_for(recording),
                         ScorerConfig(learning_period=5, history=12, threshold=0.9,
                                      average_span=4))
    lengths = (60, 23, 1, 0, 47)
    streams = {f"s{i}": (recording.timestamps_ms[i, :n], recording.values[i, :n])
               for i, n in enumerate(lengths)}
    monkeypatch.setattr(evaluation, "PREPARED_READINGS", prepared_readings)
    scored = evaluation.score_streams(step, streams)
    flagged = 0
    for key, (timestamps, values) in streams.items():
        state = step.layout.initial(1)
        expected = {name: [] for name in FIELDS}
        for t in range(len(timestamps)):
            result, state = step(values[t:t + 1], timestamps[t:t + 1], state)
            for name in FIELDS:
                expected[name].append(getattr(result, name)[0])
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(scored[key], name),
                                          np.array(expected[name], dtype=getattr(
                                              scored[key], name).dtype), err_msg=f"{key} {name}")
        flagged += int(np.sum(expected["flag"]))
    assert flagged > 0
