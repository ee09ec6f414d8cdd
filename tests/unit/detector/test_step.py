"""The vectorized streaming step equals the Keras forecaster, and its state is portable."""

from __future__ import annotations

import dataclasses
import math
import statistics

import numpy as np
import pytest

from detector.array_ops import activation_name
from detector.model import ForecasterConfig, step_params
from detector.scorer_config import ScorerConfig
from detector.state import StateLayout
from detector.step import StreamingStep
from tests.unit.detector.conftest import Recording, keras_forecasts, make_recording, scaler_for


def run_step(step: StreamingStep, recording: Recording):
    """Feeds every stream's readings in time order; returns per-step results and states."""
    streams, steps, _ = recording.values.shape
    state = step.layout.initial(streams)
    results, states = [], []
    for t in range(steps):
        result, state = step(recording.values[:, t], recording.timestamps_ms[:, t], state)
        results.append(result)
        states.append(state)
    return results, states


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


def test_step_equals_keras_model_over_the_same_sequences(forecaster, recording, step, scorer):
    _, model = forecaster
    mean_ref, scale_ref = keras_forecasts(model, step.scaler, recording)
    results, states = run_step(step, recording)
    fields = step.layout.fields
    for t, state in enumerate(states):
        np.testing.assert_allclose(state[:, fields["forecast_mean"]], mean_ref[:, t],
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(state[:, fields["forecast_scale"]], scale_ref[:, t],
                                   rtol=1e-5, atol=1e-5)

    normalized = step.scaler.normalize(recording.values)
    score_ref, likelihood_ref, surprise_ref, flag_ref, onset_ref = reference_scores(
        mean_ref.astype(np.float64), scale_ref.astype(np.float64), normalized, scorer,
        recording.timestamps_ms, clip=step.scaler.clip)
    score = np.stack([r.score for r in results], axis=1)
    likelihood = np.stack([r.likelihood for r in results], axis=1)
    np.testing.assert_allclose(score, score_ref, rtol=1e-5, atol=1e-5)
    # The step's normal tail (Abramowitz & Stegun) is within 1.5e-7 of erfc, but its
    # relative error in deep tails feeds the persistence test's averages of surprises and
    # their learned spread (largest difference seen 1.03e-4; with the step's own tail
    # function in the reference, 2.4e-6).
    np.testing.assert_allclose(likelihood, likelihood_ref, rtol=1e-4, atol=2e-4)
    # The tail approximation is exact to 1.5e-7 absolute; deep tails differ relatively, which
    # -log10 turns into a bounded offset (0.15 at most), and the ordering must agree.
    surprise = np.stack([r.surprise for r in results], axis=1)
    np.testing.assert_allclose(surprise, surprise_ref, atol=0.15)
    ranked = surprise.ravel()[np.argsort(surprise_ref, axis=None, kind="stable")]
    assert np.all(np.diff(ranked) >= -1e-3)
    flags = np.stack([r.flag for r in results], axis=1)
    # A likelihood within float error of the threshold may fall either way; nothing else may.
    decided = np.abs(likelihood_ref - scorer.threshold) > 1e-5
    np.testing.assert_array_equal(flags[decided], flag_ref[decided])
    assert flag_ref.any() and (~flag_ref).any(), "the recording should exercise both outcomes"
    tops = np.stack([r.top_channel for r in results], axis=1)
    assert tops.dtype == np.int32 and tops.min() >= 0 and tops.max() < 3
    # The onset rule, applied to the step's own surprises in float64, where the comparison
    # with the decayed peak is not within float error; and to the reference surprises.
    onset = np.stack([r.onset for r in results], axis=1)
    _, _, _, _, own_onset = reference_scores(
        mean_ref.astype(np.float64), scale_ref.astype(np.float64), normalized, scorer,
        recording.timestamps_ms, surprises=surprise.astype(np.float64), clip=step.scaler.clip)
    peak = np.zeros_like(own_onset)  # the peak each surprise is compared with
    for t in range(1, peak.shape[1]):
        raised = np.where(own_onset[:, t - 1] > 0, 2.0, 1.0) * surprise[:, t - 1]
        decay = np.where(flags[:, t - 1], 1.0, scorer.peak_decay)
        peak[:, t] = np.maximum(peak[:, t - 1] * decay, raised)
    clear = np.abs(surprise - peak) > 1e-4
    np.testing.assert_allclose(onset[clear], own_onset[clear], atol=1e-6)
    np.testing.assert_allclose(onset, onset_ref, atol=0.15)
    assert (onset_ref > 0).any() and (onset_ref == 0).any()


def test_streams_are_independent_of_batch_composition(step, recording):
    """A stream's results do not depend on which other streams share its calls."""
    results, _ = run_step(step, recording)
    whole = np.stack([r.score for r in results], axis=1)
    streams, steps, _ = recording.values.shape
    alone = np.zeros_like(whole)
    state = step.layout.initial(streams)
    rng = np.random.default_rng(0)
    for t in range(steps):
        # Each stream's reading t arrives in a random subset, in random order.
        order = rng.permutation(streams)
        for chunk in np.array_split(order, rng.integers(1, streams + 1)):
            if chunk.size == 0:
                continue
            result, new = step(recording.values[chunk, t], recording.timestamps_ms[chunk, t],
                               state[chunk])
            state[chunk] = new
            alone[chunk, t] = result.score
    np.testing.assert_array_equal(alone, whole)


def test_state_round_trips_through_bytes_mid_stream(step, recording):
    """Checkpoint after 17 readings, restore from bytes, continue: identical to no restore."""
    results, states = run_step(step, recording)
    blob = np.ascontiguousarray(states[16], dtype="<f4").tobytes()  # as the changelog holds it
    assert len(blob) == recording.values.shape[0] * step.layout.record_bytes
    restored = np.frombuffer(blob, dtype="<f4").reshape(-1, step.layout.size).astype(np.float32)
    np.testing.assert_array_equal(restored, states[16])
    for t in range(17, recording.values.shape[1]):
        result, restored = step(recording.values[:, t], recording.timestamps_ms[:, t], restored)
        np.testing.assert_array_equal(result.score, results[t].score)
        np.testing.assert_array_equal(restored, states[t])


def test_state_bytes_per_stream_for_four_channels_is_small():
    config = ForecasterConfig(channels=4)
    layout = StateLayout(channels=4, input_width=config.input_width,
                         memory_units=config.memory_units)
    # A million streams fit in a GiB of state (the hourly means are most of it).
    assert layout.record_bytes <= 1024


def test_step_does_not_modify_its_input_state(step, recording):
    state = step.layout.initial(recording.values.shape[0])
    before = state.copy()
    step(recording.values[:, 0], recording.timestamps_ms[:, 0], state)
    np.testing.assert_array_equal(state, before)


def test_step_rejects_wrong_shapes(step, recording):
    state = step.layout.initial(5)
    with pytest.raises(ValueError, match=r"values: expected \[batch, 3\], received \[5, 2\]"):
        step(recording.values[:, 0, :2], recording.timestamps_ms[:, 0], state)
    with pytest.raises(ValueError, match="state records: expected float32"):
        step(recording.values[:, 0], recording.timestamps_ms[:, 0], state[:, :-1])
    with pytest.raises(ValueError, match="one record per reading"):
        step(recording.values[:, 0], recording.timestamps_ms[:, 0], state[:3])


def test_new_streams_warm_up_before_flagging(step, recording):
    huge = make_recording(streams=2, steps=4, seed=9)
    huge.values[:, 2:] += 1e4  # an enormous jump inside the learning period
    results, _ = run_step(step, huge)
    assert all(not r.flag.any() for r in results)
    assert all(np.all(r.likelihood == 0.5) for r in results)
    assert results[2].score.min() > 100  # the raw score still shows the surprise


def test_an_obvious_spike_after_warm_up_is_flagged_on_its_channel(forecaster, scorer):
    _, model = forecaster
    quiet = make_recording(streams=3, steps=60, seed=21)
    step = StreamingStep(step_params(model), scaler_for(quiet), scorer)
    quiet.values[1, 50, 2] += 200.0
    results, _ = run_step(step, quiet)
    assert results[50].flag[1]
    assert results[50].top_channel[1] == 2
    assert results[50].score[1] > 10 * np.median([r.score[1] for r in results[10:50]])


@pytest.mark.parametrize("name", ["relu", "tanh", "cellwatch>elu_sigmoid",
                                  {"module": None, "class_name": "function",
                                   "config": "elu_sigmoid", "registered_name": "function"}])
def test_activation_names_resolve(name):
    assert activation_name(name) in {"relu", "tanh", "elu_sigmoid"}


def test_unsupported_activation_is_named():
    with pytest.raises(ValueError, match="activation 'selu' cannot run in the streaming step"):
        activation_name("selu")


def test_large_batches_are_chunked_without_changing_results(step, recording, monkeypatch):
    streams = recording.values.shape[0]
    state = step.layout.initial(streams)
    whole, whole_state = step(recording.values[:, 0], recording.timestamps_ms[:, 0], state)
    monkeypatch.setattr(step, "chunk", 2)  # 5 streams -> chunks of 2, 2 and 1
    chunked, chunked_state = step(recording.values[:, 0], recording.timestamps_ms[:, 0], state)
    np.testing.assert_array_equal(chunked_state, whole_state)
    for name in ("score", "likelihood", "surprise", "flag", "top_channel"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name))


