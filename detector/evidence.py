"""The scorer's six tests, one pair of functions each: judging a reading, then learning from it.

:func:`detector.scorer.assess` runs every test's ``*_evidence`` function on the state before
the reading (nothing is learned there), decides from their tails whether the reading is
flagged, and only then runs every ``learn_*`` function, which update the test's statistics
from the reading where the decision says so (``learn``: 1.0 for a reading learned from, 0.0
otherwise). What each test is, when it works and its references are in
:mod:`detector.scorer`'s docstring; the comments here say why a formula has its form.

Every function takes ``ops`` (:class:`detector.array_ops.NumpyOps` or TensorFlow's), so the
same formulas run in the NumPy step and in the exported TensorFlow step.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from detector.channel_pairs import conditional_deviates, pair_products
from detector.scorer_config import ScorerConfig
from detector.tail_probabilities import (
    CALIBRATION_PRIOR_READINGS,
    MIN_TAIL,
    variance_ratio_z,
)

# Relative resolution of float32, the floor of every level and change variance.
RESOLUTION = 1e-6
# The season test's bins: the hours of the (UTC) day.
SEASON_BINS = 24
# The tests, in the order of the calibration's columns.
TESTS = ("forecast", "level", "shift", "season", "variability", "repeats")

Array = Any  # a NumPy array or a TensorFlow tensor, as ``ops`` makes them


class RunningWeights(NamedTuple):
    """The :func:`running_weight` of this reading that several statistics share, each
    computed once: a round of one stream costs per array operation, whatever its width."""

    changes: Array  # [B] over changes (from the second reading), ``history`` long
    readings: Array  # [B] over readings, this one included, ``level_history`` long
    calibration: Array  # [B] over readings from the calibration prior's, ``history`` long


class ReadingContext(NamedTuple):
    """What every test reads of the reading and of its stream's record."""

    normalized: Array  # [B, F] the readings, normalized (unclipped)
    clipped: Array  # [B, F] the same, clipped as the model sees them
    change: Array  # [B, F] the clipped reading less the previous one (the record's input)
    hours: Array  # [B] int32 hour of the day (UTC)
    count: Array  # [B] readings seen before this one
    first: Array  # [B] bool: the stream's first reading
    has_forecast: Array  # [B] bool: the state holds a forecast for this reading
    has_change: Array  # [B] bool: the state holds a change between two earlier readings
    variance_floor: Array  # [B, F] the smallest variance float32 resolves around the level
    channels: int
    weights: RunningWeights


def read(ops, scorer: ScorerConfig, layout, normalized, clipped, hours,
         state) -> ReadingContext:
    """The :class:`ReadingContext` of ``normalized`` against ``state`` ``[B, S]``."""
    f = layout.fields
    count = state[:, f["count"]][:, 0]
    # Variances below what float32 resolves around the stream's level count as that: the
    # floor guards against dividing by zero, not against a stream whose units are small
    # (one model's normalization serves streams of very different units).
    resolution = RESOLUTION * (ops.abs(state[:, f["level_mean"]]) + RESOLUTION)
    weights = RunningWeights(
        running_weight(ops, count, scorer.history),
        running_weight(ops, count + 1.0, scorer.level_history),
        running_weight(ops, count + CALIBRATION_PRIOR_READINGS, scorer.history))
    # Changes are of the clipped values, which the previous record holds as its input.
    change = clipped - state[:, f["reading_t1"]]
    return ReadingContext(normalized, clipped, change, hours, count, count == 0.0,
                          count >= 1.0, count >= 2.0, resolution * resolution, layout.channels,
                          weights)


def running_weight(ops, seen, history: int):
    """A running mean's weight until ``history`` values were seen, then exponential."""
    return ops.maximum(1.0 / ops.maximum(seen, 1.0), 1.0 / history)


# --- forecast: the moving average of residual scores against its long-run distribution ----

class ForecastEvidence(NamedTuple):
    deviate: Array  # [B] the normal deviate of the test's tail (the scorer takes its tail)
    score: Array  # [B] the raw score: RMS of the judged residuals
    residual: Array  # [B, F] the judged distance, to the forecast (or to the nearer of it
    # and the hour's mean, where the profile foresaw the reading), in the recalibrated scale
    model_residual: Array  # [B, F] standardized by the model's own scale
    scale_ratio: Array  # [B, F]
    average: Array  # [B] the moving average of scores before this reading
    new_average: Array  # [B] ... with this reading
    mean: Array  # [B] the long-run mean of the average
    var: Array  # [B] ... and its variance


