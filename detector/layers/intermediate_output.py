"""Wrapper exposing a layer's input next to its output."""

import keras


@keras.saving.register_keras_serializable(package="cellwatch")
class IntermediateOutput(keras.layers.Wrapper):
    """Calls the wrapped layer and returns its output together with its input.

    Returns `(layer(inputs), inputs)`, so the input of a layer stays
    reachable downstream, e.g. as a model output feeding a loss that compares
    a reconstruction with what was reconstructed. Adds no weights of its own.

    Supports masking when the wrapped layer does: the first output carries
    the mask the wrapped layer computes, the second the input's mask. Each
    output has the dtype it is computed in: the wrapped layer's own dtype
    policy for the first, the wrapper's compute dtype for the input passed
    through.

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
        self.supports_masking = layer.supports_masking

    def call(self, inputs):
        return self.layer(inputs), inputs

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape), tuple(input_shape)

    def compute_output_spec(self, inputs):
        # The default would give both outputs this wrapper's compute dtype, while
        # the wrapped layer computes in its own (e.g. float32 under a mixed policy).
        passed_through = keras.KerasTensor(inputs.shape, dtype=inputs.dtype)
        return self.layer.compute_output_spec(inputs), passed_through

    def compute_mask(self, inputs, mask=None):
        if mask is None:
            return None
        return self.layer.compute_mask(inputs, mask), mask

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
