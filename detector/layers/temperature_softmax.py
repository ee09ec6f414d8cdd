"""Softmax with a learnable temperature that cannot reach zero."""

import math
import numbers

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cellwatch")
class TemperatureSoftmax(keras.layers.Layer):
    """Softmax of `inputs / T` with a learnable temperature `T > 0`.

    The temperature is parametrized as
    `T = min_temperature + softplus(temperature_raw)`, so no gradient step
    can drive it to zero or below (which would divide by zero or flip the
    ranking of the logits); the raw weight is free and unconstrained.
    `temperature_raw` starts at the value that makes
    `T == initial_temperature`.

    Args:
        initial_temperature: Float, the temperature at initialization. Must be
            greater than `min_temperature`.
        min_temperature: Float > 0, the temperature's lower bound, reached only
            in the limit.
        axis: Integer, the axis along which the softmax is normalized.
        trainable_temperature: Boolean, whether the temperature is learned.

    Call arguments:
        inputs: Logits tensor.

    Input shape:
        Arbitrary.

    Output shape:
        Same shape as the input.

    Example:

    >>> layer = TemperatureSoftmax(initial_temperature=2.0)
    >>> probabilities = layer(np.array([[1.0, 2.0, 3.0]], "float32"))
    >>> round(float(layer.temperature), 4)
    2.0
    >>> ops.convert_to_numpy(probabilities).round(3)  # softmax([0.5, 1.0, 1.5])
    array([[0.186, 0.307, 0.506]], dtype=float32)
    """

    def __init__(
        self,
        initial_temperature=1.0,
        min_temperature=1e-3,
        axis=-1,
        trainable_temperature=True,
        **kwargs,
    ):
        if (
            not isinstance(min_temperature, numbers.Real)
            or isinstance(min_temperature, bool)
            or not math.isfinite(min_temperature)
            or min_temperature <= 0
        ):
            raise ValueError(
                "`min_temperature` must be a finite number greater than 0, received: "
                f"{min_temperature!r}"
            )
        if (
            not isinstance(initial_temperature, numbers.Real)
            or isinstance(initial_temperature, bool)
            or not math.isfinite(initial_temperature)
            or initial_temperature <= min_temperature
        ):
            raise ValueError(
                "`initial_temperature` must be a finite number greater than "
                f"`min_temperature` ({min_temperature!r}), received: {initial_temperature!r}"
            )
        if not isinstance(axis, numbers.Integral) or isinstance(axis, bool):
            raise ValueError(f"`axis` must be an integer, received: {axis!r}")
        if not isinstance(trainable_temperature, bool):
            raise ValueError(
                f"`trainable_temperature` must be a boolean, received: {trainable_temperature!r}"
            )
        super().__init__(**kwargs)
        self.initial_temperature = float(initial_temperature)
        self.min_temperature = float(min_temperature)
        self.axis = int(axis)
        self.trainable_temperature = trainable_temperature
        self.supports_masking = True

    def build(self, input_shape):
        rank = len(input_shape)
        if not -rank <= self.axis < rank:
            raise ValueError(
                f"`axis` must index a dimension of the input, received: axis={self.axis} "
                f"for input shape {input_shape}"
            )
        self.temperature_raw = self.add_weight(
            name="temperature_raw",
            shape=(),
            initializer=keras.initializers.Constant(
                _inverse_softplus(self.initial_temperature - self.min_temperature)
            ),
            trainable=self.trainable_temperature,
        )

    @property
    def temperature(self):
        """The effective temperature `T`, a scalar tensor."""
        if not self.built:
            return ops.convert_to_tensor(self.initial_temperature, dtype=self.variable_dtype)
        return ops.add(self.min_temperature, ops.softplus(self.temperature_raw))

    def call(self, inputs):
        temperature = ops.cast(self.temperature, inputs.dtype)
        return ops.softmax(ops.divide(inputs, temperature), axis=self.axis)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "initial_temperature": self.initial_temperature,
                "min_temperature": self.min_temperature,
                "axis": self.axis,
                "trainable_temperature": self.trainable_temperature,
            }
        )
        return config


def _inverse_softplus(value):
    """`y` such that `softplus(y) == value`, for `value > 0`, stable at both ends."""
    # log(expm1(v)) overflows for large v and loses precision for tiny v;
    # v + log(-expm1(-v)) is the same quantity without either problem.
    return value + math.log(-math.expm1(-value))