def forecast_evidence(ops, scorer: ScorerConfig, f, state, r: ReadingContext,
                      season: SeasonEvidence) -> ForecastEvidence:
    # This reading against the forecast the previous reading left in the state.
    has_forecast = r.has_forecast[:, None]
    model_scale = state[:, f["forecast_scale"]]
    distance = ops.where(has_forecast, r.normalized - state[:, f["forecast_mean"]], 0.0)
    forecast_scale = ops.where(has_forecast, model_scale, 1.0)
    model_residual = distance / forecast_scale
    # The model's forecast scale, recalibrated per stream: by the stream's own long-run mean
    # square of the model's standardized residuals (1, the model's own scale, until it has
    # seen a forecast), so a stream the model forecasts more or less tightly than the
    # streams it was trained on (one normalization serves streams of very different units)
    # is judged by its own residuals; floored at float32's resolution around its level.
    scale_ratio = ops.where(r.has_change[:, None], state[:, f["scale_ratio"]], 1.0)
    scale = forecast_scale * ops.sqrt(ops.maximum(
        scale_ratio, r.variance_floor / ops.maximum(model_scale * model_scale, MIN_TAIL)))
    # Where the hourly profile foresaw the reading better than persistence did (the reading
    # is nearer its hour's mean than the previous reading, once the hour has two readings),
    # a channel is judged by its distance to the nearer of the model's forecast and that
    # mean. A one-step forecaster trained on a few hundred readings does not foresee a daily
    # pattern's sharp turns (a square wave's edges, a load's morning rise), which the hourly
    # profile expects: counting them spent the test's false alarms on the model's blind
    # spot. Elsewhere the forecast alone judges: a reading that stays near the previous one
    # (a slow ramp the profile has partly learned, a wandering level on the first day, when
    # an hour's mean is only its own recent readings) is the model's to judge.
    forecast_distance = ops.abs(distance)
    foreseen = ops.logical_and((season.visits >= 2.0)[:, None],
                               season.distance < ops.abs(r.change))
    nearer = ops.where(foreseen, ops.minimum(forecast_distance, season.distance),
                       forecast_distance)
    residual = nearer / scale
    score = ops.sqrt(ops.mean_of_rows(residual * residual))
    average = state[:, f["score_average"]][:, 0]
    mean = state[:, f["score_mean"]][:, 0]
    var = state[:, f["score_var"]][:, 0]
    capped = ops.minimum(score, scorer.score_cap)
    new_average = ops.where(r.count == 1.0, capped,
                            average + scorer.average_weight * (capped - average))
    sigma = ops.maximum(ops.sqrt(var), scorer.min_sigma)
    return ForecastEvidence((new_average - mean) / sigma, score, residual, model_residual,
                            scale_ratio, average, new_average, mean, var)


def learn_forecast(ops, scorer: ScorerConfig, r: ReadingContext, e: ForecastEvidence, learn):
    """``[average, mean, var, scale_ratio]`` of the next record."""
    # Over the averages, from the first forecast.
    weight = learn * r.weights.changes
    delta = e.new_average - e.mean
    new_mean = ops.where(r.has_forecast, e.mean + weight * delta, e.mean)
    new_var = ops.where(r.has_forecast, (1.0 - weight) * (e.var + weight * delta * delta),
                        e.var)
    new_average = ops.where(r.has_forecast, e.new_average, e.average)
    # The scale ratio over forecasts, the model's own scale counting as the calibration
    # prior's readings; a residual counts up to what would flag it on its own, so one
    # outlier does not inflate the stream's scale.
    ratio_weight = (learn * ops.indicator(r.has_forecast) * r.weights.calibration)[:, None]
    bounded_ratio = ops.minimum(e.model_residual * e.model_residual,
                                scorer.flag_chi2 * e.scale_ratio)
    new_scale_ratio = e.scale_ratio + ratio_weight * (bounded_ratio - e.scale_ratio)
    return [new_average[:, None], new_mean[:, None], new_var[:, None], new_scale_ratio]


# --- level and shift: each channel against its long-run mean, and an EWMA chart of it -----

class LevelEvidence(NamedTuple):
    deviate: Array  # [B] the largest channel's (the scorer takes its tail, Bonferroni)
    z: Array  # [B, F]
    mean: Array  # [B, F] the long-run mean
    var: Array  # [B, F] ... and variance


def level_evidence(ops, f, state, r: ReadingContext) -> LevelEvidence:
    mean = state[:, f["level_mean"]]
    var = state[:, f["level_var"]]
    z = ops.abs(r.normalized - mean) / ops.sqrt(ops.maximum(var, r.variance_floor))
    return LevelEvidence(ops.max_of_rows(z), z, mean, var)


