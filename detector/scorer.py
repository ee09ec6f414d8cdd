"""From readings and forecasts to anomaly scores, likelihoods and flags, online and per stream.

Score direction: high means anomalous, for the raw score, the likelihood and the surprise.

Six tests judge each reading against the stream's own history, each giving a tail
probability (how often normal behaviour would look at least this unusual):

* **forecast**: Numenta's anomaly likelihood (Ahmad, Lavin, Purdy, Agha, "Unsupervised
  real-time anomaly detection for streaming data", Neurocomputing 262, 2017). The raw score
  of a reading is the root mean square of its standardized residuals against the model's
  forecast, ``sqrt(mean_f(((x_f - forecast_f) / (forecast_scale_f * sqrt(c_f))) ** 2))``,
  where ``c_f`` is the stream's own long-run mean square of the model's standardized
  residuals (the model's scale recalibrated per stream, starting from the model's own view
  and learned after deployment: one normalization serves streams of very different units,
  so the model's scale is too wide for some streams and too narrow for others); a short
  moving average of raw scores is compared with the stream's long-run distribution of that
  average, as the Gaussian probability of a value at least that high.
* **level**: a windowed Gaussian on the readings themselves (NAB's "windowedGaussian"
  baseline, with an exponential window of about ``level_history`` readings): each
  channel's normalized reading against its long-run mean and deviation, two-sided. It
  catches what a persistence-based forecaster forgives: a level far outside the stream's
  usual range that is reached gradually, or held.
* **shift**: an EWMA control chart (Roberts, "Control chart tests based on geometric moving
  averages", Technometrics 1, 1959) per channel: the exponential average, over about
  ``average_span`` readings, of each reading's deviation from the long-run mean, two-sided,
  in units of that average's own long-run spread (at least what independent readings would
  give). A held shift too small to stand out in any one reading stands out in the average
  of many (a valve closed part of the way, a sensor's offset). Judging the average by its
  own spread keeps a slowly wandering channel (temperatures, loads) from raising flags, and
  from teaching the calibration that the test is noisy, which would hide a shift on a
  steady channel. Each deviation counts up to what would flag it on its own, so one spike
  does not hold the average up.
* **season**: each channel against its mean at this hour of the (UTC) day, two-sided, in
  units of the deviations from the hourly means (an hourly profile, the seasonal part of
  Holt-Winters without its trend). A shift or a drift that stays inside the day's range is
  outside the hour's.
* **variability**: each channel's short-run mean square of reading-to-reading changes
  (an exponential window of ``variability_span`` readings, ``k`` degrees of freedom)
  against its long-run mean, upper tail: for a stationary stream the ratio of the two
  variance estimates is F-distributed, and Paulson's form of the Wilson-Hilferty
  cube-root transform turns its tail into a standard normal's (Wilson and Hilferty, PNAS
  17, 1931; Paulson, Ann. Math. Statist. 13, 1942). It catches a burst of variance. A
  change counts up to what would flag it on its own, so a single spike does not hold the
  window up. Only the upper tail: a smooth cycle's changes are small at its peaks and
  troughs, so a variance that merely dips is no evidence of a fault.
* **repeats**: lost variance (a stuck sensor, a flat line, a dropout to a constant) shows
  as readings that repeat the previous one exactly, a thing a continuous sensor almost
  never does. Each channel's current run of ``r`` exact repeats is compared with how that
  channel repeats itself, as a two-state Markov chain: with ``p`` its long-run rate of
  repeating and ``q`` its rate of repeating right after a repeat, learned from completed
  runs so that a run is not judged by itself (Laplace's rule of succession for both, so a
  stream that never repeated has ``p`` near ``1 / n`` and ``q`` of 1/2 rather than 0),
  ``r`` repeats in a row have probability ``p * q ** (r - 1)``. The forecast and level
  tests score such readings as calm (a reading that is *too* predictable is never
  surprising to a one-sided residual test), which is why this test exists.

The per-channel tests take their most extreme channel and multiply its tail by the number
of channels (Bonferroni). Every test is then **calibrated** per stream
(:func:`~detector.tail_probabilities.calibrate`: peaks over threshold, Pickands 1975 and
Siffer et al., KDD 2017): a stream whose test
surprises itself more often, or more strongly, than the test's model says (a Gaussian tail;
geometric runs of repeats), as heavy tails, a noise-free cycle or a quantized or idle
sensor do, has that test's surprise lowered to match; the correction never raises one. The
four Gaussian tests' calibrations learn reading by reading, the repeats test's from the
surprise each completed run of repeats had reached. The reading's single surprise is the largest of
the six, less ``log10(6)`` (Bonferroni over the tests), **calibrated in its far tail**
(:func:`~detector.tail_probabilities.calibrate_tail`): a second peaks-over-threshold fit,
of the surprises above 3 that the stream reported as onsets (one per burst: declustered),
with a prior of one in a thousand readings for their rate and of ten Gaussian excesses for
their size. A spike or a burst that recurs every day is news the first times and then a
one-in-a-few-hundred event, no longer flagged; a new, larger one keeps most of its size.
(On NAB's 35 files the shift test and this calibration together took the standard score
from 52.1 to 56.6, SKAB's F1 from 0.581 to 0.695.) A **persistence** test adds what
single readings cannot show: the recent average of the single surprises (each counted up
to the flag threshold), as Fisher's combination of p-values over an exponential window of
``average_span`` readings, its degrees of freedom reduced for the stream's own lag-one
correlation of surprises. The reading's tail is the smaller of the two, times 2.

The likelihood is ``1 - tail``; the surprise, ``-log10(tail)``, carries the same
information with resolution where float32 likelihoods round to 1 (3 is a likelihood of
0.999); it is capped at 30. A reading is flagged when its likelihood reaches
``threshold``. The statistics of normal behaviour (every test's long-run estimates, the
hourly profile, the repeat counts, the forecast scale's recalibration) learn only from
readings that are not flagged, so a fault stays flagged while it lasts; one that lasts
longer than the learning period is taken as the new normal and learned from then on. The
Gaussian tests' calibrations and the persistence test's correlation describe how often,
and how strongly, the tests fire on this stream: they learn from every reading that is not
flagged and from the first reading of each run of flagged ones, so a stream whose normal
spikes are flagged still learns that they are normal, while a lasting fault does not teach
them that its surprises are (measured before the forecast scale's recalibration: learning
from every flagged reading instead gave SKAB's F1 0.35 rather than 0.57, NAB's standard
score 53.7 rather than 52.9). (The repeats test's calibration learns from the runs the
repeat counts learn from.)

The onset is the surprise of a reading that tops the stream's recent peak surprise, and 0 for
every other reading and during the learning period; the peak follows the surprise up,
jumps to twice the surprise of a reading it reports (the square of its tail), and otherwise
halves every ``refractory`` readings that are not flagged. A burst of surprise therefore
reports its first reading once instead of along its whole length; a surprise that climbs
reading by reading (a run of repeats growing longer, a drift moving away) reports again
only each time it has doubled, a few times rather than at every reading; a plateau or a
slow decline of the surprise reports nothing, as alarms should: NAB charges every flagged
reading outside a window and rewards only the earliest inside one. The refractory time
counts calm readings only, so a stream that stays flagged (a lasting fault, a flat line)
is reported once, not again each time the peak would have halved while its surprise
wavered. (On NAB's 35 labeled files the doubling took the standard score from 35.4 to
53.7, before the two later changes above; counting calm readings only, from 56.6 to 60.5.)

When it works: the behaviour of normal readings (forecast errors, levels, hourly levels,
changes, repeats) is roughly stationary per stream, so a departure in any of them stands
out against the stream's own history, whatever the stream's units. When it fails: during
a stream's first ``learning_period`` readings nothing is flagged, and its hourly profile
needs a few days; a slow drift that the long-run statistics absorb faster than it grows is
never flagged (measured: 2 of 7 synthetic drifts found); a fault whose readings are each
only mildly unusual is found only if it lasts (the persistence test, or the shift test
for a held offset), and not at all in a stream whose normal surprises are strongly
correlated; a fault that recurs (the same spike every day) is flagged the first few times
only, as the far tail's calibration learns it; an idle signal whose runs of
repeats are far longer than its history suggests raises false alarms (NAB's
``rogue_agent_key_hold``); a fault that lasts longer than the learning period stops being
flagged then; a fault that changes how channels move together but leaves each channel
within its own usual range is not seen, since every test is per channel (4 of SKAB's 16
valve faults here); an anomaly within ``refractory`` readings after a larger one has no
onset (its surprise and flag still show).
Cost: O(channels) per reading, about 40 element-wise operations on the batch;
``36 * channels + 52`` floats of state (the hourly profile is ``25 * channels + 24``).
"""

