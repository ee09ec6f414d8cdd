"""Each channel's deviation judged given the other channels': how the season test judges a
stream of more than one channel.

A stream's channels often move together: one load drives a pump's flow, pressure and
current; a building's sensors share the weather. What the hourly profile leaves of such a
common movement (a weekly swing, an unusually warm day) widens every channel's deviations,
so a fault in one channel (a sensor drifting away, an offset) must outgrow all of it before
the per-channel tests see it. Given the other channels' deviations, the shared part is
foreseen, and what is left is the channel's own.

With ``d`` the channels' deviations from their hourly means, divided by their standard
deviations, and ``P`` the inverse of their correlation matrix, channel ``j``'s deviation
from its Gaussian regression on the others is ``(P d)_j / P_jj``, with variance
``1 / P_jj``, so its normal deviate is ``(P d)_j / sqrt(P_jj)``. The correlations are the
season test's covariances over its variances, shrunk towards none by ``F / (n + F)``, as a
prior of ``F`` readings of uncorrelated channels against the ``n`` readings learned from
(at most ``level_history``; Ledoit and Wolf, "A well-conditioned estimator for
large-dimensional covariance matrices", J. Multivariate Anal. 88, 2004, shrink towards the
identity too, with an intensity estimated from the data): the matrix's smallest eigenvalue
is then at least ``F / (n + F)``, so it inverts without a pivot near zero even when two
channels are copies of each other or a stream has fewer readings than channels.

The inverse comes from Beaton's sweep operator (Goodnight, "A tutorial on the SWEEP
operator", The American Statistician 33, 1979) written element-wise over the batch, ``F``
sweeps of ``[B, F, F]`` arrays: no LAPACK call, whose bits depend on the CPU's kernels, and
no row's result depends on the other rows of the batch. Cost: ``O(F^3)`` per reading, in
six array operations per channel (three of them on ``[B, F, F]``), and ``F (F - 1) / 2``
floats of state.

When it works: channels whose deviations from their hourly profiles are correlated, as
channels driven by one process are; with uncorrelated channels it is each channel's own
deviation. When it fails: a fault that moves the channels the way they usually move
together (a plant-wide load at an unusual hour) is foreseen given the others, and left to
the tests that judge each channel on its own (level, shift, forecast, variability); two
channels correlated only at times (one regime couples them, another does not) are judged
by their long-run correlation, which no regime has.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

# The smallest pivot, and precision, the sweep divides by: float32's relative resolution.
# The prior's share keeps every pivot above F / (n + F), far above this, unless the
# variances remember far more readings than float32 can weigh (a level_history in the
# millions): copies of one channel then still give finite deviates, not NaN.
PIVOT_FLOOR = 1e-6


@functools.cache
def pair_columns(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The two channels of each pair ``i < j``, in the record's order (row by row of the
    upper triangle): ``(first, second)``, int32 ``[F (F - 1) / 2]`` each."""
    first, second = np.triu_indices(channels, k=1)
    return first.astype(np.int32), second.astype(np.int32)


class _MatrixCells(NamedTuple):
    """Constants of an ``F x F`` matrix's cells, row by row (float32, int32 indices)."""

    pair_of_cell: np.ndarray  # [F * F] the pair each off-diagonal cell holds (0, masked, on
    # the diagonal)
    off_diagonal: np.ndarray  # [F * F] 1.0 off the diagonal
    identity: np.ndarray  # [F * F]
    diagonal: np.ndarray  # [F] the diagonal's cells
    units: np.ndarray  # [F, F] the unit vectors e_k
    twice_pivot_cells: np.ndarray  # [F, F, F] 2 e_k e_k'


@functools.cache
def _matrix_cells(channels: int) -> _MatrixCells:
    pair_of_cell = np.zeros((channels, channels), dtype=np.int32)
    first, second = pair_columns(channels)
    pair_of_cell[first, second] = np.arange(len(first))
    pair_of_cell[second, first] = np.arange(len(first))
    units = np.eye(channels, dtype=np.float32)
    return _MatrixCells(pair_of_cell.ravel(), (1.0 - units).ravel(), units.ravel(),
                        np.arange(0, channels * channels, channels + 1, dtype=np.int32),
                        units, 2.0 * units[:, :, None] * units[:, None, :])


def pair_products(ops, deviation):
    """``[B, F (F - 1) / 2]`` ``deviation_i * deviation_j`` of each pair: what the
    covariances learn."""
    first, second = pair_columns(deviation.shape[1])
    return ops.columns(deviation, first) * ops.columns(deviation, second)


def conditional_deviates(ops, var, covariance, deviation, prior_share):
    """Each channel's deviation given the other channels', as a normal deviate.

    Args:
        ops: array functions (:class:`detector.array_ops.NumpyOps` or TensorFlow's).
        var: ``[B, F]`` each channel's variance, floored above 0.
        covariance: ``[B, F (F - 1) / 2]`` each pair's covariance, in
            :func:`pair_columns`' order.
        deviation: ``[B, F]`` this reading's deviations.
        prior_share: ``[B]`` how far the correlations shrink towards none, in [0, 1).

    Returns:
        ``[B, F]`` ``|(P d)_j| / sqrt(P_jj)`` (see the module's docstring).

    Example:
        >>> import numpy as np
        >>> from detector.array_ops import NumpyOps
        >>> var = np.ones((1, 2), np.float32)
        >>> covariance = np.full((1, 1), 0.8, np.float32)
        >>> deviation = np.array([[2.0, 0.0]], np.float32)  # one channel moved alone
        >>> z = conditional_deviates(NumpyOps, var, covariance, deviation,
        ...                          np.zeros(1, np.float32))
        >>> [round(float(v), 2) for v in z[0]]  # more than its own 2 deviations
        [3.33, 2.67]
    """
    channels = deviation.shape[1]
    cells = _matrix_cells(channels)
    sd = ops.sqrt(var)
    first, second = pair_columns(channels)
    correlation = covariance / (ops.columns(sd, first) * ops.columns(sd, second)) * (
        1.0 - prior_share)[:, None]
    matrix = ops.reshape(ops.columns(correlation, cells.pair_of_cell) * cells.off_diagonal
                         + cells.identity, (-1, channels, channels))
    # Sweeping every pivot of a symmetric positive definite matrix leaves minus its
    # inverse. Sweeping pivot k (pivot p, column c, unit vector e): the other cells lose
    # their regression on row k (A - c c'/p), row and column k become its coefficients
    # (c / p, but -1/p at the pivot). Both steps in one outer product:
    # A - (c - e)(c - e)'/p - 2 e e', which costs three operations on [B, F, F], not eight.
    for k in range(channels):
        shifted = matrix[:, :, k] - cells.units[k]
        pivot = ops.maximum(matrix[:, k:k + 1, k], PIVOT_FLOOR)
        matrix = (matrix - shifted[:, :, None] * (shifted / pivot)[:, None, :]
                  - cells.twice_pivot_cells[k])
    minus_precision = matrix
    standardized = deviation / sd
    # Row by row in a fixed order, as NumpyOps' row sums: the same bits whatever the batch.
    product = minus_precision[:, :, 0] * standardized[:, 0:1]
    for k in range(1, channels):
        product = product + minus_precision[:, :, k] * standardized[:, k:k + 1]
    precision_diagonal = -ops.columns(
        ops.reshape(minus_precision, (-1, channels * channels)), cells.diagonal)
    return ops.abs(product) / ops.sqrt(ops.maximum(precision_diagonal, PIVOT_FLOOR))
