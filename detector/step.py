"""The exact streaming step: one reading for each of many streams, in one vectorized call.

Calling a Keras model once per reading costs milliseconds of framework overhead per call;
the worker instead gathers the readings of many streams and advances all of them with
:class:`StreamingStep`, whose arithmetic equals the Keras forecaster run over the same
sequences (tested to 1e-5) but runs as a handful of NumPy matrix products.

The math is written once, in :func:`advance`, against a small array-functions namespace, so
the NumPy step and the TensorFlow step exported as a SavedModel (:mod:`detector.export`)
evaluate the same formulas.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from detector.features import ChannelScaler, clock_features
from detector.scorer import MAX_SURPRISE, MIN_TAIL, ScorerConfig, upper_tail
from detector.state import COUNT_CAP, StateLayout

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
    """Array functions of the NumPy step; every result stays float32."""

    abs = staticmethod(np.abs)
    exp = staticmethod(np.exp)
    sqrt = staticmethod(np.sqrt)
    log10 = staticmethod(np.log10)
    sin = staticmethod(np.sin)
    tanh = staticmethod(np.tanh)
    maximum = staticmethod(np.maximum)
    minimum = staticmethod(np.minimum)
    where = staticmethod(np.where)
    logical_and = staticmethod(np.logical_and)
    logical_not = staticmethod(np.logical_not)

    @staticmethod
    def matmul(a, b):
        return a @ b

    @staticmethod
    def concat(arrays, axis=-1):
        return np.concatenate(arrays, axis=axis)

    @staticmethod
    def clip(x, low, high):
        return np.clip(x, low, high)

    @staticmethod
    def mean(x, axis):
        return x.mean(axis=axis, dtype=np.float32)

    @staticmethod
    def argmax(x, axis):
        return np.argmax(x, axis=axis).astype(np.int32)

    @staticmethod
    def max(x, axis):
        return np.max(x, axis=axis)

    @staticmethod
    def sigmoid(x):
        # exp of -|x| never overflows, for either sign.
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)

    @staticmethod
    def softplus(x):
        return (np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)).astype(np.float32)

    @staticmethod
    def elu(x):
        return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))).astype(np.float32)

    @staticmethod
    def clock(timestamps_ms):
        return clock_features(timestamps_ms)


@dataclasses.dataclass(frozen=True)
class StepParams:
    """The forecaster's weights as plain arrays, in the order the step uses them."""

    clock_kernel: np.ndarray | None
    clock_bias: np.ndarray | None
    clock_frequency: np.ndarray | None
    dependency_kernel: np.ndarray  # [3 * D, U]: rows for inputs t, t-1, t-2
    dependency_bias: np.ndarray
    dependency_activation: str
    memory_kernel: np.ndarray  # [U, 2M]: retention gate columns, then candidate columns
    memory_recurrent_kernel: np.ndarray  # [M, 2M]
    memory_bias: np.ndarray
    memory_activation: str
    memory_recurrent_activation: str
    stack: tuple[tuple[np.ndarray, np.ndarray], ...]
    stack_activation: str
    mean_kernel: np.ndarray
    mean_bias: np.ndarray
    scale_kernel: np.ndarray
    scale_bias: np.ndarray
    min_scale: float

    @property
    def uses_clock(self) -> bool:
        return self.clock_kernel is not None

    @property
    def input_width(self) -> int:
        return self.dependency_kernel.shape[0] // 3

    @property
    def memory_units(self) -> int:
        return self.memory_recurrent_kernel.shape[0]

    @property
    def channels(self) -> int:
        return self.mean_kernel.shape[1]


@dataclasses.dataclass(frozen=True)
class StepResult:
    """Per reading: raw score, likelihood in [0, 1], surprise, flag, most surprising channel."""

    score: np.ndarray  # float32 [B]
    likelihood: np.ndarray  # float32 [B]
    surprise: np.ndarray  # float32 [B], -log10(1 - likelihood), in [0, 30]
    flag: np.ndarray  # bool [B]
    top_channel: np.ndarray  # int32 [B]
    onset: np.ndarray  # float32 [B], the surprise where it tops the recent peak, else 0


