"""Wrapper exposing a layer's input next to its output."""

import keras


@keras.saving.register_keras_serializable(package="cellwatch")
class IntermediateOutput(keras.layers.Wrapper):
    """Calls the wrapped layer and returns its output together with its input.

    Returns `(layer(inputs), inputs)`, so the input of a layer stays
    reachable downstream, e.g. as a model output feeding a loss that compares
    a reconstruction with what was reconstructed. Adds no weights of its own.

    Args:
        layer: The `keras.layers.Layer` instance to wrap.

    Call arguments:
        inputs: Input tensor of the wrapped layer.

    Input shape:
        Whatever the wrapped layer accepts.

    Output shape:
        A tuple `(wrapped output shape, input shape)`.

    Example:

    >>> wrapped = IntermediateOutput(keras.layers.Dense(2))
    >>> output, passed_through = wrapped(np.ones((3, 4), "float32"))
    >>> ops.shape(output), ops.shape(passed_through)
    ((3, 2), (3, 4))
    """

    def __init__(self, layer, **kwargs):
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(f"`layer` must be a keras.layers.Layer instance, received: {layer!r}")
        super().__init__(layer, **kwargs)

    def call(self, inputs):
        return self.layer(inputs), inputs

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape), tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config["layer"] = keras.saving.serialize_keras_object(self.layer)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # Unlike `Wrapper.from_config`, leaves the caller's dict untouched.
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(
            config.pop("layer"), custom_objects=custom_objects
        )
        return cls(layer, **config)
