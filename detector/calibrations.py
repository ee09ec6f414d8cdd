"""Each test's per-stream calibration and the far tail's: what a record holds of them, and
how they learn from a reading.

The formulas that apply them (peaks over threshold, Pickands 1975; Siffer et al., KDD 2017)
are in :mod:`detector.tail_probabilities`; why each learns from what it does is in
:mod:`detector.scorer`'s docstring and in :meth:`Calibrations.learn`'s.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from detector.evidence import TESTS, ReadingContext, running_weight
from detector.scorer_config import ScorerConfig
from detector.tail_probabilities import (
    CALIBRATION_CENSOR,
    CALIBRATION_EXCESS,
    CALIBRATION_PRIOR_RUNS,
    CALIBRATION_RATE,
    MAX_SURPRISE,
    TAIL_LEVEL,
    TAIL_PRIOR_READINGS,
    TAIL_RATE,
    UNCENSORED_SHARE,
)


def calibration_learns(ops, scorer: ScorerConfig, flagged_run):
    """1.0 where the reading-by-reading calibrations learn: unflagged, the first of a run
    of flagged readings, or flagged for longer than the learning period."""
    return ops.indicator(ops.logical_or(flagged_run <= 1.0,
                                        flagged_run > float(scorer.learning_period)))


class Calibrations(NamedTuple):
    """Each test's peaks-over-threshold calibration and the far tail's, as the stream's
    record holds them (the priors' values for a stream's first reading)."""

    exceed_rate: Any  # [B, tests]
    uncensored_rate: Any  # [B, tests]
    excess_rate: Any  # [B, tests]
    cluster_progress: Any  # [B, tests - 1] see learn
    tail_rate: Any  # [B]
    tail_excess: Any  # [B]
    tail_run_peak: Any  # [B] the open cluster's peak (0: none), see learn
    tail_run_gap: Any  # [B] readings since the open cluster's last surprise above 3
    tail_weight: Any  # [B] the far tail's running weight

    @classmethod
    def read(cls, ops, scorer: ScorerConfig, f, state, reading: ReadingContext) -> Calibrations:
        first = reading.first
        return cls(
            ops.where(first[:, None], CALIBRATION_RATE, state[:, f["exceed_rate"]]),
            ops.where(first[:, None], CALIBRATION_RATE * UNCENSORED_SHARE,
                      state[:, f["uncensored_rate"]]),
            ops.where(first[:, None], CALIBRATION_RATE * CALIBRATION_EXCESS * UNCENSORED_SHARE,
                      state[:, f["excess_rate"]]),
            state[:, f["cluster_progress"]],
            ops.where(first, TAIL_RATE, state[:, f["tail_rate"]][:, 0]),
            ops.where(first, TAIL_RATE * CALIBRATION_EXCESS, state[:, f["tail_excess"]][:, 0]),
            state[:, f["tail_run_peak"]][:, 0],
            state[:, f["tail_run_gap"]][:, 0],
            # A rate near one in a thousand needs at least a thousand readings of memory.
            running_weight(ops, reading.count + TAIL_PRIOR_READINGS,
                           max(scorer.history, TAIL_PRIOR_READINGS)))

    def learn(self, ops, scorer: ScorerConfig, reading: ReadingContext, raw_surprises,
              ended_surprise, ended, repeats, single_raw, learned_from, judged) -> list:
        """``[exceed_rate, uncensored_rate, excess_rate, cluster_progress, tail_rate,
        tail_excess, tail_run_peak, tail_run_gap]`` of the next record; ``learned_from``
        ``[B]`` is 1.0 where the reading-by-reading calibrations learn (see
        :func:`calibration_learns`), ``judged`` ``[B]`` true past the learning period.

        Over readings, from the prior's readings; the repeats test's over the runs the
        follow counts learn from (a run of r repeats ends with r - 1 hits), from the prior's
        runs, with the surprise the ended run had reached. The reading-by-reading ones
        describe how the tests behave on this stream, rare large surprises included, so
        they learn from every unflagged reading and from the first of each run of flagged
        ones: learning only from unflagged ones would keep a stream whose normal spikes are
        flagged from ever learning that they are normal, and learning from a whole run
        would let a lasting fault teach that it is normal.

        The Gaussian tests' excesses are declustered, in a bounded form of runs
        declustering (Coles, "An Introduction to Statistical Modeling of Extreme Values",
        2001, 5.3.2): a cluster of consecutive readings above 1 teaches the excess its first
        ``average_span`` readings as they come and, if it lasts longer, its peak once, when
        it has ended. A slow anomaly that is not yet flagged (a drift, a valve closing)
        keeps a test above 1 for hundreds of readings; learning each of them taught the
        calibration, while the anomaly lasted, that large surprises are usual on this
        stream, and hid the anomaly (measured on the demo: a drift's season test went from
        a slope of 0.9 to 0.4 in 179 readings). What lasts longer than the persistence
        test's windows is that test's to judge. ``cluster_progress`` is 0 outside a cluster,
        ``k`` in its ``k``-th reading learned from (up to ``average_span``), and
        ``average_span`` plus the peak so far beyond that."""
        prior_weight = learned_from * reading.weights.calibration
        runs = ops.max_of_rows(repeats.follow_occasions - repeats.follow_hits)
        run_weight = ops.max_of_rows(ended) * running_weight(
            ops, runs + CALIBRATION_PRIOR_RUNS + 1.0, scorer.history)
        weights = ops.concat([prior_weight[:, None]] * (len(TESTS) - 1)
                             + [run_weight[:, None]], axis=-1)
        learned = ops.concat([raw_surprises[:, :-1], ended_surprise[:, None]], axis=-1)
        new_exceed_rate = self.exceed_rate + weights * (
            ops.indicator(learned > 1.0) - self.exceed_rate)

        span = float(scorer.average_span)
        gaussian = raw_surprises[:, :-1]
        in_cluster = gaussian > 1.0
        progress = self.cluster_progress
        peak = progress - span  # the cluster's peak so far, once beyond the span
        beyond_span = progress >= span
        learns = learned_from[:, None]
        new_progress = ops.where(in_cluster, ops.where(
            beyond_span, span + ops.maximum(peak, gaussian * learns),
            progress + learns), 0.0)
        long_ended = ops.logical_and(ops.logical_not(in_cluster), progress > span)
        excess_learned = ops.concat([ops.where(long_ended, peak, gaussian),
                                     ended_surprise[:, None]], axis=-1)
        gaussian_weight = prior_weight[:, None] * (1.0 - ops.indicator(
            ops.logical_and(in_cluster, beyond_span)))
        excess_weights = ops.concat([gaussian_weight, run_weight[:, None]], axis=-1)
        exceeded = ops.indicator(excess_learned > 1.0)
        uncensored = exceeded * ops.indicator(excess_learned < 1.0 + CALIBRATION_CENSOR)
        new_uncensored_rate = self.uncensored_rate + excess_weights * (
            uncensored - self.uncensored_rate)
        new_excess_rate = self.excess_rate + excess_weights * (
            exceeded * ops.minimum(excess_learned - 1.0, CALIBRATION_CENSOR)
            - self.excess_rate)

        # The far tail, declustered by runs: a cluster of single surprises above its level
        # ends after `average_span` readings at or below it and then teaches its peak,
        # once. The peak is over the readings the calibrations learn from, after the
        # learning period, so a lasting fault's later readings do not teach it; the reading
        # that ends a cluster teaches it even when it is flagged.
        tail_learned = ops.minimum(single_raw, MAX_SURPRISE)
        above = tail_learned > TAIL_LEVEL
        judged_weight = ops.indicator(judged)
        open_cluster = self.tail_run_peak > TAIL_LEVEL
        gap = self.tail_run_gap + 1.0
        cluster_ends = ops.logical_and(ops.logical_and(open_cluster, ops.logical_not(above)),
                                       gap >= float(scorer.average_span))
        new_run_peak = ops.where(above, ops.maximum(
            self.tail_run_peak, tail_learned * learned_from * judged_weight),
            ops.where(cluster_ends, 0.0, self.tail_run_peak))
        stays_open = ops.logical_and(open_cluster, ops.logical_not(cluster_ends))
        new_run_gap = ops.where(ops.logical_and(stays_open, ops.logical_not(above)), gap, 0.0)
        tail_exceeded = ops.indicator(cluster_ends)
        tail_weight = ops.maximum(learned_from, tail_exceeded) * self.tail_weight
        new_tail_rate = self.tail_rate + tail_weight * (tail_exceeded - self.tail_rate)
        new_tail_excess = self.tail_excess + tail_weight * (
            tail_exceeded * (self.tail_run_peak - TAIL_LEVEL) - self.tail_excess)
        return [new_exceed_rate, new_uncensored_rate, new_excess_rate, new_progress,
                new_tail_rate[:, None], new_tail_excess[:, None], new_run_peak[:, None],
                new_run_gap[:, None]]