from __future__ import annotations

import math

from detector.scorer_config import ScorerConfig
from detector.tail_probabilities import (
    CALIBRATION_CENSOR,
    CALIBRATION_EXCESS,
    CALIBRATION_PRIOR_READINGS,
    CALIBRATION_PRIOR_RUNS,
    CALIBRATION_RATE,
    MIN_TAIL,
    TAIL_LEVEL,
    TAIL_PRIOR_READINGS,
    TAIL_RATE,
    UNCENSORED_SHARE,
    calibrate,
    calibrate_tail,
    chi2_mean_z,
    upper_tail,
    variance_ratio_z,
)

# Lag-one correlations of the evidence above this count as this (k readings stay worth
# at least k / 39 independent ones).
MAX_LAG_CORRELATION = 0.95
# The surprise's cap, -log10 of MIN_TAIL.
MAX_SURPRISE = 30.0
# Relative resolution of float32, the floor of every level and change variance.
RESOLUTION = 1e-6
# Normalized readings beyond this many normalization scales count as this many: every test
# already reads such a reading as certain, and the bound keeps every square in the
# statistics finite in float32 (a deviation of 2e6 over the smallest variance floor,
# 1e-24, squares to 4e36 < 3.4e38), so one absurd value cannot turn a stream's state
# into infinities and NaN.
NORMALIZED_LIMIT = 1.0 / RESOLUTION
# The tests whose smallest tail is the reading's (the Bonferroni factor).
TESTS = ("forecast", "level", "shift", "season", "variability", "repeats")
# The season test's bins: the hours of the (UTC) day.
SEASON_BINS = 24


