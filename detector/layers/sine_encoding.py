"""Learnable sinusoidal encoding of periodic features."""

import numbers

import keras
from keras import initializers, ops


@keras.saving.register_keras_serializable(package="cellwatch")
class SineEncoding(keras.layers.Layer):
    """Sinusoidal features with learnable phase and frequency.

    Computes `sin(frequency * (inputs @ kernel + bias))`. It is the natural
    encoder for periodic inputs such as time of day and day of week: hour 23
    and hour 0 end up close together, which a linear or ReLU encoding of the
    raw hour cannot express. `frequency` is learned, one per unit.

    Args:
        units: Positive integer, number of sinusoidal features.
        kernel_initializer: Initializer for the `kernel` weights matrix.
        bias_initializer: Initializer for the `bias` (phase) vector.
        frequency_initializer: Initializer for the `frequency` vector.

    Call arguments:
        inputs: A tensor of rank 2 or more.

    Input shape:
        N-D tensor with shape `(batch_size, ..., features)`, N >= 2.

    Output shape:
        N-D tensor with shape `(batch_size, ..., units)`, values in [-1, 1].

    Example:

    >>> hour_of_day = np.array([[0.0], [6.0], [23.0]], "float32") / 24.0
    >>> ops.shape(SineEncoding(4)(hour_of_day))
    (3, 4)
    """

    def __init__(
        self,
        units,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        frequency_initializer="ones",
        **kwargs,
    ):
        if not isinstance(units, numbers.Integral) or isinstance(units, bool) or units <= 0:
            raise ValueError(f"`units` must be a positive integer, received: {units!r}")
        super().__init__(**kwargs)
        self.units = int(units)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.frequency_initializer = initializers.get(frequency_initializer)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self.supports_masking = True

    def build(self, input_shape):
        features = input_shape[-1]
        if features is None:
            raise ValueError(
                "`SineEncoding` needs a known feature dimension, received input shape: "
                f"{input_shape}"
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(features, self.units),
            initializer=self.kernel_initializer,
        )
        self.bias = self.add_weight(
            name="bias",
            shape=(self.units,),
            initializer=self.bias_initializer,
        )
        self.frequency = self.add_weight(
            name="frequency",
            shape=(self.units,),
            initializer=self.frequency_initializer,
        )
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: features})

    def call(self, inputs):
        phase = ops.add(ops.matmul(inputs, self.kernel), self.bias)
        return ops.sin(ops.multiply(self.frequency, phase))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "frequency_initializer": initializers.serialize(self.frequency_initializer),
            }
        )
        return config
