"""A stack of equally sized dense layers."""

import numbers

import keras
from keras import initializers

from detector.layers.activations import get_activation
from detector.layers.initialization import fresh_initializer


@keras.saving.register_keras_serializable(package="cellwatch")
class StackedNeurons(keras.layers.Layer):
    """A stack of `depth` dense layers with `units` units each.

    Computes `x -> activation(x @ W_0 + b_0) -> ... -> activation(. @ W_{d-1}
    + b_{d-1})`, applying every sublayer along the last axis like `Dense`.
    The sublayers are named `dense_0` ... `dense_{depth-1}`, so their weights
    appear as `dense_0/kernel`, `dense_0/bias`, ...

    Args:
        units: Positive integer, width of every dense sublayer.
        depth: Positive integer, number of dense sublayers.
        activation: Activation applied after every sublayer. Accepts Keras
            names, cellwatch names such as `"elu_sigmoid"`, registered keys
            such as `"cellwatch>elu_sigmoid"` and callables.
        use_bias: Boolean, whether the sublayers use bias vectors.
        kernel_initializer: Initializer for the sublayers' kernels.
        bias_initializer: Initializer for the sublayers' biases.

    Call arguments:
        inputs: A tensor of rank 2 or more.

    Input shape:
        N-D tensor with shape `(batch_size, ..., features)`, N >= 2.

    Output shape:
        N-D tensor with shape `(batch_size, ..., units)`.

    Example:

    >>> layer = StackedNeurons(16, depth=3, activation="elu_sigmoid")
    >>> ops.shape(layer(np.zeros((2, 7, 5), "float32")))
    (2, 7, 16)
    """

    def __init__(
        self,
        units,
        depth=2,
        activation="relu",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        if not isinstance(units, numbers.Integral) or isinstance(units, bool) or units <= 0:
            raise ValueError(f"`units` must be a positive integer, received: {units!r}")
        if not isinstance(depth, numbers.Integral) or isinstance(depth, bool) or depth <= 0:
            raise ValueError(f"`depth` must be a positive integer, received: {depth!r}")
        if not isinstance(use_bias, bool):
            raise ValueError(f"`use_bias` must be a boolean, received: {use_bias!r}")
        super().__init__(**kwargs)
        self.units = int(units)
        self.depth = int(depth)
        self.activation = get_activation(activation, "activation")
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.supports_masking = True
        # Sublayers live from construction on so they are tracked (and their
        # weights named) before the first call; `build` sizes them.
        self.dense_layers = [
            keras.layers.Dense(
                self.units,
                activation=self.activation,
                use_bias=self.use_bias,
                kernel_initializer=fresh_initializer(self.kernel_initializer),
                bias_initializer=fresh_initializer(self.bias_initializer),
                dtype=self.dtype_policy,
                name=f"dense_{index}",
            )
            for index in range(self.depth)
        ]

    def build(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(
                f"`{type(self).__name__}` needs an input of rank >= 2 with a known last "
                f"dimension, received input shape: {input_shape}"
            )
        shape = tuple(input_shape)
        for layer in self.dense_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def call(self, inputs):
        outputs = inputs
        for layer in self.dense_layers:
            outputs = layer(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "depth": self.depth,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
            }
        )
        return config

