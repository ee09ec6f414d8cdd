"""Matrix products whose every row is exact, so no BLAS kernel or batch can change a stream.

A BLAS kernel chooses its blocking, its vector width and the order of its partial sums by
the shapes it is given and by the CPU, so in float32 a row of ``A @ W`` can differ in the
last bits depending on how many rows share the product and where the row sits (measured
with OpenBLAS on an AMD EPYC: 429 of the compared elements differed). In a streaming step
that makes a stream's score depend on which other streams share its batch.

Here both factors are first written as whole numbers times a power of two: a row of ``A``
as integers of at most ``ROW_BITS`` bits times a unit chosen from that row's largest
magnitude alone, ``W`` as integers times one unit per matrix. Every product of two such
integers, and every partial sum of a row, is a whole number below ``2**53``, which float64
represents exactly; so the float64 BLAS product is exact whatever order, blocking or fused
multiply-add the kernel uses, and scaling back by powers of two is exact too. The single
rounding is the final conversion to float32. A row's result is thereby a function of that
row and ``W`` alone, bit for bit, on every CPU and BLAS.

Precision: each factor is rounded to ``2**-ROW_BITS`` of its row's (or matrix's) largest
magnitude, about one float32 ulp of that magnitude, which keeps the product as close to
the float64 result as a float32 BLAS product is (measured: 1.6e-7 relative against 2.5e-7).
Cost: a few element-wise passes over the row block and one float64 BLAS call, about a
microsecond per row for the forecaster's products.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# Bits of a row's integers; the weights get what is left of float64's 53.
ROW_BITS = 23


def _integer_unit(magnitude: np.ndarray, bits: int) -> np.ndarray:
    """The power of two ``u`` with ``magnitude / u <= 2**bits`` (1 for a zero magnitude)."""
    _, exponent = np.frexp(magnitude)  # magnitude < 2**exponent
    return np.ldexp(1.0, exponent - bits)


@dataclasses.dataclass(frozen=True, eq=False)
class ExactKernel:
    """A weight matrix ``[K, N]`` as whole numbers (float64) times one power-of-two unit.

    ``row_unit`` is the fixed unit of the rows when every input is known to lie within a
    bound (an output of tanh or sigmoid, a clipped value), which spares finding each row's
    largest magnitude; ``None`` finds it per row.
    """

    integers: np.ndarray
    unit: float
    row_unit: float | None = None

    @classmethod
    def of(cls, kernel: np.ndarray, input_bound: float | None = None) -> ExactKernel:
        """``kernel`` as integers; ``input_bound`` bounds ``|rows|`` by construction."""
        kernel = np.asarray(kernel, dtype=np.float64)
        if kernel.ndim != 2:
            raise ValueError(f"kernel: expected a matrix, received shape {list(kernel.shape)}")
        if input_bound is not None and not (math.isfinite(input_bound) and input_bound > 0):
            raise ValueError(f"input_bound must be finite and > 0, received {input_bound!r}")
        rows = kernel.shape[0]
        # K products of |row integer| <= 2**ROW_BITS and |weight integer| <= 2**bits must
        # sum to at most 2**53 for every partial sum to be exact.
        bits = 53 - ROW_BITS - max(math.ceil(math.log2(max(rows, 1))), 0)
        if bits < 8:
            raise ValueError(f"kernel: {rows} rows are too many for an exact product")
        unit = float(_integer_unit(np.max(np.abs(kernel), initial=0.0), bits))
        row_unit = None if input_bound is None else float(_integer_unit(input_bound, ROW_BITS))
        return cls(np.rint(kernel / unit), unit, row_unit)

    @property
    def shape(self) -> tuple[int, int]:
        return self.integers.shape


def exact_matmul(rows: np.ndarray, kernel: ExactKernel) -> np.ndarray:
    """``rows @ W`` as float32 ``[B, N]``, each row's result independent of the other rows.

    Args:
        rows: float32 ``[B, K]``, finite; with a kernel's input bound, values beyond it count
            as the bound.
        kernel: ``W`` as made by :meth:`ExactKernel.of`.
    """
    if kernel.row_unit is None:
        # The method, not np.max: the same reduction without the Python wrapper that costs
        # a one-row round more than the search.
        unit = _integer_unit(np.abs(rows).max(axis=1).astype(np.float64), ROW_BITS)
        inverse = (1.0 / unit)[:, None]
        scale = (unit * kernel.unit)[:, None]
    else:
        # Inputs are within the bound by construction; a record from elsewhere (a corrupted
        # checkpoint) is clipped to it, so the integers keep their width and the sums stay
        # exact whatever the input.
        bound = kernel.row_unit * 2.0 ** ROW_BITS
        rows = np.clip(rows, -bound, bound)
        inverse = 1.0 / kernel.row_unit
        scale = kernel.row_unit * kernel.unit
    # Multiplying by a power of two and rounding to a whole number are exact.
    integers = np.multiply(rows, inverse, dtype=np.float64)
    np.rint(integers, out=integers)
    product = integers @ kernel.integers
    return np.multiply(product, scale, out=np.empty(product.shape, np.float32),
                       casting="same_kind")