class ShiftEvidence(NamedTuple):
    deviate: Array  # [B] the largest channel's (the scorer takes its tail, Bonferroni,
    # from a stream's third reading on)
    z: Array  # [B, F]
    new_mean: Array  # [B, F] the EWMA of deviations, with this reading
    var: Array  # [B, F] the EWMA's own long-run mean square


def shift_evidence(ops, scorer: ScorerConfig, f, state, r: ReadingContext,
                   level: LevelEvidence) -> ShiftEvidence:
    # A deviation counts up to what would flag it on its own, so one spike does not hold
    # the average up after it.
    level_sd = ops.sqrt(ops.maximum(level.var, r.variance_floor))
    bound = math.sqrt(scorer.flag_chi2) * level_sd
    deviation = ops.minimum(ops.maximum(r.normalized - level.mean, -bound), bound)
    shift_mean = state[:, f["shift_mean"]]
    new_mean = ops.where(r.first[:, None], 0.0,
                         shift_mean + scorer.average_weight * (deviation - shift_mean))
    # The average's spread: its own long-run mean square, as a drifting channel's average
    # wanders far more than independent readings' would; at least theirs.
    var = state[:, f["shift_var"]]
    iid_share = scorer.average_weight / (2.0 - scorer.average_weight)
    z = ops.abs(new_mean) / ops.sqrt(ops.maximum(
        var, iid_share * ops.maximum(level.var, r.variance_floor)))
    return ShiftEvidence(ops.max_of_rows(z), z, new_mean, var)


def learn_level_and_shift(ops, scorer: ScorerConfig, r: ReadingContext, level: LevelEvidence,
                          shift: ShiftEvidence, learn):
    """``[level_mean, level_var, shift_mean, shift_var]`` of the next record."""
    # Over readings, this one included from the first.
    weight = (learn * r.weights.readings)[:, None]
    delta = r.normalized - level.mean
    new_level_mean = level.mean + weight * delta
    # The whole square, unlike the forecast and variability tests' bounded ones. Bounded at
    # the flag's deviation, this variance and the season test's took SKAB's F1 from 0.860
    # to 0.869 and NAB's standard score from 58.5 to 42.8 (seeds 7, 8, 9; the level's alone:
    # 49.2, the season's alone: 47.3), by missed windows more than false alarms (seed 7: 33
    # windows found instead of 42, 165 false-alarm rows instead of 157); a bounded variance,
    # for one, takes a lasting change as the new normal far slower.
    new_level_var = (1.0 - weight) * (level.var + weight * delta * delta)
    new_shift_var = shift.var + weight * (shift.new_mean * shift.new_mean - shift.var)
    return [new_level_mean, new_level_var, shift.new_mean, new_shift_var]


# --- season: each channel against its mean at this hour of the day -------------------------

class SeasonEvidence(NamedTuple):
    deviate: Array  # [B] the largest channel's (the scorer takes its tail, Bonferroni)
    z: Array  # [B, F] each channel's deviate; for more than one channel, given the other
    # channels' deviations
    block: Array  # [B, 24, F] the hourly means
    visits: Array  # [B] readings learned at this hour
    var: Array  # [B, F] the deviations' variance
    deviation: Array  # [B, F] from this hour's mean
    distance: Array  # [B, F] |deviation| (the forecast and variability tests read it too)


def season_evidence(ops, f, state, r: ReadingContext) -> SeasonEvidence:
    # In units of the deviations from the hourly means; a mean of n readings is itself
    # uncertain by 1/n of that variance (and of the covariances, across channels).
    block = ops.reshape(state[:, f["season_mean"]], (-1, SEASON_BINS, r.channels))
    visits = ops.take_rows(state[:, f["season_visits"]], r.hours)
    hour_mean = ops.take_rows(block, r.hours)
    var = state[:, f["season_var"]]
    deviation = r.normalized - hour_mean
    floored_var = ops.maximum(var, r.variance_floor)
    mean_uncertainty = (1.0 + 1.0 / ops.maximum(visits, 1.0))[:, None]
    distance = ops.abs(deviation)
    if r.channels == 1:
        z = distance / ops.sqrt(floored_var * mean_uncertainty)
    else:
        # Each channel given the other channels' deviations, which foresee what they share
        # (detector.channel_pairs). The correlations shrink towards none as by a prior of F
        # readings against the readings seen (at most level_history, the variances' memory;
        # they learn from fewer: not from flagged readings, nor before an hour's first).
        readings_learned = 1.0 / r.weights.readings
        z = conditional_deviates(
            ops, floored_var, state[:, f["season_covariance"]], deviation,
            r.channels / (readings_learned + r.channels)) / ops.sqrt(mean_uncertainty)
    z = ops.where((visits >= 2.0)[:, None], z, 0.0)
    return SeasonEvidence(ops.max_of_rows(z), z, block, visits, var, deviation, distance)


