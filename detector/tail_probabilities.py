"""Tail probabilities of the scorer's tests, written once against the array functions.

The standard normal's upper tail (without ``1 - x`` cancellation), the Wilson-Hilferty and
Paulson transforms of chi-square and F ratios into normal deviates, and the peaks-over-
threshold calibrations that lower a test's surprise, and the reading's, on a stream whose
tails are heavier than their model's. ``ops`` is :class:`detector.array_ops.NumpyOps` or
the TensorFlow export's mirror, so the NumPy step and the exported graph evaluate the same
formulas.
"""

from __future__ import annotations

import math

# Tails below this count as this (-log10 of it caps the scorer's surprise).
MIN_TAIL = 1e-30
# The surprise's cap, -log10 of MIN_TAIL.
MAX_SURPRISE = 30.0
# Calibration: the exceedance rate of a raw surprise over 1 and the mean excess (log10 units)
# of a stream whose tests' Gaussian tails are exact; the prior counts as this many readings.
CALIBRATION_RATE = 0.1
CALIBRATION_EXCESS = 1.0 / math.log(10.0)
CALIBRATION_PRIOR_READINGS = 100.0
CALIBRATION_PRIOR_RUNS = 10.0
# Excesses above this (a surprise of 3, a one-in-a-thousand Gaussian tail) count as censored.
CALIBRATION_CENSOR = 2.0
# The share of a Gaussian test's exceedances below the censoring point.
UNCENSORED_SHARE = 1.0 - math.exp(-CALIBRATION_CENSOR / CALIBRATION_EXCESS)
# The far tail's calibration starts where the bulk's censors: surprises of at least this.
TAIL_LEVEL = 1.0 + CALIBRATION_CENSOR
# Its exceedance rate for a Gaussian test (the prior).
TAIL_RATE = 10.0 ** -TAIL_LEVEL
# The far tail's rate prior: one exceedance at the Gaussian rate.
TAIL_PRIOR_READINGS = 1.0 / TAIL_RATE


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


def chi2_mean_z(ops, ratio, degrees):
    """Wilson-Hilferty: ``ratio ~ chi2(k) / k`` as a standard normal deviate."""
    spread = 2.0 / (9.0 * degrees)
    return (ops.cbrt(ratio) - (1.0 - spread)) / ops.sqrt(spread)


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


def calibrate(ops, raw_surprises, exceed_rate, excess_rate, uncensored_rate):
    """Each test's surprise, lowered where the stream shows its tail to be too heavy.

    Peaks over threshold: the exceedances of a test's surprise over 1 (a 1-in-10 tail) are
    modelled as exponential (a generalized Pareto tail of shape 0) with the stream's own
    exceedance rate and mean excess. The mean excess is the maximum-likelihood estimate for
    exceedances censored at ``CALIBRATION_CENSOR`` (``excess_rate / uncensored_rate``): an
    anomaly's huge excess counts as a large one, not as its full size, so the few readings
    of an anomaly that are learned from cannot blunt the test. The correction only ever
    lowers a surprise: where the test exceeds 1 more often than one reading in ten, or by
    more than the Gaussian mean excess of 1 / ln 10, its surprise is scaled down to match;
    where it exceeds less, the Gaussian tail stands (a rate or an excess estimated from a
    handful of exceedances must not sharpen it).
    """
    excess = raw_surprises - 1.0
    rate_surprise = -ops.log10(ops.maximum(exceed_rate, CALIBRATION_RATE))
    gaussian_excess = CALIBRATION_EXCESS * uncensored_rate
    # A test that has not exceeded 1 for very long has its rates at 0: no evidence of a
    # heavy tail, so the slope stays 1.
    slope = ops.where(excess_rate > gaussian_excess,
                      gaussian_excess / ops.maximum(excess_rate, MIN_TAIL), 1.0)
    return ops.where(excess > 0.0, rate_surprise + excess * slope, raw_surprises * rate_surprise)


def calibrate_tail(ops, surprises, tail_rate, tail_excess, readings):
    """Surprises lowered where the stream's own far tail is heavier than their model's.

    A peaks-over-threshold fit at ``TAIL_LEVEL``, where :func:`calibrate`'s fit censors:
    the stream's rate of surprises at least that large and their mean excess above it. The
    mean excess counts ``CALIBRATION_PRIOR_RUNS`` Gaussian exceedances as its prior, so one
    huge surprise cannot teach a stream that huge surprises are normal. A stream whose
    surprises of 15 recur every day (a daily spike, a recurring burst) learns that they are
    a one-in-three-hundred event, not a one-in-10^15 one; a new, larger surprise keeps most
    of its size. Below the level the correction scales down proportionally, so the result
    stays continuous and increasing in the surprise; it never raises one.

    Args:
        surprises: ``[B]`` surprises (``-log10`` of a tail probability).
        tail_rate: ``[B]`` the stream's long-run rate of surprises above ``TAIL_LEVEL``.
        tail_excess: ``[B]`` the long-run mean of their excess over it (0 for the others).
        readings: ``[B]`` how many readings those running means hold, their prior's
            included.
    """
    rate = ops.maximum(tail_rate, TAIL_RATE)
    rate_surprise = -ops.log10(rate)
    runs = tail_rate * readings
    mean_excess = (tail_excess * readings + CALIBRATION_PRIOR_RUNS * CALIBRATION_EXCESS) / (
        runs + CALIBRATION_PRIOR_RUNS)
    slope = ops.where(mean_excess > CALIBRATION_EXCESS,
                      CALIBRATION_EXCESS / ops.maximum(mean_excess, MIN_TAIL), 1.0)
    excess = surprises - TAIL_LEVEL
    calibrated = ops.where(excess > 0.0, rate_surprise + excess * slope,
                           surprises * (rate_surprise / TAIL_LEVEL))
    return ops.minimum(surprises, calibrated)
