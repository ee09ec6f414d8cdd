"""What the scorer's tests catch end to end through the step: lost variance (a stuck
sensor), a burst of variance, and no surprise where the day or the week wraps."""

from __future__ import annotations

import numpy as np
import pytest

from detector.features import MS_PER_DAY, clock_features
from detector.model import step_params
from detector.scorer_config import ScorerConfig
from detector.step import StreamingStep
from tests.unit.detector.conftest import make_model

SCORER = ScorerConfig(learning_period=60, history=300, level_history=300, refractory=50)
START_MS = 1_700_000_000_000


def noisy_streams(streams: int, steps: int, seed: int) -> np.ndarray:
    """Stationary readings: a level per channel plus white noise."""
    rng = np.random.default_rng(seed)
    return (rng.normal(10, 2, size=(streams, 1, 3))
            + rng.normal(0, 1, size=(streams, steps, 3))).astype(np.float32)


@pytest.fixture(scope="module")
def step() -> StreamingStep:
    from detector.features import ChannelScaler

    _, model = make_model(time_features=False)
    return StreamingStep(step_params(model), ChannelScaler((10.0,) * 3, (1.0,) * 3), SCORER)


def run(step: StreamingStep, values: np.ndarray):
    state = step.layout.initial(values.shape[0])
    flags, tops = [], []
    for t in range(values.shape[1]):
        result, state = step(values[:, t], START_MS + 60_000 * t + np.zeros(len(values), int),
                             state)
        flags.append(result.flag)
        tops.append(result.top_channel)
    return np.stack(flags, axis=1), np.stack(tops, axis=1)


def test_a_stuck_channel_is_flagged_on_that_channel(step):
    values = noisy_streams(4, 400, seed=3)
    values[1, 300:, 2] = values[1, 299, 2]  # stream 1's channel 2 freezes
    flags, tops = run(step, values)
    stuck = np.flatnonzero(flags[1, 300:] & (tops[1, 300:] == 2))
    assert stuck.size and stuck[0] < 20, "lost variance is found within a few readings"
    # It stays flagged for a learning period, after which a lasting change is the new
    # normal (the statistics learn again).
    first = 300 + stuck[0]
    assert flags[1, first:first + SCORER.learning_period].all()
    # Stationary readings, stuck nowhere: the variability test raises nothing.
    quiet = flags[[0, 2, 3], SCORER.learning_period + 1:]
    assert quiet.mean() < 0.01


def test_a_burst_of_variance_is_flagged_on_that_channel(step):
    values = noisy_streams(2, 400, seed=4)
    rng = np.random.default_rng(0)
    values[0, 300:330, 0] += rng.normal(0, 6, size=30).astype(np.float32)  # as synth's
    flags, tops = run(step, values)
    burst = np.flatnonzero(flags[0, 300:330] & (tops[0, 300:330] == 0))
    # Found early; not along its whole length, as the calibration learns from the burst too.
    assert burst.size >= 5 and burst[0] < 10, burst


@pytest.mark.parametrize("absurd", [1e30, 3e38, -1e30])
def test_one_absurd_value_does_not_blind_a_stream(step, absurd):
    """A single finite but absurd reading (the parser accepts any finite float) leaves the
    stream's state finite and its scores finite, and a later shift is flagged as on a stream
    that never saw it."""
    values = noisy_streams(2, 400, seed=5)
    values[0, 200, 1] = absurd
    values[:, 300:320, 0] += 40.0  # 40 noise deviations, on both streams
    state = step.layout.initial(2)
    flags, scores = [], []
    for t in range(values.shape[1]):
        result, state = step(values[:, t], START_MS + 60_000 * t + np.zeros(2, int), state)
        flags.append(result.flag)
        scores.append(result.score)
        assert np.isfinite(state).all(), f"reading {t}: the state holds inf or NaN"
    flags = np.stack(flags, axis=1)
    assert np.isfinite(np.stack(scores)).all()
    assert flags[0, 200] and flags[0, 300:320].all() and flags[1, 300:320].all()