def _quiet_state(step: StreamingStep, normalized: np.ndarray, peak: float) -> np.ndarray:
    """One record past its learning period whose forecast is exactly ``normalized`` (raw score
    0, forecast tail 0.5), whose levels have mean 0 and variance 1 (and never been seen at
    this hour), whose changes are as usual, whose calibration and persistence are at their
    Gaussian starting values, and recent peak ``peak``."""
    f = step.layout.fields
    state = step.layout.initial(1)
    # Every channel moved by 1 from the previous reading, as it usually does: the
    # variability test sees nothing unusual.
    clipped = np.clip(normalized, -step.scaler.clip, step.scaler.clip)
    state[0, f["reading_t1"]] = clipped - 1.0
    state[0, f["change_short"]] = 1.0
    state[0, f["change_long"]] = 1.0
    state[0, f["forecast_mean"]] = normalized
    state[0, f["forecast_scale"]] = 1.0
    state[0, f["scale_ratio"]] = 1.0
    state[0, f["score_var"]] = 1.0
    state[0, f["level_var"]] = 1.0
    state[0, f["tail_rate"]] = 1e-3
    state[0, f["tail_excess"]] = 1e-3 / math.log(10)
    uncensored_share = 1 - math.exp(-2 * math.log(10))
    state[0, f["exceed_rate"]] = 0.1
    state[0, f["uncensored_rate"]] = 0.1 * uncensored_share
    state[0, f["excess_rate"]] = 0.1 / math.log(10) * uncensored_share
    state[0, f["evidence_average"]] = 1.0
    state[0, f["evidence_average_long"]] = 1.0
    weight = step.scorer.average_weight
    state[0, f["evidence_spread"]] = weight / (2 - weight)  # as independent readings'
    state[0, f["surprise_peak"]] = peak
    state[0, f["count"]] = 1000.0
    return state


