"""From forecast residuals to anomaly scores, likelihoods and flags, online and per stream.

Score direction: high means anomalous, for the raw score and the likelihood alike.

The raw score of a reading is the root mean square of its standardized residuals,
``sqrt(mean_f(((x_f - forecast_f) / forecast_scale_f) ** 2))``: about 1 for a reading the
model expected, much larger for one it did not. Because the model predicts its own
uncertainty, a noisy channel is not flagged merely for being noisy.

The anomaly likelihood follows Numenta's anomaly likelihood (Ahmad, Lavin, Purdy, Agha,
"Unsupervised real-time anomaly detection for streaming data", Neurocomputing 262, 2017):
a short moving average of raw scores is compared with the stream's own long-run
distribution of that average, and the likelihood is the Gaussian probability of seeing a
value at most that high. The surprise, ``-log10(1 - likelihood)``, carries the same
information with resolution where float32 likelihoods round to 1 (3 is a likelihood of
0.999, 5 of 0.99999); it is capped at 30. Unlike Numenta's windowed estimate, the long-run
mean and variance here are exponentially weighted (with a running mean until ``history``
scores exist), so each stream's statistics fit in three floats of its state record.

When it works: residuals of normal behaviour are roughly stationary per stream, so a burst of
surprise stands out against the stream's own history. When it fails: during a stream's first
``learning_period`` readings nothing is flagged; a slow drift that the long-run statistics
absorb faster than it grows is never flagged; a stream whose normal behaviour is itself
bursty needs a higher threshold. Cost: O(channels) per reading and four floats of state.
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
    """

    average_span: int = 10
    history: int = 2000
    learning_period: int = 300
    threshold: float = 0.999
    min_sigma: float = 0.05
    score_cap: float = 10.0

    def __post_init__(self) -> None:
        for name in ("average_span", "history"):
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