def test_the_clock_is_continuous_where_the_day_and_the_week_wrap():
    sunday_night = START_MS - START_MS % (7 * MS_PER_DAY) + 4 * MS_PER_DAY - 1  # Sun 23:59:59.999
    features = clock_features(np.array([sunday_night, sunday_night + 1, sunday_night + 60_000]))
    assert features.shape == (3, 6)
    assert np.abs(features[1] - features[0]).max() < 1e-6
    step_per_minute = np.abs(features[2] - features[1]).max()
    assert 1e-3 < step_per_minute < 1e-2  # a minute moves the day's harmonics a little
    # Monday 00:00 is phase 0 of the day and of the week: sines 0, cosines 1.
    np.testing.assert_allclose(features[1], [0, 1, 0, 1, 0, 1], atol=1e-6)
    six_am = clock_features(np.array([sunday_night + 1 + MS_PER_DAY // 4]))[0]
    np.testing.assert_allclose(six_am[:4], [1, 0, 0, -1], atol=1e-6)


def test_a_small_held_shift_is_flagged_by_the_shift_test_beside_a_wandering_channel(step):
    """Channel 1 moves by 2.5 noise deviations and stays there: no single reading stands out,
    their average does. Channel 0 wanders slowly (an AR(1) with correlation 0.95), so its
    own average strays far more than independent readings' would: judged by the average's
    own spread, it neither raises flags nor hides channel 1's shift."""
    values = noisy_streams(2, 500, seed=6)
    rng = np.random.default_rng(1)
    wander = np.zeros(500)
    for t in range(1, 500):
        wander[t] = 0.95 * wander[t - 1] + rng.normal(0, 1)
    values[:, :, 0] += wander.astype(np.float32)
    values[0, 400:, 1] += 2.5
    flags, tops = run(step, values)
    held = flags[0, 410:460]
    assert held.mean() > 0.8 and np.all(tops[0, 410:460][held] == 1)
    assert flags[:, SCORER.learning_period + 1:400].mean() < 0.01
    assert flags[1, 400:].mean() < 0.01


def test_a_spike_that_recurs_stops_being_flagged_and_a_larger_one_is_not(step):
    """A spike of 8 deviations every 100 readings is news the first times and then the
    stream's normal: the far tail's calibration learns the rate and size of its own
    reported surprises. A spike twice as large is still flagged; a stream that never
    spiked flags the first one."""
    values = noisy_streams(2, 2600, seed=7)
    spikes = np.arange(200, 2500, 100)
    values[0, spikes, 2] += 8.0
    values[0, 2550, 2] += 16.0
    values[1, 2550, 2] += 8.0
    flags, _ = run(step, values)
    assert flags[0, spikes[:3]].all()
    assert not flags[0, spikes[-5:]].any()
    assert flags[0, 2550] and flags[1, 2550]


def test_a_stream_that_stays_flagged_is_reported_once(step):
    """A held shift keeps the stream flagged for longer than the refractory time while its
    surprise wavers with the noise: the refractory time counts calm readings only, so the
    shift is reported at its start (and again only if its surprise doubles, as the shift
    test's average builds up), not once more each time the peak would have halved."""
    values = noisy_streams(2, 420, seed=8)
    values[0, 300:, 1] += 6.0
    state = step.layout.initial(2)
    flags, onsets = [], []
    for t in range(values.shape[1]):
        result, state = step(values[:, t], START_MS + 60_000 * t + np.zeros(2, int), state)
        flags.append(result.flag[0])
        onsets.append(result.onset[0])
    flags, onsets = np.array(flags), np.array(onsets)
    held = np.flatnonzero(~flags[300:])[0]  # flagged for this many readings from 300
    assert held > SCORER.refractory and onsets[300] > 0
    reports = onsets[300:300 + held][onsets[300:300 + held] > 0]
    # While flagged, each report doubles the one before it; none merely outlasted a peak.
    assert np.all(reports[1:] >= 2.0 * reports[:-1]), reports
