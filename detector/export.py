"""The streaming step as a TensorFlow SavedModel, servable without cellwatch's Python classes.

:class:`ExportedStep` is a ``tf.Module`` whose ``step`` is a ``tf.function`` with a fixed input
signature; it evaluates :func:`detector.step.advance`, the same formulas as the NumPy step,
with TensorFlow operations. A serving system loads it with ``tf.saved_model.load(path)`` and
calls ``step(values, timestamps_ms, state)``.

Its matrix products are TensorFlow's own float32 products, not the exact ones of the NumPy
step (:mod:`detector.exact_product`), so its results equal the NumPy step's to float32
rounding, and may depend in the last bits on the batch; the worker uses the NumPy step.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import tensorflow as tf

from detector.features import CLOCK_HARMONICS, MS_PER_DAY, MS_PER_WEEK, WEEK_SHIFT_MS
from detector.forecaster_step import StepParams
from detector.step import StreamingStep, advance


class TensorFlowOps:
    """The array functions of :func:`advance`, as TensorFlow operations."""

    abs = staticmethod(tf.abs)
    exp = staticmethod(tf.exp)
    sqrt = staticmethod(tf.sqrt)
    sin = staticmethod(tf.sin)
    tanh = staticmethod(tf.tanh)
    sigmoid = staticmethod(tf.sigmoid)
    logical_and = staticmethod(tf.logical_and)
    logical_not = staticmethod(tf.logical_not)
    logical_or = staticmethod(tf.logical_or)

    @staticmethod
    def maximum(a, b):
        return tf.maximum(a, tf.cast(b, tf.float32))

    @staticmethod
    def minimum(a, b):
        return tf.minimum(a, tf.cast(b, tf.float32))

    @staticmethod
    def reshape(x, shape):
        return tf.reshape(x, shape)

    @staticmethod
    def columns(x, index):
        return tf.gather(x, index, axis=1)

    @staticmethod
    def take_rows(table, index):
        return tf.gather(table, index, batch_dims=1)

    @staticmethod
    def add_to_rows(table, index, delta):
        rows = tf.range(tf.shape(index)[0])
        return tf.tensor_scatter_nd_add(table, tf.stack([rows, index], axis=1), delta)

    @staticmethod
    def hour_of_day(timestamps_ms):
        return tf.cast(tf.math.floordiv(tf.math.floormod(timestamps_ms, MS_PER_DAY),
                                        MS_PER_DAY // 24), tf.int32)

    @staticmethod
    def indicator(condition):
        return tf.cast(condition, tf.float32)

    @staticmethod
    def cbrt(x):
        return tf.pow(x, 1.0 / 3.0)

    @staticmethod
    def where(condition, a, b):
        # Two integer tensors (channel indices) stay integers; anything else is float32.
        integers = all(isinstance(v, tf.Tensor) and v.dtype.is_integer for v in (a, b))
        dtype = tf.int32 if integers else tf.float32
        a = tf.cast(a, dtype)
        b = tf.cast(b, dtype)
        shape = tf.broadcast_dynamic_shape(
            tf.broadcast_dynamic_shape(tf.shape(condition), tf.shape(a)), tf.shape(b))
        return tf.where(tf.broadcast_to(condition, shape), tf.broadcast_to(a, shape),
                        tf.broadcast_to(b, shape))

    @staticmethod
    def log10(x):
        return tf.math.log(x) * (1.0 / math.log(10.0))

    @staticmethod
    def matmul(a, b):
        return tf.matmul(a, b)

    @staticmethod
    def concat(arrays, axis=-1):
        return tf.concat(arrays, axis=axis)

    @staticmethod
    def clip(x, low, high):
        return tf.clip_by_value(x, low, high)

    @staticmethod
    def mean_of_rows(x):
        return tf.reduce_mean(x, axis=1)

    @staticmethod
    def max_of_rows(x):
        return tf.reduce_max(x, axis=1)

    @staticmethod
    def argmax(x, axis):
        return tf.argmax(x, axis=axis, output_type=tf.int32)

    @staticmethod
    def softplus(x):
        return tf.math.softplus(x)

    @staticmethod
    def elu(x):
        return tf.nn.elu(x)

    @staticmethod
    def clock(timestamps_ms):
        # Same arithmetic as detector.features.clock_features: integer modulo, float64 angle.
        features = []
        for period, shift, harmonics in CLOCK_HARMONICS:
            angle = (2.0 * math.pi / period) * tf.cast(
                tf.math.floormod(timestamps_ms + shift, period), tf.float64)
            for harmonic in range(1, harmonics + 1):
                features += [tf.sin(harmonic * angle), tf.cos(harmonic * angle)]
        return tf.cast(tf.stack(features, axis=-1), tf.float32)

    @staticmethod
    def rows(x):
        return tf.shape(x)[0]

    @staticmethod
    def week_time(timestamps_ms):
        # Same arithmetic as detector.features.week_time.
        phase = tf.math.floormod(timestamps_ms + WEEK_SHIFT_MS, MS_PER_WEEK)
        return tf.cast(tf.stack([tf.math.floordiv(phase, 1000), tf.math.floormod(phase, 1000)],
                                axis=-1), tf.float32)

    @staticmethod
    def from_week_time(week):
        whole = tf.cast(week, tf.int64)
        return whole[:, 0] * 1000 + whole[:, 1] - WEEK_SHIFT_MS


def _constant(array: np.ndarray | None):
    return None if array is None else tf.constant(array, dtype=tf.float32)


class ExportedStep(tf.Module):
    """A tf.Module holding the step's weights and its signature-fixed ``step`` function."""

    def __init__(self, step: StreamingStep) -> None:
        super().__init__(name="cellwatch_step")
        params = step.params
        self._params = StepParams(**{
            name: (_constant(value) if isinstance(value, np.ndarray) else value)
            for name, value in vars(params).items() if name != "stack"
        }, stack=tuple((_constant(k), _constant(b)) for k, b in params.stack))
        self._scaler = (tf.constant(step._scaler_arrays[0]), tf.constant(step._scaler_arrays[1]),
                        tf.constant(step._scaler_arrays[2]))
        self._scorer = step.scorer
        self._layout = step.layout
        channels, size = step.layout.channels, step.layout.size
        self.step = tf.function(self._step, input_signature=[
            tf.TensorSpec([None, channels], tf.float32, name="values"),
            tf.TensorSpec([None], tf.int64, name="timestamps_ms"),
            tf.TensorSpec([None, size], tf.float32, name="state"),
        ])

    def _step(self, values, timestamps_ms, state):
        score, likelihood, surprise, flag, top, onset, new_state = advance(
            TensorFlowOps, self._params, self._scaler, self._scorer, self._layout,
            values, timestamps_ms, state)
        return {"score": score, "likelihood": likelihood, "surprise": surprise, "flag": flag,
                "top_channel": top, "onset": onset, "state": new_state}


def save_exported_step(step: StreamingStep, directory: Path) -> None:
    """Writes the step as a SavedModel into ``directory`` (which must not exist)."""
    module = ExportedStep(step)
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.step})


def load_exported_step(directory: Path):
    """The SavedModel's ``step`` function; needs TensorFlow only, not cellwatch."""
    return tf.saved_model.load(str(directory)).step
