"""The scorer on its own: synthetic readings and forecasts, no model weights.

:func:`detector.scorer.assess` reads the forecast the state holds and returns the scorer's
fields of the next record; here a test plays the forecaster's part (a forecast of 0 with a
scale of 1 for every channel), so the scorer's behaviour can be checked against known
distributions.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from detector.array_ops import NumpyOps
from detector.scorer import assess
from detector.scorer_config import ScorerConfig
from detector.state import StateLayout

CHANNELS = 3
LAYOUT = StateLayout(channels=CHANNELS, input_width=CHANNELS, memory_units=1)
SCORER = ScorerConfig(learning_period=100, history=1000, level_history=1000, refractory=50)


def score(readings: np.ndarray, hours: np.ndarray, scorer: ScorerConfig = SCORER):
    """Scores ``readings`` ``[streams, steps, F]`` (normalized units) reading by reading
    against a forecast of 0 with scale 1; returns flags, surprises, top channels and the
    record after each reading ``[streams, steps, S]``."""
    streams, steps, _ = readings.shape
    f = LAYOUT.fields
    scorer_fields = slice(f["score_average"].start, f["flagged_run"].stop)
    state = LAYOUT.initial(streams)
    flags, surprises, tops, records = [], [], [], []
    for t in range(steps):
        state[:, f["forecast_mean"]] = 0.0
        state[:, f["forecast_scale"]] = 1.0
        x = readings[:, t].astype(np.float32)
        _, _, surprise, flag, top, _, statistics = assess(
            NumpyOps, scorer, LAYOUT, x, x, hours[:, t], state)
        state = state.copy()
        state[:, scorer_fields] = np.concatenate(statistics, axis=-1)
        state[:, f["reading_t1"]] = x
        state[:, f["count"]] += 1.0
        flags.append(flag)
        surprises.append(surprise)
        tops.append(top)
        records.append(state)
    return np.stack(flags, 1), np.stack(surprises, 1), np.stack(tops, 1), np.stack(records, 1)


def test_gaussian_readings_are_flagged_about_as_often_as_the_threshold_says():
    rng = np.random.default_rng(0)
    readings = rng.normal(size=(20, 1500, CHANNELS))
    hours = np.tile((np.arange(1500) // 60) % 24, (20, 1))
    flags, surprises, _, _ = score(readings, hours)
    scored = flags[:, SCORER.learning_period + 1:]
    # At most the nominal 1 - threshold (the tests' Bonferroni corrections make it lower).
    assert scored.mean() <= 1.0 - SCORER.threshold
    assert np.isfinite(surprises).all() and surprises.min() >= 0.0


def test_a_residual_spike_is_flagged_on_its_channel_without_any_model():
    rng = np.random.default_rng(1)
    readings = rng.normal(size=(2, 400, CHANNELS))
    readings[0, 300, 2] += 12.0
    hours = np.tile((np.arange(400) // 60) % 24, (2, 1))
    flags, surprises, tops, _ = score(readings, hours)
    assert flags[0, 300] and tops[0, 300] == 2
    assert surprises[0, 300] > 5.0 and not flags[1, 300]


def test_a_slow_ramp_does_not_teach_the_calibration_that_it_is_normal():
    # One channel ramps by 4 deviations over 300 readings: the level and shift tests sit
    # above a surprise of 1 for most of the ramp. Learning each of those readings as a
    # normal excess lowered the tests' calibration while the ramp lasted (46 of 60 ramps
    # found); a cluster teaches its first readings and then its peak once it has ended
    # (52 found; 48 since the reading's tail is Bonferroni over three tests, not two, and 38
    # of 60 then without the declustering; 45 since the forecast test defers to the hourly
    # profile where it foresaw a reading, 39 then without the declustering).
    rng = np.random.default_rng(2)
    streams, steps, start, length = 60, 2400, 2000, 300
    readings = rng.normal(size=(streams, steps, CHANNELS))
    readings[:, start:start + length, 0] += 4.0 * np.arange(1, length + 1) / length
    hours = np.tile((np.arange(steps) // 60) % 24, (streams, 1))
    flags, _, _, _ = score(readings, hours)
    found = flags[:, start:start + length].any(axis=1).sum()
    assert found >= 42, f"{found} of {streams} ramps flagged"
    calm = flags[:, SCORER.learning_period + 1:start]
    assert calm.mean() <= 1.0 - SCORER.threshold


def test_a_lasting_mild_fault_stays_flagged_through_the_long_persistence_span():
    # Every channel's spread grows by 1.6 for 300 readings: each reading is only mildly
    # unusual, and an average over `average_span` readings shows it now and then; the
    # average over `long_average_span` readings holds it (measured: 27 % of the fault's
    # readings flagged, against 11 % with a long span as short as the short one).
    rng = np.random.default_rng(3)
    streams, steps, start, length = 40, 1600, 1000, 300
    readings = rng.normal(size=(streams, steps, CHANNELS))
    readings[:, start:start + length] *= 1.6
    hours = np.tile((np.arange(steps) // 60) % 24, (streams, 1))
    shares = {}
    for span in (SCORER.long_average_span, SCORER.average_span + 1):
        flags, _, _, _ = score(readings, hours, dataclasses.replace(
            SCORER, long_average_span=span))
        shares[span] = flags[:, start:start + length].mean()
        assert flags[:, SCORER.learning_period + 1:start].mean() <= 1.0 - SCORER.threshold
    assert shares[SCORER.long_average_span] > 2.0 * shares[SCORER.average_span + 1], shares


def test_correlated_normal_surprises_do_not_raise_false_alarms():
    # A stream whose readings wander slowly (AR(1), lag-one correlation 0.95) has runs of
    # surprises that an average of independent ones would call a fault; the spread of
    # the short average, learned per stream, widens both persistence tests (without it:
    # 6.8 % of these readings flagged).
    rng = np.random.default_rng(3)
    streams, steps = 40, 1600
    noise = rng.normal(size=(streams, steps, CHANNELS))
    readings = np.zeros_like(noise)
    for t in range(1, steps):
        readings[:, t] = 0.95 * readings[:, t - 1] + np.sqrt(1 - 0.95 ** 2) * noise[:, t]
    hours = np.tile((np.arange(steps) // 60) % 24, (streams, 1))
    flags, _, _, records = score(readings, hours)
    assert flags[:, SCORER.learning_period + 1:].mean() <= 1.0 - SCORER.threshold
    # The learned spread is above what independent readings give.
    weight = SCORER.average_weight
    spread = records[:, -1, LAYOUT.fields["evidence_spread"]][:, 0]
    assert np.median(spread) > weight / (2.0 - weight)


def test_a_long_span_no_longer_than_the_short_one_is_refused():
    with pytest.raises(ValueError, match=r"`long_average_span` must be greater than "
                                         r"`average_span` \(10\), received: 10"):
        ScorerConfig(average_span=10, long_average_span=10)


def test_a_spike_is_flagged_by_its_jump_where_its_hour_spreads_wide_and_its_way_back_is_not():
    """Channel 0 swings slowly (an amplitude of 6 noise deviations, a period of 3,000
    readings), which its hourly profile does not model: a day later the same hour sits
    about 10 deviations lower. Its level and hourly deviations wander with the swing
    (spreads of about 3.7 and 3.2, calibrated as heavy-tailed), so without the jump a
    spike of 10 scored a surprise of 2.6, unflagged. The spike's change from the reading
    before stands out against the channel's usual reading-to-reading change (about 1.4
    deviations): the variability test's jump flags it, on channel 0. Its way back is as
    large a change, towards the hour's mean: a recovery, not flagged."""
    rng = np.random.default_rng(5)
    steps = 2100
    t = np.arange(steps)
    hours = np.tile((t // 60) % 24, (2, 1))  # a "day" of 1,440 readings
    readings = rng.normal(size=(2, steps, CHANNELS))
    readings[:, :, 0] += 6 * np.sin(2 * np.pi * t / 3000)
    spike = 1440 + 8 * 60 + 30  # the swing is at -4.8 here, at +5.3 a day earlier
    readings[0, spike, 0] -= 10.0  # away from the hour's mean
    flags, _, tops, _ = score(readings, hours)
    assert flags[0, spike] and tops[0, spike] == 0
    assert not flags[0, spike + 1:spike + 5].any()
    assert flags[1, SCORER.learning_period + 1:].mean() < 0.01
    assert not flags[0, SCORER.learning_period + 1:spike].any()


@pytest.mark.parametrize(("visits", "hour_mean", "previous", "expected"), [
    # The reading jumped from 0 to its hour's mean: the model's miss of 4 is no evidence.
    (3.0, 4.0, 0.0, 0.0),
    # The hour's mean is 1 away, nearer than the previous reading: the nearer counts.
    (3.0, 3.0, 0.0, 1.0),
    # The hour's mean is farther than the previous reading: the forecast counts.
    (3.0, -2.0, 0.0, 4.0),
    # The reading stays where the previous one was, half a unit from its hour's mean: the
    # profile foresaw no change, the forecast counts.
    (3.0, 4.5, 4.0, 4.0),
    # One reading at this hour is no profile yet: the forecast counts.
    (1.0, 4.0, 0.0, 4.0),
])
def test_the_forecast_test_defers_to_the_hourly_profile_where_it_foresaw_the_reading(
        visits, hour_mean, previous, expected):
    """Channel 1 reads 4 where the model forecast 0 (scale 1, the stream's own scale ratio
    1); the other channels read their forecast, their hour's mean and their previous
    reading exactly. Where the hour's mean (of two readings or more) is nearer the reading
    than the previous reading was, the channel counts its distance to the nearer of the
    forecast and that mean, else to the forecast: a daily turn the model missed but the
    hourly profile expected is not the forecast test's evidence. The raw score is the RMS
    over the channels."""
    f = LAYOUT.fields
    hour = 7
    state = LAYOUT.initial(1)
    state[0, f["count"]] = 1000.0
    state[0, f["forecast_scale"]] = 1.0
    state[0, f["scale_ratio"]] = 1.0
    state[0, f["level_var"]] = 1.0
    state[0, f["season_var"]] = 1.0
    state[0, f["reading_t1"].start + 1] = previous
    block = np.zeros((24, CHANNELS), dtype=np.float32)
    block[hour, 1] = hour_mean
    state[0, f["season_mean"]] = block.reshape(-1)
    state[0, f["season_visits"].start + hour] = visits
    x = np.array([[0.0, 4.0, 0.0]], dtype=np.float32)
    raw_score = assess(NumpyOps, SCORER, LAYOUT, x, x, np.array([hour]), state)[0]
    assert raw_score[0] == pytest.approx(expected / np.sqrt(CHANNELS), rel=1e-6)


def test_a_drift_is_flagged_where_the_other_channels_foresee_the_swing_it_hides_in():
    # Three channels share a swing (amplitude 5, a 500-reading period the hourly profile
    # cannot model) over unit noise; channel 0 of stream 0 drifts 10 away over 100
    # readings. Against its own deviations (a spread of about 3.7) the drift hides in the
    # swing; given the other two channels' deviations, which foresee the swing, it does
    # not. Where the other channels are independent noise, nothing foresees the swing and
    # the same channel-0 readings are not flagged. (Judged against each channel's own
    # deviations, as before layout v9, no stream here is flagged.)
    rng = np.random.default_rng(3)
    steps = 1600
    t = np.arange(steps)
    swing = 5.0 * np.sin(2 * np.pi * t / 500 + 1.0)
    correlated = swing[None, :, None] + rng.normal(size=(2, steps, CHANNELS))
    independent = correlated.copy()
    independent[:, :, 1:] = rng.normal(size=(2, steps, CHANNELS - 1))
    drift = np.clip((t - 1200) / 100, 0.0, 1.0) * 10.0
    correlated[0, :, 0] += drift
    independent[0, :, 0] += drift
    hours = np.tile(t % 24, (2, 1))
    flags, _, tops, _ = score(correlated, hours)
    drifting = slice(1200, 1450)
    assert flags[0, drifting].any()
    assert np.all(tops[0, drifting][flags[0, drifting]] == 0)
    assert not flags[1, SCORER.learning_period + 1:].any()
    assert not flags[0, SCORER.learning_period + 1:1200].any()
    independent_flags, _, _, _ = score(independent, hours)
    assert not independent_flags[:, SCORER.learning_period + 1:].any()
