"""The scorer's settings: how readings become likelihoods, flags and onsets.

Kept apart from :mod:`detector.scorer`, whose formulas read them, so the settings tree, the
artifact and the trainer can hold a configuration without the scoring code.
"""

from __future__ import annotations

import dataclasses
import math
import statistics


@dataclasses.dataclass(frozen=True)
class ScorerConfig:
    """How readings and raw scores become likelihoods and flags.

    Args:
        average_span: the short moving averages (of raw scores, and of surprises for the
            persistence test) cover about this many readings (exponential weights
            ``2 / (span + 1)``; Numenta averages 10).
        history: the long-run statistics remember about this many readings.
        learning_period: readings of a new stream during which it is never flagged and its
            likelihood is reported as 0.5; also how long a fault stays flagged before it is
            taken as the new normal.
        threshold: a reading is flagged when its likelihood is at least this.
        min_sigma: floor of the forecast test's long-run deviation (raw-score units), so a
            stream the model has predicted perfectly does not flag its first tiny error.
            (The other tests' variances are floored only at float32's resolution: one
            model's normalization serves streams of very different units.)
        score_cap: raw scores above this count as this much in the statistics, so one
            enormous outlier does not blind the stream for long afterwards.
        level_history: the long-run mean and variance of each channel's (normalized) level
            remember about this many readings.
        variability_span: the short-run mean square of changes covers about this many
            readings (its degrees of freedom in the variability test).
        refractory: unflagged readings in which a stream's recent surprise peak halves; the onset
            reports a reading only when its surprise tops that decayed peak (after a
            report, twice the reported surprise, decayed).
        long_average_span: the persistence test's second, longer average of surprises covers
            about this many readings (more than ``average_span``; ten times it by
            default): a fault whose readings are each mildly unusual stands out in an
            average of many, long before the learning period would take it as normal.
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
    long_average_span: int = 100

    def __post_init__(self) -> None:
        for name in ("average_span", "long_average_span", "history", "level_history", "refractory",
                     "variability_span"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, received: {value!r}")
        if self.long_average_span <= self.average_span:
            raise ValueError(
                f"`long_average_span` must be greater than `average_span` "
                f"({self.average_span}), received: {self.long_average_span!r}")
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
        """Factor the recent surprise peak is multiplied by at each unflagged reading."""
        return 0.5 ** (1.0 / self.refractory)

    @property
    def average_weight(self) -> float:
        return 2.0 / (self.average_span + 1.0)

    @property
    def long_average_weight(self) -> float:
        return 2.0 / (self.long_average_span + 1.0)

    @property
    def flag_chi2(self) -> float:
        """The squared two-sided normal deviate whose tail is ``1 - threshold``."""
        return statistics.NormalDist().inv_cdf(1.0 - (1.0 - self.threshold) / 2.0) ** 2

    @property
    def variability_weight(self) -> float:
        return 2.0 / (self.variability_span + 1.0)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ScorerConfig:
        return cls(**data)
