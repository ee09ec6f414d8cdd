"""Causal layer mixing each time step with the two steps before it."""

import numbers

import keras
from keras import initializers, ops, regularizers

from detector.layers.activations import get_activation
from detector.layers.initialization import fresh_initializer


@keras.saving.register_keras_serializable(package="cellwatch")
class ThreePointDependency(keras.layers.Layer):
    """Causal three-tap layer: each output step sees steps `t-2`, `t-1`, `t`.

    Implements, for every time step `t`:
    `y_t = activation(x_{t-2} @ kernel_t_minus_2 + x_{t-1} @ kernel_t_minus_1
    + x_t @ kernel_t + bias)`
    with `x_{-1} = x_{-2} = 0`, so the first two outputs of a sequence see a
    zero history rather than values wrapped around from its end. Each lag has
    its own kernel, which a standard recurrent layer would only learn
    indirectly.

    Masked time steps (from a Keras mask) are zeroed before mixing, so a
    left-padded sequence sees exactly the same zero history as the unpadded
    one. The mask is passed on unchanged.

    Args:
        units: Positive integer, dimensionality of the output space.
        activation: Activation function to use. `None` means linear.
            Cellwatch activations may be given by their short name.
        use_bias: Boolean, whether the layer uses a bias vector.
        kernel_initializer: Initializer for the three kernel matrices.
        bias_initializer: Initializer for the bias vector.
        kernel_regularizer: Regularizer applied to each of the three kernels.
        bias_regularizer: Regularizer applied to the bias vector.

    Call arguments:
        inputs: A 3D tensor `(batch, time, features)`.
        mask: Optional boolean tensor `(batch, time)`; `False` marks padding.

    Input shape:
        3D tensor with shape `(batch_size, time, features)`; `time` may be
        unknown and any length, including 1.

    Output shape:
        3D tensor with shape `(batch_size, time, units)`.

    Example:

    >>> layer = ThreePointDependency(4, activation="relu")
    >>> ops.shape(layer(np.zeros((2, 10, 3), "float32")))
    (2, 10, 4)
    """

    def __init__(
        self,
        units,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        if not isinstance(units, numbers.Integral) or isinstance(units, bool) or units <= 0:
            raise ValueError(f"`units` must be a positive integer, received: {units!r}")
        if not isinstance(use_bias, bool):
            raise ValueError(f"`use_bias` must be a boolean, received: {use_bias!r}")
        super().__init__(**kwargs)
        self.units = int(units)
        self.activation = get_activation(activation, "activation")
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.input_spec = keras.layers.InputSpec(ndim=3)
        self.supports_masking = True

    def build(self, input_shape):
        features = input_shape[-1]
        if features is None:
            raise ValueError(
                "`ThreePointDependency` needs a known feature dimension, received input "
                f"shape: {input_shape}"
            )
        # One kernel per lag (rather than a stacked (3, F, U) tensor) so each
        # can be read, set and regularized on its own.
        self.kernel_t_minus_2 = self.add_weight(
            name="kernel_t_minus_2",
            shape=(features, self.units),
            initializer=fresh_initializer(self.kernel_initializer),
            regularizer=self.kernel_regularizer,
        )
        self.kernel_t_minus_1 = self.add_weight(
            name="kernel_t_minus_1",
            shape=(features, self.units),
            initializer=fresh_initializer(self.kernel_initializer),
            regularizer=self.kernel_regularizer,
        )
        self.kernel_t = self.add_weight(
            name="kernel_t",
            shape=(features, self.units),
            initializer=fresh_initializer(self.kernel_initializer),
            regularizer=self.kernel_regularizer,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.units,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
            )
        else:
            self.bias = None
        self.input_spec = keras.layers.InputSpec(ndim=3, axes={-1: features})

    def call(self, inputs, mask=None):
        if mask is not None:
            inputs = ops.multiply(inputs, ops.expand_dims(ops.cast(mask, inputs.dtype), -1))
        # Projecting first and then delaying the projections costs the same
        # as delaying the inputs, and delaying by front-padding and dropping
        # the tail needs no knowledge of the (possibly unknown) sequence length.
        outputs = ops.matmul(inputs, self.kernel_t)
        outputs = ops.add(outputs, _delay(ops.matmul(inputs, self.kernel_t_minus_1), 1))
        outputs = ops.add(outputs, _delay(ops.matmul(inputs, self.kernel_t_minus_2), 2))
        if self.bias is not None:
            outputs = ops.add(outputs, self.bias)
        return self.activation(outputs)

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            }
        )
        return config


def _delay(sequence, steps):
    """Shifts `(batch, time, units)` later in time by `steps`, filling with zeros."""
    padded = ops.pad(sequence, ((0, 0), (steps, 0), (0, 0)))
    return padded[:, :-steps, :]

