"""The forecaster: ThreePointDependency -> RNN(MemoryCell) -> StackedNeurons -> GaussianHead.

For every reading of a stream the model predicts the distribution of the next one, channel by
channel: a mean (as a change from the current reading, so persistence is its zero point) and
a standard deviation. Training minimizes the Gaussian negative log-likelihood, which teaches
the model its own uncertainty, so the scorer can judge a residual against it.

Inputs (normalized by :class:`detector.features.ChannelScaler`):
    ``values``: ``[batch, time, channels]`` clipped normalized readings.
    ``clock``: ``[batch, time, 6]`` sines and cosines of the day's and week's harmonics (when
    ``time_features``, :func:`detector.features.clock_features`), encoded by
    :class:`~detector.layers.SineEncoding`. The trainer zeroes the kernel rows of a period
    its data does not cover twice (:func:`detector.features.covered_clock_features`).

Output: ``[batch, time, 2 * channels]``: predicted change to the next reading, then its scale.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np

from detector.array_ops import activation_name
from detector.features import CLOCK_FEATURES
from detector.forecaster_step import StepParams, check_params
from detector.layers import (
    GaussianHead,
    MemoryCell,
    SineEncoding,
    StackedNeurons,
    ThreePointDependency,
)

# Layer names the step reads the weights from; stable across versions of the model.
CLOCK_LAYER = "clock_encoding"
DEPENDENCY_LAYER = "three_point"
MEMORY_LAYER = "memory"
STACK_LAYER = "stack"
HEAD_LAYER = "forecast"


@dataclasses.dataclass(frozen=True)
class ForecasterConfig:
    """Shape of the forecaster; one configuration serves every stream of a deployment."""

    channels: int
    time_features: bool = True
    clock_units: int = 8
    dependency_units: int = 32
    memory_units: int = 20  # the settings' default: why 20, see cellwatch.settings
    hidden_units: int = 32
    depth: int = 2
    activation: str = "elu_sigmoid"
    min_scale: float = 0.01

    def __post_init__(self) -> None:
        for name in ("channels", "clock_units", "dependency_units", "memory_units",
                     "hidden_units", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, received: {value!r}")
        activation_name(self.activation)
        if not (math.isfinite(self.min_scale) and self.min_scale > 0):
            raise ValueError(f"`min_scale` must be > 0, received: {self.min_scale!r}")

    @property
    def input_width(self) -> int:
        return self.channels + (self.clock_units if self.time_features else 0)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ForecasterConfig:
        return cls(**data)


@keras.saving.register_keras_serializable(package="cellwatch", name="gaussian_nll")
def gaussian_nll(y_true, y_pred):
    """Mean Gaussian negative log-likelihood (without the constant) of ``y_true``.

    ``y_pred`` holds the predicted means, then the predicted scales, on its last axis.
    """
    channels = keras.ops.shape(y_true)[-1]
    mean = y_pred[..., :channels]
    scale = y_pred[..., channels:]
    z = (y_true - mean) / scale
    return keras.ops.mean(keras.ops.log(scale) + 0.5 * z * z, axis=-1)


def build_forecaster(config: ForecasterConfig) -> keras.Model:
    """The functional forecaster for ``config``; seed Keras first for reproducible weights."""
    values = keras.Input(shape=(None, config.channels), name="values")
    inputs = {"values": values}
    features = values
    if config.time_features:
        clock = keras.Input(shape=(None, CLOCK_FEATURES), name="clock")
        inputs["clock"] = clock
        # The clock arrives as sines and cosines of whole harmonics (continuous where the
        # day wraps); random phases let the layer mix them into other shapes from the start.
        encoded = SineEncoding(
            config.clock_units,
            bias_initializer=keras.initializers.RandomUniform(-math.pi, math.pi),
            name=CLOCK_LAYER,
        )(clock)
        features = keras.layers.Concatenate(name="model_input")([values, encoded])
    features = ThreePointDependency(config.dependency_units, activation="tanh",
                                    name=DEPENDENCY_LAYER)(features)
    memory = keras.layers.RNN(MemoryCell(config.memory_units), return_sequences=True,
                              name=MEMORY_LAYER)(features)
    hidden = StackedNeurons(config.hidden_units, depth=config.depth,
                            activation=config.activation, name=STACK_LAYER)(memory)
    forecast = GaussianHead(config.channels, min_scale=config.min_scale,
                            name=HEAD_LAYER)(hidden)
    return keras.Model(inputs=inputs, outputs=forecast, name="cellwatch_forecaster")


def _array(variable) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float32)


def step_params(model: keras.Model) -> StepParams:
    """The weights of a forecaster built by :func:`build_forecaster`, for the streaming step."""
    names = {layer.name for layer in model.layers}
    missing = {DEPENDENCY_LAYER, MEMORY_LAYER, STACK_LAYER, HEAD_LAYER} - names
    if missing:
        raise ValueError(f"model {model.name!r} is not a cellwatch forecaster: it has no "
                         f"layer named {', '.join(sorted(missing))}")
    clock = model.get_layer(CLOCK_LAYER) if CLOCK_LAYER in names else None
    dependency = model.get_layer(DEPENDENCY_LAYER)
    cell = model.get_layer(MEMORY_LAYER).cell
    stack = model.get_layer(STACK_LAYER)
    head = model.get_layer(HEAD_LAYER)

    def bias_of(layer, width: int) -> np.ndarray:
        return _array(layer.bias) if layer.use_bias else np.zeros(width, np.float32)

    dependency_kernel = np.concatenate([
        _array(dependency.kernel_t),
        _array(dependency.kernel_t_minus_1),
        _array(dependency.kernel_t_minus_2),
    ], axis=0)
    memory_units = cell.units
    params = StepParams(
        clock_kernel=_array(clock.kernel) if clock else None,
        clock_bias=_array(clock.bias) if clock else None,
        clock_frequency=_array(clock.frequency) if clock else None,
        dependency_kernel=dependency_kernel,
        dependency_bias=bias_of(dependency, dependency_kernel.shape[1]),
        dependency_activation=activation_name(dependency.get_config()["activation"]),
        gate_kernel=np.concatenate([_array(cell.kernel), _array(cell.recurrent_kernel)], axis=0),
        gate_bias=bias_of(cell, 2 * memory_units),
        memory_activation=activation_name(cell.get_config()["activation"]),
        memory_recurrent_activation=activation_name(cell.get_config()["recurrent_activation"]),
        stack=tuple((_array(dense.kernel), bias_of(dense, dense.units))
                    for dense in stack.dense_layers),
        stack_activation=activation_name(stack.get_config()["activation"]),
        head_kernel=np.concatenate([_array(head.mean_kernel), _array(head.scale_kernel)], axis=1),
        head_bias=np.concatenate([_array(head.mean_bias), _array(head.scale_bias)]),
        min_scale=float(head.min_scale),
    )
    check_params(params)
    return params
