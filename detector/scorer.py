"""From readings and forecasts to anomaly scores, likelihoods and flags, online and per stream.

Score direction: high means anomalous, for the raw score, the likelihood and the surprise.

Three tests judge each reading against the stream's own history, each giving a tail
probability (how often normal behaviour would look at least this unusual):

* **forecast**: Numenta's anomaly likelihood (Ahmad, Lavin, Purdy, Agha, "Unsupervised
  real-time anomaly detection for streaming data", Neurocomputing 262, 2017). The raw score
  of a reading is the root mean square of its standardized residuals against the model's
  forecast, ``sqrt(mean_f(((x_f - forecast_f) / forecast_scale_f) ** 2))``; a short moving
  average of raw scores is compared with the stream's long-run distribution of that
  average, as the Gaussian probability of a value at least that high. Because the model
  predicts its own uncertainty, a noisy channel is not flagged merely for being noisy.
* **level**: a windowed Gaussian on the readings themselves (NAB's "windowedGaussian"
  baseline, with an exponential window of about ``level_history`` readings): each
  channel's normalized reading against its long-run mean and deviation, two-sided. It
  catches what a persistence-based forecaster forgives: a level far outside the stream's
  usual range that is reached gradually, or held.
* **variability**: each channel's short-run mean square of reading-to-reading changes
  (an exponential window of ``variability_span`` readings, ``k`` degrees of freedom)
  against its long-run mean, two-sided: for a stationary stream the ratio of the two
  variance estimates is F-distributed (``k`` degrees of freedom over the long run's), and
  Paulson's form of the Wilson-Hilferty cube-root transform turns its tails into a
  standard normal's (Wilson and Hilferty, PNAS 17, 1931; Paulson, Ann. Math. Statist. 13,
  1942); young streams, whose long-run estimate is still uncertain, get the F
  distribution's heavier tails. Its lower tail is lost
  variance: a stuck sensor, a flat line, a dropout to a constant, which the other two
  tests score as calm (a reading that is *too* predictable is never surprising to a
  one-sided residual test); its upper tail is a burst of variance or a spike.

Each two-sided per-channel test takes its most extreme channel and multiplies its tail by
``2 * channels``, and the reading's tail is the smallest of the three times 3 (Bonferroni
both times: the combined tail stays an upper bound on the probability of a false alarm).
The likelihood is ``1 - tail``; the surprise, ``-log10(tail)``, carries the same
information with resolution where float32 likelihoods round to 1 (3 is a likelihood of
0.999); it is capped at 30.

The onset is the surprise of a reading that tops the stream's recent peak surprise, and 0 for
every other reading and during the learning period; the peak follows the surprise up and
otherwise halves every ``refractory`` readings. A burst of surprise therefore reports its
first reading (and any later, higher one) once instead of along its whole length, and a
plateau or a slow decline of the surprise reports nothing, as alarms should: NAB charges
every flagged reading outside a window and rewards only the earliest inside one.
Thresholding the onset at ``s`` gives an alarm at a reading whose surprise ``x`` reaches ``s``
unless a surprise of at least ``x * 2 ** ((k - 1) / refractory)`` came ``k`` readings before.

When it works: the behaviour of normal readings (forecast errors, levels, changes) is
roughly stationary per stream, so a burst of forecast error, a level outside the usual
range, or a change in how much the stream moves stands out against the stream's own
history. When it fails: during a stream's first ``learning_period`` readings nothing is
flagged; a slow drift that the long-run statistics absorb faster than it grows is never
flagged; a stream whose normal behaviour is itself bursty needs a higher threshold; a
stream with a strong daily cycle and a short history has a wide level spread, so a level
anomaly within the cycle's range is left to the forecast; a sensor that is often constant
for ``variability_span`` readings as part of its normal work (a quantized or idle signal)
raises false alarms from the lower tail unless its long-run change variance is below
``min_sigma ** 2``; an anomaly within ``refractory`` readings after a larger one has no
onset (its surprise and flag still show).
Cost: O(channels) per reading; ``4 * channels + 5`` floats of state (with the count).
"""

from __future__ import annotations

import dataclasses
import math

# Tails below this count as this; -log10 of it caps the surprise.
MIN_TAIL = 1e-30
MAX_SURPRISE = 30.0
# The tests whose smallest tail is the reading's (the Bonferroni factor).
TESTS = ("forecast", "level", "variability")