def advance(ops, params: StepParams, scaler_arrays, scorer: ScorerConfig, layout: StateLayout,
            values, timestamps_ms, state):
    """Scores one reading per stream and returns the streams' next state records.

    Args:
        ops: array functions (:class:`NumpyOps` or the TensorFlow ones).
        params: the forecaster's weights.
        scaler_arrays: (median, scale, clip) of the channel normalization.
        scorer: likelihood settings.
        layout: where each field lives in a state record.
        values: raw readings ``[B, F]``.
        timestamps_ms: reading times ``[B]`` (int64 ms); used when the model has a clock.
        state: state records ``[B, S]``, one per reading's stream.

    Returns:
        ``(score, likelihood, surprise, flag, top_channel, onset, new_state)``.
    """
    median, scale, clip = scaler_arrays
    f = layout.fields
    normalized = (values - median) / scale
    model_input = ops.clip(normalized, -clip, clip)
    if params.uses_clock:
        clock = ops.clock(timestamps_ms)
        encoded = ops.sin(params.clock_frequency * (
            ops.matmul(clock, params.clock_kernel) + params.clock_bias))
        model_input = ops.concat([model_input, encoded], axis=-1)

    count = state[:, f["count"]][:, 0]
    average = state[:, f["score_average"]][:, 0]
    mean = state[:, f["score_mean"]][:, 0]
    var = state[:, f["score_var"]][:, 0]

    # Score this reading against the forecast the previous reading left in the state.
    has_forecast = count >= 1.0
    residual = (normalized - state[:, f["forecast_mean"]]) / ops.where(
        has_forecast[:, None], state[:, f["forecast_scale"]], 1.0)
    residual = ops.where(has_forecast[:, None], residual, 0.0)
    score = ops.sqrt(ops.mean(residual * residual, axis=1))
    top_channel = ops.argmax(ops.abs(residual), axis=1)

    capped = ops.minimum(score, scorer.score_cap)
    first_score = count == 1.0
    new_average = ops.where(first_score, capped,
                            average + scorer.average_weight * (capped - average))
    sigma = ops.maximum(ops.sqrt(var), scorer.min_sigma)
    model_tail = ops.maximum(upper_tail(ops, (new_average - mean) / sigma), MIN_TAIL)

    # Level: each channel against its own long-run mean and spread (a windowed Gaussian,
    # with the window exponential); the most extreme channel, its two-sided tail multiplied
    # by the channel count (Bonferroni). The reading's tail is the smaller of the two.
    level_mean = state[:, f["level_mean"]]
    level_var = state[:, f["level_var"]]
    level_sigma = ops.maximum(ops.sqrt(level_var), scorer.min_sigma)
    level_z = ops.max(ops.abs(normalized - level_mean) / level_sigma, axis=1)
    level_tail = ops.minimum((2.0 * layout.channels) * upper_tail(ops, level_z), 1.0)
    tail = ops.maximum(ops.minimum(model_tail, level_tail), MIN_TAIL)

    learning = count <= float(scorer.learning_period)
    tail = ops.where(learning, 0.5, tail)
    likelihood = 1.0 - tail
    surprise = ops.minimum(-ops.log10(tail), MAX_SURPRISE)
    flag = ops.logical_and(ops.logical_not(learning), tail <= 1.0 - scorer.threshold)

    # Onset: the surprise of a reading that tops the stream's recent peak, 0 for every other
    # reading (and while learning). The peak follows the surprise up and otherwise halves
    # every `refractory` readings, so a burst reports its first (and any higher) readings
    # once, and a plateau or a slow decline of the surprise reports nothing.
    peak = state[:, f["surprise_peak"]][:, 0]
    onset = ops.where(ops.logical_and(ops.logical_not(learning), surprise > peak), surprise, 0.0)
    new_peak = ops.maximum(surprise, peak * scorer.peak_decay)

    # Long-run statistics: a running mean until `history` scores exist, then exponential.
    weight = ops.maximum(1.0 / ops.maximum(count, 1.0), 1.0 / scorer.history)
    delta = new_average - mean
    new_mean = ops.where(has_forecast, mean + weight * delta, mean)
    new_var = ops.where(has_forecast, (1.0 - weight) * (var + weight * delta * delta), var)
    new_average = ops.where(has_forecast, new_average, average)
    # The level's statistics, the same way over readings (this one included from the first).
    level_weight = ops.maximum(1.0 / (count + 1.0), 1.0 / scorer.level_history)
    level_delta = normalized - level_mean
    new_level_mean = level_mean + level_weight[:, None] * level_delta
    new_level_var = (1.0 - level_weight[:, None]) * (
        level_var + level_weight[:, None] * level_delta * level_delta)

    # Advance the forecaster by one step: ThreePointDependency, MemoryCell, stack, head.
    previous_1 = state[:, f["input_t1"]]
    previous_2 = state[:, f["input_t2"]]
    window = ops.concat([model_input, previous_1, previous_2], axis=-1)
    features = ACTIVATIONS[params.dependency_activation](
        ops, ops.matmul(window, params.dependency_kernel) + params.dependency_bias)
    memory = state[:, f["memory"]]
    units = layout.memory_units
    gates = (ops.matmul(features, params.memory_kernel)
             + ops.matmul(memory, params.memory_recurrent_kernel) + params.memory_bias)
    retain = ACTIVATIONS[params.memory_recurrent_activation](ops, gates[:, :units])
    candidate = ACTIVATIONS[params.memory_activation](ops, gates[:, units:])
    new_memory = retain * memory + (1.0 - retain) * candidate
    hidden = new_memory
    stack_activation = ACTIVATIONS[params.stack_activation]
    for kernel, bias in params.stack:
        hidden = stack_activation(ops, ops.matmul(hidden, kernel) + bias)
    # The model forecasts the change to the next reading; persistence is its zero point.
    forecast_mean = normalized + ops.matmul(hidden, params.mean_kernel) + params.mean_bias
    forecast_scale = params.min_scale + ops.softplus(
        ops.matmul(hidden, params.scale_kernel) + params.scale_bias)

    new_count = ops.minimum(count + 1.0, COUNT_CAP)
    new_state = ops.concat([
        model_input, previous_1, new_memory, forecast_mean, forecast_scale,
        new_average[:, None], new_mean[:, None], new_var[:, None], new_level_mean,
        new_level_var, new_peak[:, None],
        new_count[:, None],
    ], axis=-1)
    return score, likelihood, surprise, flag, top_channel, onset, new_state