def test_level_tail_and_onset_by_hand(step):
    """Channel 1 four standard deviations above its long-run level: the level test's tail is
    3 channels x P(|Z| >= 4) = 3 * erfc(4 / sqrt(2)), unchanged by a calibration at its
    Gaussian start; the reading's single tail is that times 5 families of tests (the level
    test is one on its own); the persistence test
    averages it in over two spans; the reading's tail is the smallest times 3. The onset
    reports the surprise only above the stored peak (not above the peak decayed by this
    reading, and a surprise held at its peak is no onset); a reported surprise raises the
    peak to twice itself; the peak and the level statistics update as documented."""
    scaler = step.scaler
    normalized = np.array([0.0, 4.0, 0.0], dtype=np.float32)
    raw = (np.asarray(scaler.median) + np.asarray(scaler.scale) * normalized)[None, :]
    single = 5 * 3 * math.erfc(4 / math.sqrt(2))
    counted = min(-math.log(single), -math.log(1 - 0.9))  # threshold 0.9 in the fixture
    average = 1 + 0.4 * (counted - 1)  # average_span 4 in the fixture
    long_average = 1 + 2 / 101 * (counted - 1)  # long_average_span 100

    def chi2_mean_tail(ratio, degrees):
        spread = 2 / (9 * degrees)
        return 0.5 * math.erfc(
            (ratio ** (1 / 3) - (1 - spread)) / math.sqrt(spread) / math.sqrt(2))

    # Independent readings: 2 * span degrees of freedom.
    persistence = min(chi2_mean_tail(average, 8), chi2_mean_tail(long_average, 200))
    tail = 3 * min(single, persistence)  # 3.4e-3
    expected = -math.log10(tail)
    decay = 0.5 ** (1 / 4)  # refractory 4 in the fixture
    between = 2.9  # decays below the surprise, stored above it
    assert between * decay < expected < between
    f = step.layout.fields
    for peak, expect_onset in ((1.0, True), (between, False), (5.0, False)):
        state = _quiet_state(step, normalized, peak)
        result, new = step(raw, np.array([1_700_000_000_000]), state)
        assert result.score[0] == pytest.approx(0.0, abs=1e-5)
        assert result.likelihood[0] == pytest.approx(1 - tail, abs=2e-6)
        assert result.surprise[0] == pytest.approx(expected, abs=1e-3)
        assert result.flag[0]
        assert result.onset[0] == (pytest.approx(expected, abs=1e-3) if expect_onset else 0.0)
        # A reported surprise raises the peak to twice itself.
        raised = 2 * expected if expect_onset else expected
        assert new[0, f["surprise_peak"]][0] == pytest.approx(
            max(raised, peak), abs=1e-3)  # flagged: the peak does not decay
        # Flagged: the statistics of normal behaviour do not learn from it.
        np.testing.assert_array_equal(new[0, f["level_mean"]], 0.0)
        np.testing.assert_array_equal(new[0, f["level_var"]], 1.0)
        assert new[0, f["flagged_run"]][0] == 1.0


