"""From forecast residuals to anomaly scores, likelihoods and flags, online and per stream.

Score direction: high means anomalous, for the raw score and the likelihood alike.

The raw score of a reading is the root mean square of its standardized residuals,
``sqrt(mean_f(((x_f - forecast_f) / forecast_scale_f) ** 2))``: about 1 for a reading the
model expected, much larger for one it did not. Because the model predicts its own
uncertainty, a noisy channel is not flagged merely for being noisy.

The anomaly likelihood combines two tails, and the smaller (more surprising) one counts:

* the forecast tail follows Numenta's anomaly likelihood (Ahmad, Lavin, Purdy, Agha,
  "Unsupervised real-time anomaly detection for streaming data", Neurocomputing 262, 2017):
  a short moving average of raw scores is compared with the stream's own long-run
  distribution of that average, as the Gaussian probability of seeing a value at least that
  high. Unlike Numenta's windowed estimate, the long-run mean and variance are exponentially
  weighted (with a running mean until ``history`` scores exist);
* the level tail is a windowed Gaussian on the readings themselves (NAB's
  "windowedGaussian" baseline, with an exponential window of about ``level_history``
  readings): each channel's normalized reading against that channel's long-run mean and
  standard deviation, two-sided, the most extreme channel's tail multiplied by the number of
  channels (Bonferroni). It catches what a persistence-based forecaster forgives: a level far
  outside the stream's usual range that is reached gradually, or held.

The likelihood is ``1 - tail``. The surprise, ``-log10(tail)``, carries the same information
with resolution where float32 likelihoods round to 1 (3 is a likelihood of 0.999, 5 of
0.99999); it is capped at 30.

The onset is the surprise of a reading that tops the stream's recent peak surprise, and 0 for
every other reading and during the learning period; the peak follows the surprise up and
otherwise halves every ``refractory`` readings. A burst of surprise therefore reports its
first reading (and any later, higher one) once instead of along its whole length, and a
plateau or a slow decline of the surprise reports nothing, as alarms should: NAB charges
every flagged reading outside a window and rewards only the earliest inside one, and on the
NAB corpus under NAB's protocol the onset scores far better than the surprise (the
evaluation's anomaly score is the onset).
Thresholding the onset at ``s`` gives an alarm at a reading whose surprise ``x`` reaches ``s``
unless a surprise of at least ``x * 2 ** ((k - 1) / refractory)`` came ``k`` readings before.

When it works: residuals of normal behaviour are roughly stationary per stream, so a burst of
surprise stands out against the stream's own history, and a new level stands out against
the stream's usual range. When it fails: during a stream's first ``learning_period``
readings nothing is flagged; a slow drift that the long-run statistics absorb faster than it
grows is never flagged; a stream whose normal behaviour is itself bursty needs a higher
threshold; a stream with a strong daily cycle and a short history has a wide level spread,
so a level anomaly within the cycle's range is left to the forecast; an anomaly within
``refractory`` readings after a larger one has no onset (its surprise and flag still show).
Cost: O(channels) per reading; ``2 * channels + 5`` floats of state (with the count).
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class ScorerConfig:
    """How raw scores become likelihoods and flags.

    Args:
        average_span: the short moving average covers about this many raw scores
            (exponential weights ``2 / (span + 1)``; Numenta averages 10).
        history: the long-run statistics remember about this many readings.
        learning_period: readings of a new stream during which it is never flagged and its
            likelihood is reported as 0.5.
        threshold: a reading is flagged when its likelihood is at least this.
        min_sigma: floor of the long-run standard deviation, so a stream that has been
            perfectly predictable does not flag its first tiny surprise.
        score_cap: raw scores above this count as this much in the statistics, so one
            enormous outlier does not blind the stream for long afterwards.
        level_history: the long-run mean and variance of each channel's (normalized) level
            remember about this many readings; ``min_sigma`` also floors their deviation.
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
    refractory: int = 300

    def __post_init__(self) -> None:
        for name in ("average_span", "history", "level_history", "refractory"):
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

# Tails below this count as this; -log10 of it caps the surprise.
MIN_TAIL = 1e-30
MAX_SURPRISE = 30.0


def upper_tail(ops, z):
    """P(Z >= z) for a standard normal Z, accurate for large z (no 1 - x cancellation)."""
    x = ops.abs(z) * (1.0 / math.sqrt(2.0))
    t = 1.0 / (1.0 + _AS_P * x)
    poly = t * (_AS_A[0] + t * (_AS_A[1] + t * (_AS_A[2] + t * (_AS_A[3] + t * _AS_A[4]))))
    half_erfc = 0.5 * poly * ops.exp(-x * x)
    return ops.where(z >= 0, half_erfc, 1.0 - half_erfc)