def learn_season(ops, scorer: ScorerConfig, f, state, r: ReadingContext, e: SeasonEvidence,
                 learn) -> list:
    """``[season_mean, season_visits, season_var, season_covariance]`` of the next record
    (no covariance for one channel): this hour's mean over its readings, the deviations'
    variances and covariances over all."""
    new_visits = ops.add_to_rows(state[:, f["season_visits"]], r.hours, learn)
    hour_weight = learn / ops.maximum(e.visits + learn, 1.0)
    new_block = ops.add_to_rows(e.block, r.hours, hour_weight[:, None] * e.deviation)
    weight = (learn * ops.indicator(e.visits >= 1.0) * r.weights.readings)[:, None]
    # The whole square, as the level's variance (see learn_level_and_shift); the
    # covariances learn from the same readings with the same weights, so the matrix they
    # make with the variances stays positive semi-definite.
    new_var = e.var + weight * (e.deviation * e.deviation - e.var)
    learned = [ops.reshape(new_block, (-1, SEASON_BINS * r.channels)), new_visits, new_var]
    if r.channels > 1:
        covariance = state[:, f["season_covariance"]]
        learned.append(covariance + weight * (pair_products(ops, e.deviation) - covariance))
    return learned


# --- variability and repeats: the changes from the previous reading ------------------------

class VariabilityEvidence(NamedTuple):
    deviate: Array  # [B] the burst's, largest channel's (the scorer takes its upper tail,
    # Bonferroni)
    z: Array  # [B, F] the burst's
    jump_deviate: Array  # [B] the jump's, largest channel's (the scorer takes its
    # two-sided tail, Bonferroni)
    jump_z: Array  # [B, F] |change| in long-run RMS changes, where it moves away (else 0)
    change: Array  # [B, F] this clipped reading less the previous one
    change_sq: Array  # [B, F]
    short: Array  # [B, F] the recent mean square of changes before this reading
    new_short: Array  # [B, F] ... with this reading
    long: Array  # [B, F] the long-run mean square of changes
    long_degrees: Array  # [B] the changes the long-run mean holds


def variability_evidence(ops, scorer: ScorerConfig, f, state, r: ReadingContext,
                         season: SeasonEvidence) -> VariabilityEvidence:
    change = r.change
    change_sq = change * change
    short = state[:, f["change_short"]]
    long = state[:, f["change_long"]]
    # Floored: a channel that never moves (a flat line) keeps a ratio of 1 and no jumps.
    floored_long = ops.maximum(long, r.variance_floor)
    # A change counts up to what would be a flag on its own (a chi2(1) value at the
    # threshold, times the long-run mean square), so one spike does not keep the recent
    # variance up for the window's length after it: the test is for bursts.
    has_change = r.has_change[:, None]
    bounded_sq = ops.where(has_change, ops.minimum(
        change_sq, scorer.flag_chi2 * floored_long), change_sq)
    new_short = ops.where((r.count == 1.0)[:, None], change_sq,
                          short + scorer.variability_weight * (bounded_sq - short))
    # The long-run mean holds count - 1 changes, or about 2 * history - 1 once exponential.
    long_degrees = ops.minimum(ops.maximum(r.count - 1.0, 1.0), 2.0 * scorer.history - 1.0)
    z = variance_ratio_z(
        ops, ops.maximum(new_short, r.variance_floor) / floored_long,
        scorer.variability_span, long_degrees[:, None])
    z = ops.where(has_change, z, 0.0)
    # The jump: this one change in units of the channel's long-run RMS change, which a
    # slow anomaly barely moves (a drift's changes are a fraction of the noise's), unlike
    # the level and season variances a held shift is judged by. It counts only where the
    # reading moves away from its hour's mean: the return of a spike, a shift or a dropout
    # to normal is as large a change, but a recovery, not an anomaly. Under the null a
    # large change nearly always moves away (it dwarfs the previous deviation), so the
    # scorer still takes the two-sided tail.
    away = ops.indicator(season.distance > ops.abs(season.deviation - change))
    jump_z = ops.where(has_change, ops.abs(change) * away / ops.sqrt(floored_long), 0.0)
    return VariabilityEvidence(ops.max_of_rows(z), z, ops.max_of_rows(jump_z), jump_z, change,
                               change_sq, short, new_short, long, long_degrees)


