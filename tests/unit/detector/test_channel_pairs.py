"""Each channel's deviation given the other channels' (detector.channel_pairs) against a
float64 reference with LAPACK's inverse."""

from __future__ import annotations

import numpy as np
import pytest

from detector.array_ops import NumpyOps
from detector.channel_pairs import conditional_deviates, pair_columns, pair_products


def random_case(rng, streams: int, channels: int):
    """Variances, pair covariances and deviations of ``streams`` random positive definite
    covariance matrices (sample covariances of correlated readings)."""
    mixing = rng.normal(size=(streams, channels, channels))
    samples = rng.normal(size=(streams, 4 * channels, channels)) @ mixing
    covariance = np.einsum("bni,bnj->bij", samples, samples) / samples.shape[1]
    first, second = pair_columns(channels)
    var = np.einsum("bii->bi", covariance)
    pairs = covariance[:, first, second]
    deviation = rng.normal(size=(streams, channels)) * np.sqrt(var)
    return covariance, var, pairs, deviation


def reference(covariance, deviation, prior_share):
    sd = np.sqrt(np.einsum("bii->bi", covariance))
    keep = (1 - prior_share)[:, None, None]
    correlation = covariance / (sd[:, :, None] * sd[:, None, :]) * keep
    correlation[:, np.arange(sd.shape[1]), np.arange(sd.shape[1])] = 1.0
    precision = np.linalg.inv(correlation)
    product = np.einsum("bij,bj->bi", precision, deviation / sd)
    return np.abs(product) / np.sqrt(np.einsum("bii->bi", precision))


@pytest.mark.parametrize("channels", [2, 3, 4, 8])
def test_conditional_deviates_equal_the_regression_on_the_other_channels(channels):
    rng = np.random.default_rng(channels)
    covariance, var, pairs, deviation = random_case(rng, 64, channels)
    prior_share = rng.choice([0.0, 0.01, 0.5], size=64)
    z = conditional_deviates(NumpyOps, var.astype(np.float32), pairs.astype(np.float32),
                             deviation.astype(np.float32), prior_share.astype(np.float32))
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, reference(covariance, deviation, prior_share), rtol=2e-3,
                               atol=1e-4)


def test_without_correlation_a_channel_is_judged_by_its_own_deviation():
    var = np.array([[4.0, 9.0, 1.0]], np.float32)
    deviation = np.array([[2.0, -6.0, 0.5]], np.float32)
    z = conditional_deviates(NumpyOps, var, np.zeros((1, 3), np.float32), deviation,
                             np.zeros(1, np.float32))
    np.testing.assert_allclose(z, np.abs(deviation) / np.sqrt(var), rtol=1e-6)


def test_copies_of_one_channel_stay_finite_with_the_prior():
    # Two channels that are the same sensor: their correlation is 1 and the matrix is
    # singular; the prior's share keeps it invertible.
    var = np.ones((1, 2), np.float32)
    covariance = np.ones((1, 1), np.float32)
    z = conditional_deviates(NumpyOps, var, covariance, np.array([[1.0, 1.0]], np.float32),
                             np.array([2.0 / 1002.0], np.float32))
    assert np.all(np.isfinite(z)) and np.all(z < 1.0)
    apart = conditional_deviates(NumpyOps, var, covariance, np.array([[1.0, -1.0]],
                                                                     np.float32),
                                 np.array([2.0 / 1002.0], np.float32))
    assert np.all(apart > 20.0)  # copies that part are far from normal


def test_copies_of_one_channel_stay_finite_even_without_a_prior():
    var = np.ones((1, 3), np.float32)
    covariance = np.array([[1.0, 0.5, 0.5]], np.float32)  # channels 0 and 1 are copies
    z = conditional_deviates(NumpyOps, var, covariance, np.array([[1.0, -1.0, 0.0]],
                                                                 np.float32),
                             np.zeros(1, np.float32))
    assert np.all(np.isfinite(z)) and z[0, 0] > 100.0


def test_a_stream_gets_the_same_bits_alone_and_in_any_batch():
    rng = np.random.default_rng(0)
    _, var, pairs, deviation = random_case(rng, 32, 4)
    args = [a.astype(np.float32) for a in (var, pairs, deviation)]
    prior = np.full(32, 0.01, np.float32)
    together = conditional_deviates(NumpyOps, *args, prior)
    for row in (0, 17, 31):
        alone = conditional_deviates(NumpyOps, *(a[row:row + 1] for a in args),
                                     prior[row:row + 1])
        assert alone.tobytes() == together[row:row + 1].tobytes()


def test_pair_products_follow_the_records_pair_order():
    deviation = np.array([[1.0, 2.0, 3.0, 5.0]], np.float32)
    assert pair_products(NumpyOps, deviation).tolist() == [[2.0, 3.0, 5.0, 6.0, 10.0, 15.0]]
    assert [p.tolist() for p in pair_columns(4)] == [[0, 0, 0, 1, 1, 2], [1, 2, 3, 2, 3, 3]]