def _running_weight(ops, seen, history: int):
    """A running mean's weight until ``history`` values were seen, then exponential."""
    return ops.maximum(1.0 / ops.maximum(seen, 1.0), 1.0 / history)


def _learns(ops, flagged_run, learning_period: int):
    """1.0 where a reading with this run of flagged readings (0: not flagged) is learned
    from: unflagged, or flagged for longer than the learning period (the new normal)."""
    return ops.indicator(ops.logical_or(flagged_run == 0.0,
                                        flagged_run > float(learning_period)))


def assess(ops, scorer: ScorerConfig, layout, normalized, clipped, hours, state):
    """Scores one reading per stream against its stream's statistics, and updates them.

    Args:
        ops: array functions (:class:`detector.array_ops.NumpyOps` or TensorFlow's).
        scorer: the settings.
        layout: the :class:`~detector.state.StateLayout` of ``state``.
        normalized: ``[B, F]`` the readings, normalized (unclipped).
        clipped: ``[B, F]`` the same, clipped as the model sees them.
        hours: ``[B]`` int32 hour of the day (UTC) of each reading, 0 to 23.
        state: ``[B, S]`` the streams' records before this reading.

    Returns:
        ``(score, likelihood, surprise, flag, top_channel, onset, statistics)``, the last
        being the scorer's fields of the next records (``score_average`` through
        ``flagged_run``), a list of ``[B, width]`` arrays in layout order.
    """
    f = layout.fields
    channels = layout.channels
    count = state[:, f["count"]][:, 0]  # readings seen before this one
    first = count == 0.0
    has_forecast = count >= 1.0
    learning = count <= float(scorer.learning_period)
    # Variances below what float32 resolves around the stream's level count as that: the
    # floor guards against dividing by zero, not against a stream whose units are small
    # (one model's normalization serves streams of very different units).
    resolution = RESOLUTION * (ops.abs(state[:, f["level_mean"]]) + RESOLUTION)
    variance_floor = resolution * resolution

    # Forecast: this reading against the forecast the previous reading left in the state.
    model_residual = (normalized - state[:, f["forecast_mean"]]) / ops.where(
        has_forecast[:, None], state[:, f["forecast_scale"]], 1.0)
    model_residual = ops.where(has_forecast[:, None], model_residual, 0.0)
    # The model's forecast scale, recalibrated per stream: by the stream's own long-run mean
    # square of the model's standardized residuals (1, the model's own scale, until it has
    # seen a forecast), so a stream the model forecasts more or less tightly than the
    # streams it was trained on (one normalization serves streams of very different units)
    # is judged by its own residuals; floored at float32's resolution around its level.
    scale_ratio = ops.where((count >= 2.0)[:, None], state[:, f["scale_ratio"]], 1.0)
    model_scale = state[:, f["forecast_scale"]]
    residual = model_residual / ops.sqrt(ops.maximum(
        scale_ratio, variance_floor / ops.maximum(model_scale * model_scale, MIN_TAIL)))
    score = ops.sqrt(ops.mean_of_rows(residual * residual))
    average = state[:, f["score_average"]][:, 0]
    mean = state[:, f["score_mean"]][:, 0]
    var = state[:, f["score_var"]][:, 0]
    capped = ops.minimum(score, scorer.score_cap)
    new_average = ops.where(count == 1.0, capped,
                            average + scorer.average_weight * (capped - average))
    sigma = ops.maximum(ops.sqrt(var), scorer.min_sigma)
    forecast_tail = upper_tail(ops, (new_average - mean) / sigma)

    # Level: each channel against its own long-run mean and spread, two-sided.
    level_mean = state[:, f["level_mean"]]
    level_var = state[:, f["level_var"]]
    level_z = ops.abs(normalized - level_mean) / ops.sqrt(ops.maximum(level_var, variance_floor))
    level_tail = (2.0 * channels) * upper_tail(ops, ops.max_of_rows(level_z))

    # Shift: an EWMA control chart (Roberts 1959) of each channel's deviations from its
    # long-run mean, two-sided: a shift too small to stand out in one reading stands out
    # in the average of many. A deviation counts up to what would flag it on its own, so one
    # spike does not hold the average up after it.
    level_sd = ops.sqrt(ops.maximum(level_var, variance_floor))
    bound = math.sqrt(scorer.flag_chi2) * level_sd
    deviation = ops.minimum(ops.maximum(normalized - level_mean, -bound), bound)
    shift_mean = state[:, f["shift_mean"]]
    new_shift_mean = ops.where(first[:, None], 0.0,
                               shift_mean + scorer.average_weight * (deviation - shift_mean))
    # The average's spread: its own long-run mean square, as a drifting channel's average
    # wanders far more than independent readings' would; at least theirs.
    shift_var = state[:, f["shift_var"]]
    iid_share = scorer.average_weight / (2.0 - scorer.average_weight)
    shift_z = ops.abs(new_shift_mean) / ops.sqrt(ops.maximum(
        shift_var, iid_share * ops.maximum(level_var, variance_floor)))
    shift_tail = ops.where(count >= 2.0, (2.0 * channels) * upper_tail(
        ops, ops.max_of_rows(shift_z)), 1.0)

    # Season: each channel against its mean at this hour of the day, two-sided, in units of
    # the deviations from the hourly means; a mean of n readings is itself uncertain by
    # 1/n of that variance.
    season_block = ops.reshape(state[:, f["season_mean"]], (-1, SEASON_BINS, channels))
    visits = ops.take_rows(state[:, f["season_visits"]], hours)
    season_mean = ops.take_rows(season_block, hours)
    season_var = state[:, f["season_var"]]
    season_deviation = normalized - season_mean
    season_spread = ops.maximum(season_var, variance_floor) * (
        1.0 + 1.0 / ops.maximum(visits, 1.0))[:, None]
    season_z = ops.where((visits >= 2.0)[:, None],
                         ops.abs(season_deviation) / ops.sqrt(season_spread), 0.0)
    season_tail = (2.0 * channels) * upper_tail(ops, ops.max_of_rows(season_z))

    # Variability: the recent mean square of changes against its long-run mean, upper tail.
    # Changes are of the clipped values, which the previous record holds as its input.
    change = clipped - state[:, f["reading_t1"]]
    change_sq = change * change
    short = state[:, f["change_short"]]
    long = state[:, f["change_long"]]
    # A change counts up to what would be a flag on its own (a chi2(1) value at the
    # threshold, times the long-run mean square), so one spike does not keep the recent
    # variance up for the window's length after it: the test is for bursts.
    bounded_sq = ops.where((count >= 2.0)[:, None], ops.minimum(
        change_sq, scorer.flag_chi2 * ops.maximum(long, variance_floor)), change_sq)
    new_short = ops.where((count == 1.0)[:, None], change_sq,
                          short + scorer.variability_weight * (bounded_sq - short))
    # The long-run mean holds count - 1 changes, or about 2 * history - 1 once exponential.
    long_degrees = ops.minimum(ops.maximum(count - 1.0, 1.0), 2.0 * scorer.history - 1.0)
    # Both floored: a channel that never moves (a flat line) keeps a ratio of 1.
    variability_z = variance_ratio_z(
        ops, ops.maximum(new_short, variance_floor) / ops.maximum(long, variance_floor),
        scorer.variability_span, long_degrees[:, None])
    variability_z = ops.where((count >= 2.0)[:, None], variability_z, 0.0)
    variability_tail = channels * upper_tail(ops, ops.max_of_rows(variability_z))

    # Repeats: this channel's run of exact repeats as a two-state Markov chain: the first
    # repeat at the channel's repeat rate p, each further one at its rate q of repeating
    # right after a repeat, learned from completed runs only, so that a run is judged by
    # the runs before it and not by itself (Laplace's rule of succession for both).
    repeated = ops.indicator(change == 0.0)
    previous_run = state[:, f["repeat_run"]]
    run = ops.where(has_forecast[:, None], (previous_run + 1.0) * repeated, 0.0)
    rate = state[:, f["repeat_rate"]]
    follow_hits = state[:, f["repeat_follow_hits"]]
    follow_occasions = state[:, f["repeat_follow_occasions"]]
    seen = long_degrees[:, None]
    first_chance = (rate * seen + 1.0) / (seen + 2.0)
    follow_chance = (follow_hits + 1.0) / (follow_occasions + 2.0)
    # -log10(p * q ** (r - 1)), larger is rarer; 0 without a repeat.
    repeat_evidence = -repeated * (ops.log10(first_chance)
                                   + (run - 1.0) * ops.log10(follow_chance))
    repeat_tail = ops.where(count >= 2.0, channels * ops.exp(
        -ops.max_of_rows(repeat_evidence) * math.log(10.0)), 1.0)

    # Calibration of every test: each rests on a model (Gaussian tails, geometric runs of
    # repeats) that a stream may not follow. The four Gaussian tests learn theirs reading by
    # reading; the repeats test learns from completed runs only (the surprise each run had
    # reached when it ended), so a stuck sensor's ongoing run cannot teach it that long
    # runs are normal before the run is flagged.
    raw_tails = ops.concat([forecast_tail[:, None], level_tail[:, None], shift_tail[:, None],
                            season_tail[:, None],
                            variability_tail[:, None], repeat_tail[:, None]], axis=-1)
    raw_surprises = -ops.log10(ops.minimum(ops.maximum(raw_tails, MIN_TAIL), 1.0))
    exceed_rate = ops.where(first[:, None], CALIBRATION_RATE, state[:, f["exceed_rate"]])
    uncensored_rate = ops.where(first[:, None], CALIBRATION_RATE * UNCENSORED_SHARE,
                                state[:, f["uncensored_rate"]])
    excess_rate = ops.where(
        first[:, None], CALIBRATION_RATE * CALIBRATION_EXCESS * UNCENSORED_SHARE,
        state[:, f["excess_rate"]])
    surprises = calibrate(ops, raw_surprises, exceed_rate, excess_rate, uncensored_rate)
    # The most surprising test, Bonferroni over the tests.
    single_raw = ops.maximum(ops.max_of_rows(surprises) - math.log10(float(len(TESTS))), 0.0)
    # The far tail of the stream's own single surprises (recurring spikes and bursts).
    tail_rate = ops.where(first, TAIL_RATE, state[:, f["tail_rate"]][:, 0])
    tail_excess = ops.where(first, TAIL_RATE * CALIBRATION_EXCESS,
                            state[:, f["tail_excess"]][:, 0])
    # A rate near one in a thousand needs at least a thousand readings of memory.
    tail_weight = _running_weight(ops, count + TAIL_PRIOR_READINGS,
                                  max(scorer.history, TAIL_PRIOR_READINGS))
    single = calibrate_tail(ops, single_raw, tail_rate, tail_excess, 1.0 / tail_weight)

    # Persistence: a fault that keeps a stream moderately surprising for many readings is
    # as anomalous as one very surprising reading. Under normal behaviour the calibrated
    # surprise times ln 10 is about exponential with mean 1, so the mean of k of them is
    # chi2(2k) / 2k (Fisher's combination of p-values, over an exponential window of
    # `average_span` readings). Consecutive surprises are correlated (a slow error stays for
    # a while), which makes k of them worth k (1 - rho) / (1 + rho) independent ones for a
    # lag-one correlation rho, learned per stream.
    # A reading adds at most the evidence that flags it on its own, so one enormous
    # surprise does not keep the average up after it; the average is of what single
    # readings cannot show.
    evidence = ops.minimum(single, MAX_SURPRISE) * math.log(10.0)
    counted = ops.minimum(evidence, -math.log(1.0 - scorer.threshold))
    previous_average = ops.where(first, 1.0, state[:, f["evidence_average"]][:, 0])
    evidence_average = previous_average + scorer.average_weight * (counted - previous_average)
    last_evidence = ops.where(first, 1.0, state[:, f["last_evidence"]][:, 0])
    lag_product = state[:, f["evidence_lag_product"]][:, 0]
    rho = ops.minimum(ops.maximum(lag_product, 0.0), MAX_LAG_CORRELATION)
    independent = scorer.average_span * (1.0 - rho) / (1.0 + rho)
    persistence_tail = upper_tail(ops, chi2_mean_z(ops, evidence_average, 2.0 * independent))
    # The reading's tail: the single reading or the persistence, Bonferroni over the two.
    tail = ops.maximum(ops.minimum(
        2.0 * ops.minimum(ops.exp(-evidence), persistence_tail), 1.0), MIN_TAIL)
    tail = ops.where(learning, 0.5, tail)
    likelihood = 1.0 - tail
    surprise = ops.minimum(-ops.log10(tail), MAX_SURPRISE)
    flag = ops.logical_and(ops.logical_not(learning), tail <= 1.0 - scorer.threshold)
    # The channel that drove the most surprising test.
    deciding = ops.argmax(surprises, axis=1)
    top_channel = ops.where(
        deciding == 1, ops.argmax(level_z, axis=1),
        ops.where(deciding == 2, ops.argmax(shift_z, axis=1),
                  ops.where(deciding == 3, ops.argmax(season_z, axis=1),
                            ops.where(deciding == 4, ops.argmax(variability_z, axis=1),
                                      ops.where(deciding == 5,
                                                ops.argmax(repeat_evidence, axis=1),
                                                ops.argmax(ops.abs(residual), axis=1))))))

    # Onset: the surprise of a reading that tops the stream's recent peak, 0 for every other
    # reading (and while learning). The peak follows the surprise up and otherwise halves
    # every `refractory` unflagged readings: a stream that stays flagged is not reported
    # again merely because time passed.
    peak = state[:, f["surprise_peak"]][:, 0]
    onset = ops.where(ops.logical_and(ops.logical_not(learning), surprise > peak), surprise, 0.0)
    # A reported reading raises the peak to twice its surprise (the square of its tail): the
    # stream is reported again within the refractory time only when its evidence doubles,
    # so a surprise that climbs reading by reading reports a few times, not at every reading.
    new_peak = ops.maximum(ops.where(onset > 0.0, 2.0 * surprise, surprise),
                           peak * ops.where(flag, 1.0, scorer.peak_decay))

    # The long-run statistics describe normal behaviour, so they learn only from readings
    # that are not flagged; an anomaly that lasts longer than the learning period is taken
    # as the new normal and learned from then on.
    previous_flagged_run = state[:, f["flagged_run"]][:, 0]
    flagged_run = ops.where(flag, previous_flagged_run + 1.0, 0.0)
    learn = _learns(ops, flagged_run, scorer.learning_period)
    # The forecast test's: over the averages, from the first forecast.
    weight = learn * _running_weight(ops, count, scorer.history)
    delta = new_average - mean
    new_mean = ops.where(has_forecast, mean + weight * delta, mean)
    new_var = ops.where(has_forecast, (1.0 - weight) * (var + weight * delta * delta), var)
    new_average = ops.where(has_forecast, new_average, average)
    # The scale ratio's, over forecasts, the model's own scale counting as the calibration
    # prior's readings; a residual counts up to what would flag it on its own, so one
    # outlier does not inflate the stream's scale.
    ratio_weight = (learn * ops.indicator(has_forecast) * _running_weight(
        ops, count + CALIBRATION_PRIOR_READINGS, scorer.history))[:, None]
    bounded_ratio = ops.minimum(model_residual * model_residual, scorer.flag_chi2 * scale_ratio)
    new_scale_ratio = scale_ratio + ratio_weight * (bounded_ratio - scale_ratio)
    # The level's, over readings (this one included from the first).
    level_weight = (learn * _running_weight(ops, count + 1.0, scorer.level_history))[:, None]
    level_delta = normalized - level_mean
    new_level_mean = level_mean + level_weight * level_delta
    new_level_var = (1.0 - level_weight) * (level_var + level_weight * level_delta * level_delta)
    new_shift_var = shift_var + level_weight * (new_shift_mean * new_shift_mean - shift_var)
    # The season's: this hour's mean over its readings, the deviations' variance over all.
    new_visits = ops.add_to_rows(state[:, f["season_visits"]], hours, learn)
    hour_weight = learn / ops.maximum(visits + learn, 1.0)
    new_season_block = ops.add_to_rows(season_block, hours,
                                       hour_weight[:, None] * season_deviation)
    season_weight = (learn * ops.indicator(visits >= 1.0) * _running_weight(
        ops, count + 1.0, scorer.level_history))[:, None]
    new_season_var = season_var + season_weight * (
        season_deviation * season_deviation - season_var)
    # The changes' and the repeats', over changes (the first comes with the second reading).
    change_weight = (learn * _running_weight(ops, count, scorer.history))[:, None]
    new_long = ops.where(has_forecast[:, None], long + change_weight * (change_sq - long), long)
    new_short = ops.where(has_forecast[:, None], new_short, short)
    new_rate = ops.where(has_forecast[:, None], rate + change_weight * (repeated - rate), rate)
    # A run that just ended joins the follow counts (of its r repeats, r - 1 followed a
    # repeat) unless it ended flagged, and not yet for longer than the learning period.
    # The counts fade over `history` readings.
    learn_run = _learns(ops, previous_flagged_run, scorer.learning_period)
    ended = ops.indicator(previous_run >= 1.0) * (1.0 - repeated) * learn_run[:, None]
    fade = 1.0 - 1.0 / scorer.history
    new_follow_hits = follow_hits * fade + ended * (previous_run - 1.0)
    new_follow_occasions = follow_occasions * fade + ended * previous_run
    # The calibration's and the persistence's, over readings, from the prior's readings;
    # the repeats test's over the runs the follow counts learn from (a run of r repeats
    # ends with r - 1 hits), from the prior's runs, with the surprise the ended run had
    # reached. The reading-by-reading ones describe how the tests behave on this stream,
    # rare large surprises included, so they learn from every unflagged reading and from
    # the first of each run of flagged ones: learning only from unflagged ones would keep
    # a stream whose normal spikes are flagged from ever learning that they are normal,
    # and learning from a whole run would let a lasting fault teach that it is normal.
    calibration_learns = ops.indicator(ops.logical_or(
        flagged_run <= 1.0, flagged_run > float(scorer.learning_period)))
    prior_weight = calibration_learns * _running_weight(
        ops, count + CALIBRATION_PRIOR_READINGS, scorer.history)
    ended_evidence = -ended * (ops.log10(first_chance)
                               + (previous_run - 1.0) * ops.log10(follow_chance))
    ended_surprise = ops.maximum(ops.max_of_rows(ended_evidence) - math.log10(channels), 0.0)
    runs = ops.max_of_rows(follow_occasions - follow_hits)
    run_weight = ops.max_of_rows(ended) * _running_weight(
        ops, runs + CALIBRATION_PRIOR_RUNS + 1.0, scorer.history)
    weights = ops.concat([prior_weight[:, None]] * (len(TESTS) - 1) + [run_weight[:, None]],
                         axis=-1)
    learned = ops.concat([raw_surprises[:, :-1], ended_surprise[:, None]], axis=-1)
    exceeded = ops.indicator(learned > 1.0)
    uncensored = exceeded * ops.indicator(learned < 1.0 + CALIBRATION_CENSOR)
    new_exceed_rate = exceed_rate + weights * (exceeded - exceed_rate)
    new_uncensored_rate = uncensored_rate + weights * (uncensored - uncensored_rate)
    new_excess_rate = excess_rate + weights * (
        exceeded * ops.minimum(learned - 1.0, CALIBRATION_CENSOR) - excess_rate)
    tail_learned = ops.minimum(single_raw, MAX_SURPRISE)
    # Declustered: a surprise counts as an exceedance where it is reported as an onset.
    tail_exceeded = ops.indicator(tail_learned > TAIL_LEVEL) * ops.indicator(onset > 0.0)
    tail_weight = calibration_learns * tail_weight
    new_tail_rate = tail_rate + tail_weight * (tail_exceeded - tail_rate)
    new_tail_excess = tail_excess + tail_weight * (
        tail_exceeded * (tail_learned - TAIL_LEVEL) - tail_excess)
    lag_weight = prior_weight * ops.indicator(has_forecast)
    new_lag_product = lag_product + lag_weight * (
        (counted - 1.0) * (last_evidence - 1.0) - lag_product)

    # The fields as a list: the step joins them with the rest of the record in one copy.
    statistics = [
        new_average[:, None], new_mean[:, None], new_var[:, None], new_scale_ratio,
        new_level_mean, new_level_var, new_shift_mean, new_shift_var,
        ops.reshape(new_season_block, (-1, SEASON_BINS * channels)),
        new_visits, new_season_var, new_short, new_long, new_rate, new_follow_hits,
        new_follow_occasions, run, new_exceed_rate, new_uncensored_rate, new_excess_rate,
        new_tail_rate[:, None], new_tail_excess[:, None],
        evidence_average[:, None], counted[:, None],
        new_lag_product[:, None], new_peak[:, None], flagged_run[:, None],
    ]
    return score, likelihood, surprise, flag, top_channel, onset, statistics
