"""Exact products: a row's result depends on that row and the weights alone, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from detector.exact_product import ExactKernel, exact_matmul


@pytest.fixture
def factors():
    rng = np.random.default_rng(7)
    rows = (rng.standard_normal((300, 36)) * rng.lognormal(0, 2, size=(300, 1))).astype(
        np.float32)
    rows[5] = 0.0  # a zero row has no largest magnitude to scale by
    kernel = (rng.standard_normal((36, 20)) * 0.3).astype(np.float32)
    return rows, kernel


def test_each_row_alone_equals_it_in_any_batch(factors):
    rows, kernel = factors
    exact = ExactKernel.of(kernel)
    whole = exact_matmul(rows, exact)
    rng = np.random.default_rng(1)
    for size in (1, 2, 3, 7, 64, 299):
        picked = rng.choice(len(rows), size=size, replace=False)
        np.testing.assert_array_equal(exact_matmul(rows[picked], exact), whole[picked])
    # BLAS itself gives no such promise; when it differs here, the test above is the point.
    assert whole.dtype == np.float32 and whole.shape == (300, 20)


def test_is_as_close_to_the_float64_product_as_float32_blas(factors):
    rows, kernel = factors
    reference = rows.astype(np.float64) @ kernel.astype(np.float64)
    magnitude = np.abs(rows).astype(np.float64) @ np.abs(kernel).astype(np.float64)
    exact_error = np.abs(exact_matmul(rows, ExactKernel.of(kernel)) - reference) / magnitude.clip(
        1e-30)
    blas_error = np.abs(rows @ kernel - reference) / magnitude.clip(1e-30)
    assert exact_error.max() < 4 * np.finfo(np.float32).eps
    assert exact_error.max() <= 2 * blas_error.max() + np.finfo(np.float32).eps
    np.testing.assert_array_equal(exact_matmul(rows[5:6], ExactKernel.of(kernel)), 0.0)


def test_a_fixed_input_bound_gives_the_same_promise(factors):
    rows, kernel = factors
    bounded = np.tanh(rows)
    exact = ExactKernel.of(kernel, input_bound=1.0)
    whole = exact_matmul(bounded, exact)
    np.testing.assert_array_equal(exact_matmul(bounded[3:4], exact), whole[3:4])
    np.testing.assert_allclose(whole, bounded.astype(np.float64) @ kernel, atol=2e-6)


def test_inputs_beyond_a_fixed_bound_count_as_the_bound(factors):
    rows, kernel = factors
    exact = ExactKernel.of(kernel, input_bound=1.0)  # unit 2**-22: integers up to 2**23 = 2.0
    wild = rows[:50] * 1e6
    np.testing.assert_array_equal(exact_matmul(wild, exact),
                                  exact_matmul(np.clip(wild, -2.0, 2.0), exact))
    np.testing.assert_array_equal(exact_matmul(wild[7:8], exact), exact_matmul(wild, exact)[7:8])


def test_kernels_that_cannot_be_exact_are_refused():
    with pytest.raises(ValueError, match="expected a matrix"):
        ExactKernel.of(np.ones(3))
    with pytest.raises(ValueError, match="too many for an exact product"):
        ExactKernel.of(np.ones((2**23, 1), np.float32))
    with pytest.raises(ValueError, match="input_bound must be finite"):
        ExactKernel.of(np.ones((2, 2)), input_bound=0.0)
