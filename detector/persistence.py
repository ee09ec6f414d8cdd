"""The persistence test: what single readings cannot show, a run of moderate surprises.

:func:`detector.scorer.assess` feeds it each reading's calibrated single surprise (counted
up to the flag threshold); it judges the stream's recent averages of them, and learns the
short average's spread from the readings the calibrations learn from. What the test is and
what it changed are in :mod:`detector.scorer`'s docstring; the reasoning behind its
formulas is in :func:`persistence_test`'s.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np

from detector.scorer_config import ScorerConfig
from detector.tail_probabilities import chi2_mean_z, upper_tail

# Lag-one correlations of the evidence above this count as this (k readings stay worth
# at least k / 39 independent ones).
MAX_LAG_CORRELATION = 0.95


class Persistence(NamedTuple):
    """The persistence test's verdict on a reading, and its averages after it."""

    tail: Any  # [B] the smaller of the two spans' tails
    average: Any  # [B] the short average of evidence, this reading included
    long_average: Any  # [B] the long one
    spread: Any  # [B] the short average's variance, as the record held it


def persistence_test(ops, scorer: ScorerConfig, f, state, first, counted) -> Persistence:
    """The persistence test at its two spans, from this reading's counted evidence.

    A fault that keeps a stream moderately surprising for many readings is as anomalous
    as one very surprising reading. Under normal behaviour the calibrated single surprise
    times ln 10 is at most exponential with mean 1 (the Bonferroni over the tests makes it
    smaller), so an exponential average of n independent ones has mean 1 and variance
    ``w / (2 - w)`` for its weight ``w = 2 / (n + 1)``, about ``chi2(2n) / 2n`` (Fisher's
    combination of p-values), judged by Wilson-Hilferty. Two spans: ``average_span``
    readings catch a burst of moderate surprises; ``long_average_span`` readings a fault
    whose readings are each only mildly unusual but which lasts (on SKAB a valve closing,
    with each test at a calibrated surprise near 1.5 for the fault's first ~60 readings).

    Consecutive surprises are correlated (a slow error stays for a while), so the short
    average varies more than independent readings' would. Its variance is learned per
    stream (the mean square of its deviation from 1, over the readings the calibrations
    learn from) and sets its degrees of freedom directly. Read as an AR(1), whose
    exponential average of weight ``w`` has a variance ``(1 + r) / (1 - r)`` times an
    independent one's with ``r = rho (1 - w)``, the same ratio gives the lag-one
    correlation ``rho`` (at most ``MAX_LAG_CORRELATION``), which widens the long average
    too. An AR(1) understates a long memory, so a stream whose surprises wander for longer
    than the short span can still raise the long test. A stream whose normal evidence
    averages below 1 (most do: the Bonferroni over the tests, and calibrations that only
    ever lower a surprise) counts that offset as spread too, which makes both tests
    conservative: in three drifts of the demo that stay unflagged the evidence rose 2 to
    3 times over its normal 0.35-0.66 per reading, and the long test's tail stopped at
    0.004-0.007. Learning the spread around the long average instead, which drops the
    offset, made both tests fire on normal correlated streams (tried twice, the second
    time on 2026-12-01 with the known share of an independent short average's variance
    that the difference of the two averages keeps: a wandering AR(1) stream's readings
    0.45 % flagged against the threshold's 0.1 %, a stream whose hour spreads wide 10 %),
    since the difference of two averages of correlated evidence understates the short
    one's variance.
    """
    weight = scorer.average_weight
    long_weight = scorer.long_average_weight
    independent_spread = weight / (2.0 - weight)
    # The two averages side by side (adjacent in the record), each array operation done
    # once for both: a round of one stream costs per operation, whatever its width.
    previous = ops.where(first[:, None], 1.0, state[:, f["evidence_average"].start:
                                                    f["evidence_average_long"].stop])
    averages = previous + _span_weights(weight, long_weight) * (counted[:, None] - previous)
    spread = ops.where(first, independent_spread, state[:, f["evidence_spread"]][:, 0])
    inflation = ops.maximum(spread / independent_spread, 1.0)
    rho = ops.minimum((inflation - 1.0) / ((inflation + 1.0) * (1.0 - weight)),
                      MAX_LAG_CORRELATION)
    long_rho = rho * (1.0 - long_weight)
    # chi2(k) / k has variance 2 / k.
    degrees = ops.concat([
        (2.0 / (independent_spread * inflation))[:, None],
        (2.0 * (2.0 - long_weight) / long_weight * (1.0 - long_rho) / (1.0 + long_rho))[
            :, None]], axis=-1)
    tails = upper_tail(ops, chi2_mean_z(ops, averages, degrees))
    return Persistence(ops.minimum(tails[:, 0], tails[:, 1]), averages[:, 0],
                        averages[:, 1], spread)


@functools.cache
def _span_weights(weight: float, long_weight: float) -> np.ndarray:
    """The two persistence averages' weights, float32 as the step's arrays."""
    return np.array([weight, long_weight], dtype=np.float32)


def learn_spread(ops, persistence: Persistence, weight):
    """``evidence_spread`` of the next record ``[B]``: the mean square of the short
    average's deviation from 1, learned with ``weight`` ``[B]`` (the calibrations'
    running weight where they learn, else 0)."""
    deviation = persistence.average - 1.0
    return persistence.spread + weight * (deviation * deviation - persistence.spread)