@dataclasses.dataclass(frozen=True)
class ScorerConfig:
    """How readings and raw scores become likelihoods and flags.

    Args:
        average_span: the short moving average covers about this many raw scores
            (exponential weights ``2 / (span + 1)``; Numenta averages 10).
        history: the long-run statistics remember about this many readings.
        learning_period: readings of a new stream during which it is never flagged and its
            likelihood is reported as 0.5.
        threshold: a reading is flagged when its likelihood is at least this.
        min_sigma: floor of every long-run standard deviation (normalized units), so a
            stream that has been perfectly predictable or constant does not flag its first
            tiny surprise.
        score_cap: raw scores above this count as this much in the statistics, so one
            enormous outlier does not blind the stream for long afterwards.
        level_history: the long-run mean and variance of each channel's (normalized) level
            remember about this many readings.
        variability_span: the short-run mean square of changes covers about this many
            readings (its degrees of freedom in the variability test).
        refractory: readings in which a stream's recent surprise peak halves; the onset
            reports a reading only when its surprise tops that decayed peak.
    """

    average_span: int = 10
    history: int = 2000
    learning_period: int = 300
    threshold: float = 0.999
    min_sigma: float = 0.05
    score_cap: float = 10.0
    level_history: int = 2000
    variability_span: int = 10
    refractory: int = 300

    def __post_init__(self) -> None:
        for name in ("average_span", "history", "level_history", "refractory",
                     "variability_span"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, received: {value!r}")
        if not isinstance(self.learning_period, int) or self.learning_period < 1:
            raise ValueError(
                f"`learning_period` must be a positive integer, received: "
                f"{self.learning_period!r}")
        if not 0.5 < self.threshold < 1.0:
            raise ValueError(f"`threshold` must be in (0.5, 1), received: {self.threshold!r}")
        for name in ("min_sigma", "score_cap"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a finite number > 0, received: {value!r}")

    @property
    def peak_decay(self) -> float:
        """Factor the recent surprise peak is multiplied by at each reading."""
        return 0.5 ** (1.0 / self.refractory)

    @property
    def average_weight(self) -> float:
        return 2.0 / (self.average_span + 1.0)

    @property
    def variability_weight(self) -> float:
        return 2.0 / (self.variability_span + 1.0)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ScorerConfig:
        return cls(**data)


# Abramowitz & Stegun 7.1.26, erfc(x) ~ poly(t) * exp(-x^2) for x >= 0: |error| < 1.5e-7 in
# the likelihood; deep in the tail the relative error of the tail grows (to ~40% for x > 5)
# but stays monotone, which is what ranking and thresholds need. Written with exp only so
# NumPy and TensorFlow evaluate the very same formula (NumPy has no erf).
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def upper_tail(ops, z):
    """P(Z >= z) for a standard normal Z, accurate for large z (no 1 - x cancellation)."""
    x = ops.abs(z) * (1.0 / math.sqrt(2.0))
    t = 1.0 / (1.0 + _AS_P * x)
    poly = t * (_AS_A[0] + t * (_AS_A[1] + t * (_AS_A[2] + t * (_AS_A[3] + t * _AS_A[4]))))
    half_erfc = 0.5 * poly * ops.exp(-x * x)
    return ops.where(z >= 0, half_erfc, 1.0 - half_erfc)


def variance_ratio_z(ops, ratio, short_degrees: int, long_degrees):
    """An F-distributed variance ratio as a standard normal deviate (Paulson's approximation).

    ``ratio`` is a variance estimated from ``short_degrees`` degrees of freedom over one from
    ``long_degrees`` (an array: the long-run estimate firms up as a stream ages); for many
    long-run degrees it is Wilson-Hilferty's ``chi2(k) / k``. A young stream's long-run
    estimate is itself uncertain, and the F distribution's heavier tails keep that
    uncertainty from becoming false alarms.
    """
    short_spread = 2.0 / (9.0 * short_degrees)
    long_spread = 2.0 / (9.0 * long_degrees)
    root = ops.cbrt(ratio)
    return ((1.0 - long_spread) * root - (1.0 - short_spread)) / ops.sqrt(
        short_spread + root * root * long_spread)


def _running_weight(ops, seen, history: int):
    """A running mean's weight until ``history`` values were seen, then exponential."""
    return ops.maximum(1.0 / ops.maximum(seen, 1.0), 1.0 / history)


def assess(ops, scorer: ScorerConfig, layout, normalized, clipped, state):
    """Scores one reading per stream against its stream's statistics, and updates them.

    Args:
        ops: array functions (:class:`detector.array_ops.NumpyOps` or TensorFlow's).
        scorer: the settings.
        layout: the :class:`~detector.state.StateLayout` of ``state``.
        normalized: ``[B, F]`` the readings, normalized (unclipped).
        clipped: ``[B, F]`` the same, clipped as the model sees them.
        state: ``[B, S]`` the streams' records before this reading.

    Returns:
        ``(score, likelihood, surprise, flag, top_channel, onset, statistics)``, the last
        being the scorer's fields of the next records (``score_average`` through
        ``surprise_peak``, in layout order).
    """
    f = layout.fields
    channels = layout.channels
    count = state[:, f["count"]][:, 0]  # readings seen before this one
    has_forecast = count >= 1.0
    learning = count <= float(scorer.learning_period)
    min_var = scorer.min_sigma * scorer.min_sigma

    # Forecast: this reading against the forecast the previous reading left in the state.
    residual = (normalized - state[:, f["forecast_mean"]]) / ops.where(
        has_forecast[:, None], state[:, f["forecast_scale"]], 1.0)
    residual = ops.where(has_forecast[:, None], residual, 0.0)
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
    level_z = ops.abs(normalized - level_mean) / ops.sqrt(ops.maximum(level_var, min_var))
    level_tail = (2.0 * channels) * upper_tail(ops, ops.max(level_z, axis=1))

    # Variability: the recent mean square of changes against its long-run mean, two-sided.
    # Changes are of the clipped values, which the previous record holds as its input.
    change = clipped - state[:, f["input_t1"]][:, :channels]
    change_sq = change * change
    short = state[:, f["change_short"]]
    long = state[:, f["change_long"]]
    new_short = ops.where((count == 1.0)[:, None], change_sq,
                          short + scorer.variability_weight * (change_sq - short))
    # The long-run mean holds count - 1 changes, or about 2 * history - 1 once exponential.
    long_degrees = ops.minimum(ops.maximum(count - 1.0, 1.0), 2.0 * scorer.history - 1.0)
    variability_z = ops.abs(variance_ratio_z(
        ops, new_short / ops.maximum(long, min_var), scorer.variability_span,
        long_degrees[:, None]))
    # Until two changes are known there is no long-run mean to compare with.
    variability_z = ops.where((count >= 2.0)[:, None], variability_z, 0.0)
    variability_tail = (2.0 * channels) * upper_tail(ops, ops.max(variability_z, axis=1))

    smallest = ops.minimum(ops.minimum(forecast_tail, level_tail), variability_tail)
    tail = ops.maximum(ops.minimum(float(len(TESTS)) * smallest, 1.0), MIN_TAIL)
    tail = ops.where(learning, 0.5, tail)
    likelihood = 1.0 - tail
    surprise = ops.minimum(-ops.log10(tail), MAX_SURPRISE)
    flag = ops.logical_and(ops.logical_not(learning), tail <= 1.0 - scorer.threshold)
    # The channel that drove the deciding test.
    top_channel = ops.where(
        level_tail == smallest, ops.argmax(level_z, axis=1),
        ops.where(variability_tail == smallest, ops.argmax(variability_z, axis=1),
                  ops.argmax(ops.abs(residual), axis=1)))

    # Onset: the surprise of a reading that tops the stream's recent peak, 0 for every other
    # reading (and while learning). The peak follows the surprise up and otherwise halves
    # every `refractory` readings.
    peak = state[:, f["surprise_peak"]][:, 0]
    onset = ops.where(ops.logical_and(ops.logical_not(learning), surprise > peak), surprise, 0.0)
    new_peak = ops.maximum(surprise, peak * scorer.peak_decay)

    # Long-run statistics of the forecast test: over the averages, from the first forecast.
    weight = _running_weight(ops, count, scorer.history)
    delta = new_average - mean
    new_mean = ops.where(has_forecast, mean + weight * delta, mean)
    new_var = ops.where(has_forecast, (1.0 - weight) * (var + weight * delta * delta), var)
    new_average = ops.where(has_forecast, new_average, average)
    # The level's, over readings (this one included from the first).
    level_weight = _running_weight(ops, count + 1.0, scorer.level_history)[:, None]
    level_delta = normalized - level_mean
    new_level_mean = level_mean + level_weight * level_delta
    new_level_var = (1.0 - level_weight) * (level_var + level_weight * level_delta * level_delta)
    # The changes', over changes (the first comes with the second reading).
    change_weight = _running_weight(ops, count, scorer.history)[:, None]
    new_long = ops.where(has_forecast[:, None], long + change_weight * (change_sq - long), long)
    new_short = ops.where(has_forecast[:, None], new_short, short)

    statistics = ops.concat([
        new_average[:, None], new_mean[:, None], new_var[:, None], new_level_mean,
        new_level_var, new_short, new_long, new_peak[:, None],
    ], axis=-1)
    return score, likelihood, surprise, flag, top_channel, onset, statistics