class RepeatsEvidence(NamedTuple):
    tail: Array  # [B] Bonferroni over the channels (the scorer judges from a stream's third
    # reading on)
    evidence: Array  # [B, F] -log10 of the current run's probability (0 without a repeat)
    repeated: Array  # [B, F] 1.0 where the reading repeats the previous one exactly
    previous_run: Array  # [B, F] the run of repeats before this reading
    run: Array  # [B, F] ... with it
    rate: Array  # [B, F] the long-run rate of repeating
    follow_hits: Array  # [B, F] repeats right after a repeat, in completed runs
    follow_occasions: Array  # [B, F] repeats of completed runs
    first_chance: Array  # [B, F] p, the chance of a first repeat
    follow_chance: Array  # [B, F] q, the chance of a repeat after a repeat


def repeats_evidence(ops, f, state, r: ReadingContext,
                     variability: VariabilityEvidence) -> RepeatsEvidence:
    # The run of exact repeats as a two-state Markov chain: the first repeat at the
    # channel's repeat rate p, each further one at its rate q of repeating right after a
    # repeat, learned from completed runs only, so that a run is judged by the runs before
    # it and not by itself (Laplace's rule of succession for both).
    repeated = ops.indicator(variability.change == 0.0)
    previous_run = state[:, f["repeat_run"]]
    run = ops.where(r.has_forecast[:, None], (previous_run + 1.0) * repeated, 0.0)
    rate = state[:, f["repeat_rate"]]
    follow_hits = state[:, f["repeat_follow_hits"]]
    follow_occasions = state[:, f["repeat_follow_occasions"]]
    seen = variability.long_degrees[:, None]
    first_chance = (rate * seen + 1.0) / (seen + 2.0)
    follow_chance = (follow_hits + 1.0) / (follow_occasions + 2.0)
    # -log10(p * q ** (r - 1)), larger is rarer; 0 without a repeat.
    evidence = -repeated * (ops.log10(first_chance)
                            + (run - 1.0) * ops.log10(follow_chance))
    tail = r.channels * ops.exp(-ops.max_of_rows(evidence) * math.log(10.0))
    return RepeatsEvidence(tail, evidence, repeated, previous_run, run, rate, follow_hits,
                           follow_occasions, first_chance, follow_chance)


def ended_runs(ops, e: RepeatsEvidence, learn_run):
    """``[B, F]`` 1.0 where a run of repeats just ended and is learned from: unless it ended
    flagged, and not yet for longer than the learning period (``learn_run`` says)."""
    return ops.indicator(e.previous_run >= 1.0) * (1.0 - e.repeated) * learn_run[:, None]


def learn_changes(ops, scorer: ScorerConfig, r: ReadingContext, v: VariabilityEvidence,
                  e: RepeatsEvidence, ended, learn):
    """``[change_short, change_long, repeat_rate, repeat_follow_hits,
    repeat_follow_occasions, repeat_run]`` of the next record: over changes (the first
    comes with the second reading)."""
    weight = (learn * r.weights.changes)[:, None]
    new_long = ops.where(r.has_forecast[:, None],
                         v.long + weight * (v.change_sq - v.long), v.long)
    new_short = ops.where(r.has_forecast[:, None], v.new_short, v.short)
    new_rate = ops.where(r.has_forecast[:, None], e.rate + weight * (e.repeated - e.rate),
                         e.rate)
    # A run that just ended joins the follow counts (of its r repeats, r - 1 followed a
    # repeat); the counts fade over `history` readings.
    fade = 1.0 - 1.0 / scorer.history
    new_follow_hits = e.follow_hits * fade + ended * (e.previous_run - 1.0)
    new_follow_occasions = e.follow_occasions * fade + ended * e.previous_run
    return [new_short, new_long, new_rate, new_follow_hits, new_follow_occasions, e.run]


def ended_run_surprise(ops, r: ReadingContext, e: RepeatsEvidence, ended):
    """``[B]`` the surprise each run that just ended had reached (0 where none ended),
    Bonferroni over the channels: what the repeats test's calibration learns from."""
    ended_evidence = -ended * (ops.log10(e.first_chance)
                               + (e.previous_run - 1.0) * ops.log10(e.follow_chance))
    return ops.maximum(ops.max_of_rows(ended_evidence) - math.log10(r.channels), 0.0)