def test_a_held_level_shift_has_one_onset(forecaster, scorer):
    """A stream jumps to a far level and stays: the surprise stays high for a while, the
    onset reports the jump and then nothing while the surprise decays."""
    _, model = forecaster
    quiet = make_recording(streams=2, steps=80, seed=21)
    step = StreamingStep(step_params(model), scaler_for(quiet), scorer)
    quiet.values[0, 50:, :] += 500.0
    results, _ = run_step(step, quiet)
    onset = np.array([r.onset[0] for r in results])
    surprise = np.array([r.surprise[0] for r in results])
    assert onset[50] == surprise[50] > 5
    assert surprise[51] > 1.3  # still a likelihood over 0.95 ...
    assert np.all(onset[51:55] == 0.0)  # ... but no new onset within a refractory period


def test_a_climbing_surprise_is_reported_when_it_doubles(forecaster, scorer):
    """A stream drifts further from its level with every reading: its surprise climbs for
    many readings, and the onset reports it only when the surprise has doubled since the
    last report, a few times instead of at every reading."""
    _, model = forecaster
    # A seed whose quiet readings hold no surprise that would mask the climb's start for
    # the long refractory time used here (with seed 21 one does, for one of the models).
    quiet = make_recording(streams=2, steps=120, seed=22)
    slow = dataclasses.replace(scorer, refractory=1000)
    step = StreamingStep(step_params(model), scaler_for(quiet), slow)
    quiet.values[0, 50:, :] += 0.5 * np.arange(70)[:, None] * quiet.values[0, :50].std(axis=0)
    results, _ = run_step(step, quiet)
    onset = np.array([r.onset[0] for r in results])[50:]
    surprise = np.array([r.surprise[0] for r in results])[50:]
    climbing = np.flatnonzero(surprise > 1.0)
    assert len(climbing) > 20 and surprise[-1] > 4 * surprise[climbing[0]]
    reports = onset[onset > 0]
    # Many readings climb above the first report, yet only when the surprise has doubled
    # is it reported again: a few reports (log2 of the climb), not one per reading.
    assert np.count_nonzero(surprise > reports[0]) >= 8
    assert 1 <= len(reports) <= 4
    assert np.all(reports[1:] >= 2.0 * reports[:-1] * slow.peak_decay ** 70)
