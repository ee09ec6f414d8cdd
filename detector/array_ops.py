"""The array functions the streaming step is written against, and the NumPy ones.

The step's formulas (:func:`detector.step.advance`) are written once against a small
namespace of array functions, so the NumPy step and the TensorFlow step exported as a
SavedModel (:mod:`detector.export`) evaluate the same formulas.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from detector.exact_product import ExactKernel, exact_matmul
from detector.features import clock_features, from_week_time, hour_of_day, week_time

# Activations the step can evaluate outside Keras; each takes (ops, x).
ACTIVATIONS = {
    "linear": lambda ops, x: x,
    "relu": lambda ops, x: ops.maximum(x, 0.0),
    "tanh": lambda ops, x: ops.tanh(x),
    "sigmoid": lambda ops, x: ops.sigmoid(x),
    "softplus": lambda ops, x: ops.softplus(x),
    "elu": lambda ops, x: ops.elu(x),
    "elu_sigmoid": lambda ops, x: ops.elu(x) * ops.sigmoid(x),
}

# Activations whose outputs lie in [-1, 1] whatever their inputs.
UNIT_BOUNDED_ACTIVATIONS = frozenset({"tanh", "sigmoid"})


def activation_name(serialized: Any) -> str:
    """The short name of a serialized Keras activation, if the step can evaluate it."""
    if serialized is None:
        name = "linear"
    elif isinstance(serialized, str):
        name = serialized
    elif isinstance(serialized, Mapping):
        config = serialized.get("config")
        name = config if isinstance(config, str) else serialized.get("registered_name", "")
    else:
        name = getattr(serialized, "__name__", str(serialized))
    name = name.split(">")[-1]
    if name not in ACTIVATIONS:
        raise ValueError(
            f"activation {serialized!r} cannot run in the streaming step; supported: "
            f"{', '.join(sorted(ACTIVATIONS))}")
    return name


class NumpyOps:
    """Array functions of the NumPy step; every result stays float32.

    No function here lets one row's result depend on the other rows of the batch: products
    are exact (:mod:`detector.exact_product`), row sums are written out column by column,
    and the rest is element-wise. So a stream's results are the same whichever streams
    share its batch, on any CPU and BLAS.
    """

    abs = staticmethod(np.abs)
    exp = staticmethod(np.exp)
    sqrt = staticmethod(np.sqrt)
    cbrt = staticmethod(np.cbrt)
    log10 = staticmethod(np.log10)
    sin = staticmethod(np.sin)
    tanh = staticmethod(np.tanh)
    maximum = staticmethod(np.maximum)
    minimum = staticmethod(np.minimum)
    where = staticmethod(np.where)
    logical_and = staticmethod(np.logical_and)
    logical_not = staticmethod(np.logical_not)
    logical_or = staticmethod(np.logical_or)

    @staticmethod
    def matmul(a, b):
        return exact_matmul(a, b if isinstance(b, ExactKernel) else ExactKernel.of(b))

    @staticmethod
    def indicator(condition):
        """1.0 where ``condition`` holds, else 0.0, as float32."""
        return condition.astype(np.float32)

    @staticmethod
    def reshape(x, shape):
        return np.reshape(x, shape)

    @staticmethod
    def hour_of_day(timestamps_ms):
        return hour_of_day(timestamps_ms)

    @staticmethod
    def concat(arrays, axis=-1):
        return np.concatenate(arrays, axis=axis)

    @staticmethod
    def clip(x, low, high):
        return np.clip(x, low, high)

    @staticmethod
    def mean_of_rows(x):
        # Column by column in a fixed order: a reduction's order is NumPy's choice and may
        # change with the array's shape and strides, this one cannot.
        total = x[:, 0].copy()
        for column in range(1, x.shape[1]):
            total += x[:, column]
        return total / np.float32(x.shape[1])

    @staticmethod
    def argmax(x, axis):
        # The method, not np.argmax: the same function without its Python wrapper, which
        # costs more than the search itself on a one-row round (seven calls a reading).
        return x.argmax(axis=axis).astype(np.int32)

    @staticmethod
    def max_of_rows(x):
        # Column by column: a reduction over a few channels costs more per row than this.
        largest = x[:, 0]
        for column in range(1, x.shape[1]):
            largest = np.maximum(largest, x[:, column])
        return largest

    @staticmethod
    def columns(x, index):
        """``x[:, index]`` for a constant int32 ``index``."""
        return x[:, index]

    @staticmethod
    def take_rows(table, index):
        """``table[b, index[b]]`` for every row ``b`` of a ``[B, K, ...]`` table."""
        return table[np.arange(table.shape[0]), index]

    @staticmethod
    def add_to_rows(table, index, delta):
        """A copy of ``table`` with ``delta[b]`` added at ``table[b, index[b]]``."""
        table = table.copy()
        table[np.arange(table.shape[0]), index] += delta
        return table

    @staticmethod
    def sigmoid(x):
        # The same function as 1 / (1 + exp(-x)), in one transcendental call that cannot
        # overflow for either sign.
        return np.float32(0.5) * (np.float32(1.0) + np.tanh(np.float32(0.5) * x))

    @staticmethod
    def softplus(x):
        return (np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)).astype(np.float32)

    @staticmethod
    def elu(x):
        # x where positive, exp(x) - 1 where not: one of the two terms is always 0.
        return np.maximum(x, np.float32(0.0)) + np.expm1(np.minimum(x, np.float32(0.0)))

    @staticmethod
    def clock(timestamps_ms):
        return clock_features(timestamps_ms)

    @staticmethod
    def rows(x):
        return x.shape[0]

    @staticmethod
    def week_time(timestamps_ms):
        return week_time(timestamps_ms)

    @staticmethod
    def from_week_time(week):
        return from_week_time(week)