class StreamingStep:
    """Advances many streams by one reading each, with NumPy.

    Args:
        params: the forecaster's weights (:func:`detector.model.step_params`).
        scaler: the channel normalization fitted at training time.
        scorer: likelihood and flag settings.

    Call arguments:
        values: float ``[B, F]`` raw readings, finite, one per stream, in channel order.
        timestamps_ms: int64 ``[B]`` reading times (required when the model has a clock).
        state: float32 ``[B, S]`` the streams' records (``layout.initial(B)`` for new ones).

    Returns:
        ``(StepResult, new_state)``; ``new_state`` is a new array, ``state`` is not modified.

    Example:
        >>> step = StreamingStep(params, scaler, ScorerConfig())
        >>> state = step.layout.initial(2)
        >>> result, state = step(np.ones((2, 4)), np.array([0, 0]), state)
    """

    # Rows advanced per NumPy pass; measured best on this machine (benchmarks/step_throughput).
    chunk = 2048

    def __init__(self, params: StepParams, scaler: ChannelScaler, scorer: ScorerConfig) -> None:
        if scaler.channels != params.channels:
            raise ValueError(
                f"normalization has {scaler.channels} channels but the model forecasts "
                f"{params.channels}")
        self.params = params
        self.scaler = scaler
        self.scorer = scorer
        self.layout = StateLayout(channels=params.channels, input_width=params.input_width,
                                  memory_units=params.memory_units)
        self._scaler_arrays = (np.asarray(scaler.median, np.float32),
                               np.asarray(scaler.scale, np.float32),
                               np.float32(scaler.clip))

    def __call__(self, values: np.ndarray, timestamps_ms: np.ndarray | None,
                 state: np.ndarray) -> tuple[StepResult, np.ndarray]:
        values = np.asarray(values, dtype=np.float32)
        if values.ndim != 2 or values.shape[1] != self.layout.channels:
            raise ValueError(
                f"values: expected [batch, {self.layout.channels}], received "
                f"{list(values.shape)}")
        self.layout.check(state)
        if state.shape[0] != values.shape[0]:
            raise ValueError(
                f"state: expected one record per reading ({values.shape[0]}), received "
                f"{state.shape[0]}")
        if self.params.uses_clock:
            if timestamps_ms is None:
                raise ValueError("timestamps_ms: this model encodes the clock and needs them")
            timestamps_ms = np.asarray(timestamps_ms, dtype=np.int64)
        batch = values.shape[0]
        if batch <= self.chunk:
            return self._advance(values, timestamps_ms, state)
        # Beyond a few thousand rows the temporaries leave the CPU cache; chunks keep them in.
        parts = [self._advance(values[i:i + self.chunk],
                               None if timestamps_ms is None else timestamps_ms[i:i + self.chunk],
                               state[i:i + self.chunk])
                 for i in range(0, batch, self.chunk)]
        results = [part[0] for part in parts]
        return (StepResult(*(np.concatenate([getattr(r, f.name) for r in results])
                             for f in dataclasses.fields(StepResult))),
                np.concatenate([part[1] for part in parts]))

    def _advance(self, values: np.ndarray, timestamps_ms: np.ndarray | None,
                 state: np.ndarray) -> tuple[StepResult, np.ndarray]:
        score, likelihood, surprise, flag, top, onset, new_state = advance(
            NumpyOps, self.params, self._scaler_arrays, self.scorer, self.layout,
            values, timestamps_ms, state)
        return (StepResult(score.astype(np.float32), likelihood.astype(np.float32),
                           surprise.astype(np.float32), np.asarray(flag, dtype=bool), top,
                           onset.astype(np.float32)),
                new_state.astype(np.float32, copy=False))


def _check_finite(name: str, array: np.ndarray) -> None:
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: model weights contain NaN or infinity")


def check_params(params: StepParams) -> None:
    """Raises ValueError for weights no step could run with (non-finite values)."""
    for field in dataclasses.fields(params):
        value = getattr(params, field.name)
        if isinstance(value, np.ndarray):
            _check_finite(field.name, value)
    for i, (kernel, bias) in enumerate(params.stack):
        _check_finite(f"stack[{i}].kernel", kernel)
        _check_finite(f"stack[{i}].bias", bias)
    if not math.isfinite(params.min_scale) or params.min_scale <= 0:
        raise ValueError(f"min_scale must be > 0, received {params.min_scale}")
