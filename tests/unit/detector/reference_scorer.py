"""The scorer's documented rules as a float64 reference, one stream and one reading at a time,
written apart from :mod:`detector.scorer` so the step's tests can compare the two
(``test_step.py``)."""

from __future__ import annotations

import math
import statistics

import numpy as np

from detector.scorer_config import ScorerConfig


def reference_scores(forecast_mean, forecast_scale, normalized, scorer: ScorerConfig,
                     timestamps_ms, surprises=None, clip=None):
    """The scorer's documented rules, one stream and one reading at a time, in float64 with
    math.erfc.

    ``surprises`` (optional, ``[streams, steps]``) replaces the computed surprises as the
    input of the onset rule; ``clip`` is the model input's clip (changes are of clipped
    values).
    """
    streams, steps, channels = normalized.shape
    clipped = normalized if clip is None else np.clip(normalized, -clip, clip)
    score = np.zeros((streams, steps))
    likelihood = np.zeros((streams, steps))
    surprise = np.zeros((streams, steps))
    flag = np.zeros((streams, steps), dtype=bool)
    onset = np.zeros((streams, steps))
    spread = 2 / (9 * scorer.variability_span)
    ln10 = math.log(10)

    def upper_tail(z):
        return 0.5 * math.erfc(z / math.sqrt(2))

    def chi2_mean_tail(ratio, degrees):
        # Wilson-Hilferty: chi2(k) / k as a standard normal deviate.
        return upper_tail((ratio ** (1 / 3) - (1 - 2 / (9 * degrees)))
                          / math.sqrt(2 / (9 * degrees)))

    def running(seen, history):
        return max(1.0 / max(seen, 1), 1.0 / history)

    for s in range(streams):
        average = mean = var = peak = flagged_run = 0.0
        scale_ratio = np.ones(channels)
        evidence_average = evidence_long = 1.0
        evidence_spread = scorer.average_weight / (2 - scorer.average_weight)
        level_mean, level_var = np.zeros(channels), np.zeros(channels)
        shift_mean, shift_var = np.zeros(channels), np.zeros(channels)
        tail_rate, tail_excess = 1e-3, 1e-3 / ln10
        tail_run_peak, tail_run_gap = 0.0, 0  # the open cluster's peak, readings since
        season_mean, visits = np.zeros((24, channels)), np.zeros(24)
        season_var = np.zeros(channels)
        season_covariance = np.zeros((channels, channels))  # its diagonal unused
        short, long = np.zeros(channels), np.zeros(channels)
        rate, run = np.zeros(channels), np.zeros(channels)
        hits, occasions = np.zeros(channels), np.zeros(channels)
        uncensored_share = 1 - math.exp(-2 * ln10)  # Exp(1 / ln 10) below the censor 2
        exceed_rate = np.full(6, 0.1)
        uncensored_rate = np.full(6, 0.1 * uncensored_share)
        excess_rate = np.full(6, 0.1 / ln10 * uncensored_share)
        cluster_length = np.zeros(5)  # readings learned from in each test's current cluster
        cluster_peak = np.zeros(5)  # the cluster's peak beyond its first average_span ones
        for t in range(steps):
            count = t  # readings seen before this one
            x = normalized[s, t].astype(np.float64)
            floor = (1e-6 * (np.abs(level_mean) + 1e-6)) ** 2
            bound = statistics.NormalDist().inv_cdf(1 - (1 - scorer.threshold) / 2) ** 2
            hour = int(timestamps_ms[s, t] % 86_400_000 // 3_600_000)
            deviation = x - season_mean[hour]
            if count >= 1:
                model_z = (x - forecast_mean[s, t - 1]) / forecast_scale[s, t - 1]
                # The model's scale, recalibrated by the stream's own mean square of model_z.
                recalibrated = forecast_scale[s, t - 1] * np.sqrt(np.maximum(
                    scale_ratio, floor / forecast_scale[s, t - 1] ** 2))
                # Where the hour's mean (of two readings or more) is nearer the reading than
                # the previous reading, the nearer of it and the forecast counts.
                distance = np.abs(x - forecast_mean[s, t - 1])
                change = clipped[s, t].astype(np.float64) - clipped[s, t - 1]
                foreseen = (visits[hour] >= 2) & (np.abs(deviation) < np.abs(change))
                distance = np.where(foreseen, np.minimum(distance, np.abs(deviation)), distance)
                z = distance / recalibrated
                score[s, t] = math.sqrt(float(np.mean(z * z)))
            capped = min(score[s, t], scorer.score_cap)
            new_average = capped if count == 1 else (
                average + scorer.average_weight * (capped - average))
            sigma = max(math.sqrt(var), scorer.min_sigma)
            forecast_tail = upper_tail((new_average - mean) / sigma)
            level_tail = 2 * channels * upper_tail(float(np.max(
                np.abs(x - level_mean) / np.sqrt(np.maximum(level_var, floor)))))
            # The shift test: an EWMA of deviations (each bounded by a flag's own size),
            # against its own long-run mean square, at least independent readings' share.
            level_sd = np.sqrt(np.maximum(level_var, floor))
            shift_step = np.clip(x - level_mean, -math.sqrt(bound) * level_sd,
                                 math.sqrt(bound) * level_sd)
            new_shift_mean = np.zeros(channels) if count == 0 else (
                shift_mean + scorer.average_weight * (shift_step - shift_mean))
            iid_share = scorer.average_weight / (2 - scorer.average_weight)
            shift_z = np.abs(new_shift_mean) / np.sqrt(np.maximum(
                shift_var, iid_share * np.maximum(level_var, floor)))
            shift_tail = 1.0 if count < 2 else 2 * channels * upper_tail(float(shift_z.max()))
            season_z = np.abs(deviation) / np.sqrt(
                np.maximum(season_var, floor) * (1 + 1 / max(visits[hour], 1)))
            if channels > 1:
                # Each channel given the others (its regression on them), from the
                # correlations shrunk towards none as by a prior of `channels` readings.
                sd = np.sqrt(np.maximum(season_var, floor))
                readings_learned = 1 / running(count + 1, scorer.level_history)
                correlation = season_covariance / np.outer(sd, sd) * (
                    readings_learned / (readings_learned + channels))
                np.fill_diagonal(correlation, 1.0)
                precision = np.linalg.inv(correlation)
                conditional_z = np.abs(precision @ (deviation / sd)) / np.sqrt(
                    np.diag(precision) * (1 + 1 / max(visits[hour], 1)))
                season_z = conditional_z
            season_tail = 2 * channels * upper_tail(
                float(season_z.max()) if visits[hour] >= 2 else 0.0)
            change = clipped[s, t].astype(np.float64) - clipped[s, t - 1]
            change_sq = change ** 2
            bounded_sq = np.minimum(change_sq, bound * np.maximum(long, floor)) if count >= 2 \
                else change_sq
            new_short = change_sq if count == 1 else (
                short + scorer.variability_weight * (bounded_sq - short))
            seen = min(max(count - 1, 1), 2 * scorer.history - 1)
            long_spread = 2 / (9 * seen)
            roots = np.cbrt(np.maximum(new_short, floor) / np.maximum(long, floor))
            variability_tail = 1.0 if count < 2 else channels * upper_tail(float(np.max(
                ((1 - long_spread) * roots - (1 - spread))
                / np.sqrt(spread + roots * roots * long_spread))))
            # The jump: this change in long-run RMS changes where it moves the reading away
            # from its hour's mean; two-sided, Bonferroni over the channels and the two parts.
            away = np.abs(deviation) > np.abs(deviation - change)
            jump_z = np.abs(change) * away / np.sqrt(np.maximum(long, floor))
            jump_tail = 1.0 if count < 2 else 2 * channels * upper_tail(float(jump_z.max()))
            variability_tail = min(2 * min(variability_tail, jump_tail), 1.0)
            new_run = (run + 1) * (change == 0) if count >= 1 else run
            first_chance = (rate * seen + 1) / (seen + 2)
            follow_chance = (hits + 1) / (occasions + 2)
            evidence_per_channel = -(change == 0).astype(float) * (
                np.log10(first_chance) + (new_run - 1) * np.log10(follow_chance))
            repeat_tail = 1.0 if count < 2 else channels * 10 ** -float(
                np.max(evidence_per_channel))
            raw = -np.log10(np.clip([forecast_tail, level_tail, shift_tail, season_tail,
                                     variability_tail, repeat_tail], 1e-30, 1.0))
            rate_surprise = -np.log10(np.maximum(exceed_rate, 0.1))
            with np.errstate(divide="ignore", invalid="ignore"):
                slope = np.where(excess_rate > uncensored_rate / ln10,
                                 uncensored_rate / ln10 / excess_rate, 1.0)
            calibrated = np.where(raw > 1, rate_surprise + (raw - 1) * slope, raw * rate_surprise)
            # Bonferroni over five families: the forecast and variability tests are one,
            # each with half its share.
            families = [max(calibrated[0], calibrated[4]) - math.log10(2), *calibrated[1:4],
                        calibrated[5]]
            single_raw = max(max(families) - math.log10(5), 0.0)
            # The far tail above 3: the stream's own rate and mean excess of reported
            # surprises there (priors: one exceedance in 1,000 readings; ten of excess 1/ln 10).
            tail_weight = running(count + 1000, max(scorer.history, 1000))
            readings = 1 / tail_weight
            tail_surprise = -math.log10(max(tail_rate, 1e-3))
            mean_excess = (tail_excess * readings + 10 / ln10) / (tail_rate * readings + 10)
            tail_slope = (1 / ln10) / mean_excess if mean_excess > 1 / ln10 else 1.0
            single = min(single_raw, tail_surprise + (single_raw - 3) * tail_slope
                         if single_raw > 3 else single_raw * tail_surprise / 3)
            evidence = min(single, 30.0) * ln10
            counted = min(evidence, -math.log(1 - scorer.threshold))
            new_evidence_average = evidence_average + scorer.average_weight * (
                counted - evidence_average)
            # The persistence test at two spans; the short average's measured variance
            # over an independent one's gives the lag-one correlation of an AR(1).
            weight = scorer.average_weight
            null_spread = weight / (2 - weight)
            inflation = max(evidence_spread / null_spread, 1.0)
            rho = min((inflation - 1) / ((inflation + 1) * (1 - weight)), 0.95)
            long_weight = 2 / (scorer.long_average_span + 1)
            new_evidence_long = evidence_long + long_weight * (counted - evidence_long)
            long_rho = rho * (1 - long_weight)
            persistence_tail = min(
                chi2_mean_tail(new_evidence_average, 2 / (null_spread * inflation)),
                chi2_mean_tail(new_evidence_long, 2 * scorer.long_average_span
                               * (1 - long_rho) / (1 + long_rho)))
            tail = max(min(3 * min(math.exp(-evidence), persistence_tail), 1.0), 1e-30)
            learning = count <= scorer.learning_period
            likelihood[s, t] = 0.5 if learning else 1.0 - tail
            surprise[s, t] = -math.log10(0.5 if learning else tail)
            flag[s, t] = (not learning) and 1.0 - tail >= scorer.threshold
            current = surprise[s, t] if surprises is None else surprises[s, t]
            onset[s, t] = current if current > peak and not learning else 0.0
            # A report raises the peak to twice the reported surprise.
            # The peak decays only at readings that are not flagged.
            peak = max(peak * (1.0 if flag[s, t] else 0.5 ** (1.0 / scorer.refractory)),
                       2.0 * current if onset[s, t] > 0 else current)
            # Statistics learn from readings that are not flagged (or after a long anomaly).
            previous_flagged_run = flagged_run
            flagged_run = flagged_run + 1 if flag[s, t] else 0.0
            learn = float((not flag[s, t]) or flagged_run > scorer.learning_period)
            level_weight = learn * running(count + 1, scorer.level_history)
            level_delta = x - level_mean
            level_mean = level_mean + level_weight * level_delta
            level_var = (1 - level_weight) * (level_var + level_weight * level_delta ** 2)
            shift_var = shift_var + level_weight * (new_shift_mean ** 2 - shift_var)
            shift_mean = new_shift_mean
            season_weight = learn * (visits[hour] >= 1) * running(count + 1, scorer.level_history)
            season_var = season_var + season_weight * (deviation ** 2 - season_var)
            season_covariance = season_covariance + season_weight * (
                np.outer(deviation, deviation) - season_covariance)
            visits[hour] += learn
            season_mean[hour] += learn / max(visits[hour], 1) * deviation
            learn_run = previous_flagged_run == 0 or previous_flagged_run > scorer.learning_period
            ended = ((run >= 1) & (change != 0) & learn_run).astype(float) if count >= 1 \
                else np.zeros(channels)
            # Every reading but a flagged run's continuation (its first reading counts).
            calibration_learns = flagged_run <= 1 or flagged_run > scorer.learning_period
            prior_weight = calibration_learns * running(count + 100, scorer.history)
            ended_evidence = -ended * (np.log10(first_chance)
                                       + (run - 1) * np.log10(follow_chance))
            run_weight = float(ended.max()) * running(float(np.max(occasions - hits)) + 11,
                                                      scorer.history)
            weights = np.array([prior_weight] * 5 + [run_weight])
            learned = np.array([*raw[:5], max(float(ended_evidence.max()) - math.log10(channels),
                                              0.0)])
            # The far tail learns each cluster of surprises above 3 once, by its peak, when
            # it has ended: average_span readings in a row at or below 3 (runs declustering).
            # The peak is over the readings the calibrations learn from, after learning.
            tail_learned = min(single_raw, 30.0)
            above = tail_learned > 3
            open_cluster = tail_run_peak > 3
            gap = tail_run_gap + 1
            cluster_ended = open_cluster and not above and gap >= scorer.average_span
            tail_exceeded = float(cluster_ended)
            tail_learns = max(float(calibration_learns), tail_exceeded) * tail_weight
            tail_rate += tail_learns * (tail_exceeded - tail_rate)
            tail_excess += tail_learns * (tail_exceeded * (tail_run_peak - 3) - tail_excess)
            if above:
                tail_run_peak = max(tail_run_peak,
                                    tail_learned * calibration_learns * (not learning))
                tail_run_gap = 0
            elif cluster_ended:
                tail_run_peak, tail_run_gap = 0.0, 0
            else:
                tail_run_gap = gap if open_cluster else 0
            exceed_rate = exceed_rate + weights * ((learned > 1) - exceed_rate)
            # A cluster of readings above 1 teaches the excess its first average_span
            # readings, then its peak once it has ended.
            span = scorer.average_span
            in_cluster = raw[:5] > 1
            long_ended = ~in_cluster & (cluster_length >= span) & (cluster_peak > 1)
            excess_learned = learned.copy()
            excess_learned[:5] = np.where(long_ended, cluster_peak, raw[:5])
            excess_weights = weights.copy()
            excess_weights[:5] *= ~(in_cluster & (cluster_length >= span))
            cluster_peak = np.where(in_cluster & (cluster_length >= span), np.maximum(
                cluster_peak, raw[:5] * calibration_learns), 0.0)
            cluster_length = np.where(in_cluster, np.minimum(
                cluster_length + calibration_learns, span), 0.0)
            exceeded = (excess_learned > 1).astype(float)
            uncensored = exceeded * (excess_learned < 3)
            uncensored_rate = uncensored_rate + excess_weights * (uncensored - uncensored_rate)
            excess_rate = excess_rate + excess_weights * (
                exceeded * np.minimum(excess_learned - 1, 2) - excess_rate)
            if count >= 1:
                weight = learn * running(count, scorer.history)
                delta = new_average - mean
                mean += weight * delta
                var = (1 - weight) * (var + weight * delta * delta)
                average = new_average
                ratio_weight = learn * running(count + 100, scorer.history)
                scale_ratio = scale_ratio + ratio_weight * (
                    np.minimum(model_z ** 2, bound * scale_ratio) - scale_ratio)
                long = long + weight * (change_sq - long)
                rate = rate + weight * ((change == 0) - rate)

                short = new_short
                evidence_spread += prior_weight * (
                    (new_evidence_average - 1) ** 2 - evidence_spread)
            hits = hits * (1 - 1 / scorer.history) + ended * (run - 1)
            occasions = occasions * (1 - 1 / scorer.history) + ended * run
            run = new_run
            evidence_average, evidence_long = new_evidence_average, new_evidence_long
    return score, likelihood, surprise, flag, onset
